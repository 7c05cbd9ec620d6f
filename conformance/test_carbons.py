"""XEP-0280 Message Carbons (and the XEP-0334 no-copy hint) with slixmpp's xep_0280 plugin.

Negative checks ("no copy arrived") use a fence instead of a timer: the sender's session
routes its stanzas in order, pushing every copy before it handles the next stanza, so once
a later headline from the same sender has arrived at a resource, any copy of the earlier
message would have arrived before it.
"""

import contextlib
import itertools

from conftest import PASSWORD
from xmpp_client import NS_CLIENT, Session, q, run

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
_fences = itertools.count(1)


@contextlib.asynccontextmanager
async def client(server, user, resource, *, carbons=True, priority=None):
    """A logged-in session with slixmpp's carbons plugin, available, carbons enabled or not."""
    s = Session(server, user, PASSWORD, resource=resource)
    s.xmpp.register_plugin("xep_0280")
    s.carbon_events = []
    s.xmpp.add_event_handler("carbon_received", lambda m: s.carbon_events.append(("received", m)))
    s.xmpp.add_event_handler("carbon_sent", lambda m: s.carbon_events.append(("sent", m)))
    await s.connect()
    try:
        if carbons:
            await s.xmpp["xep_0280"].enable()
        s.send_presence(ppriority=priority) if priority is not None else s.send_presence()
        await s.next_presence(lambda p: p.xml.get("from") == str(s.jid))
        yield s
    finally:
        await s.disconnect()


def carbon(kind):
    """Predicate: a carbon of this kind ('sent'/'received') from our own bare JID."""
    def match(m):
        return m.xml.find(q(NS_CARBONS, kind)) is not None
    return match


def forwarded(m, kind):
    """The original message inside a carbon."""
    inner = m.xml.find(f"{q(NS_CARBONS, kind)}/{q(NS_FORWARD, 'forwarded')}/{q(NS_CLIENT, 'message')}")
    assert inner is not None, f"carbon without <{kind}><forwarded><message>: {m}"
    return inner


async def fence(sender, *targets):
    """After this, everything `sender` routed earlier has reached each target's inbox."""
    for t in targets:
        token = f"fence {next(_fences)}"
        sender.xmpp.send_message(mto=t.jid, mbody=token, mtype="headline")
        await t.next_message(lambda m: m["body"] == token)


def chat(sender, to, body, extra=""):
    """A chat message given as XML, so hints and other children can be added."""
    sender.send_raw(f"<message to='{to}' type='chat' id='m{next(_fences)}'>"
                    f"<body>{body}</body>{extra}</message>")


def body_is(text):
    return lambda m: m["body"] == text


def test_carbons_sent_to_other_enabled_resources(server, accounts):
    a, b = accounts(server, "cba", "cbb")

    async def scenario():
        async with client(server, a, "r1", carbons=False) as r1, \
                client(server, a, "r2") as r2, \
                client(server, a, "r3", carbons=False) as r3, \
                client(server, b, "phone") as bob:
            info = await r1.xmpp["xep_0030"].get_info(jid="localhost")
            assert NS_CARBONS in info["disco_info"]["features"], "urn:xmpp:carbons:2 not advertised"
            chat(r1, f"{b}@localhost", "sent from r1")
            await bob.next_message(body_is("sent from r1"))
            copy = await r2.next_message(carbon("sent"))
            assert copy.xml.get("from") == f"{a}@localhost", "a carbon comes from the bare JID"
            assert copy.xml.get("to") == f"{a}@localhost/r2"
            assert copy["type"] == "chat", "the wrapper keeps the original type"
            inner = forwarded(copy, "sent")
            assert inner.get("from") == f"{a}@localhost/r1"
            assert inner.get("to") == f"{b}@localhost"
            assert inner.findtext(q(NS_CLIENT, "body")) == "sent from r1"
            assert [k for k, _ in r2.carbon_events] == ["sent"], "slixmpp did not accept the carbon"
            # Neither the sender nor a resource without carbons gets a copy.
            await fence(r1, r1, r3)
            assert r1.messages.drain(carbon("sent")) == []
            assert r3.messages.drain(carbon("sent")) == []
    run(scenario())


def test_carbons_received_full_and_bare_addressing(server, accounts):
    a, b = accounts(server, "cra", "crb")

    async def scenario():
        async with client(server, a, "pc") as alice, \
                client(server, b, "b1", priority=5) as b1, \
                client(server, b, "b2", priority=1) as b2, \
                client(server, b, "b3", carbons=False, priority=1) as b3:
            # To a full JID: that resource gets the original, the others with carbons a copy.
            chat(alice, f"{b}@localhost/b2", "to b2 only")
            await b2.next_message(body_is("to b2 only"))
            copy = await b1.next_message(carbon("received"))
            assert copy.xml.get("from") == f"{b}@localhost"
            assert copy.xml.get("to") == f"{b}@localhost/b1"
            inner = forwarded(copy, "received")
            assert inner.get("from") == f"{a}@localhost/pc"
            assert inner.get("to") == f"{b}@localhost/b2"
            assert inner.findtext(q(NS_CLIENT, "body")) == "to b2 only"
            assert [k for k, _ in b1.carbon_events] == ["received"]
            # To the bare JID: the highest priority (b1) gets it, b2 a copy.
            chat(alice, f"{b}@localhost", "to the bare jid")
            await b1.next_message(body_is("to the bare jid"))
            copy = await b2.next_message(carbon("received"))
            assert forwarded(copy, "received").findtext(q(NS_CLIENT, "body")) == "to the bare jid"
            await fence(alice, b1, b2, b3)
            assert b1.messages.drain(carbon("received")) == [], "b1 got the original and a copy"
            assert b2.messages.drain(lambda m: m["body"] == "to the bare jid") == []
            assert b3.messages.drain(lambda m: m["body"] or carbon("received")(m)) == [], \
                "a resource without carbons got a message meant for another"
    run(scenario())


def test_private_and_no_copy_hints_suppress_carbons(server, accounts):
    a, b = accounts(server, "cpa", "cpb")

    async def scenario():
        async with client(server, a, "r1") as r1, client(server, a, "r2") as r2, \
                client(server, b, "b1") as b1, client(server, b, "b2") as b2:
            chat(r1, f"{b}@localhost/b1", "private one",
                 f"<private xmlns='{NS_CARBONS}'/><no-copy xmlns='urn:xmpp:hints'/>")
            chat(r1, f"{b}@localhost/b1", "no-copy only", "<no-copy xmlns='urn:xmpp:hints'/>")
            chat(r1, f"{b}@localhost/b1", "private only", f"<private xmlns='{NS_CARBONS}'/>")
            chat(r1, f"{b}@localhost/b1", "copied")
            for body in ("private one", "no-copy only", "private only", "copied"):
                await b1.next_message(body_is(body))
            # Only the last one was copied, on both sides.
            sent = await r2.next_message(carbon("sent"))
            received = await b2.next_message(carbon("received"))
            for m, kind in ((sent, "sent"), (received, "received")):
                assert forwarded(m, kind).findtext(q(NS_CLIENT, "body")) == "copied", \
                    f"a message with a private/no-copy hint was carbon-copied ({kind})"
            await fence(r1, r2, b2)
            assert r2.messages.drain(carbon("sent")) == []
            assert b2.messages.drain(carbon("received")) == []
    run(scenario())


def test_disable_stops_copies_and_non_chat_is_not_copied(server, accounts):
    a, b = accounts(server, "cda", "cdb")

    async def scenario():
        async with client(server, a, "r1") as r1, client(server, a, "r2") as r2, \
                client(server, b, "b1") as b1:
            await r2.xmpp["xep_0280"].disable()
            await r2.xmpp["xep_0280"].disable()   # §10.1: repeating is not an error
            chat(r1, f"{b}@localhost", "after disable")
            await b1.next_message(body_is("after disable"))
            # A headline and an empty 'normal' message are not IM traffic.
            r1.xmpp.send_message(mto=f"{b}@localhost", mbody="news", mtype="headline")
            r1.send_raw(f"<message to='{b}@localhost'><subject>no body</subject></message>")
            await fence(r1, r2)
            assert r2.messages.drain(carbon("sent")) == [], "copy after <disable/>"
            await r2.xmpp["xep_0280"].enable()
            r1.xmpp.send_message(mto=f"{b}@localhost", mbody="normal with body", mtype="normal")
            copy = await r2.next_message(carbon("sent"))
            assert forwarded(copy, "sent").findtext(q(NS_CLIENT, "body")) == "normal with body"
            assert copy["type"] == "normal"
    run(scenario())


def test_forged_carbon_is_not_copied_nor_trusted(server, accounts):
    """§11: a carbon wrapper sent by another user arrives stamped with that user's full JID
    (never the recipient's bare JID), so the client rejects it; the server does not copy it."""
    a, m = accounts(server, "cfa", "cfm")

    async def scenario():
        async with client(server, a, "r1") as r1, client(server, a, "r2") as r2, \
                client(server, m, "evil") as mallory:
            mallory.send_raw(
                f"<message to='{a}@localhost/r1' type='chat'>"
                f"<received xmlns='{NS_CARBONS}'><forwarded xmlns='{NS_FORWARD}'>"
                f"<message xmlns='jabber:client' from='{a}@localhost/r2' to='x@localhost' "
                f"type='chat'><body>forged</body></message></forwarded></received></message>")
            got = await r1.next_message(carbon("received"))
            assert got.xml.get("from") == f"{m}@localhost/evil", \
                "the server must stamp the real sender on a relayed carbon wrapper"
            assert r1.carbon_events == [], "slixmpp accepted a forged carbon"
            await fence(mallory, r2)
            assert r2.messages.drain(carbon("received")) == [], "a carbon was carbon-copied"
    run(scenario())
