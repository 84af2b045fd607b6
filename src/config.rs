//! Configuration from Spin variables, validated once per request before anything is sent.

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
    pub blob_redirect: BlobRedirect,
    /// Where `/` sends a person; a short page when unset.
    pub home: Option<String>,
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

impl Config {
    /// Reads every variable through `get`, which returns `None` for an unset variable.
    pub fn from_variables(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| get(name).map(|v| v.trim().to_string()).unwrap_or_default();
        let origin = |name: &str| -> Result<Option<Origin>, ConfigError> {
            let value = var(name);
            if value.is_empty() {
                return Ok(None);
            }
            Origin::parse(&value)
                .map(Some)
                .map_err(|e| ConfigError(format!("variable {name} = {value:?}: {e}")))
        };
        let upstream =
            origin("upstream")?.ok_or_else(|| ConfigError("variable upstream is empty".into()))?;
        if upstream.is_wildcard() {
            return Err(ConfigError("variable upstream may not contain '*'".into()));
        }
        let upstream_url = url::Url::parse(&upstream.to_string())
            .map_err(|e| ConfigError(format!("variable upstream = {upstream}: {e}")))?;
        let blob_redirect = match var("blob_redirect").as_str() {
            "" | "pass" => BlobRedirect::Pass,
            "follow" => BlobRedirect::Follow,
            other => {
                return Err(ConfigError(format!(
                    "variable blob_redirect = {other:?}: expected \"pass\" or \"follow\""
                )))
            }
        };
        let prefix = var("repository_prefix").trim_matches('/').to_string();
        if !prefix.is_empty() && !crate::route::valid_name(&prefix) {
            return Err(ConfigError(format!(
                "variable repository_prefix = {prefix:?}: not a repository name"
            )));
        }
        let timeout = var("upstream_timeout");
        let upstream_timeout = if timeout.is_empty() {
            Duration::from_secs(25)
        } else {
            match timeout.parse::<f64>() {
                Ok(s) if s > 0.0 && s <= 3600.0 => Duration::from_secs_f64(s),
                _ => {
                    return Err(ConfigError(format!(
                        "variable upstream_timeout = {timeout:?}: expected seconds (0 < s <= 3600)"
                    )))
                }
            }
        };
        let home = Some(var("home")).filter(|h| !h.is_empty());
        if let Some(h) = &home {
            if h.bytes().any(|b| b.is_ascii_control()) {
                return Err(ConfigError(
                    "variable home contains control characters".into(),
                ));
            }
        }
        Ok(Self {
            upstream,
            upstream_url,
            upstream_auth: origin("upstream_auth")?,
            upstream_cdn: origin("upstream_cdn")?,
            repository_prefix: prefix,
            public_url: origin("public_url")?,
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
        *realm == self.upstream
            || self
                .upstream_auth
                .as_ref()
                .is_some_and(|a| a.matches(realm))
    }

    /// Hosts a followed blob redirect may reach.
    pub fn allows_redirect_target(&self, target: &Origin) -> bool {
        *target == self.upstream
            || self
                .upstream_cdn
                .as_ref()
                .is_some_and(|c| c.matches(target))
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
            ("upstream_timeout", "25"),
        ])
        .unwrap();
        assert!(c.is_docker_hub());
        assert_eq!(c.blob_redirect, BlobRedirect::Pass);
        assert_eq!(c.upstream_timeout, Duration::from_secs(25));
        assert!(c.allows_realm(&Origin::parse("https://auth.docker.io").unwrap()));
        assert!(!c.allows_realm(&Origin::parse("https://evil.example").unwrap()));
        assert!(!c.allows_realm(&Origin::parse("http://auth.docker.io").unwrap()));
    }

    #[test]
    fn errors_name_the_variable() {
        let e = config(&[("upstream", "not a url")]).unwrap_err();
        assert!(e.to_string().contains("upstream"), "{e}");
        let e = config(&[("upstream", "http://r"), ("blob_redirect", "sideways")]).unwrap_err();
        assert!(e.to_string().contains("blob_redirect"), "{e}");
        let e = config(&[("upstream", "")]).unwrap_err();
        assert!(e.to_string().contains("upstream"), "{e}");
        let e = config(&[("upstream", "http://r"), ("upstream_timeout", "soon")]).unwrap_err();
        assert!(e.to_string().contains("upstream_timeout"), "{e}");
        let e = config(&[("upstream", "http://r"), ("repository_prefix", "Bad Name")]).unwrap_err();
        assert!(e.to_string().contains("repository_prefix"), "{e}");
        let e = config(&[("upstream", "http://r/v2")]).unwrap_err();
        assert!(e.to_string().contains("upstream"), "{e}");
    }

    #[test]
    fn prefix_slashes_are_trimmed_and_cdn_wildcards_match() {
        let c = config(&[
            ("upstream", "http://127.0.0.1:5000"),
            ("repository_prefix", "/team/app/"),
            ("upstream_cdn", "https://*.cdn.example"),
        ])
        .unwrap();
        assert_eq!(c.repository_prefix, "team/app");
        assert!(!c.is_docker_hub());
        assert!(c.allows_redirect_target(&Origin::parse("https://a.cdn.example").unwrap()));
        assert!(c.allows_redirect_target(&Origin::parse("http://127.0.0.1:5000").unwrap()));
        assert!(!c.allows_redirect_target(&Origin::parse("https://cdn.example.evil").unwrap()));
    }
}
