"""XEP-0114 external components: slixmpp's ComponentXMPP against `listen.component`.

Each test uses its own component domain (all configured on the module's server), so a
component still disconnecting from one test never meets the next one's.
"""

import asyncio
import hashlib
import xml.etree.ElementTree as ET

import pytest
from slixmpp import ComponentXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import PASSWORD
from rawxmpp import RawStream, StreamClosed
from starling_server import free_ports
from xmpp_client import TIMEOUT, error_condition, get_roster, online, q, run

NS_ACCEPT = "jabber:component:accept"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"

SECRETS = {f"{name}.localhost": f"secret-of-{name}"
           for name in ("echo", "sender", "iq", "conflict", "raw", "absent", "gw")}


@pytest.fixture(scope="module")
def cserver(module_servers):
    (port,) = free_ports(1)
    srv = module_servers(
        {u: PASSWORD for u in ("alice", "bob")},
        extra_sections={"listen": {"component": f"127.0.0.1:{port}"},
                        "component": {"secrets": SECRETS}},
    )
    srv.component_port = port
    return srv


class Echo(ComponentXMPP):
    """Answers chat/normal messages with "echo: <body>" (except echoes), and disco#info."""

    def __init__(self, jid: str, secret: str):
        super().__init__(jid, secret)
        self.register_plugin("xep_0030")
        self.whitespace_keepalive = False
        self.received: asyncio.Queue = asyncio.Queue()
        self.stream_errors: list[str] = []
        self.started = asyncio.Event()
        self.gone = asyncio.Event()
        self.add_event_handler("session_start", lambda _: self.started.set())
        self.add_event_handler("disconnected", lambda _: self.gone.set())
        self.add_event_handler("stream_error",
                               lambda e: self.stream_errors.append(e["condition"]))
        self.add_event_handler("message", self._on_message)
        self.presences: asyncio.Queue = asyncio.Queue()
        self.register_handler(Callback("test presence", MatchXPath(f"{{{NS_ACCEPT}}}presence"),
                                       self.presences.put_nowait))

    def _on_message(self, msg):
        self.received.put_nowait(msg)
        if msg["type"] in ("chat", "normal") and msg["body"] \
                and not msg["body"].startswith("echo: "):   # two echoes must not ping-pong
            msg.reply("echo: " + msg["body"]).send()


async def connect(server, domain: str, secret: str | None = None) -> Echo:
    comp = Echo(domain, SECRETS[domain] if secret is None else secret)
    comp.connect("127.0.0.1", server.component_port)
    return comp


async def online_component(server, domain: str) -> Echo:
    comp = await connect(server, domain)
    await asyncio.wait_for(comp.started.wait(), TIMEOUT)
    return comp


async def refused(comp: Echo) -> list[str]:
    """Wait until the server ends the stream; the stream error conditions it gave."""
    await asyncio.wait_for(comp.gone.wait(), TIMEOUT)
    assert not comp.started.is_set(), "the server accepted the handshake"
    return comp.stream_errors


async def close(comp: Echo) -> None:
    await comp.disconnect()


def test_local_user_message_is_echoed_by_component(cserver):
    async def scenario():
        comp = await online_component(cserver, "echo.localhost")
        try:
            async with online(cserver, "alice", PASSWORD) as alice:
                for to in ("echo.localhost", "bot@echo.localhost"):
                    alice.send_message(to, "hello " + to)
                    got = await asyncio.wait_for(comp.received.get(), TIMEOUT)
                    # The component sees the authenticated sender, not whatever the client wrote.
                    assert str(got["from"]) == str(alice.jid), got
                    assert got["body"] == "hello " + to
                    echo = await alice.next_message(lambda m: m["body"] == "echo: hello " + to)
                    assert str(echo["from"]) == to, echo
        finally:
            await close(comp)
    run(scenario())


def test_component_sends_to_local_user(cserver):
    async def scenario():
        comp = await online_component(cserver, "sender.localhost")
        try:
            async with online(cserver, "bob", PASSWORD) as bob:
                # Available (RFC 6121 §8.5.2.1: a message to the bare JID goes to available
                # resources); the ping's answer shows the presence was processed.
                bob.send_presence()
                pong = await bob.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
                assert pong["type"] == "result"
                comp.send_message(mto="bob@localhost", mbody="from the gateway",
                                  mfrom="someone@sender.localhost", mtype="chat")
                msg = await bob.next_message(lambda m: m["body"] == "from the gateway")
                assert str(msg["from"]) == "someone@sender.localhost"
        finally:
            await close(comp)
    run(scenario())


def test_iq_to_component_gets_its_answer(cserver):
    """A request reaches the component and its result reaches the client's full JID."""
    async def scenario():
        comp = await online_component(cserver, "iq.localhost")
        try:
            async with online(cserver, "alice", PASSWORD) as alice:
                reply = await alice.iq_xml(
                    f"<iq type='get' to='iq.localhost'><query xmlns='{NS_INFO}'/></iq>")
                assert reply["type"] == "result", reply
                assert str(reply["from"]) == "iq.localhost"
                assert reply.xml.find(q(NS_INFO, "query")) is not None
        finally:
            await close(comp)
    run(scenario())


def test_component_queries_the_server(cserver):
    """The server answers the component's IQ as it answers another server's (its reply
    comes back over the component's stream)."""
    async def scenario():
        comp = await online_component(cserver, "iq.localhost")
        try:
            info = await comp["xep_0030"].get_info(jid="localhost", ifrom="bot@iq.localhost",
                                                  local=False, timeout=TIMEOUT)
            assert info["type"] == "result", info
            assert str(info["to"]) == "bot@iq.localhost"
            assert "urn:xmpp:ping" in info["disco_info"]["features"]
        finally:
            await close(comp)
    run(scenario())


def test_component_message_to_offline_user_is_stored(cserver, accounts):
    """RFC 6121 recipient rules apply to a component's messages: offline storage."""
    (carol,) = accounts(cserver, "carol")

    async def scenario():
        comp = await online_component(cserver, "sender.localhost")
        try:
            comp.send_message(mto=f"{carol}@localhost", mbody="while you were away",
                              mfrom="news@sender.localhost", mtype="chat")
            # The component's stream is processed in order: once the server has answered
            # this IQ, the message before it has been handled.
            await comp["xep_0030"].get_info(jid="localhost", ifrom="sender.localhost",
                                            local=False, timeout=TIMEOUT)
        finally:
            await close(comp)
        async with online(cserver, carol, PASSWORD) as s:
            s.send_presence()
            msg = await s.next_message(lambda m: m["body"] == "while you were away")
            assert str(msg["from"]) == "news@sender.localhost"
    run(scenario())


def test_gateway_contact_subscription(cserver, accounts):
    """A gateway's contacts in a local roster (RFC 6121 §3): the subscription request
    reaches the component, its approval updates the user's roster, and its presence
    reaches the user."""
    (dave,) = accounts(cserver, "dave")

    async def next_presence(comp, pred):
        while True:
            p = await asyncio.wait_for(comp.presences.get(), TIMEOUT)
            if pred(p):
                return p

    async def scenario():
        comp = await online_component(cserver, "gw.localhost")
        try:
            async with online(cserver, dave, PASSWORD) as user:
                await get_roster(user)   # roster pushes go to resources that requested it
                user.send_presence()
                user.send_presence(pto="contact@gw.localhost", ptype="subscribe")
                sub = await next_presence(comp, lambda p: p["type"] == "subscribe")
                assert str(sub["from"]) == f"{dave}@localhost", sub
                assert str(sub["to"]) == "contact@gw.localhost"
                comp.send_presence(pto=f"{dave}@localhost", pfrom="contact@gw.localhost",
                                   ptype="subscribed")
                push = await user.next_roster_push(
                    lambda iq: any(i.get("jid") == "contact@gw.localhost"
                                   and i.get("subscription") == "to"
                                   for i in iq.xml.iter(q("jabber:iq:roster", "item"))))
                assert push is not None
                comp.send_presence(pto=f"{dave}@localhost", pfrom="contact@gw.localhost/gw",
                                   pstatus="bridged")
                p = await user.next_presence(lambda p: str(p["from"]) == "contact@gw.localhost/gw")
                assert p["status"] == "bridged"
        finally:
            await close(comp)
    run(scenario())


def test_component_to_component_from_a_bare_domain(cserver):
    """A component's domain as the sender (no resource), as a remote server's would be:
    another component receives it and its echo comes back."""
    async def scenario():
        echo = await online_component(cserver, "echo.localhost")
        sender = await online_component(cserver, "sender.localhost")
        try:
            sender.send_message(mto="echo.localhost", mbody="ping", mfrom="sender.localhost",
                                mtype="chat")
            got = await asyncio.wait_for(echo.received.get(), TIMEOUT)
            assert str(got["from"]) == "sender.localhost" and got["body"] == "ping"
            while True:
                back = await asyncio.wait_for(sender.received.get(), TIMEOUT)
                if back["body"] == "echo: ping":
                    break
            assert str(back["from"]) == "echo.localhost"
        finally:
            await close(sender)
            await close(echo)
    run(scenario())


def test_bad_secret_is_not_authorized(cserver):
    async def scenario():
        comp = await connect(cserver, "echo.localhost", secret="wrong")
        assert await refused(comp) == ["not-authorized"]
    run(scenario())


def test_unconfigured_domain_is_host_unknown(cserver):
    async def scenario():
        comp = Echo("unknown.localhost", "whatever")
        comp.connect("127.0.0.1", cserver.component_port)
        assert await refused(comp) == ["host-unknown"]
    run(scenario())


def test_second_connection_is_conflict_and_first_stays(cserver):
    async def scenario():
        first = await online_component(cserver, "conflict.localhost")
        try:
            second = await connect(cserver, "conflict.localhost")
            assert await refused(second) == ["conflict"]
            async with online(cserver, "alice", PASSWORD) as alice:
                alice.send_message("conflict.localhost", "still there?")
                echo = await alice.next_message(lambda m: m["body"] == "echo: still there?")
                assert str(echo["from"]) == "conflict.localhost"
        finally:
            await close(first)
    run(scenario())


def test_unconnected_component_bounces_service_unavailable(cserver):
    async def scenario():
        async with online(cserver, "alice", PASSWORD) as alice:
            alice.send_message("absent.localhost", "anyone?")
            err = await alice.next_message(lambda m: m["type"] == "error")
            assert str(err["from"]) == "absent.localhost"
            assert error_condition(err.xml) == "service-unavailable"
            reply = await alice.iq_xml(
                f"<iq type='get' to='absent.localhost'><query xmlns='{NS_INFO}'/></iq>")
            assert reply["type"] == "error"
            assert error_condition(reply.xml) == "service-unavailable"
    run(scenario())


def test_disco_items_lists_components(cserver):
    async def scenario():
        async with online(cserver, "alice", PASSWORD) as alice:
            reply = await alice.iq_xml(
                f"<iq type='get' to='localhost'><query xmlns='{NS_ITEMS}'/></iq>")
            assert reply["type"] == "result", reply
            jids = {i.get("jid") for i in reply.xml.find(q(NS_ITEMS, "query"))}
            missing = set(SECRETS) - jids
            assert not missing, f"components missing from disco#items: {missing} (got {jids})"
    run(scenario())


# -- byte level: what a library will not send -------------------------------------------

def raw_component(server, domain: str) -> RawStream:
    """A component stream authenticated by hand (XEP-0114 §3)."""
    s = RawStream(server.component_port)
    s.send(f"<stream:stream xmlns='{NS_ACCEPT}' xmlns:stream='{NS_STREAM}' to='{domain}'>")
    while s.header is None:
        s._feed(s.timeout)
    sid = s.header.get("id")
    assert sid, "XEP-0114: the server's header carries the stream id"
    assert s.header.get("from") == domain
    value = hashlib.sha1((sid + SECRETS[domain]).encode()).hexdigest()
    s.send(f"<handshake>{value}</handshake>")
    s.expect(q(NS_ACCEPT, "handshake"))
    return s


def test_from_outside_the_component_domain_is_invalid_from(cserver):
    s = raw_component(cserver, "raw.localhost")
    try:
        s.send("<message from='alice@localhost' to='bob@localhost'><body>x</body></message>")
        assert s.expect_stream_error() == "invalid-from"
        assert s.wait_closed()
    finally:
        s.close()


def test_stanza_without_to_is_improper_addressing(cserver):
    s = raw_component(cserver, "raw.localhost")
    try:
        s.send("<message from='raw.localhost'><body>x</body></message>")
        assert s.expect_stream_error() == "improper-addressing"
    finally:
        s.close()


def test_client_namespace_on_component_port_is_invalid_namespace(cserver):
    s = RawStream(cserver.component_port)
    try:
        s.send(f"<stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAM}' "
               "to='raw.localhost'>")
        assert s.expect_stream_error() == "invalid-namespace"
    finally:
        s.close()


def test_message_to_unknown_local_user_bounces_to_component(cserver):
    """An undeliverable request from the component comes back to it as an error, from
    the address it was sent to, in the component's namespace."""
    s = raw_component(cserver, "raw.localhost")
    try:
        s.send("<iq type='get' id='q1' from='raw.localhost' to='nobody@localhost/x'>"
               f"<query xmlns='{NS_INFO}'/></iq>")
        el = s.read_element()
        assert el.tag == q(NS_ACCEPT, "iq"), ET.tostring(el)
        assert el.get("type") == "error" and el.get("id") == "q1"
        assert el.get("from") == "nobody@localhost/x" and el.get("to") == "raw.localhost"
    finally:
        try:
            s.send("</stream:stream>")
            s.wait_closed()
        except (StreamClosed, OSError):
            pass
        s.close()
