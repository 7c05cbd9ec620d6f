"""XEP-0398 User Avatar to vCard-Based Avatars Conversion: a XEP-0084 avatar published with
slixmpp's plugin becomes the XEP-0153 vCard PHOTO, and available presence carries its hash."""

import base64
import hashlib

from slixmpp.exceptions import IqError

from conftest import PASSWORD
from test_pep import connect, disconnect, options, pep_session
from xmpp_client import Session, befriend, bare, q, run

FEATURE = "urn:xmpp:pep-vcard-conversion:0"
NS_VCARD = "vcard-temp"
NS_UPDATE = "vcard-temp:x:update"

AVATAR = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3
AVATAR_SHA1 = hashlib.sha1(AVATAR).hexdigest()


def alice_session(server, user):
    s = pep_session(server, user)
    s.xmpp.register_plugin("xep_0054")
    return s


def bob_session(server, user):
    s = Session(server, user, PASSWORD)
    s.xmpp.register_plugin("xep_0054")
    return s


async def publish_avatar(s, data: bytes, **opts):
    """XEP-0084 §4.1/§4.2: data first (with publish-options), then metadata."""
    avatar = s.xmpp["xep_0084"]
    await avatar.publish_avatar(data, options=options(**opts) if opts else None)
    await avatar.publish_avatar_metadata(
        {"id": avatar.generate_id(data), "type": "image/png", "bytes": len(data)})


async def vcard_of(s, jid):
    try:
        reply = await s.xmpp["xep_0054"].get_vcard(jid, cached=False, local=False)
    except IqError as e:
        raise AssertionError(f"vCard fetch failed: {e.iq}") from None
    return reply.xml.find(q(NS_VCARD, "vCard"))


def photo_of(vcard):
    photo = vcard.find(q(NS_VCARD, "PHOTO"))
    if photo is None:
        return None
    binval = "".join(photo.findtext(q(NS_VCARD, "BINVAL"), "").split())
    return photo.findtext(q(NS_VCARD, "TYPE")), base64.b64decode(binval)


def update_photo(stanza):
    """The <photo/> text of a presence's vcard-temp:x:update, '' if empty, None if absent."""
    x = stanza.xml.find(q(NS_UPDATE, "x"))
    if x is None:
        return None
    p = x.find(q(NS_UPDATE, "photo"))
    return None if p is None else (p.text or "")


def from_(jid, status):
    """Available presence from `jid` with `status` (earlier presences may still be queued)."""
    return lambda st: (st.xml.get("from") == str(jid) and st.xml.get("type") is None
                       and st.xml.findtext(q("jabber:client", "status")) == status)


def test_conversion_advertised_on_account(server, accounts):
    (a,) = accounts(server, "avdisco")

    async def body():
        s = bob_session(server, a)
        await s.connect()
        try:
            info = await s.xmpp["xep_0030"].get_info(jid=bare(s.jid))
            assert FEATURE in info["disco_info"]["features"]
        finally:
            await s.disconnect()
    run(body())


def test_pep_avatar_becomes_vcard_photo_and_presence_hash(server, accounts):
    a_name, b_name = accounts(server, "ava", "avb")

    async def body():
        alice, bob = alice_session(server, a_name), bob_session(server, b_name)
        await connect(alice)
        await bob.connect()
        try:
            await befriend(alice, bob)
            # A vCard with other fields: the conversion keeps them.
            card = alice.xmpp["xep_0054"].make_vcard()
            card["FN"] = "Alice Avatar"
            await alice.xmpp["xep_0054"].publish_vcard(card)

            await publish_avatar(alice, AVATAR, access_model="open")
            vcard = await vcard_of(bob, bare(alice.jid))
            assert photo_of(vcard) == ("image/png", AVATAR)
            assert vcard.findtext(q(NS_VCARD, "FN")) == "Alice Avatar"

            # Broadcast presence without any x: the server adds the hash.
            alice.send_presence(pstatus="plain")
            got = await bob.next_presence(from_(alice.jid, "plain"))
            assert update_photo(got) == AVATAR_SHA1
            # An x without <photo/> is overwritten; a stale hash is replaced.
            alice.send_raw(f"<presence><status>x</status><x xmlns='{NS_UPDATE}'/></presence>")
            assert update_photo(await bob.next_presence(from_(alice.jid, "x"))) == AVATAR_SHA1
            alice.send_raw(f"<presence><status>old</status><x xmlns='{NS_UPDATE}'>"
                           f"<photo>{'0' * 40}</photo></x></presence>")
            assert update_photo(await bob.next_presence(from_(alice.jid, "old"))) == AVATAR_SHA1
            # An empty <photo/> (client not ready) is left alone.
            alice.send_raw(f"<presence><status>e</status><x xmlns='{NS_UPDATE}'><photo/></x>"
                           "</presence>")
            assert update_photo(await bob.next_presence(from_(alice.jid, "e"))) == ""
            # Directed presence gets the hash too (§3.3, e.g. MUC joins).
            alice.send_raw(f"<presence to='{bob.jid}'><status>d</status></presence>")
            assert update_photo(await bob.next_presence(from_(alice.jid, "d"))) == AVATAR_SHA1

            # Empty metadata disables the avatar: the PHOTO goes, the rest stays, and
            # presence carries no hash any more.
            await alice.xmpp["xep_0084"].stop()
            vcard = await vcard_of(bob, bare(alice.jid))
            assert photo_of(vcard) is None
            assert vcard.findtext(q(NS_VCARD, "FN")) == "Alice Avatar"
            alice.send_raw("<presence><status>gone</status></presence>")
            assert update_photo(await bob.next_presence(from_(alice.jid, "gone"))) is None
        finally:
            await disconnect(alice)
            await bob.disconnect()
    run(body())


def test_vcard_set_updates_presence_hash(server, accounts):
    (a, b) = accounts(server, "avv", "avw")

    async def body():
        alice, bob = alice_session(server, a), bob_session(server, b)
        await connect(alice)
        await bob.connect()
        try:
            await befriend(alice, bob)
            alice.send_presence(pstatus="before")
            assert update_photo(await bob.next_presence(from_(alice.jid, "before"))) is None
            # A XEP-0153 vCard set, while online: the next presence has the new hash.
            card = alice.xmpp["xep_0054"].make_vcard()
            card["PHOTO"]["TYPE"] = "image/png"
            card["PHOTO"]["BINVAL"] = AVATAR
            await alice.xmpp["xep_0054"].publish_vcard(card)
            alice.send_raw("<presence><status>new</status></presence>")
            assert update_photo(await bob.next_presence(from_(alice.jid, "new"))) == AVATAR_SHA1
        finally:
            await disconnect(alice)
            await bob.disconnect()
    run(body())


def test_avatar_on_non_open_node_is_not_converted(server, accounts):
    (a, b) = accounts(server, "avc", "avd")

    async def body():
        alice, bob = alice_session(server, a), bob_session(server, b)
        await connect(alice)
        await bob.connect()
        try:
            await befriend(alice, bob)
            # Default access model (presence): a vCard is world-readable, so no copy (§6).
            await publish_avatar(alice, AVATAR)
            assert photo_of(await vcard_of(alice, bare(alice.jid))) is None
        finally:
            await disconnect(alice)
            await bob.disconnect()
    run(body())
