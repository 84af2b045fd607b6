//! `Link` headers (RFC 8288): `<url>; rel="next"`, possibly several, comma-separated.

/// Rewrites each link's target with `f`; a link whose target maps to `None` is dropped.
/// Returns `None` when no link is left.
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
        let params = after[..end].trim().trim_end_matches(',').trim_end();
        if let Some(t) = f(target) {
            out.push(format!("<{t}>{params}"));
        }
        rest = &after[end..];
    }
    (!out.is_empty()).then(|| out.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_every_target_and_keeps_params() {
        let v = r#"</v2/p/a/tags/list?last=b&n=2>; rel="next", <https://x/y>; rel="prev""#;
        let out = rewrite(v, |t| Some(t.replace("/p/", "/"))).unwrap();
        assert_eq!(
            out,
            r#"</v2/a/tags/list?last=b&n=2>; rel="next", <https://x/y>; rel="prev""#
        );
    }

    #[test]
    fn drops_links_the_mapper_rejects() {
        assert_eq!(rewrite(r#"</a>; rel="next""#, |_| None), None);
        assert_eq!(rewrite("garbage", |t| Some(t.to_string())), None);
    }
}
