//! Configuration from Spin variables, validated once per request before anything is sent.
//!
//! Errors name the variable and what is wrong with it, never its value: a value may hold a
//! credential, and configuration errors reach every client and the log.

use crate::origin::Origin;
use std::time::Duration;

/// What the component does when the upstream redirects a blob to another host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobRedirect {
    /// Hand the redirect to the client: blob bytes bypass the component.
    Pass,
    /// Fetch the redirect target and stream it, hiding the other host.
    Follow,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub upstream: Origin,
    /// `upstream` as a URL: the base every registry request is built on.
    pub upstream_url: url::Url,
    /// Origin of the upstream's token realm (Docker Hub: auth.docker.io).
    pub upstream_auth: Option<Origin>,
    /// Origin pattern of blob redirect targets the component may follow (`*.` allowed).
    pub upstream_cdn: Option<Origin>,
    pub repository_prefix: String,
    pub public_url: Option<Origin>,
    /// Take the public origin from `X-Forwarded-Proto`/`X-Forwarded-Host`: only behind a
    /// front proxy that overwrites them, since otherwise every client picks its own realm.
    pub trust_forwarded: bool,
    pub blob_redirect: BlobRedirect,
    /// Where `/` sends a person; a short page when unset.
    pub home: Option<url::Url>,
    pub upstream_timeout: Duration,
}

/// A configuration error, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

const DOCKER_HUB_HOSTS: [&str; 4] = [
    "registry-1.docker.io",
    "index.docker.io",
    "registry.hub.docker.com",
    "docker.io",
];

fn error(name: &str, what: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("variable {name}: {what}"))
}

impl Config {
    /// Reads every variable through `get`, which returns `None` for an unset variable.
    pub fn from_variables(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| get(name).map(|v| v.trim().to_string()).unwrap_or_default();
        let origin = |name: &str, pattern: bool| -> Result<Option<Origin>, ConfigError> {
            let value = var(name);
            if value.is_empty() {
                return Ok(None);
            }
            let parsed = if pattern {
                Origin::parse_pattern(&value)
            } else {
                Origin::parse(&value)
            };
            parsed.map(Some).map_err(|e| error(name, e))
        };
        let upstream = origin("upstream", false)?.ok_or_else(|| error("upstream", "is empty"))?;
        let upstream_url = upstream
            .url()
            .ok_or_else(|| error("upstream", "not a URL"))?;
        let blob_redirect = match var("blob_redirect").as_str() {
            "" | "pass" => BlobRedirect::Pass,
            "follow" => BlobRedirect::Follow,
            _ => return Err(error("blob_redirect", "expected \"pass\" or \"follow\"")),
        };
        let prefix = var("repository_prefix").trim_matches('/').to_string();
        if !prefix.is_empty() && !crate::route::valid_name(&prefix) {
            return Err(error("repository_prefix", "not a repository name"));
        }
        let trust_forwarded = match var("trust_forwarded").as_str() {
            "" | "false" => false,
            "true" => true,
            _ => return Err(error("trust_forwarded", "expected \"true\" or \"false\"")),
        };
        let timeout = var("upstream_timeout");
        let upstream_timeout = if timeout.is_empty() {
            Duration::from_secs(25)
        } else {
            match timeout.parse::<f64>() {
                Ok(s) if s > 0.0 && s <= 3600.0 => Duration::from_secs_f64(s),
                _ => {
                    return Err(error(
                        "upstream_timeout",
                        "expected seconds (0 < s <= 3600)",
                    ))
                }
            }
        };
        let home = match var("home").as_str() {
            "" => None,
            h => {
                let url = url::Url::parse(h)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.username().is_empty())
                    .filter(|u| u.password().is_none());
                Some(url.ok_or_else(|| error("home", "expected an http(s) URL without user"))?)
            }
        };
        Ok(Self {
            upstream,
            upstream_url,
            upstream_auth: origin("upstream_auth", false)?,
            upstream_cdn: origin("upstream_cdn", true)?,
            repository_prefix: prefix,
            public_url: origin("public_url", false)?,
            trust_forwarded,
            blob_redirect,
            home,
            upstream_timeout,
        })
    }

    /// Docker Hub keeps official images under `library/`.
    pub fn is_docker_hub(&self) -> bool {
        DOCKER_HUB_HOSTS.contains(&self.upstream.host.as_str())
    }

    /// Hosts the token endpoint may send credentials to: the upstream and its auth origin.
    pub fn allows_realm(&self, realm: &Origin) -> bool {
        *realm == self.upstream || self.upstream_auth.as_ref() == Some(realm)
    }

    /// Hosts a followed blob redirect may reach (never with the client's credentials).
    pub fn allows_cdn(&self, target: &Origin) -> bool {
        self.upstream_cdn
            .as_ref()
            .is_some_and(|c| c.matches(target))
    }

    /// Every host the component may send a request to.
    pub fn allows_destination(&self, target: &Origin) -> bool {
        self.allows_realm(target) || self.allows_cdn(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_variables(|k| map.get(k).cloned())
    }

    #[test]
    fn spin_toml_defaults_give_docker_hub() {
        let c = config(&[
            ("upstream", "https://registry-1.docker.io"),
            ("upstream_auth", "https://auth.docker.io"),
            ("upstream_cdn", "https://production.cloudflare.docker.com"),
            ("blob_redirect", "pass"),
            ("trust_forwarded", "false"),
            ("upstream_timeout", "25"),
        ])
        .unwrap();
        assert!(c.is_docker_hub());
        assert!(!c.trust_forwarded);
        assert_eq!(c.blob_redirect, BlobRedirect::Pass);
        assert_eq!(c.upstream_timeout, Duration::from_secs(25));
        assert!(c.allows_realm(&Origin::parse("https://auth.docker.io").unwrap()));
        assert!(!c.allows_realm(&Origin::parse("https://evil.example").unwrap()));
        assert!(!c.allows_realm(&Origin::parse("http://auth.docker.io").unwrap()));
        assert!(
            !c.allows_realm(&Origin::parse("https://production.cloudflare.docker.com").unwrap())
        );
    }

    #[test]
    fn errors_name_the_variable_never_the_value() {
        for (pairs, name) in [
            (vec![("upstream", "not a url")], "upstream"),
            (vec![("upstream", "")], "upstream"),
            (vec![("upstream", "http://r/v2")], "upstream"),
            (
                vec![("upstream", "http://r"), ("blob_redirect", "sideways")],
                "blob_redirect",
            ),
            (
                vec![("upstream", "http://r"), ("upstream_timeout", "soon")],
                "upstream_timeout",
            ),
            (
                vec![("upstream", "http://r"), ("repository_prefix", "Bad Name")],
                "repository_prefix",
            ),
            (
                vec![("upstream", "http://r"), ("trust_forwarded", "yes")],
                "trust_forwarded",
            ),
            (
                vec![("upstream", "http://r"), ("home", "javascript:alert(1)")],
                "home",
            ),
        ] {
            let e = config(&pairs).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
            for (_, value) in &pairs {
                if !value.is_empty() && value.len() > 4 {
                    assert!(!e.contains(value), "{e} repeats {value}");
                }
            }
        }
    }

    #[test]
    fn userinfo_is_refused_and_never_echoed() {
        for var in ["upstream", "upstream_auth", "upstream_cdn", "public_url"] {
            let mut pairs = vec![("upstream", "https://ghcr.io")];
            pairs.retain(|(k, _)| *k != var);
            pairs.push((var, "https://robot:TOKEN123@ghcr.io"));
            let e = config(&pairs).unwrap_err().to_string();
            assert!(e.contains(var) && !e.contains("TOKEN123"), "{e}");
        }
        let e = config(&[("upstream", "http://r"), ("home", "https://u:pw@docs")]).unwrap_err();
        assert!(!e.to_string().contains("pw@"), "{e}");
    }

    #[test]
    fn wildcards_only_for_the_cdn() {
        for var in ["upstream", "upstream_auth", "public_url"] {
            let mut pairs = vec![("upstream", "https://r.example")];
            pairs.retain(|(k, _)| *k != var);
            pairs.push((var, "https://*.example.com"));
            let e = config(&pairs).unwrap_err().to_string();
            assert!(e.contains(var), "{e}");
        }
        let c = config(&[
            ("upstream", "http://127.0.0.1:5000"),
            ("upstream_cdn", "https://*.cdn.example"),
        ])
        .unwrap();
        assert!(c.allows_cdn(&Origin::parse("https://a.cdn.example").unwrap()));
        assert!(!c.allows_cdn(&Origin::parse("https://cdn.example.evil").unwrap()));
        assert!(c.allows_destination(&Origin::parse("http://127.0.0.1:5000").unwrap()));
    }

    #[test]
    fn prefix_slashes_are_trimmed() {
        let c = config(&[
            ("upstream", "http://127.0.0.1:5000"),
            ("repository_prefix", "/team/app/"),
        ])
        .unwrap();
        assert_eq!(c.repository_prefix, "team/app");
        assert!(!c.is_docker_hub());
    }
}
