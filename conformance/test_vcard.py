"""XEP-0054 vcard-temp and XEP-0153 vCard-based avatars, through slixmpp's plugins."""

import base64
import contextlib
import hashlib

from slixmpp.exceptions import IqError

from conftest import PASSWORD
from xmpp_client import Session, error_condition, q, run

NS_VCARD = "vcard-temp"
NS_INFO = "http://jabber.org/protocol/disco#info"

# A small PNG-like payload; the server treats PHOTO/BINVAL as opaque base64.
AVATAR = bytes(range(256)) * 4


@contextlib.asynccontextmanager
async def online_with(server, user, *plugins):
    session = Session(server, user, PASSWORD)
    for plugin in plugins:
        session.xmpp.register_plugin(plugin)
    await session.connect()
    try:
        yield session
    finally:
        await session.disconnect()


async def set_vcard(session, **fields):
    vcard = session.xmpp["xep_0054"].make_vcard()
    for key, value in fields.items():
        vcard[key] = value
    await session.xmpp["xep_0054"].publish_vcard(vcard)


async def get_vcard(session, jid):
    """The vCard IQ reply (result or error) for a bare JID, sent over the wire."""
    try:
        return await session.xmpp["xep_0054"].get_vcard(jid, cached=False, local=False)
    except IqError as e:
        return e.iq


def test_vcard_advertised(server):
    async def scenario():
        async with online_with(server, "alice", "xep_0054") as s:
            reply = await s.iq_xml(f"<iq type='get' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
            features = {f.get("var") for f in reply.xml.iter(q(NS_INFO, "feature"))}
            assert NS_VCARD in features
    run(scenario())


def test_set_and_get_own_and_others_vcard(server, accounts):
    a_name, b_name = accounts(server, "vca", "vcb")

    async def scenario():
        async with online_with(server, a_name, "xep_0054") as a, \
                online_with(server, b_name, "xep_0054") as b:
            # Nothing set yet: the owner gets an empty vCard (XEP-0054 §3.1 allows it).
            empty = await get_vcard(a, f"{a_name}@localhost")
            assert empty["type"] == "result", empty
            assert len(empty.xml.find(q(NS_VCARD, "vCard"))) == 0
            await set_vcard(a, FN="Alice Example", NICKNAME="ally")
            own = await get_vcard(a, f"{a_name}@localhost")
            assert own["vcard_temp"]["FN"] == "Alice Example"
            assert own["vcard_temp"]["NICKNAME"] == ["ally"]   # slixmpp: a list
            # Another user reads it; the answer comes from the account's bare JID.
            other = await get_vcard(b, f"{a_name}@localhost")
            assert other["type"] == "result", other
            assert other["from"].bare == f"{a_name}@localhost"
            assert other["vcard_temp"]["FN"] == "Alice Example"
            # A set replaces the whole vCard.
            await set_vcard(a, FN="Alice Replaced")
            again = await get_vcard(b, f"{a_name}@localhost")
            assert again["vcard_temp"]["FN"] == "Alice Replaced"
            assert not again["vcard_temp"]["NICKNAME"], "the old NICKNAME survived a replace"
    run(scenario())


def test_missing_vcard_of_others_is_service_unavailable(server, accounts):
    """XEP-0054 1.3 §3.3: the same error for no vCard and for no account."""
    a_name, b_name = accounts(server, "vcc", "vcd")

    async def scenario():
        async with online_with(server, a_name, "xep_0054") as a:
            for jid in (f"{b_name}@localhost", "nobody-here@localhost"):
                reply = await get_vcard(a, jid)
                assert reply["type"] == "error", reply
                assert error_condition(reply.xml) == "service-unavailable", reply
    run(scenario())


def test_cannot_set_someone_elses_vcard(server, accounts):
    a_name, b_name = accounts(server, "vce", "vcf")

    async def scenario():
        async with online_with(server, a_name, "xep_0054") as a:
            reply = await a.iq_xml(f"<iq type='set' to='{b_name}@localhost'>"
                                   f"<vCard xmlns='{NS_VCARD}'><FN>Mallory</FN></vCard></iq>")
            assert error_condition(reply.xml) == "forbidden", reply
            check = await get_vcard(a, f"{b_name}@localhost")
            assert error_condition(check.xml) == "service-unavailable", check
    run(scenario())


def test_vcard_size_limit(make_server, accounts):
    srv = make_server(extra_sections={"vcard": {"max_bytes": 2048}})
    (name,) = accounts(srv, "vcg")

    async def scenario():
        async with online_with(srv, name, "xep_0054") as s:
            await set_vcard(s, FN="small enough")
            big = s.xmpp["xep_0054"].make_vcard()
            big["FN"] = "too big"
            big["DESC"] = "x" * 4096
            try:
                await s.xmpp["xep_0054"].publish_vcard(big)
                raise AssertionError("a vCard over vcard.max_bytes was accepted")
            except IqError as e:
                assert e.iq["error"]["condition"] == "not-acceptable", e.iq
            kept = await get_vcard(s, f"{name}@localhost")
            assert kept["vcard_temp"]["FN"] == "small enough", "a refused set changed the vCard"
    run(scenario())


def test_vcard_avatar_persists_across_restart(make_server, accounts):
    """XEP-0153: slixmpp's avatar setter stores PHOTO in the vCard; it survives a restart and
    others read back the same bytes (so the same SHA-1 the presence hash announces)."""
    srv = make_server()
    a_name, b_name = accounts(srv, "vch", "vci")

    async def publish():
        async with online_with(srv, a_name, "xep_0054", "xep_0153") as a:
            await a.xmpp["xep_0153"].set_avatar(avatar=AVATAR, mtype="image/png")

    async def read():
        async with online_with(srv, b_name, "xep_0054") as b:
            reply = await get_vcard(b, f"{a_name}@localhost")
            assert reply["type"] == "result", reply
            photo = reply["vcard_temp"]["PHOTO"]
            assert photo["TYPE"] == "image/png"
            assert photo["BINVAL"] == AVATAR
            binval = reply.xml.find(f"{q(NS_VCARD, 'vCard')}/{q(NS_VCARD, 'PHOTO')}/"
                                    f"{q(NS_VCARD, 'BINVAL')}").text
            digest = hashlib.sha1(base64.b64decode("".join(binval.split()))).hexdigest()
            assert digest == hashlib.sha1(AVATAR).hexdigest()

    run(publish())
    srv.restart()
    run(read())
