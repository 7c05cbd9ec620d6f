"""XEP-0198 Stream Management: acks, resumption, takeover, timeout to offline storage.

slixmpp's xep_0198 plugin drives the client side where a real client can; byte-level
streams (rawxmpp) are used where a test must control 'h' exactly or misbehave.
"""

import asyncio
import collections
import xml.etree.ElementTree as ET

import pytest

from conftest import PASSWORD
from rawxmpp import NS_BIND, NS_STREAM, RawStream, q
from xmpp_client import NS_CLIENT, NS_DELAY, Session, online, run

NS_SM = "urn:xmpp:sm:3"
NS_CSI = "urn:xmpp:csi:0"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"


# --------------------------------------------------------------------------
# A byte-level stream-management client
# --------------------------------------------------------------------------

class RawSm:
    """A raw stream that logs in (up to the post-auth features) and speaks SM by hand.
    Server `<r/>` requests are answered with the 'h' this client chooses to report."""

    def __init__(self, server, user: str):
        self.server = server
        self.user = user
        self.stream = RawStream(server.c2s_port)
        self.handled = 0          # stanzas received since <enabled/> (what we would ack)
        self.auto_ack = True      # answer <r/> with `handled`
        self.features = None

    def authenticate(self) -> ET.Element:
        s = self.stream
        features = s.open()
        if features.find(q("urn:ietf:params:xml:ns:xmpp-tls", "starttls")) is not None:
            s.starttls()
        s.auth_plain(self.user, PASSWORD)
        s._reset_parser()
        self.features = s.open()
        return self.features

    def login(self, resource: str) -> str:
        self.authenticate()
        return self.stream.bind(resource)

    def send(self, data: str) -> None:
        self.stream.send(data)

    def read(self, timeout: float | None = None) -> ET.Element:
        """The next element that is not a server <r/> (which is answered, if auto_ack)."""
        while True:
            el = self.stream.read_element(timeout)
            if el.tag == q(NS_SM, "r"):
                if self.auto_ack:
                    self.send(f"<a xmlns='{NS_SM}' h='{self.handled}'/>")
                continue
            if el.tag in (q(NS_CLIENT, "message"), q(NS_CLIENT, "presence"), q(NS_CLIENT, "iq")):
                self.handled += 1
            return el

    def enable(self, resume: bool = True) -> ET.Element:
        self.send(f"<enable xmlns='{NS_SM}'" + (" resume='true'" if resume else "") + "/>")
        enabled = self.read()
        assert enabled.tag == q(NS_SM, "enabled"), ET.tostring(enabled)
        self.handled = 0
        return enabled

    def resume(self, previd: str, h: int) -> ET.Element:
        self.authenticate()
        self.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>")
        return self.read()

    def kill(self) -> None:
        """Drop the TCP connection without </stream:stream>."""
        self.stream.close()


def body_of(el: ET.Element) -> str | None:
    b = el.find(q(NS_CLIENT, "body"))
    return None if b is None else b.text


def failed_condition(el: ET.Element) -> str | None:
    assert el.tag == q(NS_SM, "failed"), ET.tostring(el)
    for child in el:
        if child.tag.startswith("{" + NS_STANZAS + "}"):
            return child.tag.split("}", 1)[1]
    return None


def message(to: str, body: str, from_: str | None = None) -> str:
    return f"<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"


# --------------------------------------------------------------------------
# A slixmpp client with stream management
# --------------------------------------------------------------------------

class SmSession(Session):
    """slixmpp with xep_0198 (resumption on): `drop()` kills the socket, `resume()` reconnects."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        x = self.xmpp
        x.register_plugin("xep_0198")
        x.register_plugin("xep_0352")
        self._events = {name: asyncio.Event() for name in
                         ("sm_enabled", "session_resumed", "sm_failed", "disconnected")}
        for name, ev in self._events.items():
            x.add_event_handler(name, lambda _e, ev=ev: ev.set())

    async def wait(self, name: str, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._events[name].wait(), timeout)

    @property
    def sm(self):
        return self.xmpp["xep_0198"]

    async def drop(self) -> None:
        self._events["disconnected"].clear()
        self.xmpp.abort()
        await self.wait("disconnected")

    async def resume(self) -> None:
        for name in ("session_resumed", "sm_failed"):
            self._events[name].clear()
        self.xmpp.connect("127.0.0.1", self.port)
        done = [asyncio.ensure_future(self._events[n].wait())
                for n in ("session_resumed", "sm_failed")]
        try:
            await asyncio.wait_for(asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED), 10)
        finally:
            for f in done:
                f.cancel()
        assert self._events["session_resumed"].is_set(), "resumption failed"


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------

def test_sm_and_csi_are_stream_features_after_auth(server, accounts):
    (u,) = accounts(server, "smf")
    c = RawSm(server, u)
    try:
        before = c.stream.open()
        assert before.find(q(NS_SM, "sm")) is None, "SM offered before authentication"
        c.stream.close()
        c = RawSm(server, u)
        features = c.authenticate()
        assert features.find(q(NS_SM, "sm")) is not None
        assert features.find(q(NS_CSI, "csi")) is not None
    finally:
        c.kill()


def test_enable_before_bind_fails_then_bind_works(server, accounts):
    (u,) = accounts(server, "smb")
    c = RawSm(server, u)
    try:
        c.authenticate()
        c.send(f"<enable xmlns='{NS_SM}'/>")
        assert failed_condition(c.read()) == "unexpected-request"
        assert c.stream.bind("r").endswith("/r")
    finally:
        c.kill()


def test_acks_both_directions(server, accounts):
    (u,) = accounts(server, "sma")
    c = RawSm(server, u)
    try:
        c.login("r")
        enabled = c.enable(resume=True)
        assert enabled.get("resume") in ("true", "1")
        assert len(enabled.get("id", "")) >= 16
        assert int(enabled.get("max")) == 300
        # Client -> server: two stanzas handled, then <r/> -> <a h='2'/>. Server -> client:
        # it requests an ack (<r/>) once idle after sending stanzas (the pong, our presence).
        c.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
               f"<presence/><r xmlns='{NS_SM}'/>")
        seen, ack = [], None
        while True:
            el = c.stream.read_element()
            seen.append(el)
            if el.tag == q(NS_SM, "a"):
                ack = el
            stanzas = [e for e in seen if e.tag.startswith("{jabber:client}")]
            if ack is not None and len(stanzas) >= 2 and el.tag == q(NS_SM, "r"):
                break
        assert ack.get("h") == "2", ET.tostring(ack)
        assert len(stanzas) == 2, [ET.tostring(e) for e in seen]
        c.send(f"<a xmlns='{NS_SM}' h='{len(stanzas)}'/>")
        # A stale ack is harmless; an ack beyond what was sent is a stream error.
        c.send(f"<a xmlns='{NS_SM}' h='1'/>")
        c.send(f"<a xmlns='{NS_SM}' h='{len(stanzas) + 5}'/>")
        error = c.stream.expect(q(NS_STREAM, "error"))
        assert error.find(q(NS_STREAMS_ERR, "undefined-condition")) is not None
        too_high = error.find(q(NS_SM, "handled-count-too-high"))
        assert too_high is not None, ET.tostring(error)
        assert too_high.get("h") == str(len(stanzas) + 5)
        assert too_high.get("send-count") == str(len(stanzas))
    finally:
        c.kill()


def test_resume_with_unknown_id_fails_then_bind_works(server, accounts):
    (u,) = accounts(server, "smu")
    c = RawSm(server, u)
    try:
        reply = c.resume("no-such-session", 0)
        assert failed_condition(reply) == "item-not-found"
        assert c.stream.bind("again").endswith("/again")
    finally:
        c.kill()


def test_another_user_cannot_resume(server, accounts):
    owner, thief = accounts(server, "smo", "smt")
    a = RawSm(server, owner)
    a.login("phone")
    sm_id = a.enable().get("id")
    a.kill()
    t = RawSm(server, thief)
    try:
        assert failed_condition(t.resume(sm_id, 0)) == "item-not-found"
    finally:
        t.kill()
    # The id was valid: its owner can resume it.
    a2 = RawSm(server, owner)
    try:
        assert a2.resume(sm_id, 0).tag == q(NS_SM, "resumed")
    finally:
        a2.kill()


def test_resume_resends_unacked_then_queued(server, accounts):
    """§5: after <resumed/>, the stanzas after the client's h, then what queued meanwhile."""
    sender, receiver = accounts(server, "sms", "smr")
    to = f"{receiver}@localhost/phone"
    r = RawSm(server, receiver)
    r.login("phone")
    sm_id = r.enable().get("id")
    r.auto_ack = False
    s = RawSm(server, sender)
    try:
        s.login("desk")
        for b in ("m1", "m2"):
            s.send(message(to, b))
        got = []
        while len(got) < 2:
            el = r.read()
            if el.tag == q(NS_CLIENT, "message"):
                got.append(body_of(el))
        assert got == ["m1", "m2"]
        r.kill()     # acknowledged nothing; pretend only m1 was handled
        for b in ("m3", "m4"):
            s.send(message(to, b))
        r2 = RawSm(server, receiver)
        try:
            resumed = r2.resume(sm_id, 1)
            assert resumed.tag == q(NS_SM, "resumed"), ET.tostring(resumed)
            assert resumed.get("previd") == sm_id
            assert resumed.get("h") == "0"   # the receiver never sent a stanza
            bodies = []
            while len(bodies) < 3:
                el = r2.read()
                if el.tag == q(NS_CLIENT, "message"):
                    bodies.append(body_of(el))
            assert bodies == ["m2", "m3", "m4"]
            # The stream goes on: a ping is answered on the resumed stream.
            r2.send("<iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            while True:
                el = r2.read()
                if el.tag == q(NS_CLIENT, "iq"):
                    assert el.get("id") == "after" and el.get("type") == "result"
                    break
        finally:
            r2.kill()
    finally:
        s.kill()


def test_resume_takes_over_a_session_that_is_still_open(server, accounts):
    sender, receiver = accounts(server, "sto", "str")
    to = f"{receiver}@localhost/phone"
    old = RawSm(server, receiver)
    old.login("phone")
    sm_id = old.enable().get("id")
    new = RawSm(server, receiver)
    s = RawSm(server, sender)
    try:
        assert new.resume(sm_id, 0).tag == q(NS_SM, "resumed")
        assert old.stream.expect_stream_error() == "conflict"
        s.login("desk")
        s.send(message(to, "after takeover"))
        while True:
            el = new.read()
            if el.tag == q(NS_CLIENT, "message"):
                assert body_of(el) == "after takeover"
                break
    finally:
        for c in (old, new, s):
            c.kill()


def test_resumption_timeout_moves_unacked_messages_offline(make_server):
    srv = make_server(accounts={"rcpt": PASSWORD, "sndr": PASSWORD},
                      extra_sections={"sm": {"resume_timeout_secs": 2}})

    async def scenario():
        # Another resource of the recipient sees the dropped one go unavailable on expiry.
        async with online(srv, "rcpt", PASSWORD, resource="watch") as watch, \
                online(srv, "sndr", PASSWORD, resource="desk") as sender:
            watch.send_presence(ppriority=-1)   # never a target for bare-JID messages
            r = RawSm(srv, "rcpt")
            r.login("phone")
            enabled = r.enable()
            assert enabled.get("max") == "2"
            r.send("<presence/>")
            await watch.next_presence(lambda p: p.xml.get("from") == "rcpt@localhost/phone")
            r.kill()
            for n in range(3):
                sender.send_message("rcpt@localhost/phone", f"while away {n}")
            await watch.next_presence(lambda p: p.xml.get("from") == "rcpt@localhost/phone"
                                      and p["type"] == "unavailable", timeout=20)
        # The expired session cannot be resumed any more.
        late = RawSm(srv, "rcpt")
        try:
            assert failed_condition(late.resume(enabled.get("id"), 0)) == "item-not-found"
        finally:
            late.kill()
        async with online(srv, "rcpt", PASSWORD, resource="back") as back:
            back.send_presence()
            for n in range(3):
                m = await back.next_message(lambda m, n=n: m["body"] == f"while away {n}")
                assert m.xml.find(q(NS_DELAY, "delay")) is not None
                assert m.xml.get("from") == "sndr@localhost/desk"
    run(scenario())


def test_slixmpp_resumes_after_abrupt_drops_and_counts_every_message_once(server, accounts):
    """The issue's acceptance test: 100 TCP drops while messages flow; each arrives once."""
    sender_name, receiver_name = accounts(server, "sls", "slr")
    drops = 100

    async def scenario():
        receiver = SmSession(server, receiver_name, PASSWORD, resource="phone")
        await receiver.connect()
        await receiver.wait("sm_enabled")
        assert receiver.sm.sm_id
        async with online(server, sender_name, PASSWORD, resource="desk") as sender:
            to = f"{receiver_name}@localhost/phone"
            sent = 0
            stop = asyncio.Event()

            async def pump():
                nonlocal sent
                while not stop.is_set():
                    # Stay within the server's unacked-queue bound (sm.max_unacked, 500): a
                    # receiver slowed down by a busy machine must not be cut off as too slow,
                    # which is the right policy but not what this test is about.
                    while sent - len(receiver.arrivals) > 200 and not stop.is_set():
                        await asyncio.sleep(0.002)
                    for _ in range(5):
                        sender.send_message(to, f"n{sent}")
                        sent += 1
                    await asyncio.sleep(0.002)

            task = asyncio.ensure_future(pump())
            try:
                for _ in range(drops):
                    # Drop the moment traffic arrives, so more is in flight towards us.
                    seen = len(receiver.arrivals)
                    while len(receiver.arrivals) == seen:
                        await asyncio.sleep(0.001)
                    await receiver.drop()
                    await receiver.resume()
            finally:
                stop.set()
                await task
            expected = {f"n{i}" for i in range(sent)}
            counts = collections.Counter()
            while not expected <= set(counts):
                m = await receiver.next_message(timeout=15)
                counts[m["body"]] += 1
            # Anything re-sent twice would have arrived before the last new message; a ping
            # round trip on the sender's side settles what is still in flight.
            await sender.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            for m in receiver.messages.drain():
                counts[m["body"]] += 1
            dup = {k: v for k, v in counts.items() if v != 1}
            assert not dup, f"duplicated: {dup}"
            assert set(counts) == expected
            assert sent > drops
        await receiver.disconnect()
        resumed = [line for line in server.log_text(0).splitlines()
                   if "session resumed" in line and f"{receiver_name}@" in line]
        assert len(resumed) == drops, "every reconnection must have been a resumption"
        resent = [int(line.rsplit("resent=", 1)[-1].split()[0]) for line in resumed]
        # The drops must have hit stanzas in flight (lost with the connection, re-sent on
        # resumption), or this test would only have exercised queueing while detached.
        assert sum(resent) > 0, "no resumption had anything to re-send"

    run(scenario(), timeout=240)


def test_unacked_messages_of_a_non_resumable_session_go_offline(server, accounts):
    """§4: when an SM session ends, what the client did not acknowledge is not lost; what it
    acknowledged is not delivered twice."""
    sender, receiver = accounts(server, "sns", "snr")
    to = f"{receiver}@localhost/phone"
    watch = RawSm(server, receiver)   # sees the phone go unavailable once it is cleaned up
    watch.login("watch")
    watch.send("<presence><priority>-1</priority></presence>")
    r = RawSm(server, receiver)
    r.login("phone")
    r.enable(resume=False)
    r.auto_ack = False
    s = RawSm(server, sender)

    def next_el(c, pred):
        while True:
            el = c.read()
            if pred(el):
                return el

    def is_msg(el):
        return el.tag == q(NS_CLIENT, "message")

    def phone_presence(kind):
        return lambda el: (el.tag == q(NS_CLIENT, "presence") and el.get("type") == kind
                           and el.get("from") == to)

    try:
        r.send("<presence/>")
        next_el(watch, phone_presence(None))
        s.login("desk")
        s.send(message(to, "acked"))
        assert body_of(next_el(r, is_msg)) == "acked"
        r.send(f"<a xmlns='{NS_SM}' h='{r.handled}'/>")
        s.send(message(to, "not acked"))
        assert body_of(next_el(r, is_msg)) == "not acked"
        r.kill()
        next_el(watch, phone_presence("unavailable"))
        # A plain login with initial presence gets exactly the unacknowledged one.
        r2 = RawSm(server, receiver)
        try:
            r2.login("laptop")
            r2.send("<presence/>")
            r2.send("<iq type='get' id='settle' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            bodies = []
            while True:
                el = r2.read()
                if is_msg(el):
                    assert el.find(q(NS_DELAY, "delay")) is not None
                    bodies.append(body_of(el))
                if el.tag == q(NS_CLIENT, "iq") and el.get("id") == "settle":
                    break
            assert bodies == ["not acked"]
        finally:
            r2.kill()
    finally:
        for c in (s, watch):
            c.kill()
