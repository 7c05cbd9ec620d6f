"""XEP-0357 push notifications (raw stanzas: slixmpp has no XEP-0357 plugin). The App Server
is another local account's connected client: it receives the pubsub publish IQs and answers.

The user under test never sends available presence, so messages to its bare JID go to
offline storage without racing a logout (RFC 6121 §8.5.2.2)."""

import contextlib

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import PASSWORD
from xmpp_client import NS_CLIENT, Inbox, Session, error_condition, online, q, run

NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
NS_INFO = "http://jabber.org/protocol/disco#info"
SUMMARY = "urn:xmpp:push:summary"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"


@contextlib.asynccontextmanager
async def app_server(server, user, error: str | None = None):
    """A connected App Server (resource 'push'); `.publishes` gets every publish IQ, answered
    with a result, or with a cancel-type `error` condition when given."""
    session = Session(server, user, PASSWORD, resource="push")
    session.publishes = Inbox("push publish", [])

    def on_publish(iq):
        if iq["type"] != "set":
            return
        session.publishes.put(iq)
        to, iq_id = iq["from"], iq["id"]
        if error:
            session.send_raw(f"<iq type='error' id='{iq_id}' to='{to}'><error type='cancel'>"
                             f"<{error} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                             f"</error></iq>")
        else:
            session.send_raw(f"<iq type='result' id='{iq_id}' to='{to}'/>")

    session.xmpp.register_handler(Callback(
        "push publish", MatchXPath(f"{q(NS_CLIENT, 'iq')}/{q(NS_PUBSUB, 'pubsub')}"),
        on_publish))
    await session.connect()
    try:
        yield session
    finally:
        await session.disconnect()


def enable_xml(service: str, node: str, secret: str | None = None, form_type=PUBLISH_OPTIONS):
    form = ""
    if secret is not None:
        form = (f"<x xmlns='{NS_DATA}' type='submit'>"
                f"<field var='FORM_TYPE'><value>{form_type}</value></field>"
                f"<field var='secret'><value>{secret}</value></field></x>")
    return (f"<iq type='set'><enable xmlns='{NS_PUSH}' jid='{service}' node='{node}'>"
            f"{form}</enable></iq>")


async def enable(session, service, node, secret=None):
    reply = await session.iq_xml(enable_xml(service, node, secret))
    assert reply["type"] == "result", reply


def notification(iq):
    """(node, {field: [values]}, publish-options form fields or None) of a publish IQ."""
    pubsub = iq.xml.find(q(NS_PUBSUB, "pubsub"))
    publish = pubsub.find(q(NS_PUBSUB, "publish"))
    form = publish.find(f"{q(NS_PUBSUB, 'item')}/{q(NS_PUSH, 'notification')}/{q(NS_DATA, 'x')}")
    assert form is not None, f"no summary form in {iq}"

    def fields(x):
        return {f.get("var"): [v.text for v in f.findall(q(NS_DATA, "value"))]
                for f in x.findall(q(NS_DATA, "field"))}
    options = pubsub.find(f"{q(NS_PUBSUB, 'publish-options')}/{q(NS_DATA, 'x')}")
    return publish.get("node"), fields(form), (fields(options) if options is not None else None)


def test_push_advertised_on_account(server, accounts):
    (name,) = accounts(server, "pua")

    async def scenario():
        async with online(server, name, PASSWORD) as s:
            info = await s.iq_xml(f"<iq type='get' to='{name}@localhost'>"
                                  f"<query xmlns='{NS_INFO}'/></iq>")
            assert NS_PUSH in {f.get("var") for f in info.xml.iter(q(NS_INFO, "feature"))}
    run(scenario())


def test_offline_message_is_pushed_without_body_by_default(server, accounts):
    user, app, sender = accounts(server, "pub", "pubapp", "pubs")
    service = f"{app}@localhost/push"

    async def scenario():
        async with online(server, user, PASSWORD) as u, app_server(server, app) as p, \
                online(server, sender, PASSWORD) as s:
            await enable(u, service, "node-b", secret="s3cr3t")
            s.send_message(f"{user}@localhost", "private words")
            iq = await p.publishes.take(None, 10)
            assert iq["from"] == f"{user}@localhost", "publish must come from the user's bare JID"
            node, fields, options = notification(iq)
            assert node == "node-b"
            assert fields["FORM_TYPE"] == [SUMMARY]
            assert fields["message-count"] == ["1"]
            assert "last-message-body" not in fields, "body sent although push.include_body=false"
            assert "last-message-sender" not in fields
            assert options == {"FORM_TYPE": [PUBLISH_OPTIONS], "secret": ["s3cr3t"]}
    run(scenario())


def test_body_and_sender_when_configured(make_server, accounts):
    srv = make_server(extra_sections={"push": {"include_body": True, "include_sender": True}})
    user, app, sender = accounts(srv, "puc", "pucapp", "pucs")

    async def scenario():
        async with online(srv, user, PASSWORD) as u, app_server(srv, app) as p, \
                online(srv, sender, PASSWORD, resource="phone") as s:
            await enable(u, f"{app}@localhost/push", "node-c")
            s.send_message(f"{user}@localhost", "Wherefore art thou?")
            _, fields, options = notification(await p.publishes.take(None, 10))
            assert fields["last-message-body"] == ["Wherefore art thou?"]
            assert fields["last-message-sender"] == [f"{sender}@localhost/phone"]
            assert options is None, "publish-options sent although none were given"
    run(scenario())


def test_live_message_to_an_inactive_client_is_pushed(make_server, accounts):
    """A client that told the server it is inactive (XEP-0352) still gets the message on its
    connection, and its push service is told, so a sleeping phone app wakes up; while it is
    active, nothing is pushed."""
    srv = make_server(extra_sections={"push": {"include_body": True, "min_interval_secs": 0}})
    user, app, sender = accounts(srv, "pul", "pulapp", "puls")

    async def scenario():
        async with online(srv, user, PASSWORD) as u, app_server(srv, app) as p, \
                online(srv, sender, PASSWORD) as s:
            await enable(u, f"{app}@localhost/push", "node-l")
            s.send_message(str(u.jid), "while awake")
            await u.messages.take(lambda m: m["body"] == "while awake", 10)
            u.send_raw("<inactive xmlns='urn:xmpp:csi:0'/>")
            await u.iq_xml("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")  # fence
            s.send_message(str(u.jid), "while asleep")
            await u.messages.take(lambda m: m["body"] == "while asleep", 10)
            _, fields, _ = notification(await p.publishes.take(None, 10))
            assert fields["last-message-body"] == ["while asleep"], fields
    run(scenario())


def test_disable_stops_notifications(server, accounts):
    user, app, sender = accounts(server, "pud", "pudapp", "puds")
    service = f"{app}@localhost/push"

    async def scenario():
        async with online(server, user, PASSWORD) as u, app_server(server, app) as p, \
                online(server, sender, PASSWORD) as s:
            await enable(u, service, "node-d1")
            await enable(u, service, "node-d2")
            reply = await u.iq_xml(f"<iq type='set'><disable xmlns='{NS_PUSH}' jid='{service}' "
                                   f"node='node-d1'/></iq>")
            assert reply["type"] == "result", reply
            s.send_message(f"{user}@localhost", "first")
            nodes = [notification(iq)[0] for iq in [await p.publishes.take(None, 10)]]
            assert nodes == ["node-d2"]
            assert not [i for i in await p.quiet("publishes") if notification(i)[0] == "node-d1"]
            # Without a node: every node of that service.
            reply = await u.iq_xml(f"<iq type='set'><disable xmlns='{NS_PUSH}' "
                                   f"jid='{service}'/></iq>")
            assert reply["type"] == "result", reply
            s.send_message(f"{user}@localhost", "second")
            assert await p.quiet("publishes", within=3.0) == [], "pushed after disable"
    run(scenario())


def test_enable_is_validated(server, accounts):
    user, other = accounts(server, "pue", "pueo")

    async def scenario():
        async with online(server, user, PASSWORD) as u:
            no_node = await u.iq_xml(f"<iq type='set'><enable xmlns='{NS_PUSH}' "
                                     f"jid='push.example'/></iq>")
            assert error_condition(no_node.xml) == "bad-request", no_node
            wrong_form = await u.iq_xml(enable_xml("push.example", "n", "x", form_type="urn:x"))
            assert error_condition(wrong_form.xml) == "bad-request", wrong_form
            for_other = await u.iq_xml(enable_xml("push.example", "n").replace(
                "<iq type='set'>", f"<iq type='set' to='{other}@localhost'>"))
            assert error_condition(for_other.xml) == "forbidden", for_other
    run(scenario())


def test_registration_survives_restart(make_server, accounts):
    srv = make_server()
    user, app, sender = accounts(srv, "puf", "pufapp", "pufs")

    async def register():
        async with online(srv, user, PASSWORD) as u:
            await enable(u, f"{app}@localhost/push", "node-f")

    async def message():
        async with app_server(srv, app) as p, online(srv, sender, PASSWORD) as s:
            s.send_message(f"{user}@localhost", "after restart")
            node, fields, _ = notification(await p.publishes.take(None, 10))
            assert node == "node-f" and fields["message-count"] == ["1"]

    run(register())
    srv.restart()
    run(message())


def test_error_reply_disables_registration(make_server, accounts):
    """XEP-0357 §7.1: an IQ error to a publish disables that JID and node."""
    srv = make_server(extra_sections={"push": {"min_interval_secs": 0}})
    user, app, sender = accounts(srv, "pug", "pugapp", "pugs")

    async def scenario():
        async with online(srv, user, PASSWORD) as u, \
                app_server(srv, app, error="item-not-found") as p, \
                online(srv, sender, PASSWORD) as s:
            await enable(u, f"{app}@localhost/push", "node-g")
            s.send_message(f"{user}@localhost", "one")
            await p.publishes.take(None, 10)
            # The error is settled before the app server's next stanza is handled.
            pong = await p.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            assert pong["type"] == "result"
            s.send_message(f"{user}@localhost", "two")
            assert await p.quiet("publishes", within=2.0) == [], "pushed after an error reply"
    run(scenario())


def test_notifications_are_coalesced(make_server, accounts):
    """One publish per push.min_interval_secs; the messages in between are counted in the
    trailing publish at the end of the window."""
    srv = make_server(extra_sections={"push": {"min_interval_secs": 3}})
    user, app, sender = accounts(srv, "puh", "puhapp", "puhs")

    async def scenario():
        async with online(srv, user, PASSWORD) as u, app_server(srv, app) as p, \
                online(srv, sender, PASSWORD) as s:
            await enable(u, f"{app}@localhost/push", "node-h")
            for i in range(3):
                s.send_message(f"{user}@localhost", f"burst {i}")
            first = notification(await p.publishes.take(None, 10))[1]
            second = notification(await p.publishes.take(None, 15))[1]
            assert first["message-count"] == ["1"]
            assert second["message-count"] == ["2"]
    run(scenario())
