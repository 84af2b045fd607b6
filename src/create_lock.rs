//! Creating a key in the store without a concurrent creator writing over it.
//!
//! On Spin's SQLite store a compare-and-swap over an absent key compares nothing (an upsert):
//! two writers that both find a bucket's key absent both "succeed", and the first one's entry
//! is lost. So a writer that finds a key absent takes this lock first (a key of its own that,
//! once made, is only changed by compare-and-swap), reads the key again under it, and writes
//! it only if it is still absent; everyone else then merges into what exists. A lock left held
//! (an instance stopped midway) frees itself after `HOLD_SECS`.
//!
//! The lock key itself is absent until its first taker, so the same upsert would let two
//! first takers both hold it: only the one whose atomic `increment` of `MADE_KEY` counts 1
//! makes it (SQLite runs an increment in one transaction, Redis as `INCRBY`).

/// Where the lock is kept.
pub const KEY: &str = "spin-registry-proxy:create-lock";

/// Counts the takers that found the lock absent; only the first makes it.
pub const MADE_KEY: &str = "spin-registry-proxy:create-lock-made";

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

/// The store operations the lock takes; `swap`'s outcome is read back, since Spin 4.0.2 on
/// Redis reports every swap as failed, the ones that wrote too.
pub trait LockStore {
    type Cas;
    /// A compare-and-swap on `key` and the value it compares against; `None`: the store
    /// failed or has none.
    fn watch(&self, key: &str) -> Option<(Self::Cas, Option<Vec<u8>>)>;
    fn swap(&self, cas: Self::Cas, value: &[u8]);
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn set(&self, key: &str, value: &[u8]);
    /// Adds one at `key` atomically and gives the new count; `None` on a store error.
    fn increment(&self, key: &str) -> Option<i64>;
    fn now_secs(&self) -> u64;
    /// About a millisecond.
    fn pause(&self);
}

/// How many times a taker looks at a held lock: a fifth of a second.
const TRIES: usize = 200;

/// Takes the lock for `owner`; false when not taken in time (a holder slow or gone).
pub fn take<S: LockStore>(store: &S, owner: u64) -> bool {
    // Some(true): this taker counted first and makes the absent lock.
    let mut maker = None;
    for _ in 0..TRIES {
        let Some((cas, current)) = store.watch(KEY) else {
            return false;
        };
        let now = store.now_secs();
        if current.is_none() && maker.is_none() {
            maker = store.increment(MADE_KEY).map(|n| n == 1);
        }
        if is_free(current.as_deref(), now) && (current.is_some() || maker == Some(true)) {
            store.swap(cas, &held(owner, now));
            if is_held_by(store.get(KEY).as_deref(), owner) {
                return true;
            }
        }
        store.pause();
    }
    // Its first maker stopped between counting and writing, or the store cannot count: a
    // released lock, whoever writes it, lets later takers use compare-and-swap.
    if store.get(KEY).is_none() {
        store.set(KEY, FREE);
    }
    false
}

/// Releases the lock if `owner` still holds it.
pub fn release<S: LockStore>(store: &S, owner: u64) {
    if let Some((cas, current)) = store.watch(KEY) {
        if is_held_by(current.as_deref(), owner) {
            store.swap(cas, FREE);
        }
    }
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
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Barrier, Condvar, Mutex};

    /// A store as Spin's SQLite one: a swap compares against the value its `watch` read, and
    /// over an absent value it compares nothing. `script` names which taker makes each of the
    /// next store operations; after it, they run as they come.
    #[derive(Default)]
    struct Shared {
        state: Mutex<State>,
        turn: Condvar,
        no_increment: bool,
    }

    #[derive(Default)]
    struct State {
        values: HashMap<String, Vec<u8>>,
        script: VecDeque<usize>,
    }

    struct Taker<'a>(&'a Shared, usize);

    impl Taker<'_> {
        fn op<T>(&self, f: impl FnOnce(&mut HashMap<String, Vec<u8>>) -> T) -> T {
            let mut state = self.0.state.lock().unwrap();
            while state.script.front().is_some_and(|&t| t != self.1) {
                state = self.0.turn.wait(state).unwrap();
            }
            state.script.pop_front();
            let out = f(&mut state.values);
            self.0.turn.notify_all();
            out
        }
    }

    impl LockStore for Taker<'_> {
        type Cas = (String, Option<Vec<u8>>);

        fn watch(&self, key: &str) -> Option<(Self::Cas, Option<Vec<u8>>)> {
            let v = self.op(|m| m.get(key).cloned());
            Some(((key.to_owned(), v.clone()), v))
        }

        fn swap(&self, (key, read): Self::Cas, value: &[u8]) {
            self.op(|m| {
                if read.is_none() || m.get(&key) == read.as_ref() {
                    m.insert(key, value.to_vec());
                }
            })
        }

        fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.op(|m| m.get(key).cloned())
        }

        fn set(&self, key: &str, value: &[u8]) {
            self.op(|m| m.insert(key.to_owned(), value.to_vec()));
        }

        fn increment(&self, key: &str) -> Option<i64> {
            let fails = self.0.no_increment;
            self.op(|m| {
                let n = m
                    .get(key)
                    .map_or(0, |v| i64::from_le_bytes(v[..8].try_into().unwrap()));
                (!fails).then(|| {
                    m.insert(key.to_owned(), (n + 1).to_le_bytes().to_vec());
                    n + 1
                })
            })
        }

        fn now_secs(&self) -> u64 {
            100
        }

        // As long as the component's: with a bare yield, 200 tries pass in microseconds, and
        // a maker the scheduler holds back between counting and writing meets takers that
        // already gave up on it (a busy machine made this test fail).
        fn pause(&self) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// How many of `takers` hold the lock at once when each tries while none releases.
    fn holders_at_once(store: &Shared, takers: usize) -> usize {
        let all_tried = Barrier::new(takers);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..takers)
                .map(|id| {
                    let all_tried = &all_tried;
                    s.spawn(move || {
                        let t = Taker(store, id);
                        let taken = take(&t, id as u64);
                        all_tried.wait();
                        if taken {
                            release(&t, id as u64);
                        }
                        taken
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap().then_some(()))
                .count()
        })
    }

    fn scripted(script: &[usize]) -> Shared {
        let store = Shared::default();
        store.state.lock().unwrap().script = script.iter().copied().collect();
        store
    }

    #[test]
    fn two_first_takers_of_the_absent_lock_do_not_both_hold_it() {
        // Both find it absent; one writes and reads itself back, then the other writes: a
        // swap over the absent lock alone let both hold it.
        for script in [[0, 1, 0, 0, 1, 1], [0, 1, 1, 0, 1, 0], [0, 1, 1, 1, 0, 0]] {
            let store = scripted(&script);
            assert_eq!(holders_at_once(&store, 2), 1, "{script:?}");
            assert_eq!(store.state.lock().unwrap().values.get(KEY).unwrap(), FREE);
        }
    }

    #[test]
    fn concurrent_takers_hold_it_one_at_a_time() {
        for _ in 0..10 {
            assert_eq!(holders_at_once(&Shared::default(), 8), 1);
        }
    }

    #[test]
    fn a_lock_its_maker_never_wrote_is_released_for_the_next_taker() {
        // The first maker counted and stopped; or the store cannot count.
        let counted = Shared::default();
        let t = Taker(&counted, 0);
        t.increment(MADE_KEY);
        let cannot = Shared {
            no_increment: true,
            ..Shared::default()
        };
        for store in [&counted, &cannot] {
            let t = Taker(store, 0);
            assert!(!take(&t, 1));
            assert_eq!(t.get(KEY).as_deref(), Some(FREE));
            assert!(take(&t, 2));
            assert!(is_held_by(t.get(KEY).as_deref(), 2));
        }
    }

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
