//! The origin clients reach the proxy by: the realm of every challenge and the origin of every
//! absolute Link. In order: `public_url`; `X-Forwarded-Proto`/`X-Forwarded-Host` when
//! `trust_forwarded` says a front proxy sets them; else the request's own scheme and `Host`.
//!
//! Spin hands components `http` whatever its listener; only its `spin-full-url` header has the
//! listener's scheme (`https` under `spin up --tls-cert`), and a platform that terminates TLS in
//! front of Spin (Fermyon Cloud, an ingress) reaches it over plain HTTP. Registries on a DNS name are served over TLS (clients refuse plain HTTP there
//! unless told otherwise), so a plain-HTTP request for a DNS name on the default port gets an
//! `https` realm; loopback names, IP addresses and explicit ports keep `http`. `public_url`
//! overrides all of this.

use crate::config::Config;
use crate::error::OciError;
use crate::origin::Origin;
use http::HeaderMap;

/// The last value of a header: the one the nearest (trusted) proxy set or appended.
fn last_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let v = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    let last = v.rsplit(',').next()?.trim();
    (!last.is_empty()).then_some(last)
}

/// `host[:port]` without the root's dot of a fully qualified name (`images.example.com.`):
/// the same host, as DNS and TLS take it.
fn without_root_dot(authority: &str) -> std::borrow::Cow<'_, str> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') && !h.contains(':') => (h, Some(p)),
        _ => (authority, None),
    };
    match (host.strip_suffix('.'), port) {
        (Some(h), Some(p)) => format!("{h}:{p}").into(),
        (Some(h), None) => h.into(),
        (None, _) => authority.into(),
    }
}

fn bad_request(message: &str) -> OciError {
    OciError::unsupported(http::StatusCode::BAD_REQUEST, message)
}

/// `request_scheme` and `request_authority` are what the runtime says the request used.
pub fn public_origin(
    config: &Config,
    headers: &HeaderMap,
    request_scheme: Option<&str>,
    request_authority: Option<&str>,
) -> Result<Origin, OciError> {
    if let Some(o) = &config.public_url {
        return Ok(o.clone());
    }
    if config.trust_forwarded {
        if let (Some(proto), Some(host)) = (
            last_value(headers, "x-forwarded-proto"),
            last_value(headers, "x-forwarded-host"),
        ) {
            let host = without_root_dot(host);
            return Origin::parse(&format!("{}://{host}", proto.to_ascii_lowercase()))
                .map_err(|_| bad_request("X-Forwarded-Proto/X-Forwarded-Host is not an origin"));
        }
    }
    // Spin's own record of the URL: its last value, since Spin appends it after any a client
    // sent. Parsed only for a runtime that hides Host.
    let spin_full_url = headers
        .get_all("spin-full-url")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok());
    let direct_host = headers
        .get(http::header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{0}"))
        .or(request_authority);
    let spin = match (direct_host, request_scheme) {
        (Some(_), Some(_)) => None,
        _ => spin_full_url
            .and_then(|u| url::Url::parse(u).ok())
            .as_ref()
            .and_then(Origin::of_url),
    };
    let spin_authority = spin.as_ref().map(Origin::authority);
    let host = direct_host
        .or(spin_authority.as_deref())
        .ok_or_else(|| bad_request("the request has no Host header"))?;
    let mut scheme = request_scheme
        .or(spin.as_ref().map(|o| o.scheme.as_str()))
        .unwrap_or("http")
        .to_ascii_lowercase();
    let tls_listener = spin_full_url
        .and_then(|u| u.get(..8))
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if scheme == "http" && tls_listener {
        scheme = "https".into();
    }
    let host = without_root_dot(host);
    let origin = Origin::parse(&format!("{scheme}://{host}"))
        .map_err(|_| bad_request("the Host header is not a host name and port"))?;
    if origin.scheme == "http" && origin.port == 80 && !origin.is_local_or_ip() {
        return Ok(Origin {
            scheme: "https".into(),
            port: 443,
            ..origin
        });
    }
    Ok(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(public: &str, trust: &str) -> Config {
        Config::from_variables(|k| match k {
            "upstream" => Some("https://registry-1.docker.io".into()),
            "public_url" => Some(public.into()),
            "trust_forwarded" => Some(trust.into()),
            _ => None,
        })
        .unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn origin(c: &Config, h: &[(&'static str, &'static str)], scheme: Option<&str>) -> String {
        public_origin(c, &headers(h), scheme, None)
            .map(|o| o.to_string())
            .unwrap_or_else(|e| format!("error {}", e.status.as_u16()))
    }

    #[test]
    fn configured_url_wins() {
        let c = config("https://images.example.com", "true");
        let h = [
            ("host", "internal:3000"),
            ("x-forwarded-host", "evil.example"),
        ];
        assert_eq!(origin(&c, &h, Some("http")), "https://images.example.com");
    }

    #[test]
    fn forwarded_headers_are_ignored_unless_trusted() {
        let h = [
            ("host", "127.0.0.1:3000"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ];
        assert_eq!(
            origin(&config("", ""), &h, Some("http")),
            "http://127.0.0.1:3000"
        );
        let h = [
            ("host", "internal:3000"),
            ("x-forwarded-proto", "http, https"),
            ("x-forwarded-host", "evil.example, images.example.com"),
        ];
        // The front proxy appends: its value is the last one.
        assert_eq!(
            origin(&config("", "true"), &h, Some("http")),
            "https://images.example.com"
        );
        let bad = [
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "[<img src=x onerror=alert(1)>]"),
        ];
        assert_eq!(origin(&config("", "true"), &bad, Some("http")), "error 400");
    }

    #[test]
    fn request_scheme_and_host() {
        let c = config("", "");
        assert_eq!(
            origin(&c, &[("host", "127.0.0.1:3000")], Some("http")),
            "http://127.0.0.1:3000"
        );
        assert_eq!(
            origin(&c, &[("host", "localhost:3000")], Some("http")),
            "http://localhost:3000"
        );
        // A DNS name over plain HTTP is a TLS-terminating platform in front of Spin.
        assert_eq!(
            origin(&c, &[("host", "images.example.com")], Some("http")),
            "https://images.example.com"
        );
        assert_eq!(
            origin(&c, &[("host", "images.example.com:8443")], Some("https")),
            "https://images.example.com:8443"
        );
        assert_eq!(
            origin(&c, &[("host", "registry.lan:3000")], Some("http")),
            "http://registry.lan:3000"
        );
        let spin = [("spin-full-url", "https://images.example.com:8443/v2/?x=1")];
        assert_eq!(origin(&c, &spin, None), "https://images.example.com:8443");
        let h = public_origin(&c, &headers(&[]), Some("https"), Some("a.example")).unwrap();
        assert_eq!(h.to_string(), "https://a.example");
    }

    /// A fully qualified name (the root's trailing dot) is the same host: it was a 400.
    #[test]
    fn a_fully_qualified_host_is_the_same_host() {
        let c = config("", "");
        for (host, want) in [
            ("images.example.com.", "https://images.example.com"),
            ("registry.lan.:3000", "http://registry.lan:3000"),
            ("localhost.:3000", "http://localhost:3000"),
        ] {
            assert_eq!(origin(&c, &[("host", host)], Some("http")), want, "{host}");
        }
        for host in ["images.example.com..", ".", "a..b"] {
            assert_eq!(origin(&c, &[("host", host)], Some("http")), "error 400");
        }
    }

    #[test]
    fn hostile_host_is_refused() {
        let c = config("", "");
        for host in [
            "a\",realm=\"evil",
            "[<img src=x onerror=alert(1)>]",
            "a b",
            "user@host",
            "host/path",
        ] {
            let h = headers(&[("host", host)]);
            let e = public_origin(&c, &h, Some("http"), None).unwrap_err();
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST, "{host}");
            assert!(!e.message.contains(host), "{}", e.message);
        }
        assert!(public_origin(&c, &headers(&[]), None, None).is_err());
    }

    /// `spin up --tls-cert`: Spin says `http` to the component, and its `spin-full-url` (its
    /// last value: Spin appends it after the client's) has `https`; the port stays.
    #[test]
    fn spin_s_tls_listener_makes_an_https_realm() {
        let c = config("", "false");
        let url = "https://images.example.com:8443/v2/";
        let h = [("host", "images.example.com:8443"), ("spin-full-url", url)];
        assert_eq!(
            origin(&c, &h, Some("http")),
            "https://images.example.com:8443"
        );
        let h = [
            ("host", "127.0.0.1:8443"),
            ("spin-full-url", "https://127.0.0.1:8443/v2/"),
        ];
        assert_eq!(origin(&c, &h, Some("http")), "https://127.0.0.1:8443");
        // A client's own value comes first and counts for nothing.
        let h = [
            ("host", "127.0.0.1:3000"),
            ("spin-full-url", "https://127.0.0.1:3000/v2/"),
            ("spin-full-url", "http://127.0.0.1:3000/v2/"),
        ];
        assert_eq!(origin(&c, &h, Some("http")), "http://127.0.0.1:3000");
    }
}
