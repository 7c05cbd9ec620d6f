"""RFC 6120 §5-7: STARTTLS, SASL (SCRAM, SCRAM-PLUS, PLAIN), binding; XEP-0368, XEP-0440."""

import asyncio

import pytest

import rawxmpp
from conftest import PASSWORD
from rawxmpp import RawStream, q, scram_login
from xmpp_client import LoginFailed, Session, login_error, online, run, tls_server_end_point

SCRAM = ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PLUS = [m + "-PLUS" for m in SCRAM]


def tls_features(server, **kwargs):
    """Stream features after STARTTLS, read over a raw stream."""
    stream = RawStream(server.c2s_port, **kwargs)
    stream.open()
    return stream, stream.starttls()


# -- what the server offers ------------------------------------------------

def test_starttls_required_and_offered_before_auth(server):
    stream = RawStream(server.c2s_port)
    try:
        features = stream.open()
        starttls = features.find(q(rawxmpp.NS_TLS, "starttls"))
        assert starttls is not None, "no <starttls/> in the initial stream features"
        assert starttls.find(q(rawxmpp.NS_TLS, "required")) is not None, \
            "TLS is mandatory (require_tls=true) but <starttls/> lacks <required/> (RFC 6120 §5.3.1)"
        assert "PLAIN" not in rawxmpp.mechanisms(features), "PLAIN offered before TLS"
    finally:
        stream.close()


def test_sasl_mechanisms_after_starttls(server):
    stream, features = tls_features(server)
    stream.close()
    offered = set(rawxmpp.mechanisms(features))
    missing = sorted(set(SCRAM + PLUS + ["PLAIN"]) - offered)
    assert not missing, f"mechanisms not offered after TLS: {missing} (offered: {sorted(offered)})"


def test_channel_binding_types_advertised(server):
    """XEP-0440: the server lists the channel-binding types it supports."""
    stream, features = tls_features(server)
    stream.close()
    types = rawxmpp.channel_binding_types(features)
    assert "tls-server-end-point" in types, f"XEP-0440 types: {types}"
    assert "tls-exporter" in types, f"XEP-0440 types: {types}"


# -- logging in ------------------------------------------------------------

@pytest.mark.parametrize("mech", SCRAM + ["PLAIN"])
def test_login(server, mech):
    async def scenario():
        async with online(server, "alice", PASSWORD, mech=mech, resource="auth") as alice:
            assert alice.xmpp["feature_mechanisms"].mech.name == mech
            assert str(alice.jid) == "alice@localhost/auth"
            reply = await alice.iq_xml("<iq type='get' to='localhost'>"
                                       "<ping xmlns='urn:xmpp:ping'/></iq>")
            assert reply["type"] == "result"
    run(scenario())


@pytest.mark.parametrize("mech", PLUS)
def test_login_scram_plus_tls_server_end_point(server, mech):
    """SCRAM-*-PLUS with tls-server-end-point (RFC 5929), through slixmpp."""
    async def scenario():
        session = Session(server, "alice", PASSWORD, mech=mech,
                          channel_binding="tls-server-end-point")
        await session.connect()
        try:
            assert session.xmpp["feature_mechanisms"].mech.name == mech
            assert session.xmpp["feature_mechanisms"].mech.gs2_header.startswith(
                b"p=tls-server-end-point")
        finally:
            await session.disconnect()
    run(scenario())


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-512-PLUS"])
def test_login_scram_plus_tls_exporter(server, mech):
    """SCRAM-*-PLUS with tls-exporter (RFC 9266) over TLS 1.3, raw client via pyOpenSSL."""
    stream = RawStream(server.c2s_port, tls_impl="openssl")
    try:
        stream.open()
        stream.starttls()
        assert stream.transport.version() == "TLSv1.3"
        result = scram_login(stream, mech, "alice", PASSWORD,
                             gs2_flag="p=tls-exporter", cb_data=stream.transport.exporter())
        assert result.ok, f"tls-exporter binding rejected: {result.condition}"
        assert result.server_verified, "server signature (v=) did not verify"
    finally:
        stream.close()


@pytest.mark.parametrize("cb_type", ["tls-exporter", "tls-server-end-point"])
def test_scram_plus_wrong_binding_data_rejected(server, cb_type):
    stream = RawStream(server.c2s_port)
    try:
        stream.open()
        stream.starttls()
        result = scram_login(stream, "SCRAM-SHA-256-PLUS", "alice", PASSWORD,
                             gs2_flag=f"p={cb_type}", cb_data=b"\x00" * 32)
        assert not result.ok, "authentication succeeded with forged channel-binding data"
        assert result.condition == "not-authorized"
    finally:
        stream.close()


def test_scram_downgrade_flag_rejected(server):
    """RFC 5802 §6: gs2 flag 'y' while the server offers -PLUS means a downgrade: fail."""
    stream = RawStream(server.c2s_port)
    try:
        stream.open()
        features = stream.starttls()
        assert "SCRAM-SHA-256-PLUS" in rawxmpp.mechanisms(features)
        result = scram_login(stream, "SCRAM-SHA-256", "alice", PASSWORD, gs2_flag="y")
        assert not result.ok, "server accepted gs2 flag 'y' although it advertises -PLUS"
    finally:
        stream.close()


def test_scram_raw_client_verifies_server_signature(server):
    stream = RawStream(server.c2s_port)
    try:
        stream.open()
        stream.starttls()
        result = scram_login(stream, "SCRAM-SHA-256", "alice", PASSWORD)
        assert result.ok and result.server_verified, result
    finally:
        stream.close()


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "PLAIN"])
def test_wrong_password_not_authorized_and_server_keeps_serving(server, mech):
    async def scenario():
        assert await login_error(server, "bob", "wrong password", mech=mech) == "not-authorized"
        async with online(server, "bob", PASSWORD, mech=mech):
            pass
    run(scenario())


def test_unknown_user_not_authorized(server):
    async def scenario():
        assert await login_error(server, "nosuchuser", PASSWORD,
                                 mech="SCRAM-SHA-256") == "not-authorized"
    run(scenario())


def test_plain_before_starttls_refused(server):
    """With TLS required, SASL before STARTTLS must not succeed (RFC 6120 §5.3.1)."""
    stream = RawStream(server.c2s_port)
    try:
        stream.open()
        stream.send(f"<auth xmlns='{rawxmpp.NS_SASL}' mechanism='PLAIN'>AGFsaWNlAHh4</auth>")
        try:
            reply = stream.read_element()
        except rawxmpp.StreamClosed:
            return  # closed the stream: acceptable
        assert reply.tag != q(rawxmpp.NS_SASL, "success"), "PLAIN succeeded before TLS"
    finally:
        stream.close()


def test_login_direct_tls(server):
    """XEP-0368: TLS from the first byte on the c2s_direct_tls port."""
    async def scenario():
        async with online(server, "carol", PASSWORD, mech="SCRAM-SHA-256",
                          direct_tls=True, resource="direct") as carol:
            assert str(carol.jid) == "carol@localhost/direct"
    run(scenario())


def test_server_generated_resource(server):
    """RFC 6120 §7.6: an empty <bind/> gets a server-generated resource."""
    async def scenario():
        async with online(server, "dave", PASSWORD, mech="SCRAM-SHA-256") as dave:
            assert dave.jid.bare == "dave@localhost"
            assert dave.jid.resource, "no resource was generated"
    run(scenario())


def test_require_tls_false_allows_plaintext_scram(make_server):
    """With [c2s] require_tls = false: STARTTLS is optional and SCRAM works in the clear."""
    srv = make_server(require_tls=False, accounts={"alice": PASSWORD})
    stream = RawStream(srv.c2s_port)
    try:
        features = stream.open()
        starttls = features.find(q(rawxmpp.NS_TLS, "starttls"))
        assert starttls is not None, "STARTTLS should still be offered"
        assert starttls.find(q(rawxmpp.NS_TLS, "required")) is None, "TLS marked required"
        offered = rawxmpp.mechanisms(features)
        assert not [m for m in offered if m.endswith("-PLUS")], "-PLUS offered without TLS"
        result = scram_login(stream, "SCRAM-SHA-256", "alice", PASSWORD)
        assert result.ok and result.server_verified, result
    finally:
        stream.close()


def test_require_tls_false_allows_plain_in_clear_with_a_warning(make_server):
    """The documented debugging/benchmark switch (issue #2): with `[c2s] require_tls = false`
    PLAIN is offered and accepted on an unencrypted stream, and the server says loudly at
    start-up that it is in that mode. With the default (`true`) PLAIN never appears before
    TLS -- see test_plain_before_starttls_refused."""
    srv = make_server(require_tls=False, accounts={"alice": PASSWORD})
    assert "require_tls is OFF" in srv.log_text(), srv.log_tail()
    stream = RawStream(srv.c2s_port)
    try:
        features = stream.open()
        assert "PLAIN" in rawxmpp.mechanisms(features), features
        stream.auth_plain("alice", PASSWORD)
    finally:
        stream.close()


def test_direct_tls_features(server):
    """XEP-0368: on the direct-TLS port the first features are SASL, with -PLUS, no STARTTLS."""
    stream = RawStream(server.direct_tls_port, direct_tls=True)
    try:
        features = stream.open()
        assert features.find(q(rawxmpp.NS_TLS, "starttls")) is None
        assert "SCRAM-SHA-256-PLUS" in rawxmpp.mechanisms(features)
        result = scram_login(stream, "SCRAM-SHA-256-PLUS", "alice", PASSWORD,
                             gs2_flag="p=tls-server-end-point",
                             cb_data=tls_server_end_point(stream.transport.peer_cert_der()))
        assert result.ok and result.server_verified, result
    finally:
        stream.close()


def test_resource_conflict(server):
    """RFC 6120 §7.7.2.2: binding a resource that is in use never yields two sessions with
    one full JID: the old session is replaced (<conflict/>), the new bind is refused, or the
    server picks another resource."""
    async def scenario():
        old = await Session(server, "carol", PASSWORD, resource="same").connect()
        old_gone = asyncio.ensure_future(old.xmpp.wait_until("disconnected", 5))
        new = Session(server, "carol", PASSWORD, resource="same")
        try:
            await new.connect()
        except (LoginFailed, ConnectionError):
            old_gone.cancel()
            await old.disconnect()
            return   # new bind refused: allowed
        try:
            if str(new.jid) == "carol@localhost/same":   # took over: old must be gone
                try:
                    await asyncio.wait_for(old_gone, 5)
                except asyncio.TimeoutError:
                    raise AssertionError("two live sessions bound to carol@localhost/same")
                conditions = [c.tag.split("}")[1] for e in old.stream_errors for c in e
                              if not c.tag.endswith("}text")]
                assert "conflict" in conditions, f"old session closed with {conditions}"
            else:
                old_gone.cancel()
                assert new.jid.resource != "same"
        finally:
            await new.disconnect()
            await old.disconnect()
    run(scenario())
