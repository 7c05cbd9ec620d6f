"""XEP-0191 Blocking Command with slixmpp's xep_0191 plugin: the blocklist, pushes, and what
the server does with stanzas from and to blocked JIDs (online, offline, across a restart).

Negative checks ("nothing arrived") use fences, not timers: `settle(s)` waits for the reply
to a ping, so every stanza `s` sent before has been routed; a headline from a third session
that arrives afterwards at the target proves anything routed earlier would be there too.
"""

import contextlib
import itertools

from conftest import PASSWORD
from xmpp_client import (NS_CLIENT, Session, befriend, error_condition, presence, q, run)

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
_ids = itertools.count(1)


@contextlib.asynccontextmanager
async def client(server, user, resource, *, available=True):
    """A logged-in session with slixmpp's blocking plugin; block/unblock pushes are queued."""
    s = Session(server, user, PASSWORD, resource=resource)
    s.xmpp.register_plugin("xep_0191")
    s.pushes = []
    s.xmpp.add_event_handler("blocked", lambda iq: s.pushes.append(("block", iq)))
    s.xmpp.add_event_handler("unblocked", lambda iq: s.pushes.append(("unblock", iq)))
    await s.connect()
    try:
        if available:
            s.send_presence()
            await s.next_presence(lambda p: p.xml.get("from") == str(s.jid))
        yield s
    finally:
        await s.disconnect()


async def settle(s):
    """Wait until the server has routed everything `s` sent so far."""
    await s.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")


async def fence(sender, target):
    token = f"fence {next(_ids)}"
    sender.xmpp.send_message(mto=target.jid, mbody=token, mtype="headline")
    await target.next_message(lambda m: m["body"] == token)


def push_jids(iq, kind):
    return sorted(str(i["jid"]) for i in iq[kind]["items"])


async def wait_push(s, kind):
    """The next block/unblock push (slixmpp events fire synchronously on arrival)."""
    for _ in range(200):
        for i, (k, iq) in enumerate(s.pushes):
            if k == kind:
                return s.pushes.pop(i)[1]
        await settle(s)
    raise AssertionError(f"no {kind} push; got {s.pushes}")


def blocked_error(reply):
    err = reply.xml.find(q(NS_CLIENT, "error"))
    return (error_condition(reply.xml), err is not None
            and err.find(q(NS_BLOCKING_ERRORS, "blocked")) is not None)


def test_blocklist_block_unblock_and_pushes(server, accounts):
    (j,) = accounts(server, "bkj")

    async def scenario():
        async with client(server, j, "chamber") as j1, client(server, j, "balcony") as j2, \
                client(server, j, "garden") as j3:
            info = await j1.xmpp["xep_0030"].get_info(jid="localhost")
            assert NS_BLOCKING in info["disco_info"]["features"], "urn:xmpp:blocking not advertised"
            assert await j1.xmpp["xep_0191"].get_blocked_jids() == set()
            await j2.xmpp["xep_0191"].get_blocked_jids()   # j3 never asks: no pushes for it
            await j1.xmpp["xep_0191"].block(["romeo@montague.lit", "iago@shakespeare.lit/x",
                                             "evil.example"])
            for s in (j1, j2):
                push = await wait_push(s, "block")
                assert push_jids(push, "block") == ["evil.example", "iago@shakespeare.lit/x",
                                                    "romeo@montague.lit"]
                assert push["to"] == s.jid
            got = await j2.xmpp["xep_0191"].get_blocked_jids()
            assert {str(x) for x in got} == {"romeo@montague.lit", "iago@shakespeare.lit/x",
                                              "evil.example"}
            await j2.xmpp["xep_0191"].unblock(["romeo@montague.lit"])
            for s in (j1, j2):
                assert push_jids(await wait_push(s, "unblock"), "unblock") == ["romeo@montague.lit"]
            got = await j1.xmpp["xep_0191"].get_blocked_jids()
            assert {str(x) for x in got} == {"iago@shakespeare.lit/x", "evil.example"}
            # Unblock all: an empty <unblock/>, pushed empty.
            reply = await j1.iq_xml(f"<iq type='set'><unblock xmlns='{NS_BLOCKING}'/></iq>")
            assert reply["type"] == "result", reply
            for s in (j1, j2):
                assert push_jids(await wait_push(s, "unblock"), "unblock") == []
            assert await j1.xmpp["xep_0191"].get_blocked_jids() == set()
            # A block without items is a bad request; a malformed JID is refused.
            reply = await j1.iq_xml(f"<iq type='set'><block xmlns='{NS_BLOCKING}'/></iq>")
            assert error_condition(reply.xml) == "bad-request"
            reply = await j1.iq_xml(f"<iq type='set'><block xmlns='{NS_BLOCKING}'>"
                                    f"<item jid='a@b@c'/></block></iq>")
            assert error_condition(reply.xml) == "jid-malformed"
            await fence(j1, j3)
            assert j3.pushes == [], "a resource that never requested the blocklist got pushes"
    run(scenario())


def test_stanzas_from_blocked_jid_are_not_delivered(server, accounts):
    b, a, c = accounts(server, "bkb", "bka", "bkc")

    async def scenario():
        async with client(server, b, "desk") as bob, client(server, a, "pc") as alice, \
                client(server, c, "evil") as carol_evil, client(server, c, "good") as carol_good:
            await bob.xmpp["xep_0191"].block([f"{a}@localhost", f"{c}@localhost/evil"])
            # Message (to the bare and to the full JID): service-unavailable, not delivered.
            for to in (f"{b}@localhost", f"{b}@localhost/desk"):
                alice.send_message(to, "let me in")
                err = await alice.next_message(lambda m: m["type"] == "error")
                assert error_condition(err.xml) == "service-unavailable"
            # IQ get: service-unavailable; the blocked user looks offline.
            reply = await alice.iq_xml(f"<iq type='get' to='{b}@localhost/desk'>"
                                       f"<ping xmlns='urn:xmpp:ping'/></iq>")
            assert error_condition(reply.xml) == "service-unavailable"
            reply = await carol_good.iq_xml(f"<iq type='get' to='{b}@localhost/desk'>"
                                            f"<ping xmlns='urn:xmpp:ping'/></iq>")
            assert reply["type"] == "result", "bob's client answers a JID he does not block"
            # Presence: dropped without an error.
            alice.send_presence(pto=f"{b}@localhost/desk", pstatus="see me")
            await settle(alice)
            # A full-JID entry blocks that resource only.
            carol_evil.send_message(f"{b}@localhost", "from evil")
            err = await carol_evil.next_message(lambda m: m["type"] == "error")
            assert error_condition(err.xml) == "service-unavailable"
            carol_good.send_message(f"{b}@localhost", "from good")
            await bob.next_message(lambda m: m["body"] == "from good")
            await fence(carol_good, bob)
            assert bob.messages.drain(lambda m: m["body"] in ("let me in", "from evil")) == []
            assert bob.presences.drain(presence(f"{a}@localhost")) == []
            assert alice.messages.drain(lambda m: m["type"] == "error") == [], \
                "an error was returned for blocked presence"
            # A domain entry blocks every JID at that domain (but never bob's own resources).
            await bob.xmpp["xep_0191"].block(["localhost"])
            carol_good.send_message(f"{b}@localhost", "domain blocked")
            err = await carol_good.next_message(lambda m: m["type"] == "error")
            assert error_condition(err.xml) == "service-unavailable"
            bob.send_message(f"{b}@localhost/desk", "note to self", mtype="headline")
            await bob.next_message(lambda m: m["body"] == "note to self")
            # Unblocked, stanzas flow again.
            await bob.xmpp["xep_0191"].unblock([f"{a}@localhost", "localhost"])
            alice.send_message(f"{b}@localhost", "hello again")
            await bob.next_message(lambda m: m["body"] == "hello again")
    run(scenario())


def test_stanzas_to_blocked_jid_are_refused(server, accounts):
    b, a = accounts(server, "bob", "bta")

    async def scenario():
        async with client(server, b, "desk") as bob, client(server, a, "pc") as alice:
            await bob.xmpp["xep_0191"].block([f"{a}@localhost"])
            bob.send_message(f"{a}@localhost", "can you hear me?")
            err = await bob.next_message(lambda m: m["type"] == "error")
            assert blocked_error(err) == ("not-acceptable", True), err
            assert err["body"] == "can you hear me?"
            reply = await bob.iq_xml(f"<iq type='get' to='{a}@localhost/pc'>"
                                     f"<ping xmlns='urn:xmpp:ping'/></iq>")
            assert blocked_error(reply) == ("not-acceptable", True), reply
            # Also to the blocked JID's bare address (answered by the server for it).
            reply = await bob.iq_xml(f"<iq type='get' to='{a}@localhost'>"
                                     f"<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            assert blocked_error(reply) == ("not-acceptable", True), reply
            bob.send_presence(pto=f"{a}@localhost")
            err = await bob.next_presence(lambda p: p["type"] == "error")
            assert blocked_error(err) == ("not-acceptable", True), err
            # Nothing reached alice: after unblocking, the next message from bob is the first
            # one she sees (bob's stanzas are routed in order).
            await bob.xmpp["xep_0191"].unblock([f"{a}@localhost"])
            bob.send_message(f"{a}@localhost", "now you can")
            first = await alice.next_message(lambda m: m["type"] == "chat")
            assert first["body"] == "now you can", "a message to a blocked JID was delivered"
    run(scenario())


def test_offline_messages_from_blocked_sender_not_stored(server, accounts):
    b, a, c = accounts(server, "bob", "boa", "boc")

    async def scenario():
        async with client(server, b, "desk", available=False) as bob:
            await bob.xmpp["xep_0191"].block([f"{a}@localhost"])
        async with client(server, a, "pc") as alice, client(server, c, "pc") as carol:
            alice.send_message(f"{b}@localhost", "stored?")
            err = await alice.next_message(lambda m: m["type"] == "error")
            assert error_condition(err.xml) == "service-unavailable"
            carol.send_message(f"{b}@localhost", "stored for bob")
            await settle(carol)
            assert carol.messages.drain(lambda m: m["type"] == "error") == []
        async with client(server, b, "desk", available=False) as bob:
            bob.send_presence()
            got = await bob.next_message(lambda m: m["body"] == "stored for bob")
            assert got is not None
            await settle(bob)   # offline messages precede the ping reply
            assert bob.messages.drain(lambda m: m["body"] == "stored?") == [], \
                "a message from a blocked sender was stored offline"
    run(scenario())


def test_block_hides_presence_and_unblock_restores_it(server, accounts):
    a, b, c = accounts(server, "bpa", "bpb", "bpc")

    async def scenario():
        async with client(server, a, "pc") as alice, client(server, b, "desk") as bob, \
                client(server, c, "pc") as carol:
            await befriend(alice, bob)
            await alice.next_presence(presence(f"{b}@localhost/desk", "available"))
            await bob.next_presence(presence(f"{a}@localhost/pc", "available"))
            await bob.xmpp["xep_0191"].block([f"{a}@localhost"])
            # §3.3: the blocked contact sees bob go offline, and bob sees alice go.
            await alice.next_presence(presence(f"{b}@localhost/desk", "unavailable"))
            await bob.next_presence(presence(f"{a}@localhost/pc", "unavailable"))
            # Presence changes no longer flow either way.
            bob.send_presence(pstatus="busy now")
            alice.send_presence(pstatus="alice away")
            await settle(bob)
            await settle(alice)
            await fence(carol, alice)
            await fence(carol, bob)
            assert alice.presences.drain(presence(f"{b}@localhost", "available")) == []
            assert bob.presences.drain(presence(f"{a}@localhost", "available")) == []
            # §3.4: unblocking sends bob's current presence (and alice's comes back).
            await bob.xmpp["xep_0191"].unblock([f"{a}@localhost"])
            p = await alice.next_presence(presence(f"{b}@localhost/desk", "available"))
            assert p["status"] == "busy now"
            p = await bob.next_presence(presence(f"{a}@localhost/pc", "available"))
            assert p["status"] == "alice away"
    run(scenario())


def test_blocklist_persists_across_restart(make_server):
    srv = make_server({"julia": PASSWORD, "romeo": PASSWORD})

    async def block():
        async with client(srv, "julia", "r1", available=False) as j:
            await j.xmpp["xep_0191"].block(["romeo@localhost", "spam.example"])

    async def check():
        async with client(srv, "julia", "r1", available=False) as j:
            got = await j.xmpp["xep_0191"].get_blocked_jids()
            assert {str(x) for x in got} == {"romeo@localhost", "spam.example"}
        async with client(srv, "romeo", "r1", available=False) as r:
            r.send_message("julia@localhost", "after restart")
            err = await r.next_message(lambda m: m["type"] == "error")
            assert error_condition(err.xml) == "service-unavailable"

    run(block())
    srv.restart()
    run(check())
