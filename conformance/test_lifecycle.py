"""The process and its CLI: listeners, account commands while running, clean shutdown."""

import asyncio

from conftest import PASSWORD
from rawxmpp import RawStream
from starling_server import free_ports, port_open
from xmpp_client import Session, login_error, login_ok, online, run


def test_logs_a_listening_line_per_listener(make_server):
    srv = make_server()
    log = srv.log_text()
    for port in (srv.c2s_port, srv.direct_tls_port):
        assert any("listening" in line and str(port) in line for line in log.splitlines()), \
            f"no 'listening' line mentioning port {port}"


def test_cli_accounts_while_running(make_server):
    srv = make_server()
    srv.adduser("frank", PASSWORD)
    srv.adduser_many({"gina": "pw-gina", "hank": "pw-hank"})
    assert {"frank@localhost", "gina@localhost", "hank@localhost"} <= set(srv.users())
    run(login_ok(srv, "gina", "pw-gina", mech="SCRAM-SHA-256"))
    srv.deluser("hank")
    assert "hank@localhost" not in srv.users()

    async def hank_gone():
        assert await login_error(srv, "hank", "pw-hank", mech="SCRAM-SHA-256") == "not-authorized"
    run(hank_gone())


def test_cli_adduser_existing_fails(make_server):
    srv = make_server(accounts={"ivy": PASSWORD})
    proc = srv.cli("adduser", "ivy@localhost", "other", check=False)
    assert proc.returncode != 0, "adduser overwrote an existing account without complaint"
    run(login_ok(srv, "ivy", PASSWORD, mech="SCRAM-SHA-256"))


def test_sigterm_clean_exit(make_server):
    srv = make_server(accounts={"jack": PASSWORD})
    code = srv.stop()
    assert code == 0, f"exit code after SIGTERM: {code} (None = still running after 5s)"


def test_sigterm_with_connected_clients(make_server):
    """Connected clients are told (<system-shutdown/>, RFC 6120 §4.9.3.19) and the exit is clean."""
    srv = make_server(accounts={"kim": PASSWORD})

    async def scenario():
        session = await Session(srv, "kim", PASSWORD).connect()
        session.send_presence()
        gone = asyncio.ensure_future(session.xmpp.wait_until("disconnected", 10))
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, srv.stop)
        try:
            await asyncio.wait_for(gone, 10)
        finally:
            await session.abort()
        assert code == 0, f"exit code after SIGTERM with a client connected: {code}"
        conditions = [child.tag.split("}")[1] for err in session.stream_errors for child in err
                      if not child.tag.endswith("}text")]
        assert "system-shutdown" in conditions, f"stream errors seen: {conditions}"
    run(scenario())


def test_restart_keeps_accounts(make_server):
    srv = make_server(accounts={"liz": PASSWORD})
    srv.restart()
    run(login_ok(srv, "liz", PASSWORD, mech="SCRAM-SHA-512"))


def test_env_overrides_config(make_server):
    """STARLING__SECTION__KEY variables override the config file."""
    (env_port,) = free_ports(1)
    srv = make_server(accounts={"max": PASSWORD}, env={
        "STARLING__LISTEN__C2S": f"127.0.0.1:{env_port}",
        "STARLING__REGISTRATION__OPEN": "false",
    })
    assert srv.c2s_port == env_port != srv.config_c2s_port
    assert not port_open(srv.config_c2s_port), "still listening on the config file's port"
    run(login_ok(srv, "max", PASSWORD, mech="SCRAM-SHA-256"))
    stream = RawStream(srv.c2s_port)
    try:
        stream.open()
        stream.starttls()
        stream.send("<iq type='set' id='r1'><query xmlns='jabber:iq:register'>"
                    "<username>envtest</username><password>pw</password></query></iq>")
        reply = stream.read_element()
        assert reply.get("type") == "error", "registration open although the env closed it"
    finally:
        stream.close()


def test_multiple_domains(make_server):
    """domain = [list]: accounts on each domain log in and talk to each other."""
    srv = make_server(domains=["localhost", "second.test"],
                      accounts={"alice@localhost": PASSWORD, "zoe@second.test": PASSWORD})
    assert srv.users() == ["alice@localhost", "zoe@second.test"]
    assert srv.cli("users", "second.test").stdout.split() == ["zoe@second.test"]

    async def scenario():
        async with online(srv, "alice@localhost", PASSWORD, resource="a") as alice, \
                online(srv, "zoe@second.test", PASSWORD, resource="z") as zoe:
            assert str(zoe.jid) == "zoe@second.test/z"
            alice.send_presence()
            zoe.send_message("alice@localhost/a", "hello from the second domain")
            got = await alice.next_message(lambda m: m["body"] == "hello from the second domain")
            assert got.xml.get("from") == "zoe@second.test/z"
            reply = await zoe.iq_xml("<iq type='get' to='second.test'>"
                                     "<ping xmlns='urn:xmpp:ping'/></iq>")
            assert reply["type"] == "result"
    run(scenario())
