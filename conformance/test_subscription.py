"""RFC 6121 §3: presence subscriptions, including a request that outlives a restart."""

import asyncio

from conftest import PASSWORD
from xmpp_client import (Session, befriend, get_roster, online, presence, roster_items,
                         roster_push_for, run, set_roster_item, subscribe)


def test_subscription_request_approve_and_mutual(server, accounts):
    a_name, b_name = accounts(server, "suba", "subb")
    a_jid, b_jid = f"{a_name}@localhost", f"{b_name}@localhost"

    async def scenario():
        async with online(server, a_name, PASSWORD, resource="ra") as a, \
                online(server, b_name, PASSWORD, resource="rb") as b:
            await get_roster(a)
            await get_roster(b)
            a.send_presence()
            b.send_presence(pstatus="here")

            # §3.1.2: the user's server pushes the pending item with ask='subscribe'
            a.send_presence(pto=b_jid, ptype="subscribe")
            await a.next_roster_push(roster_push_for(b_jid, "none", ask="subscribe"))

            # §3.1.3: the contact gets the request from the user's bare JID
            request = await b.next_presence(presence(a_jid, "subscribe"))
            assert request.xml.get("from") == a_jid, "subscribe must come from the bare JID"

            # §3.1.5: approval
            b.send_presence(pto=a_jid, ptype="subscribed")
            await b.next_roster_push(roster_push_for(a_jid, "from"))
            await a.next_roster_push(roster_push_for(b_jid, "to", ask=None))
            await a.next_presence(presence(b_jid, "subscribed"))
            # §3.1.6: the contact's server sends the contact's current presence
            current = await a.next_presence(presence(f"{b_jid}/rb", "available"))
            assert current["status"] == "here"

            # the other direction makes it mutual
            await subscribe(b, a)
            assert roster_items(await get_roster(a))[b_jid]["subscription"] == "both"
            assert roster_items(await get_roster(b))[a_jid]["subscription"] == "both"

            # §4.4: presence now flows both ways
            b.send_presence(pshow="away", pstatus="later")
            update = await a.next_presence(
                lambda p: presence(f"{b_jid}/rb", "available")(p) and p["show"] == "away")
            assert update["status"] == "later"
    run(scenario())


def test_unsubscribe_and_cancel(server, accounts):
    a_name, b_name = accounts(server, "suba", "subb")
    a_jid, b_jid = f"{a_name}@localhost", f"{b_name}@localhost"

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, online(server, b_name, PASSWORD) as b:
            await get_roster(a)
            await get_roster(b)
            a.send_presence()
            b.send_presence()
            await subscribe(a, b)
            await subscribe(b, a)

            # §3.3: a unsubscribes from b's presence: a both->from, b both->to
            a.send_presence(pto=b_jid, ptype="unsubscribe")
            await a.next_roster_push(roster_push_for(b_jid, "from"))
            await b.next_roster_push(roster_push_for(a_jid, "to"))

            # §3.2: a cancels b's subscription to a: a from->none, b to->none
            a.send_presence(pto=b_jid, ptype="unsubscribed")
            await a.next_roster_push(roster_push_for(b_jid, "none"))
            await b.next_roster_push(roster_push_for(a_jid, "none"))
            await b.next_presence(presence(a_jid, "unsubscribed"))
    run(scenario())


def test_approval_delivered_before_roster_push(server, accounts):
    """§3.1.6: the user's server MUST deliver the inbound 'subscribed' to the user's
    interested resources before the roster push that records subscription='to'."""
    a_name, b_name = accounts(server, "suba", "subb")
    b_jid = f"{b_name}@localhost"

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, online(server, b_name, PASSWORD) as b:
            await get_roster(a)
            await get_roster(b)
            a.send_presence()
            b.send_presence()
            await subscribe(a, b)
            approval = await a.next_presence(presence(b_jid, "subscribed"))
            push = next(p for p in a.arrivals if roster_push_for(b_jid, "to")(p))
            assert a.arrivals.index(approval) < a.arrivals.index(push), \
                "roster push (subscription='to') arrived before the <presence type='subscribed'/>"
    run(scenario())


def test_pending_subscription_survives_restart(make_server, accounts):
    """§3.1.3: the contact's server stores the request until the contact approves it."""
    srv = make_server()
    a_name, b_name = accounts(srv, "suba", "subb")
    a_jid, b_jid = f"{a_name}@localhost", f"{b_name}@localhost"

    async def request():   # b is offline
        async with online(srv, a_name, PASSWORD) as a:
            await get_roster(a)
            a.send_presence()
            a.send_presence(pto=b_jid, ptype="subscribe")
            await a.next_roster_push(roster_push_for(b_jid, "none", ask="subscribe"))

    async def approve():
        async with online(srv, a_name, PASSWORD, resource="back") as a:
            items = roster_items(await get_roster(a))
            assert items.get(b_jid, {}).get("ask") == "subscribe", \
                f"a's pending outbound request lost across restart: {items}"
            a.send_presence()
            b = Session(srv, b_name, PASSWORD)
            await b.connect()
            try:
                await get_roster(b)
                b.send_presence()   # pending requests are delivered on available presence
                await b.next_presence(presence(a_jid, "subscribe"))
                b.send_presence(pto=a_jid, ptype="subscribed")
                await a.next_roster_push(roster_push_for(b_jid, "to", ask=None))
                await a.next_presence(presence(b_jid, "subscribed"))
                await a.next_presence(presence(b_jid, "available"))
            finally:
                await b.disconnect()

    run(request())
    srv.restart()
    run(approve())


def test_subscription_request_redelivered_until_answered(server, accounts):
    """§3.1.3: an unanswered request is delivered again on the contact's next login."""
    a_name, b_name = accounts(server, "suba", "subb")
    a_jid, b_jid = f"{a_name}@localhost", f"{b_name}@localhost"

    async def scenario():
        async with online(server, a_name, PASSWORD) as a:
            await get_roster(a)
            a.send_presence(pto=b_jid, ptype="subscribe")
            await a.next_roster_push(roster_push_for(b_jid, "none", ask="subscribe"))
        for _ in range(2):
            async with online(server, b_name, PASSWORD) as b:
                await get_roster(b)
                b.send_presence()
                await b.next_presence(presence(a_jid, "subscribe"))
    run(scenario())


def test_subscribed_without_request_is_ignored(server, accounts):
    """§3.1.5: an unsolicited 'subscribed' must not create a subscription."""
    a_name, b_name = accounts(server, "suba", "subb")
    a_jid, b_jid = f"{a_name}@localhost", f"{b_name}@localhost"

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, online(server, b_name, PASSWORD) as b:
            await get_roster(a)
            await get_roster(b)
            b.send_presence(pto=a_jid, ptype="subscribed")
            assert await a.quiet("roster_pushes") == []
            items = roster_items(await get_roster(a))
            assert items.get(b_jid, {}).get("subscription", "none") == "none"
    run(scenario())


def test_roster_remove_cancels_both_subscriptions(server, accounts):
    """§2.5.2: removing a contact with subscription='both' unsubscribes and cancels:
    the contact's roster goes to 'none'; §3.2.2: it sees the user go unavailable."""
    a_name, b_name = accounts(server, "suba", "subb")
    a_jid, b_jid = f"{a_name}@localhost", f"{b_name}@localhost"

    async def scenario():
        async with online(server, a_name, PASSWORD, resource="ra") as a, \
                online(server, b_name, PASSWORD, resource="rb") as b:
            await befriend(a, b)
            await b.next_presence(presence(f"{a_jid}/ra", "available"))
            reply = await set_roster_item(a, b_jid, remove=True)
            assert reply["type"] == "result", reply
            await a.next_roster_push(roster_push_for(b_jid, "remove"))
            await b.next_roster_push(roster_push_for(a_jid, "none"))
            await b.next_presence(presence(f"{a_jid}/ra", "unavailable"))
            assert roster_items(await get_roster(b))[a_jid]["subscription"] == "none"
            assert b_jid not in roster_items(await get_roster(a))
    run(scenario())


def test_immediate_approvals_are_not_lost(make_server, accounts):
    """§3.1.3-3.1.6: a contact that approves the moment the request arrives (as auto-approving
    clients do) must end up subscribed. Twenty pairs at once, to expose ordering races between
    delivering the request and recording it."""
    server = make_server()
    names = accounts(server, *["fast"] * 40)
    pairs = list(zip(names[0::2], names[1::2]))

    async def one_pair(a_name, b_name):
        async with online(server, a_name, PASSWORD) as a, online(server, b_name, PASSWORD) as b:
            await get_roster(a)
            await get_roster(b)
            a.send_presence()
            b.send_presence()
            await subscribe(a, b)

    async def scenario():
        results = await asyncio.gather(*(one_pair(a, b) for a, b in pairs),
                                       return_exceptions=True)
        failed = [f"{a}->{b}" for (a, b), r in zip(pairs, results) if isinstance(r, Exception)]
        assert not failed, ("immediate approvals lost: the subscription never completed\n"
                            f"{len(failed)}/{len(pairs)} pairs: {failed}\nfirst error: "
                            f"{next(r for r in results if isinstance(r, Exception))}")
    run(scenario())


def test_pre_approval(server, accounts):
    """§3.4: with pre-approval advertised, a 'subscribed' sent before any request
    approves the later request automatically."""
    a_name, b_name = accounts(server, "suba", "subb")
    a_jid, b_jid = f"{a_name}@localhost", f"{b_name}@localhost"

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, online(server, b_name, PASSWORD) as b:
            assert b.features[-1].find("{urn:xmpp:features:pre-approval}sub") is not None, \
                "pre-approval (urn:xmpp:features:pre-approval) not advertised"
            await get_roster(a)
            await get_roster(b)
            a.send_presence()
            b.send_presence()
            b.send_presence(pto=a_jid, ptype="subscribed")
            push = await b.next_roster_push(roster_push_for(a_jid, "none"))
            assert push.xml.find(".//{jabber:iq:roster}item").get("approved") == "true"
            a.send_presence(pto=b_jid, ptype="subscribe")
            await a.next_presence(presence(b_jid, "subscribed"))
            await a.next_roster_push(roster_push_for(b_jid, "to", ask=None))
            await b.next_roster_push(roster_push_for(a_jid, "from"))
            pending = await b.quiet("presences", presence(a_jid, "subscribe"))
            assert pending == [], "pre-approved request was still shown to the contact"
    run(scenario())
