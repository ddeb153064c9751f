//! Validation of a target's traffic shaping: `rate_limit` / `rate_burst`, `coalesce`, `flap`
//! and `[[targets.maintenance]]` windows (README, "Traffic shaping for status pages").

use std::time::Duration;

use chrono::NaiveDateTime;
use serde::Deserialize;
use toml::Spanned;

use super::raw::RawTarget;
use super::rules::{compile_condition, Condition, RawCondition};
use super::{Result, Validator};
use crate::deliver::{Cron, Flap, Shaping, When, Window};
use crate::store::RateLimit;

/// StatusHub's documented limit for writes: 5 requests per second (README, StatusHub).
pub const STATUSHUB_RATE: RateLimit = RateLimit {
    every_ms: 200,
    burst: 1,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlap {
    pub changes: Spanned<i64>,
    pub within: Spanned<String>,
    pub field: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    pub name: Spanned<String>,
    pub start: Option<Spanned<String>>,
    pub end: Option<Spanned<String>>,
    pub cron: Option<Spanned<String>>,
    pub duration: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub action: Option<Spanned<String>>,
    pub filter: Option<Vec<RawCondition>>,
}

impl Validator<'_> {
    pub(super) fn shaping(&self, i: usize, t: &RawTarget, statushub: bool) -> Result<Shaping> {
        let key = |k: &str| format!("targets[{i}].{k}");
        let rate = match &t.rate_limit {
            None if statushub => Some(STATUSHUB_RATE),
            None => None,
            Some(r) if matches!(r.get_ref().trim(), "off" | "none") => None,
            Some(r) => Some(RateLimit {
                every_ms: self.rate(r, &key("rate_limit"))?,
                burst: 1,
            }),
        };
        let rate = match (rate, &t.rate_burst) {
            (None, Some(b)) => {
                return self.err(
                    Some(b.span()),
                    &key("rate_burst"),
                    "applies only with a rate_limit",
                )
            }
            (Some(r), burst) => Some(RateLimit {
                burst: self.int(burst, &key("rate_burst"), 1..=10_000, 1)? as u32,
                ..r
            }),
            (None, None) => None,
        };
        let coalesce = match t.coalesce.as_ref().map(|c| c.get_ref().as_str()) {
            None => statushub,
            Some("latest") => true,
            Some("off") => false,
            Some(other) => {
                return self.err(
                    t.coalesce.as_ref().map(|c| c.span()),
                    &key("coalesce"),
                    format!("{other:?} is not \"latest\" or \"off\""),
                )
            }
        };
        let flap = match &t.flap {
            None => None,
            Some(f) => Some(self.flap(f, &key("flap"))?),
        };
        let mut windows = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (j, w) in t.maintenance.iter().flatten().enumerate() {
            let k = key(&format!("maintenance[{j}]"));
            if !names.insert(w.name.get_ref().clone()) {
                return self.err(
                    Some(w.name.span()),
                    &format!("{k}.name"),
                    format!("{:?} is used twice", w.name.get_ref()),
                );
            }
            windows.push(self.window(w, &k)?);
        }
        Ok(Shaping {
            rate,
            coalesce,
            flap,
            windows,
        })
    }

    /// `"5/s"`, `"300/min"`, `"1/2s"`: the interval between sends, in ms.
    fn rate(&self, r: &Spanned<String>, key: &str) -> Result<u64> {
        let text = r.get_ref().trim();
        let bad = || {
            self.err(
                Some(r.span()),
                key,
                format!(
                    "{text:?} is not a rate like \"5/s\", \"300/min\" or \"1/10s\" (or \"off\")"
                ),
            )
        };
        let Some((n, per)) = text.split_once('/') else {
            return bad();
        };
        let Ok(n) = n.trim().parse::<f64>() else {
            return bad();
        };
        let per = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => match humantime::parse_duration(other) {
                Ok(d) => d,
                Err(_) => return bad(),
            },
        };
        let every = per.as_secs_f64() * 1000.0 / n;
        if n.is_nan() || n <= 0.0 || !(1.0..=86_400_000.0).contains(&every) {
            return self.err(
                Some(r.span()),
                key,
                format!("{text:?}: one send per 1 ms to one per day at most"),
            );
        }
        Ok(every.round() as u64)
    }

    fn flap(&self, f: &Spanned<RawFlap>, key: &str) -> Result<Flap> {
        let f = f.get_ref();
        let changes = self.int(
            &Some(f.changes.clone()),
            &format!("{key}.changes"),
            1..=1000,
            1,
        )?;
        let within_key = format!("{key}.within");
        let within = self.duration(&Some(f.within.clone()), &within_key, Duration::ZERO)?;
        if within.is_zero() || within > Duration::from_secs(7 * 86_400) {
            return self.err(
                Some(f.within.span()),
                &within_key,
                "must be longer than zero and at most 7 days",
            );
        }
        let field = match &f.field {
            None => "entity_state".to_owned(),
            Some(v) if v.get_ref().trim().is_empty() => {
                return self.err(
                    Some(v.span()),
                    &format!("{key}.field"),
                    "must name an alert field",
                )
            }
            Some(v) => v.get_ref().clone(),
        };
        Ok(Flap {
            changes: changes as u32,
            within,
            field,
        })
    }

    fn window(&self, w: &RawWindow, key: &str) -> Result<Window> {
        let k = |s: &str| format!("{key}.{s}");
        let tz = match &w.timezone {
            None => chrono_tz::UTC,
            Some(z) => match z.get_ref().parse::<chrono_tz::Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    return self.err(
                        Some(z.span()),
                        &k("timezone"),
                        format!(
                            "{:?} is not an IANA time zone like \"Europe/Berlin\" or \"UTC\"",
                            z.get_ref()
                        ),
                    )
                }
            },
        };
        let when = match (&w.start, &w.end, &w.cron, &w.duration) {
            (Some(start), Some(end), None, None) => {
                let start_ms = self.local_time(start, &tz, &k("start"))?;
                let end_ms = self.local_time(end, &tz, &k("end"))?;
                if end_ms <= start_ms {
                    return self.err(Some(end.span()), &k("end"), "must be after start");
                }
                When::Once { start_ms, end_ms }
            }
            (None, None, Some(cron), Some(duration)) => {
                let cron_spec = Cron::parse(cron.get_ref())
                    .or_else(|e| self.err(Some(cron.span()), &k("cron"), e))?;
                let d = self.duration(&Some(duration.clone()), &k("duration"), Duration::ZERO)?;
                let max = Duration::from_secs(crate::deliver::MAX_WINDOW_DAYS as u64 * 86_400);
                if d.is_zero() || d > max {
                    return self.err(
                        Some(duration.span()),
                        &k("duration"),
                        "must be longer than zero and at most 7 days",
                    );
                }
                When::Every {
                    cron: cron_spec,
                    duration_ms: d.as_millis() as u64,
                }
            }
            _ => {
                return self.err(
                    Some(w.name.span()),
                    key,
                    "a maintenance window needs start and end, or cron and duration",
                )
            }
        };
        let skip = match w.action.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("hold") => false,
            Some("skip") => true,
            Some(other) => {
                return self.err(
                    w.action.as_ref().map(|a| a.span()),
                    &k("action"),
                    format!("{other:?} is not \"hold\" or \"skip\""),
                )
            }
        };
        let filter = self.filter(&w.filter, &k("filter"))?;
        Ok(Window {
            name: w.name.get_ref().clone(),
            when,
            tz,
            skip,
            filter,
        })
    }

    /// A `filter`: conditions on alert fields, all of which must hold; `key` names the list.
    pub(super) fn filter(
        &self,
        list: &Option<Vec<RawCondition>>,
        key: &str,
    ) -> Result<Vec<Condition>> {
        let mut filter = Vec::new();
        for (j, c) in list.iter().flatten().enumerate() {
            filter.push(
                compile_condition(c, &format!("{key}[{j}]"))
                    .or_else(|p| self.err(p.span, &p.key, p.message))?,
            );
        }
        Ok(filter)
    }

    /// `2025-08-01T22:00` (local to the window's time zone) or an RFC 3339 time with offset.
    fn local_time(&self, v: &Spanned<String>, tz: &chrono_tz::Tz, key: &str) -> Result<u64> {
        let text = v.get_ref().trim();
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
            if let Ok(ms) = u64::try_from(t.timestamp_millis()) {
                return Ok(ms);
            }
        }
        let local = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok());
        let ms = local.and_then(|l| {
            use chrono::Timelike;
            crate::deliver::local_ms(tz, l.date(), l.hour(), l.minute())
                .map(|m| m + u64::from(l.second()) * 1000)
        });
        match ms {
            Some(ms) => Ok(ms),
            None => self.err(
                Some(v.span()),
                key,
                format!(
                    "{text:?} is not a time like \"2025-08-01T22:00\" (in the window's timezone)"
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use super::*;

    const SOURCE: &str = "[[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n";

    fn parse(target: &str) -> Result<Config, ConfigError> {
        Config::parse(
            &format!("{SOURCE}[[targets]]\nname = \"t\"\n{target}"),
            "test.toml",
            std::path::Path::new("/tmp"),
        )
    }

    fn shaping(target: &str) -> Shaping {
        parse(target).unwrap().targets[0].shaping.clone()
    }

    /// Guards the defaults: a `statushub` target is limited to StatusHub's 5 writes/s and
    /// coalesces; other kinds shape nothing unless told; each can be turned off.
    #[test]
    fn statushub_shapes_by_default_and_others_do_not() {
        let hub = shaping("kind = \"statushub\"");
        assert_eq!(hub.rate, Some(STATUSHUB_RATE));
        assert!(hub.coalesce && hub.is_active());
        let off = shaping("kind = \"statushub\"\nrate_limit = \"off\"\ncoalesce = \"off\"");
        assert!(!off.is_active());
        let plain = shaping("kind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"");
        assert!(!plain.is_active());
    }

    /// Guards the rate syntax and the window and flap settings.
    #[test]
    fn settings_read_as_written() {
        let url = "kind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\n";
        for (text, every) in [
            ("5/s", 200),
            ("300/min", 200),
            ("1/10s", 10_000),
            ("2/h", 1_800_000),
        ] {
            let s = shaping(&format!("{url}rate_limit = \"{text}\"\nrate_burst = 3"));
            assert_eq!(
                s.rate,
                Some(RateLimit {
                    every_ms: every,
                    burst: 3
                }),
                "{text}"
            );
        }
        let s = shaping(&format!(
            "{url}flap = {{ changes = 4, within = \"10m\" }}\n\
             [[targets.maintenance]]\nname = \"weekly\"\ncron = \"0 2 * * sun\"\nduration = \"2h\"\n\
             timezone = \"Europe/Berlin\"\naction = \"skip\"\n\
             [[targets.maintenance]]\nname = \"once\"\nstart = \"2025-08-01T22:00\"\n\
             end = \"2025-08-02T02:00\"\ntimezone = \"America/New_York\"\n\
             filter = [{{ field = \"entity_id\", wildcard = \"db*\" }}]\n"
        ));
        let flap = s.flap.unwrap();
        assert_eq!(
            (flap.changes, flap.within.as_secs(), flap.field.as_str()),
            (4, 600, "entity_state")
        );
        assert_eq!(s.windows.len(), 2);
        assert!(s.windows[0].skip && !s.windows[1].skip);
        // 22:00 in New York in summer is 02:00 UTC.
        assert_eq!(
            s.windows[1].when,
            When::Once {
                start_ms: 1_754_100_000_000,
                end_ms: 1_754_114_400_000
            }
        );
    }

    /// Guards the errors: each names the key and the line.
    #[test]
    fn bad_settings_name_the_key_and_line() {
        let url = "kind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\n";
        for (setting, expect) in [
            ("rate_limit = \"fast\"", "test.toml:9: targets[0].rate_limit: \"fast\" is not a rate"),
            ("rate_burst = 2", "targets[0].rate_burst: applies only with a rate_limit"),
            ("coalesce = \"newest\"", "targets[0].coalesce: \"newest\" is not \"latest\" or \"off\""),
            ("flap = { changes = 0, within = \"1m\" }", "targets[0].flap.changes: 0 is out of range"),
            (
                "[[targets.maintenance]]\nname = \"w\"\ncron = \"0 2 * *\"\nduration = \"1h\"",
                "targets[0].maintenance[0].cron: \"0 2 * *\" is not a cron schedule",
            ),
            (
                "[[targets.maintenance]]\nname = \"w\"\ncron = \"0 2 * * *\"\nduration = \"8d\"",
                "targets[0].maintenance[0].duration: must be longer than zero and at most 7 days",
            ),
            (
                "[[targets.maintenance]]\nname = \"w\"\nstart = \"2025-08-01T22:00\"\nend = \"2025-08-01T21:00\"",
                "targets[0].maintenance[0].end: must be after start",
            ),
            (
                "[[targets.maintenance]]\nname = \"w\"\ncron = \"0 2 * * *\"\nduration = \"1h\"\ntimezone = \"Mars/Olympus\"",
                "targets[0].maintenance[0].timezone: \"Mars/Olympus\" is not an IANA time zone",
            ),
            (
                "[[targets.maintenance]]\nname = \"w\"\nduration = \"1h\"",
                "targets[0].maintenance[0]: a maintenance window needs start and end, or cron and duration",
            ),
        ] {
            let e = parse(&format!("{url}{setting}")).unwrap_err().to_string();
            assert!(e.contains(expect), "{setting}: {e}");
        }
    }
}
