//! XEP-0114 component streams against the in-process server: the listener's bound address,
//! the handshake, and shutdown reaching components (authenticated or still negotiating).
//! Protocol behaviour with a real component library is in conformance/test_component.py.

mod common;

use common::*;
use sha1::{Digest, Sha1};
use starling::xml::Event;

const NS_ACCEPT: &str = "jabber:component:accept";
const SECRET: &str = "s3cret";

async fn start() -> (starling::server::RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "domain = \"{DOMAIN}\"\ndata_dir = \"{}\"\n\
         [listen]\nc2s = \"127.0.0.1:0\"\nc2s_direct_tls = \"\"\nhttp = \"\"\nhttps = \"\"\n\
         s2s = \"\"\ns2s_direct_tls = \"\"\ncomponent = \"127.0.0.1:0\"\n\
         [component]\nsecrets = {{ \"gw.{DOMAIN}\" = \"{SECRET}\" }}\n",
        dir.path().display()
    );
    let config = starling::config::Config::from_parts(&toml, std::iter::empty())
        .expect("test configuration is valid");
    let running = starling::server::start(config)
        .await
        .expect("server starts");
    (running, dir)
}

/// Open a component stream for `gw.localhost`; returns the server's stream id.
async fn open(c: &mut RawClient) -> String {
    c.send(&format!(
        "<stream:stream xmlns='{NS_ACCEPT}' xmlns:stream='{NS_STREAM}' to='gw.{DOMAIN}'>"
    ))
    .await;
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    match c.next_event_until(deadline).await {
        Ok(Event::Open(h)) => {
            assert_eq!(h.from.as_deref(), Some(format!("gw.{DOMAIN}").as_str()));
            h.id.expect("XEP-0114: the server's header carries a stream id")
        }
        other => panic!("expected the server's stream header, got {other:?}"),
    }
}

fn handshake(id: &str, secret: &str) -> String {
    let digest = Sha1::new()
        .chain_update(id.as_bytes())
        .chain_update(secret.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn shutdown_closes_component_streams() {
    let (running, _dir) = start().await;
    let addr = running
        .component_addr
        .expect("component listener bound when components are configured");
    assert!(addr.ip().is_loopback());

    let mut component = RawClient::connect(addr).await;
    let id = open(&mut component).await;
    component
        .send(&format!(
            "<handshake>{}</handshake>",
            handshake(&id, SECRET)
        ))
        .await;
    let ack = component.next_element().await;
    assert!(ack.is("handshake", NS_ACCEPT), "{}", describe(&ack));
    assert!(ack.children().next().is_none() && ack.text().is_empty());

    // Another connection, still owing its handshake.
    let mut pending = RawClient::connect(addr).await;
    open(&mut pending).await;

    running.shutdown().await;
    for c in [&mut component, &mut pending] {
        let el = c.next_element().await;
        assert_eq!(stream_error_condition(&el), "system-shutdown");
    }
}

#[tokio::test]
async fn no_listener_without_components() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "domain = \"{DOMAIN}\"\ndata_dir = \"{}\"\n\
         [listen]\nc2s = \"127.0.0.1:0\"\nc2s_direct_tls = \"\"\nhttp = \"\"\nhttps = \"\"\n\
         s2s = \"\"\ns2s_direct_tls = \"\"\ncomponent = \"127.0.0.1:0\"\n",
        dir.path().display()
    );
    let config = starling::config::Config::from_parts(&toml, std::iter::empty()).unwrap();
    let running = starling::server::start(config)
        .await
        .expect("server starts");
    assert!(running.component_addr.is_none());
    running.shutdown().await;
}
