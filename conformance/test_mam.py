"""XEP-0313 message archives (with XEP-0059 paging, XEP-0359 stanza ids, XEP-0441
preferences), driven by slixmpp's xep_0313 plugin and, where the plugin has no API for
something (flipped pages, before-id, prefs), by raw stanzas."""

import asyncio
import datetime
import xml.etree.ElementTree as ET

from conftest import PASSWORD
from xmpp_client import NS_CLIENT, bare, error_condition, get_roster, online, q, run, set_roster_item

NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_SID = "urn:xmpp:sid:0"
NS_FWD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"
NS_DATA = "jabber:x:data"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"

_qid = iter(range(1, 1_000_000))


def stanza_ids(msg) -> list[ET.Element]:
    return msg.xml.findall(q(NS_SID, "stanza-id"))


def our_stanza_id(msg, owner: str) -> str:
    ids = [s for s in stanza_ids(msg) if s.get("by") == owner]
    assert len(ids) == 1, f"expected one stanza-id by {owner}: {msg}"
    return ids[0].get("id")


def form_xml(fields: dict) -> str:
    out = [f"<x xmlns='{NS_DATA}' type='submit'>",
           f"<field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value></field>"]
    for var, value in fields.items():
        values = value if isinstance(value, list) else [value]
        out.append(f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values)
                   + "</field>")
    out.append("</x>")
    return "".join(out)


async def mam(session, fields=None, max=None, after=None, before=None, flip=False, to=None):
    """Raw XEP-0313 query. Returns (iq reply, fin element or None, [(uid, forwarded message)])."""
    qid = f"q{next(_qid)}"
    rsm = ""
    if max is not None or after is not None or before is not None:
        rsm = f"<set xmlns='{NS_RSM}'>"
        if max is not None:
            rsm += f"<max>{max}</max>"
        if after is not None:
            rsm += f"<after>{after}</after>"
        if before is not None:
            rsm += f"<before>{before}</before>" if before else "<before/>"
        rsm += "</set>"
    to_attr = f" to='{to}'" if to else ""
    reply = await session.iq_xml(
        f"<iq type='set'{to_attr}><query xmlns='{NS_MAM}' queryid='{qid}'>"
        f"{form_xml(fields or {})}{rsm}{'<flip-page/>' if flip else ''}</query></iq>")

    def is_result(m):
        r = m.xml.find(q(NS_MAM, "result"))
        return r is not None and r.get("queryid") == qid

    results = []
    for m in session.messages.drain(is_result):
        r = m.xml.find(q(NS_MAM, "result"))
        fwd = r.find(q(NS_FWD, "forwarded"))
        assert fwd is not None and fwd.find(q(NS_DELAY, "delay")) is not None, \
            f"result without <forwarded/> and <delay/>: {m}"
        results.append((r.get("id"), fwd.find(q(NS_CLIENT, "message"))))
    return reply, reply.xml.find(q(NS_MAM, "fin")), results


def rsm_of(fin):
    s = fin.find(q(NS_RSM, "set"))
    first = s.find(q(NS_RSM, "first"))
    last = s.find(q(NS_RSM, "last"))
    return {
        "first": first.text if first is not None else None,
        "last": last.text if last is not None else None,
        "count": int(s.find(q(NS_RSM, "count")).text),
        "complete": fin.get("complete") in ("true", "1"),
    }


def bodies(results):
    return [m.find(q(NS_CLIENT, "body")).text for _, m in results]


async def send_and_receive(a, b, texts, to=None, **kw):
    """a sends each text to b (bare JID unless `to`), b receives them; returns b's copies."""
    got = []
    for t in texts:
        a.send_message(to or bare(b.jid), t, **kw)
        got.append(await b.next_message(lambda m, t=t: m["body"] == t))
    return got


async def available(session):
    """Initial presence, waited for: bare-JID messages reach available resources only."""
    session.send_presence()
    await session.next_presence(lambda p: p.xml.get("from") == str(session.jid))


def use_plugin(session):
    session.xmpp.register_plugin("xep_0313")
    return session.xmpp["xep_0313"]


# --------------------------------------------------------------------------------------------

def test_account_disco_advertises_mam_and_sid(server, accounts):
    (a_name,) = accounts(server, "mda")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a:
            reply = await a.iq_xml(f"<iq type='get' to='{a_name}@localhost'>"
                                   f"<query xmlns='{NS_DISCO_INFO}'/></iq>")
            feats = {f.get("var") for f in reply.xml.iter(q(NS_DISCO_INFO, "feature"))}
            for f in (NS_MAM, NS_MAM + "#extended", NS_SID):
                assert f in feats, f"{f} missing from the account's disco#info: {feats}"
    run(scenario())


def test_archive_both_directions_with_stanza_id(server, accounts):
    a_name, b_name = accounts(server, "mba", "mbb")

    async def scenario():
        async with online(server, a_name, PASSWORD, resource="ra") as a, \
                online(server, b_name, PASSWORD, resource="rb") as b:
            await available(b)
            a.xmpp.send_message(mto=f"{b_name}@localhost", mbody="archived hello", mtype="chat")
            got = await b.next_message(lambda m: m["body"] == "archived hello")
            sid = our_stanza_id(got, f"{b_name}@localhost")

            # The recipient's archive, through slixmpp's plugin.
            plugin = use_plugin(b)
            res = await plugin.retrieve(with_jid=f"{a_name}@localhost", rsm={"max": 10})
            results = res["mam"]["results"]
            assert len(results) == 1, f"recipient archive: {results}"
            r = results[0]["mam_result"]
            assert r["id"] == sid, "archive UID must equal the delivered stanza-id"
            fwd = r["forwarded"]["stanza"]
            assert fwd["body"] == "archived hello"
            assert str(fwd["from"]) == f"{a_name}@localhost/ra"
            assert r["forwarded"]["delay"]["stamp"] is not None

            # The sender's archive has it too (outgoing), under its own UID.
            _, fin, out = await mam(a, {"with": f"{b_name}@localhost"})
            assert bodies(out) == ["archived hello"]
            assert out[0][0] != sid
            assert out[0][1].get("to") == f"{b_name}@localhost"
            assert rsm_of(fin)["complete"]
    run(scenario())


def test_paging_forwards_and_backwards(server, accounts):
    a_name, b_name = accounts(server, "mpa", "mpb")
    texts = [f"page msg {i}" for i in range(25)]

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, online(server, b_name, PASSWORD) as b:
            await available(b)
            await send_and_receive(a, b, texts)

            # Forwards, max=10: 10 + 10 + 5, complete only at the end.
            seen, after, pages = [], None, []
            for _ in range(3):
                _, fin, res = await mam(b, max=10, after=after)
                r = rsm_of(fin)
                pages.append((len(res), r["complete"]))
                assert r["count"] == 25
                assert r["first"] == res[0][0] and r["last"] == res[-1][0]
                seen += bodies(res)
                after = r["last"]
            assert pages == [(10, False), (10, False), (5, True)], pages
            assert seen == texts

            # Backwards from the end: <before/>, then before=<first>.
            seen, before, pages = [], "", []
            for _ in range(3):
                _, fin, res = await mam(b, max=10, before=before)
                r = rsm_of(fin)
                pages.append((len(res), r["complete"]))
                seen = bodies(res) + seen
                before = r["first"]
            assert pages == [(10, False), (10, False), (5, True)], pages
            assert seen == texts

            # Past the end: an empty page with the count only.
            _, fin, res = await mam(b, max=10, after=after)
            assert res == [] and rsm_of(fin)["count"] == 25 and rsm_of(fin)["first"] is None

            # slixmpp's iterator pages through everything, forwards and in reverse.
            plugin = use_plugin(b)
            fwd = [m["mam_result"]["forwarded"]["stanza"]["body"]
                   async for m in plugin.iterate(rsm={"max": 10})]
            assert fwd == texts
            back = [m["mam_result"]["forwarded"]["stanza"]["body"]
                    async for m in plugin.iterate(rsm={"max": 10}, reverse=True)]
            assert back == texts[::-1]
    run(scenario())


def test_filters_ids_and_flip(server, accounts):
    a_name, b_name, c_name = accounts(server, "mfa", "mfb", "mfc")

    async def scenario():
        async with online(server, a_name, PASSWORD, resource="phone") as a, \
                online(server, b_name, PASSWORD) as b, \
                online(server, c_name, PASSWORD, resource="desk") as c:
            await available(a)
            await available(b)
            await send_and_receive(a, b, ["a1", "a2"])
            await send_and_receive(c, b, ["c1"])
            # Millisecond stamps: keep the marker strictly between the messages'.
            await asyncio.sleep(0.05)
            marker = datetime.datetime.now(datetime.timezone.utc)
            await asyncio.sleep(0.05)
            await send_and_receive(a, b, ["a3"])
            b.send_message(f"{a_name}@localhost/phone", "b to a phone")
            await a.next_message(lambda m: m["body"] == "b to a phone")
            b.send_message(f"{a_name}@localhost", "b to a bare")
            await a.next_message(lambda m: m["body"] == "b to a bare")

            _, fin, everything = await mam(b)
            assert bodies(everything) == ["a1", "a2", "c1", "a3", "b to a phone", "b to a bare"]
            uid = {bodies([r])[0]: r[0] for r in everything}

            # with: a bare JID matches every resource; a full JID only that one.
            _, _, res = await mam(b, {"with": f"{a_name}@localhost"})
            assert bodies(res) == ["a1", "a2", "a3", "b to a phone", "b to a bare"]
            _, _, res = await mam(b, {"with": f"{a_name}@localhost/phone"})
            assert bodies(res) == ["a1", "a2", "a3", "b to a phone"]
            _, _, res = await mam(b, {"with": f"{c_name}@localhost"})
            assert bodies(res) == ["c1"]

            # start/end (XEP-0082).
            stamp = marker.strftime("%Y-%m-%dT%H:%M:%S.") + f"{marker.microsecond // 1000:03d}Z"
            _, _, res = await mam(b, {"start": stamp})
            assert bodies(res)[0] == "a3" and "c1" not in bodies(res)
            _, _, res = await mam(b, {"end": stamp})
            assert bodies(res) == ["a1", "a2", "c1"]
            _, _, res = await mam(b, {"end": "2000-01-01T00:00:00Z"})
            assert res == []

            # #extended: after-id, before-id, ids, flip-page.
            _, _, res = await mam(b, {"after-id": uid["a2"], "before-id": uid["b to a phone"]})
            assert bodies(res) == ["c1", "a3"]
            _, _, res = await mam(b, {"ids": [uid["c1"], uid["a1"]]})
            assert bodies(res) == ["a1", "c1"]
            _, fin, res = await mam(b, {"with": f"{a_name}@localhost"}, max=2, flip=True)
            assert bodies(res) == ["a2", "a1"], "flip-page reverses the order within the page"
            assert rsm_of(fin)["first"] == uid["a1"]

            # Unknown UIDs are item-not-found, wherever they appear.
            for kw in ({"fields": {"after-id": "nope"}}, {"fields": {"ids": ["nope"]}},
                       {"after": "nope"}, {"before": "nope"}):
                reply, _, _ = await mam(b, **kw)
                assert error_condition(reply.xml) == "item-not-found", (kw, reply)

            # Someone else's UID is not in this archive.
            _, _, a_all = await mam(a)
            reply, _, _ = await mam(b, {"ids": [a_all[0][0]]})
            assert error_condition(reply.xml) == "item-not-found"

            # Metadata and form discovery, through the plugin.
            plugin = use_plugin(b)
            meta = await plugin.get_archive_metadata()
            assert meta["mam_metadata"]["start"]["id"] == uid["a1"]
            assert meta["mam_metadata"]["end"]["id"] == uid["b to a bare"]
            form = await plugin.get_fields()
            fields = {f["var"] for f in form["fields"]}
            for var in ("FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"):
                assert var in fields, f"form field {var} missing: {form}"
    run(scenario())


def test_malformed_and_foreign_queries(server, accounts):
    a_name, b_name = accounts(server, "mxa", "mxb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a:
            for fields in ({"start": "yesterday"}, {"unknown-field": "x"}, {"with": "@@"}):
                reply, _, _ = await mam(a, fields)
                assert error_condition(reply.xml) in ("bad-request", "jid-malformed"), reply
            reply = await a.iq_xml(f"<iq type='set'><query xmlns='{NS_MAM}'>"
                                   f"<set xmlns='{NS_RSM}'><max>many</max></set></query></iq>")
            assert error_condition(reply.xml) == "bad-request"
            reply, _, _ = await mam(a, to=f"{b_name}@localhost")
            assert error_condition(reply.xml) == "forbidden", "another user's archive"
            # An empty archive: empty metadata, a complete empty page.
            meta = await a.iq_xml(f"<iq type='get'><metadata xmlns='{NS_MAM}'/></iq>")
            assert list(meta.xml.find(q(NS_MAM, "metadata"))) == []
            _, fin, res = await mam(a)
            assert res == [] and rsm_of(fin) == {"first": None, "last": None,
                                                 "count": 0, "complete": True}
    run(scenario())


def test_max_is_limited_by_config(make_server, accounts):
    srv = make_server(extra_sections={"mam": {"max_page_size": 3, "default_page_size": 2}})
    a_name, b_name = accounts(srv, "mla", "mlb")

    async def scenario():
        async with online(srv, a_name, PASSWORD) as a, online(srv, b_name, PASSWORD) as b:
            await available(b)
            await send_and_receive(a, b, [f"m{i}" for i in range(5)])
            _, fin, res = await mam(b, max=100)
            assert len(res) == 3 and not rsm_of(fin)["complete"]
            _, fin, res = await mam(b)
            assert len(res) == 2 and rsm_of(fin)["count"] == 5
    run(scenario())


def test_prefs_never_and_always(server, accounts):
    a_name, b_name, c_name = accounts(server, "mna", "mnb", "mnc")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, online(server, b_name, PASSWORD) as b, \
                online(server, c_name, PASSWORD) as c:
            await available(b)
            reply = await b.iq_xml(f"<iq type='get'><prefs xmlns='{NS_MAM}'/></iq>")
            assert reply.xml.find(q(NS_MAM, "prefs")).get("default") == "always"

            reply = await b.iq_xml(
                f"<iq type='set'><prefs xmlns='{NS_MAM}' default='never'>"
                f"<always><jid>{c_name}@localhost</jid></always><never/></prefs></iq>")
            prefs = reply.xml.find(q(NS_MAM, "prefs"))
            assert prefs is not None and prefs.get("default") == "never", reply
            reply = await b.iq_xml(f"<iq type='get'><prefs xmlns='{NS_MAM}'/></iq>")
            prefs = reply.xml.find(q(NS_MAM, "prefs"))
            assert [j.text for j in prefs.find(q(NS_MAM, "always"))] == [f"{c_name}@localhost"]

            (from_a,) = await send_and_receive(a, b, ["not archived by b"])
            assert stanza_ids(from_a) == [], "no stanza-id for a message b does not archive"
            (from_c,) = await send_and_receive(c, b, ["archived by b"])
            sid = our_stanza_id(from_c, f"{b_name}@localhost")
            _, _, res = await mam(b)
            assert bodies(res) == ["archived by b"] and res[0][0] == sid
            # The sender's preferences are its own: a still archives its outgoing copy.
            _, _, res = await mam(a)
            assert bodies(res) == ["not archived by b"]

            # a: never archive with b (the never list), roster default otherwise.
            await a.iq_xml(f"<iq type='set'><prefs xmlns='{NS_MAM}' default='roster'>"
                           f"<always/><never><jid>{b_name}@localhost</jid></never></prefs></iq>")
            await get_roster(c)
            await set_roster_item(a, f"{c_name}@localhost", name="C")
            await available(c)
            await available(a)
            a.send_message(f"{b_name}@localhost", "a never archives with b")
            await b.next_message(lambda m: m["body"] == "a never archives with b")
            a.send_message(f"{c_name}@localhost", "c is in a's roster")
            await c.next_message(lambda m: m["body"] == "c is in a's roster")
            await set_roster_item(a, f"{c_name}@localhost", remove=True)
            a.send_message(f"{c_name}@localhost", "c left a's roster")
            await c.next_message(lambda m: m["body"] == "c left a's roster")
            _, _, res = await mam(a)
            assert bodies(res) == ["not archived by b", "c is in a's roster"]
    run(scenario())


def test_hints_and_types_not_archived(server, accounts):
    a_name, b_name = accounts(server, "mha", "mhb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, online(server, b_name, PASSWORD) as b:
            await available(b)
            to = f"{b_name}@localhost"
            for i, extra in enumerate(["<no-store xmlns='urn:xmpp:hints'/>",
                                       "<no-permanent-store xmlns='urn:xmpp:hints'/>"]):
                a.send_raw(f"<message to='{to}' type='chat'><body>hint {i}</body>{extra}</message>")
                got = await b.next_message(lambda m, i=i: m["body"] == f"hint {i}")
                assert stanza_ids(got) == []
            a.send_raw(f"<message to='{to}' type='headline'><body>news</body></message>")
            await b.next_message(lambda m: m["body"] == "news")
            a.send_raw(f"<message to='{to}' type='chat'><active "
                       f"xmlns='http://jabber.org/protocol/chatstates'/></message>")
            await b.next_message(lambda m: m.xml.get("type") == "chat" and not m["body"])
            # A normal message (no type) with a body is archived.
            a.send_raw(f"<message to='{to}'><body>plain normal</body></message>")
            await b.next_message(lambda m: m["body"] == "plain normal")
            _, _, res = await mam(b)
            assert bodies(res) == ["plain normal"]
            _, _, res = await mam(a)
            assert bodies(res) == ["plain normal"]
    run(scenario())


def test_offline_message_archived(server, accounts):
    a_name, b_name = accounts(server, "moa", "mob")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a:
            a.send_message(f"{b_name}@localhost", "while you were away")
            assert await a.quiet("messages", lambda m: m["type"] == "error") == []
        async with online(server, b_name, PASSWORD) as b:
            # The archive has it before the offline copy is even delivered...
            _, _, res = await mam(b)
            assert bodies(res) == ["while you were away"]
            await available(b)
            got = await b.next_message(lambda m: m["body"] == "while you were away")
            # ...and the offline copy carries the same stanza-id.
            assert our_stanza_id(got, f"{b_name}@localhost") == res[0][0]
    run(scenario())


def test_spoofed_stanza_id_is_stripped(server, accounts):
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, online(server, b_name, PASSWORD) as b:
            await available(b)
            to = f"{b_name}@localhost"
            other = f"<stanza-id xmlns='{NS_SID}' by='elsewhere@example.net' id='keep'/>"
            for kind in ("chat", "headline"):
                a.send_raw(f"<message to='{to}' type='{kind}'><body>spoof {kind}</body>"
                           f"<stanza-id xmlns='{NS_SID}' by='{to}' id='forged'/>{other}"
                           f"<origin-id xmlns='{NS_SID}' id='orig-{kind}'/></message>")
                got = await b.next_message(lambda m, k=kind: m["body"] == f"spoof {k}")
                ours = [s.get("id") for s in stanza_ids(got) if s.get("by") == to]
                assert "forged" not in ours, f"spoofed stanza-id delivered: {got}"
                assert len(ours) == (1 if kind == "chat" else 0), got
                assert [s.get("id") for s in stanza_ids(got)
                        if s.get("by") == "elsewhere@example.net"] == ["keep"]
                assert got.xml.find(q(NS_SID, "origin-id")).get("id") == f"orig-{kind}"
            _, _, res = await mam(b)
            assert len(res) == 1
            stored = res[0][1]
            assert [s.get("id") for s in stored.findall(q(NS_SID, "stanza-id"))] == ["keep"]
            assert stored.find(q(NS_SID, "origin-id")).get("id") == "orig-chat"
    run(scenario())


def test_message_to_self_archived_once(server, accounts):
    (a_name,) = accounts(server, "mma")

    async def scenario():
        async with online(server, a_name, PASSWORD, resource="one") as a1, \
                online(server, a_name, PASSWORD, resource="two") as a2:
            await available(a2)
            a1.send_message(f"{a_name}@localhost/two", "note to self")
            got = await a2.next_message(lambda m: m["body"] == "note to self")
            sid = our_stanza_id(got, f"{a_name}@localhost")
            _, _, res = await mam(a1, {"with": f"{a_name}@localhost"})
            assert [r[0] for r in res] == [sid]
    run(scenario())


def test_archive_and_prefs_survive_restart(make_server, accounts):
    """Messages queued for the archive are written before a clean exit; preferences are
    loaded again at startup."""
    srv = make_server()
    a_name, b_name = accounts(srv, "mra", "mrb")

    async def before():
        async with online(srv, a_name, PASSWORD) as a, online(srv, b_name, PASSWORD) as b:
            await available(b)
            await send_and_receive(a, b, ["before restart"])
            reply = await b.iq_xml(f"<iq type='set'><prefs xmlns='{NS_MAM}' default='never'>"
                                   f"<always/><never/></prefs></iq>")
            assert reply["type"] == "result"

    async def after():
        async with online(srv, a_name, PASSWORD) as a, online(srv, b_name, PASSWORD) as b:
            await available(b)
            (got,) = await send_and_receive(a, b, ["after restart"])
            assert stanza_ids(got) == [], "b's 'never' preference was forgotten"
            _, _, res = await mam(b)
            assert bodies(res) == ["before restart"]
            _, _, res = await mam(a)
            assert bodies(res) == ["before restart", "after restart"]

    run(before())
    srv.restart()
    run(after())
