//! The realm's anonymous tokens as the proxy hands them to clients: the realm's token behind a
//! mark, a MAC under the store's secret over the token and its upstream. A request that
//! carries a marked token is known for an anonymous one (what it fetches may be kept and
//! served to any client) with no record per token: before, each token handed out was a store
//! entry, and a flood of anonymous token requests pushed every one out.
//!
//! Upstream, the mark is taken off: the realm's token goes as it came. A forged or altered
//! mark only makes the request one with the client's own token, kept nowhere.

use crate::digest::{hex, unhex};
use crate::origin::Origin;
use crate::store_secret::StoreSecret;

/// Marked tokens start with this (token68 characters, as a Bearer token must be).
const PREFIX: &str = "srp-anonymous.";
/// Bytes of the MAC a mark carries.
const MARK_BYTES: usize = 16;

/// The token a client gets for the realm's anonymous `token` of `upstream`.
pub fn mark(secret: &StoreSecret, upstream: &Origin, token: &str) -> String {
    let mac = secret.mac(&parts(&upstream.to_string(), token));
    format!("{PREFIX}{}.{token}", hex(&mac[..MARK_BYTES]))
}

fn parts<'a>(upstream: &'a str, token: &'a str) -> [&'a [u8]; 3] {
    [b"anonymous token", upstream.as_bytes(), token.as_bytes()]
}

/// A marked token as a client sent it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    mac: Vec<u8>,
    /// The realm's token, which goes upstream.
    pub token: String,
}

impl Marked {
    /// The mark and the realm's token of a Bearer token, if it carries a mark.
    pub fn parse(bearer_token: &str) -> Option<Self> {
        let rest = bearer_token.strip_prefix(PREFIX)?;
        let (mac, token) = rest.split_once('.')?;
        let mac = unhex(mac).filter(|m| m.len() == MARK_BYTES)?;
        (!token.is_empty()).then(|| Self {
            mac,
            token: token.to_string(),
        })
    }

    /// Whether the proxy made this mark, for this upstream.
    pub fn is_genuine(&self, secret: &StoreSecret, upstream: &Origin) -> bool {
        secret.verify(&parts(&upstream.to_string(), &self.token), &self.mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_prove_the_proxy_handed_the_token_out_for_that_upstream() {
        let secret = StoreSecret::new([9; 32]);
        let up = Origin::parse("https://registry-1.docker.io").unwrap();
        let other = Origin::parse("https://ghcr.io").unwrap();
        let marked = mark(&secret, &up, "eyJ.a.b");
        let m = Marked::parse(&marked).unwrap();
        assert_eq!(m.token, "eyJ.a.b");
        assert!(m.is_genuine(&secret, &up));
        assert!(!m.is_genuine(&secret, &other));
        assert!(!m.is_genuine(&StoreSecret::new([8; 32]), &up));
        // Another token behind a copied mark is not genuine.
        let forged = marked.replace("eyJ.a.b", "eyJ.c.d");
        assert!(!Marked::parse(&forged).unwrap().is_genuine(&secret, &up));
        assert_eq!(Marked::parse("eyJ.a.b"), None);
        assert_eq!(Marked::parse("srp-anonymous.zz.t"), None);
        assert_eq!(Marked::parse(&format!("{PREFIX}{}.", "0".repeat(32))), None);
    }
}
