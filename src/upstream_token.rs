//! The proxy's own upstream tokens, for a route with credentials: how it asks the realm, and
//! how it keeps what it learned in the key-value store so that many pulls, and many instances
//! sharing a store, cost the realm one token request per scope and lifetime.
//!
//! Keys are hashed (Fermyon Cloud allows 255 bytes a key) over the route's account (a digest of
//! its upstream, realms and credentials, see `Route::account`) and the scope: a token is only
//! ever used for the account and scope it was issued for, and a changed password never finds
//! the old one. Values hold no credential, only the realm's token.

use crate::challenge::Challenge;
use crate::error::OciError;
use crate::routes::{Credentials, Route};
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

/// A token is no longer used this many seconds before it expires.
pub const MARGIN_SECONDS: u64 = 20;
/// What a realm's token lives when the answer does not say (the token spec's default).
pub const DEFAULT_EXPIRES_IN: u64 = 60;
/// The longest a token is kept, whatever the realm says: a day.
const MAX_LIFETIME: u64 = 86_400;
/// Largest realm answer the proxy reads.
pub const MAX_TOKEN_BODY: usize = 64 << 10;

/// A realm's answer without a token (a login page, a captive portal, `{}`): the token service
/// failing, in the proxy's words, never its own.
pub fn missing(who: &str, cause: &str) -> OciError {
    OciError::unavailable(StatusCode::BAD_GATEWAY, format!("{who} sent no token")).because(cause)
}

/// Where the route's upstream asks its account for credentials.
pub fn realm_key(route: &Route) -> String {
    let account = route.account().unwrap_or_default();
    format!(
        "spin-registry-proxy:realm:{}",
        crate::digest::of_parts(&["realm", &account])
    )
}

/// The identity of the route's token for `scope`. Tokens are kept in buckets like the other
/// entries: a client names any scope it likes, and each would be a key of its own.
pub fn token_identity(route: &Route, scope: &str) -> String {
    let account = route.account().unwrap_or_default();
    crate::digest::of_parts(&["token", &account, scope])
}

/// How an upstream authenticates, as learned from its challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "lowercase")]
pub enum Realm {
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Basic,
}

impl Realm {
    /// From an upstream's challenges; `None` when it names neither scheme usably.
    pub fn from_challenges(challenges: &[Challenge]) -> Option<Realm> {
        if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = b.param("realm").filter(|r| url::Url::parse(r).is_ok())?;
            return Some(Realm::Bearer {
                realm: realm.to_string(),
                service: b.param("service").map(String::from),
            });
        }
        challenges
            .iter()
            .any(|c| c.scheme == "basic")
            .then_some(Realm::Basic)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Realm> {
        serde_json::from_slice(bytes).ok()
    }

    /// The realm's URL for a token for `scope` (`None` for Basic, or a realm that is no URL).
    pub fn token_url(&self, scope: Option<&str>) -> Option<url::Url> {
        let Realm::Bearer { realm, service } = self else {
            return None;
        };
        let mut url = url::Url::parse(realm).ok()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            // One parameter per scope, as docker and containerd ask: a token server need not
            // split one on spaces (a mount's names two repositories).
            for s in scope.into_iter().flat_map(str::split_whitespace) {
                q.append_pair("scope", s);
            }
        }
        Some(url)
    }
}

/// `Authorization` for the route's credentials: Basic for the realm (or a Basic upstream),
/// Bearer for a token the registry takes as it is.
pub fn authorization(credentials: &Credentials) -> Option<HeaderValue> {
    match credentials {
        Credentials::Basic { username, password } => HeaderValue::from_str(&format!(
            "Basic {}",
            crate::base64::encode(format!("{username}:{password}").as_bytes())
        ))
        .ok(),
        Credentials::Token(t) => HeaderValue::from_str(&format!("Bearer {t}")).ok(),
    }
}

pub fn bearer(token: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("Bearer {token}")).ok()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub token: String,
    /// Unix seconds after which it is no longer used.
    pub until: u64,
}

impl Token {
    /// The realm's answer (`token` or `access_token`, `expires_in`), received at `now`. A
    /// non-empty `access_token` wins, as docker's and containerd's clients take it: the token
    /// the proxy uses (or hands out) is the one they would.
    pub fn from_response(body: &[u8], now: u64) -> Option<Token> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let named = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
        let token = named("access_token")
            .filter(|t| !t.is_empty())
            .or_else(|| named("token"))
            .filter(|t| !t.is_empty() && HeaderValue::from_str(&format!("Bearer {t}")).is_ok())?;
        let lifetime = v
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(DEFAULT_EXPIRES_IN);
        Some(Token {
            token: token.to_string(),
            until: now.saturating_add(lifetime.min(MAX_LIFETIME).saturating_sub(MARGIN_SECONDS)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::Origin;
    use crate::routes::BlobRedirect;
    use std::time::Duration;

    fn route(username: &str, password: &str) -> Route {
        let upstream = Origin::parse("https://ghcr.io").unwrap();
        Route {
            name: "r".into(),
            hosts: vec![],
            path: String::new(),
            mirrors: vec![],
            ns_only: false,
            upstream,
            auth: vec![],
            cdn: vec![],
            prefix: String::new(),
            library: false,
            catalog: false,
            blob_redirect: BlobRedirect::Pass,
            timeout: Duration::from_secs(25),
            tag_ttl: 60,
            credentials: Some(Credentials::Basic {
                username: username.into(),
                password: password.into(),
            }),
            access: crate::routes::RouteAccess::Public,
            allow: vec![],
            deny: vec![],
            push: false,
            delete: false,
            cors: vec![],
            logins: crate::routes::Logins::Never,
        }
    }

    #[test]
    fn keys_are_short_and_separate_scopes_and_accounts() {
        let a = token_identity(&route("robot", "s3cret"), "repository:x:pull");
        assert!(a.len() == 64 && a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(
            a,
            token_identity(&route("robot", "s3cret"), "repository:y:pull")
        );
        assert_ne!(
            a,
            token_identity(&route("other", "s3cret"), "repository:x:pull")
        );
        // The same username with another password (Artifact Registry's `_json_key`, ECR's
        // `AWS`) is another account.
        assert_ne!(
            a,
            token_identity(&route("robot", "other"), "repository:x:pull")
        );
        let realm = realm_key(&route("robot", "s3cret"));
        assert_ne!(realm, realm_key(&route("robot", "other")));
        assert!(realm.len() < 100 && !realm.contains("robot") && !realm.contains("s3cret"));
    }

    #[test]
    fn a_non_empty_access_token_wins_as_clients_choose() {
        for (body, token) in [
            (&br#"{"token":"","access_token":"A"}"#[..], Some("A")),
            (br#"{"token":null,"access_token":"A"}"#, Some("A")),
            (br#"{"token":"T","access_token":"A"}"#, Some("A")),
            (br#"{"token":"T","access_token":""}"#, Some("T")),
            (br#"{"token":"T","access_token":7}"#, Some("T")),
            (br#"{"token":"","access_token":""}"#, None),
        ] {
            let got = Token::from_response(body, 0).map(|t| t.token);
            assert_eq!(got.as_deref(), token, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn tokens_expire_before_the_realm_says() {
        let t = Token::from_response(br#"{"access_token":"abc","expires_in":300}"#, 1000).unwrap();
        assert_eq!(t.until, 1000 + 300 - MARGIN_SECONDS);
        let d = Token::from_response(br#"{"token":"t"}"#, 0).unwrap();
        assert_eq!(d.until, DEFAULT_EXPIRES_IN - MARGIN_SECONDS);
        assert!(Token::from_response(b"{\"token\":\"a\\nb\"}", 0).is_none());
        assert!(Token::from_response(b"not json", 0).is_none());
        // A realm's lifetime is kept for a day at most, and no number overflows.
        let huge = br#"{"token":"t","expires_in":18446744073709551615}"#;
        let h = Token::from_response(huge, u64::MAX - 5).unwrap();
        assert_eq!(h.until, u64::MAX);
        assert_eq!(
            Token::from_response(huge, 1000).unwrap().until,
            1000 + 86_400 - MARGIN_SECONDS
        );
    }

    #[test]
    fn realms_from_challenges() {
        let c = crate::challenge::parse(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:x:pull""#,
        );
        let r = Realm::from_challenges(&c).unwrap();
        assert_eq!(
            r.token_url(Some("repository:x:pull")).unwrap().as_str(),
            "https://ghcr.io/token?service=ghcr.io&scope=repository%3Ax%3Apull"
        );
        assert_eq!(Realm::decode(&r.encode()), Some(r));
        let b = crate::challenge::parse(r#"Basic realm="x""#);
        assert_eq!(Realm::from_challenges(&b), Some(Realm::Basic));
        assert_eq!(Realm::from_challenges(&[]), None);
    }
}
