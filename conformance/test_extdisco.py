"""XEP-0215 External Service Discovery with TURN REST API credentials (raw stanzas:
slixmpp has no XEP-0215 plugin)."""

import base64
import datetime
import hashlib
import hmac
import time

from conftest import PASSWORD
from xmpp_client import error_condition, online, q, run

NS = "urn:xmpp:extdisco:2"
NS_INFO = "http://jabber.org/protocol/disco#info"
SECRET = "conformance-turn-secret-5f1c"
TTL = 3600
SERVICES = ('[{type = "stun", host = "stun.localhost", port = 3478, transport = "udp"},'
            ' {type = "turn", host = "turn.localhost", port = 3478, transport = "udp",'
            '  name = "Relay", restricted = true}]')


def extdisco_server(make_server):
    return make_server(accounts={"alice": PASSWORD},
                       extra_sections={"extdisco": {"secret": SECRET, "ttl_secs": TTL}},
                       env={"STARLING__EXTDISCO__SERVICES": SERVICES})


def services(reply, tag="services"):
    return reply.xml.find(q(NS, tag)).findall(q(NS, "service"))


def parse_xep82(stamp: str) -> int:
    return int(datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())


def check_credentials(svc, user_bare: str, before: int, after: int):
    """coturn's REST API scheme: username '<expiry>:<user>', password
    base64(HMAC-SHA1(secret, username)), expiry = now + ttl."""
    username, password = svc.get("username"), svc.get("password")
    assert username and password, f"no credentials on {svc.attrib}"
    expiry_text, _, user = username.partition(":")
    assert user == user_bare
    expiry = int(expiry_text)
    assert before + TTL <= expiry <= after + TTL, (before, expiry, after)
    assert parse_xep82(svc.get("expires")) == expiry
    mac = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
    assert password == base64.b64encode(mac).decode()


def test_not_offered_without_services(server):
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            info = await s.iq_xml(f"<iq type='get' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
            features = {f.get("var") for f in info.xml.iter(q(NS_INFO, "feature"))}
            assert NS not in features
            reply = await s.iq_xml(f"<iq type='get' to='localhost'><services xmlns='{NS}'/></iq>")
            assert error_condition(reply.xml) == "service-unavailable", reply
    run(scenario())


def test_services_list_with_turn_credentials(make_server):
    srv = extdisco_server(make_server)

    async def scenario():
        async with online(srv, "alice", PASSWORD) as s:
            info = await s.iq_xml(f"<iq type='get' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
            assert NS in {f.get("var") for f in info.xml.iter(q(NS_INFO, "feature"))}
            before = int(time.time())
            reply = await s.iq_xml(f"<iq type='get' to='localhost'><services xmlns='{NS}'/></iq>")
            after = int(time.time()) + 1
            assert reply["type"] == "result", reply
            by_type = {svc.get("type"): svc for svc in services(reply)}
            assert set(by_type) == {"stun", "turn"}
            stun, turn = by_type["stun"], by_type["turn"]
            assert (stun.get("host"), stun.get("port"), stun.get("transport")) == \
                ("stun.localhost", "3478", "udp")
            assert stun.get("username") is None and stun.get("password") is None
            assert turn.get("restricted") in ("true", "1")
            assert turn.get("name") == "Relay"
            check_credentials(turn, "alice@localhost", before, after)

            only_turn = await s.iq_xml(f"<iq type='get' to='localhost'>"
                                       f"<services xmlns='{NS}' type='turn'/></iq>")
            assert [svc.get("type") for svc in services(only_turn)] == ["turn"]
    run(scenario())
    assert SECRET not in srv.log_text(), "the TURN secret appeared in the server log"


def test_credentials_request(make_server):
    srv = extdisco_server(make_server)

    async def scenario():
        async with online(srv, "alice", PASSWORD) as s:
            before = int(time.time())
            reply = await s.iq_xml(f"<iq type='get' to='localhost'><credentials xmlns='{NS}'>"
                                   f"<service host='turn.localhost' type='turn'/>"
                                   f"</credentials></iq>")
            after = int(time.time()) + 1
            assert reply["type"] == "result", reply
            (svc,) = services(reply, "credentials")
            check_credentials(svc, "alice@localhost", before, after)
            unknown = await s.iq_xml(f"<iq type='get' to='localhost'><credentials xmlns='{NS}'>"
                                     f"<service host='elsewhere.example' type='turn'/>"
                                     f"</credentials></iq>")
            assert error_condition(unknown.xml) == "item-not-found", unknown
    run(scenario())
