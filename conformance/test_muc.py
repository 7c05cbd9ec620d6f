"""XEP-0045 multi-user chat at conference.localhost, with slixmpp's xep_0045 plugin and raw
stanzas where the exact protocol matters: instant and reserved rooms, the muc#roomconfig
form, joining and leaving with status codes, nick changes, several devices under one nick,
history control, subject, private messages, password/members-only/max-occupants refusals,
XEP-0421 occupant ids and XEP-0410 self-ping, and disco on the service and rooms.

Negative checks ("nothing arrived") use fences, not timers: the room handles one sender's
stanzas in order and fans out under the room's lock, so once a later groupchat message
(the fence) arrives at an occupant, anything the room sent it before is there too.
"""

import asyncio
import contextlib
import itertools
import xml.etree.ElementTree as ET

from conftest import PASSWORD
from xmpp_client import NS_CLIENT, NS_DELAY, Session, error_condition, ptype, run

MUC = "conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_OWNER = NS_MUC + "#owner"
NS_DATA = "jabber:x:data"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_OID = "urn:xmpp:occupant-id:0"
NS_REF = "urn:xmpp:reference:0"
_ids = itertools.count(1)


def new_room() -> str:
    return f"room{next(_ids)}@{MUC}"


@contextlib.asynccontextmanager
async def client(server, user, resource=None):
    s = Session(server, user, PASSWORD, resource=resource)
    s.xmpp.register_plugin("xep_0045")
    await s.connect()
    try:
        yield s
    finally:
        await s.disconnect()


def codes(p) -> set[int]:
    return {int(c.get("code")) for c in p.xml.findall(f"{{{NS_USER}}}x/{{{NS_USER}}}status")}


def item(p):
    return p.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}item")


def occupant_id(st) -> str | None:
    el = st.xml.find(f"{{{NS_OID}}}occupant-id")
    return None if el is None else el.get("id")


def body(m) -> str | None:
    b = m.xml.find(f"{{{NS_CLIENT}}}body")
    return None if b is None else b.text


def from_(st) -> str:
    return st.xml.get("from") or ""


async def join(s, room, nick, inner="", history=None):
    """Send a join; return our self-presence (110) or the error presence."""
    h = f"<history {history}/>" if history else ""
    # Tell the plugin about the room, as its own join does, so its events (set_self_nick) work.
    s.xmpp["xep_0045"].rooms[None].setdefault(room, {})
    s.xmpp["xep_0045"].our_nicks[None][room] = nick
    s.send_raw(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'>{inner}{h}</x></presence>")
    return await s.next_presence(lambda p: from_(p) == f"{room}/{nick}"
                                 and (ptype(p) == "error" or 110 in codes(p)))


async def subject(s, room):
    """The subject message that ends a join (§7.2.16)."""
    return await s.next_message(lambda m: from_(m).split("/")[0] == room
                                and m.xml.find(f"{{{NS_CLIENT}}}subject") is not None)


async def entered(s, room, nick, **kw):
    p = await join(s, room, nick, **kw)
    assert ptype(p) != "error", f"join refused: {p}"
    await subject(s, room)
    return p


def field_xml(var, *values):
    vals = "".join(f"<value>{v}</value>" for v in values)
    return f"<field var='{var}'>{vals}</field>"


async def configure(s, room, **fields):
    """Submit the config form with the given muc#roomconfig_* (or full var) fields."""
    body_ = field_xml("FORM_TYPE", "http://jabber.org/protocol/muc#roomconfig")
    for k, v in fields.items():
        var = k if k.startswith("muc#") else f"muc#roomconfig_{k}"
        body_ += field_xml(var, v)
    return await s.iq_xml(f"<iq type='set' to='{room}'><query xmlns='{NS_OWNER}'>"
                          f"<x xmlns='{NS_DATA}' type='submit'>{body_}</x></query></iq>")


async def create(s, nick="owner", **fields):
    """A new room with `s` as owner (instant when no fields), unlocked."""
    room = new_room()
    p = await join(s, room, nick)
    assert {110, 201} <= codes(p), p
    await subject(s, room)
    r = await configure(s, room, **fields)
    assert r["type"] == "result", r
    return room


async def fence(sender, room, *receivers):
    token = f"fence {next(_ids)}"
    sender.send_message(room, token, "groupchat")
    for r in receivers:
        await r.next_message(lambda m, t=token: body(m) == t)


def form_values(query):
    x = query.find(f"{{{NS_DATA}}}x")
    return {f.get("var"): [v.text or "" for v in f.findall(f"{{{NS_DATA}}}value")]
            for f in x.findall(f"{{{NS_DATA}}}field")}


# --------------------------------------------------------------------------


def test_muc_service_discovery(server):
    async def go():
        async with client(server, "alice") as a:
            items = await a.iq_xml(f"<iq type='get' to='localhost'><query xmlns='{NS_ITEMS}'/></iq>")
            jids = [i.get("jid") for i in items.xml.iter(f"{{{NS_ITEMS}}}item")]
            assert MUC in jids
            info = await a.iq_xml(f"<iq type='get' to='{MUC}'><query xmlns='{NS_INFO}'/></iq>")
            ident = info.xml.find(f".//{{{NS_INFO}}}identity")
            assert (ident.get("category"), ident.get("type")) == ("conference", "text")
            feats = {f.get("var") for f in info.xml.iter(f"{{{NS_INFO}}}feature")}
            assert {NS_MUC, NS_OID, NS_MUC + "#stable_id"} <= feats
    run(go())


def test_muc_instant_room_is_locked_until_configured(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b:
            room = new_room()
            p = await join(a, room, "Alice")
            assert {110, 201} <= codes(p)
            assert (item(p).get("affiliation"), item(p).get("role")) == ("owner", "moderator")
            await subject(a, room)
            # §10.1.1: locked, so nobody else may enter, and it is not listed.
            err = await join(b, room, "Bob")
            assert error_condition(err.xml) == "item-not-found"
            items = await a.iq_xml(f"<iq type='get' to='{MUC}'><query xmlns='{NS_ITEMS}'/></iq>")
            assert room not in [i.get("jid") for i in items.xml.iter(f"{{{NS_ITEMS}}}item")]
            # An empty submit accepts the defaults (instant room).
            r = await a.iq_xml(f"<iq type='set' to='{room}'><query xmlns='{NS_OWNER}'>"
                               f"<x xmlns='{NS_DATA}' type='submit'/></query></iq>")
            assert r["type"] == "result"
            p = await entered(b, room, "Bob")
            assert 201 not in codes(p)
            items = await a.iq_xml(f"<iq type='get' to='{MUC}'><query xmlns='{NS_ITEMS}'/></iq>")
            assert room in [i.get("jid") for i in items.xml.iter(f"{{{NS_ITEMS}}}item")]
    run(go())


def test_muc_reserved_room_config_form_round_trip(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b:
            room = new_room()
            await join(a, room, "Alice")
            await subject(a, room)
            # The plugin fetches the form; all the standard fields are there.
            form = await a.xmpp["xep_0045"].get_room_config(room)
            fields = form.get_fields()
            for var in ("roomname", "roomdesc", "persistentroom", "publicroom", "membersonly",
                        "moderatedroom", "passwordprotectedroom", "roomsecret", "maxusers",
                        "whois", "allowpm", "allowinvites", "changesubject", "enablelogging"):
                assert f"muc#roomconfig_{var}" in fields, var
            assert "muc#maxhistoryfetch" in fields
            # Non-owners may not read it.
            r = await b.iq_xml(f"<iq type='get' to='{room}'><query xmlns='{NS_OWNER}'/></iq>")
            assert error_condition(r.xml) == "forbidden"
            # Invalid values are refused (§10.2 not-acceptable), and change nothing.
            r = await configure(a, room, whois="everybody")
            assert error_condition(r.xml) == "not-acceptable"
            # Submit through the plugin.
            new = a.xmpp["xep_0004"].make_form(ftype="submit")
            new.add_field(var="FORM_TYPE", ftype="hidden",
                          value="http://jabber.org/protocol/muc#roomconfig")
            new.add_field(var="muc#roomconfig_roomname", value="The Coven")
            new.add_field(var="muc#roomconfig_roomdesc", value="Witches only")
            new.add_field(var="muc#roomconfig_whois", value="anyone")
            new.add_field(var="muc#roomconfig_moderatedroom", ftype="boolean", value=True)
            new.add_field(var="muc#roomconfig_publicroom", ftype="boolean", value=False)
            new.add_field(var="muc#maxhistoryfetch", value="5")
            await a.xmpp["xep_0045"].set_room_config(room, new)
            q = await a.iq_xml(f"<iq type='get' to='{room}'><query xmlns='{NS_OWNER}'/></iq>")
            v = form_values(q.xml.find(f"{{{NS_OWNER}}}query"))
            assert v["muc#roomconfig_roomname"] == ["The Coven"]
            assert v["muc#roomconfig_roomdesc"] == ["Witches only"]
            assert v["muc#roomconfig_whois"] == ["anyone"]
            assert v["muc#roomconfig_moderatedroom"] == ["1"]
            assert v["muc#roomconfig_publicroom"] == ["0"]
            assert v["muc#maxhistoryfetch"] == ["5"]
            # disco#info reflects it: features and the muc#roominfo form.
            info = await b.iq_xml(f"<iq type='get' to='{room}'><query xmlns='{NS_INFO}'/></iq>")
            feats = {f.get("var") for f in info.xml.iter(f"{{{NS_INFO}}}feature")}
            assert {NS_MUC, "muc_temporary", "muc_hidden", "muc_open", "muc_moderated",
                    "muc_unsecured", "muc_nonanonymous", NS_OID} <= feats
            assert info.xml.find(f".//{{{NS_INFO}}}identity").get("name") == "The Coven"
            ri = form_values(info.xml.find(f"{{{NS_INFO}}}query"))
            assert ri["FORM_TYPE"] == ["http://jabber.org/protocol/muc#roominfo"]
            assert ri["muc#roominfo_description"] == ["Witches only"]
            assert ri["muc#roominfo_occupants"] == ["1"]
            # Non-anonymous: status 100 on entering, and everyone sees real JIDs.
            p = await entered(b, room, "Bob")
            # §10.2.1: occupants hear of later changes (104, and 173 for semi-anonymous).
            assert (await configure(a, room, whois="moderators"))["type"] == "result"
            note = await b.next_message(lambda m: from_(m) == room and codes(m))
            assert codes(note) == {104, 173}
            assert (await configure(a, room, whois="anyone"))["type"] == "result"
            note = await b.next_message(lambda m: from_(m) == room and codes(m))
            assert codes(note) == {104, 172}
            assert 100 in codes(p)
            # In a moderated room a newcomer without affiliation is a visitor.
            assert item(p).get("role") == "visitor"
            seen = await b.next_presence(lambda p: from_(p) == f"{room}/Alice")
            assert item(seen).get("jid") == str(a.jid)
    run(go())


def test_muc_join_and_leave_status_codes(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b:
            room = await create(a, "Alice")
            p = await join(b, room, "Bob")
            assert codes(p) == {110}
            assert (item(p).get("affiliation"), item(p).get("role")) == ("none", "participant")
            assert occupant_id(p)
            # §7.2.3: the others' presence came before the self-presence.
            order = [from_(x) for x in b.arrivals if x.xml.tag == f"{{{NS_CLIENT}}}presence"]
            assert order.index(f"{room}/Alice") < order.index(f"{room}/Bob")
            # Semi-anonymous by default: Bob does not see Alice's real JID; Alice (a
            # moderator) sees Bob's.
            alice_seen = [x for x in b.arrivals if from_(x) == f"{room}/Alice"][0]
            assert item(alice_seen).get("jid") is None
            bob_seen = await a.next_presence(lambda p: from_(p) == f"{room}/Bob")
            assert item(bob_seen).get("jid") == str(b.jid)
            await subject(b, room)
            # Nick conflict with another user.
            async with client(server, "carol") as c:
                err = await join(c, room, "Bob")
                assert error_condition(err.xml) == "conflict"
            # Leaving: 110 to self, unavailable to the others.
            b.send_raw(f"<presence to='{room}/Bob' type='unavailable'><status>bye</status>"
                       f"</presence>")
            own = await b.next_presence(lambda p: from_(p) == f"{room}/Bob"
                                        and ptype(p) == "unavailable")
            assert 110 in codes(own)
            left = await a.next_presence(lambda p: from_(p) == f"{room}/Bob"
                                         and ptype(p) == "unavailable")
            assert item(left).get("role") == "none" and 110 not in codes(left)
            assert left.xml.find(f"{{{NS_CLIENT}}}status").text == "bye"
    run(go())


def test_muc_session_end_removes_the_occupant(server):
    async def go():
        async with client(server, "alice") as a:
            room = await create(a, "Alice")
            async with client(server, "bob") as b:
                await entered(b, room, "Bob")
            # The core sends the room an unavailable presence when Bob's session ends.
            left = await a.next_presence(lambda p: from_(p) == f"{room}/Bob"
                                         and ptype(p) == "unavailable")
            assert item(left).get("role") == "none"
    run(go())


def test_muc_nick_change(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b:
            room = await create(a, "Alice")
            await entered(b, room, "Bob")
            new = await b.xmpp["xep_0045"].set_self_nick(room, "Robert")
            assert new == "Robert"
            gone = await a.next_presence(lambda p: from_(p) == f"{room}/Bob"
                                         and ptype(p) == "unavailable")
            assert 303 in codes(gone) and item(gone).get("nick") == "Robert"
            await a.next_presence(lambda p: from_(p) == f"{room}/Robert" and ptype(p) != "unavailable")
            b.send_message(room, "as Robert", "groupchat")
            m = await a.next_message(lambda m: body(m) == "as Robert")
            assert from_(m) == f"{room}/Robert"
            # Taking someone else's nick: conflict.
            b.send_raw(f"<presence to='{room}/Alice'/>")
            err = await b.next_presence(lambda p: from_(p) == f"{room}/Alice" and ptype(p) == "error")
            assert error_condition(err.xml) == "conflict"
    run(go())


def test_muc_several_devices_under_one_nick(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob", "phone") as b1, \
                client(server, "bob", "laptop") as b2:
            room = await create(a, "Alice")
            await entered(b1, room, "Bob")
            await a.next_presence(lambda p: from_(p) == f"{room}/Bob")
            await entered(b2, room, "Bob")
            # One occupant: a message reaches both devices, each with its own 'to'.
            a.send_message(room, "to both", "groupchat")
            m1 = await b1.next_message(lambda m: body(m) == "to both")
            m2 = await b2.next_message(lambda m: body(m) == "to both")
            assert m1.xml.get("to") == str(b1.jid) and m2.xml.get("to") == str(b2.jid)
            # Private messages too.
            a.send_message(f"{room}/Bob", "private to both", "chat")
            await b1.next_message(lambda m: body(m) == "private to both")
            await b2.next_message(lambda m: body(m) == "private to both")
            # The first device leaving does not end the occupancy...
            b1.send_raw(f"<presence to='{room}/Bob' type='unavailable'/>")
            own = await b1.next_presence(lambda p: from_(p) == f"{room}/Bob"
                                         and ptype(p) == "unavailable")
            assert 110 in codes(own)
            await fence(b2, room, a)
            assert not [p for p in a.presences.items
                        if from_(p) == f"{room}/Bob" and ptype(p) == "unavailable"]
            # ...the last one does.
            b2.send_raw(f"<presence to='{room}/Bob' type='unavailable'/>")
            await a.next_presence(lambda p: from_(p) == f"{room}/Bob" and ptype(p) == "unavailable")
    run(go())


def test_muc_history_control(server):
    async def go():
        async with client(server, "alice") as a:
            room = await create(a, "Alice")
            for i in range(5):
                a.send_message(room, f"h{i}", "groupchat")
            await a.next_message(lambda m: body(m) == "h4")
            async with client(server, "bob") as b:
                # slixmpp's own join: occupants, self-presence, history, subject.
                pres, subj, occupants, hist = await b.xmpp["xep_0045"].join_muc_wait(
                    room, "Bob", maxstanzas=2, timeout=10)
                assert [body(m) for m in hist] == ["h3", "h4"]
                for m in hist:
                    d = m.xml.find(f"{{{NS_DELAY}}}delay")
                    assert d is not None and d.get("from") == room
                assert f"{room}/Alice" in [from_(p) for p in occupants]
            async with client(server, "carol") as c:
                await join(c, room, "Carol", history="seconds='3600'")
                s = await subject(c, room)
                got = [body(m) for m in c.arrivals
                       if m.xml.tag == f"{{{NS_CLIENT}}}message" and body(m)]
                assert got == [f"h{i}" for i in range(5)]
                # The subject comes after the history.
                at = next(i for i, x in enumerate(c.arrivals) if x is s)
                assert at > max(i for i, m in enumerate(c.arrivals) if body(m))
            async with client(server, "dave") as d:
                await join(d, room, "Dave", history="maxchars='0'")
                await subject(d, room)
                assert not [m for m in d.arrivals if body(m)]
    run(go())


def test_muc_subject(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b:
            room = await create(a, "Alice")
            await entered(b, room, "Bob")
            a.xmpp["xep_0045"].set_subject(room, "Potions")
            m = await b.next_message(lambda m: m.xml.find(f"{{{NS_CLIENT}}}subject") is not None)
            assert from_(m) == f"{room}/Alice"
            assert m.xml.find(f"{{{NS_CLIENT}}}subject").text == "Potions"
            # Participants may not change it unless the room allows it.
            b.send_raw(f"<message to='{room}' type='groupchat'><subject>Mine</subject></message>")
            err = await b.next_message(lambda m: m.xml.get("type") == "error")
            assert error_condition(err.xml) == "forbidden"
            async with client(server, "carol") as c:
                await join(c, room, "Carol")
                s = await subject(c, room)
                assert s.xml.find(f"{{{NS_CLIENT}}}subject").text == "Potions"
                info = await c.iq_xml(f"<iq type='get' to='{room}'><query xmlns='{NS_INFO}'/></iq>")
                assert form_values(info.xml.find(f"{{{NS_INFO}}}query"))[
                    "muc#roominfo_subject"] == ["Potions"]
            assert (await configure(a, room, changesubject="1"))["type"] == "result"
            b.send_raw(f"<message to='{room}' type='groupchat'><subject>Mine</subject></message>")
            m = await a.next_message(lambda m: from_(m) == f"{room}/Bob"
                                     and m.xml.find(f"{{{NS_CLIENT}}}subject") is not None)
            assert m.xml.find(f"{{{NS_CLIENT}}}subject").text == "Mine"
    run(go())


def test_muc_private_messages(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b:
            room = await create(a, "Alice")
            await entered(b, room, "Bob")
            b.send_message(f"{room}/Alice", "psst", "chat")
            m = await a.next_message(lambda m: body(m) == "psst")
            assert from_(m) == f"{room}/Bob" and m.xml.get("type") == "chat"
            assert m.xml.find(f"{{{NS_USER}}}x") is not None
            assert occupant_id(m)
            b.send_message(f"{room}/Nobody", "lost", "chat")
            err = await b.next_message(lambda m: m.xml.get("type") == "error")
            assert error_condition(err.xml) == "item-not-found"
            b.send_raw(f"<message to='{room}/Alice' type='groupchat'><body>x</body></message>")
            err = await b.next_message(lambda m: m.xml.get("type") == "error")
            assert error_condition(err.xml) == "bad-request"
            assert (await configure(a, room, allowpm="none"))["type"] == "result"
            b.send_message(f"{room}/Alice", "psst again", "chat")
            err = await b.next_message(lambda m: m.xml.get("type") == "error")
            assert error_condition(err.xml) == "not-allowed"
            async with client(server, "carol") as c:
                c.send_message(f"{room}/Alice", "outsider", "chat")
                err = await c.next_message(lambda m: m.xml.get("type") == "error")
                assert error_condition(err.xml) == "not-acceptable"
    run(go())


def test_muc_password_members_only_and_max_occupants(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b, \
                client(server, "carol") as c:
            room = await create(a, "Alice", passwordprotectedroom="1", roomsecret="cauldron")
            err = await join(b, room, "Bob")
            assert error_condition(err.xml) == "not-authorized"
            err = await join(b, room, "Bob", inner="<password>wrong</password>")
            assert error_condition(err.xml) == "not-authorized"
            await entered(b, room, "Bob", inner="<password>cauldron</password>")
            info = await c.iq_xml(f"<iq type='get' to='{room}'><query xmlns='{NS_INFO}'/></iq>")
            assert "muc_passwordprotected" in {f.get("var") for f in info.xml.iter(f"{{{NS_INFO}}}feature")}

            room2 = await create(a, "Alice", membersonly="1")
            err = await join(b, room2, "Bob")
            assert error_condition(err.xml) == "registration-required"

            room3 = await create(a, "Alice", maxusers="2")
            await entered(b, room3, "Bob")
            err = await join(c, room3, "Carol")
            assert error_condition(err.xml) == "service-unavailable"
    run(go())


def test_muc_occupant_ids(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b:
            room = await create(a, "Alice")
            p = await entered(b, room, "Bob")
            first = occupant_id(p)
            seen = await a.next_presence(lambda p: from_(p) == f"{room}/Bob")
            assert occupant_id(seen) == first
            # A spoofed id is replaced by the room's.
            b.send_raw(f"<message to='{room}' type='groupchat'><body>spoof</body>"
                       f"<occupant-id xmlns='{NS_OID}' id='fake'/></message>")
            m = await a.next_message(lambda m: body(m) == "spoof")
            ids = m.xml.findall(f"{{{NS_OID}}}occupant-id")
            assert [i.get("id") for i in ids] == [first]
            # Stable across a nick change and a rejoin.
            await b.xmpp["xep_0045"].set_self_nick(room, "Robert")
            b.send_raw(f"<presence to='{room}/Robert' type='unavailable'/>")
            await b.next_presence(lambda p: from_(p) == f"{room}/Robert" and ptype(p) == "unavailable")
            p = await entered(b, room, "Bobby")
            assert occupant_id(p) == first
            assert occupant_id(await join(a, room, "Alice")) != first  # presence update
    run(go())


def test_muc_self_ping(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b:
            room = await create(a, "Alice")
            r = await a.iq_xml(f"<iq type='get' to='{room}/Alice'><ping xmlns='urn:xmpp:ping'/></iq>")
            assert r["type"] == "result" and r.xml.get("from") == f"{room}/Alice"
            r = await b.iq_xml(f"<iq type='get' to='{room}/Alice'><ping xmlns='urn:xmpp:ping'/></iq>")
            assert error_condition(r.xml) == "not-acceptable"
            info = await a.iq_xml(f"<iq type='get' to='{room}'><query xmlns='{NS_INFO}'/></iq>")
            assert "http://jabber.org/protocol/muc#self-ping-optimization" in {
                f.get("var") for f in info.xml.iter(f"{{{NS_INFO}}}feature")}
    run(go())


def test_muc_iq_to_an_occupant_is_forwarded(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b:
            room = await create(a, "Alice")
            await entered(b, room, "Bob")
            # slixmpp answers XEP-0092 version queries; the reply comes back from the room.
            r = await b.iq_xml(f"<iq type='get' to='{room}/Alice'>"
                               f"<query xmlns='jabber:iq:version'/></iq>")
            assert r["type"] == "result", r
            assert r.xml.get("from") == f"{room}/Alice"
            # vCards are the user's: answered from Alice's stored vCard, from her occupant JID.
            r = await b.iq_xml(f"<iq type='get' to='{room}/Alice'><vCard xmlns='vcard-temp'/></iq>")
            assert error_condition(r.xml) == "service-unavailable"
            r = await a.iq_xml("<iq type='set'><vCard xmlns='vcard-temp'><FN>Alice A.</FN>"
                               "</vCard></iq>")
            assert r["type"] == "result"
            r = await b.iq_xml(f"<iq type='get' to='{room}/Alice'><vCard xmlns='vcard-temp'/></iq>")
            assert r["type"] == "result" and r.xml.get("from") == f"{room}/Alice"
            assert r.xml.find("{vcard-temp}vCard/{vcard-temp}FN").text == "Alice A."
    run(go())


def test_muc_groupchat_rules_and_payloads(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b, \
                client(server, "carol") as c:
            room = await create(a, "Alice", moderatedroom="1")
            await entered(b, room, "Bob")
            # Not an occupant: not-acceptable.
            c.send_message(room, "from outside", "groupchat")
            err = await c.next_message(lambda m: m.xml.get("type") == "error")
            assert error_condition(err.xml) == "not-acceptable"
            # A visitor in a moderated room cannot speak.
            b.send_message(room, "may I?", "groupchat")
            err = await b.next_message(lambda m: m.xml.get("type") == "error")
            assert error_condition(err.xml) == "forbidden"
            # References (XEP-0372) and unknown payloads arrive intact, with the client's id.
            a.send_raw(f"<message to='{room}' type='groupchat' id='ref1'><body>hi Bob</body>"
                       f"<reference xmlns='{NS_REF}' type='mention' begin='3' end='6' "
                       f"uri='xmpp:{room}/Bob'/><custom xmlns='urn:example:x'><a>1</a></custom>"
                       f"</message>")
            m = await b.next_message(lambda m: body(m) == "hi Bob")
            assert m.xml.get("id") == "ref1" and m.xml.get("to") == str(b.jid)
            assert from_(m) == f"{room}/Alice"
            ref = m.xml.find(f"{{{NS_REF}}}reference")
            assert (ref.get("type"), ref.get("begin"), ref.get("uri")) == ("mention", "3",
                                                                           f"xmpp:{room}/Bob")
            assert m.xml.find("{urn:example:x}custom/{urn:example:x}a").text == "1"
            # The sender gets its own message reflected.
            await a.next_message(lambda m: body(m) == "hi Bob")
    run(go())


def test_muc_temporary_room_goes_with_its_last_occupant(server):
    async def go():
        async with client(server, "alice") as a:
            room = await create(a, "Alice")
            a.send_raw(f"<presence to='{room}/Alice' type='unavailable'/>")
            await a.next_presence(lambda p: from_(p) == f"{room}/Alice" and ptype(p) == "unavailable")
            r = await a.iq_xml(f"<iq type='get' to='{room}'><query xmlns='{NS_INFO}'/></iq>")
            assert error_condition(r.xml) == "item-not-found"
            # A persistent one stays.
            room2 = await create(a, "Alice", persistentroom="1")
            a.send_raw(f"<presence to='{room2}/Alice' type='unavailable'/>")
            await a.next_presence(lambda p: from_(p) == f"{room2}/Alice" and ptype(p) == "unavailable")
            r = await a.iq_xml(f"<iq type='get' to='{room2}'><query xmlns='{NS_INFO}'/></iq>")
            assert r["type"] == "result"
            assert "muc_persistent" in {f.get("var") for f in r.xml.iter(f"{{{NS_INFO}}}feature")}
    run(go())


def test_muc_crowded_room_limits_presence_broadcast(make_server):
    srv = make_server({u: PASSWORD for u in ("alice", "bob", "carol", "dave")},
                      extra_sections={"muc": {"max_presence_broadcast": 2}})

    async def go():
        async with client(srv, "alice") as a, client(srv, "bob") as b, \
                client(srv, "carol") as c, client(srv, "dave") as d:
            room = await create(a, "Alice")
            await entered(b, room, "Bob")
            await entered(c, room, "Carol")   # 3 occupants now: above the limit of 2
            await a.next_presence(lambda p: from_(p) == f"{room}/Carol")
            p = await join(d, room, "Dave")
            assert ptype(p) != "error"
            await subject(d, room)
            # The moderator is told; Bob (a participant) is not.
            await a.next_presence(lambda p: from_(p) == f"{room}/Dave")
            await fence(a, room, b, d)
            assert not [x for x in b.presences.items if from_(x) == f"{room}/Dave"]
            # Dave was shown the moderators only (and himself).
            shown = {from_(x) for x in d.arrivals if x.xml.tag == f"{{{NS_CLIENT}}}presence"}
            assert shown == {f"{room}/Alice", f"{room}/Dave"}
            # Messages still reach everyone.
            d.send_message(room, "crowd", "groupchat")
            for s in (a, b, c, d):
                await s.next_message(lambda m: body(m) == "crowd")
    run(go())


def test_muc_members_only_change_removes_non_members_322(server):
    async def go():
        async with client(server, "alice") as a, client(server, "bob") as b, \
                client(server, "carol") as c:
            room = await create(a, "Alice")
            await entered(b, room, "Bob")
            await entered(c, room, "Carol")
            r = await a.iq_xml(f"<iq type='set' to='{room}'><query xmlns='{NS_MUC}#admin'>"
                               f"<item affiliation='member' jid='carol@localhost'/></query></iq>")
            assert r["type"] == "result", r
            r = await configure(a, room, membersonly="1")
            assert r["type"] == "result", r
            # §9.4 / §10.2: Bob (no affiliation) is removed with 322; Carol (member) stays.
            own = await b.next_presence(lambda p: from_(p) == f"{room}/Bob"
                                        and ptype(p) == "unavailable")
            assert {110, 322} <= codes(own), own
            seen = await a.next_presence(lambda p: from_(p) == f"{room}/Bob"
                                         and ptype(p) == "unavailable")
            assert 322 in codes(seen) and 110 not in codes(seen)
            await fence(a, room, c)
            assert not [p for p in c.presences.items
                        if from_(p) == f"{room}/Carol" and ptype(p) == "unavailable"]
    run(go())


def test_muc_service_shutdown_tells_every_occupant_332(make_server):
    srv = make_server({u: PASSWORD for u in ("alice", "bob")})

    async def go():
        async with client(srv, "alice") as a, client(srv, "bob") as b:
            room = await create(a, "Alice")
            await entered(b, room, "Bob")
            await a.next_presence(lambda p: from_(p) == f"{room}/Bob")
            # SIGTERM: the server shuts down while both are in the room.
            code = await asyncio.get_running_loop().run_in_executor(None, srv.stop)
            assert code == 0
            for s, nick in ((a, "Alice"), (b, "Bob")):
                own = await s.next_presence(lambda p, n=nick: from_(p) == f"{room}/{n}"
                                            and ptype(p) == "unavailable")
                assert codes(own) == {110, 332}, own
                assert (item(own).get("role")) == "none"
            srv.start()   # the fixture's cleanup expects a running server
    run(go())
