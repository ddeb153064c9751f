//! Lenient timestamp parsing. Senders' clocks are written in several dialects: RFC 3339 with
//! any offset, old PagerDuty payloads without an offset, and ones whose `+` was turned into a
//! space by a form decoder somewhere upstream.

use chrono::{DateTime, Datelike, NaiveDateTime, SecondsFormat, Timelike, Utc};

pub(crate) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // "2014-11-12T18:53:47 00:00": an offset whose '+' became a space.
    if s.len() > 6 && s.as_bytes()[s.len() - 6] == b' ' {
        let mut fixed = s.to_owned();
        fixed.replace_range(s.len() - 6..s.len() - 5, "+");
        if let Ok(t) = DateTime::parse_from_rfc3339(&fixed) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

/// RFC 3339 in UTC with `Z`, sub-seconds only where present.
pub(crate) fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// VictorOps' week date of `t`, e.g. `2020-W10-3T17:38:32Z`: the ISO 8601 week-numbering
/// year and week, the day 1 – 7 for Monday – Sunday. Written out directly: chrono's
/// `format("%G-W%V-%uT%H:%M:%SZ")` parsed its pattern again for every event.
pub(crate) fn week_time(t: DateTime<Utc>) -> String {
    let week = t.iso_week();
    format!(
        "{:04}-W{:02}-{}T{:02}:{:02}:{:02}Z",
        week.year(),
        week.week(),
        t.weekday().number_from_monday(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards `week_time` against chrono's own `%G-W%V-%uT%H:%M:%SZ`, across forty years by
    /// steps that land on every weekday, hour and year's turn (ISO years begin and end on
    /// other days than calendar ones).
    #[test]
    fn week_time_is_the_iso_week_date() {
        let at = |s| parse_time(s).unwrap();
        assert_eq!(
            week_time(at("2020-03-04T17:38:32Z")),
            "2020-W10-3T17:38:32Z"
        );
        assert_eq!(
            week_time(at("2021-01-03T00:00:09Z")),
            "2020-W53-7T00:00:09Z"
        );
        let (mut t, end) = (at("2000-01-01T00:00:00Z"), at("2040-01-01T00:00:00Z"));
        while t < end {
            assert_eq!(week_time(t), t.format("%G-W%V-%uT%H:%M:%SZ").to_string());
            t += chrono::Duration::seconds(5 * 3600 + 17 * 60 + 13);
        }
    }

    #[test]
    fn dialects() {
        let f = |s| parse_time(s).map(format_time);
        assert_eq!(
            f("2022-01-20T10:52:30-04:00").as_deref(),
            Some("2022-01-20T14:52:30Z")
        );
        assert_eq!(
            f("2021-06-04T13:35:29.781Z").as_deref(),
            Some("2021-06-04T13:35:29.781Z")
        );
        assert_eq!(
            f("2014-12-17T17:02:51").as_deref(),
            Some("2014-12-17T17:02:51Z")
        );
        assert_eq!(
            f("2014-11-12T18:53:47 00:00").as_deref(),
            Some("2014-11-12T18:53:47Z")
        );
        assert_eq!(f("yesterday"), None);
    }
}
