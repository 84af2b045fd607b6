//! The one line each request writes to stderr. Paths only: a query may carry a token.

use std::time::Duration;

pub fn line(
    method: &str,
    path: &str,
    status: u16,
    upstream_status: Option<u16>,
    bytes: u64,
    elapsed: Duration,
) -> String {
    let upstream = upstream_status.map_or_else(|| "-".to_string(), |s| s.to_string());
    format!(
        "{method} {path} status={status} upstream={upstream} bytes={bytes} ms={}",
        elapsed.as_millis()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_with_every_field() {
        let l = super::line(
            "GET",
            "/v2/a/blobs/sha256:x",
            307,
            Some(307),
            0,
            std::time::Duration::from_millis(12),
        );
        assert_eq!(
            l,
            "GET /v2/a/blobs/sha256:x status=307 upstream=307 bytes=0 ms=12"
        );
        assert!(!l.contains('\n'));
    }
}
