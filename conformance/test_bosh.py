"""XEP-0124 BOSH and XEP-0206 XMPP over BOSH at /http-bind, with a raw BOSH client
(bosh_client.py) talking to slixmpp clients over TCP."""

import asyncio
import time
import xml.etree.ElementTree as ET

import pytest

from bosh_client import (NS_CLIENT, NS_HTTPBIND, NS_SASL, NS_STREAM, BoshClient, q, xbosh)
from conftest import PASSWORD
from xmpp_client import online, run

MAX_WAIT = 3

BOSH_SERVER = dict(extra_sections={
    # Plain HTTP from loopback counts as confidential (a TLS proxy in front), so PLAIN works.
    "http": {"trust_plain_http": True},
    "bosh": {"max_wait_secs": MAX_WAIT, "max_hold": 2},
})


@pytest.fixture(scope="module")
def bosh_server(module_servers):
    return module_servers(**BOSH_SERVER)


def is_message(text):
    def match(p):
        b = p.find(q(NS_CLIENT, "body"))
        return p.tag == q(NS_CLIENT, "message") and b is not None and b.text == text
    return match


def body_is(text):
    return lambda m: m["body"] == text


def unavailable_from(jid):
    return lambda p: p["type"] == "unavailable" and str(p["from"]) == jid


def message(to, text):
    return f"<message xmlns='{NS_CLIENT}' to='{to}' type='chat'><body>{text}</body></message>"


def test_session_creation_response(bosh_server):
    async def scenario():
        c = BoshClient(bosh_server)
        r = await c.create(wait=60, hold=1)
        assert r.status == 200
        assert r.headers["content-type"] == "text/xml; charset=utf-8"
        assert r.headers["access-control-allow-origin"] == "*"
        b = r.body
        assert b.tag == q(NS_HTTPBIND, "body") and b.get("type") is None, r.text
        assert len(b.get("sid", "")) >= 16
        assert b.get("wait") == str(MAX_WAIT), "wait must be capped by bosh.max_wait_secs"
        assert b.get("hold") == "1" and b.get("requests") == "2"
        assert b.get("inactivity") == "60" and b.get("polling") and b.get("maxpause")
        assert b.get("ver") == "1.11" and b.get("from") == "localhost"
        assert b.get(xbosh("version")) == "1.0" and b.get(xbosh("restartlogic")) == "true"
        assert b.get("authid")
        features = b.find(q(NS_STREAM, "features"))
        assert features is not None, "XEP-0206 §5: features in the creation response"
        assert features.find(q(NS_SASL, "mechanisms")) is not None
        # An older client version is echoed (the lower of both).
        c2 = BoshClient(bosh_server)
        assert (await c2.create(ver="1.6")).body.get("ver") == "1.6"
        # §11: a polling session (hold 0) may make one request at a time and gets more
        # inactivity than the polling interval.
        b = (await BoshClient(bosh_server).create(hold=0)).body
        assert b.get("hold") == "0" and b.get("requests") == "1", ET.tostring(b)
        assert int(b.get("inactivity")) > 60, "bosh.max_inactivity_secs plus the polling interval"
        # §7.1 'content': the Content-Type of every response in the session.
        c3 = BoshClient(bosh_server)
        r = await c3.request(to="localhost", wait=1, hold=1, ver="1.11",
                             content="text/plain; charset=utf-8")
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        c3.sid = r.body.get("sid")
        assert (await c3.request()).headers["content-type"] == "text/plain; charset=utf-8"
    run(scenario())


def test_unknown_host_and_bad_requests(bosh_server):
    async def scenario():
        c = BoshClient(bosh_server)
        r = await c.create(to="elsewhere.example")
        assert r.status == 200 and r.terminated and r.condition == "host-unknown", r.text
        r = await c.post("<body rid='1' xmlns='urn:wrong'/>")
        assert r.status == 200 and r.terminated and r.condition == "bad-request", r.text
        r = await c.post(f"<body rid='1' xmlns='{NS_HTTPBIND}'><!-- no --></body>")
        assert r.status == 200 and r.condition == "bad-request"
        big = "x" * (300 * 1024 * 4)
        r = await c.post(f"<body rid='1' xmlns='{NS_HTTPBIND}'><m>{big}</m></body>")
        assert r.status == 413
    run(scenario())


def test_bad_sid_is_item_not_found(bosh_server):
    async def scenario():
        c = BoshClient(bosh_server)
        c.sid = "no-such-session"
        r = await c.request()
        assert r.status == 200, "§17.2: binding errors are HTTP 200 for non-legacy clients"
        assert r.terminated and r.condition == "item-not-found", r.text
    run(scenario())


def test_cors_preflight_and_get(bosh_server):
    c = BoshClient(bosh_server)
    r = c.http("OPTIONS", headers={"Origin": "https://web.example",
                                   "Access-Control-Request-Method": "POST"})
    assert r.status == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "content-type" in r.headers["access-control-allow-headers"].lower()
    r = c.http("GET")
    assert r.status == 200 and "BOSH" in r.text


def test_login_and_messages_both_ways(bosh_server, accounts):
    a_name, b_name = accounts(bosh_server, "boa", "bob")

    async def scenario():
        async with online(bosh_server, b_name, PASSWORD, resource="tcp") as b:
            c = BoshClient(bosh_server)
            jid = await c.login(a_name, PASSWORD, resource="web")
            assert jid == f"{a_name}@localhost/web"
            await c.request(f"<presence xmlns='{NS_CLIENT}'/>")
            # BOSH -> TCP
            r = await c.request(message(f"{b_name}@localhost/tcp", "from bosh"))
            assert r.status == 200 and not r.terminated
            got = await b.next_message(body_is("from bosh"))
            assert str(got["from"]) == jid
            # TCP -> BOSH, arriving on a request the server is holding
            held = asyncio.create_task(c.until(is_message("from tcp")))
            await asyncio.sleep(0.3)
            b.send_message(jid, "from tcp")
            m = await held
            assert m.get("from") == f"{b_name}@localhost/tcp"
    run(scenario())


def test_long_poll_returns_empty_after_wait(bosh_server, accounts):
    (a_name,) = accounts(bosh_server, "bow")

    async def scenario():
        c = BoshClient(bosh_server)
        await c.login(a_name, PASSWORD)
        # Drain anything pending, then one idle poll.
        started = time.monotonic()
        r = await c.request()
        while r.payloads:
            started = time.monotonic()
            r = await c.request()
        elapsed = time.monotonic() - started
        assert r.status == 200 and not r.terminated and not r.payloads, r.text
        assert elapsed >= MAX_WAIT - 0.5, f"an idle request came back after {elapsed:.1f}s"
    run(scenario())


def test_out_of_order_rids_are_reordered(bosh_server, accounts):
    a_name, b_name = accounts(bosh_server, "boo", "bor")

    async def scenario():
        async with online(bosh_server, b_name, PASSWORD, resource="tcp") as b:
            c = BoshClient(bosh_server)
            await c.login(a_name, PASSWORD)
            to = f"{b_name}@localhost/tcp"
            first, second = c.next_rid(), c.next_rid()
            later = asyncio.create_task(c.post(c.body(message(to, "second"), rid=second)))
            await asyncio.sleep(0.5)   # the later rid arrives first
            assert not later.done(), "a request after a gap must wait for the gap"
            r1 = await c.post(c.body(message(to, "first"), rid=first))
            r2 = await later
            assert r1.status == 200 and r2.status == 200
            assert not r1.terminated and not r2.terminated, (r1.text, r2.text)
            m1 = await b.next_message()
            m2 = await b.next_message()
            assert [m1["body"], m2["body"]] == ["first", "second"]
    run(scenario())


def test_repeated_rid_gets_the_cached_response(bosh_server, accounts):
    a_name, b_name = accounts(bosh_server, "boc", "bod")

    async def scenario():
        async with online(bosh_server, b_name, PASSWORD, resource="tcp") as b:
            c = BoshClient(bosh_server)
            await c.login(a_name, PASSWORD)
            payload = (message(f"{b_name}@localhost/tcp", "once") +
                       f"<iq xmlns='{NS_CLIENT}' type='get' id='p1'>"
                       "<ping xmlns='urn:xmpp:ping'/></iq>")
            xml = c.body(payload)
            r1 = await c.post(xml)
            assert any(p.tag == q(NS_CLIENT, "iq") for p in r1.payloads), r1.text
            r2 = await c.post(xml)   # §14.3: a resent request gets the same answer
            assert r2.status == 200 and r2.text == r1.text
            await b.next_message(body_is("once"))
            assert await b.quiet("messages", body_is("once")) == [], "payload processed twice"
            # The session goes on.
            r = await c.request(f"<iq xmlns='{NS_CLIENT}' type='get' id='p2'>"
                                "<ping xmlns='urn:xmpp:ping'/></iq>")
            assert not r.terminated
    run(scenario())


def test_resent_held_request_replaces_the_first(bosh_server, accounts):
    """§14.3: a rid received again before it was answered: the first copy gets a
    recoverable error, the new one is held and gets the data."""
    a_name, b_name = accounts(bosh_server, "bha", "bhb")

    async def scenario():
        async with online(bosh_server, b_name, PASSWORD, resource="tcp") as b:
            c = BoshClient(bosh_server)
            jid = await c.login(a_name, PASSWORD)
            xml = c.body()
            first = asyncio.create_task(c.post(xml))
            await asyncio.sleep(0.3)
            second = asyncio.create_task(c.post(xml))
            r1 = await first
            assert r1.status == 200 and r1.body.get("type") == "error", r1.text
            b.send_message(jid, "to the second copy")
            r2 = await second
            assert any(is_message("to the second copy")(p) for p in r2.payloads), r2.text
    run(scenario())


def test_rid_beyond_window_terminates(bosh_server, accounts):
    (a_name,) = accounts(bosh_server, "bob")

    async def scenario():
        c = BoshClient(bosh_server)
        await c.login(a_name, PASSWORD)
        r = await c.post(c.body(rid=c.rid + 10))
        assert r.status == 200 and r.terminated and r.condition == "item-not-found", r.text
        r = await c.request()
        assert r.terminated and r.condition == "item-not-found", "the session must be gone"
        # §17.1: a legacy client (no 'ver') gets the HTTP code the condition supersedes.
        legacy = BoshClient(bosh_server)
        r = await legacy.create(ver=None)
        assert r.status == 200 and r.body.get("ver") is None, r.text
        r = await legacy.post(legacy.body(rid=legacy.rid + 10))
        assert r.status == 404 and r.condition == "item-not-found", (r.status, r.text)
    run(scenario())


def test_too_many_requests_is_policy_violation(bosh_server, accounts):
    (a_name,) = accounts(bosh_server, "bop")

    async def scenario():
        c = BoshClient(bosh_server)
        await c.login(a_name, PASSWORD, hold=2)
        assert c.creation.body.get("requests") == "3"
        r1, r2, _gap, r4, r5 = (c.next_rid() for _ in range(5))
        held = [asyncio.create_task(c.post(c.body(rid=r))) for r in (r1, r2)]
        await asyncio.sleep(0.3)
        early = asyncio.create_task(c.post(c.body(rid=r4)))
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in held + [early])
        # A fourth unanswered request when 'requests' is 3.
        r = await c.post(c.body(rid=r5))
        assert r.status == 200 and r.terminated and r.condition == "policy-violation", r.text
        for t in held + [early]:
            assert (await t).terminated
    run(scenario())


def test_client_terminate_ends_the_session(bosh_server, accounts):
    a_name, b_name = accounts(bosh_server, "bot", "bou")

    async def scenario():
        async with online(bosh_server, b_name, PASSWORD, resource="tcp") as b:
            c = BoshClient(bosh_server)
            jid = await c.login(a_name, PASSWORD)
            await c.request(f"<presence xmlns='{NS_CLIENT}' to='{b_name}@localhost/tcp'/>")
            await b.next_presence(lambda p: str(p["from"]) == jid and p["type"] != "unavailable")
            r = await c.request(message(f"{b_name}@localhost/tcp", "bye") +
                                f"<presence xmlns='{NS_CLIENT}' type='unavailable'/>",
                                type="terminate")
            assert r.status == 200 and r.terminated and r.condition is None, r.text
            # §13: the terminate request's payloads were processed first.
            await b.next_message(body_is("bye"))
            await b.next_presence(unavailable_from(jid))
            r = await c.request()
            assert r.terminated and r.condition == "item-not-found"
    run(scenario())


def test_stream_error_becomes_remote_stream_error(bosh_server, accounts):
    (a_name,) = accounts(bosh_server, "boe")

    async def scenario():
        c = BoshClient(bosh_server)
        await c.login(a_name, PASSWORD)
        # RFC 6120 §8.1.2.1: a forged 'from' is a stream error.
        r = await c.request(f"<message xmlns='{NS_CLIENT}' from='someone@localhost/x' "
                            "to='localhost'><body>x</body></message>")
        if not r.terminated:
            r = await c.request()
        assert r.terminated and r.condition == "remote-stream-error", r.text
        err = r.body.find(q(NS_STREAM, "error"))
        assert err is not None and err.find(
            "{urn:ietf:params:xml:ns:xmpp-streams}invalid-from") is not None, r.text
    run(scenario())


@pytest.fixture(scope="module")
def short_server(module_servers):
    """Short timeouts and a small queue, for the tests of what ends a session."""
    return module_servers(extra_sections={
        "http": {"trust_plain_http": True},
        "bosh": {"max_inactivity_secs": 2, "max_wait_secs": 1, "max_pause_secs": 30,
                 "max_queue_bytes": 8192},
    })


async def directed_presence(c, contact_session, contact_jid):
    await c.request(f"<presence xmlns='{NS_CLIENT}' to='{contact_jid}'/>")
    await contact_session.next_presence(
        lambda p: str(p["from"]) == c.jid and p["type"] != "unavailable")


def test_inactivity_ends_the_session(short_server, accounts):
    a_name, b_name = accounts(short_server, "boi", "boj")

    async def scenario():
        async with online(short_server, b_name, PASSWORD, resource="tcp") as b:
            c = BoshClient(short_server)
            jid = await c.login(a_name, PASSWORD)
            assert c.creation.body.get("inactivity") == "2"
            await directed_presence(c, b, f"{b_name}@localhost/tcp")
            # No more requests: the session is dropped like a lost TCP connection.
            await b.next_presence(unavailable_from(jid), timeout=15)
            r = await c.request()
            assert r.terminated and r.condition == "item-not-found", r.text
    run(scenario())


def test_pause_extends_inactivity(short_server, accounts):
    a_name, b_name = accounts(short_server, "bpa", "bpb")

    async def scenario():
        async with online(short_server, b_name, PASSWORD, resource="tcp") as b:
            c = BoshClient(short_server)
            jid = await c.login(a_name, PASSWORD)
            assert c.creation.body.get("maxpause") == "30"
            await directed_presence(c, b, f"{b_name}@localhost/tcp")
            r = await c.request(pause="8")
            assert r.status == 200 and not r.terminated and not r.payloads, r.text
            # Twice the inactivity limit without a request: the pause keeps the session.
            assert await b.quiet("presences", unavailable_from(jid), within=4.5) == []
            r = await c.request()
            assert not r.terminated, r.text
    run(scenario())


def test_slow_consumer_is_disconnected(short_server, accounts):
    a_name, b_name = accounts(short_server, "bqa", "bqb")

    async def scenario():
        async with online(short_server, b_name, PASSWORD, resource="tcp") as b:
            c = BoshClient(short_server)
            jid = await c.login(a_name, PASSWORD)
            await directed_presence(c, b, f"{b_name}@localhost/tcp")
            # The BOSH client asks for nothing while more than max_queue_bytes arrive.
            for i in range(12):
                b.send_message(jid, f"{i} " + "x" * 1000)
            await b.next_presence(unavailable_from(jid), timeout=15)
            r = await c.request()
            # The terminal condition waits for the client's next request.
            assert r.terminated and r.condition == "undefined-condition", r.text
    run(scenario())


def test_inactive_session_can_be_resumed(short_server, accounts):
    """XEP-0198: an inactive BOSH session is a dropped connection, resumable from a new one."""
    a_name, b_name = accounts(short_server, "bra", "brb")
    ns_sm = "urn:xmpp:sm:3"

    async def scenario():
        async with online(short_server, b_name, PASSWORD, resource="tcp") as b:
            c = BoshClient(short_server)
            jid = await c.login(a_name, PASSWORD)
            r = await c.request(f"<enable xmlns='{ns_sm}' resume='true'/>")
            enabled = [p for p in r.payloads if p.tag == q(ns_sm, "enabled")]
            if not enabled:
                enabled = [await c.until(lambda p: p.tag == q(ns_sm, "enabled"))]
            previd = enabled[0].get("id")
            assert previd and enabled[0].get("resume") in ("true", "1")
            await directed_presence(c, b, f"{b_name}@localhost/tcp")
            # Gone quiet: after the inactivity limit the stream is dropped, not closed.
            await asyncio.sleep(4)
            b.send_message(jid, "while you were away")
            assert await b.quiet("presences", unavailable_from(jid)) == [], \
                "a resumable session must wait for resumption, not go offline"
            c2 = BoshClient(short_server)
            await c2.authenticate(a_name, PASSWORD)
            r = await c2.request(f"<resume xmlns='{ns_sm}' previd='{previd}' h='0'/>")
            payloads = list(r.payloads)
            while not any(p.tag == q(ns_sm, "resumed") for p in payloads):
                payloads += (await c2.request()).payloads
            # XEP-0198 §5: what was never acknowledged is sent again on the resumed stream.
            if not any(is_message("while you were away")(p) for p in payloads):
                await c2.until(is_message("while you were away"))
    run(scenario())


def test_over_https_with_the_server_certificate(make_server, accounts):
    # Default settings: plain HTTP is not trusted, HTTPS is.
    server = make_server()
    a_name, b_name = accounts(server, "bos", "bot")
    cafile = str(server.data_dir / "tls" / "cert.pem")

    async def scenario():
        plain = BoshClient(server)
        r = await plain.create()
        mechs = [m.text for m in r.body.iter(q(NS_SASL, "mechanism"))]
        assert "PLAIN" not in mechs, "PLAIN offered on an unencrypted stream"
        async with online(server, b_name, PASSWORD, resource="tcp") as b:
            c = BoshClient(server, https=True, cafile=cafile)
            jid = await c.login(a_name, PASSWORD, wait=5)
            await c.request(message(f"{b_name}@localhost/tcp", "over https"))
            await b.next_message(body_is("over https"))
            held = asyncio.create_task(c.until(is_message("back")))
            await asyncio.sleep(0.3)
            b.send_message(jid, "back")
            await held
            # §21.1: the session is not reachable over plain HTTP.
            sneaky = BoshClient(server)
            sneaky.sid, sneaky.rid = c.sid, c.rid
            r = await sneaky.request()
            assert r.terminated and r.condition == "item-not-found"
    run(scenario())
