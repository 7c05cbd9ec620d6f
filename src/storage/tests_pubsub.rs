//! PEP storage tests (XEP-0163 nodes and items), on both backends like `tests.rs`.

use super::tests::{rows, targets, Target};
use super::*;

fn item(id: &str, payload: &str) -> PepItem {
    PepItem {
        id: id.to_string(),
        publisher: "a@example.org/phone".to_string(),
        stamp_ms: 1_700_000_000_000,
        payload: payload.to_string(),
    }
}

fn ids(items: &[PepItem]) -> Vec<&str> {
    items.iter().map(|i| i.id.as_str()).collect()
}

both!(pep_nodes_and_items);
async fn pep_nodes_and_items(s: &Storage, _t: &Target) {
    let u = ("example.org", "a");
    let cfg = NodeConfig {
        max_items: Some(3),
        ..NodeConfig::default()
    };
    // No account: nothing can be created.
    assert!(matches!(
        s.pubsub().create_node(u, "n", &cfg, 10).await,
        Err(StorageError::NoAccount)
    ));
    s.accounts().create(u, &[]).await.unwrap();
    let node = s
        .pubsub()
        .create_node(u, "n", &cfg, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.config, cfg);
    assert!(matches!(
        s.pubsub().create_node(u, "n", &cfg, 10).await,
        Err(StorageError::Conflict)
    ));
    assert_eq!(s.pubsub().node(u, "n").await.unwrap(), Some(node.clone()));
    assert_eq!(s.pubsub().node(u, "other").await.unwrap(), None);

    let p = s.pubsub();
    for id in ["1", "2", "3", "4"] {
        p.publish(node.id, &item(id, &format!("<x>{id}</x>")), 3)
            .await
            .unwrap();
    }
    // Trimmed to the newest three, in publish order.
    assert_eq!(
        ids(&p.items(node.id, &[], None).await.unwrap()),
        ["2", "3", "4"]
    );
    assert_eq!(
        ids(&p.items(node.id, &[], Some(2)).await.unwrap()),
        ["3", "4"]
    );
    // A re-published id becomes the newest.
    p.publish(node.id, &item("2", "<x>2b</x>"), 3)
        .await
        .unwrap();
    let all = p.items(node.id, &[], None).await.unwrap();
    assert_eq!(ids(&all), ["3", "4", "2"]);
    assert_eq!(all[2].payload, "<x>2b</x>");
    let by_id = p
        .items(node.id, &["4".to_string(), "zz".to_string()], Some(1))
        .await
        .unwrap();
    assert_eq!(ids(&by_id), ["4"]);
    assert!(p.retract(node.id, "3").await.unwrap());
    assert!(!p.retract(node.id, "3").await.unwrap());
    // Last items per node; nodes without items are not listed.
    p.create_node(u, "empty", &NodeConfig::default(), 10)
        .await
        .unwrap()
        .unwrap();
    let last = p.last_items(u).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!((last[0].0.name.as_str(), last[0].1.id.as_str()), ("n", "2"));
    // Reconfiguring trims to the new maximum.
    let one = NodeConfig {
        max_items: Some(1),
        access_model: AccessModel::Open,
        send_last: SendLast::Never,
        persist_items: true,
    };
    p.configure(node.id, &one, 1).await.unwrap();
    assert_eq!(p.node(u, "n").await.unwrap().unwrap().config, one);
    assert_eq!(ids(&p.items(node.id, &[], None).await.unwrap()), ["2"]);
    let names: Vec<String> = p
        .nodes(u)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["empty", "n"]);
    p.purge(node.id).await.unwrap();
    assert!(p.items(node.id, &[], None).await.unwrap().is_empty());
    p.publish(node.id, &item("2", "<x>2c</x>"), 1)
        .await
        .unwrap();
    // Explicit subscriptions, bounded per node; they go with the node.
    assert!(p.subscribe(node.id, "x@example.org", 2).await.unwrap());
    assert!(p.subscribe(node.id, "y@example.org/r", 2).await.unwrap());
    assert!(
        p.subscribe(node.id, "x@example.org", 2).await.unwrap(),
        "idempotent"
    );
    assert!(
        !p.subscribe(node.id, "z@example.org", 2).await.unwrap(),
        "full"
    );
    assert_eq!(
        p.subscribers(node.id).await.unwrap(),
        ["x@example.org", "y@example.org/r"]
    );
    assert!(p.unsubscribe(node.id, "x@example.org").await.unwrap());
    assert!(!p.unsubscribe(node.id, "x@example.org").await.unwrap());
    assert!(p.delete_node(u, "n").await.unwrap());
    assert!(!p.delete_node(u, "n").await.unwrap());
    assert_eq!(rows(s, "pep_items").await, 0);
    assert_eq!(rows(s, "pep_subscriptions").await, 0);
}

both!(pep_node_limit_and_account_deletion);
async fn pep_node_limit_and_account_deletion(s: &Storage, _t: &Target) {
    let (u, other) = (("example.org", "b"), ("example.org", "c"));
    for x in [u, other] {
        s.accounts().create(x, &[]).await.unwrap();
        for n in ["one", "two"] {
            let node = s
                .pubsub()
                .create_node(x, n, &NodeConfig::default(), 2)
                .await
                .unwrap()
                .unwrap();
            s.pubsub()
                .publish(node.id, &item("i", "<p/>"), 1)
                .await
                .unwrap();
        }
        assert_eq!(
            s.pubsub()
                .create_node(x, "three", &NodeConfig::default(), 2)
                .await
                .unwrap(),
            None,
            "node limit"
        );
    }
    assert_eq!(rows(s, "pep_nodes").await, 4);
    assert!(s.accounts().delete(u).await.unwrap());
    assert_eq!(rows(s, "pep_nodes").await, 2);
    assert_eq!(rows(s, "pep_items").await, 2);
    s.accounts().create(u, &[]).await.unwrap();
    assert!(s.pubsub().nodes(u).await.unwrap().is_empty());
    assert_eq!(s.pubsub().last_items(other).await.unwrap().len(), 2);
}
