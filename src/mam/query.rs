//! XEP-0313 §4 archive queries: the XEP-0004 filter form (`with`, `start`, `end`, and the
//! #extended `before-id`, `after-id`, `ids`), XEP-0059 paging in both directions, flipped
//! pages, the results as forwarded messages ahead of the `<fin/>`, form discovery and the
//! archive metadata.
//!
//! Paging works on the archive's internal row order: UIDs are resolved to rows once, then
//! every page is one indexed range scan (`ORDER BY id LIMIT max+1`, the extra row telling
//! whether the page is the last one in its direction, i.e. `complete='true'`).

use bytes::BytesMut;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;

use super::{NS_MAM, NS_RSM};
use crate::server::ServerState;
use crate::stanza::{parse_jid, xep82_datetime, BuilderExt, Condition, StanzaError};
use crate::storage::{ArchiveFilter, ArchiveOwner, ArchivedMessage, Direction};
use crate::xml;

const NS_DATA: &str = "jabber:x:data";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_DELAY: &str = "urn:xmpp:delay";
const NS_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";

fn bad(text: impl Into<String>) -> StanzaError {
    StanzaError::with_text(Condition::BadRequest, text)
}

/// A parsed `<query/>`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub queryid: Option<String>,
    pub with: Option<Jid>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub after_id: Option<String>,
    pub before_id: Option<String>,
    pub ids: Vec<String>,
    pub max: Option<u32>,
    /// RSM `<after/>`.
    pub after: Option<String>,
    /// RSM `<before/>`: Some("") for the empty element (the last page).
    pub before: Option<String>,
    pub flip: bool,
}

/// Parse a query; errors are bad-request with the reason.
pub fn parse(q: &Element) -> Result<Query, StanzaError> {
    let mut out = Query {
        queryid: q.attr("queryid").map(str::to_string),
        ..Default::default()
    };
    for child in q.children() {
        if child.is("x", NS_DATA) {
            parse_form(child, &mut out)?;
        } else if child.is("set", NS_RSM) {
            parse_rsm(child, &mut out)?;
        } else if child.is("flip-page", NS_MAM) {
            out.flip = true;
        } else {
            return Err(bad(format!("unexpected <{}/> in the query", child.name())));
        }
    }
    if out.after.is_some() && out.before.is_some() {
        return Err(bad("RSM <after/> and <before/> together are not supported"));
    }
    Ok(out)
}

fn values(field: &Element) -> Vec<String> {
    field
        .children()
        .filter(|c| c.is("value", NS_DATA))
        .map(|v| v.text().trim().to_string())
        .collect()
}

fn single(field: &Element, var: &str) -> Result<String, StanzaError> {
    match values(field).as_slice() {
        [v] => Ok(v.clone()),
        _ => Err(bad(format!("field {var}: exactly one value expected"))),
    }
}

fn parse_form(x: &Element, out: &mut Query) -> Result<(), StanzaError> {
    if matches!(x.attr("type"), Some("cancel")) {
        return Err(bad("a cancelled form is not a query"));
    }
    for field in x.children().filter(|c| c.is("field", NS_DATA)) {
        let var = field.attr("var").unwrap_or("");
        match var {
            "FORM_TYPE" => {
                if single(field, var)? != NS_MAM {
                    return Err(bad(format!("FORM_TYPE must be {NS_MAM}")));
                }
            }
            "with" => out.with = Some(parse_jid(&single(field, var)?)?),
            "start" => out.start_ms = Some(parse_time(&single(field, var)?)?),
            "end" => out.end_ms = Some(parse_time(&single(field, var)?)?),
            "after-id" => out.after_id = Some(single(field, var)?),
            "before-id" => out.before_id = Some(single(field, var)?),
            "ids" => out.ids = values(field),
            _ => return Err(bad(format!("unsupported field {var:?}"))),
        }
    }
    Ok(())
}

fn parse_rsm(set: &Element, out: &mut Query) -> Result<(), StanzaError> {
    for c in set.children() {
        let text = c.text();
        match c.name() {
            "max" => {
                out.max = Some(
                    text.trim()
                        .parse()
                        .map_err(|_| bad("RSM <max/> is not a number"))?,
                )
            }
            "after" => out.after = Some(text.trim().to_string()),
            "before" => out.before = Some(text.trim().to_string()),
            "index" => {
                return Err(StanzaError::with_text(
                    Condition::FeatureNotImplemented,
                    "RSM <index/> paging is not supported; use <after/> or <before/>",
                ))
            }
            other => return Err(bad(format!("unexpected RSM <{other}/>"))),
        }
    }
    if out.after.as_deref() == Some("") {
        return Err(bad("RSM <after/> needs a UID"));
    }
    Ok(())
}

/// XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss](Z|±hh:mm)`) to unix milliseconds.
pub fn parse_time(s: &str) -> Result<i64, StanzaError> {
    parse_datetime(s).ok_or_else(|| bad(format!("{s:?} is not a XEP-0082 DateTime")))
}

fn parse_datetime(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest.as_bytes() {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let v = oh * 60 + om;
            if *sign == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// Howard Hinnant's civil-to-days (proleptic Gregorian), the inverse of `civil_from_days`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The form a client can fill in (§4.1.3 "Retrieving form fields").
pub fn form() -> Element {
    let field = |var: &str, kind: &str| {
        Element::builder("field", NS_DATA)
            .at("var", var)
            .at("type", kind)
    };
    Element::builder("query", NS_MAM)
        .append(
            Element::builder("x", NS_DATA)
                .at("type", "form")
                .append(
                    field("FORM_TYPE", "hidden")
                        .append(Element::builder("value", NS_DATA).append(NS_MAM).build())
                        .build(),
                )
                .append(field("with", "jid-single").build())
                .append(field("start", "text-single").build())
                .append(field("end", "text-single").build())
                .append(field("before-id", "text-single").build())
                .append(field("after-id", "text-single").build())
                .append(
                    field("ids", "list-multi")
                        .append(
                            Element::builder("validate", NS_VALIDATE)
                                .at("datatype", "xs:string")
                                .append(Element::builder("open", NS_VALIDATE).build())
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .build()
}

fn user_of(j: &BareJid) -> (&str, &str) {
    (
        j.domain().as_str(),
        j.node().map(|n| n.as_str()).unwrap_or(""),
    )
}

async fn row(server: &ServerState, of: ArchiveOwner<'_>, uid: &str) -> Result<i64, StanzaError> {
    server
        .storage
        .archive()
        .row_of(of, uid)
        .await?
        .ok_or_else(|| {
            StanzaError::with_text(
                Condition::ItemNotFound,
                format!("{uid:?} is not in the archive"),
            )
        })
}

/// Run a query: the result messages go to `out` (ahead of the IQ result, which the caller
/// writes with the returned `<fin/>`).
pub async fn run(
    server: &ServerState,
    owner: &BareJid,
    requester: &FullJid,
    q: Query,
    out: &mut BytesMut,
) -> Result<Element, StanzaError> {
    run_on(
        server,
        user_of(owner).into(),
        owner,
        requester,
        q,
        false,
        out,
    )
    .await
}

/// [`run`] on any archive: `of` says which (a user's or a MUC room's, XEP-0313 §5), `owner`
/// is the JID the results come from; `real_jids` adds the sender's real JID to room results
/// (`<x xmlns='muc#user'><item jid/></x>`, §5.1.2) for a requester allowed to see it.
pub async fn run_on(
    server: &ServerState,
    of: ArchiveOwner<'_>,
    owner: &BareJid,
    requester: &FullJid,
    q: Query,
    real_jids: bool,
    out: &mut BytesMut,
) -> Result<Element, StanzaError> {
    let cfg = &server.config.mam;
    if q.ids.len() > cfg.max_page_size as usize {
        return Err(StanzaError::with_text(
            Condition::PolicyViolation,
            format!("at most {} ids per query", cfg.max_page_size),
        ));
    }
    server.archive.writer.flush().await;
    let archive = server.storage.archive();
    let user = of;
    let mut base = ArchiveFilter {
        with: q.with.as_ref().map(|j| {
            (
                j.to_bare().to_string(),
                j.resource().map(|r| r.as_str().to_string()),
            )
        }),
        start_ms: q.start_ms,
        end_ms: q.end_ms,
        ids: q.ids.clone(),
        ..Default::default()
    };
    if let Some(uid) = &q.after_id {
        base.after_row = Some(row(server, of, uid).await?);
    }
    if let Some(uid) = &q.before_id {
        base.before_row = Some(row(server, of, uid).await?);
    }
    if !q.ids.is_empty() {
        let only_ids = ArchiveFilter {
            ids: q.ids.clone(),
            ..Default::default()
        };
        let mut distinct = q.ids.clone();
        distinct.sort();
        distinct.dedup();
        if archive.count(user, &only_ids).await? != distinct.len() as u64 {
            return Err(StanzaError::with_text(
                Condition::ItemNotFound,
                "an id is not in the archive",
            ));
        }
    }
    let mut page_filter = base.clone();
    let dir = if let Some(b) = q.before.as_deref() {
        if !b.is_empty() {
            let r = row(server, of, b).await?;
            page_filter.before_row = Some(page_filter.before_row.map_or(r, |x| x.min(r)));
        }
        Direction::Backward
    } else {
        if let Some(a) = &q.after {
            let r = row(server, of, a).await?;
            page_filter.after_row = Some(page_filter.after_row.map_or(r, |x| x.max(r)));
        }
        Direction::Forward
    };
    let max = q
        .max
        .unwrap_or(cfg.default_page_size)
        .min(cfg.max_page_size);
    let mut page = archive.page(user, &page_filter, dir, max + 1).await?;
    let complete = page.len() <= max as usize;
    page.truncate(max as usize);
    if dir == Direction::Backward {
        page.reverse();
    }
    let count = archive.count(user, &base).await?;
    let emit = |m: &ArchivedMessage, out: &mut BytesMut| {
        write_result(out, owner, requester, q.queryid.as_deref(), m, real_jids)
    };
    if q.flip {
        page.iter().rev().for_each(|m| emit(m, out));
    } else {
        page.iter().for_each(|m| emit(m, out));
    }
    Ok(fin(&page, count, complete))
}

/// The `<fin/>` with the page's RSM set. No `index` on `<first/>` (optional in XEP-0059, and
/// Prosody sends none): slixmpp's iterator reads `index + items == count` as "last page"
/// even when paging backwards, and would stop after the first page from the end.
fn fin(page: &[ArchivedMessage], count: u64, complete: bool) -> Element {
    let mut set = Element::builder("set", NS_RSM);
    if let (Some(first), Some(last)) = (page.first(), page.last()) {
        let f = Element::builder("first", NS_RSM).append(first.stanza_id.as_str());
        set = set.append(f.build()).append(
            Element::builder("last", NS_RSM)
                .append(last.stanza_id.as_str())
                .build(),
        );
    }
    set = set.append(
        Element::builder("count", NS_RSM)
            .append(count.to_string())
            .build(),
    );
    let mut b = Element::builder("fin", NS_MAM);
    if complete {
        b = b.at("complete", "true");
    }
    b.append(set.build()).build()
}

/// One `<message><result><forwarded><delay/>STORED</forwarded></result></message>`, built
/// as text around the stored stanza (already serialized, with its namespace declared), so a
/// page costs no XML parsing.
fn write_result(
    out: &mut BytesMut,
    owner: &BareJid,
    requester: &FullJid,
    queryid: Option<&str>,
    m: &ArchivedMessage,
    real_jids: bool,
) {
    let qid = queryid
        .map(|q| format!(" queryid='{}'", xml::escape(q)))
        .unwrap_or_default();
    let head = format!(
        "<message xmlns='jabber:client' from='{}' to='{}' id='{}'>\
         <result xmlns='{NS_MAM}'{qid} id='{}'>\
         <forwarded xmlns='{NS_FORWARD}'><delay xmlns='{NS_DELAY}' stamp='{}'/>",
        xml::escape(owner.as_str()),
        xml::escape(requester.as_str()),
        crate::stanza::random_id(),
        xml::escape(&m.stanza_id),
        xep82_datetime(m.stamp_ms),
    );
    out.extend_from_slice(head.as_bytes());
    let end = m
        .stanza
        .rfind("</")
        .filter(|_| real_jids && !m.sender.is_empty());
    match end {
        Some(end) => {
            out.extend_from_slice(&m.stanza.as_bytes()[..end]);
            let x = format!(
                "<x xmlns='http://jabber.org/protocol/muc#user'><item jid='{}'/></x>",
                xml::escape(&m.sender)
            );
            out.extend_from_slice(x.as_bytes());
            out.extend_from_slice(&m.stanza.as_bytes()[end..]);
        }
        None => out.extend_from_slice(m.stanza.as_bytes()),
    }
    out.extend_from_slice(b"</forwarded></result></message>");
}

/// `<metadata/>` (#extended): the first and last messages, or empty for an empty archive.
pub async fn metadata(server: &ServerState, owner: &BareJid) -> Result<Element, StanzaError> {
    metadata_on(server, user_of(owner).into()).await
}

/// [`metadata`] of any archive.
pub async fn metadata_on(
    server: &ServerState,
    of: ArchiveOwner<'_>,
) -> Result<Element, StanzaError> {
    server.archive.writer.flush().await;
    let mut b = Element::builder("metadata", NS_MAM);
    if let Some((first, last)) = server.storage.archive().bounds(of).await? {
        for (name, m) in [("start", first), ("end", last)] {
            b = b.append(
                Element::builder(name, NS_MAM)
                    .at("id", m.stanza_id.as_str())
                    .at("timestamp", xep82_datetime(m.stamp_ms))
                    .build(),
            );
        }
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_datetime("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_datetime("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(
            parse_datetime("2010-06-07T00:00:00Z"),
            Some(1_275_868_800_000)
        );
        let now = crate::stanza::now_ms();
        assert_eq!(parse_datetime(&xep82_datetime(now)), Some(now));
        for bad in [
            "",
            "2010-06-07",
            "2010-06-07T00:00:00",
            "2010-13-07T00:00:00Z",
            "x010-06-07T00:00:00Z",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }

    fn el(s: &str) -> Element {
        s.parse().unwrap()
    }

    #[test]
    fn parses_queries() {
        let q = parse(&el("<query xmlns='urn:xmpp:mam:2' queryid='q1'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
             <field var='with'><value>Juliet@Capulet.lit/Balcony</value></field>\
             <field var='ids'><value>a</value><value>b</value></field></x>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>10</max><before/></set>\
             <flip-page/></query>"))
        .unwrap();
        assert_eq!(q.queryid.as_deref(), Some("q1"));
        assert_eq!(q.with.unwrap().to_string(), "juliet@capulet.lit/Balcony");
        assert_eq!(q.ids, ["a", "b"]);
        assert_eq!(
            (q.max, q.before.as_deref(), q.flip),
            (Some(10), Some(""), true)
        );
        for bad in [
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>x</value></field></x></query>",
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data'><field var='nope'><value>x</value></field></x></query>",
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data'><field var='start'><value>yesterday</value></field></x></query>",
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>-1</max></set></query>",
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><after>a</after><before>b</before></set></query>",
        ] {
            assert!(parse(&el(bad)).is_err(), "{bad}");
        }
    }
}
