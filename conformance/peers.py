"""Real Prosody 0.12 and ejabberd 23.01 (Debian packages) as federation peers.

Each peer runs as our own process with a config of our own: 127.0.0.1 only, free ports (c2s,
s2s with STARTTLS, s2s with XEP-0368 direct TLS, and for ejabberd an HTTP admin API), its
own data and log files in the test's work dir,
its own domain (`prosody.test`, `ejabberd.test`) with a MUC service
(`conference.<domain>`), and a certificate from the session's test CA (testca.py). The
system configs, ports and services of the packages are never used (`scripts/install-deps`
installs the packages without leaving their daemons running).

How each peer finds the others at a free port on loopback: standard DNS, answered by the
suite's stub server (stubdns.py) which publishes `_xmpp-server._tcp.<domain>` SRV records
(`_xmpps-server` for direct TLS) for every server of the session, with the address literal
127.0.0.1 as target (ejabberd looks SRV targets up with the system's getaddrinfo, which
would need /etc/hosts entries for a name):
  * Prosody resolves with libunbound (lua-unbound); its `unbound` option forwards all
    queries to the stub (`forward = "127.0.0.1@PORT"`, no resolv.conf, no hosts file) and
    turns off unbound's built-in refusal of the RFC 6761 `test.` zone
    (`local-zone: "test." transparent`);
  * ejabberd resolves with Erlang's inet_res; ERL_INETRC names a file that replaces
    resolv.conf and the hosts file with the stub as the only name server.
Starling is given `s2s.static_hosts` instead (its own equivalent), see test_s2s.py.

Accounts: Prosody's are written into its data directory in the format its
mod_auth_internal_hashed reads (as bench/peers/prosody_accounts.py does); ejabberd's are
registered through its HTTP API (mod_http_api `register`, allowed from loopback only).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from starling_server import free_ports, port_open
from stubdns import StubDns
from testca import IssuedCert, TestCa

START_TIMEOUT = 60.0   # ejabberd's BEAM boot plus mnesia creation takes a few seconds
STOP_TIMEOUT = 10.0
MUC_PREFIX = "conference"


class PeerError(RuntimeError):
    """A peer server could not be started or administered."""


def missing_peer(kind: str) -> str | None:
    """Why the `kind` peer cannot run here (None: it can). The suite fails on this, never
    skips: `scripts/install-deps` installs both packages."""
    if kind == "prosody":
        if shutil.which("prosody") is None:
            return "prosody is not installed (run scripts/install-deps)"
        # Without lua-unbound Prosody falls back to its own resolver, which has no
        # `unbound` option: it could not find the other servers through the stub DNS.
        if not list(Path("/usr/lib").glob("*/lua/5.4/lunbound.so")):
            return "lua-unbound is not installed (run scripts/install-deps)"
        return None
    if kind == "ejabberd":
        if shutil.which("erl") is None or ejabberd_ebin() is None:
            return "ejabberd is not installed (run scripts/install-deps)"
        return None
    return f"unknown peer kind {kind!r}"


def ejabberd_ebin() -> Path | None:
    for pattern in ("/usr/lib/x86_64-linux-gnu/ejabberd-*/ebin", "/usr/lib/*/ejabberd-*/ebin",
                    "/usr/lib/ejabberd*/lib/ejabberd-*/ebin"):
        for d in sorted(Path("/").glob(pattern.lstrip("/"))):
            if (d / "ejabberd.beam").is_file():
                return d
    return None


class PeerServer:
    """What the tests and xmpp_client.Session need of a server: `jid(user)`, `c2s_port`,
    `direct_tls_port`, plus start/stop, accounts and the log."""

    kind = "peer"

    def __init__(self, workdir: Path, domain: str, cert: IssuedCert, ca_file: Path,
                 dns: StubDns):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.domain = domain
        self.muc = f"{MUC_PREFIX}.{domain}"
        self.cert = cert
        self.ca_file = Path(ca_file)
        self.dns = dns
        self.c2s_port, self.s2s_port, self.s2s_tls_port, self.http_port = free_ports(4)
        self.direct_tls_port = None   # c2s direct TLS (xmpp_client.Session): not used
        self.log_path = self.workdir / f"{self.kind}.log"      # the server's own log
        self.out_path = self.workdir / f"{self.kind}.out"      # its stdout/stderr
        self.process: subprocess.Popen | None = None
        self._out = None

    # -- identity ------------------------------------------------------------

    def jid(self, user: str) -> str:
        return user if "@" in user else f"{user}@{self.domain}"

    def __repr__(self) -> str:
        return f"<{self.kind} {self.domain} c2s={self.c2s_port} s2s={self.s2s_port}>"

    # -- lifecycle -----------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def write_config(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.write_config()
        self._out = open(self.out_path, "ab")
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._out,
            cwd=self.workdir, env=self.env(), start_new_session=True)
        ports = [self.c2s_port, self.s2s_port, self.s2s_tls_port] + self.extra_ports()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PeerError(f"{self.kind} exited during start-up with code "
                                f"{self.process.returncode}\n{self.log_tail()}")
            if all(port_open(p) for p in ports):
                self.dns.add_xmpp_server(self.domain, self.s2s_port)
                self.dns.add_xmpp_server(self.muc, self.s2s_port)
                return
            time.sleep(0.1)
        self.stop()
        raise PeerError(f"{self.kind} did not listen on {ports} within {START_TIMEOUT}s\n"
                        + self.log_tail())

    def extra_ports(self) -> list[int]:
        return []

    def stop(self) -> int | None:
        self.dns.remove(self.domain)
        self.dns.remove(self.muc)
        proc, self.process = self.process, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    # the whole session: ejabberd's VM runs helper processes (e.g. epmd is
                    # off, but inet_gethost and the TLS port programs) in its group
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=STOP_TIMEOUT)
            else:
                code = proc.returncode
        if self._out:
            self._out.close()
            self._out = None
        return code

    # -- logs ----------------------------------------------------------------

    def log_text(self) -> str:
        parts = []
        for path in (self.log_path, self.out_path):
            try:
                parts.append(path.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def log_tail(self, lines: int = 80) -> str:
        out = []
        for path in (self.log_path, self.out_path):
            try:
                text = path.read_text(errors="replace").splitlines()
            except FileNotFoundError:
                continue
            out.append(f"--- {path} (last {lines} lines) ---")
            out.extend(text[-lines:])
        return "\n".join(out)

    # -- accounts ------------------------------------------------------------

    def adduser(self, user: str, password: str) -> None:
        raise NotImplementedError

    def adduser_many(self, accounts: dict[str, str]) -> None:
        for user, password in accounts.items():
            self.adduser(user, password)


# --------------------------------------------------------------------------
# Prosody
# --------------------------------------------------------------------------

def _lua_str(value: str) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _prosody_encode(s: str) -> str:
    # util.datamanager's encode: every byte outside [a-zA-Z0-9] (Lua's %W) becomes %xx
    return "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else "%%%02x" % b
                   for b in s.encode())


class ProsodyPeer(PeerServer):
    """`prosody --config <ours> -F`: foreground, our pidfile, data, certs and log."""

    kind = "prosody"
    ITERATIONS = 4096

    def command(self) -> list[str]:
        return ["prosody", "--config", str(self.workdir / "prosody.cfg.lua"), "-F"]

    def write_config(self) -> None:
        w = self.workdir
        (w / "data").mkdir(exist_ok=True)
        (w / "certs").mkdir(exist_ok=True)
        unbound = (f'{{ resolvconf = false; hoststxt = false; '
                   f'forward = {_lua_str(f"{self.dns.host}@{self.dns.port}")}; '
                   f'options = {{ ["local-zone"] = "test. transparent" }} }}')
        text = f"""-- Written by conformance/peers.py for one test run.
run_as_root = true
pidfile = {_lua_str(w / "prosody.pid")}
data_path = {_lua_str(w / "data")}
plugin_paths = {{ }}
certificates = {_lua_str(w / "certs")}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s_port} }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ {self.s2s_port} }}
s2s_direct_tls_ports = {{ {self.s2s_tls_port} }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
use_ipv6 = false
log = {{ debug = {_lua_str(self.log_path)} }}
unbound = {unbound}
authentication = "internal_hashed"
password_hash = "SHA-256"
storage = "internal"
c2s_require_encryption = true
s2s_require_encryption = true
-- certificates decide EXTERNAL vs dialback; an untrusted one falls back to dialback
s2s_secure_auth = false
s2s_timeout = 20
ssl = {{
	certificate = {_lua_str(self.cert.chain)};
	key = {_lua_str(self.cert.key)};
	cafile = {_lua_str(self.ca_file)};
}}
modules_enabled = {{
	"roster"; "saslauth"; "tls"; "dialback"; "s2s_bidi"; "disco"; "ping"; "time";
	"version"; "private"; "pep"; "vcard";
}}

VirtualHost {_lua_str(self.domain)}

Component {_lua_str(self.muc)} "muc"
	restrict_room_creation = false
	muc_room_locking = false
	muc_tombstones = false
	muc_room_default_public = true
	muc_room_default_persistent = false
"""
        (w / "prosody.cfg.lua").write_text(text)

    def adduser(self, user: str, password: str) -> None:
        """The account file mod_auth_internal_hashed reads (SCRAM-SHA-256, as configured):
        Prosody reads it on each login, so accounts can be added while it runs."""
        name = user.split("@", 1)[0]
        salt = secrets.token_hex(12)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), self.ITERATIONS)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).hexdigest()
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).hexdigest()
        body = ("return {\n"
                f"\t[\"iteration_count\"] = {self.ITERATIONS};\n"
                f"\t[\"salt\"] = \"{salt}\";\n"
                f"\t[\"server_key\"] = \"{server_key}\";\n"
                f"\t[\"stored_key\"] = \"{stored_key}\";\n"
                "};\n")
        accounts = self.workdir / "data" / _prosody_encode(self.domain) / "accounts"
        accounts.mkdir(parents=True, exist_ok=True)
        (accounts / f"{_prosody_encode(name.lower())}.dat").write_text(body)


# --------------------------------------------------------------------------
# ejabberd
# --------------------------------------------------------------------------

class EjabberdPeer(PeerServer):
    """ejabberd from `erl` directly (not ejabberdctl, which would switch to the system user,
    node name and epmd): a node without epmd and without a distribution listener, so only
    the ports of our config listen; its own config, mnesia dir and log dir."""

    kind = "ejabberd"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.node = f"starling-conf-{secrets.token_hex(4)}@localhost"

    def extra_ports(self) -> list[int]:
        return [self.http_port]

    def command(self) -> list[str]:
        return ["erl", "-sname", self.node, "-setcookie", secrets.token_hex(16),
                "-start_epmd", "false", "-dist_listen", "false", "-noinput", "-noshell",
                "+K", "true", "-mnesia", "dir", f'"{self.workdir / "spool"}"',
                "-s", "ejabberd"]

    def env(self) -> dict[str, str]:
        ebin = ejabberd_ebin()
        if ebin is None:
            raise PeerError("ejabberd is not installed (run scripts/install-deps)")
        env = dict(os.environ)
        env.update({
            "ERL_LIBS": str(ebin.parent.parent),
            "EJABBERD_CONFIG_PATH": str(self.workdir / "ejabberd.yml"),
            "EJABBERD_LOG_PATH": str(self.log_path),
            "ERL_CRASH_DUMP": str(self.workdir / "erl_crash.dump"),
            "ERL_INETRC": str(self.workdir / "inetrc"),
            "HOME": str(self.workdir),
        })
        return env

    def write_config(self) -> None:
        w = self.workdir
        (w / "spool").mkdir(exist_ok=True)
        # Erlang's resolver: the stub DNS only (no resolv.conf, no hosts file).
        (w / "inetrc").write_text(
            '{resolv_conf, "/dev/null"}.\n{hosts_file, "/dev/null"}.\n'
            f"{{nameserver, {{127,0,0,1}}, {self.dns.port}}}.\n")
        text = f"""# Written by conformance/peers.py for one test run.
hosts:
  - {json.dumps(self.domain)}
loglevel: debug
log_rotate_count: 0
log_rotate_size: infinity
hide_sensitive_log_data: true
certfiles:
  - {json.dumps(str(self.cert.bundle))}
ca_file: {json.dumps(str(self.ca_file))}
s2s_use_starttls: required
s2s_dns_timeout: 5
s2s_dns_retries: 1
outgoing_s2s_families:
  - ipv4
outgoing_s2s_timeout: 20
registration_timeout: infinity
listen:
  -
    port: {self.c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
  -
    port: {self.s2s_port}
    ip: "127.0.0.1"
    module: ejabberd_s2s_in
  -
    port: {self.s2s_tls_port}
    ip: "127.0.0.1"
    module: ejabberd_s2s_in
    tls: true
  -
    port: {self.http_port}
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
auth_method: internal
auth_password_format: scram
acl:
  loopback:
    ip:
      - 127.0.0.0/8
access_rules:
  local:
    allow: all
  c2s:
    allow: all
api_permissions:
  "loopback admin":
    from:
      - mod_http_api
    who:
      ip: 127.0.0.0/8
    what:
      - register
shaper_rules:
  c2s_shaper: none
  s2s_shaper: none
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_time: {{}}
  mod_version:
    show_os: false
  mod_roster: {{}}
  mod_offline: {{}}
  mod_caps: {{}}
  mod_vcard: {{}}
  mod_pubsub:
    plugins:
      - flat
      - pep
  mod_s2s_dialback: {{}}
  mod_http_api: {{}}
  mod_muc:
    host: {json.dumps(self.muc)}
    access: all
    access_create: all
    access_persistent: all
    history_size: 0
    default_room_options:
      persistent: false
      public: true
      mam: false
"""
        (w / "ejabberd.yml").write_text(text)

    def adduser(self, user: str, password: str) -> None:
        name = user.split("@", 1)[0]
        body = json.dumps({"user": name, "host": self.domain, "password": password}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/api/register",
                                     data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
        except OSError as e:
            detail = e.read().decode(errors="replace") if hasattr(e, "read") else ""
            raise PeerError(f"ejabberd register {name}@{self.domain}: {e} {detail}") from e


PEER_CLASSES = {"prosody": ProsodyPeer, "ejabberd": EjabberdPeer}


# --------------------------------------------------------------------------
# The session's federation: CAs, DNS, and who is where
# --------------------------------------------------------------------------

class Federation:
    """One per test session: the test CAs, the stub DNS every peer resolves with, and the
    running peers (so failures can show their logs)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.ca = TestCa(self.dir / "ca", "Federation test")
        # Signs certificates nobody trusts: those servers authenticate with dialback.
        self.untrusted_ca = TestCa(self.dir / "ca", "Untrusted")
        self.dns = StubDns(log_path=self.dir / "dns.log")
        self.peers: list[PeerServer] = []

    def close(self) -> None:
        for peer in list(self.peers):
            self.stop_peer(peer)
        self.dns.close()

    def cert(self, domain: str, trusted: bool = True) -> IssuedCert:
        """A certificate for `domain` and `conference.<domain>`, from the CA everyone trusts
        (or from the untrusted one)."""
        return (self.ca if trusted else self.untrusted_ca).issue(domain, MUC_PREFIX)

    def start_peer(self, kind: str, workdir: Path, domain: str | None = None,
                   trusted_cert: bool = True) -> PeerServer:
        """Start a Prosody or ejabberd for `domain` (default `<kind>.test`); it trusts the
        federation CA only. Fails (never skips) when the package is missing."""
        why = missing_peer(kind)
        if why:
            raise PeerError(why)
        domain = domain or f"{kind}.test"
        peer = PEER_CLASSES[kind](workdir, domain, self.cert(domain, trusted_cert),
                                  self.ca.ca_file, self.dns)
        self.peers.append(peer)
        peer.start()
        return peer

    def stop_peer(self, peer: PeerServer) -> None:
        peer.stop()
        if peer in self.peers:
            self.peers.remove(peer)

    def publish(self, domain: str, s2s_port: int | None, tls_port: int | None = None) -> None:
        """Make `domain` and `conference.<domain>` resolvable for the peers (Starling's own
        listeners): SRV `_xmpp-server` -> 127.0.0.1:s2s_port (STARTTLS), and
        `_xmpps-server` -> 127.0.0.1:tls_port (direct TLS) when given."""
        for name in (domain, f"{MUC_PREFIX}.{domain}"):
            self.dns.add_xmpp_server(name, s2s_port, tls_port=tls_port)

    def unpublish(self, domain: str) -> None:
        self.dns.remove(domain)
        self.dns.remove(f"{MUC_PREFIX}.{domain}")


def static_hosts(*servers, direct_tls: bool = False) -> dict[str, str]:
    """Starling's `s2s.static_hosts` for peers (or other Starlings, given as (domain, port)):
    each domain and its MUC service, at the peer's STARTTLS s2s port, or with
    `direct_tls` at its direct TLS one ("tls://", XEP-0368)."""
    out = {}
    for server in servers:
        if isinstance(server, PeerServer):
            domain = server.domain
            target = (f"tls://127.0.0.1:{server.s2s_tls_port}" if direct_tls
                      else f"127.0.0.1:{server.s2s_port}")
        else:
            domain, port = server
            target = f"127.0.0.1:{port}"
        out[domain] = target
        out[f"{MUC_PREFIX}.{domain}"] = target
    return out
