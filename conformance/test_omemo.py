"""XEP-0384 OMEMO end to end through the server's PEP service: two slixmpp-omemo
clients publish their device lists and bundles (publish-options
access_model=open), fetch each other's, and exchange an encrypted message,
once between strangers (explicit fetches) and once between contacts (device
lists pushed as PEP notifications, filtered by the clients' caps)."""

from __future__ import annotations

import asyncio

from omemo.storage import Just, Nothing, Storage
from slixmpp import JID
from slixmpp.plugins import register_plugin
from slixmpp_omemo import TrustLevel, XEP_0384

from conftest import PASSWORD
from xmpp_client import TIMEOUT, Session, bare, befriend, run

NS_TWOMEMO = "urn:xmpp:omemo:2"
NS_OLDMEMO = "eu.siacs.conversations.axolotl"


class MemoryStorage(Storage):
    """The OMEMO library's key-value storage, in memory (one per client)."""

    def __init__(self) -> None:
        super().__init__()
        self._data: dict = {}

    async def _load(self, key):
        return Just(self._data[key]) if key in self._data else Nothing()

    async def _store(self, key, value) -> None:
        self._data[key] = value

    async def _delete(self, key) -> None:
        self._data.pop(key, None)


class OmemoForTests(XEP_0384):
    """slixmpp-omemo with in-memory storage and blind trust (BTBV)."""

    default_config = {"fallback_message": "This message is OMEMO encrypted."}

    def plugin_init(self) -> None:
        self._memory = MemoryStorage()
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._memory

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(self, blindly_trusted, identifier) -> None:
        pass

    async def _prompt_manual_trust(self, manually_trusted, identifier) -> None:
        sm = await self.get_session_manager()
        for device in manually_trusted:
            await sm.set_trust(device.bare_jid, device.identity_key, TrustLevel.TRUSTED.value)


register_plugin(OmemoForTests)


def omemo_session(server, user: str) -> tuple[Session, asyncio.Event]:
    s = Session(server, user, PASSWORD, resource="omemo")
    ready = asyncio.Event()
    s.xmpp.add_event_handler("omemo_initialized", lambda _: ready.set())
    for p in ("xep_0060", "xep_0163", "xep_0115", "xep_0280", "xep_0334", "xep_0384"):
        s.xmpp.register_plugin(p)
    return s, ready


async def start(s: Session, ready: asyncio.Event) -> None:
    await s.connect()
    # Caps with the device-list +notify interests, then presence (PEP last items follow it).
    await s.xmpp["xep_0115"].update_caps(s.jid, broadcast=False)
    s.send_presence()
    await asyncio.wait_for(ready.wait(), TIMEOUT * 3)


async def devices_known(s: Session, peer: str) -> bool:
    sm = await s.xmpp["xep_0384"].get_session_manager()
    return len(await sm.get_device_information(peer)) > 0


async def send_and_decrypt(sender: Session, receiver: Session, text: str) -> None:
    x = sender.xmpp
    msg = x.make_message(mto=bare(receiver.jid), mtype="chat")
    msg["body"] = text
    encrypted, errors = await x["xep_0384"].encrypt_message(msg, JID(receiver.jid.bare))
    assert encrypted is not None, f"encryption failed: {errors}"
    assert text not in str(encrypted), "the plaintext must not travel"
    encrypted.send()
    while True:
        got = await receiver.next_message(
            lambda m: bool(receiver.xmpp["xep_0384"].is_encrypted(m)))
        assert text not in str(got)
        plain, device = await receiver.xmpp["xep_0384"].decrypt_message(got)
        assert device.bare_jid == bare(sender.jid)
        if plain["body"]:
            break
        # An empty OMEMO message is the library's automatic heartbeat (session upkeep).
    assert plain["body"] == text


def test_omemo_between_strangers(server, accounts):
    a, b = accounts(server, "omemoa", "omemob")

    async def body():
        (alice, alice_ready), (bob, bob_ready) = omemo_session(server, a), omemo_session(server, b)
        await start(alice, alice_ready)
        await start(bob, bob_ready)
        try:
            # Device lists and bundles were published with access_model=open: a stranger
            # reads them with plain item retrieval.
            for node in (f"{NS_TWOMEMO}:devices", f"{NS_OLDMEMO}.devicelist",
                         f"{NS_TWOMEMO}:bundles"):
                r = await alice.iq_wrap(alice.xmpp["xep_0060"].get_items(bare(bob.jid), node))
                assert r["type"] == "result", (node, r)
            await send_and_decrypt(alice, bob, "meet me at the usual place")
            await send_and_decrypt(bob, alice, "ok, at noon")
        finally:
            await alice.disconnect()
            await bob.disconnect()
    run(body(), timeout=120)


def test_omemo_between_contacts_uses_pep_notifications(server, accounts):
    a, b = accounts(server, "omemoc", "omemod")

    async def body():
        alice, bob = Session(server, a, PASSWORD), Session(server, b, PASSWORD)
        await alice.connect()
        await bob.connect()
        await befriend(alice, bob)
        await alice.disconnect()
        await bob.disconnect()
        (bob, bob_ready) = omemo_session(server, b)
        await start(bob, bob_ready)
        (alice, alice_ready) = omemo_session(server, a)
        try:
            # Alice's client never fetches Bob's device list for a contact ("both"): it
            # relies on PEP pushing it, here as the last item when she comes online.
            await start(alice, alice_ready)
            for _ in range(int(TIMEOUT / 0.1)):
                if await devices_known(alice, bare(bob.jid)):
                    break
                await asyncio.sleep(0.1)
            assert await devices_known(alice, bare(bob.jid)), "Bob's device list never arrived"
            await send_and_decrypt(alice, bob, "PEP told me where you are")
            await send_and_decrypt(bob, alice, "and told me about you")
        finally:
            await alice.disconnect()
            await bob.disconnect()
    run(body(), timeout=120)


async def _iq_wrap(self, fut):
    from slixmpp.exceptions import IqError
    try:
        return await fut
    except IqError as e:
        return e.iq


Session.iq_wrap = _iq_wrap
