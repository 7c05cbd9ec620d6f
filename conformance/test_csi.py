"""XEP-0352 Client State Indication with slixmpp's xep_0352 plugin: while inactive, presence
is held and coalesced and unimportant messages wait; important ones flush the queue first."""

from conftest import PASSWORD
from xmpp_client import NS_CLIENT, Session, q, run

NS_CHATSTATES = "http://jabber.org/protocol/chatstates"


class CsiSession(Session):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.xmpp.register_plugin("xep_0352")

    async def ping(self):
        reply = await self.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert reply["type"] == "result"

    async def inactive(self):
        self.xmpp["xep_0352"].send_inactive()
        await self.ping()     # processed in order (XEP-0352 §5.1): inactive before the pong

    async def active(self):
        self.xmpp["xep_0352"].send_active()
        await self.ping()


def presence(to: str, status: str) -> str:
    return f"<presence to='{to}'><status>{status}</status></presence>"


def chat_state(to: str, state: str = "composing") -> str:
    return f"<message to='{to}' type='chat'><{state} xmlns='{NS_CHATSTATES}'/></message>"


def kind(stanza) -> str:
    tag = stanza.xml.tag
    if tag == q(NS_CLIENT, "presence"):
        return "presence:" + (stanza["status"] or "")
    if stanza["body"]:
        return "body:" + stanza["body"]
    return "other"


async def pair(server, accounts, **kwargs):
    r_name, s_name = accounts(server, "csr", "css")
    receiver = CsiSession(server, r_name, PASSWORD, resource="phone")
    sender = CsiSession(server, s_name, PASSWORD, resource="desk")
    await receiver.connect()
    await sender.connect()
    return receiver, sender, f"{r_name}@localhost/phone"


def test_csi_is_offered(server, accounts):
    async def scenario():
        receiver, sender, _ = await pair(server, accounts)
        try:
            features = receiver.features[-1]
            assert features.find("{urn:xmpp:csi:0}csi") is not None
            assert receiver.xmpp["xep_0352"].enabled
        finally:
            await receiver.disconnect()
            await sender.disconnect()
    run(scenario())


def test_inactive_holds_and_coalesces_until_an_important_message(server, accounts):
    async def scenario():
        receiver, sender, to = await pair(server, accounts)
        try:
            await receiver.inactive()
            for n in ("1", "2", "3"):
                sender.send_raw(presence(to, n))
            sender.send_raw(chat_state(to))
            await sender.ping()      # all routed to the receiver by now
            held = await receiver.quiet("presences") + await receiver.quiet("messages")
            assert held == [], f"delivered while inactive: {held}"
            sender.send_message(to, "wake up")
            await receiver.next_message(lambda m: m["body"] == "wake up")
            # The held queue went out first, in order, with presence coalesced (latest wins).
            assert [kind(s) for s in receiver.arrivals] == ["presence:3", "other", "body:wake up"]
        finally:
            await receiver.disconnect()
            await sender.disconnect()
    run(scenario())


def test_active_flushes_what_was_held(server, accounts):
    async def scenario():
        receiver, sender, to = await pair(server, accounts)
        try:
            await receiver.inactive()
            sender.send_raw(presence(to, "away for lunch"))
            await sender.ping()
            assert await receiver.quiet("presences") == []
            await receiver.active()
            got = await receiver.next_presence()
            assert got["status"] == "away for lunch"
            # Active again: presence is delivered at once.
            sender.send_raw(presence(to, "back"))
            got = await receiver.next_presence()
            assert got["status"] == "back"
        finally:
            await receiver.disconnect()
            await sender.disconnect()
    run(scenario())


def test_encrypted_message_without_body_is_important(server, accounts):
    async def scenario():
        receiver, sender, to = await pair(server, accounts)
        try:
            await receiver.inactive()
            sender.send_raw(f"<message to='{to}' type='chat' id='omemo1'>"
                            "<encrypted xmlns='eu.siacs.conversations.axolotl'>"
                            "<header sid='1'/></encrypted></message>")
            got = await receiver.next_message()
            assert got["id"] == "omemo1"
        finally:
            await receiver.disconnect()
            await sender.disconnect()
    run(scenario())


def test_held_queue_is_bounded(make_server):
    srv = make_server(accounts={"csr": PASSWORD, "css": PASSWORD},
                      extra_sections={"csi": {"max_held": 3}})

    async def scenario():
        receiver = CsiSession(srv, "csr", PASSWORD, resource="phone")
        sender = CsiSession(srv, "css", PASSWORD, resource="desk")
        await receiver.connect()
        await sender.connect()
        to = "csr@localhost/phone"
        try:
            await receiver.inactive()
            for state in ("composing", "paused"):
                sender.send_raw(chat_state(to, state))
            await sender.ping()
            assert await receiver.quiet("messages") == []
            # The third fills the queue: everything held is flushed, in order.
            sender.send_raw(chat_state(to, "active"))
            got = [await receiver.next_message() for _ in range(3)]
            states = [next(iter(m.xml)).tag.split("}")[1] for m in got]
            assert states == ["composing", "paused", "active"]
        finally:
            await receiver.disconnect()
            await sender.disconnect()
    run(scenario())
