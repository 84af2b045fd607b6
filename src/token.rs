//! The proxy's token endpoint: what a client asks for, and what the upstream's realm is asked.
//!
//! Bearer upstreams: the request is forwarded to the upstream's realm with scopes in upstream
//! names, and its token comes back untouched. Basic (htpasswd) upstreams: the credentials are
//! checked against the upstream and handed back wrapped as a bearer token, which the proxy
//! unwraps into `Authorization: Basic` on the way upstream.

use crate::names::NameMap;
use crate::scope;
use http::HeaderValue;
use url::form_urlencoded;

/// Prefix of a token that carries Basic credentials for a Basic upstream.
const BASIC_TOKEN_PREFIX: &str = "pxb.";
/// The token given where the upstream asks for no credentials, or none were offered.
pub const ANONYMOUS_TOKEN: &str = "anonymous";
/// Lifetime of the tokens the proxy issues itself.
pub const ISSUED_TOKEN_SECONDS: u64 = 300;
/// Largest token request form the proxy reads.
pub const MAX_FORM_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// A POST form (containerd with credentials) rather than a GET query.
    pub form: bool,
    pub params: Vec<(String, String)>,
    /// The client's `Authorization` header, if Basic.
    pub basic: Option<HeaderValue>,
}

impl TokenRequest {
    pub fn new(form: bool, encoded: &[u8], authorization: Option<&HeaderValue>) -> Self {
        let params = form_urlencoded::parse(encoded).into_owned().collect();
        let basic = authorization
            .filter(|v| {
                v.to_str()
                    .is_ok_and(|s| s.len() > 6 && s[..6].eq_ignore_ascii_case("basic "))
            })
            .cloned();
        Self {
            form,
            params,
            basic,
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
        url.query_pairs_mut()
            .extend_pairs(self.upstream_params(service, names));
        url
    }

    /// The POST form for the upstream realm.
    pub fn upstream_form(&self, service: Option<&str>, names: &NameMap) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.upstream_params(service, names))
            .finish()
    }

    /// Base64 `user:password` the client offered, in whichever way it offered them.
    pub fn basic_credentials(&self) -> Option<String> {
        if let Some(v) = &self.basic {
            return v.to_str().ok().map(|s| s[6..].trim().to_string());
        }
        match self.get("grant_type") {
            Some("password") => {
                let user = self.get("username")?;
                let pass = self.get("password")?;
                Some(base64(format!("{user}:{pass}").as_bytes()))
            }
            Some("refresh_token") => self
                .get("refresh_token")?
                .strip_prefix(BASIC_TOKEN_PREFIX)
                .map(String::from),
            _ => None,
        }
    }
}

/// The bearer token that stands for Basic credentials.
pub fn wrap_basic(b64: &str) -> String {
    format!("{BASIC_TOKEN_PREFIX}{b64}")
}

/// The `Authorization` to send upstream for what the client sent: wrapped Basic credentials
/// unwrapped, the anonymous token dropped, anything else verbatim.
pub fn upstream_authorization(client: Option<&HeaderValue>) -> Option<HeaderValue> {
    let value = client?;
    let Some(token) = value.to_str().ok().and_then(|s| {
        (s.len() > 7 && s[..7].eq_ignore_ascii_case("bearer ")).then(|| s[7..].trim())
    }) else {
        return Some(value.clone());
    };
    if token == ANONYMOUS_TOKEN {
        return None;
    }
    match token.strip_prefix(BASIC_TOKEN_PREFIX) {
        Some(b64) => HeaderValue::from_str(&format!("Basic {b64}")).ok(),
        None => Some(value.clone()),
    }
}

/// A token response as registries send it; a refresh token lets containerd renew it.
pub fn token_json(token: &str, refresh: bool, issued_at: Option<&str>) -> Vec<u8> {
    let mut v = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": ISSUED_TOKEN_SECONDS,
    });
    if let Some(t) = issued_at {
        v["issued_at"] = t.into();
    }
    if refresh {
        v["refresh_token"] = token.into();
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> NameMap {
        NameMap::new("team/app", false)
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("alice:s3cret", "YWxpY2U6czNjcmV0"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn get_with_many_scopes_keeps_realm_query() {
        let r = TokenRequest::new(false, b"account=alice&service=proxy.example&scope=repository:web:pull&scope=repository:db:pull", None);
        let realm = url::Url::parse("https://auth.example/token?x=1").unwrap();
        let u = r.upstream_url(&realm, Some("registry.example"), &names());
        assert_eq!(
            u.as_str(),
            "https://auth.example/token?x=1&account=alice&service=registry.example&scope=repository%3Ateam%2Fapp%2Fweb%3Apull&scope=repository%3Ateam%2Fapp%2Fdb%3Apull"
        );
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
        assert_eq!(r.basic_credentials().as_deref(), Some("YWxpY2U6czNjcmV0"));
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
        assert_eq!(r.basic_credentials().as_deref(), Some("YWxpY2U6czNjcmV0"));
    }

    #[test]
    fn refresh_grant_with_a_wrapped_token() {
        let r = TokenRequest::new(
            true,
            b"grant_type=refresh_token&refresh_token=pxb.YWxpY2U6czNjcmV0",
            None,
        );
        assert_eq!(r.basic_credentials().as_deref(), Some("YWxpY2U6czNjcmV0"));
        let r = TokenRequest::new(
            true,
            b"grant_type=refresh_token&refresh_token=upstream-token",
            None,
        );
        assert_eq!(r.basic_credentials(), None);
    }

    #[test]
    fn authorization_mapping() {
        let wrapped =
            HeaderValue::from_str(&format!("Bearer {}", wrap_basic("YWxpY2U6czNjcmV0"))).unwrap();
        assert_eq!(
            upstream_authorization(Some(&wrapped)).unwrap(),
            "Basic YWxpY2U6czNjcmV0"
        );
        let anon = HeaderValue::from_static("Bearer anonymous");
        assert_eq!(upstream_authorization(Some(&anon)), None);
        let jwt = HeaderValue::from_static("Bearer eyJ.x.y");
        assert_eq!(
            upstream_authorization(Some(&jwt)).unwrap(),
            "Bearer eyJ.x.y"
        );
        assert_eq!(upstream_authorization(None), None);
    }

    #[test]
    fn issued_token_json() {
        let v: serde_json::Value =
            serde_json::from_slice(&token_json("pxb.x", true, None)).unwrap();
        assert_eq!(v["token"], "pxb.x");
        assert_eq!(v["access_token"], "pxb.x");
        assert_eq!(v["refresh_token"], "pxb.x");
        assert_eq!(v["expires_in"], 300);
    }
}
