//! Repository patterns, as route allow/deny lists and users' grants name repositories: globs
//! over client-side names (`team/*`, `tools/**`, `web`), where `*` stands for any text within
//! one path segment and `**` for any text across segments (`team/**` is every repository under
//! `team/`, however deep; `**` alone is every repository).

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern of repository-name characters and `*`; `None` for anything else (an empty
    /// pattern, a `***`, characters no repository name has).
    pub fn parse(text: &str) -> Option<Self> {
        let ok = !text.is_empty()
            && text.len() <= 255
            && !text.contains("***")
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*".contains(&b));
        ok.then(|| Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }

    /// Whether the pattern matches some name under `path/` (a route's path: every name its
    /// clients use starts so): some start of it matches `path/` exactly, and the rest can
    /// stand for more.
    pub fn can_match_under(&self, path: &str) -> bool {
        let p = self.0.as_bytes();
        let under = format!("{path}/");
        (0..=p.len()).any(|k| {
            let more = k < p.len() || p.ends_with(b"**");
            more && glob(&p[..k], under.as_bytes())
        })
    }
}

/// Matching that backtracks only to the last `**` and the last `*` after it: between two
/// `**`, the literal `/`s fix which segment each `*` stays in, so the classic greedy rule holds
/// segment by segment. At most quadratic in the name's length (under 256), whatever the
/// pattern.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where to resume: (pattern index after the star, name index it absorbs from).
    let mut deep: Option<(usize, usize)> = None;
    let mut shallow: Option<(usize, usize)> = None;
    while n < name.len() {
        if pattern.get(p) == Some(&b'*') {
            if pattern.get(p + 1) == Some(&b'*') {
                p += 2;
                deep = Some((p, n));
                shallow = None;
            } else {
                p += 1;
                shallow = Some((p, n));
            }
            continue;
        }
        if pattern.get(p) == Some(&name[n]) {
            p += 1;
            n += 1;
            continue;
        }
        if let Some((sp, sn)) = shallow.filter(|&(_, sn)| name[sn] != b'/') {
            shallow = Some((sp, sn + 1));
            (p, n) = (sp, sn + 1);
        } else if let Some((dp, dn)) = deep {
            deep = Some((dp, dn + 1));
            shallow = None;
            (p, n) = (dp, dn + 1);
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Pattern::parse(&text).ok_or_else(|| {
            serde::de::Error::custom("a repository pattern: lower-case name characters and '*'")
        })
    }
}

/// Whether any of `patterns` matches `name`.
pub fn any(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Pattern::parse(p).unwrap().matches(n)
    }

    #[test]
    fn a_pattern_under_a_route_s_path_starts_with_it_or_stands_for_it() {
        let under = |p: &str| Pattern::parse(p).unwrap().can_match_under("priv");
        for p in [
            "priv/*", "priv/app", "priv/**", "**", "*/app", "pr*/x", "p**", "**/x",
        ] {
            assert!(under(p), "{p}");
        }
        for p in ["secret*", "app", "priv", "pub/*", "p*", "priv/"] {
            assert!(!under(p), "{p}");
        }
        let deep = Pattern::parse("team/*/x").unwrap();
        assert!(deep.can_match_under("team/a") && !deep.can_match_under("other/a"));
    }

    #[test]
    fn stars_stay_in_their_segment_and_double_stars_cross() {
        assert!(m("web", "web"));
        assert!(!m("web", "web2"));
        assert!(m("team/*", "team/app"));
        assert!(!m("team/*", "team/app/sub"));
        assert!(!m("team/*", "team"));
        assert!(m("team/**", "team/app/sub"));
        assert!(m("**", "a/b/c"));
        assert!(m("*", "alpine"));
        assert!(!m("*", "library/alpine"));
        assert!(m("team/*-dev", "team/web-dev"));
        assert!(!m("team/*-dev", "team/web-prod"));
        assert!(m("*/secret*", "team/secrets"));
        assert!(m("a/**/z", "a/b/c/z"));
        assert!(!m("a/**/z", "a/b/c/y"));
        assert!(m("a*b*c", "aXbYc"));
        assert!(!m("a*b*c", "aXbY/c"));
    }

    /// The obvious recursive matcher (exponential, so only for short inputs).
    fn reference(p: &[u8], n: &[u8]) -> bool {
        match p {
            [] => n.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=n.len()).any(|i| reference(rest, &n[i..])),
            [b'*', rest @ ..] => (0..=n.len())
                .take_while(|&i| i == 0 || n[i - 1] != b'/')
                .any(|i| reference(rest, &n[i..])),
            [c, rest @ ..] => n.first() == Some(c) && reference(rest, &n[1..]),
        }
    }

    #[test]
    fn agrees_with_the_obvious_matcher() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |k: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % k) as usize
        };
        for _ in 0..20_000 {
            let p: String = (0..next(7))
                .map(|_| ["a", "b", "/", "*", "**"][next(5)])
                .collect();
            let n: String = (0..next(8)).map(|_| ["a", "b", "/"][next(3)]).collect();
            let Some(pat) = Pattern::parse(&p) else {
                continue;
            };
            assert_eq!(
                pat.matches(&n),
                reference(p.as_bytes(), n.as_bytes()),
                "{p} {n}"
            );
        }
    }

    #[test]
    fn bad_patterns_are_refused_and_none_is_slow() {
        for bad in ["", "***", "Team/*", "a b", "a\u{0}"] {
            assert!(Pattern::parse(bad).is_none(), "{bad:?}");
        }
        let p = Pattern::parse(&"*a".repeat(60)).unwrap();
        let name = "a".repeat(250) + "b";
        let t = std::time::Instant::now();
        assert!(!p.matches(&name));
        assert!(t.elapsed() < std::time::Duration::from_millis(50));
    }
}
