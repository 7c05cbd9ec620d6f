//! Two Starling servers federating with each other over real s2s streams: `a.test` and
//! `b.test`, each pointing `s2s.static_hosts` at the other's listener. tokio-xmpp clients
//! on both sides exchange messages; with self-signed certificates the servers authenticate
//! with XEP-0220 dialback (each verifying the other's key with a `db:verify` over its own
//! outbound stream), with certificates from a CA both trust they use SASL EXTERNAL.

mod common;

use common::*;
use std::path::Path;
use tokio_xmpp::parsers::message::{Lang, Message, MessageType};

use starling::server::RunningServer;

/// One federating server with its data directory.
struct Node {
    running: RunningServer,
    domain: String,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn add_user(&self, name: &str) {
        let creds = starling::sasl::new_credentials(PASSWORD, 4096).expect("credentials");
        self.running
            .state
            .storage
            .accounts()
            .create((self.domain.as_str(), name), &creds)
            .await
            .expect("account created");
    }

    async fn client(&self, user: &str) -> Client {
        let jid = Jid::new(&format!("{user}@{}/test", self.domain)).unwrap();
        let addr = self.running.c2s_addr.expect("c2s bound").to_string();
        let mut c = Client::new_plaintext(
            jid,
            PASSWORD,
            tokio_xmpp::connect::DnsConfig::addr(&addr),
            tokio_xmpp::xmlstream::Timeouts::tight(),
        );
        wait_online(&mut c).await;
        c
    }
}

/// A port free right now (the servers must know each other's before either starts).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn start(domain: &str, port: u16, peer: &str, peer_port: u16, extra: &str) -> Node {
    // RUST_LOG=starling=debug shows both servers' logs for a failing test.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "domain = \"{domain}\"\ndata_dir = \"{}\"\n\
         [listen]\nc2s = \"127.0.0.1:0\"\nc2s_direct_tls = \"\"\nhttp = \"\"\nhttps = \"\"\n\
         s2s = \"127.0.0.1:{port}\"\ns2s_direct_tls = \"\"\ncomponent = \"\"\n\
         [c2s]\nrequire_tls = false\n\
         [s2s]\nstatic_hosts = {{ \"{peer}\" = \"127.0.0.1:{peer_port}\" }}\n{extra}",
        dir.path().display()
    );
    let config = starling::config::Config::from_parts(&toml, std::iter::empty())
        .expect("test configuration is valid");
    let running = starling::server::start(config)
        .await
        .expect("server starts");
    Node {
        running,
        domain: domain.to_string(),
        _dir: dir,
    }
}

async fn pair(extra_a: &str, extra_b: &str) -> (Node, Node) {
    let (pa, pb) = (free_port(), free_port());
    let a = start("a.test", pa, "b.test", pb, extra_a).await;
    let b = start("b.test", pb, "a.test", pa, extra_b).await;
    a.add_user("alice").await;
    b.add_user("bob").await;
    (a, b)
}

fn chat(to: &str, body: &str) -> Message {
    let mut m = Message::new(Some(Jid::new(to).unwrap()));
    m.type_ = MessageType::Chat;
    m.bodies.insert(Lang(String::new()), body.into());
    m
}

async fn expect_body(client: &mut Client, from: &str, body: &str) {
    let st = next_stanza(client, body, |s| {
        matches!(s, XmppStanza::Message(m)
            if m.bodies.values().any(|b| b.as_str() == body))
    })
    .await;
    let XmppStanza::Message(m) = st else {
        unreachable!()
    };
    assert_eq!(
        m.from.as_ref().map(|j| j.to_bare().to_string()),
        Some(from.to_string())
    );
}

async fn messages_both_ways(a: &Node, b: &Node) {
    let mut alice = a.client("alice").await;
    let mut bob = b.client("bob").await;
    alice
        .send_stanza(chat("bob@b.test/test", "hello from a").into())
        .await
        .expect("send");
    expect_body(&mut bob, "alice@a.test", "hello from a").await;
    bob.send_stanza(chat("alice@a.test/test", "hello from b").into())
        .await
        .expect("send");
    expect_body(&mut alice, "bob@b.test", "hello from b").await;
}

#[tokio::test]
async fn dialback_between_two_servers() {
    let (a, b) = pair("", "").await;
    messages_both_ways(&a, &b).await;
}

/// A CA both servers trust (`s2s.ca_file`, no system roots) and a certificate per domain.
fn write_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "pair CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    for d in ["a.test", "b.test"] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![d.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join(format!("{d}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{d}.key")), key.serialize_pem()).unwrap();
    }
}

#[tokio::test]
async fn sasl_external_between_two_servers() {
    let pki = tempfile::tempdir().unwrap();
    write_pki(pki.path());
    let p = pki.path().display();
    let conf = |d: &str| {
        format!(
            "ca_file = \"{p}/ca.pem\"\nuse_system_roots = false\nrequire_valid_certificates = true\n\
             [tls]\ncert = \"{p}/{d}.pem\"\nkey = \"{p}/{d}.key\"\n"
        )
    };
    let (a, b) = pair(&conf("a.test"), &conf("b.test")).await;
    messages_both_ways(&a, &b).await;
}
