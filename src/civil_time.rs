//! Dates as registries, signed URLs and the `users` variable write them, in Unix seconds; and
//! the day a moment falls on (the proxy's pull counts are kept by day, in UTC).

/// Days from 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn days(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn unix(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<u64> {
    let ok = (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && s < 61;
    ok.then(|| days(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
        .and_then(|t| u64::try_from(t).ok())
}

/// `20261130T120000Z`
pub fn iso_basic_to_unix(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    unix(
        n(0..4)?,
        n(4..6)?,
        n(6..8)?,
        n(9..11)?,
        n(11..13)?,
        n(13..15)?,
    )
}

/// `2026-11-30T12:00:00Z`
pub fn iso_extended_to_unix(t: &str) -> Option<u64> {
    let compact: String = t.chars().filter(|c| !matches!(c, '-' | ':')).collect();
    iso_basic_to_unix(&compact)
}

/// `2026-11-30` (midnight UTC), `2026-11-30T12:00:00Z` or `20261130T120000Z`.
pub fn parse(t: &str) -> Option<u64> {
    if t.len() == 10 {
        return iso_extended_to_unix(&format!("{t}T00:00:00Z"));
    }
    iso_extended_to_unix(t).or_else(|| iso_basic_to_unix(t))
}

/// The civil date (UTC) of a moment.
fn date(unix: u64) -> (i64, i64, i64) {
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(unix / 86_400).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-11-30`: the day (UTC) a moment falls on.
pub fn day(unix: u64) -> String {
    let (y, m, d) = date(unix);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-11-30T12:00:00Z`.
pub fn rfc3339(unix: u64) -> String {
    let s = unix % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        day(unix),
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_both_ways() {
        assert_eq!(parse("2026-11-30"), Some(1_795_996_800));
        assert_eq!(parse("2026-11-30T12:00:00Z"), Some(1_796_040_000));
        assert_eq!(parse("20261130T120000Z"), Some(1_796_040_000));
        assert_eq!(parse("2026-13-01"), None);
        assert_eq!(parse("yesterday"), None);
        assert_eq!(day(1_796_040_000), "2026-11-30");
        assert_eq!(rfc3339(1_796_040_000), "2026-11-30T12:00:00Z");
        assert_eq!(day(0), "1970-01-01");
        for t in [951_782_400u64, 1_709_164_800, 4_107_542_399] {
            assert_eq!(parse(&rfc3339(t)), Some(t), "{t}");
        }
    }
}
