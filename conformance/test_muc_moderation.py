"""XEP-0045 moderation (§8 moderator, §9 admin, §10 owner use cases), XEP-0425 message
moderation and XEP-0424 retraction in rooms, room destruction, mediated (§7.8.2) and
XEP-0249 direct invitations; driven by slixmpp's xep_0045 plugin and raw stanzas."""

import asyncio

from slixmpp.exceptions import IqError

from conftest import PASSWORD
from mucmod_util import (NS_ADMIN, NS_MODERATE, NS_MUC, NS_OCCUPANT_ID, NS_OWNER, NS_RETRACT,
                         NS_USER, admin_list, admin_set, body_of, codes, create, error_of, frm,
                         groupchat, is_groupchat, item, join, mam, new_room, room_stanza_id)
from xmpp_client import NS_CLIENT, online, q, run


def muc_plugin(s):
    s.xmpp.register_plugin("xep_0045")
    return s.xmpp["xep_0045"]


async def iq_error(coro) -> str:
    """Await a slixmpp IQ call that must fail; return its error condition."""
    try:
        await coro
    except IqError as e:
        return e.iq["error"]["condition"]
    raise AssertionError("the request unexpectedly succeeded")


def unavailable_from(jid: str):
    return lambda p: frm(p) == jid and p.xml.get("type") == "unavailable"


def test_kick_with_reason(server, accounts):
    a, b = accounts(server, "kka", "kkb")
    room = new_room("kick")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob:
            await create(alice, room, "Alice")
            assert "110" in codes(await join(bob, room, "Bob"))
            await muc_plugin(alice).set_role(room, "Bob", "none", reason="Be nice")
            own = await bob.next_presence(unavailable_from(f"{room}/Bob"))
            assert {"307", "110"} <= codes(own), own
            assert item(own).get("role") == "none"
            assert item(own).find(q(NS_USER, "reason")).text == "Be nice"
            seen = await alice.next_presence(unavailable_from(f"{room}/Bob"))
            assert "307" in codes(seen) and "110" not in codes(seen)
            # A kick is not a ban: Bob may come back.
            assert "110" in codes(await join(bob, room, "Bob"))
    run(scenario())


def test_ban_and_banned_user_cannot_rejoin(server, accounts):
    a, b = accounts(server, "bna", "bnb")
    room = new_room("ban")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob:
            await create(alice, room, "Alice")
            await join(bob, room, "Bob")
            await muc_plugin(alice).set_affiliation(room, "outcast", jid=f"{b}@localhost",
                                                    reason="Spam")
            own = await bob.next_presence(unavailable_from(f"{room}/Bob"))
            assert {"301", "110"} <= codes(own), own
            assert item(own).get("affiliation") == "outcast"
            assert "301" in codes(await alice.next_presence(unavailable_from(f"{room}/Bob")))
            again = await join(bob, room, "Bob2")
            assert error_of(again) == "forbidden", again
            outcasts = await muc_plugin(alice).get_affiliation_list(room, "outcast")
            assert [str(j) for j in outcasts] == [f"{b}@localhost"]
            # Lifting the ban lets Bob in again.
            await muc_plugin(alice).set_affiliation(room, "none", jid=f"{b}@localhost")
            assert "110" in codes(await join(bob, room, "Bob"))
    run(scenario())


def test_participant_cannot_kick_and_admin_cannot_ban_owner(server, accounts):
    a, b, c = accounts(server, "pra", "prb", "prc")
    room = new_room("priv")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob, \
                online(server, c, PASSWORD) as carol:
            await create(alice, room, "Alice")
            await join(bob, room, "Bob")
            await join(carol, room, "Carol")
            # A participant cannot kick: forbidden.
            assert await iq_error(muc_plugin(carol).set_role(room, "Bob", "none")) == "forbidden"
            # Nor read the ban list or change affiliations.
            r, _ = await admin_list(carol, room, "affiliation='outcast'")
            assert error_of(r) == "forbidden"
            r = await admin_set(carol, room, f"<item affiliation='member' jid='{b}@localhost'/>")
            assert error_of(r) == "forbidden"
            # Bob becomes admin (and so moderator).
            await muc_plugin(alice).set_affiliation(room, "admin", jid=f"{b}@localhost")
            p = await bob.next_presence(lambda p: frm(p) == f"{room}/Bob"
                                        and item(p) is not None
                                        and item(p).get("affiliation") == "admin")
            assert item(p).get("role") == "moderator"
            # An admin cannot ban an owner: not-allowed; nor kick one.
            r = await admin_set(bob, room, f"<item affiliation='outcast' jid='{a}@localhost'/>")
            assert error_of(r) == "not-allowed", r
            assert await iq_error(muc_plugin(bob).set_role(room, "Alice", "none")) \
                == "not-allowed"
            # Only owners grant admin, and an admin cannot ban himself.
            r = await admin_set(bob, room, f"<item affiliation='admin' jid='{c}@localhost'/>")
            assert error_of(r) == "forbidden"
            r = await admin_set(bob, room, f"<item affiliation='outcast' jid='{b}@localhost'/>")
            assert error_of(r) == "conflict"
            # The admin may kick a participant, and ban a none-affiliated user.
            await muc_plugin(bob).set_role(room, "Carol", "none")
            assert "307" in codes(await carol.next_presence(unavailable_from(f"{room}/Carol")))
            # Owner and admin lists: the owner reads them; the admin of a semi-anonymous
            # room may not read the owner list.
            owners = await muc_plugin(alice).get_affiliation_list(room, "owner")
            admins = await muc_plugin(alice).get_affiliation_list(room, "admin")
            assert [str(j) for j in owners] == [f"{a}@localhost"]
            assert [str(j) for j in admins] == [f"{b}@localhost"]
            r, _ = await admin_list(bob, room, "affiliation='owner'")
            assert error_of(r) == "forbidden"
            # The last owner cannot step down.
            r = await admin_set(alice, room, f"<item affiliation='member' jid='{a}@localhost'/>")
            assert error_of(r) == "conflict"
            # A set that mixes an allowed and a refused item applies nothing.
            r = await admin_set(bob, room,
                                f"<item affiliation='member' jid='x@localhost'/>"
                                f"<item affiliation='outcast' jid='{a}@localhost'/>")
            assert error_of(r) == "not-allowed"
            members = await muc_plugin(alice).get_affiliation_list(room, "member")
            assert members == []
    run(scenario())


def test_voice_in_a_moderated_room(server, accounts):
    a, b = accounts(server, "vca", "vcb")
    room = new_room("voice")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob:
            await create(alice, room, "Alice", moderated=True)
            own = await join(bob, room, "Bob")
            assert item(own).get("role") == "visitor"
            groupchat(bob, room, "can I speak?")
            err = await bob.next_message(lambda m: m.xml.get("type") == "error")
            assert error_of(err) == "forbidden"
            # Voice granted: Bob's presence says participant, and he speaks.
            await muc_plugin(alice).set_role(room, "Bob", "participant")
            p = await bob.next_presence(lambda p: frm(p) == f"{room}/Bob"
                                        and item(p).get("role") == "participant")
            assert "110" in codes(p)
            voiced = await muc_plugin(alice).get_roles_list(room, "participant")
            assert voiced == ["Bob"]
            groupchat(bob, room, "thanks")
            await alice.next_message(is_groupchat(room, "thanks"))
            # Muted again.
            await muc_plugin(alice).set_role(room, "Bob", "visitor")
            await bob.next_presence(lambda p: frm(p) == f"{room}/Bob"
                                    and item(p).get("role") == "visitor")
            groupchat(bob, room, "hello?")
            err = await bob.next_message(lambda m: m.xml.get("type") == "error")
            assert error_of(err) == "forbidden"
            # The owner's own voice cannot be revoked by anyone.
            r = await admin_set(alice, room, "<item role='visitor' nick='Alice'/>")
            assert error_of(r) == "not-allowed", r
    run(scenario())


def test_member_list_and_members_only_removal(server, accounts):
    a, b, c, d = accounts(server, "mla", "mlb", "mlc", "mld")
    room = new_room("members")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob, \
                online(server, d, PASSWORD) as dave:
            await create(alice, room, "Alice", members_only=True)
            m = muc_plugin(alice)
            await m.send_affiliation_list(room, [(f"{b}@localhost", "member"),
                                                 (f"{c}@localhost", "member")])
            members = sorted(str(j) for j in await m.get_affiliation_list(room, "member"))
            assert members == [f"{b}@localhost", f"{c}@localhost"]
            # A non-member cannot enter; a member can.
            refused = await join(dave, room, "Dave")
            assert error_of(refused) == "registration-required", refused
            assert "110" in codes(await join(bob, room, "Bob"))
            # Removing Bob from the member list removes him from the room (321).
            await m.set_affiliation(room, "none", jid=f"{b}@localhost")
            own = await bob.next_presence(unavailable_from(f"{room}/Bob"))
            assert {"321", "110"} <= codes(own), own
            assert "321" in codes(await alice.next_presence(unavailable_from(f"{room}/Bob")))
            members = [str(j) for j in await m.get_affiliation_list(room, "member")]
            assert members == [f"{c}@localhost"]
            assert error_of(await join(bob, room, "Bob")) == "registration-required"
    run(scenario())


def test_message_moderation_leaves_a_tombstone(server, accounts):
    a, b = accounts(server, "moa", "mob")
    room = new_room("moderate")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob:
            await create(alice, room, "Alice", logging=True)
            await join(bob, room, "Bob")
            groupchat(bob, room, "buy potions")
            live = await alice.next_message(is_groupchat(room, "buy potions"))
            uid = room_stanza_id(live, room)
            # A participant may not moderate.
            r = await bob.iq_xml(
                f"<iq type='set' to='{room}'><moderate xmlns='{NS_MODERATE}' id='{uid}'>"
                f"<retract xmlns='{NS_RETRACT}'/></moderate></iq>")
            assert error_of(r) == "forbidden"
            r = await alice.iq_xml(
                f"<iq type='set' to='{room}'><moderate xmlns='{NS_MODERATE}' id='{uid}'>"
                f"<retract xmlns='{NS_RETRACT}'/><reason>spam</reason></moderate></iq>")
            assert r["type"] == "result", r
            for s in (alice, bob):
                ann = await s.next_message(lambda m: frm(m) == room
                                           and m.xml.find(q(NS_RETRACT, "retract")) is not None)
                retract = ann.xml.find(q(NS_RETRACT, "retract"))
                assert retract.get("id") == uid
                mod = retract.find(q(NS_MODERATE, "moderated"))
                assert mod.get("by") == f"{room}/Alice"
                assert mod.find(q(NS_OCCUPANT_ID, "occupant-id")) is not None
                assert retract.find(q(NS_RETRACT, "reason")).text == "spam"
            # The archive holds a tombstone in place of the message, then the retraction.
            _, fin, results = await mam(alice, room)
            by_id = {u: m for u, m, _ in results}
            tomb = by_id[uid]
            assert body_of(tomb) is None, "the tombstone still has the body"
            retracted = tomb.find(q(NS_RETRACT, "retracted"))
            assert retracted is not None and retracted.get("stamp")
            assert retracted.find(q(NS_MODERATE, "moderated")).get("by") == f"{room}/Alice"
            assert tomb.get("from") == f"{room}/Bob"
            assert any(m.find(q(NS_RETRACT, "retract")) is not None for _, m, _ in results)
            # Unknown ids: item-not-found.
            r = await alice.iq_xml(
                f"<iq type='set' to='{room}'><moderate xmlns='{NS_MODERATE}' id='nope'>"
                f"<retract xmlns='{NS_RETRACT}'/></moderate></iq>")
            assert error_of(r) == "item-not-found"
    run(scenario())


def test_retraction_of_own_message(server, accounts):
    a, b, c, d = accounts(server, "rta", "rtb", "rtc", "rtd")
    room = new_room("retract")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob, \
                online(server, c, PASSWORD) as carol:
            await create(alice, room, "Alice", logging=True)
            await join(bob, room, "Bob")
            await join(carol, room, "Carol")
            groupchat(bob, room, "oops wrong room")
            uid = room_stanza_id(await alice.next_message(is_groupchat(room, "oops wrong room")),
                                 room)
            retract = (f"<retract xmlns='{NS_RETRACT}' id='{uid}'/>"
                       f"<fallback xmlns='urn:xmpp:fallback:0' for='{NS_RETRACT}'/>")
            # Someone else's message: forbidden, not relayed.
            carol.send_raw(f"<message to='{room}' type='groupchat' id='fake'>"
                           f"<body>retracted</body>{retract}</message>")
            err = await carol.next_message(lambda m: m.xml.get("type") == "error")
            assert error_of(err) == "forbidden"
            groupchat(bob, room, "/me retracted a message", retract, mid="rt1")
            got = await alice.next_message(lambda m: frm(m) == f"{room}/Bob"
                                           and m.xml.find(q(NS_RETRACT, "retract")) is not None)
            assert got.xml.find(q(NS_RETRACT, "retract")).get("id") == uid
            assert not [m for m in await alice.quiet("messages")
                        if m.xml.get("id") == "fake"], "a forged retraction was relayed"
            _, _, results = await mam(carol, room)
            by_id = {u: m for u, m, _ in results}
            tomb = by_id[uid]
            assert body_of(tomb) is None
            assert tomb.find(q(NS_RETRACT, "retracted")).get("id") == "rt1"
            # The retraction itself is archived (XEP-0424 §5).
            assert [m for _, m, _ in results if m.get("id") == "rt1"]
            # A later joiner's history has the tombstone, never the original text.
            async with online(server, d, PASSWORD) as dave:
                assert "110" in codes(await join(dave, room, "Dave"))
                await dave.next_message(lambda m: m.xml.find(q(NS_CLIENT, "subject")) is not None)
                history = [m for m in dave.messages.drain() if frm(m) == f"{room}/Bob"]
                assert all(body_of(m.xml) != "oops wrong room" for m in history), history
                assert any(m.xml.find(q(NS_RETRACT, "retracted")) is not None for m in history)
    run(scenario())


def test_destroy_with_alternate_venue(server, accounts):
    a, b = accounts(server, "dsa", "dsb")
    room = new_room("doomed")
    venue = new_room("venue")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob:
            await create(alice, room, "Alice", persistent=True)
            await join(bob, room, "Bob")
            # Only an owner destroys.
            r = await bob.iq_xml(f"<iq type='set' to='{room}'><query xmlns='{NS_OWNER}'>"
                                 f"<destroy/></query></iq>")
            assert error_of(r) == "forbidden"
            await muc_plugin(alice).destroy(room, reason="Moving", altroom=venue)
            for s, nick in ((bob, "Bob"), (alice, "Alice")):
                p = await s.next_presence(unavailable_from(f"{room}/{nick}"))
                d = p.xml.find(f"{q(NS_USER, 'x')}/{q(NS_USER, 'destroy')}")
                assert d is not None, p
                assert d.get("jid") == venue
                assert d.find(q(NS_USER, "reason")).text == "Moving"
            # Gone: joining again creates a fresh room.
            p = await join(bob, room, "Bob")
            assert "201" in codes(p), p
    run(scenario())


def test_mediated_invitation_and_decline(server, accounts):
    a, b, c = accounts(server, "iva", "ivb", "ivc")
    room = new_room("invite")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob, \
                online(server, c, PASSWORD) as carol:
            for s in (alice, bob, carol):
                s.send_presence()
                await s.next_presence(lambda p, s=s: frm(p) == str(s.jid))
            await create(alice, room, "Alice", members_only=True)
            muc_plugin(alice).invite(room, f"{b}@localhost", reason="Join us")
            inv = await bob.next_message(lambda m: frm(m) == room)
            i = inv.xml.find(f"{q(NS_USER, 'x')}/{q(NS_USER, 'invite')}")
            assert i is not None, inv
            assert i.get("from").split("/")[0] == f"{a}@localhost"
            assert i.find(q(NS_USER, "reason")).text == "Join us"
            # The invitee became a member of the members-only room, and gets in.
            members = [str(j) for j in await muc_plugin(alice).get_affiliation_list(room, "member")]
            assert members == [f"{b}@localhost"]
            assert "110" in codes(await join(bob, room, "Bob"))
            # A member may not invite to this room (invites are admins' here).
            bob.send_raw(f"<message to='{room}'><x xmlns='{NS_USER}'>"
                         f"<invite to='{c}@localhost'/></x></message>")
            err = await bob.next_message(lambda m: m.xml.get("type") == "error")
            assert error_of(err) == "forbidden"
            # Carol declines Alice's invitation; Alice is told.
            muc_plugin(alice).invite(room, f"{c}@localhost")
            await carol.next_message(lambda m: frm(m) == room)
            carol.send_raw(f"<message to='{room}'><x xmlns='{NS_USER}'>"
                           f"<decline to='{a}@localhost'><reason>Busy</reason></decline>"
                           f"</x></message>")
            dec = await alice.next_message(lambda m: frm(m) == room and m.xml.find(
                f"{q(NS_USER, 'x')}/{q(NS_USER, 'decline')}") is not None)
            d = dec.xml.find(f"{q(NS_USER, 'x')}/{q(NS_USER, 'decline')}")
            assert d.get("from") == f"{c}@localhost"
            assert d.find(q(NS_USER, "reason")).text == "Busy"
    run(scenario())


def test_direct_invitation_passes_through(server, accounts):
    a, b = accounts(server, "dia", "dib")
    room = new_room("direct")

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob:
            bob.send_presence()
            await bob.next_presence(lambda p: frm(p) == str(bob.jid))
            alice.send_raw(f"<message to='{b}@localhost'>"
                           f"<x xmlns='jabber:x:conference' jid='{room}' reason='Come' "
                           f"password='pw' continue='true' thread='t1'/></message>")
            m = await bob.next_message(lambda m: m.xml.find("{jabber:x:conference}x") is not None)
            x = m.xml.find("{jabber:x:conference}x")
            assert (x.get("jid"), x.get("reason"), x.get("password"), x.get("thread")) == \
                (room, "Come", "pw", "t1")
            assert frm(m).split("/")[0] == f"{a}@localhost"
    run(scenario())


def test_voice_request_approved_by_a_moderator(server, accounts):
    a, b = accounts(server, "vra", "vrb")
    room = new_room("askvoice")
    ns_data, ns_req = "jabber:x:data", "http://jabber.org/protocol/muc#request"

    def fields(x) -> dict:
        return {f.get("var"): [v.text for v in f.findall(q(ns_data, "value"))]
                for f in x.findall(q(ns_data, "field"))}

    async def scenario():
        async with online(server, a, PASSWORD) as alice, online(server, b, PASSWORD) as bob:
            await create(alice, room, "Alice", moderated=True)
            assert item(await join(bob, room, "Bob")).get("role") == "visitor"
            bob.send_raw(f"<message to='{room}'><x xmlns='{ns_data}' type='submit'>"
                         f"<field var='FORM_TYPE'><value>{ns_req}</value></field>"
                         f"<field var='muc#role'><value>participant</value></field>"
                         f"</x></message>")
            req = await alice.next_message(lambda m: frm(m) == room
                                           and m.xml.find(q(ns_data, "x")) is not None)
            form = fields(req.xml.find(q(ns_data, "x")))
            assert form["FORM_TYPE"] == [ns_req]
            assert form["muc#roomnick"] == ["Bob"]
            assert form["muc#jid"][0].split("/")[0] == f"{b}@localhost"
            # A visitor cannot approve (his own) request.
            approval = (f"<message to='{room}'><x xmlns='{ns_data}' type='submit'>"
                        f"<field var='FORM_TYPE'><value>{ns_req}</value></field>"
                        f"<field var='muc#role'><value>participant</value></field>"
                        f"<field var='muc#roomnick'><value>Bob</value></field>"
                        f"<field var='muc#request_allow'><value>true</value></field>"
                        f"</x></message>")
            bob.send_raw(approval)
            err = await bob.next_message(lambda m: m.xml.get("type") == "error")
            assert error_of(err) == "forbidden"
            alice.send_raw(approval)
            p = await bob.next_presence(lambda p: frm(p) == f"{room}/Bob"
                                        and item(p).get("role") == "participant")
            assert "110" in codes(p)
    run(scenario())
