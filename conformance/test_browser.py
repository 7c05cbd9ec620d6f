"""A real browser client: Converse.js in Debian's headless Chromium against the real server.

Issue 5's acceptance test for the HTTP module. The page (tests/browser/index.html) loads
Converse.js from local files only; tests/browser/driver.mjs drives Chromium with
playwright-core (no browser download), one step per command, while this test runs the
other side with slixmpp and decides the order:

1. Converse logs in over RFC 7395 WebSocket (and, in a second run, over XEP-0206 BOSH) and
   opens a chat with the slixmpp user;
2. it sends a message, which slixmpp receives; slixmpp replies, Converse shows the reply;
3. a file is sent through Converse's upload button: XEP-0363 slot, CORS PUT from the
   page's origin, a message carrying the GET URL (body and XEP-0066 OOB); slixmpp
   downloads that URL and compares it byte for byte with the file; Converse shows the
   image, fetched by its own GET;
4. a screenshot is saved in conformance/artifacts/ (its path is printed);
5. the page opened only the transport under test and requested nothing beyond loopback.

Transport: wss:// (or BOSH over https://) and the upload's https:// URLs, all on the
server's HTTPS listener (its self-signed certificate accepted by the browser), the server at
its defaults (`c2s.require_tls` on). That is the path a client takes when no reverse proxy is
in front, and it needs no setting weakened for the test; the plain listener behind a
TLS-terminating proxy (`http.trust_plain_http`) differs only in how the server decides that
the stream is confidential.

Chromium missing: skipped with the reason, except under CI (`CI=true`), where it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import struct
import threading
import urllib.parse
import urllib.request
import zlib
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import PASSWORD
from xmpp_client import insecure_tls_context, online, q, run

HERE = Path(__file__).resolve().parent
BROWSER_DIR = HERE.parent / "tests" / "browser"
DRIVER = BROWSER_DIR / "driver.mjs"
ARTIFACTS = HERE / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NS_OOB = "jabber:x:oob"

STEP_TIMEOUT = 60.0   # one browser command (the driver's own waits are 30 s)
WAIT = 30.0           # slixmpp waiting for what the browser sent


def missing_prerequisite() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium not found at {CHROMIUM} (scripts/install-deps installs Debian's chromium)"
    if shutil.which("node") is None:
        return "node not found (scripts/install-deps installs nodejs)"
    for package in ("playwright-core", "converse.js"):
        if not (BROWSER_DIR / "node_modules" / package / "package.json").is_file():
            return (f"tests/browser/node_modules/{package} missing "
                    "(scripts/install-deps runs npm ci there)")
    return None


@pytest.fixture
def browser_ready():
    reason = missing_prerequisite()
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the browser test: {reason}", pytrace=False)
        pytest.skip(reason)


# --------------------------------------------------------------------------
# The page, served from tests/browser on a free loopback port
# --------------------------------------------------------------------------

class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@pytest.fixture
def page_server():
    handler = partial(_QuietHandler, directory=str(BROWSER_DIR))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


# --------------------------------------------------------------------------
# The driver process
# --------------------------------------------------------------------------

class Browser:
    """driver.mjs as a subprocess: one JSON command per line in, one JSON reply per line out;
    its stderr (browser console, page errors, failed requests) goes to `log_path`."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._log = None

    async def start(self) -> None:
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1", CHROMIUM=CHROMIUM)
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(DRIVER), cwd=BROWSER_DIR, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._log)

    async def call(self, cmd: str, timeout: float = STEP_TIMEOUT, **args) -> dict:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"browser step {cmd!r}: no reply within {timeout}s\n"
                                 + self.log_tail()) from None
        if not line:
            raise AssertionError(f"browser driver exited during {cmd!r}\n" + self.log_tail())
        reply = json.loads(line)
        if not reply.get("ok"):
            raise AssertionError(f"browser step {cmd!r} failed: {reply.get('error')}\n"
                                 + self.log_tail())
        return reply

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                await self.call("close", timeout=20)
                await asyncio.wait_for(self.proc.wait(), 10)
            except (AssertionError, asyncio.TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "browser log (tail):\n" + "\n".join(text[-lines:])


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def noise_png(width: int = 96, height: int = 64) -> bytes:
    """A PNG of random pixels: every run uploads different bytes, and any corruption in
    transit shows in the comparison (and in the screenshot)."""
    raw = b"".join(b"\x00" + secrets.token_bytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)   # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def download(url: str) -> bytes:
    """GET as the receiving client does (the server's certificate is self-signed)."""
    with urllib.request.urlopen(url, context=insecure_tls_context(), timeout=WAIT) as resp:
        assert resp.status == 200, f"GET {url}: HTTP {resp.status}"
        return resp.read()


def oob_url(message) -> str | None:
    x = message.xml.find(q(NS_OOB, "x"))
    url = x.find(q(NS_OOB, "url")) if x is not None else None
    return url.text if url is not None else None


# --------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------

@pytest.mark.timeout(300)
@pytest.mark.parametrize("transport", ["websocket", "bosh"])
def test_converse_chat_and_file_upload(browser_ready, make_server, accounts, page_server,
                                       tmp_path, capsys, transport):
    server = make_server()
    web, peer = accounts(server, "web", "peer")
    web_jid, peer_jid = server.jid(web), server.jid(peer)
    if transport == "websocket":
        service = ("ws", f"wss://localhost:{server.https_port}/xmpp-websocket")
    else:
        service = ("bosh", f"https://localhost:{server.https_port}/http-bind")
    query = urllib.parse.urlencode({service[0]: service[1], "jid": web_jid,
                                    "password": PASSWORD})
    page_url = f"{page_server}/index.html?{query}#converse/chat?jid={peer_jid}"

    backend = os.environ.get("CONF_DB", "sqlite")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"converse-{transport}-{backend}.png"
    image = noise_png()
    image_path = tmp_path / "noise.png"
    image_path.write_bytes(image)
    browser = Browser(tmp_path / "browser.log")

    async def scenario():
        async with online(server, peer, PASSWORD, resource="slixmpp") as sli:
            sli.send_presence()
            await browser.start()
            try:
                await browser.call("open", url=page_url)
                await browser.call("wait_chat")

                # Converse -> slixmpp
                hello = f"hello from Converse {secrets.token_hex(4)}"
                await browser.call("send", text=hello)
                got = await sli.next_message(lambda m: m["body"] == hello, timeout=WAIT)
                assert got["from"].bare == web_jid, got
                assert got["type"] == "chat"

                # slixmpp -> Converse (to the browser's full JID, as a reply)
                reply = f"hello from slixmpp {secrets.token_hex(4)}"
                sli.send_message(got["from"], reply)
                await browser.call("wait_message", text=reply)

                # A file through Converse's upload button, downloaded by slixmpp.
                sent = await browser.call("upload", path=str(image_path), name="noise.png",
                                          mime="image/png")
                shared = await sli.next_message(lambda m: oob_url(m) is not None,
                                                timeout=WAIT)
                url = oob_url(shared)
                assert shared["from"].bare == web_jid
                assert shared["body"] == url, "Converse sends the URL as the body too"
                assert url == sent["url"], (url, sent["url"])
                assert url.startswith(f"https://localhost:{server.https_port}/"), url
                data = await asyncio.get_running_loop().run_in_executor(None, download, url)
                assert len(data) == len(image), (len(data), len(image))
                assert data == image, "downloaded file differs from the uploaded one"

                # The browser shows the image it fetched itself, then the screenshot.
                await browser.call("wait_image", url=url)
                await browser.call("screenshot", path=str(screenshot))
                with capsys.disabled():   # shown even when pytest captures output
                    print(f"\n    screenshot: {screenshot}")

                # What the chat shows, attributed to the right senders.
                shown = (await browser.call("messages"))["messages"]
                by_text = {m["text"]: m for m in shown}
                assert hello in by_text and reply in by_text, shown
                assert by_text[hello]["sender"] == "me", shown
                assert by_text[reply]["sender"] == "them", shown
                assert by_text[reply]["from"].split("/")[0] == peer_jid, shown
                files = [m for m in shown if url in m["links"]]
                assert len(files) == 1 and files[0]["sender"] == "me", shown

                # Only the transport under test, nothing from the internet.
                net = await browser.call("network")
                assert net["external"] == [], f"the page reached beyond loopback: {net}"
                bosh_posts = [u for u in net["posts"] if u.endswith("/http-bind")]
                if transport == "websocket":
                    assert net["websockets"] and set(net["websockets"]) == {service[1]}, net
                    assert bosh_posts == [], net
                else:
                    assert net["websockets"] == [], net
                    assert bosh_posts and set(bosh_posts) == {service[1]}, net
            finally:
                await browser.stop()

    run(scenario(), timeout=280)
