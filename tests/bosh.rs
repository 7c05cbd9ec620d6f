//! XEP-0124/0206 BOSH against the in-process server: a raw HTTP/1.1 client posting bodies
//! to `/http-bind` while a raw TCP client is the contact. The conformance suite covers the
//! protocol in depth (conformance/test_bosh.py); this is the Rust-side smoke test that a BOSH
//! session and a TCP session share one server and exchange stanzas both ways.

mod common;

use common::*;
use minidom::Element;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";

/// One POST on a fresh connection; returns (status, body).
async fn post(addr: SocketAddr, body: &str) -> (u16, Element) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /http-bind HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.parse().expect("XML body"))
}

struct Bosh {
    addr: SocketAddr,
    rid: u64,
    sid: String,
}

impl Bosh {
    async fn send(&mut self, attrs: &str, payload: &str) -> Element {
        self.rid += 1;
        let body = format!(
            "<body rid='{}' sid='{}' {attrs} xmlns='{NS_HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'>{payload}</body>",
            self.rid, self.sid
        );
        let (status, el) = post(self.addr, &body).await;
        assert_eq!(status, 200);
        assert_ne!(el.attr("type"), Some("terminate"), "{}", describe(&el));
        el
    }

    /// Poll until a payload matching `pred` arrives.
    async fn until(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        for _ in 0..10 {
            let el = self.send("", "").await;
            if let Some(p) = el.children().find(|c| pred(c)) {
                return p.clone();
            }
        }
        panic!("no matching payload");
    }
}

#[tokio::test]
async fn bosh_session_exchanges_messages_with_tcp() {
    let server =
        TestServer::start_with("[http]\ntrust_plain_http = true\n[bosh]\nmax_wait_secs = 2\n")
            .await;
    server.add_user("webby", PASSWORD).await;
    server.add_user("tcppy", PASSWORD).await;
    let addr = server.running().http_addr.expect("HTTP listener");
    let mut tcp = server.login("tcppy", PASSWORD, "t").await;

    let (status, created) = post(
        addr,
        &format!(
            "<body rid='1000' to='localhost' wait='60' hold='1' ver='1.11' xmpp:version='1.0' \
             xmlns='{NS_HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'/>"
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        created.attr("wait"),
        Some("2"),
        "capped by bosh.max_wait_secs"
    );
    assert_eq!(created.attr("requests"), Some("2"));
    assert!(
        created.children().any(|c| c.name() == "features"),
        "XEP-0206 §5: {}",
        describe(&created)
    );
    let mut b = Bosh {
        addr,
        rid: 1000,
        sid: created.attr("sid").expect("sid").to_owned(),
    };
    let auth = format!(
        "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{}</auth>",
        b64(format!("\0webby\0{PASSWORD}").as_bytes())
    );
    let r = b.send("", &auth).await;
    assert!(
        r.children().any(|c| c.name() == "success"),
        "{}",
        describe(&r)
    );
    let r = b.send("to='localhost' xmpp:restart='true'", "").await;
    assert!(r.children().any(|c| c.name() == "features"));
    let r = b
        .send(
            "",
            &format!(
                "<iq xmlns='{NS_CLIENT}' type='set' id='b1'><bind xmlns='{NS_BIND}'>\
                 <resource>web</resource></bind></iq>"
            ),
        )
        .await;
    assert!(r.children().any(|c| c.name() == "iq"), "{}", describe(&r));

    b.send(
        "",
        &format!(
            "<message xmlns='{NS_CLIENT}' to='tcppy@localhost/t' type='chat'><body>to tcp</body></message>"
        ),
    )
    .await;
    let m = tcp
        .wait_for("message from BOSH", |e| e.name() == "message")
        .await;
    assert_eq!(m.attr("from"), Some("webby@localhost/web"));

    tcp.send("<message to='webby@localhost/web' type='chat'><body>to bosh</body></message>")
        .await;
    let m = b.until(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("tcppy@localhost/t"));
}
