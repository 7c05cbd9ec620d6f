//! The `muc#roomconfig` data form (XEP-0045 §10.2, field registry §15.5.3) and the
//! `muc#roominfo` extended disco form (§15.5.4), to and from [`RoomConfig`].

use minidom::Element;
use std::collections::HashMap;

use super::room::{RoomConfig, Whois};
use crate::stanza::{BuilderExt, Condition, StanzaError};

pub const NS_DATA: &str = "jabber:x:data";
pub const FORM_CONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
pub const FORM_INFO: &str = "http://jabber.org/protocol/muc#roominfo";

/// One `<field/>`.
pub fn field(var: &str, type_: &str, label: &str, values: &[&str], options: &[&str]) -> Element {
    let mut f = Element::builder("field", NS_DATA).at("var", var);
    if !type_.is_empty() {
        f = f.at("type", type_);
    }
    if !label.is_empty() {
        f = f.at("label", label);
    }
    for o in options {
        f = f.append(
            Element::builder("option", NS_DATA)
                .at("label", *o)
                .append(Element::builder("value", NS_DATA).append(*o).build())
                .build(),
        );
    }
    for v in values {
        f = f.append(Element::builder("value", NS_DATA).append(*v).build());
    }
    f.build()
}

fn hidden_form_type(ns: &str) -> Element {
    field("FORM_TYPE", "hidden", "", &[ns], &[])
}

fn b(v: bool) -> &'static str {
    if v {
        "1"
    } else {
        "0"
    }
}

/// The configuration form with the room's current values (§10.2, example 163).
pub fn config_form(c: &RoomConfig, room: &str) -> Element {
    let max = if c.max_occupants == 0 {
        "none".to_string()
    } else {
        c.max_occupants.to_string()
    };
    let hist = c.history_length.to_string();
    let whois = match c.whois {
        Whois::Moderators => "moderators",
        Whois::Anyone => "anyone",
    };
    let member_list: &[&str] = if c.members_can_get_member_list {
        &["moderator", "participant", "visitor"]
    } else {
        &["moderator"]
    };
    let fields = vec![
        hidden_form_type(FORM_CONFIG),
        field(
            "muc#roomconfig_roomname",
            "text-single",
            "Natural-Language Room Name",
            &[&c.name],
            &[],
        ),
        field(
            "muc#roomconfig_roomdesc",
            "text-single",
            "Short Description of Room",
            &[&c.description],
            &[],
        ),
        field(
            "muc#roomconfig_persistentroom",
            "boolean",
            "Make Room Persistent?",
            &[b(c.persistent)],
            &[],
        ),
        field(
            "muc#roomconfig_publicroom",
            "boolean",
            "Make Room Publicly Searchable?",
            &[b(c.public)],
            &[],
        ),
        field(
            "muc#roomconfig_membersonly",
            "boolean",
            "Make Room Members-Only?",
            &[b(c.members_only)],
            &[],
        ),
        field(
            "muc#roomconfig_moderatedroom",
            "boolean",
            "Make Room Moderated?",
            &[b(c.moderated)],
            &[],
        ),
        field(
            "muc#roomconfig_passwordprotectedroom",
            "boolean",
            "Password Required to Enter?",
            &[b(!c.password.is_empty())],
            &[],
        ),
        field(
            "muc#roomconfig_roomsecret",
            "text-private",
            "Password",
            &[&c.password],
            &[],
        ),
        field(
            "muc#roomconfig_maxusers",
            "list-single",
            "Maximum Number of Occupants",
            &[&max],
            &["10", "20", "30", "50", "100", "none"],
        ),
        field(
            "muc#roomconfig_whois",
            "list-single",
            "Who May Discover Real JIDs?",
            &[whois],
            &["moderators", "anyone"],
        ),
        field(
            "muc#maxhistoryfetch",
            "text-single",
            "Maximum Number of History Messages Returned by Room",
            &[&hist],
            &[],
        ),
        field(
            "muc#roomconfig_allowpm",
            "list-single",
            "Allow Private Messages",
            &[if c.allow_private_messages {
                "anyone"
            } else {
                "none"
            }],
            &["anyone", "none"],
        ),
        field(
            "muc#roomconfig_allowinvites",
            "boolean",
            "Allow Occupants to Invite Others?",
            &[b(c.allow_invites)],
            &[],
        ),
        field(
            "muc#roomconfig_changesubject",
            "boolean",
            "Allow Occupants to Change Subject?",
            &[b(c.change_subject)],
            &[],
        ),
        field(
            "muc#roomconfig_enablelogging",
            "boolean",
            "Enable Public Logging?",
            &[b(c.logging)],
            &[],
        ),
        field(
            "muc#roomconfig_getmemberlist",
            "list-multi",
            "Roles and Affiliations that May Retrieve Member List",
            member_list,
            &["moderator", "participant", "visitor"],
        ),
    ];
    Element::builder("x", NS_DATA)
        .at("type", "form")
        .append(
            Element::builder("title", NS_DATA)
                .append(format!("Configuration for {room}"))
                .build(),
        )
        .append_all(fields)
        .build()
}

/// The submitted values by var.
pub fn values(x: &Element) -> HashMap<String, Vec<String>> {
    let mut m = HashMap::new();
    for f in x.children().filter(|c| c.is("field", NS_DATA)) {
        if let Some(var) = f.attr("var") {
            let vals = f
                .children()
                .filter(|c| c.is("value", NS_DATA))
                .map(|v| v.text())
                .collect();
            m.insert(var.to_string(), vals);
        }
    }
    m
}

fn bad(what: &str) -> StanzaError {
    StanzaError::with_text(
        Condition::NotAcceptable,
        format!("invalid value for {what}"),
    )
}

fn parse_bool(var: &str, v: &str) -> Result<bool, StanzaError> {
    match v.trim() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(bad(var)),
    }
}

/// Apply a submitted form to `current` (§10.2: fields not submitted keep their values;
/// unknown fields are ignored). `max_occupants`/`max_history` are the service's caps.
/// Not-acceptable (§10.2, "violate service policies") for values that do not parse.
pub fn apply(
    current: &RoomConfig,
    x: &Element,
    max_occupants: usize,
    max_history: usize,
) -> Result<RoomConfig, StanzaError> {
    let vals = values(x);
    if let Some(t) = vals.get("FORM_TYPE").and_then(|v| v.first()) {
        if t != FORM_CONFIG {
            return Err(bad("FORM_TYPE"));
        }
    }
    let mut c = current.clone();
    let one = |var: &str| {
        vals.get(var)
            .map(|v| v.first().map(String::as_str).unwrap_or(""))
    };
    let boolean = |var: &str, into: &mut bool| -> Result<(), StanzaError> {
        if let Some(v) = one(var) {
            *into = parse_bool(var, v)?;
        }
        Ok(())
    };
    if let Some(v) = one("muc#roomconfig_roomname") {
        c.name = v.to_string();
    }
    if let Some(v) = one("muc#roomconfig_roomdesc") {
        c.description = v.to_string();
    }
    boolean("muc#roomconfig_persistentroom", &mut c.persistent)?;
    boolean("muc#roomconfig_publicroom", &mut c.public)?;
    boolean("muc#roomconfig_membersonly", &mut c.members_only)?;
    boolean("muc#roomconfig_moderatedroom", &mut c.moderated)?;
    boolean("muc#roomconfig_allowinvites", &mut c.allow_invites)?;
    boolean("muc#roomconfig_changesubject", &mut c.change_subject)?;
    boolean("muc#roomconfig_enablelogging", &mut c.logging)?;
    if let Some(v) = one("muc#roomconfig_roomsecret") {
        c.password = v.to_string();
    }
    let mut protected = !c.password.is_empty();
    boolean("muc#roomconfig_passwordprotectedroom", &mut protected)?;
    if !protected {
        c.password.clear();
    } else if c.password.is_empty() {
        return Err(StanzaError::with_text(
            Condition::NotAcceptable,
            "a password-protected room needs muc#roomconfig_roomsecret",
        ));
    }
    if let Some(v) = one("muc#roomconfig_maxusers") {
        c.max_occupants = match v.trim() {
            "" | "none" | "0" => 0,
            n => n.parse().map_err(|_| bad("muc#roomconfig_maxusers"))?,
        };
        if max_occupants != 0 && (c.max_occupants == 0 || c.max_occupants > max_occupants) {
            c.max_occupants = max_occupants;
        }
    }
    if let Some(v) = one("muc#roomconfig_whois") {
        c.whois = match v.trim() {
            "moderators" => Whois::Moderators,
            "anyone" => Whois::Anyone,
            _ => return Err(bad("muc#roomconfig_whois")),
        };
    }
    for var in ["muc#maxhistoryfetch", "muc#roomconfig_historylength"] {
        if let Some(v) = one(var) {
            let n: usize = v.trim().parse().map_err(|_| bad(var))?;
            c.history_length = n.min(max_history);
        }
    }
    if let Some(v) = one("muc#roomconfig_allowpm") {
        c.allow_private_messages = match v.trim() {
            "anyone" | "participants" | "moderators" | "1" | "true" => true,
            "none" | "0" | "false" => false,
            _ => return Err(bad("muc#roomconfig_allowpm")),
        };
    }
    if let Some(v) = vals.get("muc#roomconfig_getmemberlist") {
        c.members_can_get_member_list = v.iter().any(|r| r == "participant" || r == "visitor");
    }
    Ok(c)
}

/// The §15.5.4 `muc#roominfo` form in a room's disco#info.
pub fn info_form(c: &RoomConfig, occupants: usize, subject: &str) -> Element {
    let n = occupants.to_string();
    Element::builder("x", NS_DATA)
        .at("type", "result")
        .append(hidden_form_type(FORM_INFO))
        .append(field(
            "muc#roominfo_description",
            "",
            "Description",
            &[&c.description],
            &[],
        ))
        .append(field(
            "muc#roominfo_occupants",
            "",
            "Number of occupants",
            &[&n],
            &[],
        ))
        .append(field(
            "muc#roominfo_subject",
            "",
            "Subject",
            &[subject],
            &[],
        ))
        .append(field(
            "muc#roominfo_subjectmod",
            "boolean",
            "",
            &[b(c.change_subject)],
            &[],
        ))
        .append(field(
            "muc#roomconfig_roomname",
            "",
            "Name",
            &[&c.name],
            &[],
        ))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(fields: &[(&str, &str)]) -> Element {
        let mut x = Element::builder("x", NS_DATA).at("type", "submit");
        x = x.append(field("FORM_TYPE", "hidden", "", &[FORM_CONFIG], &[]));
        for (k, v) in fields {
            x = x.append(field(k, "", "", &[v], &[]));
        }
        x.build()
    }

    #[test]
    fn the_form_round_trips() {
        let c = RoomConfig {
            name: "Coven".into(),
            description: "A place".into(),
            persistent: true,
            public: false,
            members_only: true,
            moderated: true,
            password: "cauldron".into(),
            max_occupants: 50,
            whois: Whois::Anyone,
            history_length: 7,
            allow_private_messages: false,
            allow_invites: true,
            change_subject: true,
            logging: true,
            members_can_get_member_list: false,
        };
        let mut form = config_form(&c, "coven@chat");
        crate::stanza::ElementExt::put_attr(&mut form, "type", "submit");
        let back = apply(&RoomConfig::default(), &form, 0, 100).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn invalid_values_are_not_acceptable_and_caps_apply() {
        let d = RoomConfig::default();
        for (k, v) in [
            ("muc#roomconfig_persistentroom", "maybe"),
            ("muc#roomconfig_whois", "everyone"),
            ("muc#roomconfig_maxusers", "lots"),
            ("muc#maxhistoryfetch", "-1"),
        ] {
            let e = apply(&d, &submit(&[(k, v)]), 0, 100).unwrap_err();
            assert_eq!(e.condition, Condition::NotAcceptable, "{k}={v}");
        }
        let e = apply(
            &d,
            &submit(&[("muc#roomconfig_passwordprotectedroom", "1")]),
            0,
            100,
        );
        assert!(e.is_err(), "protected without a secret");
        let c = apply(
            &d,
            &submit(&[
                ("muc#roomconfig_maxusers", "500"),
                ("muc#maxhistoryfetch", "1000"),
            ]),
            200,
            50,
        )
        .unwrap();
        assert_eq!((c.max_occupants, c.history_length), (200, 50));
        // An empty submit (instant room) keeps everything.
        let empty = Element::builder("x", NS_DATA).at("type", "submit").build();
        assert_eq!(apply(&d, &empty, 0, 100).unwrap(), d);
    }
}
