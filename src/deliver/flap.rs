//! Flap suppression: an entity whose state changes more than `changes` times within `within`
//! is held until it has been stable for `within`, and then gets the state it settled on, once.
//!
//! The state is one alert field (`entity_state` by default: `CRITICAL`, `WARNING`, `OK`, …);
//! a change is an alert whose value differs from the one before it (an alert without the
//! field changes nothing). Changes are dated by when the relay received the alert, so a
//! backlog drained after an outage is judged by when its alerts came, not when they are
//! sent. The count lives in the key's record ([`super::keyrecord`]) and is written with each
//! delivery's outcome, so it survives restarts and is shared by every instance on PostgreSQL.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::normalize::{parse_time, Event};
use crate::store::Seq;

/// A target's flap suppression (validated config).
#[derive(Debug, Clone, PartialEq)]
pub struct Flap {
    /// More changes than this within `within` is flapping.
    pub changes: u32,
    pub within: Duration,
    /// The alert field whose value is the entity's state.
    pub field: String,
}

/// An entity's recent state changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlapState {
    /// The state of the last alert counted.
    pub last: Option<String>,
    /// When the most recent changes were received (ms), oldest first, at most `changes + 1`.
    pub changes: Vec<u64>,
    /// The last delivery counted: a held or retried delivery is looked at again, and counted
    /// once.
    pub counted: Option<Seq>,
    /// Set while the entity flaps (held), until the state it settled on is delivered.
    #[serde(default)]
    pub flapped: bool,
}

/// What flap suppression says about a key's next send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Flapping: hold until the entity has been stable for `within`, at this time.
    HoldUntil(u64),
}

impl Flap {
    /// Counts one alert (delivery `seq`) of the entity.
    pub fn count(&self, state: &mut FlapState, seq: Seq, event: &Event) {
        if state.counted == Some(seq) {
            return;
        }
        state.counted = Some(seq);
        let Some(value) = event.alert.get(&self.field).filter(|v| !v.is_empty()) else {
            return;
        };
        if state.last.as_deref() == Some(value.as_str()) {
            return;
        }
        let first = state.last.is_none();
        state.last = Some(value.clone());
        if first {
            // The first state seen is where the entity starts, not a change.
            return;
        }
        let at = parse_time(&event.received_at).map_or(0, |t| t.timestamp_millis().max(0) as u64);
        state.changes.push(at);
        let keep = self.changes as usize + 1;
        if state.changes.len() > keep {
            state.changes.drain(..state.changes.len() - keep);
        }
    }

    /// Whether the entity flaps at `now`: more than `changes` changes within `within` of its
    /// last change, and not yet stable for `within` since. Marks it flapped while it does.
    pub fn verdict(&self, state: &mut FlapState, now: u64) -> Verdict {
        let Some(&last) = state.changes.last() else {
            return Verdict::Send;
        };
        let within = self.within.as_millis() as u64;
        let recent = state
            .changes
            .iter()
            .filter(|&&at| at + within > last)
            .count();
        let stable_at = last.saturating_add(within);
        if recent > self.changes as usize && now < stable_at {
            state.flapped = true;
            Verdict::HoldUntil(stable_at)
        } else {
            Verdict::Send
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(state: &str, received_ms: i64) -> Event {
        let at = chrono::DateTime::from_timestamp_millis(received_ms).unwrap();
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "id": "x", "source": "s", "kind": "statusgator", "format": "f", "type": "t",
            "dedup_key": "x", "occurred_at": "2025-01-01T00:00:00Z",
            "received_at": crate::normalize::format_time(at), "service": {}, "status": null,
            "previous_status": null, "title": "t", "details": null, "components": [],
            "query": {}, "alert": {}
        }))
        .unwrap();
        e.alert.insert("entity_state".into(), state.into());
        e
    }

    fn flap() -> Flap {
        Flap {
            changes: 3,
            within: Duration::from_secs(10),
            field: "entity_state".into(),
        }
    }

    /// Guards the count and the verdict: repeats are not changes, a delivery is counted once,
    /// the fourth change within 10 s holds until 10 s after the last one, then it sends.
    #[test]
    fn more_than_n_changes_within_t_hold_until_stable() {
        let f = flap();
        let mut s = FlapState::default();
        let base = 1_700_000_000_000;
        let states = ["CRITICAL", "CRITICAL", "OK", "CRITICAL", "OK"];
        for (i, st) in states.iter().enumerate() {
            f.count(&mut s, i as u64 + 1, &alert(st, base + i as i64 * 1000));
            f.count(&mut s, i as u64 + 1, &alert(st, base + i as i64 * 1000));
        }
        assert_eq!(s.changes.len(), 3, "{s:?}");
        assert_eq!(f.verdict(&mut s, base as u64 + 5000), Verdict::Send);
        f.count(&mut s, 6, &alert("CRITICAL", base + 5000));
        let until = base as u64 + 15_000;
        assert_eq!(
            f.verdict(&mut s, base as u64 + 5000),
            Verdict::HoldUntil(until)
        );
        assert!(s.flapped);
        assert_eq!(s.changes.len(), 4, "keeps changes + 1");
        assert_eq!(f.verdict(&mut s, until), Verdict::Send, "stable for 10 s");
        // Changes spread wider than `within` are not flapping.
        let mut s = FlapState::default();
        for i in 0..8 {
            let st = if i % 2 == 0 { "OK" } else { "CRITICAL" };
            f.count(&mut s, i + 1, &alert(st, base + i as i64 * 4000));
        }
        assert_eq!(f.verdict(&mut s, base as u64 + 28_000), Verdict::Send);
    }
}
