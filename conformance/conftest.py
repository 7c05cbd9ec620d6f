"""pytest harness: real `starling serve` processes for the conformance tests.

Environment:
  STARLING_BIN        the server binary (default: $CARGO_TARGET_DIR or
                      ../target, then debug/starling); `conformance/run`
                      builds it once and sets this.
  CONF_DB             sqlite (default) or postgres
  CONF_PG_ADMIN_URL   admin URL for postgres; each server gets a fresh database
  CONF_RESULTS_JSON   where to write per-test outcomes (for RESULTS.md)
  CONF_RUST_LOG       RUST_LOG for the server (default: the server's own)
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import pytest

from starling_server import ServerOptions, StarlingServer

HERE = Path(__file__).resolve().parent
PANIC = re.compile(r"panicked")

# Every password the suite uses for pre-provisioned accounts.
PASSWORD = "correct horse battery staple"


def starling_binary() -> Path:
    if os.environ.get("STARLING_BIN"):
        return Path(os.environ["STARLING_BIN"])
    target = HERE.parent / os.environ.get("CARGO_TARGET_DIR", "target")  # relative: to the repo
    return target / "debug" / "starling"


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------

_LIVE: list[StarlingServer] = []   # every server started and not yet cleaned up


class ServerFactory:
    """Starts servers in fresh temp dirs; all are stopped at the end of the scope."""

    def __init__(self, tmp_factory: pytest.TempPathFactory, label: str):
        self.tmp_factory = tmp_factory
        self.label = label
        self.servers: list[StarlingServer] = []

    def __call__(self, accounts: dict[str, str] | None = None, **options) -> StarlingServer:
        binary = starling_binary()
        if not binary.exists():
            pytest.fail(f"starling binary not found at {binary}; build it or set STARLING_BIN")
        workdir = self.tmp_factory.mktemp(re.sub(r"\W+", "_", self.label)[:40])
        server = StarlingServer(binary, workdir, ServerOptions(**options))
        self.servers.append(server)
        _LIVE.append(server)
        server.start()
        if accounts:
            server.adduser_many(accounts)
        return server

    def close(self) -> list[str]:
        """Stop everything; returns problems (hang on SIGTERM, panics) for the caller."""
        problems = []
        for server in self.servers:
            if server.running:
                server.stop()
            problems += [f"{server.workdir.name}: {what}" for what in server.unclean_exits]
            log = server.log_text(server.panic_checked)
            if PANIC.search(log):
                problems.append(f"{server.workdir.name}: server log contains 'panicked':\n"
                                + _panic_excerpt(log))
            server.cleanup()
            _LIVE.remove(server)
        return problems


def _panic_excerpt(log: str) -> str:
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if PANIC.search(line):
            return "\n".join(lines[max(0, i - 5): i + 20])
    return ""


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory, request):
    factory = ServerFactory(tmp_path_factory, request.module.__name__)
    yield factory
    problems = factory.close()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def make_server(tmp_path_factory, request):
    """Per-test servers, for tests that need isolation or special settings."""
    factory = ServerFactory(tmp_path_factory, request.node.name)
    yield factory
    problems = factory.close()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def server(module_servers):
    """The module's shared server: registration open, TLS required, defaults otherwise.

    Accounts alice, bob, carol and dave exist with PASSWORD.  Tests that change
    state (rosters, subscriptions) use their own users or their own server.
    """
    return module_servers({u: PASSWORD for u in ("alice", "bob", "carol", "dave")})


_account_counter = itertools.count(1)


@pytest.fixture
def accounts():
    """accounts(server, 'a', 'b') -> ['a7', 'b8']: fresh accounts (password PASSWORD)."""
    def create(srv: StarlingServer, *prefixes: str) -> list[str]:
        names = [f"{p}{next(_account_counter)}" for p in prefixes]
        srv.adduser_many({n: PASSWORD for n in names})
        return names
    return create


# --------------------------------------------------------------------------
# Logs: panics fail the test; the server's stderr is attached to failures
# --------------------------------------------------------------------------

_LOG_MARKS = pytest.StashKey[dict]()


@pytest.fixture(autouse=True)
def _server_log_watch(request):
    marks = {id(s): s.log_size() for s in _LIVE}
    request.node.stash[_LOG_MARKS] = marks
    yield
    for server in list(_LIVE):
        text = server.log_text(max(marks.get(id(server), 0), server.panic_checked))
        server.panic_checked = server.log_size()
        if PANIC.search(text):
            pytest.fail(f"server log contains 'panicked' during this test:\n{_panic_excerpt(text)}",
                        pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        marks = item.stash.get(_LOG_MARKS, {})
        for server in _LIVE:
            tail = server.log_tail(marks.get(id(server), 0), lines=150)
            if tail:
                report.sections.append((f"starling stderr ({server.workdir.name})", tail))
        for federation in _FEDERATIONS:
            for peer in federation.peers:
                report.sections.append((f"{peer.kind} log ({peer.domain})",
                                        peer.log_tail(lines=60)))
    return report


# --------------------------------------------------------------------------
# Federation: real Prosody and ejabberd peers (peers.py; test_peers.py, test_s2s.py)
# --------------------------------------------------------------------------

_FEDERATIONS: list = []


@pytest.fixture(scope="session")
def federation(tmp_path_factory):
    """The session's test CAs and stub DNS; start peers with federation.start_peer()."""
    from peers import Federation
    fed = Federation(tmp_path_factory.mktemp("federation"))
    _FEDERATIONS.append(fed)
    yield fed
    _FEDERATIONS.remove(fed)
    fed.close()


# --------------------------------------------------------------------------
# Results for RESULTS.md
# --------------------------------------------------------------------------

_RESULTS: dict[str, dict] = {}


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        line = line.strip()
        if line and not line.startswith(("def ", "@", ">")):
            return line[:200]
    return ""


def _detail(report) -> str:
    text = report.longreprtext or ""
    for line in text.splitlines():
        if "panicked at" in line:
            return "server panicked: " + line.strip().lstrip("|").strip()[:200]
    crash = getattr(report.longrepr, "reprcrash", None)
    return _first_line(crash.message if crash else text)


def pytest_runtest_logreport(report):
    entry = _RESULTS.setdefault(report.nodeid, {"outcome": None, "detail": ""})
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            if report.skipped:
                entry.update(outcome="xfail", detail=report.wasxfail)
            else:
                entry.update(outcome="xpass", detail=report.wasxfail)
        elif report.passed:
            entry.update(outcome="pass", detail="")
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            entry.update(outcome="skip", detail=reason)
        else:
            entry.update(outcome="fail" if report.when == "call" else "error",
                         detail=_detail(report))
    elif report.failed:  # teardown problem after a passing call
        entry.update(outcome="error", detail="teardown: " + _detail(report))


def pytest_sessionfinish(session):
    path = os.environ.get("CONF_RESULTS_JSON")
    if path:
        Path(path).write_text(json.dumps(_RESULTS, indent=1, sort_keys=True))
