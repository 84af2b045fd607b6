//! The store's own secret: 32 random bytes the first request that needs them writes into the
//! key-value store, shared by every instance on that store, never shown to a client.
//!
//! Beside it, when a manifest was last deleted through the proxy: tags kept before then are
//! not used (one may name the deleted digest, and no index says which). Every lookup reads the
//! secret anyway, so this costs a lookup nothing.
//!
//! Clients can neither compute where an entry is kept (buckets are chosen by a MAC under it,
//! so no one can aim requests at another's bucket) nor forge the mark on the anonymous tokens
//! the proxy hands out (see `anonymous_token`).

use crate::digest::{constant_time_eq, hex, unhex};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Where the secret is kept.
pub const KEY: &str = "spin-registry-proxy:secret";

#[derive(Clone)]
pub struct StoreSecret {
    bytes: [u8; 32],
    /// The MAC with its key taken in once (two SHA-256 blocks), not again for each MAC: a
    /// kept answer to a client holding an anonymous token makes two.
    keyed: Option<Hmac<Sha256>>,
    /// Unix seconds of the last manifest deleted through the proxy; 0: none.
    pub deleted_at: u64,
}

impl PartialEq for StoreSecret {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(&self.bytes, &other.bytes)
    }
}

impl Eq for StoreSecret {}

impl std::fmt::Debug for StoreSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSecret(***)")
    }
}

impl StoreSecret {
    pub fn new(bytes: [u8; 32]) -> Self {
        let keyed = Hmac::<Sha256>::new_from_slice(&bytes).ok();
        Self {
            bytes,
            keyed,
            deleted_at: 0,
        }
    }

    /// The same secret, with a manifest deleted at `now`.
    pub fn deleted(&self, now: u64) -> Self {
        Self {
            deleted_at: self.deleted_at.max(now),
            ..self.clone()
        }
    }

    /// As kept in the store: 64 hexadecimal digits, then the time of the last deletion.
    pub fn encode(&self) -> Vec<u8> {
        let hex = hex(&self.bytes);
        match self.deleted_at {
            0 => hex.into_bytes(),
            t => format!("{hex} {t}").into_bytes(),
        }
    }

    /// A kept value, if it is one this proxy wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?.trim();
        let (hex, deleted_at) = match text.split_once(' ') {
            Some((hex, t)) => (hex, t.parse().ok()?),
            None => (text, 0),
        };
        let secret = Self::new(unhex(hex)?.try_into().ok()?);
        Some(Self {
            deleted_at,
            ..secret
        })
    }

    /// HMAC-SHA256 of the parts, each followed by a NUL (so no two lists of parts collide).
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let Some(mut m) = self.keyed.clone() else {
            return [0; 32];
        };
        for p in parts {
            m.update(p);
            m.update(&[0]);
        }
        m.finalize().into_bytes().into()
    }

    /// Whether `mac` is the first `mac.len()` bytes of the parts' MAC, in constant time.
    pub fn verify(&self, parts: &[&[u8]], mac: &[u8]) -> bool {
        let full = self.mac(parts);
        !mac.is_empty() && mac.len() <= full.len() && constant_time_eq(&full[..mac.len()], mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_as_hex_and_read_back() {
        let s = StoreSecret::new([7; 32]);
        assert_eq!(StoreSecret::decode(&s.encode()), Some(s.clone()));
        assert_eq!(StoreSecret::decode(b"short"), None);
        assert_eq!(StoreSecret::decode(&[b'z'; 64]), None);
        let d = s.deleted(1_700_000_000);
        let read = StoreSecret::decode(&d.encode()).unwrap();
        assert_eq!((read.bytes, read.deleted_at), ([7; 32], 1_700_000_000));
        assert_eq!(read.deleted(5).deleted_at, 1_700_000_000);
        let mut junk = s.encode();
        junk.extend(b" soon");
        assert_eq!(StoreSecret::decode(&junk), None);
        assert!(!format!("{s:?}").contains('7'));
    }

    #[test]
    fn macs_depend_on_the_secret_and_on_how_parts_split() {
        let a = StoreSecret::new([1; 32]);
        let b = StoreSecret::new([2; 32]);
        assert_ne!(a.mac(&[b"x"]), b.mac(&[b"x"]));
        assert_ne!(a.mac(&[b"ab", b"c"]), a.mac(&[b"a", b"bc"]));
        let mac = a.mac(&[b"x"]);
        assert!(a.verify(&[b"x"], &mac[..16]));
        assert!(!a.verify(&[b"y"], &mac[..16]));
        assert!(!b.verify(&[b"x"], &mac[..16]));
        assert!(!a.verify(&[b"x"], &[]));
        // What the key's blocks are taken in once for is the MAC of the key itself.
        let mut fresh = Hmac::<Sha256>::new_from_slice(&[1; 32]).unwrap();
        fresh.update(b"x\0");
        assert_eq!(
            a.mac(&[b"x"]),
            <[u8; 32]>::from(fresh.finalize().into_bytes())
        );
        assert_eq!(a.mac(&[b"x"]), a.mac(&[b"x"]));
    }
}
