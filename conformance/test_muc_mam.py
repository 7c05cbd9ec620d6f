"""XEP-0313 archives on XEP-0045 rooms: stanza-ids on the live messages match the archive's
UIDs, XEP-0059 paging both ways (slixmpp's xep_0313 iterator and raw queries), who may read a
members-only room's archive, history on join served from the archive (also after a restart),
XEP-0372 mentions of an offline member, and rooms surviving a restart with their config,
affiliations and archive."""

import asyncio

from conftest import PASSWORD
from mucmod_util import (NS_DATA, NS_DELAY, NS_MAM, NS_MUC, NS_OWNER, NS_RSM, NS_SID, body_of,
                         codes, create, error_of, frm, groupchat, is_groupchat, join, mam,
                         new_room, room_stanza_id)
from xmpp_client import NS_CLIENT, online, q, run

NS_REFERENCE = "urn:xmpp:reference:0"
NS_INFO = "http://jabber.org/protocol/disco#info"


def test_room_advertises_mam_when_logging(server, accounts):
    (a,) = accounts(server, "rda")
    logged, plain = new_room("logged"), new_room("plain")

    async def scenario():
        async with online(server, a, PASSWORD) as alice:
            await create(alice, logged, "A", logging=True)
            await create(alice, plain, "A")
            for room, expect in ((logged, True), (plain, False)):
                r = await alice.iq_xml(f"<iq type='get' to='{room}'>"
                                       f"<query xmlns='{NS_INFO}'/></iq>")
                feats = {f.get("var") for f in r.xml.iter(q(NS_INFO, "feature"))}
                assert (NS_MAM in feats) == expect, feats
                # Moderation works on archived messages: advertised with the archive.
                assert ("urn:xmpp:message-moderate:1" in feats) == expect
            r = await mam(alice, plain)
            assert error_of(r[0]) is not None
    run(scenario())


def test_room_archive_paging_with_live_stanza_ids(server, accounts):
    a, b = accounts(server, "rpa", "rpb")
    room = new_room("paging")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob:
            await create(alice, room, "Alice", logging=True)
            await join(bob, room, "Bob")
            live = []
            for i in range(12):
                groupchat(alice, room, f"msg {i}")
                m = await bob.next_message(is_groupchat(room, f"msg {i}"))
                live.append(room_stanza_id(m, room))
                # The sender's own echo carries the same id (one serialization for all).
                echo = await alice.next_message(is_groupchat(room, f"msg {i}"))
                assert room_stanza_id(echo, room) == live[-1]
            # slixmpp's iterator, forwards then backwards, pages of 5.
            bob.xmpp.register_plugin("xep_0313")
            plugin = bob.xmpp["xep_0313"]
            fwd = [m async for m in plugin.iterate(jid=room, rsm={"max": 5})]
            assert [m["mam_result"]["id"] for m in fwd] == live
            assert [m["mam_result"]["forwarded"]["stanza"]["body"] for m in fwd] == \
                [f"msg {i}" for i in range(12)]
            for m in fwd:
                assert str(m["from"]) == room
                assert str(m["mam_result"]["forwarded"]["stanza"]["from"]) == f"{room}/Alice"
            back = [m async for m in plugin.iterate(jid=room, rsm={"max": 5}, reverse=True)]
            assert [m["mam_result"]["id"] for m in back] == list(reversed(live))
            # Raw: the last page, then the one before it.
            _, fin, last = await mam(bob, room, max=5, before="")
            assert [u for u, _, _ in last] == live[-5:]
            assert fin.find(q(NS_RSM, "set")).find(q(NS_RSM, "count")).text == "12"
            _, fin, prev = await mam(bob, room, max=5, before=live[-5])
            assert [u for u, _, _ in prev] == live[-10:-5]
            assert fin.get("complete") != "true"
            _, fin, after = await mam(bob, room, max=5, after=live[9])
            assert [u for u, _, _ in after] == live[10:]
            assert fin.get("complete") == "true"
            # Each result: from the room, the stored message from the occupant, its delay.
            for u, fwd_msg, outer in after:
                assert frm(outer) == room
                assert fwd_msg.get("from") == f"{room}/Alice"
                assert fwd_msg.get("type") == "groupchat"
            # Real JIDs (XEP-0313 §5.1.2): not for a participant of a semi-anonymous room,
            # shown to its owner.
            user_item = f"{{{NS_MUC}#user}}x/{{{NS_MUC}#user}}item"
            assert all(m.find(user_item) is None for _, m, _ in after)
            _, _, owner_view = await mam(alice, room, max=2)
            assert [m.find(user_item).get("jid") for _, m, _ in owner_view] == \
                [f"{a}@localhost"] * 2
            # Private messages are not archived.
            bob.send_raw(f"<message to='{room}/Alice' type='chat'><body>psst</body></message>")
            await alice.next_message(lambda m: body_of(m.xml) == "psst")
            _, _, everything = await mam(bob, room, max=50)
            assert len(everything) == 12
    run(scenario())


def test_members_only_archive_is_for_members(server, accounts):
    a, b, c = accounts(server, "rma", "rmb", "rmc")
    room = new_room("secret")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob, \
                online(server, c, PASSWORD) as carol:
            await create(alice, room, "Alice", logging=True, members_only=True)
            r = await alice.iq_xml(f"<iq type='set' to='{room}'><query xmlns='{NS_MUC}#admin'>"
                                   f"<item affiliation='member' jid='{b}@localhost'/></query></iq>")
            assert r["type"] == "result"
            groupchat(alice, room, "members only")
            await alice.next_message(is_groupchat(room, "members only"))
            reply, _, results = await mam(carol, room)
            assert error_of(reply) == "forbidden", reply
            assert results == []
            reply, _, results = await mam(bob, room)
            assert reply["type"] == "result"
            assert [body_of(m) for _, m, _ in results] == ["members only"]
    run(scenario())


def test_history_on_join_comes_from_the_archive(server, accounts):
    a, b = accounts(server, "rha", "rhb")
    room = new_room("history")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob:
            await create(alice, room, "Alice", logging=True, history="5")
            ids = []
            for i in range(7):
                groupchat(alice, room, f"h{i}")
                ids.append(room_stanza_id(await alice.next_message(is_groupchat(room, f"h{i}")),
                                          room))
            # history_length 5 caps what a joiner gets; maxstanzas limits it further.
            p = await join(bob, room, "Bob", history="<history maxstanzas='3'/>")
            assert "110" in codes(p)
            got = [await bob.next_message(is_groupchat(room, f"h{i}")) for i in (4, 5, 6)]
            for m, uid in zip(got, ids[4:]):
                assert m.xml.find(q(NS_DELAY, "delay")) is not None
                assert room_stanza_id(m, room) == uid
            await bob.next_message(lambda m: m.xml.find(q(NS_CLIENT, "subject")) is not None)
            assert not [m for m in await bob.quiet("messages") if is_groupchat(room)(m)]
    run(scenario())


def test_offline_member_finds_mention_in_archive(server, accounts):
    a, b = accounts(server, "rna", "rnb")
    room = new_room("mention")
    ref = (f"<reference xmlns='{NS_REFERENCE}' type='mention' begin='0' end='3' "
           f"uri='xmpp:{b}@localhost'/>")

    async def scenario():
        async with online(server, a, PASSWORD) as alice:
            await create(alice, room, "Alice", logging=True, members_only=True,
                         persistent=True)
            r = await alice.iq_xml(f"<iq type='set' to='{room}'><query xmlns='{NS_MUC}#admin'>"
                                   f"<item affiliation='member' jid='{b}@localhost'/></query></iq>")
            assert r["type"] == "result"
            groupchat(alice, room, "Bob, look at this", ref)
            live = await alice.next_message(is_groupchat(room, "Bob, look at this"))
            uid = room_stanza_id(live, room)
        # Bob was offline the whole time: the room's archive has it, reference intact.
        async with online(server, b, PASSWORD) as bob:
            reply, _, results = await mam(bob, room)
            assert reply["type"] == "result", reply
            hit = [m for u, m, _ in results if u == uid]
            assert hit, results
            r = hit[0].find(q(NS_REFERENCE, "reference"))
            assert r is not None
            assert (r.get("type"), r.get("begin"), r.get("end"), r.get("uri")) == \
                ("mention", "0", "3", f"xmpp:{b}@localhost")
            assert body_of(hit[0]) == "Bob, look at this"
    run(scenario())


def config_values(reply) -> dict:
    x = reply.xml.find(f"{q(NS_OWNER, 'query')}/{q(NS_DATA, 'x')}")
    return {f.get("var"): [v.text for v in f.findall(q(NS_DATA, "value"))]
            for f in x.findall(q(NS_DATA, "field"))}


def test_rooms_survive_a_restart(make_server):
    srv = make_server(accounts={u: PASSWORD for u in ("ra", "rb", "rc")})
    room = new_room("durable")

    async def before():
        async with online(srv, "ra", PASSWORD) as alice:
            await create(alice, room, "Alice", persistent=True, logging=True,
                         members_only=True, name="Durable Room")
            r = await alice.iq_xml(f"<iq type='set' to='{room}'><query xmlns='{NS_MUC}#admin'>"
                                   f"<item affiliation='member' jid='rb@localhost'/>"
                                   f"<item affiliation='outcast' jid='rc@localhost'/>"
                                   f"</query></iq>")
            assert r["type"] == "result"
            ids = []
            for i in range(3):
                groupchat(alice, room, f"before restart {i}")
                ids.append(room_stanza_id(
                    await alice.next_message(is_groupchat(room, f"before restart {i}")), room))
            return ids

    ids = run(before())
    srv.restart()

    async def after():
        async with online(srv, "ra", PASSWORD) as alice, online(srv, "rb", PASSWORD) as bob, \
                online(srv, "rc", PASSWORD) as carol:
            cfg = config_values(await alice.iq_xml(f"<iq type='get' to='{room}'>"
                                                   f"<query xmlns='{NS_OWNER}'/></iq>"))
            assert cfg["muc#roomconfig_roomname"] == ["Durable Room"]
            assert cfg["muc#roomconfig_membersonly"][0] in ("1", "true")
            assert cfg["muc#roomconfig_enablelogging"][0] in ("1", "true")
            r = await alice.iq_xml(f"<iq type='get' to='{room}'><query xmlns='{NS_MUC}#admin'>"
                                   f"<item affiliation='member'/></query></iq>")
            members = [i.get("jid") for i in r.xml.iter(q(f"{NS_MUC}#admin", "item"))]
            assert members == ["rb@localhost"]
            assert error_of(await join(carol, room, "Carol")) == "forbidden"
            # The archive, and history on join served from it.
            _, _, results = await mam(bob, room)
            assert [u for u, _, _ in results] == ids
            p = await join(bob, room, "Bob", history="<history maxstanzas='2'/>")
            assert "110" in codes(p)
            for i in (1, 2):
                m = await bob.next_message(is_groupchat(room, f"before restart {i}"))
                assert room_stanza_id(m, room) == ids[i]
            # The owner is still the owner.
            p = await join(alice, room, "Alice")
            assert p.xml.find(f"{{{NS_MUC}#user}}x/{{{NS_MUC}#user}}item").get("affiliation") \
                == "owner"
    run(after())


def test_recreated_temporary_room_starts_with_an_empty_archive(server, accounts):
    a, b = accounts(server, "rta", "rtb")
    room = new_room("ephemeral")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob:
            await create(alice, room, "Alice", logging=True)
            groupchat(alice, room, "from the first room")
            await alice.next_message(is_groupchat(room, "from the first room"))
            _, _, results = await mam(alice, room)
            assert len(results) == 1
            # The last occupant leaves: the temporary room is gone (§10.1.3)...
            alice.send_raw(f"<presence to='{room}/Alice' type='unavailable'/>")
            await alice.next_presence(lambda p: frm(p) == f"{room}/Alice"
                                      and p.xml.get("type") == "unavailable")
            # ...and whoever creates a room of that name does not read the old one's log.
            await create(bob, room, "Bob", logging=True)
            reply, _, results = await mam(bob, room)
            assert reply["type"] == "result"
            assert results == [], [body_of(m) for _, m, _ in results]
    run(scenario())
