"""A raw XEP-0124/XEP-0206 BOSH client on the standard library (http.client).

Every request is one POST on a fresh connection, run in a thread so several can be
outstanding at once (a held long poll while another request carries a stanza), as a
browser's BOSH client does. Responses are parsed with ElementTree; the tests look at the
attributes and payloads themselves.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import random
import ssl
import xml.etree.ElementTree as ET
from dataclasses import dataclass

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
NS_CLIENT = "jabber:client"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"

HTTP_TIMEOUT = 30.0


def q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def xbosh(attr: str) -> str:
    return q(NS_XBOSH, attr)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def body(self) -> ET.Element:
        return ET.fromstring(self.text)

    @property
    def payloads(self) -> list[ET.Element]:
        return list(self.body)

    @property
    def terminated(self) -> bool:
        return self.body.get("type") == "terminate"

    @property
    def condition(self) -> str | None:
        return self.body.get("condition")


class BoshClient:
    def __init__(self, server, *, https: bool = False, cafile: str | None = None):
        self.server = server
        self.https = https
        self.port = server.https_port if https else server.http_port
        self.ctx = None
        if https:
            self.ctx = ssl.create_default_context(cafile=cafile)
            # The generated certificate names the domain (localhost), which is what we dial.
        self.rid = random.randint(1 << 20, 1 << 40)
        self.sid: str | None = None
        self.jid: str | None = None
        self.creation: Response | None = None

    # -- HTTP --------------------------------------------------------------------

    def _connection(self):
        if self.https:
            return http.client.HTTPSConnection("localhost", self.port, timeout=HTTP_TIMEOUT,
                                               context=self.ctx)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT)

    def http(self, method: str, body: str | bytes | None = None,
             headers: dict | None = None) -> Response:
        conn = self._connection()
        try:
            data = body.encode() if isinstance(body, str) else body
            hdrs = {"Content-Type": "text/xml; charset=utf-8"}
            hdrs.update(headers or {})
            conn.request(method, "/http-bind", body=data, headers=hdrs)
            r = conn.getresponse()
            text = r.read().decode("utf-8")
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, text)
        finally:
            conn.close()

    async def post(self, xml: str) -> Response:
        return await asyncio.to_thread(self.http, "POST", xml)

    # -- bodies ------------------------------------------------------------------

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    def body(self, payload: str = "", rid: int | None = None, **attrs) -> str:
        """A request body: the next rid unless given, the sid, extra attributes
        (`xmpp_restart='true'` becomes xmpp:restart)."""
        rid = self.next_rid() if rid is None else rid
        parts = [f"rid='{rid}'"]
        if self.sid:
            parts.append(f"sid='{self.sid}'")
        for k, v in attrs.items():
            parts.append(f"{k.replace('xmpp_', 'xmpp:')}='{v}'")
        head = (f"<body {' '.join(parts)} xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}'")
        return head + (f">{payload}</body>" if payload else "/>")

    async def request(self, payload: str = "", **attrs) -> Response:
        return await self.post(self.body(payload, **attrs))

    # -- session -----------------------------------------------------------------

    async def create(self, *, wait: int = 60, hold: int = 1, to: str = "localhost",
                     ver: str | None = "1.11") -> Response:
        attrs = dict(to=to, wait=wait, hold=hold, xmpp_version="1.0")
        attrs["xml:lang"] = "en"
        if ver:
            attrs["ver"] = ver
        r = await self.request(**attrs)
        self.creation = r
        if r.status == 200 and not r.terminated:
            self.sid = r.body.get("sid")
        return r

    async def until(self, pred, timeout: float = 15.0) -> ET.Element:
        """Poll (one held request at a time) until a payload matching `pred` arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = []
        while loop.time() < deadline:
            r = await self.request()
            assert r.status == 200 and not r.terminated, r.text
            for p in r.payloads:
                if pred(p):
                    return p
                seen.append(ET.tostring(p, encoding="unicode"))
        raise AssertionError(f"no matching payload within {timeout}s; got: {seen}")

    async def login(self, user: str, password: str, resource: str = "bosh", **create_args):
        """Create a session, SASL PLAIN, restart, bind. Returns the bound JID."""
        await self.authenticate(user, password, **create_args)
        r = await self.request(
            f"<iq xmlns='{NS_CLIENT}' type='set' id='bind1'>"
            f"<bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>")
        iqs = [p for p in r.payloads if p.tag == q(NS_CLIENT, "iq")]
        if not iqs:
            iqs = [await self.until(lambda p: p.tag == q(NS_CLIENT, "iq"))]
        jid = iqs[0].find(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}")
        assert jid is not None, ET.tostring(iqs[0], encoding="unicode")
        self.jid = jid.text
        return self.jid

    async def authenticate(self, user: str, password: str, **create_args):
        """Create a session, SASL PLAIN, restart: where a client binds or resumes."""
        r = await self.create(**create_args)
        assert r.status == 200 and not r.terminated, r.text
        features = r.body.find(q(NS_STREAM, "features"))
        assert features is not None, f"no stream features in the creation response: {r.text}"
        mechs = [m.text for m in features.iter(q(NS_SASL, "mechanism"))]
        assert "PLAIN" in mechs, mechs
        cred = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        r = await self.request(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{cred}</auth>")
        if not any(p.tag == q(NS_SASL, "success") for p in r.payloads):
            r2 = None
            if not r.payloads:   # the answer may come on the next poll
                r2 = await self.request()
            if r2 is None or not any(p.tag == q(NS_SASL, "success") for p in r2.payloads):
                raise AssertionError(f"SASL PLAIN failed: {r.text} {r2.text if r2 else ''}")
        r = await self.request(to="localhost", xmpp_restart="true")
        features = r.body.find(q(NS_STREAM, "features"))
        assert features is not None and features.find(q(NS_BIND, "bind")) is not None, r.text
