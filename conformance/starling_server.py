"""Start, stop and administer a real `starling serve` process.

Every server gets its own temporary data directory, its own free loopback
ports and its own database (a SQLite file in the data directory, or a fresh
PostgreSQL database created for it).  Nothing here ever touches the default
configuration, ports or ./data of the server.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

DOMAIN = "localhost"
START_TIMEOUT = 20.0   # seconds for the listeners to come up
STOP_TIMEOUT = 5.0     # seconds for a clean exit after SIGTERM
CLI_TIMEOUT = 30.0     # seconds for one account CLI call


class ServerError(RuntimeError):
    """The server could not be started, stopped or administered."""


def free_ports(count: int) -> list[int]:
    """Distinct currently free TCP ports on 127.0.0.1 (bind port 0, read it back);
    the sockets are held together so the kernel cannot hand out one port twice."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):   # inline table; keys quoted (domains contain dots)
        return "{ " + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_toml(top: dict, sections: dict[str, dict]) -> str:
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    for name, values in sections.items():
        if not values:
            continue
        lines.append("")
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Database backends
# --------------------------------------------------------------------------

class SqliteDatabase:
    name = "sqlite"

    def __init__(self, workdir: Path):
        self.url = f"sqlite://{workdir / 'starling.db'}"

    def drop(self) -> None:
        pass  # lives in the temporary directory


class PostgresDatabase:
    """A fresh database `starling_conf_<random>` on the admin server."""

    name = "postgres"

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.db_name = "starling_conf_" + secrets.token_hex(6)
        self._psql(f'CREATE DATABASE "{self.db_name}"')
        parts = urllib.parse.urlsplit(admin_url)
        self.url = urllib.parse.urlunsplit(parts._replace(path="/" + self.db_name))

    def _psql(self, sql: str) -> None:
        proc = subprocess.run(
            ["psql", self.admin_url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
            capture_output=True, text=True, timeout=CLI_TIMEOUT,
        )
        if proc.returncode != 0:
            raise ServerError(f"psql failed ({sql}): {proc.stderr.strip()}")

    def drop(self) -> None:
        if os.environ.get("CONF_KEEP_DATABASES"):
            return
        self._psql(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')


def make_database(workdir: Path):
    backend = os.environ.get("CONF_DB", "sqlite")
    if backend == "sqlite":
        return SqliteDatabase(workdir)
    if backend == "postgres":
        admin_url = os.environ.get("CONF_PG_ADMIN_URL")
        if not admin_url:
            raise ServerError("CONF_DB=postgres needs CONF_PG_ADMIN_URL")
        return PostgresDatabase(admin_url)
    raise ServerError(f"unknown CONF_DB={backend!r} (expected sqlite or postgres)")


# --------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------

@dataclass
class ServerOptions:
    """The knobs the suite turns; everything else stays at the server's default."""

    domains: list[str] = field(default_factory=lambda: [DOMAIN])
    registration_open: bool = True
    require_tls: bool = True
    direct_tls: bool = True
    max_stanza_size: int | None = None
    offline_max_messages: int | None = None
    extra_sections: dict[str, dict] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)   # STARLING__* overrides to test


class StarlingServer:
    def __init__(self, binary: Path, workdir: Path, options: ServerOptions | None = None):
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.options = options or ServerOptions()
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "starling.toml"
        self.log_path = self.workdir / "starling.log"
        self.c2s_port, tls_port, self.http_port, self.https_port = free_ports(4)
        self.direct_tls_port = tls_port if self.options.direct_tls else None
        self.database = make_database(self.workdir)
        self.process: subprocess.Popen | None = None
        self.unclean_exits: list[str] = []  # every stop() that did not end with exit code 0
        self.panic_checked = 0            # log offset already checked for panics
        self._log_file = None
        self._write_config()
        self.config_c2s_port = self.c2s_port
        env_c2s = self.options.env.get("STARLING__LISTEN__C2S")
        if env_c2s:   # the server should listen where the environment says
            self.c2s_port = int(env_c2s.rsplit(":", 1)[1])

    # -- configuration ------------------------------------------------------

    def _write_config(self) -> None:
        opts = self.options
        sections: dict[str, dict] = {
            "listen": {
                "c2s": f"127.0.0.1:{self.c2s_port}",
                "c2s_direct_tls": (f"127.0.0.1:{self.direct_tls_port}"
                                   if self.direct_tls_port else ""),
                # The HTTP module (upload, WebSocket, BOSH) on its own free ports.
                "http": f"127.0.0.1:{self.http_port}",
                "https": f"127.0.0.1:{self.https_port}",
                # Federation listeners off unless a test asks for them (extra_sections):
                # never the default ports, which parallel runs would share.
                "s2s": "",
                "s2s_direct_tls": "",
                "component": "",
            },
            "database": {"url": self.database.url},
            "registration": {"open": opts.registration_open},
            "c2s": {"require_tls": opts.require_tls},
            "limits": ({"max_stanza_size": opts.max_stanza_size}
                       if opts.max_stanza_size is not None else {}),
            "offline": ({"max_messages": opts.offline_max_messages}
                        if opts.offline_max_messages is not None else {}),
        }
        for name, values in opts.extra_sections.items():
            sections.setdefault(name, {}).update(values)
        domain = opts.domains[0] if len(opts.domains) == 1 else opts.domains
        text = render_toml({"domain": domain, "data_dir": str(self.data_dir)}, sections)
        self.config_path.write_text(text)

    def _env(self) -> dict[str, str]:
        # Only our config file counts: drop any STARLING__* override from outside, and the
        # caller's RUST_LOG (the log level is the server's default unless CONF_RUST_LOG).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("STARLING__") and k != "RUST_LOG"}
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.options.env)
        if os.environ.get("CONF_RUST_LOG"):
            env["RUST_LOG"] = os.environ["CONF_RUST_LOG"]
        return env

    # -- lifecycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            raise ServerError("server already running")
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(b"\n=== conformance: starting starling serve ===\n")
        self._log_file.flush()
        self.process = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=self._log_file,
            cwd=self.workdir, env=self._env(), start_new_session=True,
        )
        ports = ([self.c2s_port, self.http_port, self.https_port]
                 + ([self.direct_tls_port] if self.direct_tls_port else []))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"starling exited during start-up with code {self.process.returncode}\n"
                    + self.log_tail())
            # Ready: every port accepts and the server has logged that it started (its
            # "listening" lines come before that one, and its signal handlers are in place).
            if all(port_open(p) for p in ports) and self._started_logged():
                return
            time.sleep(0.05)
        self.kill()
        raise ServerError(f"starling did not listen on {ports} within {START_TIMEOUT}s\n"
                          + self.log_tail())

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then wait. Returns the exit code, or None if it had to be killed.
        Anything but a clean exit 0 is recorded in `unclean_exits`."""
        if self.process is None:
            return None
        proc, self.process = self.process, None
        code: int | None
        if proc.poll() is not None:
            code = proc.returncode
            self.unclean_exits.append(f"had exited by itself (code {code}) before SIGTERM")
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=timeout)
                if code != 0:
                    self.unclean_exits.append(f"exited with code {code} after SIGTERM")
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
                code = None
                self.unclean_exits.append(f"did not exit within {timeout}s of SIGTERM (killed)")
        self._append_log(f"=== conformance: starling exited with {code} ===")
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
        self.process = None
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> int | None:
        code = self.stop()
        self.start()
        return code

    def _started_logged(self) -> bool:
        if os.environ.get("CONF_RUST_LOG"):
            return True   # a custom filter may hide the info line; the ports must do
        text = self.log_path.read_bytes()
        last = text.rfind(b"=== conformance: starting starling serve ===")
        return b"Starling started" in text[last:]

    def cleanup(self) -> None:
        self.kill()
        self.database.drop()

    # -- logs ---------------------------------------------------------------

    def _append_log(self, line: str) -> None:
        with open(self.log_path, "ab") as f:
            f.write(line.encode() + b"\n")

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, since: int = 0, lines: int = 80) -> str:
        text = self.log_text(since).splitlines()
        return "\n".join(text[-lines:])

    # -- account CLI --------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.binary), "--config", str(self.config_path), *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            cwd=self.workdir, env=self._env(), timeout=CLI_TIMEOUT,
        )
        if check and proc.returncode != 0:
            raise ServerError(
                f"`starling {' '.join(args)}` exited {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}")
        return proc

    def adduser(self, user: str, password: str) -> None:
        self.cli("adduser", self.jid(user), password)

    def adduser_many(self, accounts: dict[str, str]) -> None:
        listing = self.workdir / f"accounts-{secrets.token_hex(4)}.txt"
        listing.write_text("".join(f"{self.jid(u)} {p}\n" for u, p in accounts.items()))
        try:
            self.cli("adduser", "--from-file", str(listing))
        finally:
            listing.unlink()

    def deluser(self, user: str) -> None:
        self.cli("deluser", self.jid(user))

    def users(self) -> list[str]:
        out = self.cli("users").stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())

    @staticmethod
    def jid(user: str) -> str:
        return user if "@" in user else f"{user}@{DOMAIN}"
