"""A deliberately small, blocking, byte-level XMPP client.

Used where a real client library would refuse to misbehave: malformed XML,
DTDs, oversize stanzas, hand-made SASL exchanges (SCRAM with channel
binding types Python's ssl module does not offer, tampered bindings).
Every read is bounded by a timeout.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import select
import socket
import ssl
import time
import xml.etree.ElementTree as ET

TIMEOUT = 10.0
NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_CLIENT = "jabber:client"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"


def q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def stream_header(to: str = "localhost") -> str:
    return ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' "
            f"to='{to}' version='1.0' xml:lang='en'>")


class StreamClosed(Exception):
    """The server closed the stream (</stream:stream>) or the connection."""


class ProtocolError(AssertionError):
    pass


# --------------------------------------------------------------------------
# Transports: plain TCP, stdlib TLS, pyOpenSSL TLS (for tls-exporter)
# --------------------------------------------------------------------------

class _Plain:
    def __init__(self, sock: socket.socket):
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()


class _StdTLS(_Plain):
    def __init__(self, sock: socket.socket, timeout: float):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock.settimeout(timeout)
        super().__init__(ctx.wrap_socket(sock, server_hostname="localhost"))

    def peer_cert_der(self) -> bytes:
        return self.sock.getpeercert(binary_form=True)

    def version(self) -> str:
        return self.sock.version()

    def exporter(self) -> bytes:
        raise NotImplementedError("Python's ssl module has no tls-exporter")


class _OpenSSLTLS:
    """TLS through pyOpenSSL, which can export keying material (RFC 9266)."""

    def __init__(self, sock: socket.socket, timeout: float):
        from OpenSSL import SSL
        self.SSL = SSL
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *args: True)
        sock.setblocking(False)
        self.sock = sock
        self.conn = SSL.Connection(ctx, sock)
        self.conn.set_tlsext_host_name(b"localhost")
        self.conn.set_connect_state()
        self._retry(self.conn.do_handshake, timeout)

    def _retry(self, fn, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fn()
            except self.SSL.WantReadError:
                wait = ([self.sock], [], [])
            except self.SSL.WantWriteError:
                wait = ([], [self.sock], [])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(select.select(*wait, remaining)):
                raise TimeoutError("TLS operation timed out")

    def send(self, data: bytes) -> None:
        self._retry(lambda: self.conn.sendall(data), TIMEOUT)

    def recv(self, timeout: float) -> bytes:
        try:
            return self._retry(lambda: self.conn.recv(65536), timeout)
        except self.SSL.ZeroReturnError:
            return b""
        except self.SSL.SysCallError:
            return b""

    def peer_cert_der(self) -> bytes:
        from OpenSSL import crypto
        return crypto.dump_certificate(crypto.FILETYPE_ASN1, self.conn.get_peer_certificate())

    def version(self) -> str:
        return self.conn.get_protocol_version_name()

    def exporter(self) -> bytes:
        # RFC 9266: label EXPORTER-Channel-Binding, empty context, 32 bytes.
        return self.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")

    def close(self) -> None:
        try:
            self.conn.shutdown()
        except Exception:
            pass
        self.sock.close()


# --------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------

class RawStream:
    def __init__(self, port: int, *, direct_tls: bool = False, tls_impl: str = "stdlib",
                 timeout: float = TIMEOUT):
        self.timeout = timeout
        self.tls_impl = tls_impl
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.transport = self._wrap(sock) if direct_tls else _Plain(sock)
        self.received = b""          # everything read so far (for error messages)
        self.closed = False          # server sent </stream:stream> or EOF
        self.eof = False
        self.header: ET.Element | None = None
        self._reset_parser()

    def _wrap(self, sock: socket.socket):
        if self.tls_impl == "openssl":
            return _OpenSSLTLS(sock, self.timeout)
        return _StdTLS(sock, self.timeout)

    def _reset_parser(self) -> None:
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root = None
        self.header = None
        self._ready: list[ET.Element] = []

    # -- I/O -----------------------------------------------------------------

    def send(self, data: str | bytes) -> None:
        self.transport.send(data.encode() if isinstance(data, str) else data)

    def _feed(self, timeout: float) -> None:
        try:
            data = self.transport.recv(timeout)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = self.closed = True
            raise StreamClosed("connection closed by server")
        self.received += data
        try:
            self.parser.feed(data)
        except ET.ParseError as e:
            raise ProtocolError(f"server sent malformed XML ({e}): {self.received[-500:]!r}")
        for event, elem in self.parser.read_events():
            if event == "start":
                self.depth += 1
                if self.depth == 1:
                    self.root = self.header = elem
            else:
                if self.depth == 2:
                    self._ready.append(elem)
                    self.root.remove(elem)
                elif self.depth == 1:
                    self.closed = True
                self.depth -= 1

    def read_element(self, timeout: float | None = None) -> ET.Element:
        """The next complete top-level element the server sends."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self._ready:
            if self.closed:
                raise StreamClosed("server closed the stream")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"nothing from server within {timeout}s; "
                                   f"received so far: {self.received[-500:]!r}")
            try:
                self._feed(remaining)
            except socket.timeout:
                continue
            except TimeoutError:
                continue
        return self._ready.pop(0)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Read until the server closes the TCP connection; True if it did in time."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                self._feed(remaining)
            except StreamClosed:
                return True
            except (socket.timeout, TimeoutError):
                continue
            except ProtocolError:
                continue
        return True

    def send_until_answered(self, data: bytes, chunk: int = 16384) -> int:
        """Send in chunks, stopping early once the server has something to say
        (or hangs up), so its stream error is not lost to a TCP reset.
        Returns the number of bytes sent."""
        sent = 0
        sock = self.transport.sock
        while sent < len(data):
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                try:
                    self._feed(0.05)
                except StreamClosed:
                    break
                except (socket.timeout, TimeoutError, ProtocolError):
                    pass
                if self._ready or self.closed:
                    break
            try:
                self.send(data[sent:sent + chunk])
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                break
            sent += chunk
        return min(sent, len(data))

    def close(self) -> None:
        try:
            self.transport.close()
        except OSError:
            pass

    # -- stream negotiation --------------------------------------------------

    def open(self, to: str = "localhost") -> ET.Element:
        """Send a stream header; return the server's <stream:features/>."""
        self.send(stream_header(to))
        return self.expect(q(NS_STREAM, "features"))

    def expect(self, tag: str, timeout: float | None = None) -> ET.Element:
        elem = self.read_element(timeout)
        if elem.tag != tag:
            raise ProtocolError(f"expected {tag}, got {ET.tostring(elem).decode()}")
        return elem

    def starttls(self) -> ET.Element:
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        self.expect(q(NS_TLS, "proceed"))
        sock = self.transport.sock
        self.transport = self._wrap(sock)
        self._reset_parser()
        return self.open()

    def expect_stream_error(self, timeout: float | None = None) -> str:
        """Wait for <stream:error/>; return its defined condition."""
        while True:
            try:
                elem = self.read_element(timeout)
            except StreamClosed:
                raise ProtocolError("connection closed without a <stream:error/>; received: "
                                    f"{self.received[-500:]!r}") from None
            if elem.tag == q(NS_STREAM, "error"):
                for child in elem:
                    if child.tag.startswith("{" + NS_STREAMS_ERR + "}") and \
                            not child.tag.endswith("}text"):
                        return child.tag.split("}", 1)[1]
                raise ProtocolError(f"stream error without condition: {ET.tostring(elem)!r}")

    # -- SASL and binding ----------------------------------------------------

    def auth_plain(self, user: str, password: str) -> None:
        blob = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{blob}</auth>")
        reply = self.read_element()
        if reply.tag != q(NS_SASL, "success"):
            raise ProtocolError(f"PLAIN failed: {ET.tostring(reply).decode()}")

    def bind(self, resource: str = "raw") -> str:
        self.send(f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'>"
                  f"<resource>{resource}</resource></bind></iq>")
        reply = self.expect(q(NS_CLIENT, "iq"))
        jid = reply.find(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}")
        if reply.get("type") != "result" or jid is None:
            raise ProtocolError(f"bind failed: {ET.tostring(reply).decode()}")
        return jid.text

    def login(self, user: str, password: str, resource: str = "raw") -> str:
        """STARTTLS (if offered), SASL PLAIN, stream restart, resource binding."""
        features = self.open()
        if features.find(q(NS_TLS, "starttls")) is not None:
            features = self.starttls()
        self.auth_plain(user, password)
        self._reset_parser()
        self.open()
        return self.bind(resource)


def mechanisms(features: ET.Element) -> list[str]:
    mechs = features.find(q(NS_SASL, "mechanisms"))
    return [] if mechs is None else [m.text for m in mechs.findall(q(NS_SASL, "mechanism"))]


def channel_binding_types(features: ET.Element) -> list[str]:
    cb = features.find(q(NS_SASL_CB, "sasl-channel-binding"))
    return [] if cb is None else [c.get("type") for c in cb.findall(q(NS_SASL_CB, "channel-binding"))]


# --------------------------------------------------------------------------
# SCRAM (RFC 5802 / RFC 7677), by hand
# --------------------------------------------------------------------------

class ScramResult:
    def __init__(self, ok: bool, condition: str | None, server_verified: bool = False):
        self.ok = ok
        self.condition = condition
        self.server_verified = server_verified

    def __repr__(self):
        return f"ScramResult(ok={self.ok}, condition={self.condition})"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _failure_condition(elem: ET.Element) -> str | None:
    for child in elem:
        if child.tag.startswith("{" + NS_SASL + "}") and not child.tag.endswith("}text"):
            return child.tag.split("}", 1)[1]
    return None


def scram_login(stream: RawStream, mechanism: str, user: str, password: str, *,
                gs2_flag: str = "n", cb_data: bytes = b"") -> ScramResult:
    """Run one SCRAM exchange. gs2_flag: 'n', 'y' or 'p=<cb-type>'."""
    hash_name = mechanism.removesuffix("-PLUS").removeprefix("SCRAM-").replace("-", "").lower()
    digest = getattr(hashlib, hash_name)

    def H(data):
        return digest(data).digest()

    def HMAC(key, data):
        return hmac.new(key, data, digest).digest()

    gs2_header = f"{gs2_flag},,".encode()
    cnonce = secrets.token_urlsafe(18)
    first_bare = f"n={user},r={cnonce}".encode()
    stream.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>"
                f"{_b64(gs2_header + first_bare)}</auth>")
    reply = stream.read_element()
    if reply.tag == q(NS_SASL, "failure"):
        return ScramResult(False, _failure_condition(reply))
    if reply.tag != q(NS_SASL, "challenge"):
        raise ProtocolError(f"expected SASL challenge, got {ET.tostring(reply).decode()}")
    server_first = base64.b64decode(reply.text or "")
    attrs = dict(kv.split(b"=", 1) for kv in server_first.split(b","))
    nonce, salt, iterations = attrs[b"r"], base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
    if not nonce.startswith(cnonce.encode()):
        raise ProtocolError("server nonce does not extend the client nonce")

    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
    client_key = HMAC(salted, b"Client Key")
    final_bare = b"c=" + base64.b64encode(gs2_header + cb_data) + b",r=" + nonce
    auth_message = first_bare + b"," + server_first + b"," + final_bare
    proof = bytes(a ^ b for a, b in zip(client_key, HMAC(H(client_key), auth_message)))
    server_signature = HMAC(HMAC(salted, b"Server Key"), auth_message)
    stream.send(f"<response xmlns='{NS_SASL}'>"
                f"{_b64(final_bare + b',p=' + base64.b64encode(proof))}</response>")
    reply = stream.read_element()
    if reply.tag == q(NS_SASL, "failure"):
        return ScramResult(False, _failure_condition(reply))
    if reply.tag == q(NS_SASL, "challenge"):   # server-final as a challenge (allowed)
        stream.send(f"<response xmlns='{NS_SASL}'/>")
        final = base64.b64decode(reply.text or "")
        reply = stream.read_element()
    elif reply.tag == q(NS_SASL, "success"):
        final = base64.b64decode(reply.text or "")
    else:
        raise ProtocolError(f"unexpected SASL reply {ET.tostring(reply).decode()}")
    if reply.tag != q(NS_SASL, "success"):
        return ScramResult(False, _failure_condition(reply))
    verified = final == b"v=" + base64.b64encode(server_signature)
    return ScramResult(True, None, verified)
