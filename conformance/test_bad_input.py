"""RFC 6120 §4.9 / §11: stream errors for bad input, and the server survives each one.

Every case opens a raw connection, misbehaves, expects the named
<stream:error/> condition and the connection to be closed, then checks that
real clients can still log in and chat.
"""

import pytest

from conftest import PASSWORD
from rawxmpp import RawStream, stream_header
from xmpp_client import get_roster, online, run

MAX_STANZA = 262144
ONE_MIB = 1024 * 1024

BILLION_LAUGHS = (
    "<?xml version='1.0'?>"
    "<!DOCTYPE stream:stream ["
    "<!ENTITY lol 'lol'>"
    + "".join(f"<!ENTITY lol{i} '{('&lol' + (str(i - 1) if i > 1 else '') + ';') * 10}'>"
              for i in range(1, 10))
    + "]>"
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    "to='localhost' version='1.0'>&lol9;"
)


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers({u: PASSWORD for u in ("alice", "bob", "mallory")},
                          max_stanza_size=MAX_STANZA)


def still_serves(server) -> None:
    """Two real clients log in and exchange a message."""
    async def scenario():
        async with online(server, "alice", PASSWORD, resource="a") as a, \
                online(server, "bob", PASSWORD, resource="b") as b:
            await get_roster(b)
            b.send_presence()
            a.send_message("bob@localhost/b", "still alive?")
            got = await b.next_message(lambda m: m["body"] == "still alive?")
            assert got.xml.get("from") == "alice@localhost/a"
    run(scenario())


def expect_error_and_close(stream: RawStream, condition: str) -> None:
    try:
        got = stream.expect_stream_error()
        assert got == condition, f"expected <{condition}/>, got <{got}/>"
        assert stream.wait_closed(5), "server did not close the connection after the stream error"
    finally:
        stream.close()


# -- before TLS: the very first bytes, or right after the stream header ----

PRE_TLS_CASES = {
    # name: (bytes to send, whether to send a proper stream header first, condition)
    "garbage-instead-of-header": ("<<<>>> this is not xml", False, "not-well-formed"),
    "mismatched-tags": ("<message><body>x</message>", True, "not-well-formed"),
    "billion-laughs-dtd": (BILLION_LAUGHS, False, "restricted-xml"),
    "comment": ("<!-- a comment -->", True, "restricted-xml"),
    "processing-instruction": ("<?evil instruction?>", True, "restricted-xml"),
    "bad-stream-namespace": ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                             "xmlns:stream='urn:example:wrong' to='localhost' version='1.0'>",
                             False, "invalid-namespace"),
    "unknown-host": (stream_header("unknown.example"), False, "host-unknown"),
}


@pytest.mark.parametrize("case", sorted(PRE_TLS_CASES))
def test_bad_input_before_tls(server, case):
    data, header_first, condition = PRE_TLS_CASES[case]
    stream = RawStream(server.c2s_port)
    if header_first:
        stream.open()
    stream.send(data)
    expect_error_and_close(stream, condition)
    still_serves(server)


# -- after authentication, over TLS ----------------------------------------

def logged_in_raw(server) -> RawStream:
    stream = RawStream(server.c2s_port)
    stream.login("mallory", PASSWORD)
    return stream


@pytest.mark.parametrize("data,condition", [
    ("<message to='bob@localhost'><body>x</message>", "not-well-formed"),
    ("<!-- sneaky comment -->", "restricted-xml"),
    ("<message to='bob@localhost'><body>&undefined;</body></message>", None),
], ids=["mismatched-tags", "comment", "undefined-entity"])
def test_bad_input_after_auth(server, data, condition):
    stream = logged_in_raw(server)
    stream.send(data)
    if condition is None:   # undefined entity: not well-formed, or a restricted entity ref
        try:
            got = stream.expect_stream_error()
            assert got in ("not-well-formed", "restricted-xml"), got
            assert stream.wait_closed(5)
        finally:
            stream.close()
    else:
        expect_error_and_close(stream, condition)
    still_serves(server)


def test_oversize_stanza_policy_violation(server):
    stream = logged_in_raw(server)
    body = "A" * ONE_MIB
    stanza = f"<message to='bob@localhost' type='chat'><body>{body}</body></message>".encode()
    stream.send_until_answered(stanza)
    expect_error_and_close(stream, "policy-violation")
    still_serves(server)


def test_unterminated_oversize_stanza_policy_violation(server):
    """The limit applies while a stanza is still arriving, not only once it is complete."""
    stream = logged_in_raw(server)
    stream.send_until_answered(b"<message to='bob@localhost'><body>" + b"B" * ONE_MIB)
    expect_error_and_close(stream, "policy-violation")
    still_serves(server)


def test_stanza_just_under_limit_accepted(server):
    """A stanza comfortably under max_stanza_size is delivered intact."""
    body = "C" * (MAX_STANZA // 2)

    async def scenario():
        async with online(server, "alice", PASSWORD, resource="big") as a, \
                online(server, "bob", PASSWORD, resource="big") as b:
            b.send_presence()
            a.send_message("bob@localhost/big", body)
            got = await b.next_message(lambda m: m["body"] and m["body"][0] == "C")
            assert got["body"] == body
    run(scenario())


def test_many_connections_closed_abruptly(server):
    """Connections that vanish mid-stanza leave no trace."""
    for i in range(20):
        stream = RawStream(server.c2s_port)
        stream.open()
        stream.send(f"<iq type='get' id='half{i}'><query xmlns='jabber:iq:ver")
        stream.close()
    still_serves(server)
