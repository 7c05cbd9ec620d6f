"""RFC 6121 §2: roster get, set, push, remove, versioning, errors, persistence."""

from conftest import PASSWORD
from xmpp_client import (error_condition, get_roster, online, roster_items, roster_query, run,
                         set_roster_item)

NS_ROSTERVER = "urn:xmpp:features:rosterver"


def test_roster_get_empty(server, accounts):
    (user,) = accounts(server, "ros")

    async def scenario():
        async with online(server, user, PASSWORD) as s:
            reply = await get_roster(s)
            assert reply["type"] == "result", reply
            assert roster_query(reply) is not None, "roster result without <query/>"
            assert roster_items(reply) == {}
    run(scenario())


def test_roster_set_push_get_remove(server, accounts):
    user, contact = accounts(server, "ros", "contact")
    contact_jid = f"{contact}@localhost"

    async def scenario():
        async with online(server, user, PASSWORD) as s:
            await get_roster(s)   # become an "interested resource" (RFC 6121 §2.1.6)
            reply = await set_roster_item(s, contact_jid, name="Contact",
                                          groups=["Friends", "Work"])
            assert reply["type"] == "result", reply

            push = await s.next_roster_push()
            assert push["type"] == "set"
            pushed = roster_items(push)
            assert pushed == {contact_jid: {"name": "Contact", "subscription": "none",
                                            "ask": None, "groups": ["Friends", "Work"]}}

            items = roster_items(await get_roster(s))
            assert items[contact_jid]["name"] == "Contact"
            assert items[contact_jid]["groups"] == ["Friends", "Work"]
            assert items[contact_jid]["subscription"] == "none"

            # update: new name, one group
            await set_roster_item(s, contact_jid, name="Renamed", groups=["Work"])
            pushed = roster_items(await s.next_roster_push())
            assert pushed[contact_jid]["name"] == "Renamed"
            assert pushed[contact_jid]["groups"] == ["Work"]

            # remove
            reply = await set_roster_item(s, contact_jid, remove=True)
            assert reply["type"] == "result", reply
            pushed = roster_items(await s.next_roster_push())
            assert pushed[contact_jid]["subscription"] == "remove"
            assert contact_jid not in roster_items(await get_roster(s))
    run(scenario())


def test_roster_push_reaches_all_interested_resources(server, accounts):
    user, contact = accounts(server, "ros", "contact")

    async def scenario():
        async with online(server, user, PASSWORD, resource="one") as one, \
                online(server, user, PASSWORD, resource="two") as two:
            await get_roster(one)
            await get_roster(two)
            await set_roster_item(one, f"{contact}@localhost", name="C")
            for s in (one, two):
                push = await s.next_roster_push()
                assert f"{contact}@localhost" in roster_items(push)
    run(scenario())


def test_roster_versioning(server, accounts):
    """RFC 6121 §2.6: 'ver' on results and pushes; a stale version gets the changes."""
    user, c1, c2 = accounts(server, "ros", "contact", "contact")
    jid1, jid2 = f"{c1}@localhost", f"{c2}@localhost"

    async def scenario():
        async with online(server, user, PASSWORD) as s:
            features = s.features[-1]
            assert features.find(f"{{{NS_ROSTERVER}}}ver") is not None, \
                "roster versioning not advertised as a stream feature"
            first = await get_roster(s, ver="")
            ver0 = roster_query(first).get("ver")
            assert ver0 is not None, "roster result lacks 'ver' although versioning is offered"

            await set_roster_item(s, jid1, name="One")
            push = await s.next_roster_push()
            ver1 = roster_query(push).get("ver")
            assert ver1 and ver1 != ver0, f"roster push ver {ver1!r} (before: {ver0!r})"

        # reconnect with the current version: nothing new
        async with online(server, user, PASSWORD) as s:
            reply = await get_roster(s, ver=ver1)
            assert reply["type"] == "result"
            query = roster_query(reply)
            if query is not None:   # full roster is allowed too, with the same version
                assert query.get("ver") == ver1
                assert set(roster_items(reply)) == {jid1}
            await set_roster_item(s, jid2, name="Two")
            ver2 = roster_query(await s.next_roster_push()).get("ver")

        # reconnect with the stale version ver1: full roster or pushes of the change
        async with online(server, user, PASSWORD) as s:
            reply = await get_roster(s, ver=ver1)
            query = roster_query(reply)
            if query is not None:
                assert query.get("ver") == ver2
                assert set(roster_items(reply)) == {jid1, jid2}
            else:
                push = await s.next_roster_push()
                assert jid2 in roster_items(push)
                assert roster_query(push).get("ver") == ver2
    run(scenario())


def test_roster_set_two_items_bad_request(server, accounts):
    (user,) = accounts(server, "ros")

    async def scenario():
        async with online(server, user, PASSWORD) as s:
            reply = await s.iq_xml("<iq type='set'><query xmlns='jabber:iq:roster'>"
                                   "<item jid='x1@localhost'/><item jid='x2@localhost'/>"
                                   "</query></iq>")
            assert reply["type"] == "error"
            assert error_condition(reply.xml) == "bad-request"
    run(scenario())


def test_roster_set_empty_group_not_acceptable(server, accounts):
    (user,) = accounts(server, "ros")

    async def scenario():
        async with online(server, user, PASSWORD) as s:
            reply = await s.iq_xml("<iq type='set'><query xmlns='jabber:iq:roster'>"
                                   "<item jid='x1@localhost'><group/></item></query></iq>")
            assert reply["type"] == "error"
            assert error_condition(reply.xml) == "not-acceptable"
    run(scenario())


def test_roster_survives_restart(make_server, accounts):
    srv = make_server()
    user, contact = accounts(srv, "ros", "contact")

    async def add():
        async with online(srv, user, PASSWORD) as s:
            await set_roster_item(s, f"{contact}@localhost", name="Kept", groups=["G"])

    async def check():
        async with online(srv, user, PASSWORD) as s:
            items = roster_items(await get_roster(s))
            assert items.get(f"{contact}@localhost", {}).get("name") == "Kept"
            assert items[f"{contact}@localhost"]["groups"] == ["G"]

    run(add())
    srv.restart()
    run(check())


def test_roster_unicode_name_and_group(server, accounts):
    user, contact = accounts(server, "ros", "contact")
    name, group = "J\u00fcrgen \U0001F426 <&>", "Fr\u00fcnde & Co"

    async def scenario():
        async with online(server, user, PASSWORD) as s:
            await set_roster_item(s, f"{contact}@localhost",
                                  name=name.replace("&", "&amp;").replace("<", "&lt;")
                                  .replace(">", "&gt;"),
                                  groups=[group.replace("&", "&amp;")])
        async with online(server, user, PASSWORD) as s:
            item = roster_items(await get_roster(s))[f"{contact}@localhost"]
            assert item["name"] == name
            assert item["groups"] == [group]
    run(scenario())
