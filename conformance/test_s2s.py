"""Federation (RFC 6120 server-to-server) between Starling and real Prosody 0.12 and
ejabberd 23.01, and between two Starlings: chat both ways, mutual subscription with
presence, MUC rooms on either side with occupants from the other, server IQs, vCards and
PEP events and XEP-0357 push across servers, XEP-0368 direct TLS, XEP-0288 bidi streams, and which authentication the streams used —
SASL EXTERNAL (XEP-0178) when both certificates are trusted, XEP-0220 dialback when they
are not; and what a sender gets back when the other server is unreachable or hangs.

The peers come from peers.py (their own configs on loopback; they find Starling through
the suite's stub DNS, see stubdns.py); Starling finds them through `s2s.static_hosts`.
Every server has a certificate for its domain and `conference.<domain>` from the session's
test CA (testca.py); Starling trusts that CA alone (`s2s.ca_file`, no system roots).

Which authentication a stream used is read from the logs: Starling logs one line per
authenticated domain pair, `s2s stream authenticated` with direction, local, remote, method
("external" | "dialback") and tls; ejabberd logs "Accepted inbound|outbound s2s
EXTERNAL|dialback authentication A -> B"; Prosody "Accepting SASL EXTERNAL identity from B"
(inbound) and "SASL EXTERNAL with B succeeded" (outbound). Since a stream may carry both
directions (XEP-0288 bidi: Prosody asks for it), the tests require at least one
authenticated stream with the peer and the expected method on every one of them, not one
stream per direction.

A missing peer package fails these tests (never skips): scripts/install-deps installs both.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import threading
import time

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import PASSWORD, ServerFactory
from peers import MUC_PREFIX, PeerError, static_hosts
from starling_server import free_ports, port_open
from xmpp_client import (NS_CLIENT, Inbox, Session, befriend, bare, error_condition, presence,
                         ptype, q, run)

KINDS = ("prosody", "ejabberd")
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = NS_MUC + "#user"
NS_MUC_OWNER = NS_MUC + "#owner"
NS_DATA = "jabber:x:data"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_VCARD = "vcard-temp"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_EVENT = NS_PUBSUB + "#event"
PEP_NODE = "urn:example:federated-pep"
WAIT = 30.0          # bound on each cross-server wait (first contact opens the streams)
SCENARIO = 100.0     # bound on one test's whole conversation (pytest.ini: 120 s per test)
AUTH_LINE = "s2s stream authenticated"
_ids = itertools.count(1)


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------

def start_peer(federation, tmp_path_factory, kind, domain=None):
    try:
        return federation.start_peer(kind, tmp_path_factory.mktemp(f"peer-{kind}"),
                                     domain=domain)
    except PeerError as e:
        pytest.fail(f"cannot start {kind}: {e}", pytrace=False)


def starling_options(federation, domain, s2s_port, *, trusted_cert, trust, remotes,
                     direct_tls=False, dns=False):
    """ServerOptions for a federating Starling: s2s listener on `s2s_port`, a certificate
    for `domain` (and conference.<domain>) from the trusted or the untrusted CA, trusting
    only the CA `trust` (a testca.TestCa), `remotes` (peers or (domain, port)) in
    static_hosts. `direct_tls`: the listener is the XEP-0368 direct TLS one (no STARTTLS
    listener) and the peers are reached at their direct TLS ports ("tls://"). `dns`: no
    static_hosts; Starling finds the peers through SRV records in the suite's stub DNS
    (`s2s.resolver`)."""
    cert = federation.cert(domain, trusted=trusted_cert)
    listen = ({"s2s": "", "s2s_direct_tls": f"127.0.0.1:{s2s_port}"} if direct_tls
              else {"s2s": f"127.0.0.1:{s2s_port}"})
    return dict(
        domains=[domain],
        extra_sections={
            "listen": listen,
            "s2s": ({"resolver": f"{federation.dns.host}:{federation.dns.port}"} if dns else
                    {"static_hosts": static_hosts(*remotes, direct_tls=direct_tls)})
                   | {"ca_file": str(trust.ca_file), "use_system_roots": False},
            "tls": {"cert": str(cert.chain), "key": str(cert.key)},
            "log": {"level": "info,starling::s2s=debug"},
        },
    )


def started_starling(factory, federation, domain, s2s_port, **kwargs):
    """Start it, wait for its s2s listener, publish it in the stub DNS for the peers."""
    server = factory(**starling_options(federation, domain, s2s_port, **kwargs))
    deadline = time.monotonic() + 20
    while not port_open(s2s_port):
        assert time.monotonic() < deadline, \
            f"starling did not listen for s2s on {s2s_port}:\n{server.log_tail()}"
        time.sleep(0.05)
    server.domain = domain
    server.s2s_port = s2s_port
    server.kind = "starling"
    if kwargs.get("direct_tls"):
        federation.publish(domain, None, tls_port=s2s_port)   # only _xmpps-server SRV
    else:
        federation.publish(domain, s2s_port)
    return server


@pytest.fixture(scope="module", params=KINDS)
def peer(request, federation, tmp_path_factory):
    """prosody.test or ejabberd.test, with a certificate from the CA everyone trusts."""
    server = start_peer(federation, tmp_path_factory, request.param)
    yield server
    federation.stop_peer(server)


@contextlib.contextmanager
def starling_for(peer, federation, tmp_path_factory, label, **kwargs):
    factory = ServerFactory(tmp_path_factory, f"s2s_{label}_{peer.kind}")
    domain = f"{label}-{peer.kind}.test"
    (port,) = free_ports(1)
    try:
        yield started_starling(factory, federation, domain, port, remotes=[peer], **kwargs)
    finally:
        federation.unpublish(domain)
        problems = factory.close()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def starling(peer, federation, tmp_path_factory):
    """Starling with a trusted certificate, trusting the CA that signed the peer's."""
    with starling_for(peer, federation, tmp_path_factory, "starling",
                      trusted_cert=True, trust=federation.ca) as server:
        yield server


@pytest.fixture(scope="module")
def direct_tls_starling(peer, federation, tmp_path_factory):
    """Starling reachable only with XEP-0368 direct TLS (no STARTTLS listener; the peer
    finds it through an `_xmpps-server` SRV record alone) and reaching the peer only at
    the peer's direct TLS port (`tls://` in static_hosts): any stream between the two is
    direct TLS by construction."""
    with starling_for(peer, federation, tmp_path_factory, "directtls",
                      trusted_cert=True, trust=federation.ca, direct_tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def dialback_starling(peer, federation, tmp_path_factory):
    """Starling whose certificate the peer does not trust, and which does not trust the
    peer's (it trusts only the untrusted CA that signed its own): dialback both ways."""
    with starling_for(peer, federation, tmp_path_factory, "dialback",
                      trusted_cert=False, trust=federation.untrusted_ca) as server:
        yield server


# --------------------------------------------------------------------------
# Accounts, sessions, logs
# --------------------------------------------------------------------------

def new_user(server, prefix: str) -> str:
    """A fresh account on `server` (Starling or peer); returns its bare JID."""
    jid = f"{prefix}{next(_ids)}@{server.domain}"
    if getattr(server, "kind", "") == "starling":
        server.adduser_many({jid: PASSWORD})
    else:
        server.adduser(jid, PASSWORD)
    return jid


@contextlib.asynccontextmanager
async def online(server, jid: str, initial_presence: bool = True):
    s = Session(server, jid, PASSWORD)
    await s.connect()
    try:
        if initial_presence:
            s.send_presence()
        yield s
    finally:
        await s.disconnect()


def body_is(text: str):
    def match(m) -> bool:
        el = m.xml.find(f"{{{NS_CLIENT}}}body")
        return el is not None and el.text == text
    return match


async def chat(sender, receiver, text: str) -> None:
    """`sender` sends a chat message to `receiver`'s bare JID; it must arrive, from sender."""
    sender.send_message(bare(receiver.jid), text)
    got = await receiver.next_message(body_is(text), timeout=WAIT)
    assert got.xml.get("type") == "chat", got
    assert bare(got.xml.get("from")) == bare(sender.jid), got


_FIELD = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|(\S+))')


def starling_auths(server, remote: str) -> list[dict[str, str]]:
    """Starling's `s2s stream authenticated` lines about `remote`, as field dicts."""
    found = []
    for line in server.log_text().splitlines():
        at = line.find(AUTH_LINE)
        if at < 0:
            continue
        fields = {m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
                  for m in _FIELD.finditer(line[at + len(AUTH_LINE):])}
        if fields.get("remote") == remote:
            found.append(fields)
    return found


def assert_starling_method(server, remote: str, method: str) -> None:
    auths = starling_auths(server, remote)
    assert auths, (f"no '{AUTH_LINE}' line with remote={remote} in the log of "
                   f"{server.domain}:\n{server.log_tail(lines=60)}")
    wrong = [a for a in auths if a.get("method") != method]
    assert not wrong, f"expected method={method} for {remote}, got {wrong}"
    assert all(a.get("tls") == "true" for a in auths), auths
    assert all(a.get("local") in (server.domain, f"{MUC_PREFIX}.{server.domain}")
               for a in auths), auths


def peer_auth_methods(peer, remote: str) -> set[str]:
    """The authentication methods the peer's log shows for streams with `remote`."""
    text = peer.log_text()
    found = set()
    if peer.kind == "ejabberd":
        pattern = (r"Accepted (?:inbound|outbound) s2s (EXTERNAL|dialback) authentication "
                   rf"(?:{re.escape(remote)} -> {re.escape(peer.domain)}|"
                   rf"{re.escape(peer.domain)} -> {re.escape(remote)})\b")
        found = {m.group(1).lower() for m in re.finditer(pattern, text, re.IGNORECASE)}
    else:
        if (f"Accepting SASL EXTERNAL identity from {remote}" in text
                or f"SASL EXTERNAL with {remote} succeeded" in text):
            found.add("external")
    return found


# --------------------------------------------------------------------------
# MUC helpers (raw XEP-0045, the same on every server)
# --------------------------------------------------------------------------

def status_codes(p) -> set[int]:
    return {int(c.get("code"))
            for c in p.xml.findall(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}status")}


async def join_room(s, room: str, nick: str):
    """Enter `room` as `nick`; returns our self-presence (status 110). An instant room we
    created (201) is configured with the defaults at once, so others may enter."""
    s.send_raw(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'>"
               f"<history maxstanzas='0'/></x></presence>")
    p = await s.next_presence(
        lambda p: p.xml.get("from") == f"{room}/{nick}"
        and (ptype(p) == "error" or 110 in status_codes(p)), timeout=WAIT)
    assert ptype(p) != "error", f"joining {room} refused: {p}"
    if 201 in status_codes(p):
        r = await s.iq_xml(f"<iq type='set' to='{room}'><query xmlns='{NS_MUC_OWNER}'>"
                           f"<x xmlns='{NS_DATA}' type='submit'/></query></iq>", timeout=WAIT)
        assert r["type"] == "result", f"instant room configuration refused: {r}"
    return p


async def groupchat(sender, room: str, nick: str, text: str, *receivers) -> None:
    """`sender` (nick) says `text` in the room; every receiver (and the sender, as the
    room reflects it) gets it from room/nick."""
    sender.send_message(room, text, mtype="groupchat")
    for r in (sender, *receivers):
        got = await r.next_message(body_is(text), timeout=WAIT)
        assert got.xml.get("type") == "groupchat", got
        assert got.xml.get("from") == f"{room}/{nick}", got


async def muc_conversation(owner_server, owner_jid, guest_server, guest_jid, muc: str):
    """owner creates a room at `muc`, guest (from the other server) joins; each sees the
    other's presence, then a groupchat message each way."""
    room = f"fed{next(_ids)}@{muc}"
    async with online(owner_server, owner_jid) as owner, \
            online(guest_server, guest_jid) as guest:
        await join_room(owner, room, "owner")
        await join_room(guest, room, "guest")
        # the owner sees the guest arrive; the guest got the owner's presence first (§7.2.3)
        await owner.next_presence(presence(f"{room}/guest", "available"), timeout=WAIT)
        await guest.next_presence(presence(f"{room}/owner", "available"), timeout=WAIT)
        await groupchat(guest, room, "guest", "hello from the guest", owner)
        await groupchat(owner, room, "owner", "hello from the owner", guest)


# --------------------------------------------------------------------------
# Starling <-> Prosody / ejabberd, certificates trusted both ways
# --------------------------------------------------------------------------

def test_s2s_message_both_ways(starling, peer):
    """A chat message from a Starling user to a peer user and back."""
    s_jid, p_jid = new_user(starling, "sam"), new_user(peer, "pat")

    async def go():
        async with online(starling, s_jid) as s, online(peer, p_jid) as p:
            await chat(s, p, f"hello {peer.kind}")
            await chat(p, s, "hello starling")
    run(go(), timeout=SCENARIO)


def test_s2s_push_notification_reaches_an_app_server_on_the_peer(starling, peer):
    """XEP-0357 across servers, as Conversations and Monal use it: the App Server is on
    another server. A Starling user registers a push service that is a peer account's
    client; a message stored offline for the user makes Starling publish the XEP-0357
    summary to it over s2s, and the App Server's answer comes back."""
    ns_push = "urn:xmpp:push:0"
    user, sender, app = (new_user(starling, "phone"), new_user(starling, "friend"),
                         new_user(peer, "appsrv"))

    async def go():
        service = Session(peer, app, PASSWORD, resource="push")
        service.publishes = Inbox("push publish", [])

        def on_publish(iq):
            if iq["type"] == "set":
                service.publishes.put(iq)
                service.send_raw(f"<iq type='result' id='{iq['id']}' to='{iq['from']}'/>")

        service.xmpp.register_handler(Callback(
            "push publish", MatchXPath(f"{q(NS_CLIENT, 'iq')}/{q(NS_PUBSUB, 'pubsub')}"),
            on_publish))
        await service.connect()
        try:
            # The phone never sends available presence: messages to it go offline.
            async with online(starling, user, initial_presence=False) as phone:
                r = await phone.iq_xml(f"<iq type='set'><enable xmlns='{ns_push}' "
                                       f"jid='{app}/push' node='node-1'/></iq>")
                assert r["type"] == "result", r
            async with online(starling, sender) as f:
                f.send_message(user, "wake up")
                iq = await service.publishes.take(None, WAIT)
            assert bare(iq["from"]) == user, iq
            publish = iq.xml.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish')}")
            assert publish is not None and publish.get("node") == "node-1", iq
            fields = {f.get("var"): [v.text for v in f.findall(q(NS_DATA, "value"))]
                      for f in publish.iter(q(NS_DATA, "field"))}
            assert fields.get("message-count") == ["1"], fields
        finally:
            await service.disconnect()
    run(go(), timeout=SCENARIO)


def test_s2s_peer_found_through_dns_srv_records(peer, federation, tmp_path_factory):
    """RFC 6120 §3.2.1 resolution: no static_hosts, Starling looks up the peer's
    `_xmpp-server._tcp` SRV record (the suite's stub DNS as `s2s.resolver`) and connects to
    the port it names; the peer finds Starling the same way."""
    with starling_for(peer, federation, tmp_path_factory, "srv", trusted_cert=True,
                      trust=federation.ca, dns=True) as starling:
        s_jid, p_jid = new_user(starling, "dns"), new_user(peer, "dns")

        async def go():
            async with online(starling, s_jid) as s, online(peer, p_jid) as p:
                await chat(s, p, "found you in DNS")
                await chat(p, s, "and back")
        run(go(), timeout=SCENARIO)
        assert_starling_method(starling, peer.domain, "external")


def test_s2s_sasl_external_when_certificates_are_trusted(starling, peer):
    """Both certificates chain to CAs the other side trusts: every stream between the two
    authenticates with SASL EXTERNAL (XEP-0178), on Starling's side and on the peer's."""
    s_jid, p_jid = new_user(starling, "ext"), new_user(peer, "ext")

    async def go():
        async with online(starling, s_jid) as s, online(peer, p_jid) as p:
            await chat(s, p, "external out")
            await chat(p, s, "external in")
    run(go(), timeout=SCENARIO)
    assert_starling_method(starling, peer.domain, "external")
    assert "external" in peer_auth_methods(peer, starling.domain), peer.log_tail()
    assert "dialback" not in peer_auth_methods(peer, starling.domain), peer.log_tail()


def test_s2s_mutual_subscription_and_presence(starling, peer):
    """RFC 6121 §3 across servers: each asks for the other's presence and approves, both
    rosters end at subscription='both', and each then sees the other's presence."""
    s_jid, p_jid = new_user(starling, "sub"), new_user(peer, "sub")

    async def go():
        async with online(starling, s_jid, initial_presence=False) as s, \
                online(peer, p_jid, initial_presence=False) as p:
            await befriend(s, p)   # initial presence, then subscribe both ways
            # A presence update from each reaches the other (broadcast to 'from' contacts).
            s.send_presence(pstatus="on starling")
            got = await p.next_presence(
                lambda st: bare(st.xml.get("from")) == bare(s.jid)
                and st["status"] == "on starling", timeout=WAIT)
            assert ptype(got) == "available"
            p.send_presence(pstatus=f"on {peer.kind}")
            got = await s.next_presence(
                lambda st: bare(st.xml.get("from")) == bare(p.jid)
                and st["status"] == f"on {peer.kind}", timeout=WAIT)
            assert ptype(got) == "available"
    run(go(), timeout=SCENARIO)


def test_s2s_peer_user_in_starling_room(starling, peer):
    """A Prosody/ejabberd user joins a room on Starling's MUC service and talks there."""
    run(muc_conversation(starling, new_user(starling, "owner"), peer, new_user(peer, "guest"),
                         f"{MUC_PREFIX}.{starling.domain}"), timeout=SCENARIO)


def test_s2s_starling_user_in_peer_room(starling, peer):
    """A Starling user joins a room on the peer's MUC service and talks there."""
    run(muc_conversation(peer, new_user(peer, "owner"), starling, new_user(starling, "guest"),
                         peer.muc), timeout=SCENARIO)


def test_s2s_iq_both_ways(starling, peer):
    """Server-addressed IQs across servers (RFC 6120 §8.2.3): each user asks the other
    server for its disco#info, and gets the server/im identity back."""
    s_jid, p_jid = new_user(starling, "iq"), new_user(peer, "iq")

    async def identities(session, domain):
        r = await session.iq_xml(f"<iq type='get' to='{domain}'>"
                                 f"<query xmlns='{NS_DISCO_INFO}'/></iq>", timeout=WAIT)
        assert r["type"] == "result", r
        assert r.xml.get("from") == domain, r
        return {(i.get("category"), i.get("type"))
                for i in r.xml.iter(f"{{{NS_DISCO_INFO}}}identity")}

    async def go():
        async with online(starling, s_jid) as s, online(peer, p_jid) as p:
            assert ("server", "im") in await identities(s, peer.domain)
            assert ("server", "im") in await identities(p, starling.domain)
    run(go(), timeout=SCENARIO)


def test_s2s_vcard_across_servers(starling, peer):
    """vcard-temp (XEP-0054) of an account on the other server: each user publishes a
    vCard on its own server and reads the other's through s2s."""
    s_jid, p_jid = new_user(starling, "card"), new_user(peer, "card")

    async def set_fn(session, fn):
        r = await session.iq_xml(f"<iq type='set'><vCard xmlns='{NS_VCARD}'><FN>{fn}</FN>"
                                 f"</vCard></iq>", timeout=WAIT)
        assert r["type"] == "result", r

    async def get_fn(session, jid):
        r = await session.iq_xml(f"<iq type='get' to='{jid}'><vCard xmlns='{NS_VCARD}'/></iq>",
                                 timeout=WAIT)
        assert r["type"] == "result", r
        assert bare(r.xml.get("from")) == jid, r
        return r.xml.findtext(f"{{{NS_VCARD}}}vCard/{{{NS_VCARD}}}FN")

    async def go():
        async with online(starling, s_jid) as s, online(peer, p_jid) as p:
            await set_fn(s, "Sam on Starling")
            await set_fn(p, f"Pat on {peer.kind}")
            assert await get_fn(p, s_jid) == "Sam on Starling"
            assert await get_fn(s, p_jid) == f"Pat on {peer.kind}"
    run(go(), timeout=SCENARIO)


def pep_session(server, jid: str) -> Session:
    """A session whose XEP-0115 caps say `<PEP_NODE>+notify` (slixmpp's caps plugins); the
    resource is fixed because slixmpp files its caps under the JID it had before binding."""
    s = Session(server, jid, PASSWORD, resource="pep")
    for plugin in ("xep_0060", "xep_0115", "xep_0163"):
        s.xmpp.register_plugin(plugin)
    s.xmpp["xep_0163"].add_interest(PEP_NODE)
    return s


def pep_event(sender_jid: str, text: str):
    def match(m) -> bool:
        items = m.xml.find(f"{{{NS_PUBSUB_EVENT}}}event/{{{NS_PUBSUB_EVENT}}}items")
        return (bare(m.xml.get("from")) == sender_jid and items is not None
                and items.get("node") == PEP_NODE
                and m.xml.findtext(f".//{{{PEP_NODE}}}entry") == text)
    return match


async def pep_publish(session, text):
    r = await session.iq_xml(
        f"<iq type='set'><pubsub xmlns='{NS_PUBSUB}'><publish node='{PEP_NODE}'>"
        f"<item id='current'><entry xmlns='{PEP_NODE}'>{text}</entry></item>"
        f"</publish></pubsub></iq>", timeout=WAIT)
    assert r["type"] == "result", r


@pytest.mark.parametrize("publisher", ["starling", "peer"])
def test_s2s_pep_notification_to_remote_contact(starling, peer, publisher):
    """XEP-0163 across servers: mutual contacts whose caps ask for the node's notifications
    (+notify, which the publisher's server learns with a disco#info query to the other's
    client over s2s, XEP-0115) get each other's PEP publications: a Starling user's reaches
    the peer user ('starling'), the peer user's reaches the Starling user ('peer')."""
    s_jid, p_jid = new_user(starling, "pep"), new_user(peer, "pep")

    async def go():
        s, p = pep_session(starling, s_jid), pep_session(peer, p_jid)
        for session in (s, p):
            await session.connect()
            # Recompute the caps hash now that binding added its last feature (XEP-0115
            # caps): slixmpp computed it before connecting, and a server that verifies the
            # hash (§5.4: ejabberd, Starling) would ignore a stale one.
            await session.xmpp["xep_0115"].update_caps(session.jid, broadcast=False)
        try:
            await befriend(s, p)
            if publisher == "starling":
                await pep_publish(s, "from starling")
                await p.next_message(pep_event(s_jid, "from starling"), timeout=WAIT)
            else:
                await pep_publish(p, f"from {peer.kind}")
                await s.next_message(pep_event(p_jid, f"from {peer.kind}"), timeout=WAIT)
        finally:
            await s.disconnect()
            await p.disconnect()
    run(go(), timeout=SCENARIO)


def test_s2s_direct_tls_both_ways(direct_tls_starling, peer, federation):
    """XEP-0368: Starling and the peer reach each other only over direct TLS (Starling via
    `tls://` static_hosts to the peer's direct TLS port, the peer via the `_xmpps-server`
    SRV record of Starling's direct TLS listener, the only one it has). The peer speaks
    first, so it opens a stream through the SRV record; then Starling's MUC service opens
    one of its own (a mediated invitation from conference.<domain>), as XEP-0288 may let
    replies to the peer reuse the peer's stream."""
    starling = direct_tls_starling
    s_jid, p_jid = new_user(starling, "dtls"), new_user(peer, "dtls")
    room = f"dtls{next(_ids)}@{MUC_PREFIX}.{starling.domain}"

    def invitation(m) -> bool:
        return (m.xml.get("from") == room
                and m.xml.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}invite") is not None)

    async def go():
        async with online(starling, s_jid) as s, online(peer, p_jid) as p:
            await chat(p, s, "direct tls in")
            await chat(s, p, "direct tls out")
            await join_room(s, room, "owner")
            s.send_raw(f"<message to='{room}'><x xmlns='{NS_MUC_USER}'>"
                       f"<invite to='{p_jid}'/></x></message>")
            await p.next_message(invitation, timeout=WAIT)
    run(go(), timeout=SCENARIO)
    assert (f"_xmpps-server._tcp.{starling.domain}", 33) in federation.dns.queries
    assert starling_auths(starling, peer.domain), starling.log_tail(lines=60)


# --------------------------------------------------------------------------
# Starling <-> Prosody / ejabberd, certificates not trusted: dialback
# --------------------------------------------------------------------------

def test_s2s_dialback_when_certificates_are_not_trusted(dialback_starling, peer):
    """Neither side trusts the other's certificate: the streams still authenticate, with
    XEP-0220 dialback, and messages flow both ways."""
    starling = dialback_starling
    s_jid, p_jid = new_user(starling, "db"), new_user(peer, "db")

    async def go():
        async with online(starling, s_jid) as s, online(peer, p_jid) as p:
            await chat(s, p, "dialback out")
            await chat(p, s, "dialback in")
    run(go(), timeout=SCENARIO)
    assert_starling_method(starling, peer.domain, "dialback")
    methods = peer_auth_methods(peer, starling.domain)
    assert "external" not in methods, peer.log_tail()
    if peer.kind == "ejabberd":
        assert "dialback" in methods, peer.log_tail()


def test_s2s_dialback_muc_both_ways(dialback_starling, peer):
    """Dialback for more domain pairs than the first: the peer's user in a room of
    Starling's MUC service (conference.<domain>, a second local domain towards the same
    peer), then Starling's user in a room of the peer's. Every pair still authenticates
    with dialback (XEP-0220 §4.3 multiplexing, or one stream per pair)."""
    starling = dialback_starling
    run(muc_conversation(starling, new_user(starling, "dbowner"), peer,
                         new_user(peer, "dbguest"), f"{MUC_PREFIX}.{starling.domain}"),
        timeout=SCENARIO)
    run(muc_conversation(peer, new_user(peer, "dbowner"), starling,
                         new_user(starling, "dbguest"), peer.muc), timeout=SCENARIO)
    assert_starling_method(starling, peer.domain, "dialback")
    assert_starling_method(starling, peer.muc, "dialback")
    assert any(a.get("local") == f"{MUC_PREFIX}.{starling.domain}"
               for a in starling_auths(starling, peer.domain)), starling_auths(starling,
                                                                                peer.domain)


@pytest.mark.parametrize("initiator", ["starling", "prosody"])
def test_s2s_bidi_with_prosody(make_server, federation, tmp_path_factory, initiator):
    """XEP-0288 with Prosody (mod_s2s_bidi; ejabberd has no XEP-0288): whichever server
    opens the stream asks for, or grants, bidirectionality, and the reply travels back over
    that same stream — Starling's log shows only the one direction for the pair."""
    prosody = start_peer(federation, tmp_path_factory, "prosody",
                         domain=f"bidi-{initiator}-prosody.test")
    (port,) = free_ports(1)
    domain = f"bidi-{initiator}-starling.test"
    try:
        starling = started_starling(make_server, federation, domain, port, remotes=[prosody],
                                    trusted_cert=True, trust=federation.ca)
        s_jid, p_jid = new_user(starling, "bidi"), new_user(prosody, "bidi")

        async def go():
            async with online(starling, s_jid) as s, online(prosody, p_jid) as p:
                first, second = (s, p) if initiator == "starling" else (p, s)
                await chat(first, second, "opening the stream")
                await chat(second, first, "reply over the same stream")
        run(go(), timeout=SCENARIO)
        directions = {a.get("direction") for a in starling_auths(starling, prosody.domain)}
        assert directions == {"out" if initiator == "starling" else "in"}, \
            starling_auths(starling, prosody.domain)
        # Prosody's own account (its fresh log covers this pair only): it granted
        # Starling's request, or made its own.
        said = ("Requested bidirectional stream" if initiator == "starling"
                else "Requesting bidirectional stream")
        assert said in prosody.log_text(), prosody.log_tail()
    finally:
        federation.unpublish(domain)
        federation.stop_peer(prosody)


# --------------------------------------------------------------------------
# Starling <-> Starling
# --------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["external", "dialback"])
def test_s2s_two_starlings_exchange_messages(make_server, federation, method):
    """Two Starling servers federate: a message each way. 'external': both certificates
    from the CA both trust; 'dialback': both from a CA neither trusts."""
    trusted = method == "external"
    port_a, port_b = free_ports(2)
    dom_a, dom_b = f"alpha-{method}.test", f"beta-{method}.test"
    common = dict(trusted_cert=trusted, trust=federation.ca)
    a = started_starling(make_server, federation, dom_a, port_a,
                         remotes=[(dom_b, port_b)], **common)
    b = started_starling(make_server, federation, dom_b, port_b,
                         remotes=[(dom_a, port_a)], **common)
    try:
        a_jid, b_jid = new_user(a, "ann"), new_user(b, "bea")

        async def go():
            async with online(a, a_jid) as sa, online(b, b_jid) as sb:
                await chat(sa, sb, "alpha to beta")
                await chat(sb, sa, "beta to alpha")
        run(go(), timeout=SCENARIO)
        assert_starling_method(a, dom_b, method)
        assert_starling_method(b, dom_a, method)
    finally:
        federation.unpublish(dom_a)
        federation.unpublish(dom_b)


# --------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------

def test_s2s_unreachable_server_bounces_remote_server_not_found(make_server, federation):
    """A message to a domain whose server refuses the connection comes back to the sender
    as an error from the recipient's JID: remote-server-not-found (RFC 6120 §8.3.3.14)."""
    port, dead_port = free_ports(2)   # nothing listens on dead_port
    srv = started_starling(make_server, federation, "lonely.test", port,
                           remotes=[("nowhere.test", dead_port)], trusted_cert=True,
                           trust=federation.ca)
    try:
        jid = new_user(srv, "lone")

        async def go():
            async with online(srv, jid) as s:
                s.send_message("ghost@nowhere.test", "anyone there?")
                err = await s.next_message(lambda m: m.xml.get("type") == "error",
                                           timeout=WAIT)
                assert bare(err.xml.get("from")) == "ghost@nowhere.test", err
                assert error_condition(err.xml) == "remote-server-not-found", err
        run(go(), timeout=SCENARIO)
    finally:
        federation.unpublish("lonely.test")


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never says a word: a peer that hangs."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def test_s2s_hanging_server_bounces_every_queued_stanza_with_timeout(make_server, federation):
    """Stanzas queued for a domain whose server accepts TCP but never answers all come
    back, none vanish: remote-server-timeout (RFC 6120 §8.3.3.15) once
    s2s.connect_timeout_secs has passed."""
    silent = SilentServer()
    (port,) = free_ports(1)
    options = starling_options(federation, "patient.test", port, trusted_cert=True,
                               trust=federation.ca, remotes=[("hang.test", silent.port)])
    options["extra_sections"]["s2s"]["connect_timeout_secs"] = 2
    srv = make_server(**options)
    srv.domain, srv.kind = "patient.test", "starling"
    try:
        jid = new_user(srv, "wait")

        async def go():
            async with online(srv, jid) as s:
                ids = [f"queued-{i}" for i in range(3)]
                for i in ids:
                    s.send_raw(f"<message type='chat' to='ghost@hang.test' id='{i}'>"
                               f"<body>{i}</body></message>")
                for i in ids:
                    err = await s.next_message(lambda m, i=i: m.xml.get("id") == i,
                                               timeout=WAIT)
                    assert err.xml.get("type") == "error", err
                    assert bare(err.xml.get("from")) == "ghost@hang.test", err
                    assert error_condition(err.xml) == "remote-server-timeout", err
        run(go(), timeout=SCENARIO)
    finally:
        silent.close()
