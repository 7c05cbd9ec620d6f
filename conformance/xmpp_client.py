"""A thin test wrapper around slixmpp's ClientXMPP.

`Session` is one real client connection: STARTTLS (or XEP-0368 direct TLS)
to 127.0.0.1 on the server's port, SASL, resource binding.  Everything the
server sends (messages, presence, roster pushes, stream features, stream
errors) is queued so tests can wait for it with a timeout and inspect the raw
XML.  slixmpp's automatic subscription handling is switched off so the tests
see the protocol, not the library's reactions to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import xml.etree.ElementTree as ET
from typing import Callable

from pyasn1.codec.der import decoder as der_decoder
from pyasn1_modules import rfc2459
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.stanza import StreamFeatures
from slixmpp.util import hash as sasl_hash
from slixmpp.util.sasl import client as sasl_client
from slixmpp.util.sasl.mechanisms import SCRAM
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

TIMEOUT = 10.0          # default bound for every wait
QUIET = 1.0             # how long "nothing arrives" is watched for

NS_CLIENT = "jabber:client"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"
NS_ROSTER = "jabber:iq:roster"
NS_REGISTER = "jabber:iq:register"
NS_REGISTER_FEATURE = "http://jabber.org/features/iq-register"
NS_DELAY = "urn:xmpp:delay"

DEFAULT_PLUGINS = ("xep_0004", "xep_0030", "xep_0077", "xep_0092", "xep_0199",
                   "xep_0202", "xep_0012", "xep_0203", "xep_0128")


def q(ns: str, tag: str) -> str:
    """Clark notation: q('jabber:client', 'body') -> '{jabber:client}body'."""
    return f"{{{ns}}}{tag}"


def insecure_tls_context() -> ssl.SSLContext:
    """The server's certificate is self-signed: encrypt, but do not verify."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def error_condition(stanza_xml: ET.Element) -> str | None:
    """The defined condition of an error stanza, e.g. 'service-unavailable'."""
    err = stanza_xml.find(q(NS_CLIENT, "error"))
    if err is None:
        return None
    for child in err:
        if child.tag.startswith("{" + NS_STANZAS + "}") and not child.tag.endswith("}text"):
            return child.tag.split("}", 1)[1]
    return None


# --------------------------------------------------------------------------
# Channel binding: tls-server-end-point (RFC 5929 §4) for SCRAM-*-PLUS
# --------------------------------------------------------------------------

_SIG_HASH = {  # signatureAlgorithm OID -> hash for tls-server-end-point
    "1.2.840.113549.1.1.4": "sha256",    # md5WithRSA -> SHA-256 per RFC 5929
    "1.2.840.113549.1.1.5": "sha256",    # sha1WithRSA -> SHA-256 per RFC 5929
    "1.2.840.113549.1.1.11": "sha256",
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
    "1.2.840.10045.4.1": "sha256",       # ecdsa-with-SHA1 -> SHA-256
    "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384",
    "1.2.840.10045.4.3.4": "sha512",
}


def tls_server_end_point(der_cert: bytes) -> bytes:
    """RFC 5929 tls-server-end-point data for the server's certificate."""
    cert, _ = der_decoder.decode(der_cert, asn1Spec=rfc2459.Certificate())
    oid = str(cert["signatureAlgorithm"]["algorithm"])
    if oid not in _SIG_HASH:
        raise ValueError(f"tls-server-end-point undefined for signature algorithm {oid}")
    return hashlib.new(_SIG_HASH[oid], der_cert).digest()


class ScramWithBindingType(SCRAM):
    """slixmpp's SCRAM, plus an optional explicit channel-binding type.

    slixmpp only knows the bindings Python's ssl module offers (tls-unique,
    which TLS 1.3 forbids).  When the credential `cb_type` is given, the
    gs2 header says `p=<cb_type>` and `channel_binding` carries its data;
    without it, behaviour is exactly slixmpp's.
    """

    optional_credentials = {"authzid", "channel_binding", "cb_type"}

    def setup(self, name):
        if not self.credentials.get("cb_type"):
            return super().setup(name)
        base = name[:-5] if name.endswith("-PLUS") else name
        self.use_channel_binding = name.endswith("-PLUS")
        self.hash_name = base[6:]
        self.hash = sasl_hash(self.hash_name)
        self.step = 0
        self._mutual_auth = False

    def process_1(self, challenge):
        out = super().process_1(challenge)
        cb_type = self.credentials.get("cb_type")
        if not cb_type:
            return out
        authzid = b""
        if self.credentials["authzid"]:
            authzid = b"a=" + self.saslname(self.credentials["authzid"])
        self.gs2_header = b"p=" + cb_type + b"," + authzid + b","
        self.client_first_message = self.gs2_header + self.client_first_message_bare
        return self.client_first_message


for _name in list(sasl_client.MECHANISMS):
    if _name.startswith("SCRAM-"):
        sasl_client.MECHANISMS[_name] = ScramWithBindingType


# --------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------

class Inbox:
    """Stanzas of one kind as they arrive. Waiting for a match takes only the
    matching stanza; everything else stays for later waits, so a test can
    wait for things in any order.  `log` keeps the arrival order of all kinds."""

    def __init__(self, what: str, log: list):
        self.what = what
        self.items: list = []
        self.log = log
        self._arrived = asyncio.Event()

    def put(self, stanza) -> None:
        self.items.append(stanza)
        self.log.append(stanza)
        self._arrived.set()

    def drain(self, pred: Callable | None = None) -> list:
        taken = [s for s in self.items if pred is None or pred(s)]
        self.items = [s for s in self.items if not (pred is None or pred(s))]
        return taken

    async def take(self, pred: Callable | None, timeout: float):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, stanza in enumerate(self.items):
                if pred is None or pred(stanza):
                    return self.items.pop(i)
            remaining = deadline - loop.time()
            if remaining <= 0:
                others = "; ".join(str(s) for s in self.items) or "nothing"
                raise AssertionError(f"no matching {self.what} within {timeout}s; "
                                     f"unmatched {self.what}s received: {others}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass


class LoginFailed(Exception):
    def __init__(self, condition: str | None, detail: str = ""):
        super().__init__(f"login failed: {condition} {detail}".strip())
        self.condition = condition


class Session:
    """One slixmpp client connection to the server under test."""

    def __init__(self, server, user: str, password: str, *, resource: str | None = None,
                 mech: str | None = None, direct_tls: bool = False,
                 channel_binding: str | None = None, channel_binding_data: bytes | None = None,
                 register: bool = False):
        jid = server.jid(user) + (f"/{resource}" if resource else "")
        self.server = server
        self.username = user.split("@", 1)[0]
        self.password = password
        self.direct_tls = direct_tls
        self._cb_type = channel_binding
        self._cb_data_override = channel_binding_data
        plugin_config = {}
        if channel_binding:
            plugin_config["feature_mechanisms"] = {"sasl_callback": self._sasl_credentials}
        self.xmpp = x = ClientXMPP(jid, password, sasl_mech=mech, plugin_config=plugin_config)
        for plugin in DEFAULT_PLUGINS:
            x.register_plugin(plugin)
        x["xep_0077"].force_registration = register
        x.ssl_context = insecure_tls_context()
        x.enable_direct_tls = direct_tls
        x.enable_starttls = not direct_tls
        x.enable_plaintext = False
        x.whitespace_keepalive = False
        x.auto_authorize = None     # see subscription requests ourselves
        x.auto_subscribe = False
        self._register = register

        self.arrivals: list = []    # messages, presences and roster pushes, in order
        self.messages = Inbox("message", self.arrivals)
        self.presences = Inbox("presence", self.arrivals)
        self.roster_pushes = Inbox("roster push", self.arrivals)
        self.features: list[ET.Element] = []
        self.stream_errors: list[ET.Element] = []
        self.auth_failures: list[str | None] = []
        self.registration_result = None   # reply to our XEP-0077 registration IQ

        x.register_handler(Callback("conf messages", MatchXPath(q(NS_CLIENT, "message")),
                                    lambda st: self.messages.put(st)))
        x.register_handler(Callback("conf presence", MatchXPath(q(NS_CLIENT, "presence")),
                                    lambda st: self.presences.put(st)))
        x.register_handler(Callback("conf roster push",
                                    MatchXPath(f"{q(NS_CLIENT, 'iq')}/{q(NS_ROSTER, 'query')}"),
                                    self._on_roster_iq))
        x.add_filter("in", self._record_features)
        x.add_event_handler("stream_error", lambda st: self.stream_errors.append(st.xml))
        x.add_event_handler("failed_auth", lambda st: self.auth_failures.append(st["condition"]))

    # -- credentials for SCRAM-*-PLUS with an explicit binding type ---------

    def _sasl_credentials(self, required, optional):
        creds = {"username": self.username, "password": self.password}
        if "channel_binding" in optional or "channel_binding" in required:
            creds["channel_binding"] = self.channel_binding_data()
            creds["cb_type"] = self._cb_type or ""
        return creds

    def channel_binding_data(self) -> bytes:
        if self._cb_data_override is not None:
            return self._cb_data_override
        if self._cb_type == "tls-server-end-point":
            return tls_server_end_point(self.xmpp.socket.getpeercert(binary_form=True))
        raise ValueError(f"channel binding {self._cb_type} not available in Python's ssl")

    # -- incoming ------------------------------------------------------------

    def _record_features(self, stanza):
        if isinstance(stanza, StreamFeatures):
            self.features.append(stanza.xml)
        return stanza

    def _on_roster_iq(self, iq):
        if iq["type"] == "set":
            self.roster_pushes.put(iq)

    # -- connect / disconnect ------------------------------------------------

    @property
    def port(self) -> int:
        return self.server.direct_tls_port if self.direct_tls else self.server.c2s_port

    async def connect(self, timeout: float = TIMEOUT) -> "Session":
        """Connect and log in; raises LoginFailed (with the SASL condition) otherwise."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def finish(result=None, exc=None):
            if not done.done():
                if exc is not None:
                    done.set_exception(exc)
                else:
                    done.set_result(result)

        x = self.xmpp
        x.add_event_handler("session_start", lambda _: finish(True))
        x.add_event_handler("failed_all_auth", lambda _: finish(exc=LoginFailed(
            self.auth_failures[-1] if self.auth_failures else None)))
        x.add_event_handler("connection_failed", lambda e: finish(exc=ConnectionError(str(e))))
        x.add_event_handler("disconnected", lambda r: finish(exc=LoginFailed(
            self.auth_failures[-1] if self.auth_failures else "disconnected",
            f"(disconnected before session start: {r})")))
        if self._register:
            x.add_event_handler("register", self._do_register)
        x.connect("127.0.0.1", self.port)
        try:
            await asyncio.wait_for(done, timeout)
        except BaseException:
            await self.abort()
            raise
        return self

    async def _do_register(self, _form):
        iq = self.xmpp.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = self.xmpp.boundjid.user
        iq["register"]["password"] = self.password
        try:
            self.registration_result = await iq.send(timeout=TIMEOUT)
        except IqError as e:
            self.registration_result = e.iq
            self.xmpp.disconnect(0.5)

    async def disconnect(self, timeout: float = TIMEOUT) -> None:
        x = self.xmpp
        x.cancel_connection_attempt()
        if x.transport is None:
            return
        try:
            await asyncio.wait_for(x.disconnect(wait=2.0), timeout)
        except Exception:
            x.abort()

    async def abort(self) -> None:
        x = self.xmpp
        x.cancel_connection_attempt()
        if x.transport is not None:
            x.abort()
        await asyncio.sleep(0)

    @property
    def jid(self):
        return self.xmpp.boundjid

    # -- sending -------------------------------------------------------------

    def send_raw(self, data: str) -> None:
        self.xmpp.send_raw(data)

    def send_presence(self, **kwargs) -> None:
        self.xmpp.send_presence(**kwargs)

    def send_message(self, to, body: str, mtype: str = "chat") -> None:
        self.xmpp.send_message(mto=to, mbody=body, mtype=mtype)

    async def iq(self, iq, timeout: float = TIMEOUT):
        """Send an IQ and return the reply stanza, result or error alike."""
        try:
            return await iq.send(timeout=timeout)
        except IqError as e:
            return e.iq
        except IqTimeout:
            raise AssertionError(f"no reply within {timeout}s to IQ:\n{iq}") from None

    async def iq_xml(self, xml: str, timeout: float = TIMEOUT):
        """Send an IQ given as XML text (jabber:client default namespace)."""
        element = ET.fromstring(xml.replace("<iq ", f"<iq xmlns='{NS_CLIENT}' ", 1))
        iq = self.xmpp.Iq(xml=element)
        if not iq["id"]:
            iq["id"] = self.xmpp.new_id()
        return await self.iq(iq, timeout)

    # -- waiting -------------------------------------------------------------

    async def next_message(self, pred=None, timeout: float = TIMEOUT):
        return await self.messages.take(pred, timeout)

    async def next_presence(self, pred=None, timeout: float = TIMEOUT):
        return await self.presences.take(pred, timeout)

    async def next_roster_push(self, pred=None, timeout: float = TIMEOUT):
        return await self.roster_pushes.take(pred, timeout)

    async def quiet(self, inbox: str, pred=None, within: float = QUIET) -> list:
        """Wait `within` seconds, then take whatever matching arrived (for negative checks)."""
        await asyncio.sleep(within)
        return getattr(self, inbox).drain(pred)


@contextlib.asynccontextmanager
async def online(server, user: str, password: str, **kwargs):
    """`async with online(server, 'alice', 'pw') as alice:` — a logged-in session."""
    session = Session(server, user, password, **kwargs)
    await session.connect()
    try:
        yield session
    finally:
        await session.disconnect()


async def login_error(server, user: str, password: str, **kwargs) -> str | None:
    """Try to log in; return the SASL failure condition (fails if login works)."""
    session = Session(server, user, password, **kwargs)
    try:
        await session.connect()
    except LoginFailed as e:
        return e.condition
    await session.disconnect()
    raise AssertionError(f"login as {user} unexpectedly succeeded")


def run(coro, timeout: float = 60.0):
    """Run one test coroutine on a fresh event loop, bounded in time."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def login_ok(server, user: str, password: str, **kwargs) -> None:
    """Log in and out again; fails the test if login does not work."""
    async with online(server, user, password, **kwargs):
        pass


# --------------------------------------------------------------------------
# Roster helpers (RFC 6121 §2), on raw XML so the tests see the protocol
# --------------------------------------------------------------------------

def roster_query(stanza):
    return stanza.xml.find(q(NS_ROSTER, "query"))


def roster_items(stanza) -> dict[str, dict]:
    """{jid: {name, subscription, ask, groups}} from a roster result or push."""
    query = roster_query(stanza)
    items = {}
    if query is None:
        return items
    for item in query.findall(q(NS_ROSTER, "item")):
        items[item.get("jid")] = {
            "name": item.get("name"),
            "subscription": item.get("subscription", "none"),
            "ask": item.get("ask"),
            "groups": sorted(g.text or "" for g in item.findall(q(NS_ROSTER, "group"))),
        }
    return items


async def get_roster(session: Session, ver: str | None = None):
    ver_attr = "" if ver is None else f" ver='{ver}'"
    return await session.iq_xml(f"<iq type='get'><query xmlns='{NS_ROSTER}'{ver_attr}/></iq>")


async def set_roster_item(session: Session, jid: str, name: str | None = None,
                          groups=(), remove: bool = False):
    attrs = f" jid='{jid}'"
    if name is not None:
        attrs += f" name='{name}'"
    if remove:
        attrs += " subscription='remove'"
    inner = "".join(f"<group>{g}</group>" for g in groups)
    return await session.iq_xml(f"<iq type='set'><query xmlns='{NS_ROSTER}'>"
                                f"<item{attrs}>{inner}</item></query></iq>")


# --------------------------------------------------------------------------
# Presence helpers (RFC 6121 §3-4)
# --------------------------------------------------------------------------

def bare(jid) -> str:
    return str(jid).split("/", 1)[0]


def ptype(stanza) -> str:
    """'available' for presence without a type, else the type attribute."""
    return stanza.xml.get("type") or "available"


def presence(frm=None, kind: str | None = None) -> Callable:
    """Predicate for Session.next_presence: from (bare or full JID) and type."""
    def match(stanza) -> bool:
        sender = stanza.xml.get("from") or ""
        if frm is not None:
            want = str(frm)
            if ("/" in want and sender != want) or ("/" not in want and bare(sender) != want):
                return False
        return kind is None or ptype(stanza) == kind
    return match


def roster_push_for(jid: str, subscription: str | None = None, ask=...) -> Callable:
    """Predicate for Session.next_roster_push about one contact."""
    def match(stanza) -> bool:
        item = roster_items(stanza).get(str(jid))
        if item is None:
            return False
        if subscription is not None and item["subscription"] != subscription:
            return False
        return ask is ... or item["ask"] == ask
    return match


async def subscribe(a: Session, b: Session) -> None:
    """a asks for b's presence, b approves; both available and interested in rosters."""
    a_bare, b_bare = bare(a.jid), bare(b.jid)
    a.send_presence(pto=b_bare, ptype="subscribe")
    await b.next_presence(presence(a_bare, "subscribe"))
    b.send_presence(pto=a_bare, ptype="subscribed")
    await a.next_roster_push(lambda p: roster_items(p).get(b_bare, {}).get("subscription")
                             in ("to", "both"))
    await b.next_roster_push(lambda p: roster_items(p).get(a_bare, {}).get("subscription")
                             in ("from", "both"))


async def befriend(a: Session, b: Session) -> None:
    """Mutual subscription ('both' on each side); both send initial presence first."""
    await get_roster(a)
    await get_roster(b)
    a.send_presence()
    b.send_presence()
    await subscribe(a, b)
    await subscribe(b, a)
