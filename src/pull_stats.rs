//! Who pulled what. Every manifest GET (the unit Docker Hub counts a pull by) is a pull event:
//! one JSON log line (route, repository, tag or digest, user or `anonymous`, status) for a log
//! pipeline to count, and, when it succeeded, a count in the key-value store by day, by
//! repository and by user, which `/-/stats` reports. No client address is kept.
//!
//! Bounded: 32 keys in all, one per day slot (the day's number modulo 32); a slot that holds
//! an older day is taken over, so the store keeps the last 31 days. In a day, the first 200
//! repositories and the first 200 users are counted by name, exactly; any more are summed as
//! `other_repositories` and `other_users`. A count is added by compare-and-swap: instances that
//! share a store count every pull once.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const SLOTS: u64 = 32;
/// Days `/-/stats` reports, today included.
pub const DAYS: u64 = 31;
/// Repositories, and users, counted by name in a day.
const NAMED: usize = 200;
/// The last counts' marks a slot keeps: a count retried after a swap that reported failure
/// but wrote (Spin 4.0.2 on Redis reports every swap so) finds its mark and is not added
/// twice, however many counts landed in between, up to this many.
const MARKS: usize = 64;

/// The key of the slot that holds the day `now` falls on.
pub fn key(now: u64) -> String {
    format!("spin-registry-proxy:pulls:{}", (now / 86_400) % SLOTS)
}

/// Every slot's key, for `/-/stats`.
pub fn keys() -> Vec<String> {
    (0..SLOTS)
        .map(|s| format!("spin-registry-proxy:pulls:{s}"))
        .collect()
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Day {
    pub day: String,
    pub pulls: u64,
    pub repositories: BTreeMap<String, u64>,
    pub users: BTreeMap<String, u64>,
    pub other_repositories: u64,
    pub other_users: u64,
    /// The marks of the last counts added (see `MARKS`); not reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marks: Vec<String>,
}

fn count(names: &mut BTreeMap<String, u64>, other: &mut u64, name: &str) {
    if let Some(n) = names.get_mut(name) {
        *n += 1;
    } else if names.len() < NAMED {
        names.insert(name.to_string(), 1);
    } else {
        *other += 1;
    }
}

/// A slot with one more pull of `repository` by `user` on the day of `now` (a slot holding
/// another day, or nothing readable, starts over); `None` when the slot already holds the
/// count marked `mark`.
pub fn add(
    stored: Option<&[u8]>,
    now: u64,
    repository: &str,
    user: &str,
    mark: &str,
) -> Option<Vec<u8>> {
    let today = crate::civil_time::day(now);
    let mut d: Day = stored
        .and_then(|b| serde_json::from_slice(b).ok())
        .filter(|d: &Day| d.day == today)
        .unwrap_or_else(|| Day {
            day: today,
            ..Day::default()
        });
    if d.marks.iter().any(|m| m == mark) {
        return None;
    }
    d.pulls += 1;
    count(&mut d.repositories, &mut d.other_repositories, repository);
    count(&mut d.users, &mut d.other_users, user);
    if d.marks.len() >= MARKS {
        d.marks.remove(0);
    }
    d.marks.push(mark.to_string());
    serde_json::to_vec(&d).ok()
}

/// `/-/stats`: the days within the last 31 that have pulls, newest first, with their totals.
pub fn report(slots: &[Option<Vec<u8>>], now: u64) -> serde_json::Value {
    let recent: Vec<String> = (0..DAYS)
        .map(|i| crate::civil_time::day(now.saturating_sub(i * 86_400)))
        .collect();
    let mut days: Vec<Day> = slots
        .iter()
        .flatten()
        .filter_map(|b| serde_json::from_slice::<Day>(b).ok())
        .filter(|d| recent.contains(&d.day))
        .map(|d| Day {
            marks: Vec::new(),
            ..d
        })
        .collect();
    days.sort_by(|a, b| b.day.cmp(&a.day));
    let pulls: u64 = days.iter().map(|d| d.pulls).sum();
    serde_json::json!({"pulls": pulls, "days": days})
}

/// One pull event, for the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub event: &'static str,
    pub time: String,
    pub route: String,
    pub repository: String,
    pub reference: String,
    pub user: String,
    pub status: u16,
}

impl Event {
    pub fn new(
        now: u64,
        route: &str,
        repository: &str,
        reference: &str,
        user: &str,
        status: u16,
    ) -> Self {
        Self {
            event: "pull",
            time: crate::civil_time::rfc3339(now),
            route: route.to_string(),
            repository: repository.to_string(),
            reference: reference.to_string(),
            user: user.to_string(),
            status,
        }
    }

    /// The event as one JSON line.
    pub fn line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// How `/-/stats` names the repository: the route, then the client's name for it.
    pub fn counted_as(&self) -> String {
        format!("{}:{}", self.route, self.repository)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_040_000; // 2026-11-30T12:00:00Z

    fn add(stored: Option<&[u8]>, now: u64, repository: &str, user: &str) -> Vec<u8> {
        let mark = format!("{now}{repository}{user}{:?}", stored.map(<[u8]>::len));
        super::add(stored, now, repository, user, &mark).unwrap()
    }

    #[test]
    fn a_count_retried_after_it_landed_is_not_added_twice() {
        let once = super::add(None, NOW, "r:a", "alice", "m1").unwrap();
        assert_eq!(super::add(Some(&once), NOW, "r:a", "alice", "m1"), None);
        let mut slot = once;
        for i in 0..MARKS - 1 {
            slot = super::add(Some(&slot), NOW, "r:a", "bob", &format!("n{i}")).unwrap();
        }
        assert_eq!(super::add(Some(&slot), NOW, "r:a", "alice", "m1"), None);
        let r = report(&[Some(slot)], NOW);
        assert_eq!(r["pulls"], MARKS as u64);
        assert!(
            r["days"][0].get("marks").is_none(),
            "marks are not reported"
        );
    }

    #[test]
    fn a_day_counts_pulls_by_repository_and_user() {
        let mut slot = None;
        for (repo, user) in [("r:a", "alice"), ("r:a", "bob"), ("r:b", "alice")] {
            slot = Some(add(slot.as_deref(), NOW, repo, user));
        }
        let d: Day = serde_json::from_slice(slot.as_deref().unwrap()).unwrap();
        assert_eq!((d.day.as_str(), d.pulls), ("2026-11-30", 3));
        assert_eq!(d.repositories["r:a"], 2);
        assert_eq!(d.users["alice"], 2);
        // 32 days later the slot is another day's.
        let later = add(slot.as_deref(), NOW + 32 * 86_400, "r:a", "alice");
        let d: Day = serde_json::from_slice(&later).unwrap();
        assert_eq!(d.pulls, 1);
        assert_eq!(key(NOW), key(NOW + 32 * 86_400));
        assert_ne!(key(NOW), key(NOW + 86_400));
        assert_eq!(keys().len(), 32);
    }

    #[test]
    fn past_the_named_ones_the_rest_is_summed() {
        let mut slot = None;
        for i in 0..250 {
            slot = Some(add(slot.as_deref(), NOW, &format!("r:{i}"), "u"));
        }
        let d: Day = serde_json::from_slice(slot.as_deref().unwrap()).unwrap();
        assert_eq!(d.repositories.len(), 200);
        assert_eq!(d.other_repositories, 50);
        assert_eq!(d.pulls, 250);
        let r = report(&[slot, Some(add(None, NOW - 40 * 86_400, "r:x", "u"))], NOW);
        assert_eq!(r["pulls"], 250, "the day 40 days ago is not reported");
    }

    #[test]
    fn an_event_is_one_json_line_without_an_address() {
        let e = Event::new(NOW, "private", "team/web", "1.0", "alice", 200);
        let line = e.line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "pull");
        assert_eq!(v["user"], "alice");
        assert_eq!(e.counted_as(), "private:team/web");
    }
}
