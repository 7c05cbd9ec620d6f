#!/usr/bin/env python3
"""Record what a real `starling serve` sends, one file per connection, and validate it.

Starts the server from a throw-away config (domain localhost, data in a temp
directory, free loopback port, plaintext allowed, open registration), creates
alice@localhost and bob@localhost, then drives raw-socket sessions:

  alice.xml      PLAIN login, bind, session, roster get/set, initial presence,
                 subscribe to bob, ping, disco#info/#items (server and own
                 account), version, time, last (server and bob), unknown IQ
                 payload, a message to an unknown user and one to offline bob,
                 then </stream:stream>.
  bob.xml        login: gets the offline message (XEP-0203 delay) and alice's
                 subscription request, approves it.
  prelogin.xml   XEP-0077 registration form before login, a wrong password
                 (SASL failure), then an IQ before authentication.
  bad-xml.xml    a stanza that is not well-formed, to get a <stream:error/>.
  edge.xml       (--edge only) bob sends an invalid <show/>, an empty <status/>,
                 <priority>200</priority> and an IQ id with a space: shows what the
                 server relays or echoes unchecked.

Usage: capture.py [--bin target/debug/starling] [--out DIR] [--keep] [--strict] [--quiet] [--edge]
Exit status: that of validate.py over all transcripts (0 = everything valid).
Standard library only.  Build first: cargo build --bin starling
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import validate  # noqa: E402

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' "
          "version='1.0' xml:lang='en'>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary: Path, workdir: Path):
        self.bin = binary
        self.port = free_port()
        self.config = workdir / "starling.toml"
        self.config.write_text(f"""\
domain = "localhost"
data_dir = "{workdir / 'data'}"

[listen]
c2s = "127.0.0.1:{self.port}"
c2s_direct_tls = ""
http = ""
https = ""

[registration]
open = true

[c2s]
require_tls = false

[server_info]
abuse_addresses = ["mailto:abuse@localhost"]
admin_addresses = ["xmpp:admin@localhost", "mailto:admin@localhost"]
version_show_os = true

[log]
level = "warn"
""")
        self.log = open(workdir / "server.log", "wb")
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> None:
        subprocess.run([str(self.bin), "--config", str(self.config), *args],
                       check=True, timeout=60, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self.proc = subprocess.Popen([str(self.bin), "--config", str(self.config), "serve"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Conn:
    """A raw socket that records every byte the server sends."""

    def __init__(self, port: int, record: Path):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.record = record
        self.buf = b""
        self.seen = 0          # buf offset already matched by expect()

    def send(self, s: str) -> None:
        self.sock.sendall(s.encode())

    def _read(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        except OSError:
            return False
        if not data:
            return False
        self.buf += data
        return True

    def expect(self, marker: str, timeout: float = 5.0) -> None:
        """Read until marker shows up in unread output, then drain for a moment."""
        m = marker.encode()
        deadline = time.monotonic() + timeout
        while m not in self.buf[self.seen:]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {marker!r} from server; got {self.buf[self.seen:]!r}")
            if not self._read(0.2) and m not in self.buf[self.seen:]:
                raise ConnectionError(f"connection closed waiting for {marker!r}")
        self.seen = self.buf.index(m, self.seen) + len(m)
        self.settle()

    def settle(self, quiet: float = 0.3) -> None:
        while True:
            before = len(self.buf)
            if not self._read(quiet) or len(self.buf) == before:
                return

    def close(self, send_close: bool = True) -> None:
        if send_close:
            try:
                self.send("</stream:stream>")
                deadline = time.monotonic() + 3
                while b"</stream:stream>" not in self.buf and time.monotonic() < deadline:
                    if not self._read(0.2):
                        break
            except OSError:
                pass
        self.sock.close()
        self.record.write_bytes(self.buf)


def login(c: Conn, user: str, password: str, resource: str) -> None:
    c.send(HEADER)
    c.expect("</stream:features>")
    cred = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    c.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>")
    c.expect("success")
    c.send(HEADER)
    c.expect("</stream:features>")
    c.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           f"<resource>{resource}</resource></bind></iq>")
    c.expect("bind1")
    c.send("<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    c.expect("sess1")


def iq(c: Conn, id_: str, body: str, typ: str = "get", to: str | None = None) -> None:
    to_attr = f" to='{to}'" if to else ""
    c.send(f"<iq type='{typ}' id='{id_}'{to_attr}>{body}</iq>")
    c.expect(id_)


def session_alice(port: int, out: Path) -> None:
    c = Conn(port, out / "alice.xml")
    login(c, "alice", "pw", "capture")
    iq(c, "roster1", "<query xmlns='jabber:iq:roster'/>")
    iq(c, "roster2", "<query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'>"
       "<group>Friends</group></item></query>", typ="set")
    c.send("<presence/>")
    c.settle(0.5)
    c.send("<presence type='subscribe' to='bob@localhost'/>")
    c.settle(0.5)
    iq(c, "ping1", "<ping xmlns='urn:xmpp:ping'/>", to="localhost")
    iq(c, "disco1", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to="localhost")
    iq(c, "disco2", "<query xmlns='http://jabber.org/protocol/disco#items'/>", to="localhost")
    iq(c, "disco3", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to="alice@localhost")
    iq(c, "ver1", "<query xmlns='jabber:iq:version'/>", to="localhost")
    iq(c, "time1", "<time xmlns='urn:xmpp:time'/>", to="localhost")
    iq(c, "last1", "<query xmlns='jabber:iq:last'/>", to="localhost")
    iq(c, "last2", "<query xmlns='jabber:iq:last'/>", to="bob@localhost")
    iq(c, "reg1", "<query xmlns='jabber:iq:register'/>")
    iq(c, "unknown1", "<query xmlns='urn:example:nothing'/>", to="localhost")
    c.send("<message to='nobody@localhost' type='chat' id='m1'><body>hello?</body></message>")
    c.expect("m1")
    c.send("<message to='bob@localhost' type='chat' id='m2'><body>see you later</body></message>")
    c.settle(0.5)
    c.close()


def session_bob(port: int, out: Path) -> None:
    c = Conn(port, out / "bob.xml")
    login(c, "bob", "pw", "capture")
    iq(c, "roster1", "<query xmlns='jabber:iq:roster'/>")
    c.send("<presence><show>away</show><status>back soon</status><priority>5</priority></presence>")
    c.settle(1.0)
    c.send("<presence type='subscribed' to='alice@localhost'/>")
    c.settle(0.5)
    c.close()


def session_prelogin(port: int, out: Path) -> None:
    c = Conn(port, out / "prelogin.xml")
    c.send(HEADER)
    c.expect("</stream:features>")
    iq(c, "reg0", "<query xmlns='jabber:iq:register'/>")
    cred = base64.b64encode(b"\0alice\0wrong").decode()
    c.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>")
    c.expect("failure")
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-NONE'/>")
    c.expect("failure")
    c.send("<iq type='get' id='early1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    c.settle(0.5)
    c.close()


def session_bad_xml(port: int, out: Path) -> None:
    c = Conn(port, out / "bad-xml.xml")
    c.send(HEADER)
    c.expect("</stream:features>")
    c.send("<message><body>unclosed</message>")
    c.settle(1.0)
    c.close(send_close=False)


def session_edge(port: int, out: Path) -> None:
    """Questionable client input the server relays or bounces (only with --edge)."""
    c = Conn(port, out / "edge.xml")
    login(c, "bob", "pw", "edge")
    for p in ("<presence><show>bogus</show></presence>",       # relayed unchecked
              "<presence><status/></presence>",                # empty status (A.5: 1..1024 chars)
              "<presence><priority>200</priority></presence>", # bounced with the bad child inside
              "<iq type='get' id='id with space' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"):
        c.send(p)
        c.settle(0.5)
    c.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path,
                    default=Path(os.environ.get("STARLING_BIN", REPO / "target/debug/starling")))
    ap.add_argument("--out", type=Path, help="where to write the transcripts (default: a temp dir)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the server's temp directory (always kept without --out)")
    ap.add_argument("--strict", action="store_true", help="pass --strict to the validator")
    ap.add_argument("--quiet", "-q", action="store_true", help="pass --quiet to the validator")
    ap.add_argument("--edge", action="store_true",
                    help="also record edge.xml: invalid client input the server relays")
    args = ap.parse_args(argv)
    if not args.bin.is_file():
        print(f"capture: {args.bin} not found; run `cargo build --bin starling`", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="starling-schema-"))
    out = args.out or work / "transcripts"
    out.mkdir(parents=True, exist_ok=True)
    server = Server(args.bin, work)
    try:
        server.cli("adduser", "alice@localhost", "pw")
        server.cli("adduser", "bob@localhost", "pw")
        server.start()
        session_alice(server.port, out)
        session_bob(server.port, out)
        session_prelogin(server.port, out)
        session_bad_xml(server.port, out)
        if args.edge:
            session_edge(server.port, out)
    finally:
        server.stop()
        log = (work / "server.log").read_text(errors="replace")
        if log.strip():
            print("server log:\n" + log, file=sys.stderr)
        if args.out and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    files = sorted(out.glob("*.xml"))
    print(f"transcripts in {out}")
    flags = (["--strict"] if args.strict else []) + (["--quiet"] if args.quiet else [])
    return validate.main([*flags, *map(str, files)])


if __name__ == "__main__":
    sys.exit(main())
