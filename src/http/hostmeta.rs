//! XEP-0156 connection discovery over HTTP: `/.well-known/host-meta` (RFC 6415 XRD, which
//! XEP-0156 requires) and `/.well-known/host-meta.json` (JRD, which it recommends), listing
//! the RFC 7395 WebSocket and XEP-0206 BOSH endpoints of this server.
//!
//! The URLs are built from `state.http_base` (`http.public_url`, or the listeners), so behind
//! a reverse proxy they name the proxy. Browser clients on other origins read these files, so
//! they carry `Access-Control-Allow-Origin: *` (XEP-0156 §4); nothing else here does.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

use crate::server::ServerState;

const REL_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";
const REL_BOSH: &str = "urn:xmpp:alt-connections:xbosh";
/// Where the BOSH module serves XEP-0206.
const BOSH_PATH: &str = "/http-bind";

pub fn routes(state: Arc<ServerState>) -> Router {
    let links = Links::new(&state.http_base);
    let xrd = links.xrd();
    let jrd = links.jrd();
    Router::new()
        .route(
            "/.well-known/host-meta",
            get(move || {
                let body = xrd.clone();
                async move { respond("application/xrd+xml; charset=utf-8", body) }
            }),
        )
        .route(
            "/.well-known/host-meta.json",
            get(move || {
                let body = jrd.clone();
                async move { respond("application/json", body) }
            }),
        )
}

fn respond(content_type: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
}

/// The alternative connection methods, as (rel, href).
struct Links(Vec<(&'static str, String)>);

impl Links {
    fn new(http_base: &str) -> Links {
        let base = http_base.trim_end_matches('/');
        let ws_base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_string()
        };
        Links(vec![
            (
                REL_WEBSOCKET,
                format!("{ws_base}{}", super::websocket::PATH),
            ),
            (REL_BOSH, format!("{base}{BOSH_PATH}")),
        ])
    }

    fn xrd(&self) -> String {
        let mut x = String::from(
            "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
        );
        for (rel, href) in &self.0 {
            x.push_str(&format!(
                "  <Link rel='{rel}' href='{}'/>\n",
                crate::xml::escape(href)
            ));
        }
        x.push_str("</XRD>\n");
        x
    }

    /// RFC 6415 Appendix A JRD. Written by hand: two string fields do not justify a JSON
    /// library dependency.
    fn jrd(&self) -> String {
        let links: Vec<String> = self
            .0
            .iter()
            .map(|(rel, href)| {
                format!(
                    "{{\"rel\":\"{}\",\"href\":\"{}\"}}",
                    json_escape(rel),
                    json_escape(href)
                )
            })
            .collect();
        format!("{{\"links\":[{}]}}\n", links.join(","))
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_base_gives_wss_and_https_links() {
        let l = Links::new("https://chat.example.org/");
        let xrd: minidom::Element = l.xrd().parse().expect("well-formed XRD");
        assert_eq!(xrd.ns(), "http://docs.oasis-open.org/ns/xri/xrd-1.0");
        let hrefs: Vec<(String, String)> = xrd
            .children()
            .map(|c| {
                (
                    c.attr("rel").unwrap_or_default().to_string(),
                    c.attr("href").unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert_eq!(
            hrefs,
            vec![
                (
                    REL_WEBSOCKET.to_string(),
                    "wss://chat.example.org/xmpp-websocket".to_string()
                ),
                (
                    REL_BOSH.to_string(),
                    "https://chat.example.org/http-bind".to_string()
                ),
            ]
        );
        assert_eq!(
            l.jrd(),
            "{\"links\":[{\"rel\":\"urn:xmpp:alt-connections:websocket\",\
             \"href\":\"wss://chat.example.org/xmpp-websocket\"},\
             {\"rel\":\"urn:xmpp:alt-connections:xbosh\",\
             \"href\":\"https://chat.example.org/http-bind\"}]}\n"
        );
        assert_eq!(json_escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }

    #[test]
    fn plain_http_base_gives_ws() {
        let l = Links::new("http://localhost:5280");
        assert_eq!(l.0[0].1, "ws://localhost:5280/xmpp-websocket");
        assert_eq!(l.0[1].1, "http://localhost:5280/http-bind");
    }
}
