//! Which headers cross the proxy: hop-by-hop headers and what the runtime added stay behind.

use http::header::{HeaderMap, HeaderName};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "http2-settings",
];

fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn is_hop_by_hop(name: &HeaderName, listed: &[String]) -> bool {
    let n = name.as_str();
    HOP_BY_HOP.contains(&n) || n.starts_with("proxy-") || listed.iter().any(|l| l == n)
}

/// Request headers for the upstream: the client's own, minus hop-by-hop, `Host`, the body
/// framing, what Spin or a front proxy added, and `Authorization` (the caller decides that).
pub fn upstream_request(client: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(client);
    let mut out = HeaderMap::new();
    for (name, value) in client {
        let n = name.as_str();
        let runtime_added = n.starts_with("spin-")
            || n.starts_with("x-forwarded-")
            || n == "forwarded"
            || n == "x-real-ip";
        let skip = runtime_added
            || is_hop_by_hop(name, &listed)
            || matches!(n, "host" | "authorization" | "content-length" | "expect");
        if !skip {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Response headers for the client: everything but hop-by-hop. Lengths, digests, ranges,
/// ETags and content types pass untouched.
pub fn client_response(upstream: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut out = HeaderMap::new();
    for (name, value) in upstream {
        if !is_hop_by_hop(name, &listed) {
            out.append(name.clone(), value.clone());
        }
    }
    out
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

    #[test]
    fn request_keeps_accept_verbatim_and_drops_the_rest() {
        let h = map(&[
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
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("spin-full-url", "http://proxy/v2/"),
            ("spin-client-addr", "127.0.0.1:1"),
            ("x-forwarded-for", "1.2.3.4"),
            ("content-length", "0"),
        ]);
        let out = upstream_request(&h);
        let accepts: Vec<_> = out.get_all("accept").iter().collect();
        assert_eq!(accepts.len(), 2);
        assert_eq!(
            accepts[1],
            "application/vnd.docker.distribution.manifest.v2+json, */*"
        );
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept", "range", "if-none-match", "user-agent"]);
    }

    #[test]
    fn response_keeps_exactness_headers() {
        let h = map(&[
            ("content-type", "application/vnd.oci.image.manifest.v1+json"),
            ("content-length", "527"),
            ("docker-content-digest", "sha256:abc"),
            ("etag", "\"sha256:abc\""),
            ("content-range", "bytes 0-9/100"),
            ("accept-ranges", "bytes"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
        ]);
        let out = client_response(&h);
        assert_eq!(out.len(), 6);
        assert_eq!(out["content-length"], "527");
    }
}
