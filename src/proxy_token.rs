//! The tokens the proxy signs for its own users: JWTs (RFC 7519) signed with HMAC-SHA256 under
//! the `token_secret` variable, binding the user, the public origin, the route, the scopes
//! granted (distribution's `access` claim) and an expiry. A request on a `users` route is
//! checked against one before anything else happens: signature (under the current secret, or
//! the previous one while a rotation is under way), expiry, origin, route, scope.
//!
//! A token carries no password and nothing secret; a forged one needs the secret. Only the
//! header the proxy writes is accepted (`alg` HS256): `none`, or any other algorithm, is not a
//! token.

use crate::base64::{decode_url, encode_url};
use crate::users::Action;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a token the proxy signs lasts, unless configured otherwise.
pub const DEFAULT_LIFETIME: u64 = 300;
/// `{"alg":"HS256","typ":"JWT"}`, the one header signed and accepted.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
const ISSUER: &str = "spin-registry-proxy";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The public origin the token is for (`https://images.example.com`).
    pub aud: String,
    /// The user.
    pub sub: String,
    /// The route the token is for.
    pub route: String,
    pub access: Vec<Access>,
    pub iat: u64,
    pub exp: u64,
    /// The user's access token the login used, if any (for the pull log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tok: Option<String>,
    /// With the catalog granted: the patterns of what the user may pull on the route, one
    /// list for the user and one for the access token used; a repository the catalog shows
    /// matches a pattern of every list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub see: Option<Vec<Vec<String>>>,
}

impl Claims {
    pub fn new(user: &str, audience: &str, route: &str, now: u64, lifetime: u64) -> Self {
        Self {
            iss: ISSUER.into(),
            aud: audience.into(),
            sub: user.into(),
            route: route.into(),
            access: Vec::new(),
            iat: now,
            exp: now.saturating_add(lifetime),
            tok: None,
            see: None,
        }
    }

    /// Whether the token grants `action` on repository `name` (client names).
    pub fn covers(&self, name: &str, action: Action) -> bool {
        self.access.iter().any(|a| {
            a.kind == "repository"
                && a.name == name
                && a.actions.iter().any(|x| x == action.as_str() || x == "*")
        })
    }

    /// Whether the token was issued for other repositories and not for `name`: one asked for
    /// another scope (a token for `name` that grants nothing names nothing at all).
    pub fn is_for_others_than(&self, name: &str) -> bool {
        let mut repositories = self
            .access
            .iter()
            .filter(|a| a.kind == "repository")
            .peekable();
        repositories.peek().is_some() && repositories.all(|a| a.name != name)
    }

    /// Whether the catalog may show repository `name` to the token's holder.
    pub fn sees(&self, name: &str) -> bool {
        self.see.as_ref().is_some_and(|lists| {
            lists.iter().all(|list| {
                list.iter()
                    .filter_map(|p| crate::repository_pattern::Pattern::parse(p))
                    .any(|p| p.matches(name))
            })
        })
    }

    /// Whether the token grants the catalog.
    pub fn covers_catalog(&self) -> bool {
        self.access
            .iter()
            .any(|a| a.kind == "registry" && a.name == "catalog")
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not a token the proxy signs (another header, not three parts, not its JSON).
    Malformed,
    /// Signed with no secret the proxy holds, or altered.
    Signature,
    Expired,
    /// Signed for another origin or route.
    Elsewhere,
}

impl Invalid {
    /// What the client is told.
    pub fn words(self) -> &'static str {
        match self {
            Invalid::Malformed => "the token is not one this registry issued",
            Invalid::Signature => "the token's signature is invalid",
            Invalid::Expired => "the token has expired: log in again",
            Invalid::Elsewhere => "the token was issued for another registry or route",
        }
    }
}

fn mac(secret: &[u8], signed: &str) -> String {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    m.update(signed.as_bytes());
    encode_url(&m.finalize().into_bytes())
}

pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let payload = encode_url(&serde_json::to_vec(claims).unwrap_or_default());
    let signed = format!("{HEADER}.{payload}");
    let signature = mac(secret, &signed);
    format!("{signed}.{signature}")
}

/// Whether `token` is shaped as one the proxy signs (its header, its issuer), signed or not:
/// such a token is for the proxy alone, and a route without users must not hand it to its
/// upstream, which could replay it here.
pub fn is_own(token: &str) -> bool {
    #[derive(Deserialize)]
    struct Issuer {
        iss: String,
    }
    let mut parts = token.splitn(3, '.');
    let (Some(HEADER), Some(payload)) = (parts.next(), parts.next()) else {
        return false;
    };
    decode_url(payload)
        .and_then(|b| serde_json::from_slice::<Issuer>(&b).ok())
        .is_some_and(|c| c.iss == ISSUER)
}

/// The claims of `token` if one of `secrets` signed it, for `audience` and `route` (`None`:
/// any route, for a host's `/v2/`), at `now`.
pub fn verify(
    token: &str,
    secrets: &[&[u8]],
    audience: &str,
    route: Option<&str>,
    now: u64,
) -> Result<Claims, Invalid> {
    let mut parts = token.splitn(3, '.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Invalid::Malformed);
    };
    if header != HEADER {
        return Err(Invalid::Malformed);
    }
    let signed = &token[..header.len() + 1 + payload.len()];
    let genuine = secrets
        .iter()
        .any(|s| crate::digest::constant_time_eq(mac(s, signed).as_bytes(), signature.as_bytes()));
    if !genuine {
        return Err(Invalid::Signature);
    }
    let claims: Claims = decode_url(payload)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Invalid::Malformed)?;
    if claims.iss != ISSUER {
        return Err(Invalid::Malformed);
    }
    if now >= claims.exp {
        return Err(Invalid::Expired);
    }
    if claims.aud != audience || route.is_some_and(|r| claims.route != r) {
        return Err(Invalid::Elsewhere);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OLD: &[u8] = b"fedcba9876543210fedcba9876543210";
    const ORIGIN: &str = "https://images.example.com";

    #[test]
    fn the_proxy_s_tokens_are_told_from_others_signed_or_not() {
        assert!(is_own(&token(KEY, 300)));
        assert!(is_own(&token(OLD, 0)));
        let foreign = Claims {
            iss: "auth.docker.io".into(),
            ..Claims::new("alice", ORIGIN, "private", 1000, 300)
        };
        assert!(!is_own(&sign(KEY, &foreign)));
        assert!(!is_own("eyJhbGciOiJSUzI1NiJ9.e30.sig"));
        assert!(!is_own("opaque-registry-token"));
        assert!(!is_own(&format!("{HEADER}.!!!.x")));
    }

    fn token(secret: &[u8], exp_in: u64) -> String {
        let mut c = Claims::new("alice", ORIGIN, "private", 1000, exp_in);
        c.access.push(Access {
            kind: "repository".into(),
            name: "team/web".into(),
            actions: vec!["pull".into()],
        });
        sign(secret, &c)
    }

    fn check(t: &str) -> Result<Claims, Invalid> {
        verify(t, &[KEY, OLD], ORIGIN, Some("private"), 1100)
    }

    #[test]
    fn genuine_tokens_grant_their_scopes_only() {
        let c = check(&token(KEY, 300)).unwrap();
        assert!(c.covers("team/web", Action::Pull));
        assert!(!c.covers("team/web", Action::Push));
        assert!(!c.covers("team/db", Action::Pull));
        assert!(!c.covers_catalog());
        assert_eq!(
            decode_url(HEADER).unwrap(),
            br#"{"alg":"HS256","typ":"JWT"}"#
        );
        // Signed with the previous secret: still good during a rotation.
        assert!(check(&token(OLD, 300)).is_ok());
    }

    #[test]
    fn forged_tokens_are_refused() {
        let good = token(KEY, 300);
        let (head, rest) = good.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        // An altered signature (a middle character: the last may only change padding bits).
        let mut s: Vec<char> = sig.chars().collect();
        s[10] = if s[10] == 'A' { 'B' } else { 'A' };
        let altered: String = s.into_iter().collect();
        assert_eq!(
            check(&format!("{head}.{payload}.{altered}")),
            Err(Invalid::Signature)
        );
        // Altered claims under the old signature.
        let claims = String::from_utf8(decode_url(payload).unwrap()).unwrap();
        let more = encode_url(claims.replace("team/web", "team/db").as_bytes());
        assert_eq!(
            check(&format!("{head}.{more}.{sig}")),
            Err(Invalid::Signature)
        );
        // `alg: none`, unsigned.
        let none = encode_url(br#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            check(&format!("{none}.{payload}.")),
            Err(Invalid::Malformed)
        );
        assert_eq!(check(&format!("{none}.{payload}")), Err(Invalid::Malformed));
        // Another secret (rotated out, or never ours).
        assert_eq!(
            check(&token(b"another secret of thirty-two bytes", 300)),
            Err(Invalid::Signature)
        );
        assert_eq!(check(&token(KEY, 50)), Err(Invalid::Expired));
        let elsewhere = verify(
            &good,
            &[KEY],
            "https://other.example.com",
            Some("private"),
            1100,
        );
        assert_eq!(elsewhere, Err(Invalid::Elsewhere));
        let other_route = verify(&good, &[KEY], ORIGIN, Some("public"), 1100);
        assert_eq!(other_route, Err(Invalid::Elsewhere));
        assert!(verify(&good, &[KEY], ORIGIN, None, 1100).is_ok());
        assert_eq!(check("anonymous"), Err(Invalid::Malformed));
        assert_eq!(check("a.b.c.d"), Err(Invalid::Malformed));
    }

    #[test]
    fn a_token_holds_nothing_secret() {
        let t = token(KEY, 300);
        let claims = String::from_utf8(decode_url(t.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert!(claims.contains(r#""sub":"alice""#), "{claims}");
        assert!(!t.contains("0123456789abcdef"));
    }
}
