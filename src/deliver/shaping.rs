//! Traffic shaping for status pages: per-target rate limits, latest-state coalescing, flap
//! suppression and maintenance windows, applied to a claimed head before anything is sent.
//!
//! One step of a lane on a shaped target ([`Worker::deliver_shaped`]):
//!
//! 1. The key's record is read when the target keeps one (an incident target, flap
//!    suppression, maintenance windows; see [`super::keyrecord`]).
//! 2. With coalescing on, or while the key is held or flapping, the key's whole backlog is
//!    read ([`Store::key_backlog`]): the newest delivery is *kept* and the ones before it
//!    will be superseded by it. Only the claim holder reads or changes a key, so nothing
//!    older is ever sent after something newer, and nothing in flight is superseded.
//! 3. Flap suppression counts the backlog's state changes; a flapping entity is held until
//!    stable. A maintenance window that applies to the kept delivery holds it until the
//!    window ends, or skips it. A hold supersedes the backlog as a send would and marks the
//!    key held, so when it is released the entity gets its current state, not the backlog.
//! 4. Before a request goes out the target's rate limit is spent ([`Store::rate_take`]); when
//!    it has no room the claim is released and every lane waits until it has.
//! 5. The attempt's outcome, the superseded deliveries and the key's record are one write
//!    ([`Store::finish_shaped`]): a crash anywhere before it leaves the key as it was.
//!
//! A 429 with `Retry-After` (on any target) pauses the whole target for that long, also
//! through the shared limit on PostgreSQL when the target has one, does not count toward
//! suspension, and does not spend the delivery's retry budget ([`Next::Throttled`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::flap::{Flap, Verdict};
use super::incident::{self, Decision};
use super::keyrecord::KeyRecord;
use super::window::Window;
use super::{attempt_record, classify, now_ms, Action, Outcome, TargetRuntime, TargetSpec, Worker};
use crate::normalize::Event;
use crate::store::{
    Delivery, Next, RateLimit, Seq, Shaped, ShapedOutcome, Store, StoreError, MAX_BACKLOG,
};
use crate::targets::AttemptResult;

/// How a target shapes its traffic (validated config).
#[derive(Debug, Clone, Default)]
pub struct Shaping {
    pub rate: Option<RateLimit>,
    /// Latest-state coalescing: of a key's waiting deliveries only the newest is sent.
    pub coalesce: bool,
    pub flap: Option<Flap>,
    pub windows: Vec<Window>,
}

impl Shaping {
    pub fn is_active(&self) -> bool {
        self.rate.is_some() || self.coalesce || self.flap.is_some() || !self.windows.is_empty()
    }
}

impl TargetRuntime {
    /// When lanes may claim again, if not yet.
    pub fn paused_until(&self, now: u64) -> Option<u64> {
        let until = self.paused_until.load(Ordering::Relaxed);
        (until > now).then_some(until)
    }

    /// Keeps every lane from claiming before `until` (ms).
    pub fn pause_until(&self, until: u64) {
        self.paused_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether one of the target's maintenance windows is open.
    pub fn in_maintenance(&self, now: u64) -> bool {
        let spec = self.spec();
        let windows = &spec.config.shaping.windows;
        windows.iter().any(|w| w.active_until(now).is_some())
    }

    /// The target's traffic shaping as the admin API shows it (`shaping` in `GET /targets`).
    pub fn shaping_view(&self, now: u64) -> serde_json::Value {
        let spec = self.spec();
        let s = &spec.config.shaping;
        let m = &self.metrics;
        let windows: Vec<_> = s
            .windows
            .iter()
            .map(|w| {
                serde_json::json!({
                    "name": w.name,
                    "action": if w.skip { "skip" } else { "hold" },
                    "timezone": w.tz.name(),
                    "active_until": w.active_until(now).map(time),
                    "next_start": w.next_start(now).map(time),
                })
            })
            .collect();
        serde_json::json!({
            "rate_limit": s.rate.map(|r| serde_json::json!({
                "per_second": 1000.0 / r.every_ms as f64, "burst": r.burst,
            })),
            "coalesce": if s.coalesce { "latest" } else { "off" },
            "flap": s.flap.as_ref().map(|f| serde_json::json!({
                "changes": f.changes, "within_seconds": f.within.as_secs_f64(), "field": f.field,
            })),
            "maintenance": windows,
            "paused_until": self.paused_until(now).map(time),
            "superseded": m.superseded.load(Ordering::Relaxed),
            "held": m.held.load(Ordering::Relaxed),
            "rate_limited": m.rate_limited.load(Ordering::Relaxed),
        })
    }
}

/// What one shaped step did, and whether the target answered (for a probe).
pub(super) struct Step {
    outcome: Outcome,
    answered: bool,
}

impl Step {
    fn quiet(outcome: Outcome) -> Step {
        Step {
            outcome,
            answered: false,
        }
    }
}

/// What holds or skips a key's kept delivery.
enum Hold {
    Until(u64, String),
    Skip(String),
}

impl<S: Store> Worker<S> {
    /// The outcome of a recorded attempt, logged.
    pub(super) fn report(
        &self,
        seq: Seq,
        next: Next,
        number: u32,
        error: Option<String>,
        latency_ms: u64,
    ) -> Outcome {
        let target = &self.target;
        match next {
            Next::Done => {
                tracing::debug!(target_name = %target.name, seq, attempt = number, latency_ms, "delivered");
                Outcome::Delivered(seq)
            }
            Next::Retry { due_ms } | Next::Throttled { due_ms } => {
                tracing::info!(target_name = %target.name, seq, attempt = number, error = error.as_deref(), retry_in_ms = due_ms.saturating_sub(now_ms()), "delivery failed, will retry");
                Outcome::Retrying { seq, due_ms }
            }
            Next::Dead => {
                tracing::warn!(target_name = %target.name, seq, attempt = number, error = error.as_deref(), "delivery dead-lettered");
                Outcome::Dead(seq)
            }
            Next::Skipped => {
                tracing::debug!(target_name = %target.name, seq, reason = error.as_deref(), "delivery skipped");
                Outcome::Skipped(seq)
            }
        }
    }

    /// When a failed attempt is tried again, by the target's retry policy; a 429 with
    /// `Retry-After` is retried then without spending the retry budget.
    pub(super) async fn next_of(
        &self,
        spec: &TargetSpec,
        delivery: &Delivery,
        number: u32,
        result: &AttemptResult,
        action: &Action,
    ) -> Next {
        match action {
            Action::Done => Next::Done,
            Action::Retry { retry_after, .. } => {
                let now = now_ms();
                let policy = &spec.config.retry;
                if let (AttemptResult::Response { status: 429, .. }, Some(ra)) =
                    (result, retry_after)
                {
                    // At least a second: a receiver answering `Retry-After: 0` again and
                    // again must not make the relay spin.
                    let wait = (*ra)
                        .min(policy.retry_after_max)
                        .max(std::time::Duration::from_secs(1));
                    return Next::Throttled {
                        due_ms: now.saturating_add(wait.as_millis() as u64),
                    };
                }
                let retry = number.saturating_sub(delivery.retry_base);
                match policy.delay(retry, fastrand::f64(), *retry_after) {
                    // Saturating: a policy whose delays overflow waits for ever rather than
                    // wrapping into the past.
                    Some(delay) => Next::Retry {
                        due_ms: now
                            .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
                    },
                    None => Next::Dead,
                }
            }
            Action::Permanent { .. } => Next::Dead,
            Action::Skip { .. } => Next::Skipped,
        }
    }

    /// A 429 asked the target to wait until `until`: every lane of this instance waits, and
    /// every instance when the target's rate limit is shared through the store.
    pub(super) async fn throttle(&self, until: u64) {
        let t = &self.target;
        t.pause_until(until);
        t.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        if let Some(limit) = t.spec().config.shaping.rate {
            if let Err(e) = self.store.rate_pause(t.id, limit, until).await {
                tracing::warn!(target_name = %t.name, error = %e, "could not share the pause");
            }
        }
        tracing::info!(target_name = %t.name, pause_ms = until.saturating_sub(now_ms()), "the receiver asked to wait (429); the target pauses");
    }

    /// One step on a shaped target, from its claimed `head` (see the module docs).
    pub(super) async fn deliver_shaped(&self, head: Delivery) -> Result<Outcome, StoreError> {
        let result = self.shaped(&head, false).await;
        if result.is_err() {
            self.store.release(head.seq);
        }
        result.map(|s| s.outcome)
    }

    /// A suspended target's probe of `head`, shaped as a lane's step is (so the probe that
    /// finds the target back sends the key's current state); `true` when the target answered.
    /// As for any probe, a failed try of a delivery not yet due is not recorded.
    pub(super) async fn probe_shaped(&self, head: Delivery) -> Result<bool, StoreError> {
        let result = self.shaped(&head, true).await;
        if result.is_err() {
            self.store.release(head.seq);
        }
        result.map(|s| s.answered)
    }

    async fn shaped(&self, head: &Delivery, probe: bool) -> Result<Step, StoreError> {
        let t = &self.target;
        let spec = t.spec();
        let shaping = &spec.config.shaping;
        // A target that sends whatever it claims (unless held) spends its rate limit before
        // reading a backlog: lanes that find no room then cost a claim, nothing more. An
        // incident target spends it only for alerts that fire (in `finish`).
        if spec.target.fire_on().is_none() {
            if let Some(wait) = self.take_rate(head, &spec, now_ms()).await? {
                return Ok(wait);
            }
        }
        let keeps_record = spec.target.fire_on().is_some()
            || shaping.flap.is_some()
            || !shaping.windows.is_empty();
        let mut rec = if keeps_record {
            let bytes = self.store.key_state(t.id, &head.ordering_key).await?;
            KeyRecord::decode(bytes.as_deref(), &t.name, head.seq)
        } else {
            KeyRecord::default()
        };
        let flapping = rec.flap.as_ref().is_some_and(|f| f.flapped);
        let mut backlog = if shaping.coalesce || rec.held.is_some() || flapping {
            self.store.key_backlog(head, MAX_BACKLOG).await?
        } else {
            Vec::new()
        };
        if backlog.first().map(|d| d.seq) != Some(head.seq) {
            backlog = vec![head.clone()];
        }
        let kept = backlog.pop().expect("the head at least");
        let superseded: Vec<Seq> = backlog.iter().map(|d| d.seq).collect();
        let Some(event) = self.event_cached(kept.event_id).await? else {
            // Recorded as a permanent failure by the plain path's rules.
            let parts = (kept, superseded.as_slice(), rec, keeps_record);
            return self.finish(head, parts, None, None, probe).await;
        };
        // Superseded alerts count for an incident target and for flapping; otherwise they
        // are only let go of in the cache (each is one of its event's deliveries).
        let mut older: Vec<(Arc<Event>, Seq)> = Vec::new();
        let reads_older = spec.target.fire_on().is_some() || shaping.flap.is_some();
        for d in &backlog {
            if !reads_older {
                self.events.take(&d.event_id);
            } else if let Some(e) = self.event_cached(d.event_id).await? {
                older.push((e, d.seq));
            }
        }
        let now = now_ms();
        let mut hold = None;
        if let Some(flap) = &shaping.flap {
            let mut state = rec.flap.take().unwrap_or_default();
            for (e, seq) in &older {
                flap.count(&mut state, *seq, e);
            }
            flap.count(&mut state, kept.seq, &event);
            if let Verdict::HoldUntil(until) = flap.verdict(&mut state, now) {
                hold = Some(Hold::Until(
                    until,
                    format!(
                        "held: flapping (more than {} changes of {} within {}); sent once stable, at {}",
                        flap.changes,
                        flap.field,
                        humantime::format_duration(flap.within),
                        time(until)
                    ),
                ));
            }
            rec.flap = Some(state);
        }
        if hold.is_none() {
            hold = maintenance(&shaping.windows, &event, now);
        }
        let metrics = &t.metrics;
        if let Some(Hold::Until(until, note)) = hold {
            rec.held = Some(note.clone());
            let shaped = Shaped {
                head: head.clone(),
                kept: kept.clone(),
                superseded: superseded.clone(),
                outcome: ShapedOutcome::Hold {
                    due_ms: until,
                    note: note.clone(),
                },
                key_state: Some(rec.encode()),
            };
            self.store.finish_shaped(shaped).await?;
            metrics.held.fetch_add(1, Ordering::Relaxed);
            metrics
                .superseded
                .fetch_add(superseded.len() as u64, Ordering::Relaxed);
            tracing::info!(target_name = %t.name, seq = kept.seq, superseded = superseded.len(), note, "delivery held");
            return Ok(Step::quiet(Outcome::Held {
                seq: kept.seq,
                until_ms: until,
            }));
        }
        rec.held = None;
        let skip = match hold {
            Some(Hold::Skip(reason)) => Some(reason),
            _ => None,
        };
        let parts = (kept, superseded.as_slice(), rec, keeps_record);
        self.finish(head, parts, Some((&event, &older)), skip, probe)
            .await
    }

    /// Spends one send of the target's rate limit; when it has no room the claim goes back,
    /// every lane waits for the room, and the step it returns says until when.
    async fn take_rate(
        &self,
        head: &Delivery,
        spec: &TargetSpec,
        now: u64,
    ) -> Result<Option<Step>, StoreError> {
        let t = &self.target;
        let Some(limit) = spec.config.shaping.rate else {
            return Ok(None);
        };
        let Some(at) = self.store.rate_take(t.id, limit, now).await? else {
            return Ok(None);
        };
        self.store.release(head.seq);
        t.pause_until(at);
        t.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Step::quiet(Outcome::Idle {
            next_due_ms: Some(at),
        })))
    }

    /// Decides, spends the rate limit, sends and records the kept delivery.
    async fn finish(
        &self,
        head: &Delivery,
        (kept, superseded, rec, keeps_record): (Delivery, &[Seq], KeyRecord, bool),
        event: Option<(&Event, &incident::Superseded)>,
        skip: Option<String>,
        probe: bool,
    ) -> Result<Step, StoreError> {
        let t = &self.target;
        let spec = t.spec();
        let number = kept.attempts + 1;
        let decision = match (event, skip) {
            (None, _) => Decision {
                send: Err(String::new()),
                record: Default::default(),
            },
            (Some(_), Some(reason)) => Decision {
                send: Err(reason),
                record: Default::default(),
            },
            (Some((event, older)), None) => {
                incident::decide_off_thread(&spec, &t.name, event, &kept, number, &rec, older).await
            }
        };
        let at_ms = now_ms();
        let started = Instant::now();
        let result = match (decision.send, event) {
            (Err(_), None) => {
                AttemptResult::Invalid(format!("event {} is missing from the store", kept.event_id))
            }
            (Err(reason), Some(_)) => AttemptResult::Skipped(reason),
            (Ok(mut ctx), Some(_)) => {
                if spec.target.fire_on().is_some() {
                    if let Some(wait) = self.take_rate(head, &spec, at_ms).await? {
                        return Ok(wait);
                    }
                }
                let flapped = rec.flap.as_ref().is_some_and(|f| f.flapped);
                if let Some(d) = ctx
                    .data_mut()
                    .get_mut("delivery")
                    .and_then(|d| d.as_object_mut())
                {
                    d.insert("superseded".into(), superseded.len().into());
                    d.insert("flapped".into(), flapped.into());
                }
                let heavy = event.is_some_and(|(e, _)| incident::is_heavy(e));
                incident::send(&self.client, &spec, ctx, heavy).await
            }
            (Ok(_), None) => unreachable!("no event, nothing to send"),
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let action = classify(&result);
        let next = self.next_of(&spec, &kept, number, &result, &action).await;
        let answered = !matches!(action, Action::Retry { .. });
        if probe && !answered && kept.due_ms > at_ms {
            tracing::info!(target_name = %t.name, seq = kept.seq, "probe failed; target stays suspended");
            self.store.release(head.seq);
            return Ok(Step::quiet(Outcome::Idle { next_due_ms: None }));
        }
        let attempt = attempt_record(number, at_ms, latency_ms, &result, &action);
        let error = attempt.error.clone();
        let mut record = decision
            .record
            .for_outcome(next)
            .unwrap_or_else(|| rec.clone());
        if next == Next::Done {
            if let Some(f) = record.flap.as_mut() {
                f.flapped = false;
            }
        }
        let shaped = Shaped {
            head: head.clone(),
            kept: kept.clone(),
            superseded: superseded.to_vec(),
            outcome: ShapedOutcome::Attempt { attempt, next },
            key_state: keeps_record.then(|| record.encode()),
        };
        self.store.finish_shaped(shaped).await?;
        t.metrics
            .superseded
            .fetch_add(superseded.len() as u64, Ordering::Relaxed);
        self.account(&action, next, latency_ms, event.map(|(e, _)| e))
            .await;
        Ok(Step {
            outcome: self.report(kept.seq, next, number, error, latency_ms),
            answered,
        })
    }
}

/// A time for notes, RFC 3339 in UTC.
pub(super) fn time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .map_or_else(|| ms.to_string(), crate::normalize::format_time)
}

/// Whether a maintenance window holds or skips a delivery of `event` at `now`: a skipping
/// window wins; several holding ones hold until the last of them ends.
fn maintenance(windows: &[Window], event: &Event, now: u64) -> Option<Hold> {
    let mut hold: Option<(u64, &str)> = None;
    for w in windows.iter().filter(|w| w.applies_to(event)) {
        let Some(end) = w.active_until(now) else {
            continue;
        };
        if w.skip {
            return Some(Hold::Skip(format!(
                "skipped: maintenance window {:?} (until {})",
                w.name,
                time(end)
            )));
        }
        if hold.is_none_or(|(until, _)| end > until) {
            hold = Some((end, &w.name));
        }
    }
    hold.map(|(until, name)| {
        Hold::Until(
            until,
            format!(
                "held: maintenance window {name:?} until {}; then the current state is sent",
                time(until)
            ),
        )
    })
}
