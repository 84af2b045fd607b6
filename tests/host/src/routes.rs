//! HTTP trigger routes: exact paths and `/prefix/...` wildcards, as Spin matches them.

use anyhow::{ensure, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The route as written in the manifest; Spin reports it in headers.
    pub raw: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Path without a trailing slash (`""` for the root).
    Exact(String),
    /// Prefix before `/...` (`""` for `/...`).
    Wildcard(String),
}

/// A route that matched a request path.
pub struct Match<'a> {
    pub route: &'a Route,
    /// The rest of the path below a wildcard's prefix (Spin's `spin-path-info`).
    pub path_info: &'a str,
}

impl Route {
    pub fn parse(raw: &str) -> Result<Self> {
        ensure!(raw.starts_with('/'), "route {raw:?} must start with '/'");
        let kind = match raw.strip_suffix("/...") {
            Some(prefix) => Kind::Wildcard(prefix.trim_end_matches('/').to_string()),
            None => Kind::Exact(raw.trim_end_matches('/').to_string()),
        };
        Ok(Self {
            raw: raw.to_string(),
            kind,
        })
    }

    /// The route without its wildcard (Spin's `spin-component-route`).
    pub fn component_route(&self) -> &str {
        match &self.kind {
            Kind::Exact(p) | Kind::Wildcard(p) => p,
        }
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self.kind, Kind::Wildcard(_))
    }

    fn path_info<'p>(&self, path: &'p str) -> Option<&'p str> {
        match &self.kind {
            Kind::Exact(p) => (path.trim_end_matches('/') == p).then_some(""),
            // `/...` takes every target, `*` (OPTIONS) too, as Spin's router does.
            Kind::Wildcard(p) if p.is_empty() => Some(path),
            Kind::Wildcard(p) => {
                let rest = path.strip_prefix(p.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then_some(rest)
            }
        }
    }

    /// Exact routes beat wildcards; a longer wildcard prefix beats a shorter one.
    fn specificity(&self) -> (bool, usize) {
        match &self.kind {
            Kind::Exact(p) => (true, p.len()),
            Kind::Wildcard(p) => (false, p.len()),
        }
    }
}

/// The best route for `path`, with the index of its trigger.
pub fn best_match<'a>(routes: &'a [Route], path: &'a str) -> Option<(usize, Match<'a>)> {
    routes
        .iter()
        .enumerate()
        .filter_map(|(i, route)| Some((i, route, route.path_info(path)?)))
        .max_by_key(|(i, route, _)| (route.specificity(), std::cmp::Reverse(*i)))
        .map(|(i, route, path_info)| (i, Match { route, path_info }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(raw: &[&str]) -> Vec<Route> {
        raw.iter().map(|r| Route::parse(r).unwrap()).collect()
    }

    fn matched(routes: &[Route], path: &str) -> Option<(String, String)> {
        best_match(routes, path).map(|(_, m)| (m.route.raw.clone(), m.path_info.to_string()))
    }

    #[test]
    fn wildcard_and_exact() {
        let r = routes(&["/...", "/api/...", "/health"]);
        let m = |p| matched(&r, p);
        assert_eq!(m("/v2/"), Some(("/...".into(), "/v2/".into())));
        assert_eq!(m("/"), Some(("/...".into(), "/".into())));
        assert_eq!(m("/api"), Some(("/api/...".into(), "".into())));
        assert_eq!(m("/api/x/y"), Some(("/api/...".into(), "/x/y".into())));
        assert_eq!(m("/apix"), Some(("/...".into(), "/apix".into())));
        assert_eq!(m("/health"), Some(("/health".into(), "".into())));
        assert_eq!(m("/health/"), Some(("/health".into(), "".into())));
        assert_eq!(m("*"), Some(("/...".into(), "*".into())));
        assert_eq!(r[0].component_route(), "");
        assert_eq!(r[1].component_route(), "/api");
    }

    #[test]
    fn exact_only() {
        let r = routes(&["/only"]);
        assert!(best_match(&r, "/other").is_none());
        assert!(best_match(&r, "/only/x").is_none());
    }
}
