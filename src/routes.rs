//! The route table: which upstream registry serves a request. A route matches by `Host`
//! (exact, or `*.example.com`), by the leading path segments of repository names
//! (`ghcr/owner/app`), or both; a route that mirrors registries for containerd also matches
//! its `?ns=` values. The table comes from the `routes` variable (JSON); without it, the
//! single-upstream variables make one route that serves every host.

use crate::config_error::ConfigError;
use crate::endpoint::valid_name;
use crate::error::OciError;
use crate::names::NameMap;
use crate::origin::Origin;
use crate::presets;
use crate::repository_pattern::Pattern;
use http::StatusCode;
use serde::Deserialize;
use std::time::Duration;

/// What the component does when the upstream redirects a blob to another host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobRedirect {
    /// Hand the redirect to the client: blob bytes bypass the component.
    Pass,
    /// Fetch the redirect target and stream it, hiding the other host.
    Follow,
}

/// The proxy's own credentials for an upstream.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Sent to the token realm (or, for a Basic upstream, to the registry).
    Basic { username: String, password: String },
    /// A token the registry takes as it is: `Authorization: Bearer`.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Names the route in errors and logs.
    pub name: String,
    /// Host names (`*.domain` allowed) it serves; empty: any.
    pub hosts: Vec<String>,
    /// Leading repository path segments it owns (`ghcr`); empty: none.
    pub path: String,
    /// Registries it mirrors for containerd (`?ns=docker.io`).
    pub mirrors: Vec<String>,
    /// Selected only by `ns` (it names mirrors, and no host or path).
    pub ns_only: bool,
    pub upstream: Origin,
    /// Token realm origins, where clients' credentials may go (besides `upstream`).
    pub auth: Vec<Origin>,
    /// Origin patterns redirects may be followed to, never with credentials.
    pub cdn: Vec<Origin>,
    pub prefix: String,
    /// Docker Hub's `library/` rule.
    pub library: bool,
    pub catalog: bool,
    pub blob_redirect: BlobRedirect,
    pub timeout: Duration,
    /// Seconds a tag is taken to point where it pointed (0: ask the upstream every time).
    pub tag_ttl: u64,
    pub credentials: Option<Credentials>,
    /// Who may use it.
    pub access: RouteAccess,
    /// Repositories (client names) it serves to anyone allowed in: all when empty.
    pub allow: Vec<Pattern>,
    /// Repositories it serves to no one, whatever `allow` and a user's grants say.
    pub deny: Vec<Pattern>,
    /// Whether it passes a client's credentials upstream (see `Routes::passes_logins`).
    pub logins: Logins,
    /// Pushes go upstream (off unless the route says so).
    pub push: bool,
    /// Manifest and blob DELETEs go upstream (off unless the route says so).
    pub delete: bool,
    /// Origins of web pages that may read (and, with `push`, write) through the route: CORS.
    pub cors: Vec<Origin>,
}

/// A route's `access`: who may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAccess {
    /// The client's credentials go to the upstream, which decides (the default).
    Upstream,
    /// Anyone: with the route's own account upstream, if it has one.
    Public,
    /// Only the proxy's own users (the `users` variable), with tokens the proxy signs; the
    /// upstream sees the route's own account, or no one.
    Users,
}

/// A route's `client_credentials`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logins {
    /// `false`, or the route has credentials of its own.
    Never,
    /// Unless another route on the host takes them to another registry.
    Unshared,
    /// `true`: this route's registry is the one a login for its hosts is for.
    Always,
}

impl Route {
    /// The route's own account, as a digest of all that makes it (upstream, realms, the
    /// credentials whole): what the proxy keeps of its work is bound to it, so routes sharing
    /// a username, or a route whose password changed, never share what they fetched. `None`
    /// for a route without an account.
    pub fn account(&self) -> Option<String> {
        let (kind, user, secret) = match self.credentials.as_ref()? {
            Credentials::Basic { username, password } => ("basic", username.as_str(), password),
            Credentials::Token(t) => ("token", "", t),
        };
        let upstream = self.upstream.to_string();
        let auth: Vec<String> = self.auth.iter().map(Origin::to_string).collect();
        let mut parts = vec!["account", upstream.as_str(), kind, user, secret.as_str()];
        parts.extend(auth.iter().map(String::as_str));
        Some(crate::digest::of_parts(&parts))
    }

    /// How its client names map upstream. containerd's mirror requests (`?ns=`, with the
    /// `hosts.toml` the README shows) carry the mirrored registry's own names: no path.
    pub fn names(&self, mirroring: bool) -> NameMap {
        let path = if mirroring { "" } else { self.path.as_str() };
        NameMap::new(path, &self.prefix, self.library)
    }

    /// Whether the route serves repository `name` (client names) to anyone at all: its
    /// `allow` list names it (or there is none), and its `deny` list does not (a deny wins).
    pub fn serves(&self, name: &str) -> bool {
        let allowed = self.allow.is_empty() || crate::repository_pattern::any(&self.allow, name);
        allowed && !crate::repository_pattern::any(&self.deny, name)
    }

    /// Hosts the token endpoint may send clients' credentials to: the upstream and its realm.
    pub fn allows_realm(&self, realm: &Origin) -> bool {
        *realm == self.upstream || self.auth.contains(realm)
    }

    /// Where clients' credentials may go: the same for both routes.
    fn same_destination(&self, other: &Route) -> bool {
        self.upstream == other.upstream && self.auth == other.auth
    }

    /// Hosts a redirect may be followed to, without credentials.
    pub fn allows_cdn(&self, target: &Origin) -> bool {
        self.cdn.iter().any(|c| c.matches(target))
    }

    /// Every host the component may send a request to for this route.
    pub fn allows_destination(&self, target: &Origin) -> bool {
        self.allows_realm(target) || self.allows_cdn(target)
    }

    /// How specifically the route names `host`, by its best pattern: exactly, then by the
    /// longest `*.` suffix, then not at all (a route without hosts); `None`: not served.
    fn host_rank(&self, host: &str) -> Option<(u8, usize)> {
        if self.hosts.is_empty() {
            return Some((0, 0));
        }
        let rank = |h: &String| match h.strip_prefix('*') {
            Some(suffix) => {
                (host.ends_with(suffix) && host.len() > suffix.len()).then_some((1, suffix.len()))
            }
            None => (h == host).then_some((2, 0)),
        };
        self.hosts.iter().filter_map(rank).max()
    }

    fn owns(&self, name: &str) -> bool {
        self.path.is_empty()
            || name
                .strip_prefix(self.path.as_str())
                .is_some_and(|r| r.starts_with('/'))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes(pub Vec<Route>);

fn not_found(message: String) -> OciError {
    OciError::new(
        StatusCode::NOT_FOUND,
        crate::error::ErrorCode::NameUnknown,
        message,
    )
}

impl Routes {
    /// The route for a request to `host` (no port) about repository `name` (client names;
    /// `None` for `/v2/` and the catalog), mirroring `ns` when containerd names a registry.
    pub fn select(
        &self,
        host: &str,
        name: Option<&str>,
        ns: Option<&str>,
    ) -> Result<&Route, OciError> {
        let serving: Vec<&Route> = self
            .0
            .iter()
            .filter(|r| r.host_rank(host).is_some())
            .collect();
        if serving.is_empty() {
            return Err(OciError::no_route("no registry is served at this host"));
        }
        if let Some(ns) = ns {
            return serving
                .into_iter()
                .filter(|r| r.mirrors.iter().any(|m| m.eq_ignore_ascii_case(ns)))
                .max_by_key(|r| r.host_rank(host))
                .ok_or_else(|| not_found("this proxy mirrors no registry of that name".into()));
        }
        let best = serving
            .into_iter()
            .filter(|r| !r.ns_only)
            .filter(|r| match name {
                Some(n) => r.owns(n),
                None => r.path.is_empty(),
            })
            .max_by_key(|r| (r.host_rank(host), r.path.len()));
        best.ok_or_else(|| match name {
            Some(n) => not_found(format!("no route serves repository {n}")),
            None => OciError::no_route("no single registry is served at this host"),
        })
    }

    /// Whether `route`, serving a request for `host`, passes the client's credentials
    /// upstream. A client keeps one login per host: where another route on the host would
    /// take it to another registry, each would get the other's, so neither does (clients are
    /// anonymous there), unless one says `"client_credentials": true`.
    pub fn passes_logins(&self, route: &Route, host: &str) -> bool {
        match route.logins {
            Logins::Never => false,
            Logins::Always => true,
            Logins::Unshared => self.login_rivals(route, host).is_empty(),
        }
    }

    /// The routes on `host` that would take a login to another registry than `route`'s, or
    /// for the proxy's own users (a user's password must never reach an upstream).
    pub fn login_rivals(&self, route: &Route, host: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|r| r.name != route.name && r.host_rank(host).is_some())
            .filter(|r| {
                r.access == RouteAccess::Users
                    || (r.logins != Logins::Never && !r.same_destination(route))
            })
            .map(|r| r.name.as_str())
            .collect()
    }

    /// Whether a route for the proxy's own users serves `host`: its logins are theirs.
    pub fn has_users(&self, host: &str) -> bool {
        self.0
            .iter()
            .any(|r| r.access == RouteAccess::Users && r.host_rank(host).is_some())
    }

    /// The routes that serve `host` (by host; mirrors aside).
    pub fn serving<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Route> + 'a {
        self.0
            .iter()
            .filter(move |r| !r.ns_only && r.host_rank(host).is_some())
    }

    /// Whether several routes serve `host` (by path, or a host route beside path routes).
    pub fn shared(&self, host: &str) -> bool {
        let serving = self
            .0
            .iter()
            .filter(|r| !r.ns_only && r.host_rank(host).is_some());
        serving.count() > 1
    }

    /// Whether `host` is served only by path routes: `/v2/` is then the proxy's to answer.
    pub fn paths_only(&self, host: &str) -> bool {
        let serving: Vec<&Route> = self
            .0
            .iter()
            .filter(|r| r.host_rank(host).is_some() && !r.ns_only)
            .collect();
        !serving.is_empty() && serving.iter().all(|r| !r.path.is_empty())
    }
}

// ------------------------------------------------------------------------------------------
// The `routes` variable

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    host: Option<OneOrMany>,
    path: Option<String>,
    mirrors: Option<Vec<String>>,
    preset: Option<String>,
    upstream: Option<String>,
    auth: Option<OneOrMany>,
    cdn: Option<OneOrMany>,
    prefix: Option<String>,
    library: Option<bool>,
    catalog: Option<bool>,
    blob_redirect: Option<String>,
    timeout: Option<f64>,
    tag_ttl: Option<u64>,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
    public: Option<bool>,
    access: Option<String>,
    allow: Option<Vec<Pattern>>,
    deny: Option<Vec<Pattern>>,
    client_credentials: Option<bool>,
    push: Option<bool>,
    delete: Option<bool>,
    cors: Option<OneOrMany>,
}

/// What every route of the table shares with the single-upstream variables.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub blob_redirect: BlobRedirect,
    pub timeout: Duration,
    pub tag_ttl: u64,
}

/// A host name or `*.domain`: what a `Host` header is compared with.
fn host_pattern(h: &str) -> Option<String> {
    let h = h.trim().to_ascii_lowercase();
    Origin::parse_pattern(&format!("http://{h}"))
        .ok()
        .filter(|o| o.port == 80 && !h.contains(':'))
        .map(|o| o.host)
}

/// A registry as containerd names it in `ns`: `docker.io`, `ghcr.io`, `host:port`.
pub fn valid_registry(name: &str) -> bool {
    Origin::parse(&format!("http://{name}")).is_ok()
}

pub fn parse_blob_redirect(value: &str) -> Option<BlobRedirect> {
    match value {
        "" | "pass" => Some(BlobRedirect::Pass),
        "follow" => Some(BlobRedirect::Follow),
        _ => None,
    }
}

/// Seconds to wait for an upstream, from a tenth of a second (less waits for no answer: every
/// request a 504) to an hour.
pub fn parse_timeout(seconds: f64) -> Option<Duration> {
    (0.1..=3600.0)
        .contains(&seconds)
        .then(|| Duration::from_secs_f64(seconds))
}

/// Errors of one route's fields: they name the route and the field, never a value.
struct Fields {
    label: String,
}

impl Fields {
    /// A route's fields, labelled by its name, or by its place in the table.
    fn of_route(name: Option<&str>, index: usize) -> Result<Self, ConfigError> {
        if let Some(n) = name {
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(ConfigError(format!(
                    "variable routes: route {}: name: letters, digits, '-', '_' and '.' only",
                    index + 1
                )));
            }
        }
        Ok(Self {
            label: match name {
                Some(n) => format!("route {n:?}"),
                None => format!("route {}", index + 1),
            },
        })
    }

    fn err(&self, field: &str, what: &str) -> ConfigError {
        ConfigError(format!("variable routes: {}: {field}: {what}", self.label))
    }

    fn origin(&self, field: &str, text: &str, pattern: bool) -> Result<Origin, ConfigError> {
        let parsed = if pattern {
            Origin::parse_pattern(text)
        } else {
            Origin::parse(text)
        };
        parsed.map_err(|e| self.err(field, &e.to_string()))
    }

    /// A field's origins, or the preset's.
    fn origins(
        &self,
        field: &str,
        given: Option<OneOrMany>,
        preset: &[&str],
        pattern: bool,
    ) -> Result<Vec<Origin>, ConfigError> {
        let texts = match given {
            Some(g) => g.into_vec(),
            None => preset.iter().map(|s| s.to_string()).collect(),
        };
        texts
            .iter()
            .map(|t| self.origin(field, t, pattern))
            .collect()
    }
}

fn build(raw: RawRoute, index: usize, defaults: Defaults) -> Result<Route, ConfigError> {
    let f = Fields::of_route(raw.name.as_deref(), index)?;
    let preset = match &raw.preset {
        Some(p) => Some(presets::find(p).ok_or_else(|| f.err("preset", "unknown preset"))?),
        None => None,
    };
    let upstream_text = raw
        .upstream
        .clone()
        .or_else(|| {
            preset
                .map(|p| p.upstream.to_string())
                .filter(|u| !u.is_empty())
        })
        .ok_or_else(|| f.err("upstream", "missing (give it, or a preset that has one)"))?;
    let upstream = f.origin("upstream", &upstream_text, false)?;
    let auth = f.origins("auth", raw.auth, preset.map_or(&[], |p| p.auth), false)?;
    let cdn = f.origins("cdn", raw.cdn, preset.map_or(&[], |p| p.cdn), true)?;
    let served = Served::parse(&f, raw.host, raw.path, raw.mirrors)?;
    let prefix = raw.prefix.unwrap_or_default().trim_matches('/').to_string();
    if !prefix.is_empty() && !valid_name(&prefix) {
        return Err(f.err("prefix", "not a repository name"));
    }
    let blob_redirect = match raw.blob_redirect.as_deref() {
        None => defaults.blob_redirect,
        Some(b) => parse_blob_redirect(b)
            .ok_or_else(|| f.err("blob_redirect", "expected \"pass\" or \"follow\""))?,
    };
    let timeout = match raw.timeout {
        None => defaults.timeout,
        Some(t) => {
            parse_timeout(t).ok_or_else(|| f.err("timeout", "expected seconds (0.1 to 3600)"))?
        }
    };
    let tag_ttl = match raw.tag_ttl {
        None => defaults.tag_ttl,
        Some(t) if t <= MAX_TAG_TTL => t,
        Some(_) => return Err(f.err("tag_ttl", "expected seconds (0 to 86400)")),
    };
    let credentials = credentials(&f, raw.username, raw.password, raw.token)?;
    let access = access(&f, raw.access.as_deref(), raw.public, credentials.is_some())?;
    let logins = logins(&f, access, raw.client_credentials, credentials.is_some())?;
    let (push, delete) = writes(&f, access, raw.push, raw.delete)?;
    let allow = patterns(&f, "allow", raw.allow, &served.path)?;
    let deny = patterns(&f, "deny", raw.deny, &served.path)?;
    Ok(Route {
        name: raw.name.unwrap_or_else(|| format!("{}", index + 1)),
        hosts: served.hosts,
        path: served.path,
        mirrors: served.mirrors,
        ns_only: served.ns_only,
        upstream,
        auth,
        cdn,
        prefix,
        library: raw
            .library
            .unwrap_or_else(|| preset.is_some_and(|p| p.library)),
        catalog: raw
            .catalog
            .unwrap_or_else(|| preset.is_none_or(|p| p.catalog)),
        blob_redirect,
        timeout,
        tag_ttl,
        logins,
        credentials,
        access,
        allow,
        deny,
        push,
        delete,
        cors: f.origins("cors", raw.cors, &[], false)?,
    })
}

/// A route's allow or deny list. Its patterns are over the names clients use, the route's
/// path included: one that names nothing under the path (`secret*` on a route at `priv/`) is
/// an error, not a list that silently holds nothing.
fn patterns(
    f: &Fields,
    field: &str,
    list: Option<Vec<Pattern>>,
    path: &str,
) -> Result<Vec<Pattern>, ConfigError> {
    let list = list.unwrap_or_default();
    if !path.is_empty() && list.iter().any(|p| !p.can_match_under(path)) {
        return Err(f.err(
            field,
            "a pattern names no repository under the route's path (patterns match the names \
             clients use, the path included: path/...)",
        ));
    }
    Ok(list)
}

/// Where a route is reached: by host, by path, by the registries it mirrors.
struct Served {
    hosts: Vec<String>,
    path: String,
    mirrors: Vec<String>,
    ns_only: bool,
}

impl Served {
    fn parse(
        f: &Fields,
        host: Option<OneOrMany>,
        path: Option<String>,
        mirrors: Option<Vec<String>>,
    ) -> Result<Self, ConfigError> {
        let hosts = host
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .iter()
            .map(|h| {
                host_pattern(h)
                    .ok_or_else(|| f.err("host", "expected a host name or *.domain, without port"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let path = path.unwrap_or_default().trim_matches('/').to_string();
        if !path.is_empty() && !valid_name(&path) {
            return Err(f.err("path", "not repository path segments"));
        }
        let mirrors = mirrors.unwrap_or_default();
        if mirrors.iter().any(|m| !valid_registry(m)) {
            return Err(f.err(
                "mirrors",
                "expected registry host names (docker.io, host:port)",
            ));
        }
        Ok(Self {
            ns_only: !mirrors.is_empty() && hosts.is_empty() && path.is_empty(),
            mirrors: mirrors.iter().map(|m| m.to_ascii_lowercase()).collect(),
            hosts,
            path,
        })
    }
}

/// Whose credentials a login on the route may pass upstream.
fn logins(
    f: &Fields,
    access: RouteAccess,
    client_credentials: Option<bool>,
    own_account: bool,
) -> Result<Logins, ConfigError> {
    Ok(match (access, client_credentials) {
        (RouteAccess::Upstream, None) if !own_account => Logins::Unshared,
        (RouteAccess::Upstream, Some(true)) if !own_account => Logins::Always,
        (_, Some(true)) => {
            return Err(f.err(
                "client_credentials",
                "a route with credentials of its own, or whose access is not \"upstream\", \
                 passes no client's upstream",
            ))
        }
        _ => Logins::Never,
    })
}

/// Whether the route takes pushes and deletes.
fn writes(
    f: &Fields,
    access: RouteAccess,
    push: Option<bool>,
    delete: Option<bool>,
) -> Result<(bool, bool), ConfigError> {
    let (push, delete) = (push.unwrap_or(false), delete.unwrap_or(false));
    if (push || delete) && access == RouteAccess::Public {
        // Anyone would write, and with the route's own account where it has one.
        return Err(f.err(
            if push { "push" } else { "delete" },
            "a route open to everyone takes no writes: give it \"access\": \"users\" (users \
             with the push action) or \"upstream\" (the client's credentials decide)",
        ));
    }
    Ok((push, delete))
}

/// The route's own account, if it has one.
fn credentials(
    f: &Fields,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
) -> Result<Option<Credentials>, ConfigError> {
    match (username, password, token) {
        (None, None, None) => Ok(None),
        (Some(username), Some(password), None) if !username.is_empty() && !password.is_empty() => {
            Ok(Some(Credentials::Basic { username, password }))
        }
        (None, None, Some(t)) if !t.is_empty() => Ok(Some(Credentials::Token(t))),
        _ => Err(f.err("credentials", "give username and password, or token alone")),
    }
}

/// Who may use the route: `access`, or the older `public: true`.
fn access(
    f: &Fields,
    access: Option<&str>,
    public: Option<bool>,
    own_account: bool,
) -> Result<RouteAccess, ConfigError> {
    let given = match access {
        None => None,
        Some("upstream") => Some(RouteAccess::Upstream),
        Some("public") => Some(RouteAccess::Public),
        Some("users") => Some(RouteAccess::Users),
        Some(_) => return Err(f.err("access", "expected \"upstream\", \"public\" or \"users\"")),
    };
    let access = match (given, public) {
        (Some(a), None) => a,
        (None, Some(true)) | (Some(RouteAccess::Public), Some(true)) => RouteAccess::Public,
        (None, None | Some(false)) => RouteAccess::Upstream,
        (Some(a), Some(false)) if a != RouteAccess::Public => a,
        _ => return Err(f.err("public", "says otherwise than access")),
    };
    if own_account && access == RouteAccess::Upstream {
        return Err(f.err(
            "access",
            "a route with credentials serves clients with them: say \"access\": \"public\" \
             (every client) or \"users\" (the proxy's users)",
        ));
    }
    Ok(access)
}

/// Whether two routes can serve a request for the same host.
fn hosts_overlap(a: &Route, b: &Route) -> bool {
    let overlap = |x: &str, y: &str| match (x.strip_prefix('*'), y.strip_prefix('*')) {
        (None, None) => x == y,
        (Some(sx), None) => y.ends_with(sx) && y.len() > sx.len(),
        (None, Some(sy)) => x.ends_with(sy) && x.len() > sy.len(),
        (Some(sx), Some(sy)) => sx.ends_with(sy) || sy.ends_with(sx),
    };
    a.hosts.is_empty()
        || b.hosts.is_empty()
        || a.hosts
            .iter()
            .any(|x| b.hosts.iter().any(|y| overlap(x, y)))
}

/// A day: a tag kept longer would hide a push for longer than anyone expects.
pub const MAX_TAG_TTL: u64 = 86_400;

/// Parses the `routes` variable. Errors name the route and the field, never a value.
pub fn parse(json: &str, defaults: Defaults) -> Result<Routes, ConfigError> {
    let raws: Vec<RawRoute> = serde_json::from_str(json).map_err(|e| {
        // serde's message may quote a value: say only what kind of error, and where.
        let what = match e.classify() {
            serde_json::error::Category::Data => {
                "not a JSON array of routes (an unknown field, or a value of the wrong type)"
            }
            _ => "not a JSON array of routes",
        };
        ConfigError(format!(
            "variable routes: {what} at line {}, column {}",
            e.line(),
            e.column()
        ))
    })?;
    if raws.is_empty() {
        return Err(ConfigError("variable routes: no route".into()));
    }
    let routes = raws
        .into_iter()
        .enumerate()
        .map(|(i, r)| build(r, i, defaults))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, a) in routes.iter().enumerate() {
        for b in &routes[..i] {
            if a.name == b.name {
                return Err(ConfigError(format!(
                    "variable routes: route {:?}: a second route has this name",
                    a.name
                )));
            }
            let shared_host = (a.hosts.is_empty() && b.hosts.is_empty())
                || a.hosts.iter().any(|h| b.hosts.contains(h));
            let same_selector = a.path == b.path && a.ns_only == b.ns_only;
            if shared_host && same_selector && !a.ns_only {
                return Err(ConfigError(format!(
                    "variable routes: route {:?}: serves the same host and path as route {:?}",
                    a.name, b.name
                )));
            }
            // Both say a login for a host they share is theirs, for different registries.
            if a.logins == Logins::Always
                && b.logins == Logins::Always
                && !a.same_destination(b)
                && hosts_overlap(a, b)
            {
                return Err(ConfigError(format!(
                    "variable routes: route {:?}: takes clients' credentials on a host where \
                     route {:?}, for another registry, takes them too (a client has one login \
                     per host)",
                    a.name, b.name
                )));
            }
            let users =
                |x: &Route, y: &Route| x.access == RouteAccess::Users && y.logins == Logins::Always;
            if (users(a, b) || users(b, a)) && hosts_overlap(a, b) {
                return Err(ConfigError(format!(
                    "variable routes: route {:?}: shares a host with route {:?}, and one \
                     takes its logins for the proxy's users while the other takes them for \
                     its registry (a client has one login per host)",
                    a.name, b.name
                )));
            }
            let shared_mirror = a.mirrors.iter().any(|m| b.mirrors.contains(m));
            if shared_host && shared_mirror {
                return Err(ConfigError(format!(
                    "variable routes: route {:?}: mirrors a registry route {:?} mirrors",
                    a.name, b.name
                )));
            }
        }
    }
    Ok(Routes(routes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            blob_redirect: BlobRedirect::Pass,
            timeout: Duration::from_secs(25),
            tag_ttl: 60,
        }
    }

    const TABLE: &str = r#"[
        {"name": "hub", "host": "hub.example.com", "preset": "dockerhub", "mirrors": ["docker.io"]},
        {"name": "ghcr", "host": "images.example.com", "path": "ghcr", "preset": "ghcr"},
        {"name": "quay", "host": "images.example.com", "path": "quay", "preset": "quay"},
        {"name": "mirror-ghcr", "preset": "ghcr", "mirrors": ["ghcr.io"]},
        {"name": "own", "host": "*.internal.example", "upstream": "http://127.0.0.1:5000",
         "cdn": ["http://127.0.0.3:5002"], "prefix": "team", "blob_redirect": "follow",
         "timeout": 10, "username": "robot", "password": "s3cret", "public": true}
    ]"#;

    #[test]
    fn tag_ttl_defaults_and_is_bounded() {
        let one = |extra: &str| {
            parse(
                &format!(r#"[{{"name": "a", "preset": "ghcr"{extra}}}]"#),
                defaults(),
            )
        };
        assert_eq!(one("").unwrap().0[0].tag_ttl, 60);
        assert_eq!(one(r#", "tag_ttl": 0"#).unwrap().0[0].tag_ttl, 0);
        let e = one(r#", "tag_ttl": 18446744073709551615"#).unwrap_err();
        assert!(
            e.0.contains("tag_ttl: expected seconds (0 to 86400)"),
            "{e}"
        );
    }

    #[test]
    fn a_hosts_logins_go_to_one_registry() {
        let t = |json: &str| parse(json, defaults());
        let passes = |r: &Routes, name: &str, host: &str| {
            let route = r.0.iter().find(|x| x.name == name).unwrap();
            r.passes_logins(route, host)
        };
        let shared = t(
            r#"[{"name": "a", "path": "a", "upstream": "https://a.example"},
                          {"name": "b", "path": "b", "upstream": "https://b.example"},
                          {"name": "c", "path": "c", "upstream": "https://a.example"}]"#,
        )
        .unwrap();
        assert!(!passes(&shared, "a", "x.example") && !passes(&shared, "b", "x.example"));
        let same = t(
            r#"[{"name": "a", "path": "a", "upstream": "https://a.example"},
                        {"name": "c", "path": "c", "upstream": "https://a.example"}]"#,
        )
        .unwrap();
        assert!(passes(&same, "a", "x.example") && passes(&same, "c", "x.example"));
        let split = t(
            r#"[{"name": "a", "host": "a.example.com", "upstream": "https://a.example"},
                         {"name": "b", "host": "*.b.example.com", "upstream": "https://b.example"},
                         {"name": "m", "mirrors": ["ghcr.io"], "upstream": "https://a.example"}]"#,
        )
        .unwrap();
        assert!(passes(&split, "a", "a.example.com") && passes(&split, "m", "a.example.com"));
        assert!(!passes(&split, "b", "x.b.example.com") && !passes(&split, "m", "x.b.example.com"));
        let chosen = t(
            r#"[{"name": "a", "path": "a", "upstream": "https://a.example",
                            "client_credentials": true},
                           {"name": "b", "path": "b", "upstream": "https://b.example"},
                           {"name": "n", "path": "n", "upstream": "https://a.example",
                            "client_credentials": false}]"#,
        )
        .unwrap();
        assert!(passes(&chosen, "a", "x") && !passes(&chosen, "b", "x"));
        assert!(!passes(&chosen, "n", "x"));
        let both = t(
            r#"[{"name": "a", "path": "a", "upstream": "https://a.example",
                          "client_credentials": true},
                         {"name": "b", "host": "*.example.com", "upstream": "https://b.example",
                          "client_credentials": true}]"#,
        );
        assert!(both.unwrap_err().0.contains("one login per host"));
        let own = t(
            r#"[{"name": "a", "upstream": "https://a.example", "token": "t",
                         "public": true, "client_credentials": true}]"#,
        );
        assert!(own.unwrap_err().0.contains("client_credentials"));
    }

    #[test]
    fn selects_by_host_path_and_ns() {
        let t = parse(TABLE, defaults()).unwrap();
        let pick = |host: &str, name: Option<&str>, ns: Option<&str>| {
            t.select(host, name, ns)
                .map(|r| r.name.clone())
                .map_err(|e| e.status.as_u16())
        };
        assert_eq!(
            pick("hub.example.com", Some("alpine"), None),
            Ok("hub".into())
        );
        assert_eq!(pick("hub.example.com", None, None), Ok("hub".into()));
        assert_eq!(
            pick("images.example.com", Some("ghcr/o/a"), None),
            Ok("ghcr".into())
        );
        assert_eq!(
            pick("images.example.com", Some("quay/o/a"), None),
            Ok("quay".into())
        );
        assert_eq!(pick("images.example.com", Some("other/a"), None), Err(404));
        assert_eq!(pick("images.example.com", None, None), Err(404));
        assert!(t.paths_only("images.example.com"));
        assert_eq!(
            pick("a.internal.example", Some("x"), None),
            Ok("own".into())
        );
        assert_eq!(pick("internal.example", Some("x"), None), Err(404));
        assert_eq!(
            pick("any.example", Some("x"), Some("ghcr.io")),
            Ok("mirror-ghcr".into())
        );
        assert_eq!(
            pick("hub.example.com", Some("library/x"), Some("docker.io")),
            Ok("hub".into())
        );
        assert_eq!(
            pick("any.example", Some("x"), Some("evil.example")),
            Err(404)
        );
        assert_eq!(pick("any.example", Some("x"), None), Err(404));
        let own = t.select("a.internal.example", Some("x"), None).unwrap();
        assert_eq!(own.blob_redirect, BlobRedirect::Follow);
        assert_eq!(own.timeout, Duration::from_secs(10));
        assert!(matches!(own.credentials, Some(Credentials::Basic { .. })));
        let hub = t.select("hub.example.com", None, None).unwrap();
        assert!(hub.library && !hub.catalog);
        assert_eq!(hub.auth[0].to_string(), "https://auth.docker.io");
    }

    #[test]
    fn errors_name_the_route_never_a_value() {
        for (json, want) in [
            (r#"{"name": "x"}"#, "not a JSON array"),
            (r#"[]"#, "no route"),
            (
                r#"[{"name": "a", "preset": "nope"}]"#,
                "route \"a\": preset",
            ),
            (
                r#"[{"name": "a", "preset": "ghcr", "path": "priv", "deny": ["secret*"]}]"#,
                "route \"a\": deny",
            ),
            (
                r#"[{"name": "a", "preset": "ghcr", "path": "priv", "allow": ["priv/*", "app"]}]"#,
                "route \"a\": allow",
            ),
            (
                r#"[{"name": "a", "upstream": "https://robot:TOKEN99@ghcr.io"}]"#,
                "route \"a\": upstream",
            ),
            (
                r#"[{"upstream": "https://r.example", "colour": "TOKEN99"}]"#,
                "not a JSON array",
            ),
            (
                r#"[{"name": "a", "preset": "ghcr", "username": "u", "password": "TOKEN99"}]"#,
                "route \"a\": access",
            ),
            (
                r#"[{"name": "a", "preset": "ghcr", "password": "TOKEN99", "public": true}]"#,
                "route \"a\": credentials",
            ),
            (
                r#"[{"name": "a", "preset": "ghcr"}, {"name": "b", "preset": "quay"}]"#,
                "route \"b\": serves the same host",
            ),
            (
                r#"[{"name": "a", "preset": "ghcr", "host": "TOKEN99.example:80"}]"#,
                "route \"a\": host",
            ),
            (
                r#"[{"name": "a", "preset": "ghcr"}, {"name": "a", "preset": "quay", "path": "q"}]"#,
                "second route",
            ),
            (
                r#"[{"name": "a", "preset": "artifact-registry"}]"#,
                "route \"a\": upstream",
            ),
            (
                r#"[{"name": "a", "preset": "ghcr", "access": "TOKEN99"}]"#,
                "route \"a\": access",
            ),
            (
                r#"[{"name": "a", "preset": "ghcr", "access": "users", "public": true}]"#,
                "route \"a\": public",
            ),
            (
                r#"[{"name": "a", "preset": "ghcr", "access": "users",
                    "client_credentials": true}]"#,
                "route \"a\": client_credentials",
            ),
        ] {
            let e = parse(json, defaults()).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
            assert!(!e.contains("TOKEN99"), "{e}");
        }
    }

    #[test]
    fn credentials_never_print() {
        let t = parse(TABLE, defaults()).unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    /// Of two wildcards, the narrower wins whatever the order (it took the table's order: the
    /// broader route, listed last, served the narrower one's hosts, with its own account).
    #[test]
    fn the_narrower_wildcard_wins_whatever_the_order() {
        let t = parse(
            r#"[{"name": "team", "host": "*.team.example.com", "upstream": "https://team.example"},
                {"name": "all", "host": "*.example.com", "upstream": "https://all.example",
                 "token": "org-token", "public": true}]"#,
            defaults(),
        )
        .unwrap();
        let r = t.select("x.team.example.com", Some("app"), None).unwrap();
        assert_eq!(r.name, "team");
    }

    /// A route ranks by its best host: `["*.example.com", "images.example.com"]` names
    /// images.example.com exactly (it ranked by the first pattern that matched).
    #[test]
    fn an_exactly_listed_host_ranks_as_exact() {
        let t = parse(
            r#"[{"name": "a", "host": ["*.example.com", "images.example.com"], "path": "ghcr",
                 "upstream": "https://a.example"},
                {"name": "b", "host": "images.example.com", "upstream": "https://b.example"}]"#,
            defaults(),
        )
        .unwrap();
        let r = t
            .select("images.example.com", Some("ghcr/owner/app"), None)
            .unwrap();
        assert_eq!(r.name, "a");
    }
}
