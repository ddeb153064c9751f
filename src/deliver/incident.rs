//! One attempt of a delivery, for every target; for a target that fires on incident changes
//! (`statushub`, see `targets::incident`), the decision whether to fire, made here, at delivery
//! time, from the entity's incident record in the store.
//!
//! **Order.** A delivery is claimed only as the head of its `(target, ordering key)` queue,
//! and a `statushub` target's ordering key is the entity (`entity_id`; the config refuses
//! another), so one entity's alerts are decided one at a time, in the order they arrived, on
//! every instance sharing a PostgreSQL store. The record is keyed by the ordering key itself,
//! so it cannot drift from that serialization.
//!
//! **What the record means.** It is the incident as the receiver has been told it: it
//! advances when a firing delivery is delivered (2xx), and when a delivery does not fire (an
//! alert that joins or touches no incident still counts and dates it). A firing delivery that
//! ends otherwise (a dead letter, a URL without its key) leaves it as it was: the receiver
//! never heard of that change, so the next alert is judged against what it did hear, and a
//! replayed dead letter is decided again when it is retried.
//!
//! **Crash ordering: read → send → (finish + record) in one atomic write.** The record is
//! written by [`Store::finish_with_key_state`], in the same log record (sled) or transaction
//! (PostgreSQL) as the attempt's outcome, and only if that finish applies (not for a stale
//! lease). So:
//! - a crash before the send leaves nothing: the delivery is due again and decided the same;
//! - a crash after the send, before the finish, leaves the record unchanged: the retry decides
//!   the same and sends the identical body (every value in it comes from the record, the event
//!   and the delivery's number), at least once as every delivery is, and StatusHub sees the
//!   same incident in the same phase again;
//! - there is never a finish without its record (the entity's next alert would be judged
//!   against a stale incident: a resolved one still open, a trigger never counted), nor a record
//!   without its finish (the retry of this delivery would find its own change already made and
//!   skip a trigger the receiver may never have got), which separate writes could leave;
//! - a retry writes no record: the retry decides again from the same record, and the key's
//!   later alerts wait behind it.
//!
//! **Coalescing** (a target with `coalesce = "latest"`, the `statushub` default): when several
//! alerts of an entity wait, only the newest is sent and the others are superseded. They are
//! not ignored: each is applied to the incident in order, without a request, and the newest is
//! applied after them; what fires is then the difference between the incident the receiver
//! heard of and where the alerts left it (opened, acknowledged, resolved; nothing when it is
//! where the receiver already has it). So a `CRITICAL` superseded by an `ACKNOWLEDGEMENT` or an
//! `INFO` still opens the incident on the status page, and a `CRITICAL` and its `RECOVERY`
//! that both waited send nothing. If that request is not delivered, the incident the
//! superseded alerts left is kept in the key's record (`unsent`, beside what the receiver
//! heard), written with the supersession, so the retry and later alerts decide from it.

use super::keyrecord::{KeyRecord, Unsent};
use super::{context_with, Next};
use crate::normalize::{Event, HEAVY_BODY_BYTES};
use crate::store::{Attempt, Delivery, Seq, Store, StoreError};
use crate::targets::incident::{self, Change, Incident, Phase};
use crate::targets::AttemptResult;
use crate::template::Context;

use super::TargetSpec;
use std::sync::Arc;

/// Alerts folded into a later one of their key (latest-state coalescing), oldest first, with
/// their deliveries' seqs.
pub(super) type Superseded = [(Arc<Event>, Seq)];

/// The key record to store with an attempt's outcome: `on_done` when it was delivered,
/// `otherwise` when not; `None` leaves the stored record as it is.
#[derive(Debug, Default)]
pub(super) struct Record {
    pub on_done: Option<KeyRecord>,
    pub otherwise: Option<KeyRecord>,
}

impl Record {
    /// The same record whatever the outcome.
    fn always(r: KeyRecord) -> Record {
        Record {
            on_done: Some(r.clone()),
            otherwise: Some(r),
        }
    }

    pub(super) fn for_outcome(self, next: Next) -> Option<KeyRecord> {
        if next == Next::Done {
            self.on_done
        } else {
            self.otherwise
        }
    }
}

/// What one delivery comes to before anything is sent.
pub(super) struct Decision {
    /// The template context to send with, or why nothing is sent.
    pub send: Result<Context, String>,
    pub record: Record,
}

/// Decides a delivery of `spec`'s target: for a target that fires on incident changes, from
/// the key's record and the alerts `superseded` before it (latest-state coalescing: each is
/// applied to the incident without a request, and the request shows where they and this alert
/// left it); for any other target, it is sent.
#[allow(clippy::too_many_arguments)]
pub(super) fn decide(
    spec: &TargetSpec,
    target: &str,
    event: &Event,
    delivery: &Delivery,
    number: u32,
    rec: &KeyRecord,
    superseded: &Superseded,
) -> Decision {
    let needs = spec.config.needs();
    let Some(fire_on) = spec.target.fire_on() else {
        return Decision {
            send: Ok(context_with(event, delivery, number, target, needs, None)),
            record: Record::default(),
        };
    };
    let heard = rec.incident.clone();
    let folded = rec.unsent.is_some() || !superseded.is_empty();
    let mut truth = match &rec.unsent {
        Some(u) => u.incident.clone(),
        None => heard.clone(),
    };
    for (alert, seq) in superseded {
        if let Some(w) = incident::step(truth.clone(), alert, *seq).write {
            truth = w;
        }
    }
    let step = incident::step(truth.clone(), event, delivery.seq);
    let after = step.write.clone().unwrap_or_else(|| truth.clone());
    let with = |incident: Option<Incident>, unsent: Option<Unsent>| KeyRecord {
        incident,
        unsent,
        ..rec.clone()
    };
    let change = if folded {
        difference(heard.as_ref(), after.as_ref())
    } else {
        step.change
    };
    if !fire_on.fires(change) {
        let reason = if folded {
            format!(
                "not fired: the receiver already shows where this alert and {} superseded \
                 one(s) leave the incident (a change of kind {:?}; fire_on = [{}])",
                superseded.len(),
                change.name(),
                fire_on.names().join(", ")
            )
        } else {
            step.skip_reason(fire_on)
        };
        // Nothing to tell the receiver: what it shows is where the alerts left the incident.
        let record = if folded || step.write.is_some() {
            Record::always(with(after, None))
        } else {
            Record::default()
        };
        return Decision {
            send: Err(reason),
            record,
        };
    }
    let ctx = context_with(event, delivery, number, target, needs, Some(&step.view));
    let record = Record {
        on_done: (folded || step.write.is_some()).then(|| with(after, None)),
        // Not delivered: the receiver still knows only `heard`; superseded alerts are kept
        // as the incident they left, which the next attempt decides from again.
        otherwise: folded.then(|| with(heard, Some(Unsent { incident: truth }))),
    };
    Decision {
        send: Ok(ctx),
        record,
    }
}

/// What the receiver has to be told to go from the incident it heard of to `after`.
fn difference(heard: Option<&Incident>, after: Option<&Incident>) -> Change {
    match (heard, after) {
        (None, None) => Change::NoIncident,
        (Some(_), None) => Change::Resolved,
        (None, Some(_)) => Change::Triggered,
        (Some(h), Some(a)) if h.number != a.number => Change::Triggered,
        (Some(h), Some(a)) => match (h.phase, a.phase) {
            (Phase::Unacked, Phase::Acked) => Change::Acknowledged,
            (Phase::Acked, Phase::Unacked) => Change::Triggered,
            _ => Change::Updated,
        },
    }
}

/// Reads the key's record when the target keeps one.
pub(super) async fn record_of<S: Store>(
    store: &S,
    spec: &TargetSpec,
    target: &str,
    delivery: &Delivery,
) -> Result<KeyRecord, StoreError> {
    if spec.target.fire_on().is_none() {
        return Ok(KeyRecord::default());
    }
    let bytes = store
        .key_state(delivery.target, &delivery.ordering_key)
        .await?;
    Ok(KeyRecord::decode(bytes.as_deref(), target, delivery.seq))
}

/// Makes one attempt (sends, or decides not to) and says what to record with it.
pub(super) async fn attempt<S: Store>(
    store: &S,
    client: &crate::targets::Client,
    spec: &Arc<TargetSpec>,
    target: &str,
    event: &Event,
    delivery: &Delivery,
    number: u32,
) -> Result<(AttemptResult, Record), StoreError> {
    if !is_heavy(event) {
        if let Some(prepared) = spec.target.prepare_event(event, delivery.seq) {
            let result = spec
                .target
                .send(client, Ok(prepared), spec.config.timeout)
                .await;
            return Ok((result, Record::default()));
        }
    }
    let rec = record_of(store, spec, target, delivery).await?;
    let decision = decide_off_thread(spec, target, event, delivery, number, &rec, &[]).await;
    let result = match decision.send {
        Ok(ctx) => send(client, spec, ctx, is_heavy(event)).await,
        Err(reason) => AttemptResult::Skipped(reason),
    };
    Ok((result, decision.record))
}

/// Records an attempt's outcome, with the key's record when it is to be stored.
pub(super) async fn finish<S: Store>(
    store: &S,
    delivery: &Delivery,
    attempt: Attempt,
    next: Next,
    record: Record,
) -> Result<(), StoreError> {
    match record.for_outcome(next) {
        Some(r) => {
            store
                .finish_with_key_state(delivery, attempt, next, r.encode())
                .await
        }
        None => store.finish(delivery, attempt, next).await,
    }
}

/// Whether building `event`'s request (its template context parses the payload when a
/// template reads it, and the rendering) is left to a blocking thread, as ingest's parse of
/// such a body is, so one big event never holds up the async threads on each attempt.
pub(super) fn is_heavy(event: &Event) -> bool {
    event.raw.body.len() >= HEAVY_BODY_BYTES
}

/// [`decide`], on a blocking thread when the event [`is_heavy`].
pub(super) async fn decide_off_thread(
    spec: &Arc<TargetSpec>,
    target: &str,
    event: &Event,
    delivery: &Delivery,
    number: u32,
    rec: &KeyRecord,
    superseded: &Superseded,
) -> Decision {
    if !is_heavy(event) {
        return decide(spec, target, event, delivery, number, rec, superseded);
    }
    let (spec, target, event) = (spec.clone(), target.to_owned(), event.clone());
    let (delivery, rec, superseded) = (delivery.clone(), rec.clone(), superseded.to_vec());
    tokio::task::spawn_blocking(move || {
        decide(&spec, &target, &event, &delivery, number, &rec, &superseded)
    })
    .await
    .unwrap_or_else(|e| Decision {
        send: Err(format!("building the request failed: {e}")),
        record: Record::default(),
    })
}

/// Renders the request from `ctx` (on a blocking thread when `heavy`) and sends it.
pub(super) async fn send(
    client: &crate::targets::Client,
    spec: &Arc<TargetSpec>,
    ctx: Context,
    heavy: bool,
) -> AttemptResult {
    let prepared = if heavy {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || spec.target.prepare(&spec.templates, &ctx))
            .await
            .unwrap_or_else(|e| Err(format!("building the request failed: {e}")))
    } else {
        spec.target.prepare(&spec.templates, &ctx)
    };
    spec.target
        .send(client, prepared, spec.config.timeout)
        .await
}
