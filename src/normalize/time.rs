//! Lenient timestamp parsing. Senders' clocks are written in several dialects: RFC 3339 with
//! any offset, old PagerDuty payloads without an offset, and ones whose `+` was turned into a
//! space by a form decoder somewhere upstream.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

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

#[cfg(test)]
mod tests {
    use super::*;

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
