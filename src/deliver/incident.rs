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

use super::{context_with, Next};
use crate::normalize::{victorops, Event, HEAVY_BODY_BYTES};
use crate::store::{Attempt, Delivery, Store, StoreError};
use crate::targets::incident::{self, Incident};
use crate::targets::{AttemptResult, Prepared};

use super::TargetSpec;
use std::sync::Arc;

/// The incident record to store with an attempt's outcome.
#[derive(Debug, Default)]
pub(super) enum Record {
    /// Not an incident target, or nothing changed.
    #[default]
    None,
    /// The delivery fired: store this (`None` deletes) if it was delivered.
    IfDelivered(Option<Vec<u8>>),
    /// The delivery did not fire: store this with its skip.
    Always(Option<Vec<u8>>),
}

/// Makes one attempt (sends, or decides not to) and says what to record with it.
pub(super) async fn attempt<S: Store>(
    store: &S,
    client: &reqwest::Client,
    spec: &Arc<TargetSpec>,
    target: &str,
    event: &Event,
    delivery: &Delivery,
    number: u32,
) -> Result<(AttemptResult, Record), StoreError> {
    let send = |incident| async move {
        let prepared = request(spec, target, event, delivery, number, incident).await;
        spec.target
            .send(client, prepared, spec.config.timeout)
            .await
    };
    let Some(fire_on) = spec.target.fire_on() else {
        return Ok((send(None).await, Record::None));
    };
    let before = match store
        .key_state(delivery.target, &delivery.ordering_key)
        .await?
    {
        Some(bytes) => Incident::decode(&bytes)
            .map_err(|e| {
                // Judged as no open incident; the next record written replaces it.
                tracing::warn!(target_name = %target, seq = delivery.seq, error = %e, "unreadable incident record ignored");
            })
            .ok(),
        None => None,
    };
    let step = incident::step(before, event, delivery.seq);
    let write = step
        .write
        .as_ref()
        .map(|w| w.as_ref().map(Incident::encode));
    if !fire_on.fires(step.change) {
        let reason = step.skip_reason(fire_on);
        return Ok((
            AttemptResult::Skipped(reason),
            write.map_or(Record::None, Record::Always),
        ));
    }
    let result = send(Some(&step.view)).await;
    Ok((result, write.map_or(Record::None, Record::IfDelivered)))
}

/// Records an attempt's outcome, with the incident record when it is to be stored.
pub(super) async fn finish<S: Store>(
    store: &S,
    delivery: &Delivery,
    attempt: Attempt,
    next: Next,
    record: Record,
) -> Result<(), StoreError> {
    match (record, next) {
        (Record::Always(state), _) | (Record::IfDelivered(state), Next::Done) => {
            store
                .finish_with_key_state(delivery, attempt, next, state)
                .await
        }
        _ => store.finish(delivery, attempt, next).await,
    }
}

/// The request for one attempt: the template context (which parses the payload when a template
/// reads it) and the target's rendering. For a large body that is done on a blocking thread,
/// as ingest's parse is, so one big event never holds up the async threads on each attempt.
async fn request(
    spec: &Arc<TargetSpec>,
    target: &str,
    event: &Event,
    delivery: &Delivery,
    attempt: u32,
    incident: Option<&victorops::IncidentView>,
) -> Result<Prepared, String> {
    let build = {
        let (spec, target) = (spec.clone(), target.to_owned());
        move |event: &Event, delivery: &Delivery, incident: Option<&victorops::IncidentView>| {
            let needs = spec.config.needs();
            let ctx = context_with(event, delivery, attempt, &target, needs, incident);
            spec.target.prepare(&spec.templates, &ctx)
        }
    };
    if event.raw.body.len() < HEAVY_BODY_BYTES {
        return build(event, delivery, incident);
    }
    let (event, delivery, incident) = (event.clone(), delivery.clone(), incident.cloned());
    tokio::task::spawn_blocking(move || build(&event, &delivery, incident.as_ref()))
        .await
        .unwrap_or_else(|e| Err(format!("building the request failed: {e}")))
}
