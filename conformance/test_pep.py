"""XEP-0163 PEP on the XEP-0060 subset, driven by slixmpp's pubsub plugins
(xep_0060, xep_0163, xep_0115, xep_0084, xep_0223, xep_0402): publish with
publish-options, retrieval, retraction, access models, notifications filtered
by XEP-0115 caps, the last item on coming online, max_items, bookmarks,
avatars and persistence across a restart."""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET

import pytest

from slixmpp.plugins.xep_0004.stanza import Form
from slixmpp.xmlstream import ElementBase

from conftest import PASSWORD
from xmpp_client import (Session, befriend, bare, error_condition, get_roster, presence, q,
                         roster_push_for, run)

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_AVATAR_META = "urn:xmpp:avatar:metadata"
NS_AVATAR_DATA = "urn:xmpp:avatar:data"
NODE = "urn:example:pep-test"
OTHER = "urn:example:pep-other"
PEP_PLUGINS = ("xep_0060", "xep_0163", "xep_0115", "xep_0084", "xep_0223", "xep_0402")


def pep_session(server, user: str, interests=(), resource: str = "pep") -> Session:
    """A session with the pubsub plugins; `interests` become `<node>+notify` in its caps.

    The resource is fixed: slixmpp files the caps it computes before connecting under the
    JID it had then, and a server-assigned resource would not find them."""
    s = Session(server, user, PASSWORD, resource=resource)
    for p in PEP_PLUGINS:
        s.xmpp.register_plugin(p)
    for ns in interests:
        s.xmpp["xep_0163"].add_interest(ns)
    return s


class Entry(ElementBase):
    """A test payload: <entry xmlns=NODE>text</entry>."""
    namespace = NODE
    name = "entry"
    plugin_attrib = "pep_test_entry"
    interfaces: set = set()


def entry(text: str) -> Entry:
    e = Entry()
    e.xml.text = text
    return e


def payload(text: str) -> ET.Element:
    return entry(text).xml


def options(form_type: str = "publish-options", **fields) -> Form:
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden",
                   value=f"http://jabber.org/protocol/pubsub#{form_type}")
    for k, v in fields.items():
        form.add_field(var=f"pubsub#{k}", value=v)
    return form


async def publish(s: Session, node: str, text: str, item_id=None, **opts):
    """Publish to our own PEP service; returns the reply stanza (result or error)."""
    iq = s.xmpp["xep_0060"].publish(None, node, id=item_id, payload=payload(text),
                                   options=options(**opts) if opts else None)
    return await s.iq_wrap(iq)


async def items(s: Session, owner: str, node: str, **kw):
    return await s.iq_wrap(s.xmpp["xep_0060"].get_items(owner, node, **kw))


def item_texts(reply) -> list[str]:
    found = reply.xml.findall(f".//{q(NS_PUBSUB, 'item')}")
    return [(i.find(q(NODE, "entry")).text if i.find(q(NODE, "entry")) is not None else None)
            for i in found]


def pubsub_error(reply) -> tuple[str | None, str | None]:
    err = reply.xml.find(q("jabber:client", "error"))
    app = None
    if err is not None:
        for child in err:
            if child.tag.startswith("{" + NS_ERRORS + "}"):
                app = child.tag.split("}", 1)[1]
    return error_condition(reply.xml), app


def event_items(node: str, text: str | None = None):
    """Predicate: a PEP event message with an item (of `text`) for `node`."""
    def match(msg) -> bool:
        ev = msg.xml.find(q(NS_EVENT, "event"))
        if ev is None:
            return False
        its = ev.find(q(NS_EVENT, "items"))
        if its is None or its.get("node") != node:
            return False
        if text is None:
            return True
        return any(e.text == text for e in its.iter(q(NODE, "entry")))
    return match


async def _iq_wrap(self, fut):
    """Await a slixmpp plugin call's IQ future; return the reply, error or not."""
    from slixmpp.exceptions import IqError, IqTimeout
    try:
        return await fut
    except IqError as e:
        return e.iq
    except IqTimeout:
        raise AssertionError("no reply to pubsub IQ") from None


Session.iq_wrap = _iq_wrap


async def connect(*sessions: Session) -> None:
    for s in sessions:
        await s.connect()
        # Settle the caps (the interests' update runs in the background) before presence.
        await s.xmpp["xep_0115"].update_caps(s.jid, broadcast=False)


async def disconnect(*sessions: Session) -> None:
    for s in sessions:
        await s.disconnect()


# ---------------------------------------------------------------------------


def test_account_advertises_pep(server, accounts):
    (a,) = accounts(server, "pepdisco")

    async def body():
        s = pep_session(server, a)
        await connect(s)
        try:
            info = await s.xmpp["xep_0030"].get_info(jid=bare(s.jid))
            ids = info["disco_info"]["identities"]
            feats = info["disco_info"]["features"]
            assert any(i[0] == "pubsub" and i[1] == "pep" for i in ids), ids
            for f in ("publish", "publish-options", "auto-create", "retrieve-items",
                      "retract-items", "access-presence", "access-open",
                      "access-whitelist", "filtered-notifications", "last-published"):
                assert f"{NS_PUBSUB}#{f}" in feats, f
        finally:
            await disconnect(s)
    run(body())


def test_publish_retrieve_retract(server, accounts):
    (a,) = accounts(server, "peppub")

    async def body():
        s = pep_session(server, a)
        await connect(s)
        try:
            r = await publish(s, NODE, "one", item_id="i1", max_items="10")
            assert r["type"] == "result", r
            r = await publish(s, NODE, "two", max_items="10")
            assert r["type"] == "result", r
            generated = r.xml.find(f".//{q(NS_PUBSUB, 'item')}").get("id")
            assert generated, "the service generates an item id when none is given"
            assert item_texts(await items(s, bare(s.jid), NODE)) == ["one", "two"]
            assert item_texts(await items(s, bare(s.jid), NODE, item_ids=["i1"])) == ["one"]
            assert item_texts(await items(s, bare(s.jid), NODE, max_items=1)) == ["two"]
            r = await s.iq_wrap(s.xmpp["xep_0060"].retract(bare(s.jid), NODE, "i1"))
            assert r["type"] == "result", r
            assert item_texts(await items(s, bare(s.jid), NODE)) == ["two"]
            r = await s.iq_wrap(s.xmpp["xep_0060"].retract(bare(s.jid), NODE, "i1"))
            assert error_condition(r.xml) == "item-not-found"
            r = await items(s, bare(s.jid), "urn:example:missing")
            assert error_condition(r.xml) == "item-not-found"
            r = await s.iq_wrap(s.xmpp["xep_0060"].purge(bare(s.jid), NODE))
            assert r["type"] == "result", r
            assert item_texts(await items(s, bare(s.jid), NODE)) == []
            r = await s.iq_wrap(s.xmpp["xep_0060"].delete_node(bare(s.jid), NODE))
            assert r["type"] == "result", r
            assert error_condition((await items(s, bare(s.jid), NODE)).xml) == "item-not-found"
        finally:
            await disconnect(s)
    run(body())


def test_publish_options_conflict_and_configure(server, accounts):
    (a,) = accounts(server, "pepopts")

    async def body():
        s = pep_session(server, a)
        await connect(s)
        try:
            assert (await publish(s, NODE, "x", access_model="open"))["type"] == "result"
            r = await publish(s, NODE, "y", access_model="whitelist")
            assert pubsub_error(r) == ("conflict", "precondition-not-met"), r
            # An unknown field is rejected too (XEP-0060 §7.1.5).
            r = await publish(s, NODE, "y", title="no such option here")
            assert pubsub_error(r) == ("conflict", "precondition-not-met"), r
            # Reconfigure the node, then the same precondition holds.
            cfg = await s.iq_wrap(s.xmpp["xep_0060"].get_node_config(bare(s.jid), NODE))
            form = cfg["pubsub_owner"]["configure"]["form"]
            assert form.get_fields()["pubsub#access_model"]["value"] == "open"
            r = await s.iq_wrap(s.xmpp["xep_0060"].set_node_config(
                bare(s.jid), NODE, options("node_config", access_model="whitelist")))
            assert r["type"] == "result", r
            assert (await publish(s, NODE, "y", access_model="whitelist"))["type"] == "result"
        finally:
            await disconnect(s)
    run(body())


def test_access_models(server, accounts):
    a, b = accounts(server, "pepowner", "pepreader")

    async def body():
        alice, bob = pep_session(server, a), pep_session(server, b)
        await connect(alice, bob)
        try:
            owner = bare(alice.jid)
            await publish(alice, "urn:example:presence", "p")
            await publish(alice, "urn:example:open", "o", access_model="open")
            await publish(alice, "urn:example:private", "w", access_model="whitelist")
            assert pubsub_error(await items(bob, owner, "urn:example:presence")) == \
                ("not-authorized", "presence-subscription-required")
            assert item_texts(await items(bob, owner, "urn:example:open")) == ["o"]
            assert pubsub_error(await items(bob, owner, "urn:example:private")) == \
                ("not-allowed", "closed-node")
            # A non-owner cannot publish.
            r = await bob.iq_wrap(bob.xmpp["xep_0060"].publish(
                owner, "urn:example:open", payload=payload("evil")))
            assert error_condition(r.xml) == "forbidden"
            await befriend(alice, bob)
            assert item_texts(await items(bob, owner, "urn:example:presence")) == ["p"]
            assert pubsub_error(await items(bob, owner, "urn:example:private")) == \
                ("not-allowed", "closed-node")
            # disco#items lists only the nodes the requester may read (XEP-0163 §7).
            def nodes(reply):
                return sorted(i[1] for i in reply["disco_items"]["items"])
            seen = await bob.xmpp["xep_0030"].get_items(jid=owner)
            assert nodes(seen) == ["urn:example:open", "urn:example:presence"]
            own = await alice.xmpp["xep_0030"].get_items(jid=owner)
            assert nodes(own) == ["urn:example:open", "urn:example:presence",
                                  "urn:example:private"]
        finally:
            await disconnect(alice, bob)
    run(body())


def test_notifications_follow_caps_and_last_item_on_login(server, accounts):
    a, b, c = accounts(server, "pepnotify", "pepfan", "pepbystander")

    async def body():
        alice = pep_session(server, a)
        bob = pep_session(server, b)
        carol = pep_session(server, c)
        await connect(alice, bob, carol)
        await befriend(alice, bob)
        await befriend(alice, carol)
        await disconnect(bob, carol)
        try:
            assert (await publish(alice, NODE, "first"))["type"] == "result"
            assert (await publish(alice, OTHER, "other"))["type"] == "result"
            # Bob wants NODE, Carol wants OTHER only: on login each gets the last item of
            # what it asked for (XEP-0163 §6.2), which also shows its caps were resolved.
            bob = pep_session(server, b, interests=[NODE])
            carol = pep_session(server, c, interests=[OTHER])
            await connect(bob, carol)
            bob.send_presence()
            carol.send_presence()
            last = await bob.next_message(event_items(NODE, "first"))
            # A stored item, stamped with its publication time (XEP-0203).
            assert last.xml.find(q("urn:xmpp:delay", "delay")) is not None
            await carol.next_message(event_items(OTHER, "other"))
            assert await bob.quiet("messages", event_items(OTHER)) == []
            # A new publication reaches Bob (+notify) and not Carol.
            assert (await publish(alice, NODE, "second", item_id="current"))["type"] == "result"
            msg = await bob.next_message(event_items(NODE, "second"))
            assert msg.xml.find(q("urn:xmpp:delay", "delay")) is None
            assert msg["type"] == "headline"
            assert msg["from"] == bare(alice.jid)
            assert await carol.quiet("messages", event_items(NODE)) == []
            # Retraction with notify='true' is announced too.
            iq = alice.xmpp["xep_0060"].retract(bare(alice.jid), NODE, "current", notify=True)
            assert (await alice.iq_wrap(iq))["type"] == "result"
            await bob.next_message(lambda m: m.xml.find(
                f".//{q(NS_EVENT, 'retract')}") is not None)
        finally:
            await disconnect(alice, bob, carol)
    run(body())


def test_owner_resources_get_their_own_events(server, accounts):
    (a,) = accounts(server, "pepself")

    async def body():
        phone = pep_session(server, a, resource="phone")
        laptop = pep_session(server, a, interests=[NODE], resource="laptop")
        await connect(phone)
        phone.send_presence()
        assert (await publish(phone, NODE, "mine"))["type"] == "result"
        await connect(laptop)
        try:
            laptop.send_presence()
            await laptop.next_message(event_items(NODE, "mine"))
            assert (await publish(phone, NODE, "again"))["type"] == "result"
            await laptop.next_message(event_items(NODE, "again"))
        finally:
            await disconnect(phone, laptop)
    run(body())


@pytest.mark.parametrize("preapprove", [False, True], ids=["approved", "preapproved"])
def test_last_item_sent_when_subscription_is_approved(server, accounts, preapprove):
    a, b = accounts(server, "pepapprover", "pepasker")

    async def body():
        alice = pep_session(server, a)
        bob = pep_session(server, b, interests=[NODE])
        await connect(alice, bob)
        try:
            await get_roster(alice)
            await get_roster(bob)
            alice.send_presence()
            assert (await publish(alice, NODE, "for subscribers"))["type"] == "result"
            # Bob's own last item on login shows the server knows his caps.
            assert (await publish(bob, NODE, "bob's own"))["type"] == "result"
            bob.send_presence()
            await bob.next_message(event_items(NODE, "bob's own"))
            if preapprove:
                # RFC 6121 §3.4: approved in advance, the server answers for Alice.
                alice.send_presence(pto=bare(bob.jid), ptype="subscribed")
                await alice.next_roster_push(roster_push_for(bare(bob.jid)))
                bob.send_presence(pto=bare(alice.jid), ptype="subscribe")
            else:
                bob.send_presence(pto=bare(alice.jid), ptype="subscribe")
                await alice.next_presence(presence(bare(bob.jid), "subscribe"))
                alice.send_presence(pto=bare(bob.jid), ptype="subscribed")
            msg = await bob.next_message(event_items(NODE, "for subscribers"))
            assert msg["from"] == bare(alice.jid)
        finally:
            await disconnect(alice, bob)
    run(body())


def test_caps_not_matching_their_hash_apply_to_that_client_only(server, accounts):
    """XEP-0115 §5.4: a disco#info that does not hash to the advertised `ver` must not be
    cached for everyone claiming that `ver`; the client itself still gets what its real
    features ask for (as Prosody does: Profanity 0.13 advertises a stale hash)."""
    a, b = accounts(server, "pepcapsowner", "pepliar")
    bogus = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="

    async def claim(session, info_from):
        caps = session.xmpp["xep_0115"]
        info = await info_from.xmpp["xep_0030"].get_info(jid=info_from.jid, local=True)
        await session.xmpp["xep_0030"].set_info(jid=session.jid,
                                                node=f"{caps.caps_node}#{bogus}", info=info)
        session.send_raw(f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1'"
                         f" node='{caps.caps_node}' ver='{bogus}'/></presence>")

    async def body():
        alice, bob = pep_session(server, a), pep_session(server, b)
        await connect(alice, bob)
        await befriend(alice, bob)
        await disconnect(bob)
        liar = pep_session(server, b, interests=[NODE], resource="liar")
        other = pep_session(server, b, resource="other")   # no interest in NODE
        try:
            assert (await publish(alice, NODE, "first"))["type"] == "result"
            await connect(liar)
            # The liar answers disco#info for node#bogus with its real features (which ask
            # for NODE and do not hash to `bogus`): it gets the notifications it asks for.
            await claim(liar, liar)
            await liar.next_message(event_items(NODE, "first"))
            # Another resource claiming the same `bogus` with features without NODE+notify
            # is asked for its own: the liar's features were not cached under `bogus`.
            await connect(other)
            await claim(other, other)
            assert (await publish(alice, NODE, "second"))["type"] == "result"
            await liar.next_message(event_items(NODE, "second"))
            assert await other.quiet("messages", event_items(NODE)) == []
        finally:
            await disconnect(alice, liar, other)
    run(body())


def test_explicit_subscription_to_an_open_node(server, accounts):
    a, b = accounts(server, "pepopenowner", "pepstranger")

    async def body():
        alice, bob = pep_session(server, a), pep_session(server, b)
        await connect(alice, bob)
        try:
            owner = bare(alice.jid)
            alice.send_presence()
            bob.send_presence()
            assert (await publish(alice, NODE, "open 1", access_model="open"))["type"] == "result"
            assert (await publish(alice, OTHER, "closed"))["type"] == "result"
            ps = bob.xmpp["xep_0060"]
            # Not a contact: presence-model nodes refuse, open ones accept (XEP-0060 §6.1).
            r = await bob.iq_wrap(ps.subscribe(owner, OTHER))
            assert pubsub_error(r) == ("not-authorized", "presence-subscription-required")
            r = await bob.iq_wrap(ps.subscribe(owner, NODE))
            assert r["type"] == "result", r
            assert r["pubsub"]["subscription"]["subscription"] == "subscribed"
            await bob.next_message(event_items(NODE, "open 1"))   # the last item on subscribing
            assert (await publish(alice, NODE, "open 2", access_model="open"))["type"] == "result"
            await bob.next_message(event_items(NODE, "open 2"))
            r = await bob.iq_wrap(ps.unsubscribe(owner, NODE))
            assert r["type"] == "result", r
            assert (await publish(alice, NODE, "open 3", access_model="open"))["type"] == "result"
            assert await bob.quiet("messages", event_items(NODE)) == []
            r = await bob.iq_wrap(ps.unsubscribe(owner, NODE))
            assert pubsub_error(r) == ("unexpected-request", "not-subscribed")
        finally:
            await disconnect(alice, bob)
    run(body())


def test_max_items(server, accounts):
    (a,) = accounts(server, "pepmax")

    async def body():
        s = pep_session(server, a)
        await connect(s)
        try:
            for i in range(4):
                r = await publish(s, NODE, f"n{i}", item_id=f"id{i}", max_items="2")
                assert r["type"] == "result", r
            assert item_texts(await items(s, bare(s.jid), NODE)) == ["n2", "n3"]
        finally:
            await disconnect(s)
    run(body())


def test_limits_payload_size_and_node_count(make_server, accounts):
    srv = make_server(extra_sections={"pep": {"max_payload_bytes": 2000,
                                              "max_nodes_per_user": 2}})
    (a,) = accounts(srv, "peplimits")

    async def body():
        s = pep_session(srv, a)
        await connect(s)
        try:
            r = await publish(s, NODE, "x" * 3000)
            assert pubsub_error(r) == ("not-acceptable", "payload-too-big"), r
            assert (await publish(s, NODE, "small"))["type"] == "result"
            assert (await publish(s, OTHER, "small"))["type"] == "result"
            r = await publish(s, "urn:example:third", "small")
            assert error_condition(r.xml) == "not-allowed", r
            # Existing nodes still take items.
            assert (await publish(s, NODE, "again"))["type"] == "result"
        finally:
            await disconnect(s)
    run(body())


def test_bookmarks_xep0402(server, accounts):
    (a,) = accounts(server, "pepbookmarks")
    room = "room@conference.example.org"

    async def body():
        s = pep_session(server, a)
        await connect(s)
        try:
            from slixmpp.plugins.xep_0060.stanza import Item
            conf = Item()["conference"]
            conf["name"] = "The Room"
            conf["autojoin"] = True
            conf["nick"] = "me"
            r = await s.iq_wrap(s.xmpp["xep_0060"].publish(
                None, "urn:xmpp:bookmarks:1", id=room, payload=conf.xml,
                options=options(persist_items="true", max_items="max",
                                send_last_published_item="never",
                                access_model="whitelist")))
            assert r["type"] == "result", r
            got = await items(s, bare(s.jid), "urn:xmpp:bookmarks:1")
            its = list(got["pubsub"]["items"])
            assert [i["id"] for i in its] == [room]
            assert its[0]["conference"]["name"] == "The Room"
            assert its[0]["conference"]["autojoin"] is True
        finally:
            await disconnect(s)
    run(body())


def test_bookmarks_compat_with_private_storage(server, accounts):
    """XEP-0402 §5.3 (#compat): a XEP-0048 client using XEP-0049 private storage and a
    XEP-0402 client see the same bookmarks, kept once in the PEP node."""
    (a,) = accounts(server, "pepbmcompat")
    room, other = "compat@conference.example.org", "other@conference.example.org"

    async def body():
        s = pep_session(server, a)
        s.xmpp.register_plugin("xep_0049")
        s.xmpp.register_plugin("xep_0048")
        await connect(s)
        try:
            info = await s.xmpp["xep_0030"].get_info(jid=bare(s.jid))
            assert "urn:xmpp:bookmarks:1#compat" in info["disco_info"]["features"]
            from slixmpp.plugins.xep_0060.stanza import Item
            conf = Item()["conference"]
            conf["name"] = "Compat Room"
            conf["autojoin"] = True
            conf["nick"] = "me"
            r = await s.iq_wrap(s.xmpp["xep_0060"].publish(
                None, "urn:xmpp:bookmarks:1", id=room, payload=conf.xml,
                options=options(persist_items="true", max_items="max",
                                send_last_published_item="never",
                                access_model="whitelist")))
            assert r["type"] == "result", r
            # The XEP-0402 item, read through XEP-0049 as XEP-0048.
            r = await s.iq_wrap(s.xmpp["xep_0048"].get_bookmarks(method="xep_0049"))
            assert r["type"] == "result", r
            confs = list(r["private"]["bookmarks"]["conferences"])
            assert [(c["jid"], c["name"], c["nick"], c["autojoin"]) for c in confs] == [
                (room, "Compat Room", "me", True)], confs
            # A XEP-0048 write replaces the set: the PEP node follows.
            from slixmpp.plugins.xep_0048.stanza import Bookmarks
            bm = Bookmarks()
            bm.add_conference(other, "nick2", name="Other", autojoin=False)
            r = await s.iq_wrap(s.xmpp["xep_0048"].set_bookmarks(bm, method="xep_0049"))
            assert r["type"] == "result", r
            got = await items(s, bare(s.jid), "urn:xmpp:bookmarks:1")
            its = list(got["pubsub"]["items"])
            assert [i["id"] for i in its] == [other], its
            assert its[0]["conference"]["name"] == "Other"
            assert its[0]["conference"]["nick"] == "nick2"
        finally:
            await disconnect(s)
    run(body())


def test_avatar_xep0084(server, accounts):
    a, b = accounts(server, "pepavatar", "pepviewer")
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8

    async def body():
        alice, bob = pep_session(server, a), pep_session(server, b)
        await connect(alice, bob)
        try:
            await befriend(alice, bob)
            av = alice.xmpp["xep_0084"]
            r = await alice.iq_wrap(av.publish_avatar(data))
            assert r["type"] == "result", r
            avatar_id = hashlib.sha1(data).hexdigest()
            r = await alice.iq_wrap(av.publish_avatar_metadata(
                [{"id": avatar_id, "type": "image/png", "bytes": len(data)}]))
            assert r["type"] == "result", r
            meta = await items(bob, bare(alice.jid), "urn:xmpp:avatar:metadata")
            info = meta.xml.find(f".//{q(NS_AVATAR_META, 'info')}")
            assert info.get("id") == avatar_id
            assert info.get("bytes") == str(len(data))
            got = await bob.iq_wrap(bob.xmpp["xep_0084"].retrieve_avatar(
                bare(alice.jid), avatar_id))
            b64 = got.xml.find(f".//{q(NS_AVATAR_DATA, 'data')}").text
            assert base64.b64decode(b64) == data
        finally:
            await disconnect(alice, bob)
    run(body())


def test_private_storage_persists_across_restart(make_server, accounts):
    srv = make_server()
    (a,) = accounts(srv, "pepprivate")

    async def store():
        s = pep_session(srv, a)
        await connect(s)
        try:
            r = await s.iq_wrap(s.xmpp["xep_0223"].store(entry("secret"), node=NODE,
                                                         id="current"))
            assert r["type"] == "result", r
        finally:
            await disconnect(s)

    async def load():
        s = pep_session(srv, a)
        await connect(s)
        try:
            got = await s.iq_wrap(s.xmpp["xep_0223"].retrieve(NODE))
            assert item_texts(got) == ["secret"]
            cfg = await s.iq_wrap(s.xmpp["xep_0060"].get_node_config(bare(s.jid), NODE))
            fields = cfg["pubsub_owner"]["configure"]["form"].get_fields()
            assert fields["pubsub#access_model"]["value"] == "whitelist"
            assert fields["pubsub#persist_items"]["value"] is True
        finally:
            await disconnect(s)

    run(store())
    srv.restart()
    run(load())
