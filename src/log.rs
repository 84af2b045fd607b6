//! The one line each request writes to stderr. Paths only: a query may carry a token, and
//! causes are the proxy's own words, which never hold a credential.

use std::time::Duration;

/// What one request did, for its log line.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Why it failed, or why the body stopped short.
    pub cause: Option<&'a str>,
}

/// `text` as one quoted token: quotes and backslashes escaped, and every character but
/// printable ASCII as `\u{..}`: a client's or an upstream's words then cannot break the line,
/// colour a terminal or turn the text around (C1 controls, U+2028, bidirectional overrides).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

/// The client's path as one token: bytes other than printable ASCII percent-encoded, as they
/// came on the wire.
fn path_token(path: &str) -> std::borrow::Cow<'_, str> {
    if path.bytes().all(|b| b.is_ascii_graphic()) {
        return path.into();
    }
    let mut out = String::with_capacity(path.len() + 8);
    for b in path.bytes() {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.into()
}

pub fn line(e: &Entry) -> String {
    let upstream = e
        .upstream_status
        .map_or_else(|| "-".to_string(), |s| s.to_string());
    let mut line = format!(
        "{} {} status={} upstream={upstream} bytes={} ms={}",
        e.method,
        path_token(e.path),
        e.status,
        e.bytes,
        e.elapsed.as_millis()
    );
    if let Some(c) = e.cause {
        line.push_str(" error=");
        line.push_str(&quoted(c));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_with_every_field() {
        let mut e = Entry {
            method: "GET",
            path: "/v2/a/blobs/sha256:x",
            status: 307,
            upstream_status: Some(307),
            bytes: 0,
            elapsed: Duration::from_millis(12),
            cause: None,
        };
        assert_eq!(
            line(&e),
            "GET /v2/a/blobs/sha256:x status=307 upstream=307 bytes=0 ms=12"
        );
        e.cause = Some("cannot resolve \"x\"\nnext");
        let l = line(&e);
        assert!(
            l.ends_with(r#" error="cannot resolve \"x\"\u{a}next""#),
            "{l}"
        );
        assert!(!l.contains('\n'));
    }

    #[test]
    fn a_client_s_or_upstream_s_words_stay_printable_ascii_on_one_line() {
        let e = Entry {
            method: "GET",
            path: "/v2/a/manifests/x\u{85}FAKE\u{9b}31m\u{2028}\u{202e} \r\n",
            cause: Some("realm \u{1b}[31m\u{2028}\u{202e}said \u{85}no"),
            ..Entry::default()
        };
        let l = line(&e);
        assert!(l.bytes().all(|b| b.is_ascii_graphic() || b == b' '), "{l}");
        assert!(
            l.starts_with("GET /v2/a/manifests/x%C2%85FAKE%C2%9B31m%E2%80%A8%E2%80%AE%20%0D%0A "),
            "{l}"
        );
        assert!(
            l.ends_with(r#"error="realm \u{1b}[31m\u{2028}\u{202e}said \u{85}no""#),
            "{l}"
        );
    }
}
