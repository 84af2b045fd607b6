//! Repository names in both directions: what the client says and what the upstream stores.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameMap {
    /// `team/app`: client `x` is upstream `team/app/x`. Empty for none.
    prefix: String,
    /// Docker Hub keeps one-segment names under `library/`.
    docker_hub: bool,
}

const LIBRARY: &str = "library/";

impl NameMap {
    pub fn new(prefix: &str, docker_hub: bool) -> Self {
        Self {
            prefix: prefix.trim_matches('/').to_string(),
            docker_hub,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn to_upstream(&self, client: &str) -> String {
        let name = if self.prefix.is_empty() {
            client.to_string()
        } else {
            format!("{}/{}", self.prefix, client)
        };
        if self.docker_hub && !name.contains('/') {
            format!("{LIBRARY}{name}")
        } else {
            name
        }
    }

    /// The client's name for an upstream name; `None` when it lies outside the prefix.
    pub fn to_client(&self, upstream: &str) -> Option<String> {
        let name = if self.prefix.is_empty() {
            upstream
        } else {
            upstream.strip_prefix(&self.prefix)?.strip_prefix('/')?
        };
        if name.is_empty() {
            return None;
        }
        if self.docker_hub && self.prefix.is_empty() {
            if let Some(short) = name.strip_prefix(LIBRARY) {
                if !short.is_empty() && !short.contains('/') {
                    return Some(short.to_string());
                }
            }
        }
        Some(name.to_string())
    }

    /// Whether a client name is valid and stays valid as the upstream's name (a prefix or
    /// Docker Hub's `library/` can take it past the 255-character limit).
    pub fn is_valid_client_name(&self, client: &str) -> bool {
        crate::route::valid_name(client) && crate::route::valid_name(&self.to_upstream(client))
    }

    /// Whether upstream and client names differ at all.
    pub fn is_identity(&self) -> bool {
        self.prefix.is_empty() && !self.docker_hub
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_both_ways() {
        let m = NameMap::new("team/app", false);
        assert_eq!(m.to_upstream("web"), "team/app/web");
        assert_eq!(m.to_upstream("a/b"), "team/app/a/b");
        assert_eq!(m.to_client("team/app/web").as_deref(), Some("web"));
        assert_eq!(m.to_client("team/apple/web"), None);
        assert_eq!(m.to_client("team/app"), None);
        assert_eq!(m.to_client("other"), None);
    }

    #[test]
    fn docker_hub_library() {
        let m = NameMap::new("", true);
        assert_eq!(m.to_upstream("alpine"), "library/alpine");
        assert_eq!(m.to_upstream("library/alpine"), "library/alpine");
        assert_eq!(m.to_upstream("bitnami/redis"), "bitnami/redis");
        assert_eq!(m.to_client("library/alpine").as_deref(), Some("alpine"));
        assert_eq!(
            m.to_client("bitnami/redis").as_deref(),
            Some("bitnami/redis")
        );
    }

    #[test]
    fn docker_hub_with_a_one_segment_prefix() {
        // `myorg` on Docker Hub: client `app` is `myorg/app`, never `library/...`.
        let m = NameMap::new("myorg", true);
        assert_eq!(m.to_upstream("app"), "myorg/app");
        assert_eq!(m.to_client("myorg/app").as_deref(), Some("app"));
    }

    #[test]
    fn names_too_long_upstream_are_invalid() {
        let m = NameMap::new("team/app", false);
        let long = "a".repeat(250);
        assert!(crate::route::valid_name(&long));
        assert!(!m.is_valid_client_name(&long));
        assert!(!NameMap::new("", true).is_valid_client_name(&"b".repeat(250)));
        assert!(m.is_valid_client_name("web"));
    }

    #[test]
    fn identity() {
        let m = NameMap::new("", false);
        assert!(m.is_identity());
        assert_eq!(m.to_upstream("a/b"), "a/b");
        assert_eq!(m.to_client("a/b").as_deref(), Some("a/b"));
    }
}
