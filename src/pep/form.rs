//! The XEP-0004 forms of XEP-0060 node configuration: `pubsub#node_config` (configure get and
//! set, create with configure) and `pubsub#publish-options` (§7.1.5 preconditions), limited to
//! the fields this service implements.

use minidom::Element;

use crate::stanza::{BuilderExt, Condition, StanzaError};
use crate::storage::{AccessModel, NodeConfig, SendLast};

pub const NS_DATA: &str = "jabber:x:data";
pub const FORM_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const FORM_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// Requested values for the fields we know; None: not mentioned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Options {
    pub access_model: Option<AccessModel>,
    /// Some(None) is "max".
    pub max_items: Option<Option<u32>>,
    pub persist_items: Option<bool>,
    pub send_last: Option<SendLast>,
}

/// A field the form named that this service does not implement (or a value it cannot take).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsupported(pub String);

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// Parse a submitted form of `form_type`. Err(Unsupported) for a value we cannot take, and
/// for an unknown field when `strict` (publish-options preconditions must all be checkable,
/// XEP-0060 §7.1.5; a configuration form may carry fields we simply do not offer); Ok(None)
/// for a form of another type or `type='cancel'`.
pub fn parse(x: &Element, form_type: &str, strict: bool) -> Result<Option<Options>, Unsupported> {
    if x.attr("type") == Some("cancel") {
        return Ok(None);
    }
    let mut o = Options::default();
    let mut typed = false;
    for f in x.children().filter(|c| c.is("field", NS_DATA)) {
        let var = f.attr("var").unwrap_or("");
        let value = f
            .get_child("value", NS_DATA)
            .map(|v| v.text())
            .unwrap_or_default();
        let bad = || Unsupported(var.to_string());
        match var {
            "FORM_TYPE" => {
                if value != form_type {
                    return Ok(None);
                }
                typed = true;
            }
            "pubsub#access_model" => {
                o.access_model = Some(AccessModel::parse(&value).ok_or_else(bad)?)
            }
            "pubsub#max_items" => {
                o.max_items = Some(if value == "max" {
                    None
                } else {
                    Some(value.trim().parse::<u32>().map_err(|_| bad())?)
                })
            }
            "pubsub#persist_items" => o.persist_items = Some(parse_bool(&value).ok_or_else(bad)?),
            "pubsub#send_last_published_item" => {
                o.send_last = Some(SendLast::parse(&value).ok_or_else(bad)?)
            }
            // Always true here: accepting them as preconditions is honest.
            "pubsub#deliver_notifications"
            | "pubsub#deliver_payloads"
            | "pubsub#presence_based_delivery"
                if parse_bool(&value) == Some(true) => {}
            _ if strict => return Err(bad()),
            _ => {}
        }
    }
    Ok(typed.then_some(o))
}

impl Options {
    /// The configuration a node auto-created with these options gets.
    pub fn apply(&self, mut c: NodeConfig) -> NodeConfig {
        if let Some(a) = self.access_model {
            c.access_model = a;
        }
        if let Some(m) = self.max_items {
            c.max_items = m;
        }
        if let Some(p) = self.persist_items {
            c.persist_items = p;
        }
        if let Some(s) = self.send_last {
            c.send_last = s;
        }
        c
    }

    /// XEP-0060 §7.1.5: every precondition must equal the node's configuration.
    pub fn met_by(&self, c: &NodeConfig) -> bool {
        self.apply(*c) == *c
    }
}

/// The precondition-not-met error of XEP-0060 §7.1.5.
pub fn precondition_not_met() -> StanzaError {
    StanzaError::new(Condition::Conflict).with_app("precondition-not-met", super::NS_ERRORS)
}

fn field(var: &str, type_: &str, values: &[&str], options: &[&str]) -> Element {
    let mut f = Element::builder("field", NS_DATA)
        .at("var", var)
        .at("type", type_);
    for o in options {
        f = f.append(
            Element::builder("option", NS_DATA)
                .append(Element::builder("value", NS_DATA).append(*o).build())
                .build(),
        );
    }
    for v in values {
        f = f.append(Element::builder("value", NS_DATA).append(*v).build());
    }
    f.build()
}

/// The node_config form describing `c` (XEP-0060 §8.2.2).
pub fn node_config_form(c: &NodeConfig) -> Element {
    let max = c
        .max_items
        .map(|m| m.to_string())
        .unwrap_or_else(|| "max".to_string());
    Element::builder("x", NS_DATA)
        .at("type", "form")
        .append(field("FORM_TYPE", "hidden", &[FORM_NODE_CONFIG], &[]))
        .append(field(
            "pubsub#access_model",
            "list-single",
            &[c.access_model.as_str()],
            &["open", "presence", "whitelist"],
        ))
        .append(field("pubsub#max_items", "text-single", &[&max], &[]))
        .append(field(
            "pubsub#persist_items",
            "boolean",
            &[if c.persist_items { "1" } else { "0" }],
            &[],
        ))
        .append(field(
            "pubsub#send_last_published_item",
            "list-single",
            &[c.send_last.as_str()],
            &["never", "on_sub", "on_sub_and_presence"],
        ))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(ty: &str, fields: &[(&str, &str)]) -> Element {
        let mut x = format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{ty}</value></field>"
        );
        for (k, v) in fields {
            x.push_str(&format!("<field var='{k}'><value>{v}</value></field>"));
        }
        x.push_str("</x>");
        x.parse().unwrap()
    }

    #[test]
    fn publish_options_are_preconditions() {
        let o = parse(
            &form(
                FORM_PUBLISH_OPTIONS,
                &[("pubsub#access_model", "open"), ("pubsub#max_items", "max")],
            ),
            FORM_PUBLISH_OPTIONS,
            true,
        )
        .unwrap()
        .unwrap();
        let c = o.apply(NodeConfig::default());
        assert_eq!(c.access_model, AccessModel::Open);
        assert_eq!(c.max_items, None);
        assert!(o.met_by(&c));
        assert!(!o.met_by(&NodeConfig::default()));
        // Unknown fields are refused, forms of another type ignored.
        assert_eq!(
            parse(
                &form(FORM_PUBLISH_OPTIONS, &[("pubsub#title", "x")]),
                FORM_PUBLISH_OPTIONS,
                true
            ),
            Err(Unsupported("pubsub#title".into()))
        );
        // A configuration form may name fields we do not offer; they are ignored.
        assert_eq!(
            parse(
                &form(FORM_NODE_CONFIG, &[("pubsub#title", "x")]),
                FORM_NODE_CONFIG,
                false
            ),
            Ok(Some(Options::default()))
        );
        assert_eq!(
            parse(&form("urn:other", &[]), FORM_PUBLISH_OPTIONS, true),
            Ok(None)
        );
        assert!(parse(
            &form(FORM_PUBLISH_OPTIONS, &[("pubsub#max_items", "-1")]),
            FORM_PUBLISH_OPTIONS,
            true
        )
        .is_err());
    }

    #[test]
    fn config_form_round_trips() {
        let c = NodeConfig {
            access_model: AccessModel::Whitelist,
            max_items: None,
            persist_items: true,
            send_last: SendLast::Never,
        };
        let mut x = node_config_form(&c);
        crate::stanza::ElementExt::put_attr(&mut x, "type", "submit");
        let o = parse(&x, FORM_NODE_CONFIG, true).unwrap().unwrap();
        assert_eq!(o.apply(NodeConfig::default()), c);
    }
}
