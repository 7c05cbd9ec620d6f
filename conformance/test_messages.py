"""RFC 6121 §5, §8: message delivery, offline storage with XEP-0203 delay, errors."""

import contextlib
import datetime

from conftest import PASSWORD
from xmpp_client import NS_DELAY, error_condition, get_roster, online, q, run


def body_is(text):
    return lambda m: m["body"] == text


def test_message_to_full_jid(server, accounts):
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        async with online(server, a_name, PASSWORD, resource="ra") as a, \
                online(server, b_name, PASSWORD, resource="rb") as b:
            b.send_presence()
            a.send_message(f"{b_name}@localhost/rb", "hello full jid")
            got = await b.next_message(body_is("hello full jid"))
            assert got.xml.get("from") == f"{a_name}@localhost/ra", \
                "server must stamp the sender's full JID (RFC 6120 §8.1.2.1)"
            assert got["type"] == "chat"
            assert got.xml.find(q(NS_DELAY, "delay")) is None, "online message carries a delay"
    run(scenario())


def test_message_to_bare_jid(server, accounts):
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, \
                online(server, b_name, PASSWORD, resource="rb") as b:
            b.send_presence()
            await b.next_presence(lambda p: p.xml.get("from") == f"{b_name}@localhost/rb")
            a.send_message(f"{b_name}@localhost", "hello bare jid")
            await b.next_message(body_is("hello bare jid"))
    run(scenario())


def test_chat_to_unknown_resource_goes_to_bare_jid(server, accounts):
    """§8.5.3.2.1: a chat message to an unavailable full JID is handled as if to the bare JID."""
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, \
                online(server, b_name, PASSWORD, resource="real") as b:
            b.send_presence()
            await b.next_presence(lambda p: p.xml.get("from") == f"{b_name}@localhost/real")
            a.send_message(f"{b_name}@localhost/gone", "to a stale resource")
            await b.next_message(body_is("to a stale resource"))
    run(scenario())


def test_offline_message_delivered_with_delay(server, accounts):
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        async with online(server, a_name, PASSWORD, resource="ra") as a:
            for i in range(3):
                a.send_message(f"{b_name}@localhost", f"offline {i}")
            errors = await a.quiet("messages", lambda m: m["type"] == "error")
            assert errors == [], f"offline message bounced: {errors}"
        async with online(server, b_name, PASSWORD) as b:
            await get_roster(b)
            b.send_presence()   # offline messages flow on initial presence (§8.5.2.2)
            for i in range(3):
                got = await b.next_message()
                assert got["body"] == f"offline {i}", "offline messages out of order or missing"
                assert got.xml.get("from") == f"{a_name}@localhost/ra"
                delay = got.xml.find(q(NS_DELAY, "delay"))
                assert delay is not None, f"offline message without XEP-0203 <delay/>: {got}"
                assert delay.get("from") == "localhost", "XEP-0203: delay 'from' is the server"
                stamp = datetime.datetime.fromisoformat(delay.get("stamp").replace("Z", "+00:00"))
                assert stamp.utcoffset() == datetime.timedelta(0), "stamp must be UTC"
                now = datetime.datetime.now(datetime.timezone.utc)
                assert before - datetime.timedelta(seconds=2) <= stamp <= now, stamp
        # delivered once only
        async with online(server, b_name, PASSWORD) as b:
            b.send_presence()
            again = await b.quiet("messages")
            assert again == [], f"offline messages delivered twice: {again}"
    run(scenario())


def test_offline_message_survives_restart(make_server, accounts):
    srv = make_server()
    a_name, b_name = accounts(srv, "msa", "msb")

    async def send():
        async with online(srv, a_name, PASSWORD) as a:
            a.send_message(f"{b_name}@localhost", "kept across restart")
            await a.quiet("messages")   # let it be stored

    async def receive():
        async with online(srv, b_name, PASSWORD) as b:
            b.send_presence()
            got = await b.next_message(body_is("kept across restart"))
            assert got.xml.find(q(NS_DELAY, "delay")) is not None

    run(send())
    srv.restart()
    run(receive())


def test_headline_not_stored_offline(server, accounts):
    """§8.5.2.2.1: a headline message to an account with no available resource is dropped."""
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a:
            a.send_message(f"{b_name}@localhost", "news flash", mtype="headline")
            a.send_message(f"{b_name}@localhost", "marker", mtype="chat")
            await a.quiet("messages")
        async with online(server, b_name, PASSWORD) as b:
            b.send_presence()
            await b.next_message(body_is("marker"))
            late = await b.quiet("messages", body_is("news flash"))
            assert late == [], "headline message was stored offline"
    run(scenario())


def test_message_to_unknown_user_service_unavailable(server, accounts):
    """§8.5.1 (as Starling specifies): message to a non-existent account -> service-unavailable."""
    (a_name,) = accounts(server, "msa")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a:
            a.send_message("nosuchuser@localhost", "anyone there?")
            err = await a.next_message(lambda m: m["type"] == "error")
            assert err.xml.get("from") == "nosuchuser@localhost"
            assert error_condition(err.xml) == "service-unavailable"
    run(scenario())


def test_iq_to_unknown_user_service_unavailable(server, accounts):
    """§8.5.1: an IQ to a non-existent account MUST get service-unavailable."""
    (a_name,) = accounts(server, "msa")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a:
            reply = await a.iq_xml("<iq type='get' to='nosuchuser@localhost'>"
                                   "<query xmlns='jabber:iq:version'/></iq>")
            assert reply["type"] == "error"
            assert error_condition(reply.xml) == "service-unavailable"
    run(scenario())


def test_message_from_is_stamped_not_spoofed(server, accounts):
    """RFC 6120 §8.1.2.1: a forged 'from' is either overwritten or an <invalid-from/> error."""
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        async with online(server, a_name, PASSWORD, resource="ra") as a, \
                online(server, b_name, PASSWORD, resource="rb") as b:
            b.send_presence()
            a.send_raw(f"<message to='{b_name}@localhost/rb' from='admin@localhost/x' "
                       "type='chat'><body>spoof</body></message>")
            got = await b.quiet("messages", body_is("spoof"), within=2.0)
            conditions = [e.find("*").tag.split("}")[1] for e in a.stream_errors
                          if e.find("*") is not None]
            if not got:
                assert "invalid-from" in conditions, \
                    f"forged message neither delivered nor refused (stream errors: {conditions})"
            else:
                assert got[0].xml.get("from") == f"{a_name}@localhost/ra", \
                    f"forged 'from' delivered as {got[0].xml.get('from')}"
    run(scenario())


def test_offline_queue_full_bounces(make_server, accounts):
    """XEP-0160 §3: when the offline queue is full the sender gets service-unavailable."""
    srv = make_server(offline_max_messages=3)
    a_name, b_name = accounts(srv, "msa", "msb")

    async def scenario():
        async with online(srv, a_name, PASSWORD) as a:
            for i in range(5):
                a.send_message(f"{b_name}@localhost", f"queued {i}")
            bounces = [await a.next_message(lambda m: m["type"] == "error") for _ in range(2)]
            for bounce in bounces:
                assert error_condition(bounce.xml) == "service-unavailable", bounce
            bodies = sorted(b["body"] for b in bounces if b["body"])
            if bodies:   # the original content is optional in an error (RFC 6120 §8.3.1)
                assert bodies == ["queued 3", "queued 4"], "the wrong messages bounced"
        async with online(srv, b_name, PASSWORD) as b:
            b.send_presence()
            got = [(await b.next_message())["body"] for _ in range(3)]
            assert got == ["queued 0", "queued 1", "queued 2"]
            assert await b.quiet("messages") == []
    run(scenario())


def test_bare_jid_message_not_delivered_to_negative_priority(server, accounts):
    """§8.5.2.1.1: a message to the bare JID MUST NOT go to a resource with negative priority."""
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, \
                online(server, b_name, PASSWORD, resource="shy") as b:
            b.send_presence(ppriority=-1)
            await b.next_presence(lambda p: p.xml.get("from") == f"{b_name}@localhost/shy")
            a.send_message(f"{b_name}@localhost", "not for negative priority")
            leaked = await b.quiet("messages", body_is("not for negative priority"))
            assert leaked == [], "bare-JID message delivered to a priority -1 resource"
    run(scenario())


def test_jid_case_insensitive_routing(server, accounts):
    """RFC 7622 §3.2-3.3: domain and localpart compare case-insensitively."""
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, \
                online(server, b_name, PASSWORD, resource="rb") as b:
            b.send_presence()
            a.send_raw(f"<message to='{b_name.upper()}@LocalHost/rb' type='chat'>"
                       "<body>shouting</body></message>")
            await b.next_message(body_is("shouting"))
    run(scenario())


def test_malformed_to_jid_error(server, accounts):
    """RFC 6120 §8.3.3.8: a stanza whose 'to' is no valid JID gets <jid-malformed/>."""
    (a_name,) = accounts(server, "msa")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a:
            a.send_raw("<message to='a@b@localhost' type='chat' id='bad-jid'>"
                       "<body>where to?</body></message>")
            err = await a.next_message(lambda m: m["type"] == "error")
            assert error_condition(err.xml) == "jid-malformed", err
    run(scenario())


def test_groupchat_to_offline_user_bounces(server, accounts):
    """§8.5.2.2.1: a groupchat message to an account with no available resource -> error."""
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a:
            a.send_message(f"{b_name}@localhost", "room talk", mtype="groupchat")
            err = await a.next_message(lambda m: m["type"] == "error")
            assert error_condition(err.xml) == "service-unavailable", err
    run(scenario())


TRICKY = "<tag> & \"quotes\" 'apostrophes' ]]> \u00e9\u00e8 \u4e2d\u6587 \U0001F426 \u202e"


def test_body_escaping_and_unicode_round_trip(server, accounts):
    """Characters that need escaping and non-ASCII text arrive exactly as sent."""
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, \
                online(server, b_name, PASSWORD, resource="rb") as b:
            b.send_presence()
            a.send_message(f"{b_name}@localhost/rb", TRICKY)
            got = await b.next_message(lambda m: m["type"] == "chat")
            assert got["body"] == TRICKY
        # and the same through offline storage (the database)
        async with online(server, a_name, PASSWORD) as a:
            a.send_message(f"{b_name}@localhost", TRICKY)
            await a.quiet("messages")
        async with online(server, b_name, PASSWORD) as b:
            b.send_presence()
            got = await b.next_message()
            assert got["body"] == TRICKY
    run(scenario())


def test_unknown_extension_elements_are_routed_intact(server, accounts):
    """RFC 6120 §8.4: the server routes stanzas with payloads it does not understand."""
    a_name, b_name = accounts(server, "msa", "msb")
    payload = ("<x xmlns='urn:example:custom' level='3'><y>text</y>"
               "<z xmlns='urn:example:other' flag=''/></x>")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, \
                online(server, b_name, PASSWORD, resource="rb") as b:
            b.send_presence()
            a.send_raw(f"<message to='{b_name}@localhost/rb' type='chat'>"
                       f"<body>with payload</body>{payload}</message>")
            got = await b.next_message(body_is("with payload"))
            x = got.xml.find("{urn:example:custom}x")
            assert x is not None and x.get("level") == "3", got
            assert x.find("{urn:example:custom}y").text == "text"
            z = x.find("{urn:example:other}z")
            assert z is not None and z.get("flag") == "", got
    run(scenario())


def test_iq_routed_between_clients(server, accounts):
    """An IQ to a full JID reaches that client and its reply comes back."""
    a_name, b_name = accounts(server, "msa", "msb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a, \
                online(server, b_name, PASSWORD, resource="rb") as b:
            b.send_presence()
            reply = await a.iq_xml(f"<iq type='get' to='{b_name}@localhost/rb'>"
                                   "<query xmlns='jabber:iq:version'/></iq>")
            assert reply["type"] == "result", reply
            assert reply.xml.get("from") == f"{b_name}@localhost/rb"
            # §8.5.3.2.2: an IQ to a full JID with no such resource -> service-unavailable
            reply = await a.iq_xml(f"<iq type='get' to='{b_name}@localhost/nobody'>"
                                   "<query xmlns='jabber:iq:version'/></iq>")
            assert reply["type"] == "error"
            assert error_condition(reply.xml) == "service-unavailable", reply
    run(scenario())


def test_many_clients_message_ring(server, accounts):
    """Ten clients at once, each sends ten messages to the next: all arrive once, in order."""
    names = accounts(server, *["ring"] * 10)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(online(server, n, PASSWORD, resource="r"))
                        for n in names]
            for s in sessions:
                s.send_presence()
            for i, s in enumerate(sessions):
                target = names[(i + 1) % len(names)]
                for k in range(10):
                    s.send_message(f"{target}@localhost/r", f"{names[i]} #{k}")
            for i, s in enumerate(sessions):
                sender = names[i - 1]
                got = [(await s.next_message(lambda m: m["type"] == "chat"))["body"]
                       for _ in range(10)]
                assert got == [f"{sender} #{k}" for k in range(10)]
                assert await s.quiet("messages", within=0) == []
    run(scenario())
