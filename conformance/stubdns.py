"""A tiny authoritative DNS server on loopback, so real XMPP servers find each other.

Prosody and ejabberd find a peer domain's s2s listener the standard way (RFC 6120 §3.2.1):
an `_xmpp-server._tcp.<domain>` SRV query, then an A query for the SRV target. In the test
every server listens on 127.0.0.1 at a free port, which only an SRV record can express, so
the suite answers those queries itself: Prosody is pointed at this server with its
`unbound = { forward = "127.0.0.1@PORT" }` option (libunbound forwarding), ejabberd with an
Erlang `inetrc` file (`{nameserver, {127,0,0,1}, PORT}`, given by ERL_INETRC). Both are
per-process settings: nothing on the machine changes.

Only what those resolvers ask is answered: SRV and A records from a table, NODATA (with
an SOA, so negative answers cache as RFC 2308 says) for other types of known names,
NXDOMAIN for everything else. UDP only: the answers are far below 512 bytes.
"""

from __future__ import annotations

import socket
import struct
import threading

TYPE_A, TYPE_SOA, TYPE_SRV, TYPE_AAAA = 1, 6, 33, 28
CLASS_IN = 1
TTL = 0   # servers come and go within a session: never cache


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            raw = label.encode("ascii")
            out += bytes([len(raw)]) + raw
    return out + b"\x00"


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    """A (possibly compressed) name starting at offset; returns it and the offset after it."""
    labels: list[str] = []
    end = None
    for _ in range(128):   # bound on pointers followed
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | packet[offset + 1]
            continue
        if length == 0:
            return ".".join(labels), (end if end is not None else offset + 1)
        labels.append(packet[offset + 1: offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise ValueError("name compression loop")


class StubDns:
    """`StubDns()` binds a free UDP port on 127.0.0.1 and answers in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", log_path=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()
        self._lock = threading.Lock()
        self._srv: dict[str, list[tuple[int, int, int, str]]] = {}
        self._a: dict[str, list[str]] = {}
        self.queries: list[tuple[str, int]] = []   # (name, type) as asked, for debugging
        self.log_path = log_path                   # one line per query and answer, if set
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="stub-dns", daemon=True)
        self._thread.start()

    # -- the zone ------------------------------------------------------------

    def add_xmpp_server(self, domain: str, port: int | None, address: str = "127.0.0.1",
                        tls_port: int | None = None) -> None:
        """`_xmpp-server._tcp.<domain>` SRV -> <address>:<port> (STARTTLS), when `port`;
        `_xmpps-server._tcp.<domain>` SRV -> <address>:<tls_port> (XEP-0368 direct TLS),
        when `tls_port`; and <domain> A <address>. Replaces what `domain` had.

        The SRV target is the address itself ("127.0.0.1." as a name): ejabberd resolves
        SRV targets with the system's getaddrinfo, not with its DNS client, and an address
        literal needs no lookup there (Prosody also takes it as an address)."""
        domain = domain.lower().rstrip(".")
        self.remove(domain)
        with self._lock:
            if port:
                self._srv[f"_xmpp-server._tcp.{domain}"] = [(0, 5, port, address)]
            if tls_port:
                self._srv[f"_xmpps-server._tcp.{domain}"] = [(0, 5, tls_port, address)]
            self._a[domain] = [address]

    def remove(self, domain: str) -> None:
        domain = domain.lower().rstrip(".")
        with self._lock:
            self._srv.pop(f"_xmpp-server._tcp.{domain}", None)
            self._srv.pop(f"_xmpps-server._tcp.{domain}", None)
            self._a.pop(domain, None)

    # -- serving -------------------------------------------------------------

    def close(self) -> None:
        self._closed = True
        self.sock.close()

    def _serve(self) -> None:
        while not self._closed:
            try:
                packet, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                reply = self.answer(packet)
            except (IndexError, ValueError, struct.error):
                continue   # not a query we can parse: no answer, the client retries elsewhere
            try:
                self.sock.sendto(reply, peer)
            except OSError:
                return

    def answer(self, packet: bytes) -> bytes:
        qid, flags, qdcount = struct.unpack("!HHH", packet[:6])
        if qdcount != 1:
            raise ValueError("expected one question")
        qname, offset = _read_name(packet, 12)
        qtype, qclass = struct.unpack("!HH", packet[offset: offset + 4])
        question = packet[12: offset + 4]
        self.queries.append((qname, qtype))
        key = qname.lower().rstrip(".")
        answers: list[bytes] = []
        with self._lock:
            known = key in self._srv or key in self._a
            if qtype == TYPE_SRV and key in self._srv:
                for prio, weight, port, target in self._srv[key]:
                    rdata = struct.pack("!HHH", prio, weight, port) + _encode_name(target)
                    answers.append(self._rr(TYPE_SRV, rdata))
            elif qtype == TYPE_A and key in self._a:
                for addr in self._a[key]:
                    answers.append(self._rr(TYPE_A, socket.inet_aton(addr)))
        rcode = 0 if known else 3   # NOERROR / NXDOMAIN
        if self.log_path:
            with open(self.log_path, "a") as log:
                log.write(f"{qname} type {qtype}: rcode {rcode}, {len(answers)} answer(s)\n")
        authority = [] if answers else [self._soa(key)]
        # QR, opcode copied, AA, RD copied, RA
        out_flags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
        header = struct.pack("!HHHHHH", qid, out_flags, 1, len(answers), len(authority), 0)
        return header + question + b"".join(answers) + b"".join(authority)

    @staticmethod
    def _rr(rtype: int, rdata: bytes) -> bytes:
        # owner = the question name (compression pointer to offset 12)
        return struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, TTL, len(rdata)) + rdata

    @staticmethod
    def _soa(name: str) -> bytes:
        zone = name.split(".")[-1] or "test"   # the TLD: "test"
        rdata = (_encode_name(f"ns.{zone}") + _encode_name(f"hostmaster.{zone}")
                 + struct.pack("!IIIII", 1, 3600, 600, 86400, TTL))
        return (_encode_name(zone) + struct.pack("!HHIH", TYPE_SOA, CLASS_IN, TTL, len(rdata))
                + rdata)
