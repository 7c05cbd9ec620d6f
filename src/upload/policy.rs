//! What a slot request may ask for and how a stored file is served: media type parsing and
//! the `upload.allowed_types` policy, file name sanitizing, URL encoding, and which types a
//! browser may render inline. Pure functions, no I/O.

/// Longest media type kept (type/subtype plus parameters).
const MAX_TYPE_LEN: usize = 255;
/// Longest file name kept, in bytes (a common file system limit).
const MAX_NAME_LEN: usize = 200;

/// A parsed Content-Type: `essence` is the lower-case `type/subtype`, `full` the value to
/// store and send back (essence plus any parameters, e.g. `; charset=utf-8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    pub essence: String,
    pub full: String,
}

fn is_token(s: &str) -> bool {
    // RFC 9110 §5.6.2 tchar.
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl MediaType {
    pub fn parse(raw: &str) -> Option<MediaType> {
        let raw = raw.trim();
        if raw.len() > MAX_TYPE_LEN || raw.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return None;
        }
        let (essence, params) = match raw.split_once(';') {
            Some((e, p)) => (e.trim(), Some(p.trim())),
            None => (raw, None),
        };
        let (t, sub) = essence.split_once('/')?;
        if !is_token(t) || !is_token(sub) {
            return None;
        }
        let essence = essence.to_ascii_lowercase();
        let full = match params.filter(|p| !p.is_empty()) {
            Some(p) => format!("{essence}; {p}"),
            None => essence.clone(),
        };
        Some(MediaType { essence, full })
    }

    /// The essence of a request header value, for comparing with the declared type.
    pub fn essence_of(raw: &str) -> Option<String> {
        MediaType::parse(raw).map(|m| m.essence)
    }
}

/// `*`, `type/*` or `type/subtype`.
pub fn valid_pattern(p: &str) -> bool {
    p == "*"
        || p.strip_suffix("/*").is_some_and(is_token)
        || MediaType::parse(p).is_some_and(|m| !m.full.contains(';'))
}

/// Whether `essence` is allowed by the configured patterns (none configured: everything).
pub fn allowed(essence: &str, patterns: &[String]) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p == "*"
                || p == essence
                || p.strip_suffix("/*")
                    .is_some_and(|t| essence.split('/').next() == Some(t))
        })
}

/// Types a browser may render inline from the upload origin. Everything else is served as
/// `application/octet-stream` with `Content-Disposition: attachment`, so uploaded HTML or
/// script never runs in the server's origin. SVG is an image that can carry script: it is
/// downloaded, not rendered.
pub fn inline_safe(essence: &str) -> bool {
    let top = essence.split('/').next().unwrap_or("");
    (matches!(top, "image" | "video" | "audio") && !essence.contains("svg"))
        || essence == "text/plain"
}

/// A file name safe to put in a URL path segment and a header: the last path component,
/// without control characters, leading dots or surrounding spaces, at most 200 bytes (the
/// extension kept), never empty. XEP-0363 §4 asks to keep the name and its ending intact,
/// so nothing else is changed (non-ASCII is percent-encoded in the URL).
pub fn sanitize_filename(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    let mut name = if cleaned.is_empty() {
        "file".to_string()
    } else {
        cleaned.to_string()
    };
    if name.len() > MAX_NAME_LEN {
        let ext = match name.rfind('.') {
            Some(i) if name.len() - i <= 16 => name[i..].to_string(),
            _ => String::new(),
        };
        let mut cut = MAX_NAME_LEN - ext.len();
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
        name.push_str(&ext);
    }
    name
}

/// Percent-encode one URL path segment (RFC 3986 unreserved characters stay).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Content-Disposition` for a download (RFC 6266): an ASCII fallback name and the exact
/// name in RFC 8187 encoding.
pub fn content_disposition(filename: &str, inline: bool) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let kind = if inline { "inline" } else { "attachment" };
    format!(
        "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{}",
        encode_segment(filename)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        let m = MediaType::parse("Image/PNG").unwrap();
        assert_eq!(m.essence, "image/png");
        assert_eq!(m.full, "image/png");
        let m = MediaType::parse("text/plain;charset=UTF-8").unwrap();
        assert_eq!(m.essence, "text/plain");
        assert_eq!(m.full, "text/plain; charset=UTF-8");
        for bad in [
            "",
            "image",
            "/png",
            "image/",
            "a b/c",
            "text/plain\r\nX: y",
            "tëxt/plain",
        ] {
            assert!(MediaType::parse(bad).is_none(), "{bad:?}");
        }
        assert!(MediaType::parse(&format!("a/{}", "b".repeat(300))).is_none());
    }

    #[test]
    fn policy_patterns() {
        let p = vec!["image/*".to_string(), "application/pdf".to_string()];
        assert!(allowed("image/jpeg", &p));
        assert!(allowed("application/pdf", &p));
        assert!(!allowed("application/x-sh", &p));
        assert!(!allowed("imagex/png", &p));
        assert!(allowed("anything/else", &[]));
        assert!(valid_pattern("image/*") && valid_pattern("*") && valid_pattern("a/b"));
        assert!(!valid_pattern("image") && !valid_pattern("a/b; x=y") && !valid_pattern("/*"));
    }

    #[test]
    fn inline_allow_list() {
        for ok in ["image/png", "video/mp4", "audio/ogg", "text/plain"] {
            assert!(inline_safe(ok), "{ok}");
        }
        for no in [
            "text/html",
            "image/svg+xml",
            "application/pdf",
            "text/javascript",
        ] {
            assert!(!inline_safe(no), "{no}");
        }
    }

    #[test]
    fn filenames() {
        assert_eq!(sanitize_filename("très cool.jpg"), "très cool.jpg");
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\x\\evil.exe"), "evil.exe");
        assert_eq!(sanitize_filename(".htaccess"), "htaccess");
        assert_eq!(sanitize_filename("a\u{202e}gpj.exe"), "agpj.exe");
        assert_eq!(sanitize_filename("x\r\ny.txt"), "xy.txt");
        assert_eq!(sanitize_filename(" .. "), "file");
        assert_eq!(sanitize_filename("dir/"), "file");
        let long = format!("{}.jpeg", "é".repeat(150));
        let s = sanitize_filename(&long);
        assert!(s.len() <= 200 && s.ends_with(".jpeg"), "{s}");
    }

    #[test]
    fn encoding() {
        assert_eq!(encode_segment("très cool.jpg"), "tr%C3%A8s%20cool.jpg");
        assert_eq!(encode_segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(
            content_disposition("é\"x.bin", false),
            "attachment; filename=\"__x.bin\"; filename*=UTF-8''%C3%A9%22x.bin"
        );
    }
}
