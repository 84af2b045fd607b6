//! `scheme://host[:port]`: the unit that configuration, realms and redirect targets compare as.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
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

impl Origin {
    /// Parses an origin; a trailing `/` is accepted, any other path is not.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| "expected scheme://host[:port]".to_string())?;
        let scheme = scheme.to_ascii_lowercase();
        let default =
            default_port(&scheme).ok_or_else(|| format!("unsupported scheme {scheme:?}"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err("expected an origin without path, query or user".into());
        }
        let (host, port) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => {
                let port = rest[i + 1..]
                    .parse::<u16>()
                    .map_err(|_| format!("invalid port in {s:?}"))?;
                (&rest[..i], port)
            }
            _ => (rest, default),
        };
        let host = host.to_ascii_lowercase();
        let body = host.strip_prefix("*.").unwrap_or(&host);
        let valid = !body.is_empty()
            && (body.starts_with('[') && body.ends_with(']')
                || body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !valid {
            return Err(format!("invalid host in {s:?}"));
        }
        Ok(Self { scheme, host, port })
    }

    /// The origin of an absolute URL.
    pub fn of_url(url: &url::Url) -> Option<Self> {
        let host = match url.host()? {
            url::Host::Ipv6(a) => format!("[{a}]"),
            h => h.to_string().to_ascii_lowercase(),
        };
        Some(Self {
            scheme: url.scheme().to_string(),
            host,
            port: url.port_or_known_default()?,
        })
    }

    pub fn is_wildcard(&self) -> bool {
        self.host.starts_with("*.")
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
    }

    #[test]
    fn rejects_what_is_not_an_origin() {
        for bad in [
            "registry",
            "ftp://h",
            "http://h/v2",
            "http://u@h",
            "http://h:x",
            "http://",
            "http://a b",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let p = Origin::parse("https://*.example.com").unwrap();
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
    }
}
