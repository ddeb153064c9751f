//! Delivery: per-target workers that claim due deliveries from the store, render and send
//! them, classify the result and record what follows, durably, before taking the next one.
//!
//! A target runs `concurrency` lanes. Each lane repeats [`Worker::deliver_one`]; when nothing
//! is due it sleeps until the earliest due time or until ingest signals new work. Order within
//! an ordering key comes from the store (only a key's head is ever claimable), so lanes never
//! coordinate with each other.

mod classify;
mod policy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

pub use classify::{classify, parse_retry_after, Action};
pub use policy::RetryPolicy;

use crate::config::TargetConfig;
use crate::normalize::{victorops, Event};
use crate::store::{Attempt, Claim, Delivery, Next, Seq, Store, StoreError, TargetId};
use crate::targets::{AttemptResult, Target};
use crate::template::Templates;

/// A configured target, ready to deliver to.
pub struct TargetRuntime {
    pub id: TargetId,
    pub config: TargetConfig,
    pub target: Target,
    /// Ingest wakes one idle lane per request that adds work (`notify_one`: waking every lane
    /// would have all of them scan the ready index for the one delivery). Lanes enable their
    /// `Notified` before claiming, and a wake-up with no lane waiting is kept as a permit, so
    /// none is lost.
    pub notify: Notify,
}

/// What one step of a worker did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Seq),
    Retrying {
        seq: Seq,
        due_ms: u64,
    },
    Dead(Seq),
    /// The target declined the event; recorded with the reason.
    Skipped(Seq),
    /// Nothing was due; the earliest pending delivery falls due at `next_due_ms`.
    Idle {
        next_due_ms: Option<u64>,
    },
}

pub struct Worker<S> {
    pub store: Arc<S>,
    pub target: Arc<TargetRuntime>,
    pub templates: Arc<Templates>,
    pub client: reqwest::Client,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<S: Store> Worker<S> {
    /// Claims the next due delivery of this target, makes one attempt and records it.
    pub async fn deliver_one(&self) -> Result<Outcome, StoreError> {
        let target = &self.target;
        let delivery = match self.store.claim(target.id, now_ms()).await? {
            Claim::Due(d) => d,
            Claim::Wait(due) => {
                return Ok(Outcome::Idle {
                    next_due_ms: Some(due),
                })
            }
            Claim::Empty => return Ok(Outcome::Idle { next_due_ms: None }),
        };
        let event = match self.store.event(delivery.event_id).await {
            Ok(e) => e,
            Err(e) => {
                self.store.release(delivery.seq);
                return Err(e);
            }
        };
        let number = delivery.attempts + 1;
        let at_ms = now_ms();
        let started = Instant::now();
        let result = match &event {
            Some(event) => {
                let ctx = context(event, &delivery, number, &target.config.name);
                target
                    .target
                    .send(&self.client, &self.templates, &ctx, target.config.timeout)
                    .await
            }
            None => AttemptResult::Invalid(format!(
                "event {} is missing from the store",
                delivery.event_id
            )),
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let action = classify(&result);
        let next = match &action {
            Action::Done => Next::Done,
            Action::Retry { retry_after, .. } => {
                match target
                    .config
                    .retry
                    .delay(number, fastrand::f64(), *retry_after)
                {
                    Some(delay) => Next::Retry {
                        due_ms: now_ms() + delay.as_millis() as u64,
                    },
                    None => Next::Dead,
                }
            }
            Action::Permanent { .. } => Next::Dead,
            Action::Skip { .. } => Next::Skipped,
        };
        let (status, excerpt) = match &result {
            AttemptResult::Response {
                status, excerpt, ..
            } => (Some(*status), excerpt.clone()),
            _ => (None, None),
        };
        let error = match &action {
            Action::Done => None,
            Action::Retry { reason, .. }
            | Action::Permanent { reason }
            | Action::Skip { reason } => Some(reason.clone()),
        };
        let attempt = Attempt {
            number,
            at_ms,
            latency_ms,
            status,
            error: error.clone(),
            response_excerpt: excerpt,
        };
        self.store.finish(&delivery, attempt, next).await?;
        let seq = delivery.seq;
        let outcome = match next {
            Next::Done => {
                tracing::debug!(target_name = %target.config.name, seq, attempt = number, latency_ms, "delivered");
                Outcome::Delivered(seq)
            }
            Next::Retry { due_ms } => {
                tracing::info!(target_name = %target.config.name, seq, attempt = number, error = error.as_deref(), retry_in_ms = due_ms.saturating_sub(now_ms()), "delivery failed, will retry");
                Outcome::Retrying { seq, due_ms }
            }
            Next::Dead => {
                tracing::warn!(target_name = %target.config.name, seq, attempt = number, error = error.as_deref(), "delivery dead-lettered");
                Outcome::Dead(seq)
            }
            Next::Skipped => {
                tracing::debug!(target_name = %target.config.name, seq, reason = error.as_deref(), "delivery skipped");
                Outcome::Skipped(seq)
            }
        };
        Ok(outcome)
    }

    /// Runs one lane until `stop` turns true; checked between deliveries only, so an attempt
    /// in progress is finished and recorded.
    pub async fn run_lane(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        const MAX_IDLE: Duration = Duration::from_secs(60);
        loop {
            if *stop.borrow() {
                return;
            }
            let notified = self.target.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = match self.deliver_one().await {
                Ok(Outcome::Idle { next_due_ms }) => next_due_ms
                    .map_or(MAX_IDLE, |due| {
                        Duration::from_millis(due.saturating_sub(now_ms()))
                    })
                    .min(MAX_IDLE),
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(target_name = %self.target.config.name, error = %e, "delivery step failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// What templates see; documented in `templates/README.md`.
pub fn context(event: &Event, delivery: &Delivery, attempt: u32, target: &str) -> Value {
    let mut ev = serde_json::to_value(event).unwrap_or(Value::Null);
    ev.as_object_mut().map(|o| o.remove("message_index"));
    let alert = ev.get("alert").cloned().unwrap_or(Value::Null);
    let query = ev.get("query").cloned().unwrap_or(Value::Null);
    json!({
        "event": ev,
        "alert": alert,
        "query": query,
        "vo": victorops::namespaces(event),
        "payload": event.payload(),
        "raw": {
            "content_type": event.raw.content_type,
            "body": String::from_utf8_lossy(&event.raw.body),
        },
        "delivery": {
            "id": delivery.seq,
            "attempt": attempt,
            "target": target,
        },
    })
}
