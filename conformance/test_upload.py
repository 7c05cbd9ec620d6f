"""XEP-0363 HTTP File Upload: slots over XMPP, PUT/GET over HTTPS.

The happy path uses slixmpp's own xep_0363 plugin (disco of the service, slot request,
aiohttp PUT), trusting the server's self-signed certificate as a client would trust a
private CA. The refusals use raw slot IQs and http.client, so every status and header is
visible. After each refusal the upload directory is checked: nothing may be left behind.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import os
import secrets
import ssl
import time
import urllib.parse
import xml.etree.ElementTree as ET

import aiohttp
import slixmpp.plugins.xep_0363.http_upload as slix_upload

from conftest import PASSWORD
from xmpp_client import NS_CLIENT, error_condition, online, q, run

NS = "urn:xmpp:http:upload:0"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DATA = "jabber:x:data"
NS_OOB = "jabber:x:oob"
SERVICE = "upload.localhost"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def tls_context(server) -> ssl.SSLContext:
    """Trust exactly the server's generated certificate (it covers localhost)."""
    return ssl.create_default_context(cafile=str(server.data_dir / "tls" / "cert.pem"))


def upload_dir(server):
    return server.data_dir / "upload"


def stored(server) -> list[str]:
    d = upload_dir(server)
    return sorted(os.listdir(d)) if d.exists() else []


def http_call(server, method: str, url: str, body: bytes | None = None,
              headers: dict | None = None, chunks: list[bytes] | None = None):
    """One HTTP request; returns (status, headers as a lower-case dict, body).
    `chunks` sends the body with chunked transfer encoding (no Content-Length)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10,
                                           context=tls_context(server))
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        if chunks is not None:
            conn.request(method, path, body=iter(chunks), headers=headers or {},
                         encode_chunked=True)
        elif headers and "Content-Length" in headers:
            # An explicit (possibly lying) Content-Length: send headers and body by hand.
            conn.putrequest(method, path)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            if body:
                try:
                    conn.send(body)
                except OSError:
                    pass  # the server may answer and close before reading it
        else:
            conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


async def http_async(server, *args, **kwargs):
    return await asyncio.to_thread(http_call, server, *args, **kwargs)


async def request_slot(session, filename: str, size, content_type: str | None = None):
    """A raw slot request; returns the reply stanza (result or error)."""
    attrs = f"filename='{filename}' size='{size}'"
    if content_type is not None:
        attrs += f" content-type='{content_type}'"
    return await session.iq_xml(
        f"<iq type='get' to='{SERVICE}'><request xmlns='{NS}' {attrs}/></iq>")


def slot_urls(reply) -> tuple[str, str]:
    slot = reply.xml.find(q(NS, "slot"))
    assert slot is not None, f"no slot in {reply}"
    return slot.find(q(NS, "put")).get("url"), slot.find(q(NS, "get")).get("url")


async def new_slot(session, filename: str, size: int, content_type: str | None):
    return slot_urls(await request_slot(session, filename, size, content_type))


async def put(server, url: str, data: bytes, content_type: str | None, **kw):
    headers = {"Content-Length": str(kw.pop("length", len(data)))}
    if content_type is not None:
        headers["Content-Type"] = content_type
    status, _, _ = await http_async(server, "PUT", url, data, headers)
    return status


async def upload(server, session, name: str, data: bytes, ctype: str | None) -> str:
    put_url, get_url = await new_slot(session, name, len(data), ctype)
    assert await put(server, put_url, data, ctype) == 201
    return get_url


def error_child(reply, name: str, ns: str = NS):
    err = reply.xml.find(q(NS_CLIENT, "error"))
    return None if err is None else err.find(q(ns, name))


def upload_server(make_server, **upload):
    return make_server(accounts={"alice": PASSWORD, "bob": PASSWORD},
                       extra_sections={"upload": upload})


def wait_until(predicate, timeout: float = 20.0):
    """Poll a condition the server's background task must make true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


# --------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------

def test_disco_lists_and_describes_the_service(server):
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            items = await s.iq_xml(
                f"<iq type='get' to='localhost'><query xmlns='{NS_ITEMS}'/></iq>")
            jids = [i.get("jid") for i in items.xml.iter(q(NS_ITEMS, "item"))]
            assert SERVICE in jids
            info = await s.iq_xml(f"<iq type='get' to='{SERVICE}'><query xmlns='{NS_INFO}'/></iq>")
            ident = info.xml.find(f"{q(NS_INFO, 'query')}/{q(NS_INFO, 'identity')}")
            assert (ident.get("category"), ident.get("type")) == ("store", "file")
            features = {f.get("var") for f in info.xml.iter(q(NS_INFO, "feature"))}
            assert NS in features
            fields = {f.get("var"): [v.text for v in f.findall(q(NS_DATA, "value"))]
                      for f in info.xml.iter(q(NS_DATA, "field"))}
            assert fields["FORM_TYPE"] == [NS]
            assert fields["max-file-size"] == [str(100 * 1024 * 1024)]
    run(scenario())


# --------------------------------------------------------------------------
# the happy path, with slixmpp's plugin
# --------------------------------------------------------------------------

def test_slixmpp_upload_then_download_and_share_by_oob(server, monkeypatch):
    """alice uploads with slixmpp's xep_0363 plugin, shares the URL in a message with an
    XEP-0066 OOB element, bob receives it intact and downloads the same bytes."""
    ctx = tls_context(server)
    # The plugin builds its own aiohttp session; trust the server's certificate in it.
    monkeypatch.setattr(slix_upload, "ClientSession", lambda **kw: aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx), **kw))
    data = secrets.token_bytes(70_000) + "très cool".encode()

    async def scenario():
        async with online(server, "alice", PASSWORD) as alice, \
                online(server, "bob", PASSWORD) as bob:
            alice.xmpp.register_plugin("xep_0363")
            url = await alice.xmpp["xep_0363"].upload_file(
                "très cool.jpg", size=len(data), content_type="image/jpeg",
                input_file=io.BytesIO(data), timeout=10)
            assert url.startswith(f"https://localhost:{server.https_port}/upload/")
            assert url.endswith("/tr%C3%A8s%20cool.jpg"), url
            # Stored under its random slot id, never under the client's name.
            names = stored(server)
            assert len(names) == 1 and "cool" not in names[0]

            msg = alice.xmpp.make_message(mto=bob.jid, mbody=url, mtype="chat")
            msg.append(ET.fromstring(f"<x xmlns='{NS_OOB}'><url>{url}</url></x>"))
            msg.send()
            got = await bob.next_message(lambda m: m["body"] == url)
            oob = got.xml.find(f"{q(NS_OOB, 'x')}/{q(NS_OOB, 'url')}")
            assert oob is not None and oob.text == url

            status, headers, body = await http_async(server, "GET", oob.text)
            assert status == 200
            assert body == data
            assert headers["content-type"] == "image/jpeg"
            assert headers["content-length"] == str(len(data))
    run(scenario())


# --------------------------------------------------------------------------
# downloads: ranges, headers, CORS
# --------------------------------------------------------------------------

def test_range_requests_and_head(server):
    data = bytes(range(256)) * 4

    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            url = await upload(server, s, "range.bin", data, "audio/ogg")
            status, h, body = await http_async(server, "GET", url, headers={"Range": "bytes=10-19"})
            assert (status, body) == (206, data[10:20])
            assert h["content-range"] == f"bytes 10-19/{len(data)}"
            assert h["content-length"] == "10"
            status, h, body = await http_async(server, "GET", url, headers={"Range": "bytes=1000-"})
            assert (status, body) == (206, data[1000:])
            status, h, body = await http_async(server, "GET", url, headers={"Range": "bytes=-5"})
            assert (status, body) == (206, data[-5:])
            status, h, body = await http_async(server, "GET", url,
                                               headers={"Range": f"bytes={len(data)}-"})
            assert status == 416
            assert h["content-range"] == f"bytes */{len(data)}"
            # HEAD: the headers of a GET, no body.
            status, h, body = await http_async(server, "HEAD", url)
            assert (status, body) == (200, b"")
            assert h["content-length"] == str(len(data))
            assert h["accept-ranges"] == "bytes"
            # Conditional GET with the ETag.
            status, _, body = await http_async(server, "GET", url,
                                               headers={"If-None-Match": h["etag"]})
            assert (status, body) == (304, b"")
    run(scenario())


def test_downloads_are_served_safely(server):
    """Only images, audio, video and plain text render inline; HTML (and anything else)
    is an octet-stream attachment. Every answer forbids sniffing and active content."""
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            html = b"<script>alert(1)</script>"
            url = await upload(server, s, "evil.html", html, "text/html")
            status, h, body = await http_async(server, "GET", url)
            assert (status, body) == (200, html)
            assert h["content-type"] == "application/octet-stream"
            assert h["content-disposition"].startswith("attachment;")
            assert "evil.html" in h["content-disposition"]
            assert h["x-content-type-options"] == "nosniff"
            assert "default-src 'none'" in h["content-security-policy"]
            assert h["access-control-allow-origin"] == "*"
            assert "etag" in h and "last-modified" in h

            svg = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"
            url = await upload(server, s, "pic.svg", svg, "image/svg+xml")
            _, h, _ = await http_async(server, "GET", url)
            assert h["content-type"] == "application/octet-stream"

            url = await upload(server, s, "note.txt", b"hello", "text/plain")
            _, h, _ = await http_async(server, "GET", url)
            assert h["content-type"] == "text/plain"
            assert h["content-disposition"].startswith("inline;")
            assert h["x-content-type-options"] == "nosniff"
    run(scenario())


def test_cors_preflight(server):
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            put_url, _ = await new_slot(s, "c.png", 3, "image/png")
            status, h, _ = await http_async(server, "OPTIONS", put_url, headers={
                "Origin": "https://webclient.example",
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "content-type"})
            assert status in (200, 204)
            assert h["access-control-allow-origin"] == "*"
            methods = {m.strip() for m in h["access-control-allow-methods"].split(",")}
            assert {"GET", "HEAD", "PUT", "OPTIONS"} <= methods
            allowed = {x.strip().lower() for x in h["access-control-allow-headers"].split(",")}
            assert "content-type" in allowed
            # The PUT's own answer carries the header too (the browser checks it).
            status, h, _ = await http_async(server, "PUT", put_url, b"abc", {
                "Content-Type": "image/png", "Origin": "https://webclient.example"})
            assert status == 201
            assert h["access-control-allow-origin"] == "*"
    run(scenario())


# --------------------------------------------------------------------------
# refused slot requests (XEP-0363 §5)
# --------------------------------------------------------------------------

def test_refused_slot_requests(make_server):
    srv = upload_server(make_server, max_file_size=1000, quota_bytes=1500,
                        allowed_types=["image/*", "text/plain"])

    async def scenario():
        async with online(srv, "alice", PASSWORD) as s:
            # Too large: not-acceptable with <file-too-large><max-file-size/>.
            reply = await request_slot(s, "big.png", 1001, "image/png")
            assert reply["type"] == "error"
            assert error_condition(reply.xml) == "not-acceptable"
            assert reply.xml.find(q(NS_CLIENT, "error")).get("type") == "modify"
            too_large = error_child(reply, "file-too-large")
            assert too_large is not None
            assert too_large.find(q(NS, "max-file-size")).text == "1000"

            # A type outside the policy.
            reply = await request_slot(s, "x.sh", 10, "application/x-sh")
            assert error_condition(reply.xml) == "not-acceptable"
            assert error_child(reply, "file-too-large") is None
            # No type at all counts as application/octet-stream: refused here too.
            reply = await request_slot(s, "x.bin", 10)
            assert error_condition(reply.xml) == "not-acceptable"

            # Malformed requests.
            for attrs in ("filename='a.png'", "size='5'", "filename='a.png' size='-1'",
                          "filename='a.png' size='many'"):
                reply = await s.iq_xml(
                    f"<iq type='get' to='{SERVICE}'><request xmlns='{NS}' {attrs}/></iq>")
                assert error_condition(reply.xml) == "bad-request", attrs

            # Quota: open slots count, so 800 + 800 > 1500.
            put_url, _ = await new_slot(s, "a.png", 800, "image/png")
            reply = await request_slot(s, "b.png", 800, "image/png")
            assert error_condition(reply.xml) == "resource-constraint"
            assert reply.xml.find(q(NS_CLIENT, "error")).get("type") == "wait"
            # A stored file counts as well.
            assert await put(srv, put_url, b"a" * 800, "image/png") == 201
            reply = await request_slot(s, "b.png", 701, "image/png")
            assert error_condition(reply.xml) == "resource-constraint"
            # The retry hint points at when the oldest file expires (XEP-0082 UTC).
            retry = error_child(reply, "retry")
            assert retry is not None and retry.get("stamp", "").endswith("Z")
            # What fits is granted; quotas are per user.
            await new_slot(s, "c.png", 700, "image/png")
        async with online(srv, "bob", PASSWORD) as b:
            await new_slot(b, "d.png", 1000, "image/png")
        assert len(stored(srv)) == 1   # only the one completed upload
    run(scenario())


# --------------------------------------------------------------------------
# refused PUTs: right status, nothing on disk
# --------------------------------------------------------------------------

def test_refused_puts_leave_nothing_behind(make_server):
    srv = upload_server(make_server)
    data = b"0123456789"

    def tamper(url: str, part: str) -> str:
        """Flip one character of the slot segment or of the token."""
        parts = urllib.parse.urlsplit(url)
        if part == "token":
            token = parts.query.split("=", 1)[1]
            flipped = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
            return urllib.parse.urlunsplit(parts._replace(query=f"token={flipped}"))
        segs = parts.path.split("/")
        seg = segs[2]
        segs[2] = seg[:-3] + ("A" if seg[-3] != "A" else "B") + seg[-2:]
        return urllib.parse.urlunsplit(parts._replace(path="/".join(segs)))

    async def scenario():
        async with online(srv, "alice", PASSWORD) as s:
            put_url, get_url = await new_slot(s, "f.png", len(data), "image/png")
            no_token = put_url.split("?", 1)[0]

            # Not the owner's URL: no token, a forged token, a forged or unknown slot.
            assert await put(srv, no_token, data, "image/png") == 403
            assert await put(srv, tamper(put_url, "token"), data, "image/png") == 403
            assert await put(srv, tamper(put_url, "slot"), data, "image/png") == 404
            unknown = put_url.replace(urllib.parse.urlsplit(put_url).path.split("/")[2],
                                      secrets.token_urlsafe(33)[:44])
            assert await put(srv, unknown, data, "image/png") == 404
            # The file name is part of the URL.
            assert await put(srv, put_url.replace("/f.png", "/g.png"), data, "image/png") == 404
            # Wrong size (declared by Content-Length): larger 413, smaller 400.
            assert await put(srv, put_url, data + b"x", "image/png") == 413
            assert await put(srv, put_url, data[:-1], "image/png") == 400
            # A lying Content-Length is refused before the body is read.
            assert await put(srv, put_url, data, "image/png", length=10_000) == 413
            # Chunked (no Content-Length): cut off once the body passes the declared size.
            status, _, _ = await http_async(srv, "PUT", put_url, headers={
                "Content-Type": "image/png"}, chunks=[data, b"more bytes"])
            assert status == 413
            # Chunked and short.
            status, _, _ = await http_async(srv, "PUT", put_url, headers={
                "Content-Type": "image/png"}, chunks=[data[:4]])
            assert status == 400
            # Wrong or missing Content-Type.
            assert await put(srv, put_url, data, "text/plain") == 415
            assert await put(srv, put_url, data, None) == 415
            assert stored(srv) == []
            status, _, _ = await http_async(srv, "GET", get_url)
            assert status == 404

            # The slot survived the failures; the owner's PUT works once.
            assert await put(srv, put_url, data, "image/png") == 201
            assert await put(srv, put_url, data, "image/png") == 409
            status, _, body = await http_async(srv, "GET", get_url)
            assert (status, body) == (200, data)
            assert len(stored(srv)) == 1
            # The GET URL cannot be used to upload.
            assert await put(srv, get_url, data, "image/png") == 403
    run(scenario())


def test_expired_slot_is_gone(make_server):
    srv = upload_server(make_server, slot_ttl_secs=1)

    async def scenario():
        async with online(srv, "alice", PASSWORD) as s:
            put_url, get_url = await new_slot(s, "late.txt", 4, "text/plain")
            await asyncio.sleep(2.1)   # past the slot's one-second validity
            assert await put(srv, put_url, b"late", "text/plain") == 410
            assert stored(srv) == []
            status, _, _ = await http_async(srv, "GET", get_url)
            assert status == 404
    run(scenario())


# --------------------------------------------------------------------------
# retention and account deletion
# --------------------------------------------------------------------------

def test_expiry_removes_old_files(make_server):
    """Upload with retention off, then restart with a retention of under a second: the
    expiry task deletes the file and its URL answers 404."""
    srv = upload_server(make_server, expire_days=0, expiry_interval_secs=1)
    data = b"short-lived"

    async def before():
        async with online(srv, "alice", PASSWORD) as s:
            url = await upload(srv, s, "old.txt", data, "text/plain")
            status, _, body = await http_async(srv, "GET", url)
            assert (status, body) == (200, data)
            return url
    url = run(before())
    assert len(stored(srv)) == 1
    time.sleep(1.1)   # the file is now older than the retention set below
    srv.options.env["STARLING__UPLOAD__EXPIRE_DAYS"] = "0.00001"   # 0.864 s
    srv.restart()
    assert wait_until(lambda: stored(srv) == []), stored(srv)
    status, _, _ = http_call(srv, "GET", url)
    assert status == 404


def test_deleted_account_loses_its_files(make_server):
    srv = upload_server(make_server, expiry_interval_secs=1)

    async def scenario():
        async with online(srv, "bob", PASSWORD) as b:
            kept = await upload(srv, b, "bob.txt", b"bob's", "text/plain")
        async with online(srv, "alice", PASSWORD) as s:
            url = await upload(srv, s, "mine.txt", b"alice's", "text/plain")
            await new_slot(s, "open.txt", 3, "text/plain")
        return url, kept
    url, kept = run(scenario())
    assert len(stored(srv)) == 2
    srv.deluser("alice")
    assert wait_until(lambda: len(stored(srv)) == 1), stored(srv)
    assert http_call(srv, "GET", url)[0] == 404
    assert http_call(srv, "GET", kept)[:3:2] == (200, b"bob's")
