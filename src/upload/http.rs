//! The HTTP side of XEP-0363: `PUT` stores a slot's file (once, by its owner, before the
//! slot expires, exactly the declared size and type), `GET`/`HEAD` serve it with single
//! `Range` support and headers that keep uploaded content from running in the server's
//! origin, `OPTIONS` answers CORS preflights so web clients on other origins can upload
//! (XEP-0363 §7 lists the headers).
//!
//! Statuses: 404 for a URL the server never issued or whose file is gone, 403 for a PUT
//! without the owner's token, 409 for a slot already used, 410 for an expired one, 413 for
//! a body larger than declared (cut off while streaming), 400 for a shorter one, 415 for a
//! Content-Type other than the declared one, 416 for an unsatisfiable range. A refused or
//! failed PUT leaves nothing on disk and the slot open for a retry until it expires.

use axum::body::{Body, HttpBody};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};

use super::key::PutClaims;
use super::policy::{self, MediaType};
use super::Upload;
use crate::server::ServerState;
use crate::storage::{Claim, UploadRecord, UploadState};

/// Bytes read from disk per response body frame.
const CHUNK: usize = 64 * 1024;
/// A PUT body that sends nothing for this long is abandoned.
const BODY_IDLE: Duration = Duration::from_secs(60);
/// XEP-0363 §9.1: nothing from the upload origin may run or be framed. `sandbox` also
/// covers browsers that open a file as a top-level document.
const CSP: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

#[derive(Clone)]
struct Ctx {
    state: Arc<ServerState>,
    up: Arc<Upload>,
}

pub fn routes(state: Arc<ServerState>, up: Arc<Upload>) -> Router {
    Router::new()
        .route(
            "/upload/{slot}/{filename}",
            get(get_file)
                .head(get_file)
                .put(put_file)
                .options(preflight),
        )
        .layer(axum::middleware::map_response(cors))
        .with_state(Ctx { state, up })
}

/// CORS on every answer, errors included, so a web client can read the status.
async fn cors(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Length, Content-Range, Content-Type, ETag"),
    );
    resp
}

async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "GET, HEAD, PUT, OPTIONS",
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Content-Type, Authorization, Range",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
        ],
    )
        .into_response()
}

fn status(code: StatusCode) -> Response {
    code.into_response()
}

fn now() -> i64 {
    crate::stanza::now_ms() / 1000
}

/// The row behind a URL, if the URL is one this server issued for that file name.
async fn lookup(ctx: &Ctx, segment: &str, filename: &str) -> Result<UploadRecord, Response> {
    let id = ctx
        .up
        .key
        .open_segment(segment)
        .ok_or_else(|| status(StatusCode::NOT_FOUND))?;
    match ctx.state.storage.uploads().get(&id).await {
        Ok(Some(rec)) if rec.filename == filename => Ok(rec),
        Ok(_) => Err(status(StatusCode::NOT_FOUND)),
        Err(e) => {
            tracing::error!(error = %e, "upload: storage failure");
            Err(status(StatusCode::INTERNAL_SERVER_ERROR))
        }
    }
}

fn token_of(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| kv.strip_prefix("token="))
}

// ---------------------------------------------------------------------------------------------
// PUT

async fn put_file(
    State(ctx): State<Ctx>,
    Path((segment, filename)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rec = match lookup(&ctx, &segment, &filename).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let owner = format!("{}@{}", rec.username, rec.domain);
    let claims = PutClaims {
        slot_id: &rec.slot_id,
        filename: &rec.filename,
        size: rec.size,
        content_type: rec.content_type.as_deref(),
        expires_at: rec.expires_at,
        owner: &owner,
    };
    if !token_of(query.as_deref()).is_some_and(|t| ctx.up.key.verify_put(&claims, t)) {
        return status(StatusCode::FORBIDDEN);
    }
    if rec.state != UploadState::Open {
        return status(StatusCode::CONFLICT);
    }
    if rec.expires_at <= now() {
        return status(StatusCode::GONE);
    }
    if let Some(refusal) = check_headers(&rec, &headers) {
        return refusal;
    }
    match ctx.state.storage.uploads().claim(&rec.slot_id, now()).await {
        Ok(Claim::Claimed) => {}
        Ok(Claim::Unknown) => return status(StatusCode::NOT_FOUND),
        Ok(Claim::Expired) => return status(StatusCode::GONE),
        Ok(Claim::Taken) => return status(StatusCode::CONFLICT),
        Err(e) => {
            tracing::error!(error = %e, "upload: storage failure");
            return status(StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
    let uploads = ctx.state.storage.uploads();
    match receive(&ctx.up, &rec, body).await {
        Ok(()) => match uploads.complete(&rec.slot_id, now()).await {
            Ok(true) => {
                tracing::debug!(user = %owner, size = rec.size, "upload stored");
                status(StatusCode::CREATED)
            }
            Ok(false) => {
                // The account went away during the upload.
                let _ = tokio::fs::remove_file(ctx.up.file_path(&rec.slot_id)).await;
                status(StatusCode::NOT_FOUND)
            }
            Err(e) => {
                tracing::error!(error = %e, "upload: storage failure");
                let _ = tokio::fs::remove_file(ctx.up.file_path(&rec.slot_id)).await;
                let _ = uploads.release(&rec.slot_id).await;
                status(StatusCode::INTERNAL_SERVER_ERROR)
            }
        },
        Err(code) => {
            let _ = tokio::fs::remove_file(ctx.up.part_path(&rec.slot_id)).await;
            if let Err(e) = uploads.release(&rec.slot_id).await {
                tracing::warn!(error = %e, "upload: cannot reopen a failed slot");
            }
            status(code)
        }
    }
}

/// XEP-0363 §6: Content-Length must be the declared size, Content-Type the declared type.
/// Without Content-Length (chunked), the size is enforced while streaming.
fn check_headers(rec: &UploadRecord, headers: &HeaderMap) -> Option<Response> {
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        let Some(len) = len.to_str().ok().and_then(|l| l.parse::<i64>().ok()) else {
            return Some(status(StatusCode::BAD_REQUEST));
        };
        if len > rec.size {
            return Some(status(StatusCode::PAYLOAD_TOO_LARGE));
        }
        if len < rec.size {
            return Some(status(StatusCode::BAD_REQUEST));
        }
    }
    if let Some(declared) = rec.content_type.as_deref().and_then(MediaType::essence_of) {
        let sent = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(MediaType::essence_of);
        if sent.as_deref() != Some(declared.as_str()) {
            return Some(status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
    }
    None
}

/// Stream the body into `<id>.part`, never past the declared size, then rename it into
/// place. On error the caller removes the part file.
async fn receive(up: &Upload, rec: &UploadRecord, mut body: Body) -> Result<(), StatusCode> {
    let part = up.part_path(&rec.slot_id);
    let io_err = |e: std::io::Error| {
        tracing::error!(path = %part.display(), error = %e, "upload: cannot write");
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let mut file = tokio::fs::File::create(&part).await.map_err(io_err)?;
    let mut written: i64 = 0;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        let frame = match tokio::time::timeout(BODY_IDLE, frame).await {
            Err(_) => return Err(StatusCode::REQUEST_TIMEOUT),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(StatusCode::BAD_REQUEST),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        written = written.saturating_add(data.len() as i64);
        if written > rec.size {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        file.write_all(&data).await.map_err(io_err)?;
    }
    if written != rec.size {
        return Err(StatusCode::BAD_REQUEST);
    }
    file.sync_all().await.map_err(io_err)?;
    drop(file);
    tokio::fs::rename(&part, up.file_path(&rec.slot_id))
        .await
        .map_err(io_err)
}

// ---------------------------------------------------------------------------------------------
// GET / HEAD

async fn get_file(
    State(ctx): State<Ctx>,
    Path((segment, filename)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let rec = match lookup(&ctx, &segment, &filename).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let completed = rec.completed_at.unwrap_or(rec.created_at);
    let expired = ctx
        .up
        .retention_secs()
        .is_some_and(|keep| completed.saturating_add(keep) <= now());
    if rec.state != UploadState::Done || expired {
        return status(StatusCode::NOT_FOUND);
    }
    let mut file = match tokio::fs::File::open(ctx.up.file_path(&rec.slot_id)).await {
        Ok(f) => f,
        Err(_) => return status(StatusCode::NOT_FOUND),
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => return status(StatusCode::NOT_FOUND),
    };
    let etag = format!("\"{}\"", rec.slot_id);
    let essence = rec
        .content_type
        .as_deref()
        .and_then(MediaType::essence_of)
        .unwrap_or_default();
    let inline = policy::inline_safe(&essence);
    let content_type = match (&rec.content_type, inline) {
        (Some(full), true) => full.clone(),
        _ => "application/octet-stream".to_string(),
    };
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(
            header::CONTENT_DISPOSITION,
            policy::content_disposition(&rec.filename, inline),
        )
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, http_date(completed))
        // The content behind a URL never changes.
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");
    let header_str = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if header_str(header::IF_NONE_MATCH)
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return resp
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR));
    }
    // A Range with a stale If-Range validator gets the whole file (RFC 9110 §13.1.5).
    let range_header = header_str(header::RANGE)
        .filter(|_| header_str(header::IF_RANGE).is_none_or(|v| v == etag));
    let (code, start, count) = match range_header.map(|r| parse_range(r, len)) {
        None | Some(RangeResult::Ignore) => (StatusCode::OK, 0, len),
        Some(RangeResult::Unsatisfiable) => {
            return resp
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR));
        }
        Some(RangeResult::Range(a, b)) => {
            resp = resp.header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{len}"));
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
    };
    resp = resp
        .status(code)
        .header(header::CONTENT_LENGTH, count.to_string());
    let body = if method == Method::HEAD || count == 0 {
        Body::empty()
    } else {
        if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return status(StatusCode::INTERNAL_SERVER_ERROR);
        }
        Body::new(FileBody {
            file,
            remaining: count,
            buf: Vec::new(),
        })
    };
    resp.body(body)
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR))
}

#[derive(Debug, PartialEq, Eq)]
enum RangeResult {
    /// Serve the whole file (no usable single range: malformed, or several ranges).
    Ignore,
    Unsatisfiable,
    /// First and last byte, inclusive.
    Range(u64, u64),
}

/// One `bytes=` range of RFC 9110 §14.1.2. Several ranges are answered with the whole file
/// (§14.2 lets a server ignore Range), which every client handles.
fn parse_range(value: &str, len: u64) -> RangeResult {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeResult::Ignore;
    };
    if spec.contains(',') {
        return RangeResult::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeResult::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeResult::Ignore,
        // Suffix: the last n bytes.
        (true, false) => match num(b) {
            None => RangeResult::Ignore,
            Some(0) => RangeResult::Unsatisfiable,
            Some(_) if len == 0 => RangeResult::Unsatisfiable,
            Some(n) => RangeResult::Range(len.saturating_sub(n), len - 1),
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return RangeResult::Ignore;
            };
            let end = if b.is_empty() { Some(u64::MAX) } else { num(b) };
            match end {
                None => RangeResult::Ignore,
                Some(end) if end < start => RangeResult::Ignore,
                Some(_) if start >= len => RangeResult::Unsatisfiable,
                Some(end) => RangeResult::Range(start, end.min(len - 1)),
            }
        }
    }
}

/// IMF-fixdate (RFC 9110 §5.6.7) of a unix time.
fn http_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d) = crate::stanza::civil_date(unix);
    let rem = unix.rem_euclid(86_400);
    let wd = DAYS[unix.div_euclid(86_400).rem_euclid(7) as usize];
    format!(
        "{wd}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        MONTHS[(m as usize).saturating_sub(1) % 12],
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// A response body streaming `remaining` bytes of a file, one chunk per frame, so a large
/// download never sits in memory.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Vec<u8>,
}

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.remaining).unwrap_or(CHUNK).min(CHUNK);
        this.buf.resize(want, 0);
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    // The file shrank under us: end the response early rather than hang.
                    return Poll::Ready(Some(Err(std::io::ErrorKind::UnexpectedEof.into())));
                }
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::copy_from_slice(
                    &this.buf[..n],
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeResult::*;
        assert_eq!(parse_range("bytes=0-9", 100), Range(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Range(90, 99));
        assert_eq!(parse_range("bytes=90-200", 100), Range(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Range(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Range(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), Ignore);
    }

    #[test]
    fn dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
