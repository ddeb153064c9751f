//! Maintenance windows: when a target's matching deliveries are held (or skipped).
//!
//! A window is either one stretch of time (`start`, `end`) or a repeating one: a cron
//! schedule of when it opens (five fields: minute, hour, day of month, month, day of week;
//! `*`, lists, ranges, steps, month and day names) and how long it lasts (`duration`). Both
//! are read in the window's time zone (the IANA database is built in), so "02:00 on Sundays"
//! stays 02:00 across daylight-saving changes. A start that falls in a spring-forward gap
//! opens at the first minute after it; one that falls in a repeated hour opens at the first.
//! As in cron, a schedule that restricts both the day of month and the day of week opens on
//! days that match either.

use chrono::{DateTime, Datelike, Duration as Span, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::rules::Condition;
use crate::normalize::Event;

/// The longest a window may last: bounds the work of finding the one `now` is in.
pub const MAX_DURATION_DAYS: i64 = 7;

#[derive(Debug, Clone)]
pub struct Window {
    pub name: String,
    pub when: When,
    pub tz: Tz,
    /// Skip matching deliveries instead of holding them.
    pub skip: bool,
    /// Conditions on the alert: the window applies to deliveries whose event meets them all.
    pub filter: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum When {
    Once { start_ms: u64, end_ms: u64 },
    Every { cron: Cron, duration_ms: u64 },
}

impl Window {
    pub fn applies_to(&self, event: &Event) -> bool {
        self.filter.iter().all(|c| c.matches(&event.alert))
    }

    /// The end of the occurrence of the window that `now` is in, if any.
    pub fn active_until(&self, now_ms: u64) -> Option<u64> {
        match &self.when {
            When::Once { start_ms, end_ms } => {
                (*start_ms <= now_ms && now_ms < *end_ms).then_some(*end_ms)
            }
            When::Every { cron, duration_ms } => {
                let now = instant(now_ms)?;
                let first = now - Span::milliseconds(*duration_ms as i64);
                let mut day = now.with_timezone(&self.tz).date_naive();
                let last = first.with_timezone(&self.tz).date_naive();
                while day >= last {
                    if let Some(start) = cron.starts(day, &self.tz).filter(|s| *s <= now_ms).max() {
                        let end = start + duration_ms;
                        return (now_ms < end).then_some(end);
                    }
                    day = day.pred_opt()?;
                }
                None
            }
        }
    }

    /// When the window next opens after `now_ms`, within about five years.
    pub fn next_start(&self, now_ms: u64) -> Option<u64> {
        match &self.when {
            When::Once { start_ms, .. } => (*start_ms > now_ms).then_some(*start_ms),
            When::Every { cron, .. } => {
                let mut day = instant(now_ms)?.with_timezone(&self.tz).date_naive();
                for _ in 0..366 * 5 {
                    if let Some(s) = cron.starts(day, &self.tz).filter(|s| *s > now_ms).min() {
                        return Some(s);
                    }
                    day = day.succ_opt()?;
                }
                None
            }
        }
    }
}

fn instant(ms: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// A local time in `tz` as an instant (ms): a time in a gap moves to the first minute after
/// it, a repeated time is its first occurrence.
pub fn local_ms(tz: &Tz, date: NaiveDate, hour: u32, minute: u32) -> Option<u64> {
    let mut local = date.and_hms_opt(hour, minute, 0)?;
    for _ in 0..=24 * 60 {
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                return u64::try_from(t.timestamp_millis()).ok()
            }
            LocalResult::None => local += Span::minutes(1),
        }
    }
    None
}

/// A five-field cron schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    /// Days of the month, bit 1 to 31.
    days: u32,
    /// Months, bit 1 to 12.
    months: u16,
    /// Days of the week, bit 0 (Sunday) to 6.
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    pub fn parse(spec: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "{spec:?} is not a cron schedule of five fields (minute hour day-of-month \
                 month day-of-week), like \"0 2 * * sun\""
            ));
        };
        let weekdays = field(weekday, 0, 7, &WEEKDAYS, "day of week")?;
        Ok(Cron {
            minutes: field(minute, 0, 59, &[], "minute")?,
            hours: field(hour, 0, 23, &[], "hour")? as u32,
            days: field(day, 1, 31, &[], "day of month")? as u32,
            months: field(month, 1, 12, &MONTHS, "month")? as u16,
            // 7 is Sunday too.
            weekdays: ((weekdays | (weekdays >> 7)) & 0x7f) as u8,
            days_any: day == "*",
            weekdays_any: weekday == "*",
        })
    }

    fn on(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.days_any, self.weekdays_any) {
            (false, false) => day || weekday,
            _ => day && weekday,
        }
    }

    /// The instants (ms) the schedule opens on a local date.
    fn starts<'a>(&'a self, date: NaiveDate, tz: &'a Tz) -> impl Iterator<Item = u64> + 'a {
        let on = self.on(date);
        (0..24u32)
            .filter(move |h| on && self.hours & (1 << h) != 0)
            .flat_map(move |h| {
                (0..60u32)
                    .filter(move |m| self.minutes & (1 << m) != 0)
                    .filter_map(move |m| local_ms(tz, date, h, m))
            })
    }
}

/// One field as a bit set over `min..=max`; `names` (lower case) stand for `min`, `min + 1`, ….
fn field(text: &str, min: u32, max: u32, names: &[&str], what: &str) -> Result<u64, String> {
    let bad = |why: &str| Err(format!("{what} field {text:?}: {why}"));
    let value = |v: &str| -> Result<u32, String> {
        let lower = v.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(min + i as u32);
        }
        match v.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "{what} field {text:?}: {v:?} is not a value from {min} to {max}"
            )),
        }
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => match s.parse::<u32>() {
                Ok(s) if s > 0 => (r, s),
                _ => return bad("a step must be a positive number"),
            },
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(r)?, max),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if from > to {
            return bad("a range must run upwards");
        }
        for v in (from..=to).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(tz: &Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> u64 {
        local_ms(tz, NaiveDate::from_ymd_opt(y, mo, d).unwrap(), h, mi).unwrap()
    }

    fn every(spec: &str, hours: u64, tz: Tz) -> Window {
        Window {
            name: "w".into(),
            when: When::Every {
                cron: Cron::parse(spec).unwrap(),
                duration_ms: hours * 3_600_000,
            },
            tz,
            skip: false,
            filter: Vec::new(),
        }
    }

    /// Guards the schedule: Sundays 02:00 for 2 h in Berlin, across the spring-forward night
    /// (02:00 does not exist on 2025-03-30: the window opens at 03:00 local) and a normal one.
    #[test]
    fn a_weekly_window_in_a_time_zone() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let w = every("0 2 * * sun", 2, tz);
        let sun = ms(&tz, 2025, 7, 20, 2, 0);
        assert_eq!(w.active_until(sun - 60_000), None);
        assert_eq!(w.active_until(sun), Some(sun + 7_200_000));
        assert_eq!(w.active_until(sun + 7_199_999), Some(sun + 7_200_000));
        assert_eq!(w.active_until(sun + 7_200_000), None);
        assert_eq!(w.next_start(sun - 1), Some(sun));
        assert_eq!(w.next_start(sun), Some(ms(&tz, 2025, 7, 27, 2, 0)));
        // 00:00 UTC is 02:00 in Berlin in summer.
        assert_eq!(sun, 1_752_969_600_000);
        let gap = ms(&tz, 2025, 3, 30, 2, 0);
        assert_eq!(gap, ms(&tz, 2025, 3, 30, 3, 0), "02:00 moves to 03:00");
        assert_eq!(w.active_until(gap + 1), Some(gap + 7_200_000));
    }

    /// Guards the field syntax: lists, ranges, steps, names, 7 as Sunday, either-day rule.
    #[test]
    fn cron_fields() {
        let c = Cron::parse("*/15 9-17 * * mon-fri").unwrap();
        assert_eq!(c.minutes, 1 | 1 << 15 | 1 << 30 | 1 << 45);
        assert_eq!(c.weekdays, 0b0111110);
        assert_eq!(Cron::parse("0 0 * * 7").unwrap().weekdays, 1);
        assert_eq!(
            Cron::parse("0 0 1 JAN,jul *").unwrap().months,
            1 << 1 | 1 << 7
        );
        let either = Cron::parse("0 0 1 * mon").unwrap();
        let day = |d| NaiveDate::from_ymd_opt(2025, 9, d).unwrap();
        // 2025-09-01 is a Monday, the 8th too, the 2nd a Tuesday.
        assert!(either.on(day(1)) && either.on(day(8)) && !either.on(day(2)));
        for bad in [
            "0 2 * *",
            "60 * * * *",
            "0 0 0 * *",
            "0 0 * * funday",
            "5-1 * * * *",
            "*/0 * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    /// A one-off window is active from its start to its end, exclusive.
    #[test]
    fn a_one_off_window() {
        let w = Window {
            when: When::Once {
                start_ms: 1_000,
                end_ms: 2_000,
            },
            ..every("0 0 * * *", 1, chrono_tz::UTC)
        };
        assert_eq!(w.active_until(999), None);
        assert_eq!(w.active_until(1_000), Some(2_000));
        assert_eq!(w.active_until(2_000), None);
        assert_eq!(w.next_start(0), Some(1_000));
        assert_eq!(w.next_start(1_000), None);
    }
}
