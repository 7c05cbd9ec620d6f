"""RFC 6121 §4: initial presence, broadcast, unavailable on disconnect, directed presence."""

from conftest import PASSWORD
from xmpp_client import Session, befriend, get_roster, online, presence, roster_items, run


def test_initial_presence_broadcast_and_probe(server, accounts):
    a_name, b_name = accounts(server, "pra", "prb")
    a_jid, b_jid = f"{a_name}@localhost", f"{b_name}@localhost"

    async def scenario():
        async with online(server, a_name, PASSWORD, resource="ra") as a, \
                online(server, b_name, PASSWORD, resource="rb") as b:
            await befriend(a, b)
        # a logs in again: its initial presence reaches b (§4.2.2), and the
        # server tells a about b's available resource (probe, §4.3)
        async with online(server, b_name, PASSWORD, resource="rb2") as b:
            await get_roster(b)
            b.send_presence(pstatus="b is here")
            async with online(server, a_name, PASSWORD, resource="ra2") as a:
                await get_roster(a)
                a.send_presence(pstatus="a is here")
                got = await b.next_presence(presence(f"{a_jid}/ra2", "available"))
                assert got["status"] == "a is here"
                probed = await a.next_presence(presence(f"{b_jid}/rb2", "available"))
                assert probed["status"] == "b is here"
    run(scenario())


def test_unavailable_on_disconnect(server, accounts):
    a_name, b_name = accounts(server, "pra", "prb")
    a_jid = f"{a_name}@localhost"

    async def scenario():
        async with online(server, b_name, PASSWORD) as b:
            a = await Session(server, a_name, PASSWORD, resource="leaving").connect()
            try:
                await befriend(a, b)
            finally:
                await a.disconnect()   # closes the stream without unavailable presence
            await b.next_presence(presence(f"{a_jid}/leaving", "unavailable"))
    run(scenario())


def test_unavailable_on_abrupt_disconnect(server, accounts):
    """TCP reset without </stream:stream>: contacts still learn the resource is gone."""
    a_name, b_name = accounts(server, "pra", "prb")
    a_jid = f"{a_name}@localhost"

    async def scenario():
        async with online(server, b_name, PASSWORD) as b:
            a = await Session(server, a_name, PASSWORD, resource="crash").connect()
            await befriend(a, b)
            await a.abort()
            await b.next_presence(presence(f"{a_jid}/crash", "unavailable"))
    run(scenario())


def test_presence_not_broadcast_to_unsubscribed(server, accounts):
    a_name, c_name = accounts(server, "pra", "prc")
    a_jid = f"{a_name}@localhost"

    async def scenario():
        async with online(server, c_name, PASSWORD) as c:
            await get_roster(c)
            c.send_presence()
            async with online(server, a_name, PASSWORD) as a:
                await get_roster(a)
                a.send_presence(pstatus="private")
                leaked = await c.quiet("presences", presence(a_jid))
                assert leaked == [], f"presence leaked to a non-subscriber: {leaked}"
    run(scenario())


def test_initial_presence_reaches_own_other_resources(server, accounts):
    """§4.2.2: initial presence also goes to all of the user's available resources."""
    (a_name,) = accounts(server, "pra")
    a_jid = f"{a_name}@localhost"

    async def scenario():
        async with online(server, a_name, PASSWORD, resource="one") as one:
            await get_roster(one)
            one.send_presence()
            async with online(server, a_name, PASSWORD, resource="two") as two:
                await get_roster(two)
                two.send_presence(pstatus="second")
                got = await one.next_presence(presence(f"{a_jid}/two", "available"))
                assert got["status"] == "second"
                # "including the resource that generated the presence"
                await two.next_presence(presence(f"{a_jid}/two", "available"))
    run(scenario())


def test_new_resource_learns_own_other_resources(server, accounts):
    """A newly available resource learns the presence of the user's other available
    resources (implicit self-subscription, RFC 6121 §4.2.2 with the probes of §4.3)."""
    (a_name,) = accounts(server, "pra")
    a_jid = f"{a_name}@localhost"

    async def scenario():
        async with online(server, a_name, PASSWORD, resource="one") as one:
            await get_roster(one)
            one.send_presence(pstatus="first")
            async with online(server, a_name, PASSWORD, resource="two") as two:
                await get_roster(two)
                two.send_presence()
                got = await two.next_presence(presence(f"{a_jid}/one", "available"))
                assert got["status"] == "first"
    run(scenario())


def test_directed_presence_and_unavailable(server, accounts):
    """§4.6: directed presence reaches a non-contact; on logout it gets unavailable."""
    a_name, c_name = accounts(server, "pra", "prc")
    a_jid, c_jid = f"{a_name}@localhost", f"{c_name}@localhost"

    async def scenario():
        async with online(server, c_name, PASSWORD, resource="rc") as c:
            await get_roster(c)
            c.send_presence()
            a = await Session(server, a_name, PASSWORD, resource="ra").connect()
            try:
                await get_roster(a)
                a.send_presence()
                a.send_presence(pto=f"{c_jid}/rc", pstatus="just for you")
                got = await c.next_presence(presence(f"{a_jid}/ra", "available"))
                assert got["status"] == "just for you"
            finally:
                await a.disconnect()
            await c.next_presence(presence(f"{a_jid}/ra", "unavailable"))
    run(scenario())


def test_explicit_unavailable_broadcast(server, accounts):
    a_name, b_name = accounts(server, "pra", "prb")
    a_jid = f"{a_name}@localhost"

    async def scenario():
        async with online(server, a_name, PASSWORD, resource="ra") as a, \
                online(server, b_name, PASSWORD) as b:
            await befriend(a, b)
            a.send_presence(ptype="unavailable", pstatus="gone fishing")
            got = await b.next_presence(presence(f"{a_jid}/ra", "unavailable"))
            assert got["status"] == "gone fishing"
    run(scenario())


def test_subscriptions_survive_restart(make_server, accounts):
    """Mutual subscriptions are stored: after a restart, presence flows both ways again."""
    srv = make_server()
    a_name, b_name = accounts(srv, "pra", "prb")
    a_jid, b_jid = f"{a_name}@localhost", f"{b_name}@localhost"

    async def befriend_once():
        async with online(srv, a_name, PASSWORD) as a, online(srv, b_name, PASSWORD) as b:
            await befriend(a, b)

    async def after_restart():
        async with online(srv, b_name, PASSWORD, resource="rb") as b:
            await get_roster(b)
            b.send_presence()
            async with online(srv, a_name, PASSWORD, resource="ra") as a:
                items = roster_items(await get_roster(a))
                assert items[b_jid]["subscription"] == "both", items
                a.send_presence()
                await b.next_presence(presence(f"{a_jid}/ra", "available"))
                await a.next_presence(presence(f"{b_jid}/rb", "available"))

    run(befriend_once())
    srv.restart()
    run(after_restart())
