//! Stanza-level building blocks shared by handlers: RFC 6120 §8.3 stanza errors, IQ replies,
//! JID normalization, and XEP-0082 timestamps.

use minidom::Element;

use crate::xml::NS_CLIENT;

pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const NS_STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// RFC 6120 §8.3.3 defined conditions we emit, with their §8.3.2 error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    UnexpectedRequest,
}

impl Condition {
    pub fn name(self) -> &'static str {
        use Condition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// The §8.3.2 'type' RFC 6120 §8.3.3 recommends for each condition.
    pub fn error_type(self) -> &'static str {
        use Condition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation => "modify",
            Conflict | FeatureNotImplemented | ServiceUnavailable | UnexpectedRequest => "cancel",
            Forbidden | NotAllowed | NotAuthorized | RegistrationRequired => "auth",
            InternalServerError | ResourceConstraint | RemoteServerTimeout => "wait",
            ItemNotFound | RemoteServerNotFound => "cancel",
        }
    }
}

/// A stanza error to send back: condition plus optional human text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}", .condition.name(), .text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
pub struct StanzaError {
    pub condition: Condition,
    pub text: Option<String>,
    /// An application-specific condition (RFC 6120 §8.3.2): (element name, namespace).
    pub app: Option<(&'static str, &'static str)>,
}

impl StanzaError {
    pub fn new(condition: Condition) -> Self {
        StanzaError {
            condition,
            text: None,
            app: None,
        }
    }
    pub fn with_text(condition: Condition, text: impl Into<String>) -> Self {
        StanzaError {
            condition,
            text: Some(text.into()),
            app: None,
        }
    }
    /// Add an application-specific condition element (e.g. XEP-0060's pubsub#errors).
    pub fn with_app(mut self, name: &'static str, ns: &'static str) -> Self {
        self.app = Some((name, ns));
        self
    }
    /// The `<error/>` child element.
    pub fn element(&self, by: Option<&str>) -> Element {
        let mut b = Element::builder("error", NS_CLIENT)
            .at("type", self.condition.error_type())
            .append(Element::builder(self.condition.name(), NS_STANZAS).build());
        if let Some(by) = by {
            b = b.at("by", by);
        }
        if let Some(text) = &self.text {
            b = b.append(
                Element::builder("text", NS_STANZAS)
                    .at("xml:lang", "en")
                    .append(text.as_str())
                    .build(),
            );
        }
        if let Some((name, ns)) = self.app {
            b = b.append(Element::builder(name, ns).build());
        }
        b.build()
    }
}

impl From<crate::storage::StorageError> for StanzaError {
    fn from(e: crate::storage::StorageError) -> Self {
        tracing::error!(error = %e, "storage failure while handling a stanza");
        StanzaError::new(Condition::InternalServerError)
    }
}

/// An error reply to a stanza (RFC 6120 §8.3.1): same name and id, addresses swapped,
/// type='error', the original payload echoed for messages only (clients match bounced
/// bodies; a rejected presence payload may be the invalid part itself).
pub fn error_reply(original: &Element, err: &StanzaError) -> Element {
    let mut b = Element::builder(original.name(), NS_CLIENT).at("type", "error");
    if let Some(id) = original.attr("id") {
        b = b.at("id", id);
    }
    if let Some(from) = original.attr("from") {
        b = b.at("to", from);
    }
    if let Some(to) = original.attr("to") {
        b = b.at("from", to);
    }
    if original.name() == "message" {
        for child in original.children() {
            if child.name() != "error" {
                b = b.append(child.clone());
            }
        }
    }
    b.append(err.element(None)).build()
}

/// An IQ result reply with an optional payload.
pub fn iq_result(
    id: &str,
    from: Option<&str>,
    to: Option<&str>,
    payload: Option<Element>,
) -> Element {
    let mut b = Element::builder("iq", NS_CLIENT)
        .at("type", "result")
        .at("id", id);
    if let Some(from) = from {
        b = b.at("from", from);
    }
    if let Some(to) = to {
        b = b.at("to", to);
    }
    if let Some(p) = payload {
        b = b.append(p);
    }
    b.build()
}

/// Parse and normalize (nodeprep/nameprep/resourceprep via the jid crate) a JID attribute.
pub fn parse_jid(s: &str) -> Result<jid::Jid, StanzaError> {
    jid::Jid::new(s).map_err(|_| StanzaError::new(Condition::JidMalformed))
}

/// XEP-0082 DateTime in UTC with millisecond precision, from unix milliseconds.
pub fn xep82_datetime(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// (year, month, day) in UTC of a unix time in seconds.
pub fn civil_date(unix_secs: i64) -> (i64, u32, u32) {
    civil_from_days(unix_secs.div_euclid(86_400))
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random identifier (stream ids, generated resources): 16 bytes, URL-safe base64.
pub fn random_id() -> String {
    use base64::Engine;
    let bytes: [u8; 12] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// String-keyed attribute helpers over minidom 0.19's NcName-typed API. Names are compile-time
/// literals in this crate; `xml:lang` maps to the XML namespace.
pub trait BuilderExt: Sized {
    fn at<V: minidom::IntoAttributeValue>(self, name: &str, value: V) -> Self;
}

impl BuilderExt for minidom::ElementBuilder {
    fn at<V: minidom::IntoAttributeValue>(self, name: &str, value: V) -> Self {
        if name == "xml:lang" {
            if let Ok(n) = minidom::rxml::NcName::try_from("lang") {
                return self.attr_ns(minidom::rxml::Namespace::XML, n, value);
            }
        }
        match minidom::rxml::NcName::try_from(name) {
            Ok(n) => self.attr(n, value),
            Err(_) => self,
        }
    }
}

pub trait ElementExt {
    fn put_attr<V: minidom::IntoAttributeValue>(&mut self, name: &str, value: V);
}

impl ElementExt for Element {
    fn put_attr<V: minidom::IntoAttributeValue>(&mut self, name: &str, value: V) {
        if let Ok(n) = minidom::rxml::NcName::try_from(name) {
            self.set_attr(minidom::rxml::Namespace::NONE, n, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_formats_known_instants() {
        assert_eq!(xep82_datetime(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(xep82_datetime(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            xep82_datetime(1_795_000_000_000),
            "2026-11-18T11:06:40.000Z"
        );
    }

    #[test]
    fn error_reply_swaps_addresses_and_keeps_id() {
        let iq: Element = "<iq xmlns='jabber:client' type='get' id='x1' from='a@b/c' to='b'><query xmlns='urn:foo'/></iq>"
            .parse()
            .unwrap();
        let r = error_reply(&iq, &StanzaError::new(Condition::ServiceUnavailable));
        assert_eq!(r.attr("type"), Some("error"));
        assert_eq!(r.attr("id"), Some("x1"));
        assert_eq!(r.attr("to"), Some("a@b/c"));
        assert_eq!(r.attr("from"), Some("b"));
        let e = r.get_child("error", NS_CLIENT).unwrap();
        assert_eq!(e.attr("type"), Some("cancel"));
        assert!(e.has_child("service-unavailable", NS_STANZAS));
        assert!(
            !r.has_child("query", "urn:foo"),
            "IQ errors do not echo the payload"
        );
    }

    #[test]
    fn jids_are_normalized() {
        let j = parse_jid("Juliet@Example.COM/Balcony").unwrap();
        assert_eq!(j.to_string(), "juliet@example.com/Balcony");
        assert!(parse_jid("a@b@c").is_err());
        assert!(parse_jid("").is_err());
    }
}
