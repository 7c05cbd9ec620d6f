"""RFC 7395 XMPP over WebSocket (/xmpp-websocket) and XEP-0156 host-meta discovery.

A byte-level WebSocket client (wsxmpp, on the `websockets` package) plays the browser; a
slixmpp TCP client is on the other end. The WebSocket runs the same session core as TCP, so
SASL (PLAIN, SCRAM, SASL2/FAST), rosters, stream management resumption (onto a new
WebSocket) and CSI are exercised over it. WebSocket calls block, so inside slixmpp's event
loop they run in a thread (`io`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
import urllib.request
import xml.etree.ElementTree as ET

import pytest
from websockets.exceptions import InvalidStatus

from conftest import PASSWORD
from rawxmpp import NS_BIND, NS_CLIENT, NS_SASL, scram_login, q
from test_sasl2 import BIND, REQUEST_NONE, Sasl2, identity, token_of
from wsxmpp import NS_FRAMING, WsStream, trusted_context
from xmpp_client import online, run

NS_SM = "urn:xmpp:sm:3"
NS_CSI = "urn:xmpp:csi:0"
NS_ROSTER = "jabber:iq:roster"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_XRD = "http://docs.oasis-open.org/ns/xri/xrd-1.0"


@pytest.fixture(scope="module")
def ws_server(module_servers):
    """The plain-HTTP listener trusted as if a TLS-terminating proxy were in front, so the
    ws:// and wss:// endpoints both allow authentication (c2s.require_tls stays on)."""
    return module_servers(extra_sections={"http": {"trust_plain_http": True}})


async def io(fn, *args):
    return await asyncio.to_thread(fn, *args)


def body_of(el: ET.Element) -> str | None:
    b = el.find(q(NS_CLIENT, "body"))
    return None if b is None else b.text


def read_until(ws: WsStream, pred, what: str = "element") -> ET.Element:
    """The next element matching pred (others are skipped, <r/> answered by nobody)."""
    skipped = []
    while True:
        try:
            el = ws.read_element()
        except TimeoutError:
            raise AssertionError(f"no {what}; skipped: {skipped}") from None
        if pred(el):
            return el
        skipped.append(ET.tostring(el).decode()[:200])


def message(to: str, body: str, mid: str = "m") -> str:
    return (f"<message xmlns='jabber:client' to='{to}' type='chat' id='{mid}'>"
            f"<body>{body}</body></message>")


# --------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_messages_both_ways_with_a_tcp_client(ws_server, accounts, tls):
    a, b = accounts(ws_server, "wsa", "tcpb")

    async def scenario():
        async with online(ws_server, b, PASSWORD, resource="tcp") as tcp:
            ws = await io(lambda: WsStream(ws_server, tls=tls))
            try:
                assert ws.ws.subprotocol == "xmpp"
                jid = await io(ws.login, a, PASSWORD)
                assert jid == f"{a}@localhost/ws"
                ws.send(message(str(tcp.jid), "from the websocket"))
                got = await tcp.next_message(lambda m: m["body"] == "from the websocket")
                assert str(got["from"]) == jid
                tcp.send_message(jid, "from tcp")
                el = await io(read_until, ws, lambda e: body_of(e) == "from tcp", "message")
                # One complete element per message, with its namespace declared.
                assert el.tag == q(NS_CLIENT, "message")
                assert el.get("from") == str(tcp.jid)
            finally:
                await io(ws.close)
    run(scenario())


def test_stream_restart_after_sasl_gives_new_open_and_bind(ws_server, accounts):
    (a,) = accounts(ws_server, "wsr")
    ws = WsStream(ws_server)
    try:
        features = ws.open()
        first = ws.open_reply
        assert first.get("from") == "localhost" and first.get("version") == "1.0"
        assert first.get("id")
        mechs = [m.text for m in features.iter(q(NS_SASL, "mechanism"))]
        assert "PLAIN" in mechs and "SCRAM-SHA-256" in mechs
        ws.auth_plain(a, PASSWORD)
        after = ws.open()
        assert ws.open_reply.get("id") != first.get("id"), "restart must give a new stream id"
        assert after.find(q(NS_BIND, "bind")) is not None
        assert after.find(q(NS_SM, "sm")) is not None
        assert after.find(q(NS_CSI, "csi")) is not None
        assert ws.bind("r1") == f"{a}@localhost/r1"
    finally:
        ws.close()


def test_scram_login(ws_server, accounts):
    (a,) = accounts(ws_server, "wss")
    ws = WsStream(ws_server, tls=True)
    try:
        features = ws.open()
        mechs = [m.text for m in features.iter(q(NS_SASL, "mechanism"))]
        # No channel binding exists for a WebSocket stream: no -PLUS variants.
        assert not any(m.endswith("-PLUS") for m in mechs), mechs
        result = scram_login(ws, "SCRAM-SHA-256", a, PASSWORD)
        assert result.ok and result.server_verified, result
        ws.open()
        assert ws.bind() == f"{a}@localhost/ws"
    finally:
        ws.close()


def test_sasl2_bind2_and_fast_token(ws_server, accounts):
    (a,) = accounts(ws_server, "wsf")

    def sasl2_client() -> Sasl2:
        c = Sasl2.__new__(Sasl2)      # its __init__ dials TCP: same client, over the WebSocket
        c.stream = WsStream(ws_server, tls=True)
        c.features = c.stream.open()
        c.ua = "c0ffee00-0000-4000-8000-000000000001"
        c.after = None
        return c

    c = sasl2_client()
    try:
        success = c.plain(a, PASSWORD, extra=BIND + REQUEST_NONE)
        assert identity(success).startswith(f"{a}@localhost/ConfTest/")
        token = token_of(success).get("token")
        c.ping()
    finally:
        c.stream.close()
    # A FAST login with the token, on a new WebSocket.
    c = sasl2_client()
    try:
        success = c.ht(a, token, extra=BIND)
        assert identity(success).startswith(f"{a}@localhost/ConfTest/")
        c.ping()
    finally:
        c.stream.close()


def test_roster_push(ws_server, accounts):
    a, b = accounts(ws_server, "wsro", "wsrb")
    ws = WsStream(ws_server)
    try:
        ws.login(a, PASSWORD)
        # Fetching the roster makes the resource "interested" (RFC 6121 §2.1.6): pushes follow.
        ws.send(f"<iq xmlns='jabber:client' type='get' id='r0'><query xmlns='{NS_ROSTER}'/></iq>")
        roster = read_until(ws, lambda e: e.get("id") == "r0", "roster")
        assert list(roster.iter(q(NS_ROSTER, "item"))) == []
        ws.send(f"<iq xmlns='jabber:client' type='set' id='r1'><query xmlns='{NS_ROSTER}'>"
                f"<item jid='{b}@localhost' name='Bee'><group>Friends</group></item>"
                "</query></iq>")
        push = result = None
        while push is None or result is None:
            el = ws.read_element()
            if el.tag == q(NS_CLIENT, "iq") and el.get("type") == "set":
                push = el
            elif el.get("id") == "r1":
                result = el
        assert result.get("type") == "result"
        item = push.find(f"{q(NS_ROSTER, 'query')}/{q(NS_ROSTER, 'item')}")
        assert item.get("jid") == f"{b}@localhost" and item.get("name") == "Bee"
        ws.send(f"<iq xmlns='jabber:client' type='result' id='{push.get('id')}'/>")
        ws.send(f"<iq xmlns='jabber:client' type='get' id='r2'><query xmlns='{NS_ROSTER}'/></iq>")
        roster = read_until(ws, lambda e: e.get("id") == "r2", "roster")
        jids = [i.get("jid") for i in roster.iter(q(NS_ROSTER, "item"))]
        assert jids == [f"{b}@localhost"]
    finally:
        ws.close()


def test_client_close_is_answered_with_close(ws_server, accounts):
    (a,) = accounts(ws_server, "wsc")
    ws = WsStream(ws_server)
    ws.login(a, PASSWORD)
    ws.send(f"<close xmlns='{NS_FRAMING}'/>")
    ws.expect(q(NS_FRAMING, "close"))
    assert ws.close_code() == 1000
    # The session is gone: the resource can be bound again at once, without a conflict.
    ws2 = WsStream(ws_server)
    try:
        assert ws2.login(a, PASSWORD) == f"{a}@localhost/ws"
    finally:
        ws2.close()


def test_lost_websocket_ends_its_session(ws_server, accounts):
    """No session outlives its WebSocket (without stream management): the core sends the
    unavailable presence owed to a directed-presence recipient when the session ends."""
    a, b = accounts(ws_server, "wsd", "tcpd")

    async def scenario():
        async with online(ws_server, b, PASSWORD, resource="tcp") as tcp:
            ws = await io(lambda: WsStream(ws_server))
            jid = await io(ws.login, a, PASSWORD)
            ws.send(f"<presence xmlns='jabber:client' to='{tcp.jid}'/>")
            got = await tcp.next_presence(lambda p: str(p["from"]) == jid)
            assert got["type"] == "available"
            await io(ws.drop)
            gone = await tcp.next_presence(lambda p: str(p["from"]) == jid)
            assert gone["type"] == "unavailable"
    run(scenario())


def test_session_replaced_gets_stream_error_then_close(ws_server, accounts):
    (a,) = accounts(ws_server, "wsx")

    async def scenario():
        ws = await io(lambda: WsStream(ws_server))
        jid = await io(ws.login, a, PASSWORD, "same")
        assert jid.endswith("/same")
        # The same full JID from TCP takes over (RFC 6120 §7.7.2.2): the WebSocket one gets
        # <conflict/> as its own message, then <close/>, then the WebSocket close.
        async with online(ws_server, a, PASSWORD, resource="same"):
            assert await io(ws.expect_stream_error) == "conflict"
        assert any("xmlns:stream=" in m for m in ws.received if m.startswith("<stream:error"))
    run(scenario())


def test_server_shutdown_is_a_stream_error_over_the_websocket(make_server, accounts):
    srv = make_server(extra_sections={"http": {"trust_plain_http": True}})
    (a,) = accounts(srv, "wsq")
    ws = WsStream(srv)
    ws.login(a, PASSWORD)
    assert srv.stop() == 0
    # Everything the server sent before exiting is buffered on our side.
    assert ws.expect_stream_error() == "system-shutdown"


# --------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------

@pytest.mark.parametrize("protocols", [None, ("chat",)], ids=["none", "other"])
def test_handshake_without_xmpp_subprotocol_is_refused(ws_server, protocols):
    with pytest.raises(InvalidStatus) as e:
        WsStream(ws_server, subprotocols=protocols)
    assert e.value.response.status_code == 501


def test_connection_limit_counts_a_websocket_once_and_frees_it(make_server, accounts):
    """limits.max_connections = 2: a logged-in WebSocket holds one permit, the HTTP request
    for a second holds the other, so the second upgrade is refused (503); once the first
    WebSocket is closed, its permit is back."""
    srv = make_server(extra_sections={"http": {"trust_plain_http": True},
                                      "limits": {"max_connections": 2}})
    (a,) = accounts(srv, "wsn")
    first = WsStream(srv)
    first.login(a, PASSWORD, "one")
    with pytest.raises(InvalidStatus) as e:
        WsStream(srv)
    assert e.value.response.status_code == 503
    first.send(f"<close xmlns='{NS_FRAMING}'/>")
    first.expect(q(NS_FRAMING, "close"))
    assert first.close_code() == 1000
    # The session task may drop its share of the permit a moment after the close handshake.
    for _ in range(50):
        try:
            second = WsStream(srv)
            break
        except InvalidStatus as e:
            assert e.response.status_code == 503
            time.sleep(0.1)
    else:
        raise AssertionError("the first WebSocket's connection permit never came back")
    try:
        assert second.login(a, PASSWORD, "two") == f"{a}@localhost/two"
    finally:
        second.close()


@pytest.mark.parametrize("frame,condition", [
    ("<message xmlns='jabber:client' to='x@localhost'><body>half", "not-well-formed"),
    ("<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>", "not-well-formed"),
    ("<message xmlns='jabber:client'><body></message>", "not-well-formed"),
    (b"<presence/>", "unsupported-encoding"),    # a binary message
], ids=["partial", "two-elements", "mismatched", "binary"])
def test_invalid_message_gets_a_stream_error(ws_server, accounts, frame, condition):
    (a,) = accounts(ws_server, "wsi")
    ws = WsStream(ws_server)
    ws.login(a, PASSWORD)
    ws.send(frame)
    assert ws.expect_stream_error() == condition


def test_message_over_the_stanza_limit_is_a_policy_violation(make_server, accounts):
    srv = make_server(max_stanza_size=10000, extra_sections={"http": {"trust_plain_http": True}})
    (a,) = accounts(srv, "wsl")
    ws = WsStream(srv)
    ws.login(a, PASSWORD)
    ws.send(message(f"{a}@localhost", "x" * 12000))
    assert ws.expect_stream_error() == "policy-violation"


def test_first_message_must_be_open(ws_server):
    ws = WsStream(ws_server)
    ws.send("<presence xmlns='jabber:client'/>")
    # The server opens its side first so the error has a stream to live in.
    opened = ws.expect(q(NS_FRAMING, "open"))
    assert opened.get("id")
    assert ws.expect_stream_error() == "bad-format"


def test_plain_http_is_not_confidential_without_trust(make_server, accounts):
    """Without http.trust_plain_http, a ws:// stream is like plaintext TCP: with
    c2s.require_tls no mechanism is offered and PLAIN is refused; wss:// works."""
    srv = make_server()
    (a,) = accounts(srv, "wsp")
    ws = WsStream(srv)
    try:
        features = ws.open()
        assert [m.text for m in features.iter(q(NS_SASL, "mechanism"))] == []
        token = base64.b64encode(f"\0{a}\0{PASSWORD}".encode()).decode()
        ws.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        reply = ws.read_element()
        assert reply.tag != q(NS_SASL, "success"), ET.tostring(reply)
    finally:
        ws.close()
    wss = WsStream(srv, tls=True)
    try:
        assert wss.login(a, PASSWORD) == f"{a}@localhost/ws"
    finally:
        wss.close()


# --------------------------------------------------------------------------
# Stream management and client state
# --------------------------------------------------------------------------

def sm_enable(ws: WsStream) -> str:
    ws.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    enabled = read_until(ws, lambda e: e.tag == q(NS_SM, "enabled"), "<enabled/>")
    assert enabled.get("resume") in ("true", "1")
    return enabled.get("id")


def test_sm_resumption_on_a_new_websocket(ws_server, accounts):
    a, b = accounts(ws_server, "wssm", "tcsm")

    async def scenario():
        async with online(ws_server, b, PASSWORD, resource="tcp") as tcp:
            ws1 = await io(lambda: WsStream(ws_server))
            jid = await io(ws1.login, a, PASSWORD, "phone")
            previd = await io(sm_enable, ws1)
            tcp.send_message(jid, "one")
            tcp.send_message(jid, "two")
            for body in ("one", "two"):
                await io(read_until, ws1, lambda e, b_=body: body_of(e) == b_, body)
            # Received but never acknowledged; then the connection is lost.
            await io(ws1.drop)
            await asyncio.sleep(0.5)
            tcp.send_message(jid, "three (while detached)")

            ws2 = await io(lambda: WsStream(ws_server))
            try:
                await io(ws2.open)
                await io(ws2.auth_plain, a, PASSWORD)
                await io(ws2.open)
                ws2.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='0'/>")
                resumed = await io(read_until, ws2,
                                   lambda e: e.tag in (q(NS_SM, "resumed"), q(NS_SM, "failed")),
                                   "<resumed/>")
                assert resumed.tag == q(NS_SM, "resumed"), ET.tostring(resumed)
                bodies = []
                while len(bodies) < 3:
                    el = await io(read_until, ws2,
                                  lambda e: e.tag == q(NS_CLIENT, "message"), "re-sent message")
                    bodies.append(body_of(el))
                assert bodies == ["one", "two", "three (while detached)"]
                # The resumed session is fully alive over the new WebSocket, both ways.
                ws2.send(f"<a xmlns='{NS_SM}' h='3'/>")
                ws2.send(message(str(tcp.jid), "after resume"))
                got = await tcp.next_message(lambda m: m["body"] == "after resume")
                assert str(got["from"]) == jid
                tcp.send_message(jid, "welcome back")
                await io(read_until, ws2, lambda e: body_of(e) == "welcome back", "message")
            finally:
                await io(ws2.close)
    run(scenario())


def test_csi_holds_chat_states_while_inactive(ws_server, accounts):
    a, b = accounts(ws_server, "wscs", "tccs")

    async def scenario():
        async with online(ws_server, b, PASSWORD, resource="tcp") as tcp:
            ws = await io(lambda: WsStream(ws_server))
            try:
                jid = await io(ws.login, a, PASSWORD)
                ws.send(f"<inactive xmlns='{NS_CSI}'/>")
                # Processed in order (XEP-0352 §5.1): inactive once the ping is answered.
                ws.send("<iq xmlns='jabber:client' type='get' id='p1' to='localhost'>"
                        "<ping xmlns='urn:xmpp:ping'/></iq>")
                await io(read_until, ws, lambda e: e.get("id") == "p1", "ping reply")
                tcp.send_raw(f"<message to='{jid}' type='chat'>"
                             f"<composing xmlns='{NS_CHATSTATES}'/></message>")
                ping = await tcp.iq_xml("<iq type='get' to='localhost'>"
                                        "<ping xmlns='urn:xmpp:ping'/></iq>")
                assert ping["type"] == "result"
                try:
                    early = await io(ws.read_element, 1.0)
                except TimeoutError:
                    early = None
                assert early is None, f"delivered while inactive: {ET.tostring(early)!r}"
                ws.send(f"<active xmlns='{NS_CSI}'/>")
                held = await io(read_until, ws, lambda e: e.tag == q(NS_CLIENT, "message"),
                                "held chat state")
                assert held.find(q(NS_CHATSTATES, "composing")) is not None
            finally:
                await io(ws.close)
    run(scenario())


# --------------------------------------------------------------------------
# Keepalive
# --------------------------------------------------------------------------

def raw_ws_handshake(port: int) -> socket.socket:
    """A WebSocket handshake by hand, for a client that never answers Pings."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /xmpp-websocket HTTP/1.1\r\nHost: localhost:{port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Protocol: xmpp\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "connection closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"sec-websocket-protocol: xmpp" in head.lower(), head
    return sock


def read_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """(opcode, payload) of the next server frame; None when the connection closed."""
    def exactly(n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data
    head = exactly(2)
    if head is None:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", exactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", exactly(8))[0]
    return opcode, exactly(length) or b""


def test_server_pings_and_closes_a_peer_that_never_pongs(make_server):
    srv = make_server(extra_sections={"websocket": {"ping_secs": 1, "ping_timeout_secs": 2}})
    sock = raw_ws_handshake(srv.http_port)
    try:
        opcodes = []
        while True:
            frame = read_frame(sock)
            if frame is None:
                break
            opcodes.append(frame[0])
            if frame[0] == 0x8:        # Close
                break
        assert 0x9 in opcodes, f"no Ping frame before the close: {opcodes}"
        assert opcodes[-1] == 0x8, f"connection not closed with a Close frame: {opcodes}"
    finally:
        sock.close()


def test_answered_pings_keep_a_quiet_session_past_the_idle_timeout(make_server, accounts):
    """A browser cannot send whitespace keepalives: its Pongs count as activity. The
    session stays up through three idle timeouts without a stanza from the client."""
    srv = make_server(extra_sections={"websocket": {"ping_secs": 1, "ping_timeout_secs": 5},
                                      "c2s": {"idle_timeout_secs": 2},
                                      "http": {"trust_plain_http": True}})
    (a,) = accounts(srv, "wsk")
    ws = WsStream(srv)
    try:
        ws.login(a, PASSWORD)
        with pytest.raises(TimeoutError):
            ws.read_element(6.0)
        ws.send("<iq xmlns='jabber:client' type='get' id='p' to='localhost'>"
                "<ping xmlns='urn:xmpp:ping'/></iq>")
        reply = read_until(ws, lambda e: e.get("id") == "p", "ping reply")
        assert reply.get("type") == "result"
    finally:
        ws.close()


# --------------------------------------------------------------------------
# XEP-0156 host-meta
# --------------------------------------------------------------------------

def fetch(server, path: str):
    ctx = trusted_context(server)
    url = f"https://localhost:{server.https_port}{path}"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        return r.status, r.headers, r.read()


def test_host_meta_xrd_lists_websocket_and_bosh(ws_server, accounts):
    status, headers, body = fetch(ws_server, "/.well-known/host-meta")
    assert status == 200
    assert headers["Content-Type"].startswith("application/xrd+xml")
    assert headers["Access-Control-Allow-Origin"] == "*"
    xrd = ET.fromstring(body)
    assert xrd.tag == q(NS_XRD, "XRD")
    links = {l.get("rel"): l.get("href") for l in xrd.findall(q(NS_XRD, "Link"))}
    base = f"localhost:{ws_server.https_port}"
    assert links == {
        "urn:xmpp:alt-connections:websocket": f"wss://{base}/xmpp-websocket",
        "urn:xmpp:alt-connections:xbosh": f"https://{base}/http-bind",
    }
    # The advertised WebSocket URL works as it is.
    (a,) = accounts(ws_server, "wsh")
    ws = WsStream(ws_server, url=links["urn:xmpp:alt-connections:websocket"])
    try:
        assert ws.login(a, PASSWORD) == f"{a}@localhost/ws"
    finally:
        ws.close()


def test_host_meta_json(ws_server):
    status, headers, body = fetch(ws_server, "/.well-known/host-meta.json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Access-Control-Allow-Origin"] == "*"
    jrd = json.loads(body)
    links = {l["rel"]: l["href"] for l in jrd["links"]}
    base = f"localhost:{ws_server.https_port}"
    assert links == {
        "urn:xmpp:alt-connections:websocket": f"wss://{base}/xmpp-websocket",
        "urn:xmpp:alt-connections:xbosh": f"https://{base}/http-bind",
    }


def test_host_meta_uses_public_url(make_server):
    srv = make_server(extra_sections={"http": {"public_url": "https://chat.example.org/"}})
    status, _, body = fetch(srv, "/.well-known/host-meta.json")
    links = {l["rel"]: l["href"] for l in json.loads(body)["links"]}
    assert links["urn:xmpp:alt-connections:websocket"] == "wss://chat.example.org/xmpp-websocket"
    assert links["urn:xmpp:alt-connections:xbosh"] == "https://chat.example.org/http-bind"
