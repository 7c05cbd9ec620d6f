"""A small blocking RFC 7395 (XMPP over WebSocket) client on the `websockets` package.

It speaks the framing by hand (`<open/>`, one element per message, `<close/>`) so tests see
exactly what the server sends, and offers the same calls as rawxmpp.RawStream (`send`,
`read_element`, `expect`), so rawxmpp's SCRAM helper and test_sasl2's SASL2 client run over
it unchanged.
"""

from __future__ import annotations

import base64
import ssl
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rawxmpp import NS_BIND, NS_SASL, NS_STREAM, NS_STREAMS_ERR, ProtocolError, q

TIMEOUT = 10.0
NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"


class WsClosed(Exception):
    """The WebSocket is closed (by the server, or after <close/>)."""


def ws_url(server, tls: bool) -> str:
    if tls:
        return f"wss://localhost:{server.https_port}/xmpp-websocket"
    return f"ws://127.0.0.1:{server.http_port}/xmpp-websocket"


def trusted_context(server) -> ssl.SSLContext:
    """Verify the server's generated certificate (it is for 'localhost')."""
    ctx = ssl.create_default_context(cafile=str(Path(server.data_dir) / "tls" / "cert.pem"))
    return ctx


class WsStream:
    def __init__(self, server=None, *, tls: bool = False, url: str | None = None,
                 subprotocols=("xmpp",), timeout: float = TIMEOUT):
        self.timeout = timeout
        url = url or ws_url(server, tls)
        ctx = trusted_context(server) if url.startswith("wss:") else None
        self.ws = connect(url, subprotocols=list(subprotocols) if subprotocols else None,
                          ssl=ctx, open_timeout=timeout, close_timeout=timeout,
                          ping_interval=None, max_size=None)
        self.received: list[str] = []     # every text message, for error messages
        self.open_reply: ET.Element | None = None

    # -- I/O -----------------------------------------------------------------

    def send(self, data: str | bytes) -> None:
        self.ws.send(data)

    def recv_text(self, timeout: float | None = None) -> str:
        try:
            msg = self.ws.recv(timeout=self.timeout if timeout is None else timeout)
        except ConnectionClosed as e:
            raise WsClosed(str(e)) from None
        if not isinstance(msg, str):
            raise ProtocolError(f"server sent a binary message: {msg!r}")
        self.received.append(msg)
        return msg

    def read_element(self, timeout: float | None = None) -> ET.Element:
        """The next message as an element (each message must be exactly one)."""
        text = self.recv_text(timeout)
        try:
            return ET.fromstring(text)
        except ET.ParseError as e:
            raise ProtocolError(f"message is not one XML element ({e}): {text!r}") from None

    def expect(self, tag: str, timeout: float | None = None) -> ET.Element:
        el = self.read_element(timeout)
        if el.tag != tag:
            raise ProtocolError(f"expected {tag}, got {ET.tostring(el).decode()}")
        return el

    def close_code(self, timeout: float | None = None) -> int | None:
        """Wait for the server to close the WebSocket; its close code (messages skipped)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                self.ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            except ConnectionClosed:
                return self.ws.close_code
            except TimeoutError:
                raise AssertionError("server did not close the WebSocket") from None

    def close(self) -> None:
        self.ws.close()

    def drop(self) -> None:
        """Lose the connection without any closing handshake (a phone going out of range)."""
        self.ws.socket.close()

    # -- XMPP ----------------------------------------------------------------

    def open(self, to: str = "localhost") -> ET.Element:
        """Send <open/>; returns the stream features that follow the server's <open/>."""
        self.send(f"<open xmlns='{NS_FRAMING}' to='{to}' version='1.0'/>")
        self.open_reply = self.expect(q(NS_FRAMING, "open"))
        return self.expect(q(NS_STREAM, "features"))

    def auth_plain(self, user: str, password: str) -> None:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        reply = self.read_element()
        if reply.tag != q(NS_SASL, "success"):
            raise ProtocolError(f"PLAIN failed: {ET.tostring(reply).decode()}")

    def bind(self, resource: str = "ws") -> str:
        self.send(f"<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='{NS_BIND}'>"
                  f"<resource>{resource}</resource></bind></iq>")
        reply = self.read_element()
        jid = reply.find(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}")
        if reply.get("type") != "result" or jid is None:
            raise ProtocolError(f"bind failed: {ET.tostring(reply).decode()}")
        return jid.text

    def login(self, user: str, password: str, resource: str = "ws") -> str:
        """PLAIN, the stream restart (a second <open/>), bind; returns the full JID."""
        self.open()
        self.auth_plain(user, password)
        self.after_auth_features = self.open()
        return self.bind(resource)

    def expect_stream_error(self, timeout: float | None = None) -> str:
        """The condition of the <stream:error/> the server sends (other elements skipped),
        checking that <close/> and the WebSocket close follow."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            el = self.read_element(max(0.0, deadline - time.monotonic()))
            if el.tag == q(NS_STREAM, "error"):
                break
        conds = [c.tag.split("}", 1)[1] for c in el
                 if c.tag.startswith("{" + NS_STREAMS_ERR + "}") and not c.tag.endswith("}text")]
        self.expect(q(NS_FRAMING, "close"))
        assert self.close_code() == 1000
        return conds[0] if conds else ""
