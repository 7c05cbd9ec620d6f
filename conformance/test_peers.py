"""The federation harness itself (peers.py): real Prosody and ejabberd federating with each
other, with no Starling involved. It proves what test_s2s.py relies on — the test CA's
certificates, the stub DNS that maps each domain to its loopback port, both peers' s2s
configuration, and the log lines that tell which authentication a stream used — so a
failure in test_s2s.py points at Starling, not at the harness.

The peers' own logs are the oracle for the authentication method:
  * ejabberd (info): "Accepted inbound|outbound s2s EXTERNAL|dialback authentication A -> B";
  * Prosody (debug): "Accepting SASL EXTERNAL identity from B" (inbound), "SASL EXTERNAL
    with B succeeded" (outbound), "verified dialback key" lines for dialback.
"""

import re

import pytest

from conftest import PASSWORD
from peers import PeerError
from xmpp_client import Session, run

KINDS = ("prosody", "ejabberd")


def start(federation, tmp_path_factory, kind, domain=None, trusted_cert=True):
    try:
        return federation.start_peer(kind, tmp_path_factory.mktemp(f"peer-{kind}"),
                                     domain=domain, trusted_cert=trusted_cert)
    except PeerError as e:
        pytest.fail(f"cannot start {kind}: {e}", pytrace=False)


@pytest.fixture(scope="module")
def pair(federation, tmp_path_factory):
    """prosody.test and ejabberd.test, both with certificates from the trusted CA."""
    prosody = start(federation, tmp_path_factory, "prosody")
    ejabberd = start(federation, tmp_path_factory, "ejabberd")
    yield prosody, ejabberd
    federation.stop_peer(prosody)
    federation.stop_peer(ejabberd)


@pytest.fixture(scope="module", params=KINDS)
def untrusted(request, federation, tmp_path_factory, pair):
    """A second Prosody or ejabberd whose certificate comes from a CA nobody trusts, and
    the trusted peer of the other kind it federates with."""
    kind = request.param
    peer = start(federation, tmp_path_factory, kind, domain=f"untrusted-{kind}.test",
                 trusted_cert=False)
    other = pair[1] if kind == "prosody" else pair[0]
    yield peer, other
    federation.stop_peer(peer)


async def exchange(a_server, a_user, b_server, b_user):
    """A chat message from a to b, then one from b to a; each must arrive from the sender."""
    a = await Session(a_server, a_user, PASSWORD).connect()
    b = await Session(b_server, b_user, PASSWORD).connect()
    try:
        a.send_presence()
        b.send_presence()
        a.send_message(b.jid.bare, f"to {b_server.kind}")
        got = await b.next_message(lambda m: m["body"] == f"to {b_server.kind}", timeout=30)
        assert got["from"].bare == a.jid.bare
        b.send_message(a.jid.bare, f"to {a_server.kind}")
        got = await a.next_message(lambda m: m["body"] == f"to {a_server.kind}", timeout=30)
        assert got["from"].bare == b.jid.bare
    finally:
        await a.disconnect()
        await b.disconnect()


def ejabberd_auth(ejabberd, direction: str, mech: str, local: str, remote: str) -> bool:
    """Did ejabberd log an accepted s2s authentication with `mech` for this pair?"""
    src, dst = (local, remote) if direction == "outbound" else (remote, local)
    pattern = (rf"Accepted {direction} s2s {re.escape(mech)} authentication "
               rf"{re.escape(src)} -> {re.escape(dst)}")
    return re.search(pattern, ejabberd.log_text(), re.IGNORECASE) is not None


def test_prosody_and_ejabberd_exchange_messages_with_sasl_external(pair):
    """prosody.test <-> ejabberd.test, a message each way; both certificates chain to the CA
    both trust, so each direction authenticates with SASL EXTERNAL (XEP-0178)."""
    prosody, ejabberd = pair
    prosody.adduser("pia", PASSWORD)
    ejabberd.adduser("ed", PASSWORD)
    run(exchange(prosody, "pia", ejabberd, "ed"), timeout=90)

    plog = prosody.log_text()
    assert "SASL EXTERNAL with ejabberd.test succeeded" in plog, prosody.log_tail()
    assert "Accepting SASL EXTERNAL identity from ejabberd.test" in plog, prosody.log_tail()
    assert ejabberd_auth(ejabberd, "inbound", "EXTERNAL", "ejabberd.test", "prosody.test"), \
        ejabberd.log_tail()
    assert ejabberd_auth(ejabberd, "outbound", "EXTERNAL", "ejabberd.test", "prosody.test"), \
        ejabberd.log_tail()


def test_untrusted_certificate_falls_back_to_dialback(untrusted):
    """A server whose certificate the other does not trust still federates with it: what
    it sends is authenticated with dialback (XEP-0220), as the dialback variants of
    test_s2s.py expect of the peers, in both roles: untrusted ejabberd -> Prosody (ejabberd
    logs its outbound dialback), untrusted Prosody -> ejabberd (ejabberd logs the inbound
    dialback)."""
    peer, other = untrusted
    peer.adduser("u-db", PASSWORD)
    other.adduser("t-db", PASSWORD)
    run(exchange(peer, "u-db", other, "t-db"), timeout=90)

    if peer.kind == "ejabberd":   # untrusted ejabberd -> prosody.test
        ejabberd, prosody, direction, remote = peer, other, "outbound", other.domain
    else:                         # untrusted prosody -> ejabberd.test
        ejabberd, prosody, direction, remote = other, peer, "inbound", peer.domain
    assert ejabberd_auth(ejabberd, direction, "dialback", ejabberd.domain, remote), \
        ejabberd.log_tail()
    assert not ejabberd_auth(ejabberd, direction, "EXTERNAL", ejabberd.domain, remote)
    if peer is ejabberd:   # Prosody never accepted the untrusted certificate for EXTERNAL
        assert f"Accepting SASL EXTERNAL identity from {peer.domain}" not in prosody.log_text()
