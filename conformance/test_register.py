"""XEP-0077 In-Band Registration: register, closed registration, password change, removal."""

import asyncio
import itertools

import pytest

import rawxmpp
from conftest import PASSWORD
from rawxmpp import RawStream, q
from xmpp_client import (NS_REGISTER, NS_REGISTER_FEATURE, Session, error_condition,
                         login_error, login_ok, online, run)

_names = itertools.count(1)


def new_name(prefix="reg"):
    return f"{prefix}{next(_names)}"


def register_raw(stream: RawStream, username: str, password: str):
    stream.send(f"<iq type='set' id='reg-{username}'><query xmlns='{NS_REGISTER}'>"
                f"<username>{username}</username><password>{password}</password></query></iq>")
    return stream.expect(q(rawxmpp.NS_CLIENT, "iq"))


# -- registration open -----------------------------------------------------

def test_register_then_login(server):
    name = new_name()

    async def scenario():
        session = Session(server, name, "s3cret-new", register=True, mech="SCRAM-SHA-256")
        await session.connect()   # registers in-band, then authenticates as the new user
        try:
            assert session.registration_result is not None, "registration IQ never sent"
            assert session.registration_result["type"] == "result", session.registration_result
            assert session.jid.bare == f"{name}@localhost"
        finally:
            await session.disconnect()
        # a fresh connection, no registration this time, every mechanism
        for mech in ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"):
            async with online(server, name, "s3cret-new", mech=mech):
                pass
    run(scenario())
    assert f"{name}@localhost" in server.users()


def test_register_form_lists_username_and_password(server):
    stream = RawStream(server.c2s_port)
    try:
        stream.open()
        stream.starttls()
        stream.send(f"<iq type='get' id='form1'><query xmlns='{NS_REGISTER}'/></iq>")
        reply = stream.expect(q(rawxmpp.NS_CLIENT, "iq"))
        assert reply.get("type") == "result", rawxmpp.ET.tostring(reply)
        query = reply.find(q(NS_REGISTER, "query"))
        assert query is not None
        assert query.find(q(NS_REGISTER, "username")) is not None
        assert query.find(q(NS_REGISTER, "password")) is not None
    finally:
        stream.close()


def test_register_stream_feature_advertised_when_open(server):
    """XEP-0077 §8 (MAY): <register xmlns='http://jabber.org/features/iq-register'/>."""
    stream = RawStream(server.c2s_port)
    try:
        stream.open()
        features = stream.starttls()
        assert features.find(q(NS_REGISTER_FEATURE, "register")) is not None
    finally:
        stream.close()


def test_register_existing_username_conflict(server):
    stream = RawStream(server.c2s_port)
    try:
        stream.open()
        stream.starttls()
        reply = register_raw(stream, "alice", "hijack")
        assert reply.get("type") == "error", "re-registering an existing user succeeded"
        assert error_condition(reply) == "conflict"
    finally:
        stream.close()
    run(login_ok(server, "alice", PASSWORD))   # alice's password is unchanged


# -- registration closed ---------------------------------------------------

def test_registration_closed_refused(make_server):
    srv = make_server(registration_open=False)
    stream = RawStream(srv.c2s_port)
    try:
        stream.open()
        features = stream.starttls()
        assert features.find(q(NS_REGISTER_FEATURE, "register")) is None, \
            "registration feature advertised although registration is closed"
        reply = register_raw(stream, "intruder", "pw")
        assert reply.get("type") == "error", "registration succeeded although closed"
        assert error_condition(reply) in ("not-allowed", "service-unavailable"), \
            rawxmpp.ET.tostring(reply)
    finally:
        stream.close()
    assert "intruder@localhost" not in srv.users()


def test_registration_closed_still_allows_cli_accounts(make_server):
    srv = make_server(registration_open=False, accounts={"erin": PASSWORD})
    run(login_ok(srv, "erin", PASSWORD, mech="SCRAM-SHA-256"))


# -- password change -------------------------------------------------------

def test_change_password_then_login_with_new(server):
    name = new_name("pw")
    server.adduser(name, "old-password")

    async def scenario():
        async with online(server, name, "old-password", mech="SCRAM-SHA-256") as user:
            reply = await user.iq(_change_password_iq(user, name, "new-password"))
            assert reply["type"] == "result", reply
        for mech in ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"):
            assert await login_error(server, name, "old-password", mech=mech) == \
                "not-authorized", f"old password still works with {mech}"
            await login_ok(server, name, "new-password", mech=mech)
    run(scenario())


def _change_password_iq(session, username, password):
    iq = session.xmpp.Iq()
    iq["type"] = "set"
    iq["to"] = "localhost"
    iq["register"]["username"] = username
    iq["register"]["password"] = password
    return iq


def test_change_password_empty_keeps_old(server):
    """XEP-0077 §3.3: an empty <password/> MUST NOT set a null password."""
    name = new_name("pw")
    server.adduser(name, "keep-me")

    async def scenario():
        async with online(server, name, "keep-me", mech="SCRAM-SHA-256") as user:
            await user.iq_xml(f"<iq type='set' to='localhost'><query xmlns='{NS_REGISTER}'>"
                              f"<username>{name}</username><password/></query></iq>")
        await login_ok(server, name, "keep-me", mech="SCRAM-SHA-256")
        # an empty PLAIN password is malformed (RFC 4616) or simply wrong
        assert await login_error(server, name, "", mech="PLAIN") in ("not-authorized",
                                                                    "malformed-request")
    run(scenario())


# -- account removal -------------------------------------------------------

async def _remove_account(session):
    """Send <remove/>; the server may answer with a result, a stream error, or both."""
    disconnected = asyncio.ensure_future(session.xmpp.wait_until("disconnected", 10))
    iq = session.xmpp.Iq()
    iq["type"] = "set"
    iq["register"]["remove"] = True
    reply_future = asyncio.ensure_future(session.iq(iq))
    done, _ = await asyncio.wait({disconnected, reply_future}, timeout=10,
                                 return_when=asyncio.FIRST_COMPLETED)
    assert done, "neither a reply nor a disconnect within 10s after <remove/>"
    if reply_future in done:
        reply = reply_future.result()
        assert reply["type"] == "result", f"account removal refused: {reply}"
    else:
        reply_future.cancel()
    disconnected.cancel()


def test_account_removal(server):
    name = new_name("rm")
    server.adduser(name, PASSWORD)

    async def scenario():
        session = Session(server, name, PASSWORD, mech="SCRAM-SHA-256")
        await session.connect()
        try:
            await _remove_account(session)
        finally:
            await session.disconnect()
        assert await login_error(server, name, PASSWORD, mech="SCRAM-SHA-256") == "not-authorized"
    run(scenario())
    assert f"{name}@localhost" not in server.users()


def test_account_removal_ends_other_sessions(server):
    """XEP-0077 §3.2: the server SHOULD terminate all active sessions of the removed account."""
    name = new_name("rm")
    server.adduser(name, PASSWORD)

    async def scenario():
        first = await Session(server, name, PASSWORD, resource="one").connect()
        second = await Session(server, name, PASSWORD, resource="two").connect()
        gone = asyncio.ensure_future(second.xmpp.wait_until("disconnected", 10))
        try:
            await _remove_account(first)
            await asyncio.wait_for(gone, 10)
        except asyncio.TimeoutError:
            raise AssertionError("the account's other session was not terminated") from None
        finally:
            await first.disconnect()
            await second.disconnect()
    run(scenario())


def test_registered_account_can_be_removed_and_registered_again(server):
    name = new_name("again")

    async def scenario():
        session = await Session(server, name, "first", register=True).connect()
        try:
            await _remove_account(session)
        finally:
            await session.disconnect()
        again = await Session(server, name, "second", register=True).connect()
        await again.disconnect()
        assert await login_error(server, name, "first", mech="SCRAM-SHA-256") == "not-authorized"
    run(scenario())


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256"])
def test_cli_deluser_then_login_fails(server, mech):
    name = new_name("cli")
    server.adduser(name, PASSWORD)
    run(login_ok(server, name, PASSWORD, mech=mech))
    server.deluser(name)
    assert f"{name}@localhost" not in server.users()

    async def scenario():
        assert await login_error(server, name, PASSWORD, mech=mech) == "not-authorized"
    run(scenario())


def test_registered_account_sees_registered_flag(server):
    """XEP-0077 §3.1: an IQ get from a registered entity MUST include <registered/>."""
    async def scenario():
        async with online(server, "alice", PASSWORD) as s:
            reply = await s.iq_xml(f"<iq type='get'><query xmlns='{NS_REGISTER}'/></iq>")
            assert reply["type"] == "result", reply
            query = reply.xml.find(q(NS_REGISTER, "query"))
            assert query.find(q(NS_REGISTER, "registered")) is not None, reply
            username = query.find(q(NS_REGISTER, "username"))
            assert username is not None and username.text == "alice", reply
    run(scenario())


@pytest.mark.parametrize("username", ["bad user", "at@sign", ""], ids=["space", "at-sign", "empty"])
def test_register_invalid_username_refused(server, username):
    """XEP-0077 §3.1 / RFC 7622: a username that is no valid localpart is refused."""
    stream = RawStream(server.c2s_port)
    try:
        stream.open()
        stream.starttls()
        reply = register_raw(stream, username, "pw-invalid")
        assert reply.get("type") == "error", f"registered {username!r}"
        assert error_condition(reply) in ("not-acceptable", "jid-malformed", "bad-request"), \
            rawxmpp.ET.tostring(reply)
    finally:
        stream.close()


def test_register_empty_password_refused(server):
    name = new_name()
    stream = RawStream(server.c2s_port)
    try:
        stream.open()
        stream.starttls()
        reply = register_raw(stream, name, "")
        assert reply.get("type") == "error", "registered an account with an empty password"
        assert error_condition(reply) in ("not-acceptable", "bad-request"), \
            rawxmpp.ET.tostring(reply)
    finally:
        stream.close()
    assert f"{name}@localhost" not in server.users()


def test_change_password_of_another_user_refused(server):
    """A user may change only their own password (XEP-0077 §3.3 acts on the sender)."""
    name = new_name("pw")
    victim = new_name("victim")
    server.adduser_many({name: PASSWORD, victim: "victim-password"})

    async def scenario():
        async with online(server, name, PASSWORD) as attacker:
            reply = await attacker.iq(_change_password_iq(attacker, victim, "pwned"))
            assert reply["type"] == "error", "changing another user's password succeeded"
        await login_ok(server, victim, "victim-password", mech="SCRAM-SHA-256")
        assert await login_error(server, victim, "pwned", mech="SCRAM-SHA-256") == "not-authorized"
        await login_ok(server, name, PASSWORD, mech="SCRAM-SHA-256")
    run(scenario())
