//! `WWW-Authenticate` challenges (RFC 7235): several per header, parameters in any order,
//! quoted strings with escapes; and the one challenge the proxy sends in their place.

use crate::names::NameMap;
use crate::origin::Origin;
use crate::scope;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-cased: `bearer`, `basic`, ...
    pub scheme: String,
    /// Names lower-cased, values unquoted, in the order sent.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn bearer(params: Vec<(String, String)>) -> Self {
        Self {
            scheme: "bearer".into(),
            params,
        }
    }

    /// `Bearer realm="...",service="..."`: every value quoted, as registries send them.
    pub fn render(&self) -> String {
        let mut scheme = self.scheme.clone();
        if let Some(first) = scheme.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(n, v)| format!("{n}={}", quote(v)))
            .collect();
        format!("{scheme} {}", params.join(","))
    }
}

fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn skip(&mut self, chars: &[u8]) {
        while self.i < self.s.len() && chars.contains(&self.s[self.i]) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn token(&mut self) -> &'a str {
        let start = self.i;
        while self.i < self.s.len() && is_tchar(self.s[self.i]) {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default()
    }

    fn quoted(&mut self) -> String {
        // Precondition: at the opening quote.
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                _ => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Parses every challenge in one header value; what cannot be parsed is skipped.
pub fn parse(header: &str) -> Vec<Challenge> {
    let mut c = Cursor {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        c.skip(b" \t,");
        if c.peek().is_none() {
            break;
        }
        let scheme = c.token().to_ascii_lowercase();
        if scheme.is_empty() {
            c.i += 1; // not a token character: skip it
            continue;
        }
        let mut params = Vec::new();
        loop {
            let save = c.i;
            c.skip(b" \t,");
            let name = c.token();
            c.skip(b" \t");
            if name.is_empty() || c.peek() != Some(b'=') {
                c.i = save; // the next challenge's scheme, or the end
                break;
            }
            c.i += 1;
            c.skip(b" \t");
            let value = match c.peek() {
                Some(b'"') => c.quoted(),
                _ => c.token().to_string(),
            };
            if value.is_empty() && c.peek() == Some(b'=') {
                // token68 (`Basic abc==`): consume the padding, keep nothing.
                c.skip(b"=");
                continue;
            }
            params.push((name.to_ascii_lowercase(), value));
        }
        out.push(Challenge { scheme, params });
    }
    out
}

/// Every challenge in every `WWW-Authenticate` header of a response.
pub fn from_headers(headers: &http::HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse)
        .collect()
}

/// How the proxy asks a client to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyScheme {
    /// Bearer tokens from the proxy's own token endpoint, which gets them from the upstream's.
    Bearer,
    /// The upstream takes Basic credentials with each request: the proxy asks for them the
    /// same way and forwards them to the upstream only. No token of the proxy's making ever
    /// carries a credential.
    Basic,
}

/// The error values RFC 6750 defines: anything else an upstream says stays home.
const BEARER_ERRORS: [&str; 3] = ["invalid_request", "invalid_token", "insufficient_scope"];

/// Basic when the upstream challenges with Basic only; Bearer otherwise (including when the
/// upstream sent no challenge, or one the proxy cannot read).
pub fn proxy_scheme(upstream: &[Challenge]) -> ProxyScheme {
    let basic = upstream.iter().any(|c| c.scheme == "basic");
    let bearer = upstream.iter().any(|c| c.scheme == "bearer");
    if basic && !bearer {
        ProxyScheme::Basic
    } else {
        ProxyScheme::Bearer
    }
}

/// The query parameter of the proxy's realm, on a host several routes serve, that names the
/// scope the challenge carried. containerd and BuildKit keep a host's first challenge and merge
/// its scope into every later token request (`GetTokenScopes`): a pull from another route then
/// asks for scopes of two routes, and the token endpoint lets the one named here give way.
pub const CHALLENGE_SCOPE: &str = "challenge_scope";

/// Adds the challenge's scope to its realm (see `CHALLENGE_SCOPE`).
pub fn name_scope_in_realm(c: &mut Challenge) {
    let Some(scope) = c.param("scope").map(String::from) else {
        return;
    };
    if let Some((_, realm)) = c.params.iter_mut().find(|(n, _)| n == "realm") {
        let separator = if realm.contains('?') { '&' } else { '?' };
        let value: String = url::form_urlencoded::byte_serialize(scope.as_bytes()).collect();
        realm.push_str(&format!("{separator}{CHALLENGE_SCOPE}={value}"));
    }
}

/// The proxy's Basic challenge: its own host is the realm.
pub fn basic(public: &Origin) -> Challenge {
    Challenge {
        scheme: "basic".into(),
        params: vec![("realm".into(), public.authority())],
    }
}

/// The only challenge a client ever sees: the proxy's, for a response whose upstream
/// challenges were `upstream`. A Bearer challenge names the proxy's token endpoint and carries
/// the upstream Bearer challenge's scope in client names (`fallback_scope` when it has none
/// the client may see) and its RFC 6750 error.
pub fn proxy_challenge(
    upstream: &[Challenge],
    realm: &str,
    public: &Origin,
    names: &NameMap,
    fallback_scope: Option<String>,
) -> Challenge {
    if proxy_scheme(upstream) == ProxyScheme::Basic {
        return basic(public);
    }
    let bearer = upstream.iter().find(|c| c.scheme == "bearer");
    let mut params = vec![
        ("realm".to_string(), realm.to_string()),
        ("service".to_string(), public.authority()),
    ];
    let mut scopes = bearer
        .and_then(|b| b.param("scope"))
        .map(|s| scope::to_client(names, [s]))
        .unwrap_or_default();
    if scopes.is_empty() {
        scopes.extend(fallback_scope);
    }
    if !scopes.is_empty() {
        params.push(("scope".into(), scopes.join(" ")));
    }
    if let Some(e) = bearer
        .and_then(|b| b.param("error"))
        .filter(|e| BEARER_ERRORS.contains(e))
    {
        params.push(("error".into(), e.into()));
    }
    Challenge::bearer(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_challenge() {
        let v = parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].scheme, "bearer");
        assert_eq!(v[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(v[0].param("service"), Some("registry.docker.io"));
        assert_eq!(v[0].param("scope"), Some("repository:library/alpine:pull"));
    }

    #[test]
    fn several_challenges_any_order_and_escapes() {
        let v = parse(
            r#"Basic realm="quay.io", Bearer service="quay.io", scope="repository:a/b:pull,push" , realm="https://quay.io/v2/auth", error=insufficient_scope"#,
        );
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].scheme, "basic");
        assert_eq!(v[0].param("realm"), Some("quay.io"));
        assert_eq!(v[1].param("realm"), Some("https://quay.io/v2/auth"));
        assert_eq!(v[1].param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(v[1].param("error"), Some("insufficient_scope"));
        let v = parse(r#"Bearer realm="a\"b\\c""#);
        assert_eq!(v[0].param("realm"), Some(r#"a"b\c"#));
    }

    #[test]
    fn regex_trap_realm_inside_another_value() {
        // A regex over realm="..." would pick the first occurrence, inside `error_description`.
        let v = parse(r#"Bearer error_description="bad realm=\"x\"", realm="https://r/token""#);
        assert_eq!(v[0].param("realm"), Some("https://r/token"));
    }

    #[test]
    fn token68_and_bare_schemes() {
        let v = parse("Negotiate, Basic abc==, Bearer realm=\"r\"");
        let schemes: Vec<_> = v.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["negotiate", "basic", "bearer"]);
        assert_eq!(v[2].param("realm"), Some("r"));
    }

    fn origin() -> Origin {
        Origin::parse("https://images.example.com").unwrap()
    }

    #[test]
    fn proxy_challenge_bearer_in_client_names() {
        let names = NameMap::new("", "team", false);
        let up = parse(
            r#"Bearer realm="https://auth.up/token",service="up",scope="repository:team/web:pull",error="insufficient_scope""#,
        );
        let c = proxy_challenge(
            &up,
            "https://images.example.com/token",
            &origin(),
            &names,
            None,
        );
        assert_eq!(
            c.render(),
            r#"Bearer realm="https://images.example.com/token",service="images.example.com",scope="repository:web:pull",error="insufficient_scope""#
        );
    }

    #[test]
    fn proxy_challenge_never_repeats_what_the_upstream_made_up() {
        let names = NameMap::new("", "team", false);
        let up = parse(
            r#"Bearer realm="https://auth.up/token",scope="repository:other/x:pull https://up.example/x",error="see https://up.example""#,
        );
        let c = proxy_challenge(
            &up,
            "https://images.example.com/token",
            &origin(),
            &names,
            Some("repository:web:pull".into()),
        );
        let r = c.render();
        assert!(!r.contains("up.example") && !r.contains("other"), "{r}");
        assert_eq!(c.param("scope"), Some("repository:web:pull"));
        assert_eq!(c.param("error"), None);
    }

    #[test]
    fn proxy_challenge_basic_only_for_basic_upstreams() {
        let names = NameMap::default();
        let basic = parse(r#"Basic realm="upstream-realm""#);
        let c = proxy_challenge(
            &basic,
            "https://images.example.com/token",
            &origin(),
            &names,
            None,
        );
        assert_eq!(c.render(), r#"Basic realm="images.example.com""#);
        let quay = parse(r#"Basic realm="quay.io", Bearer realm="https://quay.io/v2/auth""#);
        assert_eq!(proxy_scheme(&quay), ProxyScheme::Bearer);
        assert_eq!(proxy_scheme(&[]), ProxyScheme::Bearer);
    }

    #[test]
    fn render_round_trips() {
        let c = Challenge::bearer(vec![
            ("realm".into(), "http://p/token".into()),
            ("scope".into(), "repository:a\"b:pull".into()),
        ]);
        let s = c.render();
        assert_eq!(
            s,
            r#"Bearer realm="http://p/token",scope="repository:a\"b:pull""#
        );
        assert_eq!(parse(&s), vec![c]);
    }
}
