//! Configuration from Spin variables, validated once per request before anything is sent.
//!
//! Errors name the variable (and the route) and what is wrong, never a value: a value may hold
//! a credential, and configuration errors reach every client and the log.
//!
//! Few variables are read, since each read costs the host memory (Spin's RSS grows with the
//! reads per request) and time (Spin 4.0.2 resolves a read's template anew, each application
//! variable it names under `block_in_place`: 0.13 ms for one, 0.30 for eleven, more than the
//! proxy's own work on an answer from the store). spin.toml bundles the application variables into component
//! variables (see [`BUNDLES`]): everything a request needs in `config`, so a request costs one
//! read; `auth` only where a route serves the proxy's users.

pub use crate::config_error::ConfigError;
use crate::origin::Origin;
use crate::routes::{self, BlobRedirect, Defaults, Route, RouteAccess, Routes};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub routes: Routes,
    pub public_url: Option<Origin>,
    /// Take the public origin from `X-Forwarded-Proto`/`X-Forwarded-Host`: only behind a
    /// front proxy that overwrites them, since otherwise every client picks its own realm.
    pub trust_forwarded: bool,
    /// Where `/` sends a person; a short page when unset.
    pub home: Option<url::Url>,
    /// What signs the proxy's own tokens, when a route serves the proxy's users.
    pub tokens: Option<TokenKeys>,
}

/// The `token_secret` (and, during a rotation, `token_secret_previous`) that sign and check
/// the tokens the proxy issues its users, and how long those last.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKeys {
    /// The current secret first: it signs; both check.
    pub secrets: Vec<Vec<u8>>,
    pub lifetime: u64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKeys(***, lifetime {})", self.lifetime)
    }
}

/// Shortest `token_secret`: 32 bytes (`openssl rand -hex 32` gives 64 characters).
const MIN_TOKEN_SECRET: usize = 32;

const DOCKER_HUB_HOSTS: [&str; 4] = [
    "registry-1.docker.io",
    "index.docker.io",
    "registry.hub.docker.com",
    "docker.io",
];

/// How long the upstream may take, and a client's body or reading, unless a route says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);
/// Seconds a tag is taken to point where it pointed, unless a route says otherwise.
pub const DEFAULT_TAG_TTL: u64 = 60;

fn error(name: &str, what: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("variable {name}: {what}"))
}

/// Component variables that each carry several application variables, one `name=value` line
/// apiece in this order, composed by spin.toml's templates (`config = "public_url={{ public_url
/// }}\n..."`). The last of a bundle takes the rest of it, line breaks and all: a route table
/// may span lines. A spin.toml without them (another's) gets one read per variable instead.
pub const BUNDLES: [(&str, &[&str]); 2] = [
    (
        "config",
        &[
            "public_url",
            "trust_forwarded",
            "home",
            "upstream",
            "upstream_auth",
            "upstream_cdn",
            "repository_prefix",
            "blob_redirect",
            "upstream_timeout",
            "tag_ttl",
            "routes",
        ],
    ),
    (
        "auth",
        &["token_secret", "token_secret_previous", "token_lifetime"],
    ),
];

/// What this project's spin.toml bundled before `config` held everything: told apart, so that
/// such a spin.toml gets an error that says what to change, not "upstream is empty".
const FORMER_BUNDLE: &str = "site";

/// The values of one bundle, in its order.
fn unbundle(bundle: &str, names: &[&str], text: &str) -> Result<Vec<String>, ConfigError> {
    let mut rest = text;
    let mut values = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        // A value's trailing line break (a Kubernetes Secret, a file) is whitespace, as when
        // the value is read alone; a line with text still has to name its variable.
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let line = if i + 1 == names.len() {
            std::mem::take(&mut rest)
        } else {
            let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
            rest = after;
            line
        };
        match line.strip_prefix(name).and_then(|l| l.strip_prefix('=')) {
            Some(value) => values.push(value.trim().to_string()),
            None => break,
        }
    }
    // A value holding a line break shifts the lines; spin.toml's template is the other cause.
    if values.len() == names.len() {
        return Ok(values);
    }
    Err(error(
        bundle,
        format!(
            "expected the lines {}=…, each value on one line",
            names.join("=…, ")
        ),
    ))
}

/// A bundle read: its name and values, or `None` when the component has no such variable.
type BundleRead = (&'static str, Option<Vec<String>>);

/// Variables by application name, read through their bundle when the component has one.
struct Variables<F: Fn(&str) -> Option<String>> {
    get: F,
    bundles: std::cell::RefCell<Vec<BundleRead>>,
}

impl<F: Fn(&str) -> Option<String>> Variables<F> {
    fn new(get: F) -> Self {
        Self {
            get,
            bundles: Default::default(),
        }
    }

    /// A variable's trimmed value; empty when unset.
    fn get(&self, name: &str) -> Result<String, ConfigError> {
        let Some((bundle, names, at)) = BUNDLES.iter().find_map(|(bundle, names)| {
            let at = names.iter().position(|n| *n == name)?;
            Some((*bundle, *names, at))
        }) else {
            return Ok(self.read(name));
        };
        let mut bundles = self.bundles.borrow_mut();
        let i = match bundles.iter().position(|(b, _)| *b == bundle) {
            Some(i) => i,
            None => {
                let values = match (self.get)(bundle) {
                    Some(text) => Some(unbundle(bundle, names, &text)?),
                    None if bundle == BUNDLES[0].0 && (self.get)(FORMER_BUNDLE).is_some() => {
                        return Err(error(
                            bundle,
                            "is missing from spin.toml, which bundles the variables as an \
                             older version did: copy [component.registry-proxy.variables] from \
                             this version's spin.toml",
                        ));
                    }
                    None => None,
                };
                bundles.push((bundle, values));
                bundles.len() - 1
            }
        };
        Ok(match &bundles[i].1 {
            Some(values) => values.get(at).cloned().unwrap_or_default(),
            None => self.read(name),
        })
    }

    /// Whether `name` came in a bundle (read before).
    fn bundled(&self, name: &str) -> bool {
        let bundles = self.bundles.borrow();
        BUNDLES.iter().any(|(bundle, names)| {
            names.contains(&name)
                && bundles
                    .iter()
                    .any(|(b, values)| b == bundle && values.is_some())
        })
    }

    fn read(&self, name: &str) -> String {
        (self.get)(name)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    }

    fn origin(&self, name: &str, pattern: bool) -> Result<Option<Origin>, ConfigError> {
        let value = self.get(name)?;
        if value.is_empty() {
            return Ok(None);
        }
        let parsed = if pattern {
            Origin::parse_pattern(&value)
        } else {
            Origin::parse(&value)
        };
        parsed.map(Some).map_err(|e| error(name, e))
    }
}

/// A variable this project's spin.toml (the one that bundles them) also lists in
/// `allowed_outbound_hosts`, where Spin takes an empty entry for an error that denies every
/// outbound request, the upstream's too. Read one by one (another spin.toml), empty is none.
fn listed<F: Fn(&str) -> Option<String>>(
    v: &Variables<F>,
    name: &str,
    pattern: bool,
) -> Result<Option<Origin>, ConfigError> {
    let origin = v.origin(name, pattern)?;
    if origin.is_none() && v.bundled(name) {
        return Err(error(
            name,
            "is empty, but spin.toml lists it in allowed_outbound_hosts, where Spin then denies \
             every request: set it to the upstream where the registry has no other",
        ));
    }
    Ok(origin)
}

/// The one route the single-upstream variables describe: every host, every name.
fn single_route<F: Fn(&str) -> Option<String>>(v: &Variables<F>) -> Result<Route, ConfigError> {
    let upstream = v
        .origin("upstream", false)?
        .ok_or_else(|| error("upstream", "is empty"))?;
    let blob_redirect = routes::parse_blob_redirect(&v.get("blob_redirect")?)
        .ok_or_else(|| error("blob_redirect", "expected \"pass\" or \"follow\""))?;
    let prefix = v.get("repository_prefix")?.trim_matches('/').to_string();
    if !prefix.is_empty() && !crate::endpoint::valid_name(&prefix) {
        return Err(error("repository_prefix", "not a repository name"));
    }
    let timeout = match v.get("upstream_timeout")?.as_str() {
        "" => DEFAULT_TIMEOUT,
        t => t
            .parse::<f64>()
            .ok()
            .and_then(routes::parse_timeout)
            .ok_or_else(|| error("upstream_timeout", "expected seconds (0.1 to 3600)"))?,
    };
    let tag_ttl = match v.get("tag_ttl")?.as_str() {
        "" => DEFAULT_TAG_TTL,
        t => t
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= routes::MAX_TAG_TTL)
            .ok_or_else(|| error("tag_ttl", "expected seconds (0 to 86400)"))?,
    };
    let docker_hub = DOCKER_HUB_HOSTS.contains(&upstream.host.as_str());
    let mut cdn: Vec<Origin> = listed(v, "upstream_cdn", true)?.into_iter().collect();
    if docker_hub {
        // Docker Hub redirects to more storage than one variable names (spin.toml allows it).
        let preset = crate::presets::find("dockerhub").map_or(&[][..], |p| p.cdn);
        for origin in preset.iter().filter_map(|c| Origin::parse_pattern(c).ok()) {
            if !cdn.contains(&origin) {
                cdn.push(origin);
            }
        }
    }
    // containerd names the registry it mirrors in `ns`: this route is that registry.
    let registry = if docker_hub {
        "docker.io".to_string()
    } else {
        upstream.authority()
    };
    Ok(Route {
        name: "default".into(),
        hosts: Vec::new(),
        path: String::new(),
        mirrors: vec![registry],
        ns_only: false,
        auth: listed(v, "upstream_auth", false)?.into_iter().collect(),
        cdn,
        upstream,
        prefix,
        library: docker_hub,
        catalog: !docker_hub,
        blob_redirect,
        timeout,
        tag_ttl,
        credentials: None,
        access: routes::RouteAccess::Upstream,
        allow: Vec::new(),
        deny: Vec::new(),
        logins: routes::Logins::Unshared,
        push: false,
        delete: false,
        cors: Vec::new(),
    })
}

impl Config {
    /// Reads the variables through `get`, which returns `None` for an unset variable.
    pub fn from_variables(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Variables::new(get);
        let table = v.get("routes")?;
        let routes = if table.is_empty() {
            Routes(vec![single_route(&v)?])
        } else {
            // Still spin.toml's allowed_outbound_hosts, where an empty entry denies every
            // request: the route table's upstreams too.
            for (name, pattern) in [
                ("upstream", false),
                ("upstream_auth", false),
                ("upstream_cdn", true),
            ] {
                listed(&v, name, pattern)?;
            }
            let defaults = Defaults {
                blob_redirect: BlobRedirect::Pass,
                timeout: DEFAULT_TIMEOUT,
                tag_ttl: DEFAULT_TAG_TTL,
            };
            routes::parse(&table, defaults)?
        };
        let trust_forwarded = match v.get("trust_forwarded")?.as_str() {
            "" | "false" => false,
            "true" => true,
            _ => return Err(error("trust_forwarded", "expected \"true\" or \"false\"")),
        };
        let home = match v.get("home")?.as_str() {
            "" => None,
            h => {
                let url = url::Url::parse(h)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.username().is_empty())
                    .filter(|u| u.password().is_none());
                Some(url.ok_or_else(|| error("home", "expected an http(s) URL without user"))?)
            }
        };
        let public_url = v.origin("public_url", false)?;
        if let Some(public) = &public_url {
            // Every request would be taken for one at `public_url`'s host: routed as such, and
            // told to fetch its token there.
            if let Some(r) = routes
                .0
                .iter()
                .find(|r| r.hosts.iter().any(|h| *h != public.host))
            {
                return Err(error(
                    "public_url",
                    format!(
                        "names one host, but route {:?} serves another: leave public_url empty \
                         so each request's Host makes its realm (a DNS name on the default port \
                         gets https), or set trust_forwarded behind a front proxy",
                        r.name
                    ),
                ));
            }
        }
        let tokens = if routes.0.iter().any(|r| r.access == RouteAccess::Users) {
            Some(token_keys(&v)?)
        } else {
            None
        };
        Ok(Self {
            routes,
            public_url,
            trust_forwarded,
            home,
            tokens,
        })
    }
}

/// Read only where a route serves the proxy's users: other deployments pay no read for them.
fn token_keys<F: Fn(&str) -> Option<String>>(v: &Variables<F>) -> Result<TokenKeys, ConfigError> {
    let mut secrets = Vec::new();
    for name in ["token_secret", "token_secret_previous"] {
        let secret = v.get(name)?;
        if secret.is_empty() && name == "token_secret_previous" {
            continue;
        }
        if secret.len() < MIN_TOKEN_SECRET {
            return Err(error(
                name,
                format!(
                    "a route serves the proxy's users, whose tokens it signs: set at least \
                     {MIN_TOKEN_SECRET} random characters (openssl rand -hex 32)"
                ),
            ));
        }
        secrets.push(secret.into_bytes());
    }
    let lifetime = match v.get("token_lifetime")?.as_str() {
        "" => crate::proxy_token::DEFAULT_LIFETIME,
        t => t
            .parse::<u64>()
            .ok()
            .filter(|s| (30..=86_400).contains(s))
            .ok_or_else(|| error("token_lifetime", "expected seconds (30 to 86400)"))?,
    };
    Ok(TokenKeys { secrets, lifetime })
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

    fn single(pairs: &[(&str, &str)]) -> Route {
        config(pairs).unwrap().routes.0.remove(0)
    }

    #[test]
    fn public_url_and_routes_for_other_hosts_are_refused() {
        let table = r#"[{"name": "a", "host": "images.example.com", "upstream": "https://a.example"},
                        {"name": "b", "host": "team.example.com", "upstream": "https://b.example"}]"#;
        let e = config(&[
            ("routes", table),
            ("public_url", "https://images.example.com"),
        ])
        .unwrap_err();
        assert!(e.0.contains("route \"b\" serves another"), "{e}");
        assert!(config(&[("routes", table)]).is_ok());
        let one = r#"[{"name": "a", "host": "images.example.com", "upstream": "https://a.example"},
                      {"name": "b", "path": "b", "upstream": "https://b.example"}]"#;
        assert!(config(&[
            ("routes", one),
            ("public_url", "https://images.example.com")
        ])
        .is_ok());
        let wild = r#"[{"name": "a", "host": "*.example.com", "upstream": "https://a.example"}]"#;
        assert!(config(&[
            ("routes", wild),
            ("public_url", "https://images.example.com")
        ])
        .is_err());
    }

    #[test]
    fn spin_toml_defaults_give_docker_hub() {
        let r = single(&[
            ("upstream", "https://registry-1.docker.io"),
            ("upstream_auth", "https://auth.docker.io"),
            ("upstream_cdn", "https://production.cloudflare.docker.com"),
            ("blob_redirect", "pass"),
            ("trust_forwarded", "false"),
            ("upstream_timeout", "25"),
        ]);
        assert!(r.library && !r.catalog);
        assert_eq!(r.mirrors, ["docker.io"]);
        assert_eq!(r.blob_redirect, BlobRedirect::Pass);
        assert_eq!(r.timeout, Duration::from_secs(25));
        assert!(r.allows_realm(&Origin::parse("https://auth.docker.io").unwrap()));
        assert!(!r.allows_realm(&Origin::parse("https://evil.example").unwrap()));
        assert!(!r.allows_realm(&Origin::parse("http://auth.docker.io").unwrap()));
        assert!(
            !r.allows_realm(&Origin::parse("https://production.cloudflare.docker.com").unwrap())
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
            (vec![("routes", "[{\"upstream\": \"nope\"}]")], "routes"),
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
        let r = single(&[
            ("upstream", "http://127.0.0.1:5000"),
            ("upstream_cdn", "https://*.cdn.example"),
        ]);
        assert!(r.allows_cdn(&Origin::parse("https://a.cdn.example").unwrap()));
        assert!(!r.allows_cdn(&Origin::parse("https://cdn.example.evil").unwrap()));
        assert!(r.allows_destination(&Origin::parse("http://127.0.0.1:5000").unwrap()));
        assert_eq!(r.mirrors, ["127.0.0.1:5000"]);
    }

    #[test]
    fn prefix_slashes_are_trimmed() {
        let r = single(&[
            ("upstream", "http://127.0.0.1:5000"),
            ("repository_prefix", "/team/app/"),
        ]);
        assert_eq!(r.prefix, "team/app");
        assert!(!r.library);
    }

    /// Reads made for `vars` (application name → value) through spin.toml's bundles, or one
    /// by one when `bundled` is false.
    fn reads(vars: &[(&str, &str)], bundled: bool) -> (Result<Config, ConfigError>, Vec<String>) {
        let read = std::cell::RefCell::new(Vec::new());
        let value = |n: &str| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        let c = Config::from_variables(|k| {
            read.borrow_mut().push(k.to_string());
            match BUNDLES.iter().find(|(b, _)| *b == k) {
                Some((_, names)) if bundled => Some(
                    names
                        .iter()
                        .map(|n| format!("{n}={}", value(n).unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                Some(_) => None,
                None => value(k),
            }
        });
        (c, read.into_inner())
    }

    #[test]
    fn a_request_reads_one_variable_with_a_route_table_or_without() {
        let table = r#"[{"preset": "ghcr",
            "name": "multi-line"}]"#;
        // spin.toml's defaults for the three it lists in allowed_outbound_hosts.
        let listed = [
            ("upstream", "https://registry-1.docker.io"),
            ("upstream_auth", "https://auth.docker.io"),
            ("upstream_cdn", "https://production.cloudflare.docker.com"),
        ];
        let (c, read) = reads(&[("routes", table), listed[0], listed[1], listed[2]], true);
        assert_eq!(
            c.unwrap().routes.0[0].upstream.to_string(),
            "https://ghcr.io"
        );
        assert_eq!(read, ["config"]);
        // Empty, one of them denies every request the route table's upstreams need.
        let (c, _) = reads(&[("routes", table), listed[0], listed[1]], true);
        assert!(c.unwrap_err().0.contains("upstream_cdn"));
        let vars = [
            ("upstream", "http://127.0.0.1:5000"),
            ("upstream_auth", "http://127.0.0.1:5000"),
            ("upstream_cdn", "https://*.cdn.example"),
            ("repository_prefix", "/team/"),
            ("tag_ttl", "5"),
            ("public_url", "https://images.example.com"),
            ("trust_forwarded", "true"),
            ("home", "https://example.com/"),
        ];
        let (bundled, read) = reads(&vars, true);
        assert_eq!(read, ["config"]);
        let (one_by_one, read) = reads(&vars, false);
        assert_eq!(read.len(), 13, "{read:?}");
        let bundled = bundled.unwrap();
        assert_eq!(bundled, one_by_one.unwrap());
        assert_eq!(bundled.routes.0[0].prefix, "team");
        assert_eq!(bundled.routes.0[0].tag_ttl, 5);
        assert!(bundled.trust_forwarded && bundled.home.is_some());
    }

    /// A spin.toml with the bundles of an earlier version (`routes`, `site`, `single`) is told
    /// what to change instead of meeting "upstream is empty".
    #[test]
    fn a_spin_toml_with_the_former_bundles_is_told_what_to_change() {
        let e = Config::from_variables(|k| match k {
            "routes" => Some(String::new()),
            "site" => Some("public_url=\ntrust_forwarded=false\nhome=".into()),
            "single" => Some("upstream=https://ghcr.io".into()),
            _ => None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("variable config: is missing from spin.toml"),
            "{e}"
        );
        assert!(
            e.contains("copy [component.registry-proxy.variables]"),
            "{e}"
        );
    }

    /// spin.toml lists upstream_auth and upstream_cdn in allowed_outbound_hosts, where Spin
    /// takes an empty entry for an error and denies every request: said at once, by name.
    #[test]
    fn spin_toml_s_listed_hosts_are_never_empty() {
        for empty in ["upstream_auth", "upstream_cdn"] {
            let mut vars = vec![
                ("upstream", "https://ghcr.io"),
                ("upstream_auth", "https://ghcr.io"),
                ("upstream_cdn", "https://ghcr.io"),
            ];
            vars.retain(|(k, _)| *k != empty);
            let e = reads(&vars, true).0.unwrap_err().to_string();
            assert!(e.contains(&format!("variable {empty}: is empty")), "{e}");
            // Read one by one (a spin.toml of its own), empty is none.
            assert!(reads(&vars, false).0.is_ok());
        }
    }

    #[test]
    fn a_value_with_a_line_break_cannot_pass_for_another_variable() {
        for (k, v) in [
            (
                "home",
                "https://example.com/\npublic_url=https://evil.example",
            ),
            ("public_url", "https://a.example\ntrust_forwarded=true"),
        ] {
            let single = [("upstream", "http://r"), ("upstream_auth", "http://r")];
            let e = reads(
                &[single[0], single[1], ("upstream_cdn", "http://r"), (k, v)],
                true,
            )
            .0
            .unwrap_err();
            assert!(
                e.to_string()
                    .contains("variable config: expected the lines"),
                "{e}"
            );
            assert!(!e.to_string().contains("evil") && !e.to_string().contains("a.example"));
        }
        let e = Config::from_variables(|k| (k == "config").then(|| "upstream=http://r".into()))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid configuration: variable config:"),
            "{e}"
        );
    }

    #[test]
    fn spin_toml_composes_the_bundles_this_code_reads() {
        let manifest = include_str!("../spin.toml");
        for (bundle, names) in BUNDLES {
            let lines: Vec<String> = names.iter().map(|n| format!("{n}={{{{ {n} }}}}")).collect();
            let expected = format!("{bundle} = \"{}\"", lines.join("\\n"));
            assert!(
                manifest.lines().any(|l| l == expected),
                "spin.toml lacks {expected}"
            );
        }
    }

    /// A value's trailing line break (a Kubernetes Secret, a file read into
    /// SPIN_VARIABLE_PUBLIC_URL) is whitespace in spin.toml's bundles too, as when the value is
    /// read alone (it shifted the lines: every request got a 500).
    #[test]
    fn a_trailing_line_break_is_whitespace_in_a_bundle_too() {
        let one_by_one = Config::from_variables(|k| match k {
            "upstream" => Some("https://ghcr.io".into()),
            "public_url" => Some("https://images.example.com\n".into()),
            _ => None,
        });
        assert!(one_by_one.is_ok());
        let bundled = Config::from_variables(|k| match k {
            "config" => Some(
                "public_url=https://images.example.com\n\ntrust_forwarded=false\nhome=\n\
                 upstream=https://ghcr.io\nupstream_auth=https://ghcr.io\n\
                 upstream_cdn=https://ghcr.io\nrepository_prefix=\n\
                 blob_redirect=\nupstream_timeout=\ntag_ttl=\nroutes=\n"
                    .into(),
            ),
            _ => None,
        });
        assert_eq!(
            bundled.map(|c| c.public_url.map(|o| o.to_string())),
            Ok(Some("https://images.example.com".into()))
        );
    }
}
