//! `scheme://host[:port]`: the unit that configuration, realms and redirect targets compare as.
//!
//! A host is a DNS name, an IPv4 address or a bracketed IPv6 address, nothing else: origins
//! end up in challenges, Links and the home page, so what parses here is safe to print there.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: String,
    /// Lower-cased; IPv6 literals keep their brackets; may start with `*.` in a pattern.
    pub host: String,
    pub port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Why a text is not an origin. Never repeats the text: it may hold a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginError {
    NoScheme,
    Scheme,
    /// A path, query, fragment or `user@`.
    NotAnOrigin,
    Host,
    Port,
    Wildcard,
}

impl OriginError {
    /// Every reason, for checks that an error message is one of them.
    pub const ALL: [OriginError; 6] = [
        OriginError::NoScheme,
        OriginError::Scheme,
        OriginError::NotAnOrigin,
        OriginError::Host,
        OriginError::Port,
        OriginError::Wildcard,
    ];
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OriginError::NoScheme => "expected scheme://host[:port]",
            OriginError::Scheme => "the scheme must be http or https",
            OriginError::NotAnOrigin => {
                "expected scheme://host[:port] without user, path, query or fragment"
            }
            OriginError::Host => "the host is not a DNS name or IP address",
            OriginError::Port => "the port is not a number from 1 to 65535",
            OriginError::Wildcard => "a '*' is not allowed here",
        })
    }
}

/// A DNS name (labels of letters, digits, `-` and `_`) or a dotted IPv4 address. A name whose
/// last label is a number is an IPv4 address to URL parsers (WHATWG: `2130706433`, `0x7f.1`,
/// `999.1.1.1`), so it must be one, dotted: the runtime would reach (or refuse) another host
/// than the one configuration names.
fn valid_name(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or("");
    let numeric = !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit());
    if numeric || last.starts_with("0x") {
        return host.parse::<std::net::Ipv4Addr>().is_ok();
    }
    host.len() <= 253
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
}

fn valid_host(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => valid_name(host),
    }
}

impl Origin {
    /// Parses a concrete origin; a trailing `/` is accepted, any other path is not.
    pub fn parse(s: &str) -> Result<Self, OriginError> {
        let o = Self::parse_pattern(s)?;
        if o.is_wildcard() {
            return Err(OriginError::Wildcard);
        }
        Ok(o)
    }

    /// Like `parse`, but the host may be `*.domain` (subdomains of it).
    pub fn parse_pattern(s: &str) -> Result<Self, OriginError> {
        let (scheme, rest) = s.split_once("://").ok_or(OriginError::NoScheme)?;
        let scheme = scheme.to_ascii_lowercase();
        let default = default_port(&scheme).ok_or(OriginError::Scheme)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@', '\\']) {
            return Err(OriginError::NotAnOrigin);
        }
        let (host, port) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => {
                let digits = &rest[i + 1..];
                let port = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| digits.parse::<u16>().ok())
                    .flatten()
                    .filter(|p| *p != 0)
                    .ok_or(OriginError::Port)?;
                (&rest[..i], port)
            }
            _ => (rest, default),
        };
        let host = host.to_ascii_lowercase();
        let body = host.strip_prefix("*.").unwrap_or(&host);
        if !valid_host(body) {
            return Err(OriginError::Host);
        }
        Ok(Self { scheme, host, port })
    }

    /// The origin of an absolute http(s) URL.
    pub fn of_url(url: &url::Url) -> Option<Self> {
        let host = match url.host()? {
            url::Host::Ipv6(a) => format!("[{a}]"),
            h => h.to_string().to_ascii_lowercase(),
        };
        default_port(url.scheme())?;
        Some(Self {
            scheme: url.scheme().to_string(),
            host,
            port: url.port_or_known_default()?,
        })
    }

    pub fn is_wildcard(&self) -> bool {
        self.host.starts_with("*.")
    }

    /// Whether the host is a loopback name or an IP address: where plain HTTP registries live.
    pub fn is_local_or_ip(&self) -> bool {
        let h = self.host.as_str();
        h == "localhost"
            || h.ends_with(".localhost")
            || h.starts_with('[')
            || h.parse::<std::net::Ipv4Addr>().is_ok()
    }

    /// Whether `other` (a concrete origin) is this origin or falls under this pattern.
    pub fn matches(&self, other: &Origin) -> bool {
        if self.scheme != other.scheme || self.port != other.port {
            return false;
        }
        match self.host.strip_prefix('*') {
            Some(suffix) => other.host.ends_with(suffix) && other.host.len() > suffix.len(),
            None => self.host == other.host,
        }
    }

    /// `host[:port]`, the port only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        if Some(self.port) == default_port(&self.scheme) {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// This origin as a URL with an empty path. Never `None` for a parsed origin (tested).
    pub fn url(&self) -> Option<url::Url> {
        url::Url::parse(&format!("{self}/")).ok()
    }

    /// This origin with `path`. Built on demand: a route table's routes are read per request
    /// and most of them serve none of it.
    pub fn url_with_path(&self, path: &str) -> Option<url::Url> {
        let mut url = self.url()?;
        url.set_path(path);
        Some(url)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let o = Origin::parse("HTTPS://Registry-1.Docker.io/").unwrap();
        assert_eq!(o.to_string(), "https://registry-1.docker.io");
        assert_eq!(o.port, 443);
        let o = Origin::parse("http://127.0.0.1:5000").unwrap();
        assert_eq!(o.authority(), "127.0.0.1:5000");
        let o = Origin::parse("http://[::1]:8080").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("[::1]", 8080));
        assert_eq!(
            Origin::parse("http://h:80").unwrap().to_string(),
            "http://h"
        );
        assert_eq!(Origin::parse("http://my_registry:5000").unwrap().port, 5000);
    }

    #[test]
    fn a_name_ending_in_a_number_is_a_dotted_ipv4_address_or_nothing() {
        for bad in [
            "http://2130706433:5000",
            "http://0x7f.0.0.1",
            "http://999.1.1.1",
            "http://1.2.3",
            "http://0x7f.1",
            "http://registry.1",
        ] {
            assert_eq!(Origin::parse(bad), Err(OriginError::Host), "{bad}");
        }
        assert!(Origin::parse("http://127.0.0.1:5000").is_ok());
        assert!(Origin::parse("http://registry1.example:5000").is_ok());
    }

    #[test]
    fn every_origin_is_a_url_with_any_path() {
        for text in [
            "https://registry-1.docker.io",
            "http://127.0.0.1:5000",
            "http://[::1]:8080",
            "http://my_registry:5000",
            "https://xn--bcher-kva.example",
        ] {
            let o = Origin::parse(text).unwrap();
            for path in [
                "/v2/",
                "/v2/a/b/manifests/sha256:00",
                "/v2/a b/%41",
                "/x?y",
                "/x#y",
                "v2",
            ] {
                let mut want = o.url().unwrap();
                want.set_path(path);
                assert_eq!(o.url_with_path(path), Some(want), "{text} {path}");
            }
        }
    }

    #[test]
    fn rejects_what_is_not_an_origin() {
        for bad in [
            "registry",
            "ftp://h",
            "http://h/v2",
            "http://u@h",
            "http://robot:TOKEN@ghcr.io",
            "http://h:x",
            "http://h:0",
            "http://h:+80",
            "http://h:99999",
            "http://",
            "http://a b",
            "http://[<img src=x onerror=alert(1)>]",
            "http://[::1",
            "http://[zz::1]",
            "http://a..b",
            "http://-a.b",
            "http://a\"b",
            "http://h\\x",
            "http://*.*.a",
        ] {
            assert!(Origin::parse_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_never_repeat_the_text() {
        let e = Origin::parse("https://robot:s3cr3t@ghcr.io").unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"));
    }

    #[test]
    fn wildcards_only_as_patterns() {
        assert_eq!(
            Origin::parse("https://*.example.com"),
            Err(OriginError::Wildcard)
        );
        let p = Origin::parse_pattern("https://*.example.com").unwrap();
        assert!(p.matches(&Origin::parse("https://a.example.com").unwrap()));
        assert!(!p.matches(&Origin::parse("https://example.com").unwrap()));
        assert!(!p.matches(&Origin::parse("https://aexample.com").unwrap()));
        assert!(!p.matches(&Origin::parse("http://a.example.com").unwrap()));
    }

    #[test]
    fn origin_of_url_uses_default_ports() {
        let u = url::Url::parse("https://cdn.example/x?y").unwrap();
        assert_eq!(
            Origin::of_url(&u).unwrap(),
            Origin::parse("https://cdn.example").unwrap()
        );
        assert!(Origin::of_url(&url::Url::parse("ftp://cdn.example/x").unwrap()).is_none());
    }

    #[test]
    fn local_hosts() {
        for (o, local) in [
            ("http://127.0.0.1:3000", true),
            ("http://localhost:3000", true),
            ("http://a.localhost", true),
            ("http://[::1]:3000", true),
            ("http://10.1.2.3", true),
            ("http://images.example.com", false),
        ] {
            assert_eq!(Origin::parse(o).unwrap().is_local_or_ip(), local, "{o}");
        }
    }
}
