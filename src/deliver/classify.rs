//! *Whether* to try again: an attempt's result becomes an action with a reason. *When* is the
//! policy's question ([`super::RetryPolicy`]).

use std::time::Duration;

use crate::targets::AttemptResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Done,
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    Permanent {
        reason: String,
    },
    /// The target chose not to send this event; recorded, never retried.
    Skip {
        reason: String,
    },
}

pub fn classify(result: &AttemptResult) -> Action {
    match result {
        AttemptResult::Response {
            status,
            retry_after,
            ..
        } => match *status {
            200..=299 => Action::Done,
            408 | 425 | 429 | 500..=599 => Action::Retry {
                reason: format!("HTTP {status}"),
                retry_after: *retry_after,
            },
            300..=399 => Action::Permanent {
                reason: format!("HTTP {status}: redirects are not followed"),
            },
            _ => Action::Permanent {
                reason: format!("HTTP {status}"),
            },
        },
        AttemptResult::Connect(e) => Action::Retry {
            reason: format!("connection failed: {e}"),
            retry_after: None,
        },
        AttemptResult::Timeout => Action::Retry {
            reason: "timed out".into(),
            retry_after: None,
        },
        AttemptResult::Io(e) => Action::Retry {
            reason: e.clone(),
            retry_after: None,
        },
        AttemptResult::Invalid(e) => Action::Permanent { reason: e.clone() },
        AttemptResult::Skipped(e) => Action::Skip { reason: e.clone() },
    }
}

/// Reads `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(at.timestamp().max(0) as u64);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> Action {
        classify(&AttemptResult::Response {
            status: s,
            retry_after: None,
            excerpt: None,
        })
    }

    #[test]
    fn statuses() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(status(s), Action::Done, "{s}");
        }
        for s in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(matches!(status(s), Action::Retry { .. }), "{s}");
        }
        for s in [301, 400, 401, 403, 404, 405, 410, 413, 422] {
            assert!(matches!(status(s), Action::Permanent { .. }), "{s}");
        }
    }

    #[test]
    fn transport_failures_retry_and_invalid_requests_do_not() {
        assert!(matches!(
            classify(&AttemptResult::Timeout),
            Action::Retry { .. }
        ));
        assert!(matches!(
            classify(&AttemptResult::Connect("refused".into())),
            Action::Retry { .. }
        ));
        assert!(matches!(
            classify(&AttemptResult::Invalid("template".into())),
            Action::Permanent { .. }
        ));
    }

    #[test]
    fn retry_after_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_408_880);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(3720))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
