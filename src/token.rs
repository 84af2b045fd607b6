//! The proxy's token endpoint: what a client asks for, and what the upstream's realm is asked.
//!
//! The request goes to the upstream's Bearer realm with scopes in upstream names, and the
//! realm's token comes back untouched: the proxy mints no token that grants anything. The one
//! token it makes itself, `anonymous`, stands for "no credentials" and is dropped on the way
//! upstream. Basic upstreams get no token endpoint at all: the proxy challenges with Basic
//! and forwards the client's credentials to the upstream with each request, so no token of
//! the proxy's making ever holds a credential, and none can be forged or replayed elsewhere.

use crate::names::NameMap;
use crate::scope;
use http::HeaderValue;
use url::form_urlencoded;

/// The token given where the upstream asks for no credentials and none were offered.
pub const ANONYMOUS_TOKEN: &str = "anonymous";
/// Lifetime the anonymous token claims (it never expires in effect: it grants nothing).
pub const ANONYMOUS_TOKEN_SECONDS: u64 = 300;
/// Largest token request form the proxy reads.
pub const MAX_FORM_BYTES: usize = 64 << 10;

/// Parameters a token request may carry to the realm (the distribution token spec and its
/// OAuth2 form); anything else a client adds goes nowhere.
const PARAMS: [&str; 10] = [
    "scope",
    "service",
    "account",
    "client_id",
    "offline_token",
    "grant_type",
    "username",
    "password",
    "refresh_token",
    "access_type",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// A POST form (containerd with credentials) rather than a GET query.
    pub form: bool,
    pub params: Vec<(String, String)>,
    /// The client's `Authorization` header, if Basic.
    pub basic: Option<HeaderValue>,
}

fn is_scheme(value: &HeaderValue, scheme: &str) -> bool {
    value.to_str().is_ok_and(|s| {
        s.len() > scheme.len() + 1
            && s[..scheme.len()].eq_ignore_ascii_case(scheme)
            && s.as_bytes()[scheme.len()] == b' '
    })
}

impl TokenRequest {
    pub fn new(form: bool, encoded: &[u8], authorization: Option<&HeaderValue>) -> Self {
        let params = form_urlencoded::parse(encoded)
            .into_owned()
            .filter(|(k, _)| PARAMS.contains(&k.as_str()))
            .collect();
        let basic = authorization.filter(|v| is_basic(v)).cloned();
        Self {
            form,
            params,
            basic,
        }
    }

    /// The same request as a client without credentials makes it: a GET with what names the
    /// token, and nothing of who asks.
    pub fn without_credentials(self) -> Self {
        let params = self
            .params
            .into_iter()
            .filter(|(k, _)| matches!(k.as_str(), "scope" | "service" | "client_id"))
            .collect();
        Self {
            form: false,
            params,
            basic: None,
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client sent credentials of any kind: they must reach a realm or be refused,
    /// never be dropped for an anonymous token.
    pub fn offers_credentials(&self) -> bool {
        self.basic.is_some()
            || matches!(self.get("grant_type"), Some("password" | "refresh_token"))
            || self.get("refresh_token").is_some()
            || self.get("password").is_some()
    }

    /// The name and secret a login presents: Basic credentials, or the form's (containerd
    /// POSTs `username` and `password`).
    pub fn login(&self) -> Option<(String, String)> {
        if let Some(basic) = &self.basic {
            let encoded = basic.to_str().ok()?.get(6..)?.trim();
            let pair = String::from_utf8(crate::base64::decode(encoded)?).ok()?;
            let (name, secret) = pair.split_once(':')?;
            return Some((name.to_string(), secret.to_string()));
        }
        Some((
            self.get("username")?.to_string(),
            self.get("password")?.to_string(),
        ))
    }

    /// The repositories the scopes name, in client names, each once.
    pub fn repositories(&self) -> Vec<String> {
        repositories(self.scopes())
    }

    /// The same request without the scopes that name one of `names`.
    pub fn without_repositories(self, names: &[String]) -> Self {
        let kept = |s: &&str| repository_of(s).is_none_or(|n| !names.iter().any(|x| x == n));
        let params = self
            .params
            .into_iter()
            .filter_map(|(k, v)| {
                if k != "scope" {
                    return Some((k, v));
                }
                let v = v
                    .split_whitespace()
                    .filter(kept)
                    .collect::<Vec<_>>()
                    .join(" ");
                (!v.is_empty()).then_some((k, v))
            })
            .collect();
        Self { params, ..self }
    }

    /// The first repository the scopes name, in client names, if it is a valid name.
    pub fn first_repository(&self) -> Option<String> {
        self.repositories()
            .into_iter()
            .next()
            .filter(|n| crate::endpoint::valid_name(n))
    }

    /// Parameters for the upstream realm: scopes mapped, `service` the upstream's own.
    fn upstream_params(&self, service: Option<&str>, names: &NameMap) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .params
            .iter()
            .filter(|(k, _)| k != "scope" && k != "service")
            .cloned()
            .collect();
        if let Some(s) = service {
            out.push(("service".into(), s.into()));
        }
        let scopes = scope::to_upstream(names, self.scopes());
        if self.form {
            if !scopes.is_empty() {
                out.push(("scope".into(), scopes.join(" ")));
            }
        } else {
            out.extend(scopes.into_iter().map(|s| ("scope".to_string(), s)));
        }
        out
    }

    /// The GET URL for the upstream realm, keeping any query the realm already has.
    pub fn upstream_url(
        &self,
        realm: &url::Url,
        service: Option<&str>,
        names: &NameMap,
    ) -> url::Url {
        let mut url = realm.clone();
        let params = self.upstream_params(service, names);
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params);
        }
        url
    }

    /// The POST form for the upstream realm.
    pub fn upstream_form(&self, service: Option<&str>, names: &NameMap) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.upstream_params(service, names))
            .finish()
    }
}

/// The repository a scope names (`repository:name:pull`, `repository(plugin):name:pull`).
fn repository_of(scope: &str) -> Option<&str> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, _) = rest.rsplit_once(':')?;
    (kind == "repository" || kind.starts_with("repository(")).then_some(name)
}

/// The repositories scopes (each several, space-separated) name, each once.
pub fn repositories<'a>(scopes: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in scopes
        .flat_map(str::split_whitespace)
        .filter_map(repository_of)
    {
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

/// Whether a query or form decodes to UTF-8: `form_urlencoded` replaces what does not, and a
/// password sent on with its bytes replaced would fail upstream as a wrong one.
pub fn decodes_to_utf8(encoded: &[u8]) -> bool {
    let plain: Vec<u8> = percent_encoding::percent_decode(encoded).collect();
    std::str::from_utf8(&plain).is_ok()
}

pub fn is_basic(value: &HeaderValue) -> bool {
    is_scheme(value, "basic")
}

/// The token of a Bearer `Authorization`.
pub fn bearer_token(value: Option<&HeaderValue>) -> Option<&str> {
    let value = value.filter(|v| is_scheme(v, "bearer"))?;
    Some(value.to_str().ok()?[7..].trim()).filter(|t| !t.is_empty())
}

/// The `Authorization` to send upstream for what the client sent: Basic credentials and
/// Bearer tokens (the upstream realm's own) pass, a marked anonymous token as the realm's
/// token it carries; the proxy's `anonymous` token, its users' tokens (for the proxy alone,
/// whichever route they are shown) and other schemes do not.
pub fn upstream_authorization(client: Option<&HeaderValue>) -> Option<HeaderValue> {
    let value = client?;
    if is_basic(value) {
        return Some(value.clone());
    }
    let token = bearer_token(Some(value))?;
    if let Some(marked) = crate::anonymous_token::Marked::parse(token) {
        return HeaderValue::from_str(&format!("Bearer {}", marked.token)).ok();
    }
    let the_proxy_s = token == ANONYMOUS_TOKEN || crate::proxy_token::is_own(token);
    (!the_proxy_s).then(|| value.clone())
}

/// The anonymous token response, shaped as registries send theirs.
pub fn anonymous_token_json() -> Vec<u8> {
    let v = serde_json::json!({
        "token": ANONYMOUS_TOKEN,
        "access_token": ANONYMOUS_TOKEN,
        "expires_in": ANONYMOUS_TOKEN_SECONDS,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> NameMap {
        NameMap::new("", "team/app", false)
    }

    #[test]
    fn get_with_many_scopes_keeps_realm_query() {
        let r = TokenRequest::new(false, b"account=alice&service=proxy.example&scope=repository:web:pull&scope=repository:db:pull&evil=1", None);
        let realm = url::Url::parse("https://auth.example/token?x=1").unwrap();
        let u = r.upstream_url(&realm, Some("registry.example"), &names());
        assert_eq!(
            u.as_str(),
            "https://auth.example/token?x=1&account=alice&service=registry.example&scope=repository%3Ateam%2Fapp%2Fweb%3Apull&scope=repository%3Ateam%2Fapp%2Fdb%3Apull"
        );
        assert_eq!(r.first_repository().as_deref(), Some("web"));
        assert!(!r.offers_credentials());
    }

    #[test]
    fn get_without_scope_is_docker_login() {
        let auth = HeaderValue::from_static("Basic YWxpY2U6czNjcmV0");
        let r = TokenRequest::new(
            false,
            b"account=alice&client_id=docker&offline_token=true&service=p",
            Some(&auth),
        );
        let realm = url::Url::parse("https://auth.example/token").unwrap();
        let u = r.upstream_url(&realm, Some("reg"), &names());
        assert_eq!(
            u.query(),
            Some("account=alice&client_id=docker&offline_token=true&service=reg")
        );
        assert!(r.offers_credentials());
        assert_eq!(r.first_repository(), None);
    }

    #[test]
    fn post_form_space_separated_scopes() {
        let r = TokenRequest::new(
            true,
            b"grant_type=password&username=alice&password=s3cret&scope=repository%3Aweb%3Apull+repository%3Ateam%2Fapp%2Fweb%3Apull&service=p&client_id=containerd-client",
            None,
        );
        assert_eq!(
            r.upstream_form(Some("reg"), &names()),
            "grant_type=password&username=alice&password=s3cret&client_id=containerd-client&service=reg&scope=repository%3Ateam%2Fapp%2Fweb%3Apull+repository%3Ateam%2Fapp%2Fteam%2Fapp%2Fweb%3Apull"
        );
        assert!(r.offers_credentials());
        let refresh = TokenRequest::new(true, b"grant_type=refresh_token&refresh_token=x", None);
        assert!(refresh.offers_credentials());
    }

    #[test]
    fn only_forms_that_decode_to_utf8() {
        assert!(decodes_to_utf8(b"username=b%C3%B6b&password=p%2Bw+x"));
        assert!(decodes_to_utf8("password=b\u{f6}b".as_bytes()));
        assert!(decodes_to_utf8(b"password=100%"));
        assert!(!decodes_to_utf8(b"username=bob&password=b%F6b"));
        assert!(!decodes_to_utf8(b"password=b\xf6b"));
        assert!(!decodes_to_utf8(b"p%C3=x"));
    }

    #[test]
    fn logins_from_basic_or_the_form() {
        let basic = HeaderValue::from_static("Basic YWxpY2U6czNjcmV0");
        let r = TokenRequest::new(false, b"scope=x", Some(&basic));
        assert_eq!(r.login(), Some(("alice".into(), "s3cret".into())));
        let form = TokenRequest::new(
            true,
            b"grant_type=password&username=bob&password=p%3Aw",
            None,
        );
        assert_eq!(form.login(), Some(("bob".into(), "p:w".into())));
        assert_eq!(TokenRequest::new(false, b"scope=x", None).login(), None);
        let bad = HeaderValue::from_static("Basic !!!");
        assert_eq!(TokenRequest::new(false, b"", Some(&bad)).login(), None);
    }

    #[test]
    fn authorization_mapping() {
        let basic = HeaderValue::from_static("Basic YWxpY2U6czNjcmV0");
        assert_eq!(upstream_authorization(Some(&basic)).unwrap(), basic);
        let anon = HeaderValue::from_static("Bearer anonymous");
        assert_eq!(upstream_authorization(Some(&anon)), None);
        let jwt = HeaderValue::from_static("Bearer eyJ.x.y");
        assert_eq!(upstream_authorization(Some(&jwt)).unwrap(), jwt);
        let marked = HeaderValue::from_static(
            "Bearer srp-anonymous.000102030405060708090a0b0c0d0e0f.eyJ.x.y",
        );
        assert_eq!(upstream_authorization(Some(&marked)).unwrap(), jwt);
        let other = HeaderValue::from_static("Negotiate abc");
        assert_eq!(upstream_authorization(Some(&other)), None);
        assert_eq!(upstream_authorization(None), None);
    }

    #[test]
    fn anonymous_token_grants_nothing_and_holds_nothing() {
        let v: serde_json::Value = serde_json::from_slice(&anonymous_token_json()).unwrap();
        assert_eq!(v["token"], ANONYMOUS_TOKEN);
        assert!(v.get("refresh_token").is_none());
    }
}
