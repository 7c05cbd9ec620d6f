//! Discussion history on entering (XEP-0045 §7.2.15): the last messages of the room's
//! in-memory ring, limited by the joiner's `<history maxchars maxstanzas seconds since/>`,
//! each stamped with a XEP-0203 `<delay/>` (spliced into the stored fan-out bytes, no tree).

use bytes::Bytes;
use minidom::Element;

use super::room::{HistoryEntry, Room};
use super::NS_MUC;
use crate::router::{Deliver, SessionHandle};
use crate::stanza::now_ms;

/// The joiner's limits (None: no limit of that kind).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub maxchars: Option<usize>,
    pub maxstanzas: Option<usize>,
    /// Only messages at or after this instant (from `seconds` or `since`).
    pub since_ms: Option<i64>,
}

impl Limits {
    /// From the join's `<x xmlns='muc'/>` (absent or unparsable attributes: no limit).
    pub fn from_join(x: Option<&Element>, now: i64) -> Limits {
        let Some(h) = x.and_then(|x| x.get_child("history", NS_MUC)) else {
            return Limits::default();
        };
        let num = |a: &str| h.attr(a).and_then(|v| v.trim().parse::<u64>().ok());
        let mut since = h
            .attr("since")
            .and_then(|s| crate::mam::query::parse_time(s).ok());
        if let Some(secs) = num("seconds") {
            let t = now.saturating_sub(secs.saturating_mul(1000).min(i64::MAX as u64) as i64);
            since = Some(since.map_or(t, |s| s.max(t)));
        }
        Limits {
            maxchars: num("maxchars").map(|n| n as usize),
            maxstanzas: num("maxstanzas").map(|n| n as usize),
            since_ms: since,
        }
    }
}

/// The history entries to send, oldest first, with their delay stamps spliced in.
pub fn select(history: &[&HistoryEntry], room_jid: &str, limits: Limits) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut chars = 0usize;
    for e in history.iter().rev() {
        if limits.maxstanzas.is_some_and(|m| out.len() >= m) {
            break;
        }
        if limits.since_ms.is_some_and(|s| e.at_ms < s) {
            break;
        }
        let b = stamped(e, room_jid);
        chars += b.len();
        if limits.maxchars.is_some_and(|m| chars > m) {
            break;
        }
        out.push(b);
    }
    out.reverse();
    out
}

/// Push the selected history to the joining session.
pub fn send(room: &Room, x: Option<&Element>, to: &SessionHandle) {
    if room.history.is_empty() {
        return;
    }
    let limits = Limits::from_join(x, now_ms());
    let entries: Vec<&HistoryEntry> = room.history.iter().collect();
    for b in select(&entries, room.jid.as_str(), limits) {
        to.send(Deliver::ToSelf(b));
    }
}

/// `<delay/>` spliced before the end tag of the stored message.
fn stamped(e: &HistoryEntry, room_jid: &str) -> Bytes {
    let delay = format!(
        "<delay xmlns='urn:xmpp:delay' from='{}' stamp='{}'/>",
        crate::xml::escape(room_jid),
        crate::stanza::xep82_datetime(e.at_ms)
    );
    let raw = &e.bytes;
    match memchr::memrchr(b'<', raw) {
        Some(end) if raw.get(end + 1) == Some(&b'/') => {
            let mut v = Vec::with_capacity(raw.len() + delay.len());
            v.extend_from_slice(&raw[..end]);
            v.extend_from_slice(delay.as_bytes());
            v.extend_from_slice(&raw[end..]);
            Bytes::from(v)
        }
        _ => raw.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: i64) -> HistoryEntry {
        HistoryEntry {
            bytes: Bytes::from(format!(
                "<message from='r@c/n' type='groupchat'><body>m{i}</body></message>"
            )),
            at_ms: i * 1000,
        }
    }

    fn bodies(v: &[Bytes]) -> Vec<String> {
        v.iter()
            .map(|b| {
                let s = std::str::from_utf8(b).unwrap();
                let i = s.find("<body>").unwrap() + 6;
                s[i..s.find("</body>").unwrap()].to_string()
            })
            .collect()
    }

    #[test]
    fn limits_select_the_newest_oldest_first() {
        let h: Vec<HistoryEntry> = (1..=5).map(entry).collect();
        let refs: Vec<&HistoryEntry> = h.iter().collect();
        let all = select(&refs, "r@c", Limits::default());
        assert_eq!(bodies(&all), ["m1", "m2", "m3", "m4", "m5"]);
        assert!(std::str::from_utf8(&all[0]).unwrap().contains(
            "<delay xmlns='urn:xmpp:delay' from='r@c' stamp='1970-01-01T00:00:01.000Z'/></message>"
        ));
        let two = Limits {
            maxstanzas: Some(2),
            ..Default::default()
        };
        assert_eq!(bodies(&select(&refs, "r@c", two)), ["m4", "m5"]);
        let since = Limits {
            since_ms: Some(3000),
            ..Default::default()
        };
        assert_eq!(bodies(&select(&refs, "r@c", since)), ["m3", "m4", "m5"]);
        let none = Limits {
            maxchars: Some(0),
            ..Default::default()
        };
        assert!(select(&refs, "r@c", none).is_empty());
    }

    #[test]
    fn join_element_parses_seconds_and_maxstanzas() {
        let x: Element =
            "<x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='3' seconds='10'/></x>"
                .parse()
                .unwrap();
        let l = Limits::from_join(Some(&x), 100_000);
        assert_eq!(l.maxstanzas, Some(3));
        assert_eq!(l.since_ms, Some(90_000));
        assert_eq!(l.maxchars, None);
    }
}
