"""XEP-0388 SASL2, XEP-0386 Bind 2 and XEP-0484 FAST: the one-round-trip login of
Conversations and Monal.

slixmpp 1.17 has no SASL2, so a small byte-level SASL2 client (below, over rawxmpp) plays
the modern client; every HMAC it checks is computed here, independently of the server.
A normal slixmpp (RFC 6120 SASL) login runs next to it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from conftest import PASSWORD
from rawxmpp import NS_BIND, NS_CLIENT, NS_SASL, NS_STREAM, RawStream, q
from xmpp_client import online, run, tls_server_end_point

NS_SASL2 = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"
NS_FAST = "urn:xmpp:fast:0"
NS_SM = "urn:xmpp:sm:3"
NS_CSI = "urn:xmpp:csi:0"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def condition(failure: ET.Element) -> str | None:
    assert failure.tag == q(NS_SASL2, "failure"), ET.tostring(failure)
    for child in failure:
        if child.tag.startswith("{" + NS_SASL + "}"):
            return child.tag.split("}", 1)[1]
    return None


def child_text(el: ET.Element, ns: str, name: str) -> str | None:
    c = el.find(q(ns, name))
    return None if c is None else (c.text or "")


class Sasl2:
    """A raw client that STARTTLSes and speaks SASL2 by hand."""

    def __init__(self, server, *, tls_impl: str = "stdlib", ua: str | None = None):
        self.stream = RawStream(server.c2s_port, tls_impl=tls_impl)
        self.pre_tls_features = self.stream.open()
        self.features = self.stream.starttls()
        self.ua = ua or str(uuid.uuid4())
        self.after: ET.Element | None = None   # stream features after <success/>

    def close(self) -> None:
        self.stream.close()

    def authentication(self) -> ET.Element | None:
        return self.features.find(q(NS_SASL2, "authentication"))

    def fast_mechanisms(self) -> list[str]:
        fast = self.authentication().find(f"{q(NS_SASL2, 'inline')}/{q(NS_FAST, 'fast')}")
        return [] if fast is None else [m.text for m in fast.findall(q(NS_FAST, "mechanism"))]

    def _authenticate(self, mechanism: str, initial: bytes, extra: str) -> None:
        self.stream.send(
            f"<authenticate xmlns='{NS_SASL2}' mechanism='{mechanism}'>"
            f"<initial-response>{b64(initial)}</initial-response>"
            f"<user-agent id='{self.ua}'><software>conformance</software>"
            f"<device>pytest</device></user-agent>{extra}</authenticate>")

    def _finish(self, reply: ET.Element) -> ET.Element:
        if reply.tag == q(NS_SASL2, "success"):
            self.after = self.stream.expect(q(NS_STREAM, "features"))
        return reply

    def scram(self, user: str, password: str, *, mechanism: str = "SCRAM-SHA-256",
              extra: str = "", gs2_flag: str = "n", cb_data: bytes = b"") -> ET.Element:
        """Returns <success/> (checking the server signature) or <failure/>."""
        name = mechanism.removesuffix("-PLUS").removeprefix("SCRAM-").replace("-", "").lower()
        digest = getattr(hashlib, name)

        def hm(key, data):
            return hmac.new(key, data, digest).digest()

        gs2 = f"{gs2_flag},,".encode()
        first_bare = f"n={user},r={secrets.token_urlsafe(18)}".encode()
        self._authenticate(mechanism, gs2 + first_bare, extra)
        reply = self.stream.read_element()
        if reply.tag != q(NS_SASL2, "challenge"):
            return reply
        server_first = base64.b64decode(reply.text or "")
        attrs = dict(kv.split(b"=", 1) for kv in server_first.split(b","))
        salted = hashlib.pbkdf2_hmac(name, password.encode(), base64.b64decode(attrs[b"s"]),
                                     int(attrs[b"i"]))
        client_key = hm(salted, b"Client Key")
        final_bare = b"c=" + base64.b64encode(gs2 + cb_data) + b",r=" + attrs[b"r"]
        auth_message = first_bare + b"," + server_first + b"," + final_bare
        proof = bytes(a ^ b for a, b in zip(client_key,
                                            hm(digest(client_key).digest(), auth_message)))
        self.stream.send(f"<response xmlns='{NS_SASL2}'>"
                         f"{b64(final_bare + b',p=' + base64.b64encode(proof))}</response>")
        reply = self.stream.read_element()
        if reply.tag == q(NS_SASL2, "success"):
            additional = base64.b64decode(child_text(reply, NS_SASL2, "additional-data") or "")
            signature = hm(hm(salted, b"Server Key"), auth_message)
            assert additional == b"v=" + base64.b64encode(signature), \
                "server signature in <additional-data/> does not verify"
        return self._finish(reply)

    def plain(self, user: str, password: str, extra: str = "") -> ET.Element:
        self._authenticate("PLAIN", b"\0" + user.encode() + b"\0" + password.encode(), extra)
        return self._finish(self.stream.read_element())

    def ht(self, user: str, token: str, *, mechanism: str = "HT-SHA-256-NONE",
           count: int | None = None, invalidate: bool = False, extra: str = "",
           cb_data: bytes = b"") -> ET.Element:
        """A FAST login; on success the server's HMAC is checked."""
        initiator = hmac.new(token.encode(), b"Initiator" + cb_data, hashlib.sha256).digest()
        attrs = (f" count='{count}'" if count is not None else "") + \
            (" invalidate='true'" if invalidate else "")
        self._authenticate(mechanism, user.encode() + b"\0" + initiator,
                           f"<fast xmlns='{NS_FAST}'{attrs}/>{extra}")
        reply = self.stream.read_element()
        if reply.tag == q(NS_SASL2, "success"):
            responder = hmac.new(token.encode(), b"Responder" + cb_data, hashlib.sha256).digest()
            additional = base64.b64decode(child_text(reply, NS_SASL2, "additional-data") or "")
            assert additional == responder, "server HT proof does not verify"
        return self._finish(reply)

    def ping(self) -> None:
        self.stream.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        while True:
            el = self.stream.read_element()
            if el.tag == q(NS_CLIENT, "iq") and el.get("id") == "p1":
                assert el.get("type") == "result", ET.tostring(el)
                return


def identity(success: ET.Element) -> str:
    assert success.tag == q(NS_SASL2, "success"), ET.tostring(success)
    return child_text(success, NS_SASL2, "authorization-identifier")


def token_of(success: ET.Element) -> ET.Element:
    tok = success.find(q(NS_FAST, "token"))
    assert tok is not None, f"no FAST token in {ET.tostring(success)!r}"
    return tok


REQUEST_NONE = f"<request-token xmlns='{NS_FAST}' mechanism='HT-SHA-256-NONE'/>"
BIND = f"<bind xmlns='{NS_BIND2}'><tag>ConfTest</tag></bind>"


def fresh_token(server, user: str, ua: str | None = None) -> tuple[str, str]:
    """(user-agent id, token) from a password login that requests a token."""
    c = Sasl2(server, ua=ua)
    try:
        token = token_of(c.scram(user, PASSWORD, extra=REQUEST_NONE)).get("token")
        return c.ua, token
    finally:
        c.close()


# --------------------------------------------------------------------------
# SASL2 and Bind 2
# --------------------------------------------------------------------------

def test_sasl2_feature_and_inline_features(server):
    c = Sasl2(server)
    try:
        assert c.pre_tls_features.find(q(NS_SASL2, "authentication")) is None, \
            "SASL2 offered before TLS"
        auth = c.authentication()
        assert auth is not None, "no SASL2 <authentication/> feature after STARTTLS"
        mechs = [m.text for m in auth.findall(q(NS_SASL2, "mechanism"))]
        assert {"SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1", "PLAIN"} <= set(mechs)
        inline = auth.find(q(NS_SASL2, "inline"))
        bind = inline.find(q(NS_BIND2, "bind"))
        assert bind is not None
        vars_ = {f.get("var") for f in bind.findall(f"{q(NS_BIND2, 'inline')}/{q(NS_BIND2, 'feature')}")}
        assert {NS_SM, NS_CSI} <= vars_
        assert inline.find(q(NS_SM, "sm")) is not None
        assert "HT-SHA-256-NONE" in c.fast_mechanisms()
        assert "HT-SHA-256-ENDP" in c.fast_mechanisms()
    finally:
        c.close()


def test_sasl2_scram_bind2_resource_from_tag(server):
    c = Sasl2(server)
    try:
        success = c.scram("alice", PASSWORD, extra=BIND)
        jid = identity(success)
        assert jid.startswith("alice@localhost/ConfTest/") and len(jid) > len("alice@localhost/ConfTest/")
        assert success.find(q(NS_BIND2, "bound")) is not None
        # No stream restart: features follow at once, without resource binding.
        assert c.after.find(q(NS_BIND, "bind")) is None
        c.ping()
        # The bound full JID is routable.
        c.stream.send(f"<message to='{jid}' id='self1'><body>hi me</body></message>")
        while True:
            el = c.stream.read_element()
            if el.tag == q(NS_CLIENT, "message"):
                assert child_text(el, NS_CLIENT, "body") == "hi me"
                break
    finally:
        c.close()


def test_sasl2_two_logins_same_tag_get_distinct_resources(server):
    a, b = Sasl2(server), Sasl2(server)
    try:
        ja = identity(a.scram("bob", PASSWORD, extra=BIND))
        jb = identity(b.scram("bob", PASSWORD, extra=BIND))
        assert ja != jb and ja.startswith("bob@localhost/ConfTest/")
        a.ping()
        b.ping()
    finally:
        a.close()
        b.close()


def test_bind2_same_client_replaces_its_earlier_session(server):
    """XEP-0386: the resource is stable per client installation, and a new bind from the
    same client ends its earlier session."""
    first = Sasl2(server)
    second = Sasl2(server, ua=first.ua)
    try:
        j1 = identity(first.scram("carol", PASSWORD, extra=BIND))
        j2 = identity(second.scram("carol", PASSWORD, extra=BIND))
        assert j1 == j2
        assert first.stream.expect_stream_error() == "conflict"
        second.ping()
    finally:
        first.close()
        second.close()


def test_sasl2_scram_plus_tls_exporter(server):
    c = Sasl2(server, tls_impl="openssl")
    try:
        assert c.stream.transport.version() == "TLSv1.3"
        success = c.scram("alice", PASSWORD, mechanism="SCRAM-SHA-256-PLUS", extra=BIND,
                          gs2_flag="p=tls-exporter", cb_data=c.stream.transport.exporter())
        assert identity(success).startswith("alice@localhost/ConfTest/")
        c.ping()
    finally:
        c.close()


def test_sasl2_scram_plus_forged_binding_refused(server):
    c = Sasl2(server)
    try:
        reply = c.scram("alice", PASSWORD, mechanism="SCRAM-SHA-256-PLUS",
                        gs2_flag="p=tls-server-end-point", cb_data=b"\0" * 32)
        assert condition(reply) == "not-authorized"
    finally:
        c.close()


def test_sasl2_wrong_password_then_retry(server):
    c = Sasl2(server)
    try:
        reply = c.scram("alice", "wrong password", extra=BIND)
        assert condition(reply) == "not-authorized"
        # A failure leaves the stream as it was: the client may try again.
        assert identity(c.scram("alice", PASSWORD, extra=BIND)).startswith("alice@localhost/")
    finally:
        c.close()


def test_sasl2_failures_are_limited(server):
    c = Sasl2(server)
    try:
        for _ in range(3):   # limits.max_auth_failures, shared with RFC 6120 SASL
            assert condition(c.scram("alice", "nope")) == "not-authorized"
        assert c.stream.expect_stream_error() == "policy-violation"
    finally:
        c.close()


def test_sasl2_unknown_mechanism(server):
    c = Sasl2(server)
    try:
        c._authenticate("DIGEST-MD5", b"x", "")
        assert condition(c.stream.read_element()) == "invalid-mechanism"
    finally:
        c.close()


def test_sasl2_plain_without_bind2_then_rfc6120_bind(server):
    c = Sasl2(server)
    try:
        success = c.plain("alice", PASSWORD)
        assert identity(success) == "alice@localhost"
        assert c.after.find(q(NS_BIND, "bind")) is not None
        # Same stream, no restart: RFC 6120 binding goes on directly.
        assert c.stream.bind("legacy") == "alice@localhost/legacy"
        c.ping()
        # A second authentication on the same stream is a stream error (XEP-0388 §6).
        c._authenticate("PLAIN", b"\0alice\0" + PASSWORD.encode(), "")
        assert c.stream.expect_stream_error()
    finally:
        c.close()


def test_bind2_inline_sm_enable(server):
    c = Sasl2(server)
    try:
        success = c.scram("carol", PASSWORD, extra=f"<bind xmlns='{NS_BIND2}'><tag>Sm</tag>"
                                                   f"<enable xmlns='{NS_SM}' resume='true'/></bind>")
        enabled = success.find(f"{q(NS_BIND2, 'bound')}/{q(NS_SM, 'enabled')}")
        assert enabled is not None, ET.tostring(success)
        assert enabled.get("resume") == "true" and enabled.get("id")
        # SM counts from the first stanza: one IQ handled -> h=1.
        c.ping()
        c.stream.send(f"<r xmlns='{NS_SM}'/>")
        while True:
            el = c.stream.read_element()
            if el.tag == q(NS_SM, "a"):
                assert el.get("h") == "1"
                break
    finally:
        c.close()


def test_bind2_inline_csi_inactive_holds_presence(server, accounts):
    alice_name, bob_name = accounts(server, "csa", "csb")
    c = Sasl2(server)
    bob = RawStream(server.c2s_port)
    try:
        success = c.scram(alice_name, PASSWORD, extra=f"<bind xmlns='{NS_BIND2}'><tag>Csi</tag>"
                                                      f"<inactive xmlns='{NS_CSI}'/></bind>")
        alice_jid = identity(success)
        c.stream.send("<presence/>")
        c.ping()
        bob.login(bob_name, PASSWORD, "desk")
        for status in ("first", "second"):
            bob.send(f"<presence to='{alice_jid}'><status>{status}</status></presence>")
        bob.send(f"<message to='{alice_jid}' type='chat'><body>wake up</body></message>")
        seen = []
        while True:
            el = c.stream.read_element()
            frm = el.get("from") or ""
            if el.tag == q(NS_CLIENT, "presence") and frm.startswith(bob_name):
                seen.append(child_text(el, NS_CLIENT, "status"))
            if el.tag == q(NS_CLIENT, "message"):
                break
        # Inactive from the start: bob's presences were held and coalesced.
        assert seen == ["second"]
    finally:
        c.close()
        bob.close()


NS_CARBONS = "urn:xmpp:carbons:2"


def test_bind2_inline_carbons_enable(server, accounts):
    """XEP-0280 inside Bind 2: carbons are on from the first stanza, with no IQ."""
    alice_name, bob_name = accounts(server, "bca", "bcb")
    c = Sasl2(server)
    bind = c.authentication().find(f"{q(NS_SASL2, 'inline')}/{q(NS_BIND2, 'bind')}")
    vars_ = {f.get("var") for f in bind.findall(f"{q(NS_BIND2, 'inline')}/{q(NS_BIND2, 'feature')}")}
    assert NS_CARBONS in vars_, vars_
    other = RawStream(server.c2s_port)
    bob = RawStream(server.c2s_port)
    try:
        success = c.scram(alice_name, PASSWORD, extra=f"<bind xmlns='{NS_BIND2}'><tag>Carb</tag>"
                                                      f"<enable xmlns='{NS_CARBONS}'/></bind>")
        assert success.tag == q(NS_SASL2, "success"), ET.tostring(success)
        other_jid = other.login(alice_name, PASSWORD, "other")
        bob.login(bob_name, PASSWORD, "desk")
        # To alice's other resource by full JID: the Bind 2 session gets a <received/> copy.
        bob.send(f"<message to='{other_jid}' type='chat' id='c1'><body>copy me</body></message>")
        while True:
            el = c.stream.read_element()
            if el.tag == q(NS_CLIENT, "message"):
                break
        received = el.find(q(NS_CARBONS, "received"))
        assert received is not None, ET.tostring(el)
        assert "copy me" in ET.tostring(received, encoding="unicode")
    finally:
        c.close()
        other.close()
        bob.close()


def test_sasl2_inline_sm_resume_gets_queued_message(server, accounts):
    alice_name, bob_name = accounts(server, "rsa", "rsb")
    c = Sasl2(server)
    bob = RawStream(server.c2s_port)
    try:
        success = c.scram(alice_name, PASSWORD, extra=f"<bind xmlns='{NS_BIND2}'><tag>Res</tag>"
                                                      f"<enable xmlns='{NS_SM}' resume='true'/></bind>")
        alice_jid = identity(success)
        previd = success.find(f"{q(NS_BIND2, 'bound')}/{q(NS_SM, 'enabled')}").get("id")
        c.stream.send("<presence/>")
        c.ping()
        c.close()   # abrupt: no </stream:stream>
        bob.login(bob_name, PASSWORD, "desk")
        bob.send(f"<message to='{alice_jid}' type='chat' id='queued'><body>while away</body></message>")

        c2 = Sasl2(server, ua=c.ua)
        try:
            # 'h' counts what we saw: our own presence echo and the ping result, at most.
            reply = c2.scram(alice_name, PASSWORD,
                             extra=f"<resume xmlns='{NS_SM}' previd='{previd}' h='0'/>{BIND}")
            resumed = reply.find(q(NS_SM, "resumed"))
            assert resumed is not None, ET.tostring(reply)
            assert resumed.get("previd") == previd
            assert identity(reply) == alice_jid
            assert reply.find(q(NS_BIND2, "bound")) is None, "bind must be skipped on resumption"
            while True:
                el = c2.stream.read_element()
                if el.tag == q(NS_CLIENT, "message"):
                    assert child_text(el, NS_CLIENT, "body") == "while away"
                    break
            c2.ping()
        finally:
            c2.close()
    finally:
        bob.close()


def test_sasl2_inline_resume_unknown_falls_back_to_bind(server):
    c = Sasl2(server)
    try:
        reply = c.scram("dave", PASSWORD,
                        extra=f"<resume xmlns='{NS_SM}' previd='nope' h='0'/>{BIND}")
        failed = reply.find(q(NS_SM, "failed"))
        assert failed is not None, ET.tostring(reply)
        assert reply.find(q(NS_BIND2, "bound")) is not None
        assert identity(reply).startswith("dave@localhost/ConfTest/")
        c.ping()
    finally:
        c.close()


def test_rfc6120_login_next_to_sasl2(server):
    c = Sasl2(server)
    try:
        identity(c.scram("bob", PASSWORD, extra=BIND))

        async def scenario():
            async with online(server, "bob", PASSWORD, mech="SCRAM-SHA-256", resource="old") as s:
                assert str(s.jid) == "bob@localhost/old"
                reply = await s.iq_xml("<iq type='get' to='localhost'>"
                                       "<ping xmlns='urn:xmpp:ping'/></iq>")
                assert reply["type"] == "result"
        run(scenario())
        c.ping()
    finally:
        c.close()


# --------------------------------------------------------------------------
# FAST
# --------------------------------------------------------------------------

def test_fast_token_then_fast_login(server):
    c = Sasl2(server)
    try:
        success = c.scram("alice", PASSWORD, extra=REQUEST_NONE + BIND)
        tok = token_of(success)
        token = tok.get("token")
        assert len(token) >= 32 and tok.get("expiry", "").endswith("Z")
    finally:
        c.close()
    f = Sasl2(server, ua=c.ua)
    try:
        success = f.ht("alice", token, count=1, extra=BIND)
        assert identity(success).startswith("alice@localhost/ConfTest/")
        f.ping()
    finally:
        f.close()
    # Tokens belong to the client installation that asked for them.
    other = Sasl2(server)
    try:
        assert condition(other.ht("alice", token, count=2)) == "not-authorized"
    finally:
        other.close()


def test_fast_endp_channel_binding(server):
    c = Sasl2(server)
    try:
        request = f"<request-token xmlns='{NS_FAST}' mechanism='HT-SHA-256-ENDP'/>"
        token = token_of(c.scram("alice", PASSWORD, extra=request)).get("token")
    finally:
        c.close()
    f = Sasl2(server, ua=c.ua)
    try:
        # The token is bound to its mechanism: the unbound variant is refused.
        assert condition(f.ht("alice", token, count=1)) == "not-authorized"
        cb = tls_server_end_point(f.stream.transport.peer_cert_der())
        success = f.ht("alice", token, mechanism="HT-SHA-256-ENDP", count=2, cb_data=cb)
        assert identity(success) == "alice@localhost"
    finally:
        f.close()


def test_fast_expr_channel_binding(server):
    """HT-SHA-256-EXPR: the token proof covers RFC 9266 tls-exporter data (TLS 1.3)."""
    c = Sasl2(server, tls_impl="openssl")
    try:
        assert "HT-SHA-256-EXPR" in c.fast_mechanisms()
        request = f"<request-token xmlns='{NS_FAST}' mechanism='HT-SHA-256-EXPR'/>"
        token = token_of(c.scram("bob", PASSWORD, extra=request)).get("token")
    finally:
        c.close()
    f = Sasl2(server, tls_impl="openssl", ua=c.ua)
    try:
        # Another connection's exporter (a relayed proof) does not verify.
        assert condition(f.ht("bob", token, mechanism="HT-SHA-256-EXPR", count=1,
                              cb_data=b"\x01" * 32)) == "not-authorized"
        success = f.ht("bob", token, mechanism="HT-SHA-256-EXPR", count=2,
                       cb_data=f.stream.transport.exporter(), extra=BIND)
        assert identity(success).startswith("bob@localhost/ConfTest/")
        f.ping()
    finally:
        f.close()


def test_fast_rotation_keeps_old_token_until_new_is_used(server):
    ua, t1 = fresh_token(server, "bob")

    def login(token, count, extra=""):
        c = Sasl2(server, ua=ua)
        try:
            return c.ht("bob", token, count=count, extra=extra)
        finally:
            c.close()

    t2 = token_of(login(t1, 1, REQUEST_NONE)).get("token")
    assert t2 != t1
    # The new token may have been lost on the way: the old one still works...
    identity(login(t1, 2))
    # ...until the new one is used, which retires it.
    identity(login(t2, 1))
    assert condition(login(t1, 3)) == "not-authorized"
    identity(login(t2, 2))


def test_fast_replayed_count_refused(server):
    ua, token = fresh_token(server, "carol")

    def login(count):
        c = Sasl2(server, ua=ua)
        try:
            return c.ht("carol", token, count=count)
        finally:
            c.close()

    identity(login(5))
    assert condition(login(5)) == "not-authorized"
    assert condition(login(4)) == "not-authorized"
    identity(login(6))


def test_fast_invalidate(server):
    ua, token = fresh_token(server, "dave")
    c = Sasl2(server, ua=ua)
    try:
        success = c.ht("dave", token, count=1, invalidate=True)
        assert identity(success) == "dave@localhost"
        assert success.find(q(NS_FAST, "token")) is None
    finally:
        c.close()
    c = Sasl2(server, ua=ua)
    try:
        assert condition(c.ht("dave", token, count=2)) == "not-authorized"
    finally:
        c.close()


def test_fast_expired_token_refused(make_server):
    srv = make_server({"eve": PASSWORD}, extra_sections={"auth": {"fast_token_lifetime_secs": 1}})
    ua, token = fresh_token(srv, "eve")
    time.sleep(2.1)   # the token's whole (configured) life
    c = Sasl2(srv, ua=ua)
    try:
        assert condition(c.ht("eve", token, count=1)) == "credentials-expired"
        # The password still works, and brings a fresh token.
        assert token_of(c.scram("eve", PASSWORD, extra=REQUEST_NONE)).get("token") != token
    finally:
        c.close()


def test_password_change_and_admin_revoke_tokens(server, accounts):
    (user,) = accounts(server, "rev")
    ua, token = fresh_token(server, user)
    server.cli("passwd", f"{user}@localhost", PASSWORD)
    c = Sasl2(server, ua=ua)
    try:
        assert condition(c.ht(user, token, count=1)) == "not-authorized"
    finally:
        c.close()

    ua, token = fresh_token(server, user)
    out = server.cli("revoke-tokens", f"{user}@localhost").stdout
    assert "revoked 1" in out, out
    c = Sasl2(server, ua=ua)
    try:
        assert condition(c.ht(user, token, count=1)) == "not-authorized"
    finally:
        c.close()


def test_fast_token_never_logged(server):
    ua, token = fresh_token(server, "alice")
    c = Sasl2(server, ua=ua)
    try:
        identity(c.ht("alice", token, count=1))
    finally:
        c.close()
    assert token not in server.log_text()
