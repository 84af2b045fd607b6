//! Which headers cross the proxy, by allowlist in both directions: a header nobody listed here
//! (a cookie, a client address, a front proxy's or the runtime's own) never crosses.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Conditional and range headers: what a cached or resumed download needs, anywhere.
const CONDITIONAL: [&str; 6] = [
    "range",
    "if-range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
];

/// What the distribution API needs from a client on the upstream registry, beside
/// `Authorization`, which the exchange decides.
const REGISTRY_REQUEST: [&str; 2] = ["accept", "user-agent"];

/// Response headers a client may see. `Location`, `WWW-Authenticate`, `Link` and the two
/// below are not here: the response rules build those themselves.
const RESPONSE: [&str; 22] = [
    "content-type",
    "content-length",
    "content-range",
    "content-encoding",
    "accept-ranges",
    "docker-content-digest",
    "docker-distribution-api-version",
    "etag",
    "last-modified",
    "cache-control",
    "expires",
    "vary",
    "retry-after",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "oci-filters-applied",
    "oci-subject",
    "allow",
    // An upload's progress, as registries report it.
    "docker-upload-uuid",
    "range",
    "oci-chunk-min-length",
];

/// Every answer's: a body the upstream chose (a blob of any type, an upstream page) is served
/// from the proxy's own origin, so whatever a browser makes of it runs sandboxed (an opaque
/// origin, no scripts) and loads nothing; an upstream's own policy never replaces it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; sandbox";

/// Headers that describe a body: a body the proxy replaced carries none of the upstream's.
pub const ENTITY: [&str; 7] = [
    "content-encoding",
    "content-range",
    "etag",
    "last-modified",
    "docker-content-digest",
    "accept-ranges",
    "content-length",
];

/// Walks the few headers a message has rather than looking each listed name up: a lookup by
/// `&str` parses and hashes the name, and most listed names are absent.
fn copy(from: &HeaderMap, names: &[&'static str], to: &mut HeaderMap) {
    for (name, value) in from {
        if names.contains(&name.as_str()) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Bodies are never decoded (digests are over the encoded bytes), so the proxy asks for them
/// as they are stored: a body it must rewrite arrives as JSON, not gzip.
fn identity(h: &mut HeaderMap) {
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

/// Request headers for the upstream registry.
pub fn registry_request(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    copy(client, &REGISTRY_REQUEST, &mut out);
    copy(client, &CONDITIONAL, &mut out);
    identity(&mut out);
    out
}

/// What a write needs upstream from the client: its body's type and range (an upload's chunk),
/// and what a registry request needs.
const WRITE_REQUEST: [&str; 2] = ["content-type", "content-range"];

/// Request headers for a write (a push, a delete).
pub fn write_request(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    copy(client, &REGISTRY_REQUEST, &mut out);
    copy(client, &WRITE_REQUEST, &mut out);
    identity(&mut out);
    out
}

/// Request headers for blob storage a redirect leads to: it needs no more than a range.
pub fn cdn_request(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    copy(client, &CONDITIONAL, &mut out);
    identity(&mut out);
    out
}

/// Response headers the client may see, from an upstream's or the proxy's own.
pub fn client_response(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    copy(from, &RESPONSE, &mut out);
    out
}

/// Whether a header may be on a request the proxy sends: the allowlists, plus what the proxy
/// sets itself.
pub fn is_upstream_request_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    REGISTRY_REQUEST.contains(&n)
        || CONDITIONAL.contains(&n)
        || WRITE_REQUEST.contains(&n)
        || [
            header::ACCEPT_ENCODING,
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
        ]
        .contains(name)
}

pub fn is_client_response_header(name: &HeaderName) -> bool {
    RESPONSE.contains(&name.as_str())
        || [
            header::LOCATION,
            header::WWW_AUTHENTICATE,
            header::LINK,
            header::CONTENT_SECURITY_POLICY,
            header::X_CONTENT_TYPE_OPTIONS,
        ]
        .contains(name)
        || name.as_str().starts_with("access-control-")
}

/// Whether the client's `If-None-Match` names `etag` (quoted), or any with `*`: an answer the
/// proxy gives itself is then a 304, as the registry's own would be. Weak tags compare as
/// strong ones (RFC 9110's weak comparison), and an unquoted digest matches as distribution
/// lets it.
pub fn none_match(client: &HeaderMap, etag: &str) -> bool {
    let bare = etag.trim_matches('"');
    client
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).trim_matches('"') == bare)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    const CLIENT: [(&str, &str); 22] = [
        ("accept", "application/vnd.oci.image.index.v1+json"),
        (
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json, */*",
        ),
        ("range", "bytes=10-"),
        ("if-none-match", "\"x\""),
        ("user-agent", "containerd/2.0"),
        ("host", "proxy:3000"),
        ("authorization", "Bearer t"),
        ("cookie", "session=1"),
        ("origin", "https://evil.example"),
        ("referer", "https://evil.example/x"),
        ("cf-connecting-ip", "203.0.113.9"),
        ("accept-encoding", "gzip"),
        ("connection", "close, x-secret"),
        ("x-secret", "1"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("proxy-authorization", "Basic x"),
        ("spin-full-url", "http://proxy/v2/"),
        ("spin-client-addr", "127.0.0.1:1"),
        ("x-forwarded-for", "1.2.3.4"),
        ("forwarded", "for=1.2.3.4"),
        ("content-length", "0"),
    ];

    #[test]
    fn registry_requests_keep_what_the_api_needs() {
        let out = registry_request(&map(&CLIENT));
        let accepts: Vec<_> = out.get_all("accept").iter().collect();
        assert_eq!(accepts.len(), 2);
        assert_eq!(
            accepts[1],
            "application/vnd.docker.distribution.manifest.v2+json, */*"
        );
        let mut names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "accept",
                "accept-encoding",
                "if-none-match",
                "range",
                "user-agent"
            ]
        );
        assert_eq!(out["accept-encoding"], "identity");
    }

    #[test]
    fn cdn_requests_carry_less() {
        let out = cdn_request(&map(&CLIENT));
        let mut names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["accept-encoding", "if-none-match", "range"]);
    }

    #[test]
    fn responses_keep_exactness_headers_only() {
        let h = map(&[
            ("content-type", "application/vnd.oci.image.manifest.v1+json"),
            ("content-length", "527"),
            ("docker-content-digest", "sha256:abc"),
            ("etag", "\"sha256:abc\""),
            ("content-range", "bytes 0-9/100"),
            ("accept-ranges", "bytes"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "a=b"),
            ("alt-svc", "h3=\":443\""),
            ("strict-transport-security", "max-age=1"),
            ("content-location", "https://upstream/x"),
            ("location", "https://upstream/x"),
            (
                "www-authenticate",
                "Bearer realm=\"https://upstream/token\"",
            ),
            ("x-amz-request-id", "1"),
        ]);
        let out = client_response(&h);
        assert_eq!(out.len(), 6);
        assert_eq!(out["content-length"], "527");
    }

    #[test]
    fn none_match_compares_weakly_and_takes_any() {
        let with = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::IF_NONE_MATCH, HeaderValue::from_static(v));
            }
            none_match(&h, "\"sha256:ab\"")
        };
        assert!(with(&["\"sha256:ab\""]));
        assert!(with(&["W/\"sha256:ab\""]));
        assert!(with(&["sha256:ab"]));
        assert!(with(&["\"x\", \"sha256:ab\""]));
        assert!(with(&["\"x\"", "\"sha256:ab\""]));
        assert!(with(&["*"]));
        assert!(!with(&[]));
        assert!(!with(&["\"sha256:abc\""]));
        assert!(!with(&["\"sha256:a\""]));
    }
}
