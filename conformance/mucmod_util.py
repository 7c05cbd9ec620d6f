"""Helpers for the XEP-0045 moderation and room-archive tests (test_muc_moderation.py,
test_muc_mam.py): joining, creating configured rooms, reading muc#user payloads, and raw
XEP-0313 queries addressed to a room."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

from xmpp_client import NS_CLIENT, q

MUC = "conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_OWNER = NS_MUC + "#owner"
NS_ADMIN = NS_MUC + "#admin"
NS_DATA = "jabber:x:data"
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_SID = "urn:xmpp:sid:0"
NS_FWD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"
NS_RETRACT = "urn:xmpp:message-retract:1"
NS_MODERATE = "urn:xmpp:message-moderate:1"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"

_rooms = itertools.count(1)
_qids = itertools.count(1)


def new_room(prefix: str) -> str:
    return f"{prefix}{next(_rooms)}@{MUC}"


def frm(stanza) -> str:
    return stanza.xml.get("from") or ""


def user_x(stanza) -> ET.Element | None:
    return stanza.xml.find(q(NS_USER, "x"))


def codes(stanza) -> set[str]:
    x = user_x(stanza)
    return set() if x is None else {s.get("code") for s in x.findall(q(NS_USER, "status"))}


def item(stanza) -> ET.Element | None:
    x = user_x(stanza)
    return None if x is None else x.find(q(NS_USER, "item"))


def error_of(stanza) -> str | None:
    err = stanza.xml.find(q(NS_CLIENT, "error"))
    if err is None:
        return None
    for c in err:
        if not c.tag.endswith("}text"):
            return c.tag.split("}", 1)[1]
    return None


async def join(s, room: str, nick: str, history: str = "", password: str | None = None):
    """Send a join and return our own presence back (status 110) or the error presence."""
    pw = f"<password>{password}</password>" if password else ""
    s.send_raw(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'>{history}{pw}</x></presence>")
    return await s.next_presence(
        lambda p: frm(p) == f"{room}/{nick}"
        and ("110" in codes(p) or p.xml.get("type") == "error"))


def form(fields: dict) -> str:
    out = [f"<x xmlns='{NS_DATA}' type='submit'>",
           f"<field var='FORM_TYPE'><value>{NS_MUC}#roomconfig</value></field>"]
    for var, value in fields.items():
        values = value if isinstance(value, list) else [value]
        out.append(f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values)
                   + "</field>")
    out.append("</x>")
    return "".join(out)


async def create(s, room: str, nick: str, **config) -> None:
    """Create `room` as its owner and submit the config: keyword `members_only=True` becomes
    muc#roomconfig_membersonly=1 and so on (see CONFIG_VARS)."""
    p = await join(s, room, nick)
    assert "201" in codes(p), f"room {room} was not created: {p}"
    fields = {CONFIG_VARS[k]: (("1" if v else "0") if isinstance(v, bool) else v)
              for k, v in config.items()}
    r = await s.iq_xml(f"<iq type='set' to='{room}'><query xmlns='{NS_OWNER}'>"
                       f"{form(fields)}</query></iq>")
    assert r["type"] == "result", f"config refused: {r}"


CONFIG_VARS = {
    "name": "muc#roomconfig_roomname",
    "persistent": "muc#roomconfig_persistentroom",
    "members_only": "muc#roomconfig_membersonly",
    "moderated": "muc#roomconfig_moderatedroom",
    "logging": "muc#roomconfig_enablelogging",
    "allow_invites": "muc#roomconfig_allowinvites",
    "whois": "muc#roomconfig_whois",
    "history": "muc#maxhistoryfetch",
}


def groupchat(s, room: str, body: str, extra: str = "", mid: str | None = None) -> str:
    mid = mid or f"m{next(_qids)}"
    s.send_raw(f"<message to='{room}' type='groupchat' id='{mid}'><body>{body}</body>{extra}"
               f"</message>")
    return mid


def is_groupchat(room: str, body: str | None = None):
    def match(m) -> bool:
        if not frm(m).startswith(room + "/") or m.xml.get("type") != "groupchat":
            return False
        b = m.xml.find(q(NS_CLIENT, "body"))
        return body is None or (b is not None and b.text == body)
    return match


def room_stanza_id(m, room: str) -> str:
    ids = [e.get("id") for e in m.xml.findall(q(NS_SID, "stanza-id")) if e.get("by") == room]
    assert len(ids) == 1, f"expected one stanza-id by {room}: {m}"
    return ids[0]


async def admin_set(s, room: str, items: str):
    """A muc#admin set with raw <item/>s; returns the reply."""
    return await s.iq_xml(f"<iq type='set' to='{room}'><query xmlns='{NS_ADMIN}'>{items}"
                          f"</query></iq>")


async def admin_list(s, room: str, attr: str) -> tuple[object, list[ET.Element]]:
    """A muc#admin get of the list named by `attr` (e.g. "affiliation='member'")."""
    r = await s.iq_xml(f"<iq type='get' to='{room}'><query xmlns='{NS_ADMIN}'>"
                       f"<item {attr}/></query></iq>")
    query = r.xml.find(q(NS_ADMIN, "query"))
    return r, ([] if query is None else query.findall(q(NS_ADMIN, "item")))


async def mam(s, room: str, max: int | None = None, after: str | None = None,
              before: str | None = None, fields: str = ""):
    """Raw XEP-0313 query to a room: (reply, fin, [(uid, forwarded message, outer message)])."""
    qid = f"rq{next(_qids)}"
    rsm = ""
    if max is not None or after is not None or before is not None:
        rsm = f"<set xmlns='{NS_RSM}'>"
        if max is not None:
            rsm += f"<max>{max}</max>"
        if after is not None:
            rsm += f"<after>{after}</after>"
        if before is not None:
            rsm += f"<before>{before}</before>" if before else "<before/>"
        rsm += "</set>"
    reply = await s.iq_xml(f"<iq type='set' to='{room}'><query xmlns='{NS_MAM}' queryid='{qid}'>"
                           f"{fields}{rsm}</query></iq>")

    def is_result(m):
        r = m.xml.find(q(NS_MAM, "result"))
        return r is not None and r.get("queryid") == qid

    out = []
    for m in s.messages.drain(is_result):
        r = m.xml.find(q(NS_MAM, "result"))
        fwd = r.find(q(NS_FWD, "forwarded"))
        assert fwd is not None and fwd.find(q(NS_DELAY, "delay")) is not None, str(m)
        out.append((r.get("id"), fwd.find(q(NS_CLIENT, "message")), m))
    return reply, reply.xml.find(q(NS_MAM, "fin")), out


def body_of(el: ET.Element) -> str | None:
    b = el.find(q(NS_CLIENT, "body"))
    return None if b is None else b.text
