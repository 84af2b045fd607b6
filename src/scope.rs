//! Token scopes, `type[(class)]:name:actions`, mapped between client and upstream names.

use crate::names::NameMap;

/// Maps one scope; scopes without a repository name (`registry:catalog:*`) pass unchanged.
/// `None` when the name cannot be expressed on the other side.
fn map_scope(scope: &str, map: impl Fn(&str) -> Option<String>) -> Option<String> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let repository = kind == "repository" || kind.starts_with("repository(");
    if !repository {
        return Some(scope.to_string());
    }
    Some(format!("{kind}:{}:{actions}", map(name)?))
}

fn map_all<'a>(
    scopes: impl IntoIterator<Item = &'a str>,
    map: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in scopes.into_iter().flat_map(str::split_whitespace) {
        // A malformed scope goes on as sent: the token server judges it, not us.
        let mapped = if s.matches(':').count() >= 2 {
            map_scope(s, &map)
        } else {
            Some(s.to_string())
        };
        if let Some(m) = mapped {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

/// The first repository name in the scopes that is not a valid repository name, in client or
/// upstream form: a name such as `../x` would otherwise step outside the prefix at a token
/// server that normalises paths.
pub fn first_invalid_name<'a>(
    names: &NameMap,
    scopes: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    scopes
        .into_iter()
        .flat_map(str::split_whitespace)
        .find_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, _) = rest.rsplit_once(':')?;
            let repository = kind == "repository" || kind.starts_with("repository(");
            (repository && !names.is_valid_client_name(name)).then(|| name.to_string())
        })
}

/// Client scopes (each item may hold several, space-separated) in upstream names, deduplicated:
/// containerd sends both its own scope and the challenge's, which map to the same upstream scope.
pub fn to_upstream<'a>(names: &NameMap, scopes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    map_all(scopes, |n| names.to_upstream(n))
}

/// Upstream scopes in client names. Only well-formed repository scopes inside the prefix and
/// the catalog scope are kept: whatever else an upstream puts there stays home.
pub fn to_client<'a>(names: &NameMap, scopes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in scopes.into_iter().flat_map(str::split_whitespace) {
        let Some((kind, rest)) = s.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        let actions_ok = !actions.is_empty()
            && actions
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b',' || b == b'*');
        let kind_ok = kind == "repository"
            || kind
                .strip_prefix("repository(")
                .and_then(|c| c.strip_suffix(')'))
                .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric()));
        let mapped = match kind {
            "registry" if name == "catalog" => Some(name.to_string()),
            _ if kind_ok && crate::endpoint::valid_name(name) => names
                .to_client(name)
                .filter(|c| names.is_valid_client_name(c)),
            _ => None,
        };
        if let (Some(n), true) = (mapped, actions_ok) {
            let m = format!("{kind}:{n}:{actions}");
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_repository_scopes_with_prefix() {
        let m = NameMap::new("", "team/app", false);
        assert_eq!(
            to_upstream(
                &m,
                ["repository:web:pull", "repository(plugin):x:pull,push"]
            ),
            [
                "repository:team/app/web:pull",
                "repository(plugin):team/app/x:pull,push"
            ]
        );
        assert_eq!(
            to_client(&m, ["repository:team/app/web:pull"]),
            ["repository:web:pull"]
        );
        assert!(to_client(&m, ["repository:other/web:pull"]).is_empty());
    }

    #[test]
    fn catalog_and_space_separated_forms() {
        let m = NameMap::new("", "p", false);
        assert_eq!(
            to_upstream(&m, ["registry:catalog:* repository:a:pull"]),
            ["registry:catalog:*", "repository:p/a:pull"]
        );
    }

    #[test]
    fn echoed_challenge_scope_never_doubles_the_prefix() {
        // containerd merges the challenge scope (already in client names) with its own.
        let m = NameMap::new("", "team/app", false);
        let challenge = to_client(&m, ["repository:team/app/web:pull"]);
        let sent = [challenge[0].as_str(), "repository:web:pull"];
        assert_eq!(to_upstream(&m, sent), ["repository:team/app/web:pull"]);
    }

    #[test]
    fn docker_hub_library_scopes() {
        let m = NameMap::new("", "", true);
        assert_eq!(
            to_upstream(
                &m,
                ["repository:alpine:pull", "repository:library/alpine:pull"]
            ),
            ["repository:library/alpine:pull"]
        );
        assert_eq!(
            to_client(&m, ["repository:library/alpine:pull"]),
            ["repository:alpine:pull"]
        );
    }

    #[test]
    fn names_that_could_leave_the_prefix_are_found() {
        let m = NameMap::new("", "p", false);
        let bad = ["repository:ok:pull repository:../../other/outside:pull"];
        assert_eq!(
            first_invalid_name(&m, bad).as_deref(),
            Some("../../other/outside")
        );
        assert_eq!(
            first_invalid_name(&m, ["repository:team/../../x:pull"]).as_deref(),
            Some("team/../../x")
        );
        assert_eq!(
            first_invalid_name(&m, ["repository:a/b:pull", "registry:catalog:*"]),
            None
        );
        let long = format!("repository:{}:pull", "a".repeat(254));
        assert!(first_invalid_name(&m, [long.as_str()]).is_some());
        let hub = NameMap::new("", "", true);
        let up = format!("repository:{}:pull", "r".repeat(250));
        assert!(to_client(&hub, [up.as_str()]).is_empty());
    }

    #[test]
    fn client_scopes_are_strict() {
        let m = NameMap::new("", "p", false);
        assert_eq!(
            to_client(
                &m,
                ["registry:catalog:* repository:p/a:pull garbage repository:p/A:pull repository:p/a:pull<x> registry:https://up:* repository(x y):p/a:pull"]
            ),
            ["registry:catalog:*", "repository:a:pull"]
        );
    }

    #[test]
    fn malformed_scopes_pass_unchanged() {
        let m = NameMap::new("", "p", false);
        assert_eq!(to_upstream(&m, ["garbage"]), ["garbage"]);
    }
}
