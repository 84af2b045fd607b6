//! Repository names in both directions: what the client says and what the upstream stores.
//!
//! A route may own leading path segments of the client's names (`ghcr/owner/app` is
//! `owner/app` at GHCR), add an upstream prefix (`web` is `team/app/web`), and follow Docker
//! Hub's rule that one-segment names live under `library/`.

use crate::endpoint::valid_name;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NameMap {
    /// `ghcr`: client `ghcr/x` is this route's `x`. Empty for none.
    path: String,
    /// `team/app`: the route's `x` is upstream `team/app/x`. Empty for none.
    prefix: String,
    /// Docker Hub keeps one-segment names under `library/`.
    library: bool,
}

const LIBRARY: &str = "library/";

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// `name` without the leading segments `lead`; `None` when it does not start with them.
fn strip<'a>(name: &'a str, lead: &str) -> Option<&'a str> {
    if lead.is_empty() {
        return Some(name);
    }
    name.strip_prefix(lead)?.strip_prefix('/')
}

impl NameMap {
    pub fn new(path: &str, prefix: &str, library: bool) -> Self {
        Self {
            path: path.trim_matches('/').to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            library,
        }
    }

    /// The client's path segments this map owns.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The upstream's name for a client name; `None` when the name is not this route's.
    pub fn to_upstream(&self, client: &str) -> Option<String> {
        let own = strip(client, &self.path).filter(|n| !n.is_empty())?;
        let name = join(&self.prefix, own);
        Some(if self.library && !name.contains('/') {
            format!("{LIBRARY}{name}")
        } else {
            name
        })
    }

    /// The client's name for an upstream name; `None` when it lies outside the prefix.
    pub fn to_client(&self, upstream: &str) -> Option<String> {
        let mut own = strip(upstream, &self.prefix).filter(|n| !n.is_empty())?;
        if self.library && self.prefix.is_empty() {
            if let Some(short) = own.strip_prefix(LIBRARY) {
                if !short.is_empty() && !short.contains('/') {
                    own = short;
                }
            }
        }
        Some(join(&self.path, own))
    }

    /// Whether a client name is valid, is this route's, and stays valid as the upstream's
    /// name (a prefix or `library/` can take it past the 255-character limit).
    pub fn is_valid_client_name(&self, client: &str) -> bool {
        valid_name(client) && self.to_upstream(client).is_some_and(|u| valid_name(&u))
    }

    /// Whether upstream and client names differ at all.
    pub fn is_identity(&self) -> bool {
        self.path.is_empty() && self.prefix.is_empty() && !self.library
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_both_ways() {
        let m = NameMap::new("", "team/app", false);
        assert_eq!(m.to_upstream("web").as_deref(), Some("team/app/web"));
        assert_eq!(m.to_upstream("a/b").as_deref(), Some("team/app/a/b"));
        assert_eq!(m.to_client("team/app/web").as_deref(), Some("web"));
        assert_eq!(m.to_client("team/apple/web"), None);
        assert_eq!(m.to_client("team/app"), None);
        assert_eq!(m.to_client("other"), None);
    }

    #[test]
    fn path_segments_belong_to_the_route() {
        let m = NameMap::new("ghcr", "", false);
        assert_eq!(
            m.to_upstream("ghcr/owner/app").as_deref(),
            Some("owner/app")
        );
        assert_eq!(m.to_upstream("ghcrx/owner/app"), None);
        assert_eq!(m.to_upstream("ghcr"), None);
        assert_eq!(m.to_client("owner/app").as_deref(), Some("ghcr/owner/app"));
        let hub = NameMap::new("hub", "", true);
        assert_eq!(
            hub.to_upstream("hub/alpine").as_deref(),
            Some("library/alpine")
        );
        assert_eq!(
            hub.to_client("library/alpine").as_deref(),
            Some("hub/alpine")
        );
    }

    #[test]
    fn docker_hub_library() {
        let m = NameMap::new("", "", true);
        assert_eq!(m.to_upstream("alpine").as_deref(), Some("library/alpine"));
        assert_eq!(
            m.to_upstream("library/alpine").as_deref(),
            Some("library/alpine")
        );
        assert_eq!(
            m.to_upstream("bitnami/redis").as_deref(),
            Some("bitnami/redis")
        );
        assert_eq!(m.to_client("library/alpine").as_deref(), Some("alpine"));
        assert_eq!(
            m.to_client("bitnami/redis").as_deref(),
            Some("bitnami/redis")
        );
    }

    #[test]
    fn docker_hub_with_a_one_segment_prefix() {
        // `myorg` on Docker Hub: client `app` is `myorg/app`, never `library/...`.
        let m = NameMap::new("", "myorg", true);
        assert_eq!(m.to_upstream("app").as_deref(), Some("myorg/app"));
        assert_eq!(m.to_client("myorg/app").as_deref(), Some("app"));
    }

    #[test]
    fn names_too_long_upstream_are_invalid() {
        let m = NameMap::new("", "team/app", false);
        let long = "a".repeat(250);
        assert!(valid_name(&long));
        assert!(!m.is_valid_client_name(&long));
        assert!(!NameMap::new("", "", true).is_valid_client_name(&"b".repeat(250)));
        assert!(m.is_valid_client_name("web"));
        assert!(!NameMap::new("ghcr", "", false).is_valid_client_name("other/x"));
    }

    #[test]
    fn identity() {
        let m = NameMap::default();
        assert!(m.is_identity());
        assert_eq!(m.to_upstream("a/b").as_deref(), Some("a/b"));
        assert_eq!(m.to_client("a/b").as_deref(), Some("a/b"));
    }
}
