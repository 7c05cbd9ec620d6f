//! The XMPP side of XEP-0363: disco#info (§2) and slot requests (§4) with the errors of §5.

use minidom::Element;
use std::sync::Arc;

use super::key::PutClaims;
use super::policy::{self, MediaType};
use super::{Upload, NS};
use crate::modules::disco::{NS_INFO, NS_ITEMS};
use crate::services::{Inbound, Service, ServiceFuture};
use crate::stanza::{BuilderExt, Condition, StanzaError};
use crate::storage::{NewSlot, SlotGrant};
use crate::xml::NS_CLIENT;

const NS_DATA: &str = "jabber:x:data";

pub struct UploadService {
    up: Arc<Upload>,
}

/// Why a slot request is refused, each mapped to the error XEP-0363 §5 shows.
#[derive(Debug, thiserror::Error)]
enum SlotError {
    #[error("{0}")]
    Stanza(#[from] StanzaError),
    #[error("file too large")]
    TooLarge { max: u64 },
    #[error("quota reached")]
    Quota { retry_at_ms: Option<i64> },
}

impl UploadService {
    pub fn new(up: Arc<Upload>) -> UploadService {
        UploadService { up }
    }

    fn disco_info(&self) -> Element {
        let field = |var: &str, kind: Option<&str>, value: String| {
            let mut f = Element::builder("field", NS_DATA).at("var", var);
            if let Some(k) = kind {
                f = f.at("type", k);
            }
            f.append(Element::builder("value", NS_DATA).append(value).build())
                .build()
        };
        let feature = |var: &str| Element::builder("feature", NS_INFO).at("var", var).build();
        Element::builder("query", NS_INFO)
            .append(
                Element::builder("identity", NS_INFO)
                    .at("category", "store")
                    .at("type", "file")
                    .at("name", "HTTP File Upload")
                    .build(),
            )
            .append(feature(NS_INFO))
            .append(feature(NS_ITEMS))
            .append(feature(NS))
            .append(
                Element::builder("x", NS_DATA)
                    .at("type", "result")
                    .append(field("FORM_TYPE", Some("hidden"), NS.into()))
                    .append(field(
                        "max-file-size",
                        None,
                        self.up.cfg.max_file_size.to_string(),
                    ))
                    .build(),
            )
            .build()
    }

    /// Check a slot request and grant it: the `<slot/>` payload.
    async fn request_slot(&self, req: &Inbound<'_>, r: &Element) -> Result<Element, SlotError> {
        let bad = |t: &str| StanzaError::with_text(Condition::BadRequest, t);
        let server = req.server;
        let from = req.from;
        let cfg = &self.up.cfg;
        // Only this server's accounts store files here (and count against a quota).
        if !server.serves(from.domain().as_str()) {
            return Err(StanzaError::with_text(
                Condition::Forbidden,
                "Only local users may upload files",
            )
            .into());
        }
        let Some(user) = from.node() else {
            return Err(StanzaError::new(Condition::Forbidden).into());
        };
        let filename = r
            .attr("filename")
            .filter(|f| !f.is_empty())
            .ok_or_else(|| bad("A filename is required"))?;
        let size: u64 = r
            .attr("size")
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| bad("The size must be a number of bytes"))?;
        if size > cfg.max_file_size {
            return Err(SlotError::TooLarge {
                max: cfg.max_file_size,
            });
        }
        let declared = match r.attr("content-type").filter(|t| !t.trim().is_empty()) {
            Some(t) => Some(MediaType::parse(t).ok_or_else(|| bad("Invalid content-type"))?),
            None => None,
        };
        let essence = declared
            .as_ref()
            .map_or("application/octet-stream", |m| m.essence.as_str());
        if !policy::allowed(essence, &cfg.allowed_types) {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                format!("Files of type {essence} are not accepted here"),
            )
            .into());
        }
        let filename = policy::sanitize_filename(filename);
        let (id, segment) = self.up.key.new_slot();
        let now = crate::stanza::now_ms() / 1000;
        let expires_at = now.saturating_add(i64::try_from(cfg.slot_ttl_secs).unwrap_or(i64::MAX));
        let size = i64::try_from(size).map_err(|_| bad("size"))?;
        let content_type = declared.as_ref().map(|m| m.full.as_str());
        let grant = server
            .storage
            .uploads()
            .create_slot(
                (from.domain().as_str(), user.as_str()),
                &NewSlot {
                    slot_id: &id,
                    filename: &filename,
                    size,
                    content_type,
                    expires_at,
                },
                i64::try_from(cfg.quota_bytes).unwrap_or(i64::MAX),
                i64::from(cfg.max_open_slots),
            )
            .await
            .map_err(StanzaError::from)?;
        match grant {
            SlotGrant::Granted => {}
            SlotGrant::OverQuota { oldest, .. } => {
                let retry_at_ms = match (oldest, self.up.retention_secs()) {
                    (Some(t), Some(keep)) => Some(t.saturating_add(keep).saturating_mul(1000)),
                    _ => None,
                };
                return Err(SlotError::Quota { retry_at_ms });
            }
            SlotGrant::TooManyOpen => {
                return Err(StanzaError::with_text(
                    Condition::ResourceConstraint,
                    "Too many slots requested and not used yet",
                )
                .into())
            }
        }
        let owner = from.to_bare();
        let token = self.up.key.put_token(&PutClaims {
            slot_id: &id,
            filename: &filename,
            size,
            content_type,
            expires_at,
            owner: owner.as_str(),
        });
        let get = self.up.get_url(&server.http_base, &segment, &filename);
        let put = format!("{get}?token={token}");
        Ok(Element::builder("slot", NS)
            .append(Element::builder("put", NS).at("url", put).build())
            .append(Element::builder("get", NS).at("url", get).build())
            .build())
    }

    async fn handle_iq(&self, req: &Inbound<'_>, iq: &Element) {
        let id = iq.attr("id").unwrap_or("");
        let kind = iq.attr("type").unwrap_or("");
        if kind != "get" && kind != "set" {
            return; // results and errors need no answer
        }
        let payload = iq.children().next();
        let addressed_to_service = req.to.node().is_none() && req.to.resource().is_none();
        let result: Result<Option<Element>, (SlotError, Option<Element>)> = match payload {
            _ if !addressed_to_service => {
                Err((StanzaError::new(Condition::ServiceUnavailable).into(), None))
            }
            Some(p) if kind == "get" && p.is("query", NS_INFO) => {
                if p.attr("node").is_some() {
                    Err((StanzaError::new(Condition::ItemNotFound).into(), None))
                } else {
                    Ok(Some(self.disco_info()))
                }
            }
            Some(p) if kind == "get" && p.is("query", NS_ITEMS) => {
                Ok(Some(Element::builder("query", NS_ITEMS).build()))
            }
            Some(p) if kind == "get" && p.is("request", NS) => {
                match self.request_slot(req, p).await {
                    Ok(slot) => Ok(Some(slot)),
                    Err(e) => Err((e, Some(p.clone()))),
                }
            }
            Some(p) if p.is("request", NS) => {
                Err((StanzaError::new(Condition::BadRequest).into(), None))
            }
            _ => Err((StanzaError::new(Condition::ServiceUnavailable).into(), None)),
        };
        let mut b = Element::builder("iq", NS_CLIENT)
            .at("id", id)
            .at("from", self.up.domain.as_str())
            .at("to", req.from.to_string());
        b = match result {
            Ok(payload) => b.at("type", "result").append_all(payload),
            Err((e, echo)) => {
                if let SlotError::Stanza(StanzaError {
                    condition: Condition::InternalServerError,
                    ..
                }) = e
                {
                    tracing::warn!(user = %req.from, "upload slot request failed");
                }
                b.at("type", "error")
                    .append_all(echo)
                    .append(error_element(&e))
            }
        };
        let reply = crate::xml::to_bytes(&b.build());
        req.server.route(&jid::Jid::from(req.from.clone()), reply);
    }
}

/// The `<error/>` for a refusal, as XEP-0363 §5 shows it.
fn error_element(e: &SlotError) -> Element {
    match e {
        SlotError::Stanza(s) => s.element(None),
        SlotError::TooLarge { max } => {
            let mut el = StanzaError::with_text(
                Condition::NotAcceptable,
                format!("File too large. The maximum file size is {max} bytes"),
            )
            .element(None);
            el.append_child(
                Element::builder("file-too-large", NS)
                    .append(
                        Element::builder("max-file-size", NS)
                            .append(max.to_string())
                            .build(),
                    )
                    .build(),
            );
            el
        }
        SlotError::Quota { retry_at_ms } => {
            let mut el = StanzaError::with_text(
                Condition::ResourceConstraint,
                "Quota reached: delete files or wait until older ones expire",
            )
            .element(None);
            if let Some(ms) = retry_at_ms {
                el.append_child(
                    Element::builder("retry", NS)
                        .at("stamp", crate::stanza::xep82_datetime(*ms))
                        .build(),
                );
            }
            el
        }
    }
}

impl Service for UploadService {
    fn domain(&self) -> &str {
        &self.up.domain
    }

    fn name(&self) -> &str {
        "HTTP File Upload"
    }

    fn handle<'a>(&'a self, req: Inbound<'a>) -> ServiceFuture<'a> {
        Box::pin(async move {
            let stanza = req.stanza;
            match stanza.name.as_str() {
                "iq" => {
                    if let Ok(el) = stanza.element() {
                        self.handle_iq(&req, &el).await;
                    }
                }
                // Nothing to say to messages: bounce them (never an error for an error).
                "message" if stanza.type_.as_deref() != Some("error") => {
                    if let Ok(el) = stanza.element() {
                        let mut reply = crate::stanza::error_reply(
                            &el,
                            &StanzaError::new(Condition::ServiceUnavailable),
                        );
                        crate::stanza::ElementExt::put_attr(
                            &mut reply,
                            "from",
                            self.up.domain.as_str(),
                        );
                        crate::stanza::ElementExt::put_attr(&mut reply, "to", req.from.to_string());
                        req.server.route(
                            &jid::Jid::from(req.from.clone()),
                            crate::xml::to_bytes(&reply),
                        );
                    }
                }
                _ => {}
            }
        })
    }

    fn started(&self, server: &Arc<crate::server::ServerState>) {
        super::expiry::spawn(server.clone(), self.up.clone());
    }
}
