//! `allowed_outbound_hosts`: which outgoing HTTP requests a component may make,
//! with Spin's matching rules, enforced in wasmtime-wasi-http's `send_request` hook.

use anyhow::{bail, ensure, Context, Result};
use std::future::Future;
use std::sync::Arc;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPolicy {
    allowed: Vec<AllowedHost>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    /// `None` is `*`.
    scheme: Option<String>,
    host: HostPattern,
    /// `None` is `*`.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.example.com` is stored as `.example.com`: subdomains only, as in Spin.
    Subdomain(String),
    Exact(String),
}

/// Ports Spin fills in when an entry names none.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        _ => None,
    }
}

impl OutboundPolicy {
    /// Parses entries whose `{{ templates }}` are already resolved. Empty and malformed ones
    /// are errors, as in Spin (`AllowedHostConfig::parse` bails on `""`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self> {
        let mut allowed = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            ensure!(
                !entry.is_empty(),
                "\"\" is not an allowed outbound host format"
            );
            allowed.push(AllowedHost::parse(entry).with_context(|| {
                format!(
                    "invalid allowed_outbound_hosts entry {:?}",
                    without_userinfo(entry)
                )
            })?);
        }
        Ok(Self { allowed })
    }

    /// What Spin enforces when the resolved list fails to parse: every request denied.
    pub fn deny_all() -> Self {
        Self {
            allowed: Vec::new(),
        }
    }

    pub fn allows(&self, uri: &http::Uri) -> bool {
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return false;
        };
        let scheme = scheme.to_ascii_lowercase();
        let Some(port) = authority.port_u16().or_else(|| default_port(&scheme)) else {
            return false;
        };
        let host = authority.host().to_ascii_lowercase();
        self.allowed.iter().any(|a| a.matches(&scheme, &host, port))
    }
}

/// An entry as it may be shown: a `user:password@` in it is a credential.
fn without_userinfo(entry: &str) -> String {
    match (entry.find("://"), entry.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &entry[..s + 3], &entry[at..]),
        _ => entry.to_string(),
    }
}

impl AllowedHost {
    fn parse(entry: &str) -> Result<Self> {
        let Some((scheme, rest)) = entry.split_once("://") else {
            bail!("it has no scheme (e.g. 'https://' or '*://')");
        };
        let scheme = scheme.to_ascii_lowercase();
        ensure!(
            scheme == "*"
                || (!scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))),
            "invalid scheme {scheme:?}"
        );
        // A trailing '/' is tolerated; anything after it is a path, which Spin rejects.
        let rest = match rest.split_once('/') {
            Some((authority, "")) => authority,
            Some(_) => bail!("it has a path; only scheme://host[:port] is allowed"),
            None => rest,
        };
        ensure!(
            !rest.contains('@'),
            "it has user information; only scheme://host[:port] is allowed"
        );
        // Split host and port, keeping bracketed IPv6 literals whole.
        let (host, port) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        ensure!(!host.is_empty(), "it has no host");
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            ensure!(
                !domain.is_empty() && !domain.contains('*'),
                "invalid wildcard host"
            );
            HostPattern::Subdomain(format!(".{domain}"))
        } else {
            ensure!(
                !host.contains('*'),
                "'*' is only allowed as the whole host or as '*.domain'"
            );
            HostPattern::Exact(host)
        };
        let port = match port {
            Some("*") => None,
            Some(p) => Some(p.parse().with_context(|| format!("invalid port {p:?}"))?),
            None => Some(default_port(&scheme).with_context(|| {
                format!("no port given and scheme {scheme:?} has no default port")
            })?),
        };
        let scheme = (scheme != "*").then_some(scheme);
        Ok(Self { scheme, host, port })
    }

    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.port.is_none_or(|p| p == port)
            && match &self.host {
                HostPattern::Any => true,
                HostPattern::Subdomain(suffix) => host.ends_with(suffix.as_str()),
                HostPattern::Exact(h) => h == host,
            }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

/// Outbound requests per origin (`scheme://host:port`), since the host started: what a test
/// or benchmark counts an upstream's cost by. `SIGUSR1` prints them.
#[derive(Default)]
pub struct Counters(std::sync::Mutex<std::collections::BTreeMap<String, u64>>);

impl Counters {
    fn count(&self, uri: &http::Uri) {
        let origin = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        );
        if let Ok(mut m) = self.0.lock() {
            *m.entry(origin).or_default() += 1;
        }
    }

    /// One line: `OUTBOUND {"<origin>": <requests>, ...}`.
    pub fn line(&self) -> String {
        let m = self.0.lock().map(|m| m.clone()).unwrap_or_default();
        let pairs: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        format!("OUTBOUND {{{}}}", pairs.join(", "))
    }
}

/// The wasi-http hooks for one request's store: the pooled sender behind the policy.
pub struct PolicyHooks {
    pub policy: Arc<OutboundPolicy>,
    pub counters: Arc<Counters>,
    pub pool: Arc<crate::pool::Pool>,
    /// Application variables still to resolve before this instance's first outbound request.
    /// Spin checks a request against `allowed_outbound_hosts` through a future made once per
    /// instance, which first resolves every application variable the manifest declares
    /// (spin-expressions `ProviderResolver::prepare`, each through the providers, the
    /// environment's under `block_in_place`), templated hosts or not. Measured on Spin 4.0.2:
    /// a forwarding guest with 16 application variables +0.09 ms per request against one.
    pub unprepared: usize,
}

impl PolicyHooks {
    /// What Spin's first check against the allowed hosts costs an instance, once; returns
    /// how many application variables it resolved.
    fn prepare(&mut self) -> usize {
        let n = std::mem::take(&mut self.unprepared);
        crate::spin_blocking::resolve_app_variables(n);
        n
    }
}

impl WasiHttpHooks for PolicyHooks {
    /// wasmtime's default (1), unless `SPIN_TEST_HOST_BUFFER_CHUNKS` says otherwise:
    /// a knob for measuring what the runtime's buffering does to streaming, not for tests.
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        std::env::var("SPIN_TEST_HOST_BUFFER_CHUNKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<
        dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>>
            + Send,
    > {
        self.prepare();
        self.counters.count(request.uri());
        if !self.policy.allows(request.uri()) {
            // The URL only: headers may carry credentials.
            eprintln!(
                "Outbound network destination not allowed: {}",
                request.uri()
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let pool = self.pool.clone();
        Box::new(async move {
            let response = pool.send(request, options).await?;
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn an_instance_resolves_every_application_variable_once() {
        let mut hooks = PolicyHooks {
            policy: Arc::new(OutboundPolicy::deny_all()),
            counters: Arc::default(),
            pool: Arc::default(),
            unprepared: 16,
        };
        assert_eq!(hooks.prepare(), 16);
        assert_eq!(hooks.prepare(), 0);
    }

    fn allows(entries: &[&str], url: &str) -> bool {
        OutboundPolicy::parse(entries)
            .unwrap()
            .allows(&url.parse().unwrap())
    }

    #[test]
    fn default_ports() {
        assert!(allows(&["https://a.example"], "https://a.example/x"));
        assert!(allows(&["https://a.example"], "https://a.example:443/x"));
        assert!(!allows(&["https://a.example"], "https://a.example:8443/x"));
        assert!(!allows(&["https://a.example"], "http://a.example/x"));
        assert!(allows(&["http://a.example"], "http://a.example:80/"));
        assert!(allows(&["https://a.example/"], "https://a.example/"));
    }

    #[test]
    fn explicit_and_wildcard_ports() {
        assert!(allows(&["http://127.0.0.1:8080"], "http://127.0.0.1:8080/"));
        assert!(!allows(
            &["http://127.0.0.1:8080"],
            "http://127.0.0.1:8081/"
        ));
        assert!(allows(&["http://127.0.0.1:*"], "http://127.0.0.1:9/"));
        assert!(allows(&["http://127.0.0.1:*"], "http://127.0.0.1/"));
    }

    #[test]
    fn hosts_compare_as_text() {
        assert!(!allows(&["http://localhost:*"], "http://127.0.0.1:80/"));
        assert!(allows(&["http://localhost:*"], "http://LOCALHOST:80/"));
        assert!(allows(&["http://[::1]:8080"], "http://[::1]:8080/"));
    }

    #[test]
    fn wildcard_hosts_and_schemes() {
        assert!(allows(&["*://*:*"], "http://anything:1/"));
        assert!(allows(
            &["https://*.example.com"],
            "https://a.b.example.com/"
        ));
        assert!(!allows(&["https://*.example.com"], "https://example.com/"));
        assert!(!allows(
            &["https://*.example.com"],
            "https://badexample.com/"
        ));
        assert!(allows(&["*://a.example:443"], "https://a.example/"));
        assert!(allows(&["https://*"], "https://x.y/"));
    }

    #[test]
    fn errors_never_show_userinfo() {
        let e = OutboundPolicy::parse(&["https://robot:TOKEN@ghcr.io"]).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            !text.contains("TOKEN") && text.contains("***@ghcr.io"),
            "{text}"
        );
    }

    #[test]
    fn empty_and_malformed_entries() {
        for bad in [
            "",
            "  ",
            "a.example",
            "https://a.example/path",
            "https://",
            "https://a.example:nope",
            "*://a.example",
            "https://a*.example",
        ] {
            assert!(OutboundPolicy::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
