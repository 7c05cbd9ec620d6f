"""XEP-0049 private XML storage, through slixmpp's xep_0049 plugin."""

import contextlib

from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ElementBase

from conftest import PASSWORD
from xmpp_client import Session, error_condition, q, run

NS_PRIVATE = "jabber:iq:private"
NS_PREFS = "urn:example:conformance:prefs"


class Prefs(ElementBase):
    """A client-defined payload, as a client would register with xep_0049."""
    name = "prefs"
    namespace = NS_PREFS
    plugin_attrib = "conf_prefs"
    interfaces = {"color"}
    sub_interfaces = interfaces


@contextlib.asynccontextmanager
async def online_private(server, user):
    session = Session(server, user, PASSWORD)
    session.xmpp.register_plugin("xep_0049")
    session.xmpp["xep_0049"].register(Prefs)
    await session.connect()
    try:
        yield session
    finally:
        await session.disconnect()


async def reply_of(pending):
    """The plugin returns the send() future: the reply, result or error alike."""
    try:
        return await pending
    except IqError as e:
        return e.iq


async def store(session, color):
    prefs = Prefs()
    prefs["color"] = color
    return await reply_of(session.xmpp["xep_0049"].store(prefs))


async def retrieve(session):
    return await reply_of(session.xmpp["xep_0049"].retrieve("conf_prefs"))


def test_store_and_retrieve(server, accounts):
    (name,) = accounts(server, "pra")

    async def scenario():
        async with online_private(server, name) as s:
            # Nothing stored: the requested empty element comes back (XEP-0049 §2.3).
            empty = await retrieve(s)
            assert empty["type"] == "result", empty
            assert empty["private"]["conf_prefs"]["color"] == ""
            assert (await store(s, "blue"))["type"] == "result"
            got = await retrieve(s)
            assert got["private"]["conf_prefs"]["color"] == "blue"
            # A set replaces the element of that namespace.
            await store(s, "green")
            assert (await retrieve(s))["private"]["conf_prefs"]["color"] == "green"
        # A new session sees the same data.
        async with online_private(server, name) as s:
            assert (await retrieve(s))["private"]["conf_prefs"]["color"] == "green"
    run(scenario())


def test_other_users_data_is_forbidden(server, accounts):
    a_name, b_name = accounts(server, "prb", "prc")

    async def scenario():
        async with online_private(server, a_name) as a, online_private(server, b_name) as b:
            await store(b, "secret-red")
            for kind, inner in (("get", f"<prefs xmlns='{NS_PREFS}'/>"),
                                ("set", f"<prefs xmlns='{NS_PREFS}'><color>x</color></prefs>")):
                reply = await a.iq_xml(f"<iq type='{kind}' to='{b_name}@localhost'>"
                                       f"<query xmlns='{NS_PRIVATE}'>{inner}</query></iq>")
                assert error_condition(reply.xml) == "forbidden", reply
            assert (await retrieve(b))["private"]["conf_prefs"]["color"] == "secret-red"
    run(scenario())


def test_refused_namespaces_and_empty_query(server, accounts):
    (name,) = accounts(server, "prd")

    async def scenario():
        async with online_private(server, name) as s:
            for ns in ("jabber:client", "jabber:server", NS_PRIVATE):
                for kind in ("get", "set"):
                    reply = await s.iq_xml(f"<iq type='{kind}'><query xmlns='{NS_PRIVATE}'>"
                                           f"<x xmlns='{ns}'/></query></iq>")
                    assert error_condition(reply.xml) == "not-acceptable", (ns, kind, reply)
            reply = await s.iq_xml(f"<iq type='get'><query xmlns='{NS_PRIVATE}'/></iq>")
            assert error_condition(reply.xml) == "not-acceptable", reply
    run(scenario())


def test_limits_and_restart(make_server, accounts):
    srv = make_server(extra_sections={"private_storage": {"max_bytes": 512, "max_entries": 2}})
    (name,) = accounts(srv, "pre")

    def set_xml(inner):
        return f"<iq type='set'><query xmlns='{NS_PRIVATE}'>{inner}</query></iq>"

    async def fill():
        async with online_private(srv, name) as s:
            assert (await store(s, "kept"))["type"] == "result"
            big = f"<big xmlns='urn:example:big'>{'x' * 1024}</big>"
            assert error_condition((await s.iq_xml(set_xml(big))).xml) == "not-acceptable"
            second = await s.iq_xml(set_xml("<two xmlns='urn:example:two'/>"))
            assert second["type"] == "result", second
            third = await s.iq_xml(set_xml("<three xmlns='urn:example:three'/>"))
            assert error_condition(third.xml) == "resource-constraint", third
            # Replacing an existing entry is still allowed when full.
            assert (await store(s, "still kept"))["type"] == "result"

    async def read():
        async with online_private(srv, name) as s:
            assert (await retrieve(s))["private"]["conf_prefs"]["color"] == "still kept"

    run(fill())
    srv.restart()
    run(read())
