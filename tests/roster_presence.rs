//! Rosters (RFC 6121 §2, XEP-0237), subscriptions and presence (§3, §4), offline messages
//! (XEP-0160/XEP-0203), error routing and the server's own IQ services.

mod common;

use common::*;
use minidom::Element;
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(500);

fn roster_ver(iq: &Element) -> String {
    iq.get_child("query", NS_ROSTER)
        .and_then(|q| q.attr("ver"))
        .unwrap_or_else(|| panic!("no roster ver in {}", describe(iq)))
        .to_string()
}

fn roster_items(iq: &Element) -> Vec<&Element> {
    iq.get_child("query", NS_ROSTER)
        .map(|q| q.children().filter(|c| c.is("item", NS_ROSTER)).collect())
        .unwrap_or_default()
}

fn groups(item: &Element) -> Vec<String> {
    item.children()
        .filter(|c| c.is("group", NS_ROSTER))
        .map(|g| g.text())
        .collect()
}

/// Answer a roster push like a well-behaved client (RFC 6121 §2.1.6).
async fn ack_push(c: &mut RawClient, push: &Element) {
    let id = push.attr("id").expect("push id");
    c.send(&format!("<iq type='result' id='{id}'/>")).await;
}

/// Wait for a roster push about `contact`, check its shape, acknowledge it, return the item.
async fn expect_push(c: &mut RawClient, contact: &str) -> Element {
    let push = c
        .wait_for(&format!("roster push for {contact}"), |e| {
            is_roster_push_for(e, contact)
        })
        .await;
    let me = c.full_jid();
    assert_eq!(
        push.attr("to"),
        Some(me.as_str()),
        "push 'to': {}",
        describe(&push)
    );
    let from = push.attr("from");
    assert!(
        from.is_none() || from == Some(c.bare_jid().as_str()),
        "push from a foreign entity (RFC 6121 §2.1.6): {}",
        describe(&push)
    );
    assert!(
        push.get_child("query", NS_ROSTER)
            .and_then(|q| q.attr("ver"))
            .is_some(),
        "push without ver: {}",
        describe(&push)
    );
    ack_push(c, &push).await;
    roster_item(&push, contact).unwrap().clone()
}

fn sub_of(item: &Element) -> (Option<&str>, Option<&str>) {
    (item.attr("subscription"), item.attr("ask"))
}

fn is_presence(e: &Element, type_: Option<&str>, from: &str) -> bool {
    e.name() == "presence" && e.attr("type") == type_ && e.attr("from") == Some(from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_get_set_push_remove_and_versioning() {
    let server = TestServer::start().await;
    server.add_user("alice", PASSWORD).await;
    server.add_user("bob", PASSWORD).await;
    let mut a = server.login("alice", PASSWORD, "a").await;
    // A second resource that never asks for the roster: not "interested", gets no pushes.
    let mut quiet = server.login("alice", PASSWORD, "quiet").await;

    // Initial get, with versioning requested.
    let r = a
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster' ver=''/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", describe(&r));
    let v0 = roster_ver(&r);
    assert!(roster_items(&r).is_empty());

    // Add.
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'>\
             <item jid='bob@localhost' name='Bob'><group>Friends</group></item></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", describe(&r));
    assert!(
        r.children().next().is_none(),
        "roster set result must be empty: {}",
        describe(&r)
    );
    let item = expect_push(&mut a, "bob@localhost").await;
    assert_eq!(item.attr("name"), Some("Bob"));
    assert_eq!(sub_of(&item), (Some("none"), None));
    assert_eq!(groups(&item), vec!["Friends"]);

    // Current version: empty result. Stale version: the full roster with the new version.
    let r = a
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert_eq!(roster_items(&r).len(), 1);
    let r2 = a
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster' ver=''/></iq>")
        .await;
    let v1 = roster_ver(&r2);
    assert_ne!(v0, v1, "version unchanged after a modification");
    let up_to_date = a
        .iq(&format!(
            "<iq type='get' id='{{id}}'><query xmlns='jabber:iq:roster' ver='{v1}'/></iq>"
        ))
        .await;
    assert_eq!(up_to_date.attr("type"), Some("result"));
    assert!(
        up_to_date.children().next().is_none(),
        "get with the current ver must return an empty result: {}",
        describe(&up_to_date)
    );
    let stale = a
        .iq(&format!(
            "<iq type='get' id='{{id}}'><query xmlns='jabber:iq:roster' ver='{v0}'/></iq>"
        ))
        .await;
    assert_eq!(roster_ver(&stale), v1);
    let items = roster_items(&stale);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].attr("jid"), Some("bob@localhost"));
    assert_eq!(items[0].attr("name"), Some("Bob"));

    // Update: name and groups replaced.
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'>\
             <item jid='bob@localhost' name='Robert'><group>Work</group><group>Chess</group></item></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", describe(&r));
    let item = expect_push(&mut a, "bob@localhost").await;
    assert_eq!(item.attr("name"), Some("Robert"));
    let mut g = groups(&item);
    g.sort();
    assert_eq!(g, vec!["Chess", "Work"]);

    // Invalid sets.
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'>\
             <item jid='x@localhost'/><item jid='y@localhost'/></query></iq>")
        .await;
    assert_eq!(
        stanza_error_condition(&r),
        "bad-request",
        "two items in one set"
    );
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'>\
             <item jid='x@localhost'><group>G</group><group>G</group></item></query></iq>")
        .await;
    assert_eq!(stanza_error_condition(&r), "bad-request", "duplicate group");

    // Remove.
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'>\
             <item jid='bob@localhost' subscription='remove'/></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", describe(&r));
    let item = expect_push(&mut a, "bob@localhost").await;
    assert_eq!(item.attr("subscription"), Some("remove"));
    let r = a
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster' ver=''/></iq>")
        .await;
    assert!(roster_items(&r).is_empty(), "{}", describe(&r));
    let v3 = roster_ver(&r);
    assert!(v3 != v1 && v3 != v0);
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'>\
             <item jid='bob@localhost' subscription='remove'/></query></iq>")
        .await;
    assert_eq!(stanza_error_condition(&r), "item-not-found");

    // The uninterested resource got none of the pushes.
    quiet
        .expect_none(
            SHORT,
            "roster push to a resource that never requested the roster",
            |e| e.name() == "iq" && e.get_child("query", NS_ROSTER).is_some(),
        )
        .await;
    // Nobody else may read or write alice's roster.
    let mut bob = server.login("bob", PASSWORD, "b").await;
    let r = bob
        .iq("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert_eq!(
        r.attr("type"),
        Some("error"),
        "bob read alice's roster: {}",
        describe(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_flow_ends_in_both_and_presence_flows() {
    let server = TestServer::start().await;
    server.add_user("alice", PASSWORD).await;
    server.add_user("bob", PASSWORD).await;
    let mut a = server.login("alice", PASSWORD, "a").await;
    let mut b = server.login("bob", PASSWORD, "b").await;
    a.roster().await;
    b.roster().await;
    a.available().await;
    b.available().await;

    // Before any subscription, presence does not flow.
    a.send("<presence><status>nobody sees this</status></presence>")
        .await;
    b.expect_none(SHORT, "presence from an unsubscribed contact", |e| {
        e.name() == "presence"
    })
    .await;

    // alice -> bob: subscribe.
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    let item = expect_push(&mut a, "bob@localhost").await;
    assert_eq!(sub_of(&item), (Some("none"), Some("subscribe")));
    let req = b
        .wait_for("subscription request", |e| {
            is_presence(e, Some("subscribe"), "alice@localhost")
        })
        .await;
    assert_eq!(req.attr("to"), Some("bob@localhost"), "{}", describe(&req));

    // bob approves.
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let item = expect_push(&mut b, "alice@localhost").await;
    assert_eq!(sub_of(&item), (Some("from"), None));
    let item = expect_push(&mut a, "bob@localhost").await;
    assert_eq!(sub_of(&item), (Some("to"), None));
    a.wait_for("subscribed", |e| {
        is_presence(e, Some("subscribed"), "bob@localhost")
    })
    .await;
    // §3.1.5: the new subscriber receives the contact's current presence.
    a.wait_for("bob's presence after approval", |e| {
        is_presence(e, None, "bob@localhost/b")
    })
    .await;

    // bob -> alice: subscribe; alice approves.
    b.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    let item = expect_push(&mut b, "alice@localhost").await;
    assert_eq!(sub_of(&item), (Some("from"), Some("subscribe")));
    a.wait_for("bob's request", |e| {
        is_presence(e, Some("subscribe"), "bob@localhost")
    })
    .await;
    a.send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    let item = expect_push(&mut a, "bob@localhost").await;
    assert_eq!(sub_of(&item), (Some("both"), None));
    let item = expect_push(&mut b, "alice@localhost").await;
    assert_eq!(sub_of(&item), (Some("both"), None));
    b.wait_for("alice's presence after approval", |e| {
        is_presence(e, None, "alice@localhost/a")
    })
    .await;

    // Stored state, both sides.
    let r = a.roster().await;
    let it = roster_item(&r, "bob@localhost").expect("bob in alice's roster");
    assert_eq!(sub_of(it), (Some("both"), None));
    let r = b.roster().await;
    let it = roster_item(&r, "alice@localhost").expect("alice in bob's roster");
    assert_eq!(sub_of(it), (Some("both"), None));

    // Presence now flows both ways, from full JIDs.
    b.clear_backlog();
    a.clear_backlog();
    a.send("<presence><status>lunch</status></presence>").await;
    let p = b
        .wait_for("alice's broadcast", |e| {
            is_presence(e, None, "alice@localhost/a")
                && e.get_child("status", NS_CLIENT)
                    .map(|s| s.text())
                    .as_deref()
                    == Some("lunch")
        })
        .await;
    assert_eq!(p.attr("to"), Some("bob@localhost"));
    b.send("<presence><show>away</show></presence>").await;
    a.wait_for("bob's broadcast", |e| {
        is_presence(e, None, "bob@localhost/b")
            && e.get_child("show", NS_CLIENT).map(|s| s.text()).as_deref() == Some("away")
    })
    .await;

    // A new resource of alice gets bob's presence (probe answered) on initial presence.
    let mut a2 = server.login("alice", PASSWORD, "a2").await;
    a2.send("<presence/>").await;
    a2.wait_for("bob's presence on login", |e| {
        is_presence(e, None, "bob@localhost/b")
    })
    .await;

    // bob goes offline: alice's resources learn it.
    b.close().await;
    a.wait_for("bob's unavailable", |e| {
        is_presence(e, Some("unavailable"), "bob@localhost/b")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_subscription_is_delivered_on_next_login() {
    let server = TestServer::start().await;
    server.add_user("alice", PASSWORD).await;
    server.add_user("bob", PASSWORD).await;
    let mut a = server.login("alice", PASSWORD, "a").await;
    a.roster().await;
    a.available().await;
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    let item = expect_push(&mut a, "bob@localhost").await;
    assert_eq!(sub_of(&item), (Some("none"), Some("subscribe")));

    // bob was offline; the request waits for his next initial presence.
    let mut b = server.login("bob", PASSWORD, "b").await;
    b.expect_none(SHORT, "subscription request before initial presence", |e| {
        e.name() == "presence"
    })
    .await;
    b.send("<presence/>").await;
    b.wait_for("stored subscription request", |e| {
        is_presence(e, Some("subscribe"), "alice@localhost")
    })
    .await;
    b.close().await;

    // Unanswered: delivered again on the next login (RFC 6121 §3.1.3).
    let mut b = server.login("bob", PASSWORD, "b").await;
    b.roster().await;
    b.send("<presence/>").await;
    b.wait_for("re-delivered subscription request", |e| {
        is_presence(e, Some("subscribe"), "alice@localhost")
    })
    .await;

    // Answered now: alice gets 'to'.
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let item = expect_push(&mut a, "bob@localhost").await;
    assert_eq!(sub_of(&item), (Some("to"), None));
    let item = expect_push(&mut b, "alice@localhost").await;
    assert_eq!(sub_of(&item), (Some("from"), None));
    b.close().await;

    // And it is not delivered a third time.
    let mut b = server.login("bob", PASSWORD, "b").await;
    b.send("<presence/>").await;
    b.expect_none(SHORT, "answered subscription request", |e| {
        is_presence(e, Some("subscribe"), "alice@localhost")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_are_stored_and_delivered_with_delay() {
    let server = TestServer::start().await;
    server.add_user("alice", PASSWORD).await;
    server.add_user("bob", PASSWORD).await;
    let mut a = server.login("alice", PASSWORD, "a").await;
    a.send("<message type='chat' to='bob@localhost' id='off1'><body>while you were out</body></message>")
        .await;
    // To a full JID whose resource is gone: chat falls back to the bare JID (§8.5.3.2.1).
    a.send("<message to='bob@localhost/gone' id='off2'><body>second</body></message>")
        .await;
    a.expect_none(SHORT, "bounce for an offline but existing user", |e| {
        e.attr("type") == Some("error")
    })
    .await;

    let mut b = server.login("bob", PASSWORD, "b").await;
    b.expect_none(SHORT, "offline message before initial presence", is_message)
        .await;
    b.send("<presence/>").await;
    for (id, text) in [("off1", "while you were out"), ("off2", "second")] {
        let m = b
            .wait_for(&format!("offline message {id}"), |e| {
                is_message(e) && e.attr("id") == Some(id)
            })
            .await;
        assert_eq!(body(&m).as_deref(), Some(text));
        assert_eq!(
            m.attr("from"),
            Some("alice@localhost/a"),
            "{}",
            describe(&m)
        );
        let delay = m
            .get_child("delay", NS_DELAY)
            .unwrap_or_else(|| panic!("no XEP-0203 <delay/>: {}", describe(&m)));
        assert_eq!(delay.attr("from"), Some("localhost"));
        let stamp = delay.attr("stamp").expect("delay stamp");
        let t = parse_xep82(stamp).unwrap_or_else(|| panic!("bad stamp {stamp}"));
        let now = unix_now();
        assert!(t <= now + 1 && t >= now - 120, "stamp {stamp} not recent");
    }
    b.close().await;

    // Delivered once only.
    let mut b = server.login("bob", PASSWORD, "b2").await;
    b.send("<presence/>").await;
    b.expect_none(SHORT, "offline message delivered twice", is_message)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_to_nonexistent_user_bounces_service_unavailable() {
    let server = TestServer::start().await;
    server.add_user("alice", PASSWORD).await;
    let mut a = server.login("alice", PASSWORD, "a").await;
    a.send("<message type='chat' to='nobody@localhost' id='m404'><body>anyone?</body></message>")
        .await;
    let e = a
        .wait_for("bounce", |e| is_message(e) && e.attr("id") == Some("m404"))
        .await;
    assert_eq!(stanza_error_condition(&e), "service-unavailable");
    assert_eq!(e.attr("from"), Some("nobody@localhost"), "{}", describe(&e));
    assert_eq!(e.attr("to"), Some("alice@localhost/a"), "{}", describe(&e));
    assert_eq!(
        e.get_child("error", NS_CLIENT).and_then(|x| x.attr("type")),
        Some("cancel")
    );
    // Same for a full JID of a non-existent account.
    a.send("<message type='chat' to='nobody@localhost/x' id='m405'><body>?</body></message>")
        .await;
    let e = a
        .wait_for("bounce", |e| is_message(e) && e.attr("id") == Some("m405"))
        .await;
    assert_eq!(stanza_error_condition(&e), "service-unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iq_to_unknown_namespace_is_service_unavailable() {
    let server = TestServer::start().await;
    server.add_user("alice", PASSWORD).await;
    let mut a = server.login("alice", PASSWORD, "a").await;
    let r = a
        .iq("<iq type='get' id='{id}' to='localhost'><query xmlns='urn:example:nothing-here'/></iq>")
        .await;
    assert_eq!(
        stanza_error_condition(&r),
        "service-unavailable",
        "{}",
        describe(&r)
    );
    assert_eq!(r.attr("from"), Some("localhost"));
    assert_eq!(r.attr("to"), Some("alice@localhost/a"));
    // Addressed to the account itself (no 'to').
    let r = a
        .iq("<iq type='set' id='{id}'><thing xmlns='urn:example:nothing-here'/></iq>")
        .await;
    assert_eq!(
        stanza_error_condition(&r),
        "service-unavailable",
        "{}",
        describe(&r)
    );
}

async fn server_iq(payload: &str) -> Element {
    let server = TestServer::start().await;
    server.add_user("alice", PASSWORD).await;
    let mut a = server.login("alice", PASSWORD, "a").await;
    let r = a
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='localhost'>{payload}</iq>"
        ))
        .await;
    assert_eq!(
        r.attr("type"),
        Some("result"),
        "{payload}: {}",
        describe(&r)
    );
    assert_eq!(r.attr("from"), Some("localhost"), "{}", describe(&r));
    assert_eq!(r.attr("to"), Some("alice@localhost/a"), "{}", describe(&r));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_ping() {
    // XEP-0199 §4.2: a ping is an IQ of type 'get'.
    let r = server_iq("<ping xmlns='urn:xmpp:ping'/>").await;
    assert!(r.children().next().is_none(), "{}", describe(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_version() {
    let r = server_iq("<query xmlns='jabber:iq:version'/>").await;
    let q = r.get_child("query", "jabber:iq:version").expect("query");
    assert_eq!(
        q.get_child("name", "jabber:iq:version")
            .map(|n| n.text())
            .as_deref(),
        Some("Starling")
    );
    let v = q
        .get_child("version", "jabber:iq:version")
        .map(|n| n.text())
        .unwrap_or_default();
    assert!(!v.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_time() {
    let r = server_iq("<time xmlns='urn:xmpp:time'/>").await;
    let t = r.get_child("time", "urn:xmpp:time").expect("time");
    let tzo = t
        .get_child("tzo", "urn:xmpp:time")
        .map(|x| x.text())
        .unwrap_or_default();
    assert!(
        tzo == "+00:00" || tzo == "Z" || tzo == "-00:00",
        "tzo {tzo}"
    );
    let utc = t
        .get_child("utc", "urn:xmpp:time")
        .map(|x| x.text())
        .unwrap_or_default();
    let secs = parse_xep82(&utc).unwrap_or_else(|| panic!("bad utc {utc:?}"));
    assert!(
        (secs - unix_now()).abs() < 60,
        "server clock {utc} far from ours"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_last_activity() {
    let r = server_iq("<query xmlns='jabber:iq:last'/>").await;
    let q = r.get_child("query", "jabber:iq:last").expect("query");
    let secs: u64 = q
        .attr("seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("seconds attribute: {}", describe(&r)));
    assert!(secs < 60, "uptime {secs}s for a server started just now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_disco_info_and_items() {
    let r = server_iq("<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("query");
    let ids: Vec<(Option<&str>, Option<&str>)> = q
        .children()
        .filter(|c| c.name() == "identity")
        .map(|c| (c.attr("category"), c.attr("type")))
        .collect();
    assert!(
        ids.contains(&(Some("server"), Some("im"))),
        "identities {ids:?}"
    );
    let features: Vec<&str> = q
        .children()
        .filter(|c| c.name() == "feature")
        .filter_map(|c| c.attr("var"))
        .collect();
    for f in [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "urn:xmpp:ping",
        "jabber:iq:version",
        "urn:xmpp:time",
        "jabber:iq:last",
        "msgoffline",
    ] {
        assert!(
            features.contains(&f),
            "feature {f} missing from {features:?}"
        );
    }
    let mut sorted = features.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), features.len(), "duplicate features");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_last_activity_for_self_and_strangers() {
    let server = TestServer::start().await;
    server.add_user("alice", PASSWORD).await;
    server.add_user("bob", PASSWORD).await;
    let mut a = server.login("alice", PASSWORD, "a").await;
    a.available().await;
    let r = a
        .iq("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", describe(&r));
    assert_eq!(
        r.get_child("query", "jabber:iq:last")
            .and_then(|q| q.attr("seconds")),
        Some("0"),
        "online account: {}",
        describe(&r)
    );
    // bob has no subscription to alice.
    let mut b = server.login("bob", PASSWORD, "b").await;
    let r = b
        .iq("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("error"), "{}", describe(&r));
}

// --- time helpers --------------------------------------------------------------------

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Parse a XEP-0082 UTC DateTime (`YYYY-MM-DDThh:mm:ss[.sss]Z`) to unix seconds.
fn parse_xep82(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, dd) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.split('.').next()?;
    let mut t = time.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&dd) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// `limits.max_roster_items`: a new item beyond the cap is refused with not-allowed
/// (RFC 6121 §2.3.3), while existing items can still be updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_size_limit_refuses_new_items_with_not_allowed() {
    let server = TestServer::start_with("[limits]\nmax_roster_items = 2\n").await;
    server.add_user("alice", PASSWORD).await;
    let mut a = server.login("alice", PASSWORD, "a").await;
    for c in ["c1", "c2"] {
        let r = a
            .iq(&format!(
                "<iq type='set' id='{{id}}'><query xmlns='jabber:iq:roster'><item jid='{c}@localhost'/></query></iq>"
            ))
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{}", describe(&r));
    }
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='c3@localhost'/></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("error"), "{}", describe(&r));
    assert_eq!(stanza_error_condition(&r), "not-allowed");
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='c1@localhost' name='Renamed'/></query></iq>")
        .await;
    assert_eq!(
        r.attr("type"),
        Some("result"),
        "updating an existing item: {}",
        describe(&r)
    );
}
