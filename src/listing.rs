//! Tag lists and the catalog: their queries, JSON bodies and `Link` targets in client names.

use crate::endpoint::Endpoint;
use crate::names::NameMap;
use crate::origin::Origin;
use serde_json::Value;
use url::form_urlencoded;

/// Largest listing body the proxy reads to rewrite; registries page far below this.
pub const MAX_LISTING_BYTES: usize = 4 << 20;

fn pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn encode(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Whether an endpoint takes a query parameter; whatever else a client adds goes nowhere.
/// containerd's mirror parameter `ns` names the registry the client thought it was talking
/// to. Quay pages tags with an opaque `next_page` in its Links. A referrers list pages with a
/// query that is the registry's own (the spec leaves it open: `n`, `last`, `nextToken`, ...)
/// and names no repository, so all of it passes but `ns`.
fn takes_param(endpoint: &Endpoint, key: &str) -> bool {
    match endpoint {
        Endpoint::Tags { .. } | Endpoint::Catalog => ["n", "last", "next_page"].contains(&key),
        Endpoint::Referrers { .. } => key != "ns",
        _ => false,
    }
}

/// The query to send upstream.
pub fn upstream_query(endpoint: &Endpoint, query: Option<&str>, names: &NameMap) -> Option<String> {
    let mut p: Vec<_> = pairs(query.unwrap_or(""))
        .into_iter()
        .filter(|(k, _)| takes_param(endpoint, k))
        .collect();
    if *endpoint == Endpoint::Catalog && !names.prefix().is_empty() {
        let last = p.iter().position(|(k, _)| k == "last");
        let mapped = last.and_then(|i| names.to_upstream(&p[i].1));
        p.retain(|(k, _)| k != "last");
        // Catalogs are sorted: without a `last` of its own, start just before the prefix's
        // first repository.
        p.push((
            "last".into(),
            mapped.unwrap_or_else(|| format!("{}/", names.prefix())),
        ));
    }
    (!p.is_empty()).then(|| encode(&p))
}

/// Whether a `Link` header pages by name (distribution's `last=`): only then does a page that
/// ran past the prefix mean no later page holds it. An opaque cursor (Quay's `next_page`)
/// follows the registry's own order, which may come back into the prefix.
pub fn pages_by_name(link: &str) -> bool {
    let mut by_name = false;
    crate::link::rewrite(link, |target| {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        by_name |= pairs(query).iter().any(|(k, _)| k == "last");
        None
    });
    by_name
}

/// A `Link` target in client terms, or `None` to drop the link: only targets on the upstream
/// that name an API endpoint inside the prefix survive. Relative targets stay relative; absolute
/// ones move to the public origin; a catalog page past the prefix is dropped.
pub fn client_link_target(
    target: &str,
    upstream: &Origin,
    public: &Origin,
    names: &NameMap,
) -> Option<String> {
    let url = upstream.url()?.join(target).ok()?;
    if Origin::of_url(&url).as_ref() != Some(upstream) {
        return None;
    }
    let endpoint = Endpoint::parse(url.path()).ok()?;
    let mut query: Vec<_> = pairs(url.query().unwrap_or(""))
        .into_iter()
        .filter(|(k, _)| takes_param(&endpoint, k))
        .collect();
    let endpoint = match &endpoint {
        Endpoint::Catalog => {
            if !names.prefix().is_empty() {
                for (k, v) in query.iter_mut() {
                    if k == "last" {
                        *v = names.to_client(v)?;
                    }
                }
            }
            endpoint
        }
        Endpoint::Home
        | Endpoint::Token
        | Endpoint::Upload { .. }
        | Endpoint::Stats
        | Endpoint::Health => return None,
        _ => match endpoint.name() {
            Some(name) => endpoint.with_name(names.to_client(name)?),
            None => endpoint,
        },
    };
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", encode(&query))
    };
    let origin = if target.contains("://") || target.starts_with("//") {
        public.to_string()
    } else {
        String::new()
    };
    Some(format!("{origin}{}{q}", endpoint.path()))
}

/// A tags/list body for the client: the repository it asked for (`asked`, in its names) and
/// the upstream's tags, nothing else: a registry's own fields may name its hosts and projects.
/// `None` unless the upstream named a repository the route serves and listed tags.
pub fn client_tags_body(body: &[u8], names: &NameMap, asked: &str) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    names.to_client(v.get("name")?.as_str()?)?;
    let tags = match v.get("tags")? {
        Value::Array(tags) if tags.iter().all(Value::is_string) => Value::Array(tags.clone()),
        Value::Null => Value::Null,
        _ => return None,
    };
    serde_json::to_vec(&serde_json::json!({ "name": asked, "tags": tags })).ok()
}

/// A catalog page filtered to the prefix, names stripped. The flag says whether the page
/// ran past the prefix's range, so no further page can hold any of its repositories.
pub fn client_catalog_body(
    body: &[u8],
    names: &NameMap,
    visible: impl Fn(&str) -> bool,
) -> Option<(Vec<u8>, bool)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let repos = v.get("repositories")?.as_array()?;
    let mut past_end = false;
    let mut kept = Vec::new();
    for r in repos.iter().filter_map(Value::as_str) {
        match names.to_client(r) {
            Some(c) if visible(&c) => kept.push(Value::String(c)),
            Some(_) => {}
            None if !names.prefix().is_empty() && r > names.prefix() => past_end = true,
            None => {}
        }
    }
    // Only the list, as for tags: nothing else of the registry's.
    let page = serde_json::json!({ "repositories": kept });
    Some((serde_json::to_vec(&page).ok()?, past_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> Origin {
        Origin::parse(s).unwrap()
    }

    #[test]
    fn catalog_query_starts_at_the_prefix_and_maps_last() {
        let m = NameMap::new("", "team/app", false);
        assert_eq!(
            upstream_query(&Endpoint::Catalog, Some("n=2"), &m).unwrap(),
            "n=2&last=team%2Fapp%2F"
        );
        assert_eq!(
            upstream_query(&Endpoint::Catalog, Some("n=2&last=web"), &m).unwrap(),
            "n=2&last=team%2Fapp%2Fweb"
        );
        let tags = Endpoint::Tags { name: "web".into() };
        assert_eq!(
            upstream_query(&tags, Some("n=2&last=v1&ns=docker.io&x=1"), &m).unwrap(),
            "n=2&last=v1"
        );
        let manifest = Endpoint::Manifest {
            name: "web".into(),
            reference: "1".into(),
        };
        assert_eq!(
            upstream_query(&manifest, Some("ns=docker.io&x=1"), &m),
            None
        );
        assert_eq!(upstream_query(&tags, None, &m), None);
        assert_eq!(
            upstream_query(&Endpoint::Catalog, None, &NameMap::default()),
            None
        );
    }

    #[test]
    fn link_targets_in_client_names() {
        let (up, public) = (o("http://127.0.0.1:5000"), o("https://images.example.com"));
        let m = NameMap::new("", "team/app", false);
        let t = client_link_target("/v2/team/app/web/tags/list?last=v2&n=2", &up, &public, &m);
        assert_eq!(t.unwrap(), "/v2/web/tags/list?last=v2&n=2");
        let t = client_link_target(
            "http://127.0.0.1:5000/v2/_catalog?last=team%2Fapp%2Fweb&n=2",
            &up,
            &public,
            &m,
        );
        assert_eq!(
            t.unwrap(),
            "https://images.example.com/v2/_catalog?last=web&n=2"
        );
        assert_eq!(
            client_link_target("/v2/_catalog?last=zzz&n=2", &up, &public, &m),
            None
        );
    }

    #[test]
    fn links_elsewhere_are_dropped_or_mapped() {
        let (up, public) = (o("http://127.0.0.1:5000"), o("https://images.example.com"));
        let m = NameMap::new("", "team/app", false);
        let d = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let t = format!("http://127.0.0.1:5000/v2/team/app/web/manifests/{d}");
        assert_eq!(
            client_link_target(&t, &up, &public, &m).unwrap(),
            format!("https://images.example.com/v2/web/manifests/{d}")
        );
        for t in [
            "https://cdn.example/v2/team/app/web/tags/list",
            "//127.0.0.2:5000/v2/team/app/web/tags/list",
            "/v2/other/web/tags/list",
            "/docs/api",
            "/token?scope=x",
        ] {
            assert_eq!(client_link_target(t, &up, &public, &m), None, "{t}");
        }
        let t = client_link_target("/v2/team/app/web/tags/list?n=2&secret=1", &up, &public, &m);
        assert_eq!(t.unwrap(), "/v2/web/tags/list?n=2");
    }

    #[test]
    fn tags_body_name() {
        let m = NameMap::new("", "", true);
        let out = |body: &[u8]| client_tags_body(body, &m, "alpine");
        let tags = out(br#"{"name":"library/alpine","tags":["3.20","latest"]}"#);
        assert_eq!(
            tags.unwrap(),
            br#"{"name":"alpine","tags":["3.20","latest"]}"#
        );
        assert_eq!(out(b"not json"), None);
        // The registry's own fields stay with it; the name is the one asked for.
        let tags = out(br#"{"name":"library/other","tags":["a"],"registry":"10.0.0.7"}"#);
        assert_eq!(tags.unwrap(), br#"{"name":"alpine","tags":["a"]}"#);
        let tags = out(br#"{"name":"library/alpine","tags":null}"#);
        assert_eq!(tags.unwrap(), br#"{"name":"alpine","tags":null}"#);
        assert_eq!(out(br#"{"name":"library/alpine","tags":[1]}"#), None);
        assert_eq!(out(br#"{"name":"library/alpine"}"#), None);
    }

    #[test]
    fn catalog_filtered_to_prefix() {
        let m = NameMap::new("", "team/app", false);
        let (body, past) = client_catalog_body(
            br#"{"repositories":["team/app/a","team/app/b/c"],"host":"10.0.0.7"}"#,
            &m,
            |_| true,
        )
        .unwrap();
        assert_eq!(body, br#"{"repositories":["a","b/c"]}"#);
        assert!(!past);
        let (body, past) = client_catalog_body(
            br#"{"repositories":["team/app/z","team/apps"]}"#,
            &m,
            |_| true,
        )
        .unwrap();
        assert_eq!(body, br#"{"repositories":["z"]}"#);
        assert!(past);
    }
}
