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

/// `text` as one quoted token: quotes and backslashes escaped, control characters dropped.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

pub fn line(e: &Entry) -> String {
    let upstream = e
        .upstream_status
        .map_or_else(|| "-".to_string(), |s| s.to_string());
    let mut line = format!(
        "{} {} status={} upstream={upstream} bytes={} ms={}",
        e.method,
        e.path,
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
        assert!(l.ends_with(r#" error="cannot resolve \"x\"next""#), "{l}");
        assert!(!l.contains('\n'));
    }
}
