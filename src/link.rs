//! `Link` headers (RFC 8288): `<url>; rel="next"`, possibly several, comma-separated.

/// The link's relation types, if it has a `rel` parameter of plain words. Every other
/// parameter (`anchor`, `title`, ...) can carry any text an upstream puts there.
fn relation(params: &str) -> Option<String> {
    params.split(';').find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("rel") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        let plain = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" .-_".contains(&b));
        plain.then(|| value.to_string())
    })
}

/// Rewrites each link's target with `f` and keeps only its `rel`; a link whose target maps to
/// `None` is dropped. Returns `None` when no link is left.
pub fn rewrite(value: &str, mut f: impl FnMut(&str) -> Option<String>) -> Option<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>').map(|c| open + c) else {
            break;
        };
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        let end = after.find('<').unwrap_or(after.len());
        if let Some(t) = f(target) {
            match relation(after[..end].trim().trim_end_matches(',')) {
                Some(rel) => out.push(format!("<{t}>; rel=\"{rel}\"")),
                None => out.push(format!("<{t}>")),
            }
        }
        rest = &after[end..];
    }
    (!out.is_empty()).then(|| out.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_every_target_and_keeps_rel() {
        let v = r#"</v2/p/a/tags/list?last=b&n=2>; rel="next", <https://x/y>; rel=prev"#;
        let out = rewrite(v, |t| Some(t.replace("/p/", "/"))).unwrap();
        assert_eq!(
            out,
            r#"</v2/a/tags/list?last=b&n=2>; rel="next", <https://x/y>; rel="prev""#
        );
    }

    #[test]
    fn other_parameters_never_pass() {
        let v = r#"</v2/a/tags/list>; anchor="http://upstream.example/x"; rel="next"; title="upstream.example""#;
        assert_eq!(
            rewrite(v, |t| Some(t.to_string())).unwrap(),
            r#"</v2/a/tags/list>; rel="next""#
        );
        let v = "</v2/a/tags/list>\u{3}127.0.0.1:5000";
        assert_eq!(
            rewrite(v, |t| Some(t.to_string())).unwrap(),
            "</v2/a/tags/list>"
        );
    }

    #[test]
    fn drops_links_the_mapper_rejects() {
        assert_eq!(rewrite(r#"</a>; rel="next""#, |_| None), None);
        assert_eq!(rewrite("garbage", |t| Some(t.to_string())), None);
    }
}
