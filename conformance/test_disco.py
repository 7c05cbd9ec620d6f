"""Server IQ services: XEP-0030 disco, XEP-0199 ping, XEP-0092 version, XEP-0202 time,
XEP-0012 last activity, and RFC 6120 §8 IQ error semantics."""

import asyncio
import datetime

import pytest

from conftest import PASSWORD
from xmpp_client import Session, befriend, error_condition, online, q, run

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_LAST = "jabber:iq:last"
NS_VERSION = "jabber:iq:version"
NS_TIME = "urn:xmpp:time"

REQUIRED_FEATURES = [NS_INFO, "urn:xmpp:ping", NS_VERSION, NS_LAST, NS_TIME]


def test_disco_info_server(server):
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            reply = await s.iq_xml(f"<iq type='get' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
            assert reply["type"] == "result", reply
            query = reply.xml.find(q(NS_INFO, "query"))
            identities = [(i.get("category"), i.get("type"))
                          for i in query.findall(q(NS_INFO, "identity"))]
            assert ("server", "im") in identities, f"identities: {identities}"
            features = {f.get("var") for f in query.findall(q(NS_INFO, "feature"))}
            missing = [f for f in REQUIRED_FEATURES if f not in features]
            assert not missing, f"features missing from disco#info: {missing}"
            assert "jabber:iq:register" in features, "registration is open but not in disco#info"
    run(scenario())


def test_disco_info_without_to_is_the_account(server):
    """RFC 6120 §10.3.3 / XEP-0030: an IQ with no 'to' is handled by the server for the account."""
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            reply = await s.iq_xml(f"<iq type='get'><query xmlns='{NS_INFO}'/></iq>")
            assert reply["type"] == "result", reply
    run(scenario())


def test_disco_items_server(server):
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            reply = await s.iq_xml(f"<iq type='get' to='localhost'><query xmlns='{NS_ITEMS}'/></iq>")
            assert reply["type"] == "result", reply
            assert reply.xml.find(q(NS_ITEMS, "query")) is not None
    run(scenario())


def test_ping_server(server):
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            reply = await s.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            assert reply["type"] == "result"
            assert len(reply.xml) == 0, "XEP-0199: the pong is an empty result"
    run(scenario())


def test_ping_without_to_and_to_bare_jid(server):
    """Clients (Profanity's autoping) ping with no 'to'; an error would read as "ping not
    supported" and turn their keepalive off."""
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            for to in ("", " to='alice@localhost'", " to='bob@localhost'"):
                reply = await s.iq_xml(f"<iq type='get'{to}><ping xmlns='urn:xmpp:ping'/></iq>")
                assert reply["type"] == "result", (to, reply)
                assert len(reply.xml) == 0
    run(scenario())


def test_software_version(server):
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            reply = await s.iq_xml(f"<iq type='get' to='localhost'><query xmlns='{NS_VERSION}'/></iq>")
            assert reply["type"] == "result", reply
            query = reply.xml.find(q(NS_VERSION, "query"))
            name = query.find(q(NS_VERSION, "name"))
            version = query.find(q(NS_VERSION, "version"))
            assert name is not None and (name.text or "").strip(), "no <name/>"
            assert version is not None and (version.text or "").strip(), "no <version/>"
    run(scenario())


def test_entity_time(server):
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            reply = await s.iq_xml(f"<iq type='get' to='localhost'><time xmlns='{NS_TIME}'/></iq>")
            assert reply["type"] == "result", reply
            time_el = reply.xml.find(q(NS_TIME, "time"))
            tzo = time_el.find(q(NS_TIME, "tzo")).text
            utc = time_el.find(q(NS_TIME, "utc")).text
            assert tzo == "Z" or (len(tzo) == 6 and tzo[0] in "+-" and tzo[3] == ":"), tzo
            assert utc.endswith("Z"), f"XEP-0202: <utc/> must be UTC with 'Z': {utc}"
            stamp = datetime.datetime.fromisoformat(utc.replace("Z", "+00:00"))
            skew = abs((datetime.datetime.now(datetime.timezone.utc) - stamp).total_seconds())
            assert skew < 60, f"server clock {utc} is {skew:.0f}s off"
    run(scenario())


def test_last_activity_server_uptime(server):
    """XEP-0012 §5: to a server, jabber:iq:last reports its uptime."""
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            reply = await s.iq_xml(f"<iq type='get' to='localhost'><query xmlns='{NS_LAST}'/></iq>")
            assert reply["type"] == "result", reply
            seconds = int(reply.xml.find(q(NS_LAST, "query")).get("seconds"))
            assert seconds >= 0
    run(scenario())


def test_last_activity_of_offline_contact(server, accounts):
    """XEP-0012 §4: seconds since the contact's last logout, plus its last status."""
    a_name, b_name = accounts(server, "lasta", "lastb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a:
            b = await Session(server, b_name, PASSWORD).connect()
            try:
                await befriend(a, b)
                b.send_presence(ptype="unavailable", pstatus="gone to lunch")
            finally:
                await b.disconnect()
            await asyncio.sleep(1.2)
            reply = await a.iq_xml(f"<iq type='get' to='{b_name}@localhost'>"
                                   f"<query xmlns='{NS_LAST}'/></iq>")
            assert reply["type"] == "result", reply
            query = reply.xml.find(q(NS_LAST, "query"))
            assert int(query.get("seconds")) >= 1
            assert (query.text or "") == "gone to lunch"
    run(scenario())


def test_last_activity_forbidden_without_subscription(server, accounts):
    """XEP-0012 §4: requester without a presence subscription gets forbidden."""
    a_name, b_name = accounts(server, "lasta", "lastb")

    async def scenario():
        async with online(server, a_name, PASSWORD) as a:
            reply = await a.iq_xml(f"<iq type='get' to='{b_name}@localhost'>"
                                   f"<query xmlns='{NS_LAST}'/></iq>")
            assert reply["type"] == "error"
            assert error_condition(reply.xml) in ("forbidden", "not-authorized"), reply
    run(scenario())


@pytest.mark.parametrize("payload", ["<query xmlns='urn:example:unknown'/>",
                                     "<unknown xmlns='jabber:iq:nothing'/>"])
def test_unknown_iq_service_unavailable(server, payload):
    """RFC 6120 §8.4: an unsupported IQ payload gets service-unavailable."""
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            reply = await s.iq_xml(f"<iq type='get' to='localhost'>{payload}</iq>")
            assert reply["type"] == "error"
            assert error_condition(reply.xml) in ("service-unavailable", "feature-not-implemented")
    run(scenario())


def test_iq_without_payload_bad_request(server):
    """RFC 6120 §8.2.3: a get/set IQ MUST contain exactly one child."""
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            reply = await s.iq_xml("<iq type='get' to='localhost'/>")
            assert reply["type"] == "error"
            assert error_condition(reply.xml) == "bad-request"
    run(scenario())


def test_disco_advertises_msgoffline(server):
    """XEP-0160 §5: a server that stores offline messages SHOULD advertise 'msgoffline'."""
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            reply = await s.iq_xml(f"<iq type='get' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
            features = {f.get("var") for f in reply.xml.iter(q(NS_INFO, "feature"))}
            assert "msgoffline" in features, sorted(features)
    run(scenario())


NS_DATA = "jabber:x:data"


def test_contact_addresses_xep0157(make_server):
    """XEP-0157: configured contact addresses appear as a serverinfo form in disco#info."""
    srv = make_server(accounts={"alice": PASSWORD}, extra_sections={"server_info": {
        "admin_addresses": ["mailto:admin@localhost", "xmpp:admin@localhost"],
        "abuse_addresses": ["mailto:abuse@localhost"],
    }})

    async def scenario():
        async with online(srv, "alice", PASSWORD) as s:
            reply = await s.iq_xml(f"<iq type='get' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
            forms = reply.xml.find(q(NS_INFO, "query")).findall(q(NS_DATA, "x"))
            fields = {}
            for form in forms:
                assert form.get("type") == "result", "XEP-0128 forms are of type 'result'"
                values = {f.get("var"): [v.text for v in f.findall(q(NS_DATA, "value"))]
                          for f in form.findall(q(NS_DATA, "field"))}
                if values.get("FORM_TYPE") == ["http://jabber.org/network/serverinfo"]:
                    fields = values
            assert fields, f"no serverinfo form among {len(forms)} form(s)"
            assert fields.get("admin-addresses") == ["mailto:admin@localhost",
                                                     "xmpp:admin@localhost"]
            assert fields.get("abuse-addresses") == ["mailto:abuse@localhost"]
    run(scenario())
