//! Incidents, as VictorOps keeps them, for the `statushub` target: it fires the way VictorOps'
//! **Any-Incident** outgoing webhook does, when an entity's incident is opened, acknowledged or
//! resolved, and not for every alert.
//!
//! The relay keeps one small record per `(target, entity)`: the entity's open incident, if any
//! (its number, phase, alert count and times). Each delivery is one alert; [`step`] applies it to
//! the record and says what [`Change`] it made:
//!
//! | alert `message_type` | no open incident | open (`UNACKED`) | acknowledged (`ACKED`) |
//! |---|---|---|---|
//! | `CRITICAL`, `WARNING` | **triggered**: opens incident N | updated (a repeat) | **triggered** again (back to `UNACKED`) |
//! | `ACKNOWLEDGEMENT` | no incident | **acknowledged** | updated (a repeat) |
//! | `RECOVERY`, `OK` | no incident | **resolved** | **resolved** |
//! | `INFO`, anything else | no incident | no incident | no incident |
//!
//! `fire_on` ([`FireOn`]) lists the changes that send a request; the default, `triggered`,
//! `acknowledged` and `resolved`, is Any-Incident. Adding `updated` and `no_incident` widens it
//! to every alert. A delivery that does not fire is recorded as skipped, with the reason.
//!
//! `message_type` is read case-insensitively (VictorOps' REST documentation sends `critical`),
//! and an unknown one counts as `INFO`, as VictorOps accepts it. `WARNING` opens an incident
//! like `CRITICAL` (VictorOps makes that a setting; a rule that sets `message_type` to `INFO`
//! for warnings turns it off). A resolved incident's record is deleted, so the next
//! `CRITICAL` opens a new incident with a new number, and records exist only for entities with
//! an open incident.
//!
//! The record is keyed by the delivery's ordering key, which for a `statushub` target is always
//! `entity_id` (the config refuses another): the delivery queue serializes deliveries of one
//! key per target, so a record is read and changed by one delivery at a time, in the order the
//! alerts arrived.

use serde::{Deserialize, Serialize};

use crate::normalize::victorops::{actor, millis, IncidentView};
use crate::normalize::Event;

/// What an alert did to its entity's incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    Triggered,
    Acknowledged,
    Resolved,
    /// The alert joined an open incident and left its phase as it was.
    Updated,
    /// The alert touched no incident.
    NoIncident,
}

impl Change {
    pub const ALL: [Change; 5] = [
        Change::Triggered,
        Change::Acknowledged,
        Change::Resolved,
        Change::Updated,
        Change::NoIncident,
    ];

    /// The name `fire_on` uses.
    pub fn name(self) -> &'static str {
        match self {
            Change::Triggered => "triggered",
            Change::Acknowledged => "acknowledged",
            Change::Resolved => "resolved",
            Change::Updated => "updated",
            Change::NoIncident => "no_incident",
        }
    }

    pub fn from_name(name: &str) -> Option<Change> {
        Change::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Which changes fire a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FireOn(Vec<Change>);

impl Default for FireOn {
    /// VictorOps' Any-Incident: opened, acknowledged, resolved.
    fn default() -> FireOn {
        FireOn(vec![
            Change::Triggered,
            Change::Acknowledged,
            Change::Resolved,
        ])
    }
}

impl FireOn {
    pub fn new(changes: Vec<Change>) -> FireOn {
        FireOn(changes)
    }

    pub fn fires(&self, change: Change) -> bool {
        self.0.contains(&change)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|c| c.name()).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Unacked,
    Acked,
    Resolved,
}

impl Phase {
    pub fn vo_name(self) -> &'static str {
        match self {
            Phase::Unacked => "UNACKED",
            Phase::Acked => "ACKED",
            Phase::Resolved => "RESOLVED",
        }
    }
}

/// The durable record of an entity's open incident (JSON in the store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// The incident's number: the sequence number of the delivery that opened it, unique in
    /// the store and the same for every update of the incident.
    pub number: u64,
    pub phase: Phase,
    /// `CRITICAL` or `WARNING` while open, `OK` once resolved.
    pub state: String,
    pub alert_count: u64,
    pub opened_ms: i64,
    pub state_start_ms: i64,
    pub last_ms: i64,
    pub first_alert: String,
    #[serde(default)]
    pub acked: Option<(String, i64)>,
    #[serde(default)]
    pub resolved: Option<(String, i64)>,
}

impl Incident {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("incident records serialize")
    }

    /// An incident `hookrelay rules test` assumes an entity has: number 1, opened by one
    /// earlier alert at the event's time, in `phase`.
    pub fn assumed(phase: Phase, event: &Event) -> Incident {
        let at = millis(&event.occurred_at);
        Incident {
            number: 1,
            phase,
            state: "CRITICAL".into(),
            alert_count: 1,
            opened_ms: at,
            state_start_ms: at,
            last_ms: at,
            first_alert: String::new(),
            acked: (phase == Phase::Acked).then(|| (actor(event), at)),
            resolved: None,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Incident, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("incident record: {e}"))
    }

    fn view(&self, sequence: u64) -> IncidentView {
        IncidentView {
            number: self.number,
            phase: self.phase.vo_name(),
            state: self.state.clone(),
            alert_count: self.alert_count,
            opened_ms: self.opened_ms,
            state_start_ms: self.state_start_ms,
            last_ms: self.last_ms,
            first_alert: self.first_alert.clone(),
            acked: self.acked.clone(),
            resolved: self.resolved.clone(),
            sequence,
        }
    }
}

/// One alert applied to its entity's incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub change: Change,
    /// Why, in words, for the skip reason and `rules test`.
    pub why: String,
    /// The incident as the request shows it (after the alert).
    pub view: IncidentView,
    /// What to store: `None` leaves the record as it was, `Some(None)` deletes it.
    pub write: Option<Option<Incident>>,
}

impl Step {
    /// The reason recorded for a delivery that does not fire.
    pub fn skip_reason(&self, fire_on: &FireOn) -> String {
        format!(
            "not fired: {} (a change of kind {:?}; fire_on = [{}])",
            self.why,
            self.change.name(),
            fire_on.names().join(", ")
        )
    }
}

/// The alert's `message_type`, as the table reads it.
fn kind(event: &Event) -> &'static str {
    let m = event
        .alert
        .get("message_type")
        .map(|m| m.to_ascii_uppercase())
        .unwrap_or_default();
    match m.as_str() {
        "CRITICAL" => "CRITICAL",
        "WARNING" => "WARNING",
        "ACKNOWLEDGEMENT" => "ACKNOWLEDGEMENT",
        "RECOVERY" | "OK" => "RECOVERY",
        _ => "INFO",
    }
}

/// Applies `event` (delivered as delivery `seq`) to the entity's incident `before`.
pub fn step(before: Option<Incident>, event: &Event, seq: u64) -> Step {
    let at = millis(&event.occurred_at);
    let kind = kind(event);
    let open = before.filter(|i| i.phase != Phase::Resolved);
    let no_incident = |why: String| Step {
        change: Change::NoIncident,
        why,
        view: IncidentView::of_alert(event, seq),
        write: None,
    };
    let Some(mut inc) = open else {
        return match kind {
            "CRITICAL" | "WARNING" => {
                let inc = Incident {
                    number: seq,
                    phase: Phase::Unacked,
                    state: kind.into(),
                    alert_count: 1,
                    opened_ms: at,
                    state_start_ms: at,
                    last_ms: at,
                    first_alert: event.id.clone(),
                    acked: None,
                    resolved: None,
                };
                Step {
                    change: Change::Triggered,
                    why: format!("{kind} opens incident #{seq}"),
                    view: inc.view(seq),
                    write: Some(Some(inc)),
                }
            }
            "INFO" => no_incident("INFO never opens an incident".into()),
            other => no_incident(format!("{other} with no open incident")),
        };
    };
    if kind == "INFO" {
        return Step {
            change: Change::NoIncident,
            why: format!("INFO does not change incident #{}", inc.number),
            view: inc.view(seq),
            write: None,
        };
    }
    inc.alert_count += 1;
    inc.last_ms = at;
    let number = inc.number;
    let (change, why) = match (kind, inc.phase) {
        ("RECOVERY", _) => {
            inc.phase = Phase::Resolved;
            inc.state = "OK".into();
            inc.state_start_ms = at;
            inc.resolved = Some((actor(event), at));
            (
                Change::Resolved,
                format!("RECOVERY resolves incident #{number}"),
            )
        }
        ("ACKNOWLEDGEMENT", Phase::Unacked) => {
            inc.phase = Phase::Acked;
            inc.acked = Some((actor(event), at));
            (
                Change::Acknowledged,
                format!("ACKNOWLEDGEMENT acknowledges incident #{number}"),
            )
        }
        ("ACKNOWLEDGEMENT", _) => (
            Change::Updated,
            format!("incident #{number} is already acknowledged"),
        ),
        (_, Phase::Acked) => {
            inc.phase = Phase::Unacked;
            inc.acked = None;
            set_state(&mut inc, kind, at);
            (
                Change::Triggered,
                format!("{kind} triggers acknowledged incident #{number} again"),
            )
        }
        _ => {
            set_state(&mut inc, kind, at);
            (
                Change::Updated,
                format!("a repeated {kind} while incident #{number} is open"),
            )
        }
    };
    let view = inc.view(seq);
    let write = if inc.phase == Phase::Resolved {
        None
    } else {
        Some(inc)
    };
    Step {
        change,
        why,
        view,
        write: Some(write),
    }
}

fn set_state(inc: &mut Incident, kind: &str, at: i64) {
    if inc.state != kind {
        inc.state = kind.into();
        inc.state_start_ms = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(message_type: &str, id: &str) -> Event {
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "id": id, "source": "s", "kind": "pagerduty", "format": "f", "type": "t",
            "dedup_key": id, "occurred_at": "2021-06-04T13:35:29.781Z",
            "received_at": "2021-06-04T13:35:30Z", "service": {}, "status": null,
            "previous_status": null, "title": "t", "details": null, "components": [],
            "query": {}, "alert": {"entity_id": "E"}
        }))
        .unwrap();
        e.alert.insert("message_type".into(), message_type.into());
        e
    }

    /// Runs alerts through one entity's record as the delivery path does; the changes.
    fn run(types: &[&str]) -> Vec<Change> {
        let mut record: Option<Incident> = None;
        types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let s = step(record.clone(), &alert(t, &format!("e{i}")), i as u64 + 1);
                if let Some(w) = s.write.clone() {
                    record = w;
                }
                s.change
            })
            .collect()
    }

    /// Guards the firing table: every cell of it (breaking a transition changes a change).
    #[test]
    fn the_firing_table() {
        use Change::*;
        assert_eq!(
            run(&[
                "INFO",
                "RECOVERY",
                "ACKNOWLEDGEMENT",
                "critical",
                "CRITICAL",
                "WARNING"
            ]),
            [NoIncident, NoIncident, NoIncident, Triggered, Updated, Updated]
        );
        assert_eq!(
            run(&[
                "CRITICAL",
                "ACKNOWLEDGEMENT",
                "ACKNOWLEDGEMENT",
                "INFO",
                "CRITICAL"
            ]),
            [Triggered, Acknowledged, Updated, NoIncident, Triggered]
        );
        assert_eq!(
            run(&[
                "WARNING",
                "ACKNOWLEDGEMENT",
                "OK",
                "RECOVERY",
                "CRITICAL",
                "RECOVERY"
            ]),
            [
                Triggered,
                Acknowledged,
                Resolved,
                NoIncident,
                Triggered,
                Resolved
            ]
        );
        assert_eq!(run(&["nonsense", "CRITICAL"]), [NoIncident, Triggered]);
    }

    /// Guards the record's contents: the number is kept across updates, counts grow, a
    /// resolved incident's record is deleted and the next one gets a new number.
    #[test]
    fn records_count_alerts_and_resolution_deletes_them() {
        let s1 = step(None, &alert("CRITICAL", "a"), 7);
        let rec = s1.write.clone().unwrap().unwrap();
        assert_eq!(
            (rec.number, rec.alert_count, rec.phase),
            (7, 1, Phase::Unacked)
        );
        let s2 = step(Some(rec), &alert("WARNING", "b"), 9);
        let rec = s2.write.clone().unwrap().unwrap();
        assert_eq!(
            (rec.number, rec.alert_count, rec.state.as_str()),
            (7, 2, "WARNING")
        );
        assert_eq!(s2.view.sequence, 9);
        let s3 = step(Some(rec.clone()), &alert("RECOVERY", "c"), 11);
        assert_eq!(
            s3.write,
            Some(None),
            "a resolved incident's record is deleted"
        );
        assert_eq!(
            (s3.view.number, s3.view.phase, s3.view.alert_count),
            (7, "RESOLVED", 3)
        );
        assert_eq!(Incident::decode(&rec.encode()).unwrap(), rec);
        let s4 = step(None, &alert("CRITICAL", "d"), 12);
        assert_eq!(s4.view.number, 12);
    }
}
