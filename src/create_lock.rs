//! Creating a key in the store without a concurrent creator writing over it.
//!
//! On Spin's SQLite store a compare-and-swap over an absent key compares nothing (an upsert):
//! two writers that both find a bucket's key absent both "succeed", and the first one's entry
//! is lost. So a writer that finds a key absent takes this lock first (a key of its own that,
//! once made, is only changed by compare-and-swap), reads the key again under it, and writes
//! it only if it is still absent; everyone else then merges into what exists. A lock left held
//! (an instance stopped midway) frees itself after `HOLD_SECS`.

/// Where the lock is kept.
pub const KEY: &str = "spin-registry-proxy:create-lock";

/// How long a holder may keep the lock: a creation is three store operations.
pub const HOLD_SECS: u64 = 5;

/// The lock's value once released.
pub const FREE: &[u8] = b"free";

/// The lock's value while `owner` holds it, taken at `now` (seconds).
pub fn held(owner: u64, now: u64) -> Vec<u8> {
    format!("held {owner:016x} {}", now.saturating_add(HOLD_SECS)).into_bytes()
}

/// Whether a creator may take the lock over `value` at `now`: absent, released, expired, or
/// nothing this proxy wrote.
pub fn is_free(value: Option<&[u8]>, now: u64) -> bool {
    match value.and_then(parse) {
        Some((_, until)) => until < now,
        None => true,
    }
}

/// Whether `value` says `owner` holds the lock.
pub fn is_held_by(value: Option<&[u8]>, owner: u64) -> bool {
    value.and_then(parse).is_some_and(|(o, _)| o == owner)
}

fn parse(value: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.strip_prefix("held ")?.split(' ');
    let owner = u64::from_str_radix(parts.next()?, 16).ok()?;
    let until = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((owner, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_its_owners_until_it_expires() {
        let v = held(7, 100);
        assert!(is_held_by(Some(&v), 7));
        assert!(!is_held_by(Some(&v), 8));
        assert!(!is_free(Some(&v), 100));
        assert!(!is_free(Some(&v), 100 + HOLD_SECS));
        assert!(is_free(Some(&v), 101 + HOLD_SECS));
    }

    #[test]
    fn absent_released_or_foreign_values_are_free() {
        assert!(is_free(None, 0));
        assert!(is_free(Some(FREE), 0));
        assert!(!is_held_by(Some(FREE), 0));
        for junk in [
            &b"held"[..],
            b"held x 1",
            b"held 7 1 2",
            b"\xff",
            b"held 7 -1",
        ] {
            assert!(is_free(Some(junk), 0), "{junk:?}");
            assert!(!is_held_by(Some(junk), 7), "{junk:?}");
        }
        assert!(!is_free(Some(&held(1, u64::MAX)), 0));
    }
}
