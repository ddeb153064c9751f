//! Delivery: per-target workers that claim due deliveries from the store, render and send
//! them, classify the result and record what follows, durably, before taking the next one.
//!
//! A target runs `concurrency` lanes. Each lane repeats [`Worker::deliver_one`]; when nothing
//! is due it sleeps until the earliest due time or until ingest signals new work. Order within
//! an ordering key comes from the store (only a key's head is ever claimable), so lanes never
//! coordinate with each other.

mod cache;
mod classify;
mod flap;
mod history;
mod incident;
mod keyrecord;
mod policy;
mod shaping;
mod window;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

pub use cache::EventCache;
pub use classify::{classify, parse_retry_after, Action};
pub use flap::Flap;
pub use history::{History, LastHour};
pub use policy::RetryPolicy;
pub use shaping::Shaping;
pub use window::{local_ms, Cron, When, Window, MAX_DURATION_DAYS as MAX_WINDOW_DAYS};

use crate::admin::metrics::TargetMetrics;
use crate::config::TargetConfig;
use arc_swap::ArcSwap;

use crate::normalize::{victorops, Event};
use crate::store::{
    Attempt, Claim, Delivery, Next, Seq, Store, StoreError, TargetId, TargetMode, TargetState,
};
use crate::targets::{AttemptResult, Target};
use crate::template::Templates;
use crate::template::{Context, ContextNeeds};

/// A configured target, ready to deliver to.
pub struct TargetRuntime {
    pub id: TargetId,
    /// Fixed for the life of the process; everything else about the target can be reloaded.
    pub name: String,
    spec: ArcSwap<TargetSpec>,
    /// Ingest wakes one idle lane per request that adds work (`notify_one`: waking every lane
    /// would have all of them scan the ready index for the one delivery). Lanes enable their
    /// `Notified` before claiming, and a wake-up with no lane waiting is kept as a permit, so
    /// none is lost.
    pub notify: Notify,
    pub metrics: TargetMetrics,
    /// The last hour of outcomes, per minute, for the console's chart.
    pub history: History,
    /// Mirrors the persisted state; lanes read it before every claim.
    mode: Mutex<TargetState>,
    consecutive_failures: AtomicU32,
    probe_running: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// No lane claims before then (ms): a 429's `Retry-After`, or the rate limit's next send.
    paused_until: AtomicU64,
}

/// What a target is configured to do, swapped as a whole on reload: its settings, the request
/// builder made from them, and the templates its settings refer to.
pub struct TargetSpec {
    pub config: TargetConfig,
    pub target: Target,
    pub templates: Arc<Templates>,
}

impl TargetSpec {
    pub fn new(config: TargetConfig, templates: Arc<Templates>) -> TargetSpec {
        TargetSpec {
            target: Target::new(&config),
            config,
            templates,
        }
    }
}

impl TargetRuntime {
    pub fn new(id: TargetId, spec: TargetSpec, state: Option<TargetState>) -> TargetRuntime {
        TargetRuntime {
            id,
            name: spec.config.name.clone(),
            spec: ArcSwap::from_pointee(spec),
            notify: Notify::new(),
            metrics: TargetMetrics::default(),
            history: History::default(),
            mode: Mutex::new(state.unwrap_or(TargetState {
                mode: TargetMode::Active,
                since_ms: now_ms(),
                reason: None,
            })),
            consecutive_failures: AtomicU32::new(0),
            probe_running: AtomicBool::new(false),
            last_error: Mutex::new(None),
            paused_until: AtomicU64::new(0),
        }
    }

    /// The current spec; a delivery holds on to one for its whole attempt.
    pub fn spec(&self) -> Arc<TargetSpec> {
        self.spec.load_full()
    }

    /// Applies a reloaded spec to every later attempt, pending deliveries included.
    pub fn replace_spec(&self, spec: TargetSpec) {
        self.spec.store(Arc::new(spec));
        self.notify.notify_waiters();
    }

    pub fn state(&self) -> TargetState {
        self.mode.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn mode(&self) -> TargetMode {
        self.mode.lock().unwrap_or_else(|p| p.into_inner()).mode
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes a state another instance stored, without writing it back.
    pub fn adopt(&self, state: TargetState) {
        let resumed = {
            let mut current = self.mode.lock().unwrap_or_else(|p| p.into_inner());
            if current.mode == state.mode {
                return;
            }
            let resumed = state.mode == TargetMode::Active;
            tracing::info!(target_name = %self.name, mode = ?state.mode, "target state changed by another instance");
            *current = state;
            resumed
        };
        if resumed {
            self.resumed();
        }
    }

    /// A target back to active starts counting failures afresh, and its lanes stop waiting.
    fn resumed(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    /// Switches mode and persists it, so a restart keeps it. `from` guards the transition:
    /// `None` means from any mode. The check and the change happen under one lock, so two
    /// lanes failing at once cannot both suspend the target. Wakes the lanes when the target
    /// becomes active.
    pub async fn set_mode<S: Store>(
        &self,
        store: &S,
        from: Option<TargetMode>,
        to: TargetMode,
        reason: Option<String>,
    ) -> Result<bool, StoreError> {
        let state = TargetState {
            mode: to,
            since_ms: now_ms(),
            reason,
        };
        {
            let mut current = self.mode.lock().unwrap_or_else(|p| p.into_inner());
            if from.is_some_and(|f| f != current.mode) || current.mode == to {
                return Ok(false);
            }
            *current = state.clone();
        }
        if to == TargetMode::Active {
            self.resumed();
        }
        store.set_target_state(self.id, state).await?;
        tracing::warn!(target_name = %self.name, mode = ?to, "target state changed");
        Ok(true)
    }
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
    /// Traffic shaping holds the delivery (a maintenance window, flapping) until `until_ms`.
    Held {
        seq: Seq,
        until_ms: u64,
    },
    /// Nothing was due; the earliest pending delivery falls due at `next_due_ms`.
    Idle {
        next_due_ms: Option<u64>,
    },
}

pub struct Worker<S> {
    pub store: Arc<S>,
    /// Decoded events, shared with ingest and every target's lanes.
    pub events: Arc<EventCache>,
    pub target: Arc<TargetRuntime>,
    pub client: crate::targets::Client,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<S: Store> Worker<S> {
    /// Claims the next due delivery of this target, makes one attempt and records it. A
    /// paused or suspended target claims nothing.
    pub async fn deliver_one(&self) -> Result<Outcome, StoreError> {
        match self.attempt_next().await? {
            Step::Idle(outcome) => Ok(outcome),
            Step::Tried(attempted) => self.record(attempted).await,
        }
    }

    /// Claims the next due delivery and makes one attempt, without recording it yet.
    async fn attempt_next(&self) -> Result<Step, StoreError> {
        let target = &self.target;
        if target.mode() != TargetMode::Active {
            return Ok(Step::Idle(Outcome::Idle { next_due_ms: None }));
        }
        if let Some(until) = target.paused_until(now_ms()) {
            return Ok(Step::Idle(Outcome::Idle {
                next_due_ms: Some(until),
            }));
        }
        let delivery = match self.store.claim(target.id, now_ms()).await? {
            Claim::Due(d) => d,
            Claim::Wait(due) => {
                return Ok(Step::Idle(Outcome::Idle {
                    next_due_ms: Some(due),
                }))
            }
            Claim::Empty => return Ok(Step::Idle(Outcome::Idle { next_due_ms: None })),
        };
        if target.spec().config.shaping.is_active() {
            // A shaped step records its outcome itself (it may supersede the key's backlog).
            return self.deliver_shaped(delivery).await.map(Step::Idle);
        }
        let event = self.event_of(&delivery).await?;
        let tried = self.attempt(&delivery, event.as_deref()).await?;
        Ok(Step::Tried(Box::new(Attempted {
            delivery,
            event,
            tried,
        })))
    }

    /// Records an attempt durably and accounts for it. Until it is recorded, the delivery's
    /// key stays claimed: nothing else of that key is sent meanwhile (its order), while other
    /// keys are.
    async fn record(&self, attempted: Box<Attempted>) -> Result<Outcome, StoreError> {
        let Attempted {
            delivery,
            event,
            tried,
        } = *attempted;
        let (next, error, number) = (tried.next, tried.record.error.clone(), tried.record.number);
        incident::finish(
            self.store.as_ref(),
            &delivery,
            tried.record,
            next,
            tried.state,
        )
        .await?;
        self.account(&tried.action, next, tried.latency_ms, event.as_deref())
            .await;
        Ok(self.report(delivery.seq, next, number, error, tried.latency_ms))
    }

    /// The claimed delivery's event, from the cache or else the store; the claim is released
    /// when it cannot be read, so the delivery is due again as it was.
    async fn event_of(&self, delivery: &Delivery) -> Result<Option<Arc<Event>>, StoreError> {
        let event = self.event_cached(delivery.event_id).await;
        if event.is_err() {
            self.store.release(delivery.seq);
        }
        event
    }

    /// An event for one of its deliveries: taken from the cache (see `cache`), else read
    /// from the store.
    async fn event_cached(&self, id: uuid::Uuid) -> Result<Option<Arc<Event>>, StoreError> {
        if let Some(e) = self.events.take(&id) {
            return Ok(Some(e));
        }
        Ok(self.store.event(id).await?.map(Arc::new))
    }

    /// One attempt at `delivery`: rendered, sent and classified, and what follows from it by
    /// the target's retry policy.
    /// Fails only when the store cannot be read (an incident target's record); the claim is
    /// then released.
    async fn attempt(
        &self,
        delivery: &Delivery,
        event: Option<&Event>,
    ) -> Result<Tried, StoreError> {
        let number = delivery.attempts + 1;
        let spec = self.target.spec();
        let at_ms = now_ms();
        let started = Instant::now();
        let (result, state) = match event {
            Some(event) => {
                let attempted = incident::attempt(
                    self.store.as_ref(),
                    &self.client,
                    &spec,
                    &self.target.name,
                    event,
                    delivery,
                    number,
                )
                .await;
                match attempted {
                    Ok(a) => a,
                    Err(e) => {
                        self.store.release(delivery.seq);
                        return Err(e);
                    }
                }
            }
            None => (
                AttemptResult::Invalid(format!(
                    "event {} is missing from the store",
                    delivery.event_id
                )),
                incident::Record::default(),
            ),
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let action = classify(&result);
        let next = self
            .next_of(&spec, delivery, number, &result, &action)
            .await;
        let record = attempt_record(number, at_ms, latency_ms, &result, &action);
        Ok(Tried {
            action,
            next,
            record,
            latency_ms,
            state,
        })
    }

    /// Metrics, last error, and the consecutive-failure count that suspends a target. Only
    /// failures worth retrying count: a 4xx means the target is up and answering.
    async fn account(&self, action: &Action, next: Next, latency_ms: u64, event: Option<&Event>) {
        let t = &self.target;
        let m = &t.metrics;
        if let Next::Throttled { due_ms } = next {
            self.throttle(due_ms).await;
        }
        m.attempt_seconds.observe(latency_ms as f64 / 1000.0);
        let now = now_ms();
        match next {
            Next::Done => {
                m.delivered.fetch_add(1, Ordering::Relaxed);
                let lag_ms = event
                    .and_then(|e| crate::normalize::parse_time(&e.received_at))
                    .map(|received| now.saturating_sub(received.timestamp_millis().max(0) as u64));
                if let Some(lag_ms) = lag_ms {
                    m.lag_seconds.observe(lag_ms as f64 / 1000.0);
                }
                t.history.delivered(now, lag_ms);
            }
            Next::Retry { .. } | Next::Throttled { .. } => {
                m.retried.fetch_add(1, Ordering::Relaxed);
                t.history.failed(now);
            }
            Next::Dead => {
                m.dead.fetch_add(1, Ordering::Relaxed);
                t.history.failed(now);
            }
            Next::Skipped => {
                m.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
        match action {
            Action::Done => {
                t.consecutive_failures.store(0, Ordering::Relaxed);
            }
            Action::Retry { reason, .. } if matches!(next, Next::Throttled { .. }) => {
                // The receiver is up and asked the relay to wait: not a failure that suspends.
                *t.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
            }
            Action::Retry { reason, .. } => {
                *t.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                let failures = t.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let limit = t.spec().config.suspend_after;
                if limit > 0 && failures >= limit {
                    let why = format!("{failures} consecutive failed attempts; last: {reason}");
                    if let Err(e) = t
                        .set_mode(
                            self.store.as_ref(),
                            Some(TargetMode::Active),
                            TargetMode::Suspended,
                            Some(why),
                        )
                        .await
                    {
                        tracing::error!(target_name = %t.name, error = %e, "could not record the suspension");
                    }
                }
            }
            Action::Permanent { reason } => {
                *t.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
            }
            Action::Skip { .. } => {}
        }
    }

    /// While the target is suspended: tries one head delivery at a time, with backoff, going
    /// round the target's ordering keys; the first answer that is not worth a retry (success,
    /// or a permanent error: the target is answering) is recorded and resumes it.
    ///
    /// A failed try counts as one of the delivery's retries when the delivery was due by its
    /// own schedule, and is recorded like any attempt: a payload the receiver always refuses
    /// runs out of retries and becomes a dead letter, so it never holds the target suspended
    /// for good. A try before the delivery is due does not count, so no delivery's retries run
    /// faster than its schedule, however long the target is down.
    pub async fn probe(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        use backon::BackoffBuilder;
        let t = &self.target;
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(t.spec().config.probe_interval)
            .with_max_delay(Duration::from_secs(300))
            .with_factor(2.0)
            .without_max_times()
            .build();
        let mut after = 0;
        while t.mode() == TargetMode::Suspended && !*stop.borrow() {
            let wait = delays.next().unwrap_or(Duration::from_secs(300));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
            match self.probe_once(&mut after).await {
                Ok(true) => {
                    if let Err(e) = t
                        .set_mode(
                            self.store.as_ref(),
                            Some(TargetMode::Suspended),
                            TargetMode::Active,
                            None,
                        )
                        .await
                    {
                        tracing::error!(target_name = %t.name, error = %e, "could not record the resumption");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::error!(target_name = %t.name, error = %e, "probe failed"),
            }
        }
        t.probe_running.store(false, Ordering::Release);
    }

    /// One probe of the head after `after` (in sequence order, going round); `true` when the
    /// target answered.
    async fn probe_once(&self, after: &mut Seq) -> Result<bool, StoreError> {
        let t = &self.target;
        let delivery = match self.store.claim_probe(t.id, *after).await? {
            Claim::Due(d) => d,
            // Nothing waits: resume, and let the next delivery show whether it is back.
            _ => return Ok(true),
        };
        *after = delivery.seq;
        if t.spec().config.shaping.is_active() {
            return self.probe_shaped(delivery).await;
        }
        let due = delivery.due_ms <= now_ms();
        let event = self.event_of(&delivery).await?;
        let tried = self.attempt(&delivery, event.as_deref()).await?;
        if let Action::Retry { reason, .. } = &tried.action {
            tracing::info!(target_name = %t.name, seq = delivery.seq, counted = due, error = %reason, "probe failed; target stays suspended");
            if !due {
                self.store.release(delivery.seq);
                return Ok(false);
            }
        }
        let answered = !matches!(tried.action, Action::Retry { .. });
        incident::finish(
            self.store.as_ref(),
            &delivery,
            tried.record,
            tried.next,
            tried.state,
        )
        .await?;
        self.account(
            &tried.action,
            tried.next,
            tried.latency_ms,
            event.as_deref(),
        )
        .await;
        Ok(answered)
    }

    /// Runs one lane until `stop` turns true; checked between deliveries only, so an attempt
    /// in progress is finished and recorded.
    ///
    /// A lane does not wait for an outcome to become durable before it takes the next
    /// delivery: recording runs beside it (at most [`RECORDING`] at once per lane), and the
    /// recorded key's next delivery is claimable once it is done. Only the same key waits,
    /// which is what keeps its order across a crash.
    pub async fn run_lane(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        const MAX_IDLE: Duration = Duration::from_secs(60);
        let mut recording = tokio::task::JoinSet::new();
        loop {
            if *stop.borrow() {
                break;
            }
            while recording.len() >= RECORDING {
                self.recorded(recording.join_next().await);
            }
            while let Some(done) = recording.try_join_next() {
                self.recorded(Some(done));
            }
            let notified = self.target.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.target.mode() == TargetMode::Suspended
                && self
                    .target
                    .probe_running
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                tokio::spawn(self.clone().probe(stop.clone()));
            }
            let wait = match self.attempt_next().await {
                Ok(Step::Tried(attempted)) => {
                    let me = self.clone();
                    // Boxed: the recording future is large (it holds every state of the
                    // store's write and the accounting), and tokio moves a task's future
                    // and its stage several times between spawn and drop; a box makes
                    // those moves a pointer's.
                    recording.spawn(Box::pin(async move {
                        let recorded = me.record(attempted).await;
                        // The key is free again (or due later): a lane waiting for work
                        // looks again.
                        me.target.notify.notify_one();
                        recorded
                    }));
                    continue;
                }
                Ok(Step::Idle(Outcome::Idle { next_due_ms })) => next_due_ms
                    .map_or(MAX_IDLE, |due| {
                        Duration::from_millis(due.saturating_sub(now_ms()))
                    })
                    .min(MAX_IDLE),
                Ok(Step::Idle(_)) => continue,
                Err(e) => {
                    tracing::error!(target_name = %self.target.name, error = %e, "delivery step failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        // Outcomes being recorded are waited for: a stop loses none.
        while let Some(done) = recording.join_next().await {
            self.recorded(Some(done));
        }
    }

    fn recorded(&self, done: Option<Result<Result<Outcome, StoreError>, tokio::task::JoinError>>) {
        match done {
            Some(Ok(Err(e))) => {
                tracing::error!(target_name = %self.target.name, error = %e, "recording an attempt failed; the delivery is due again")
            }
            Some(Err(e)) => {
                tracing::error!(target_name = %self.target.name, error = %e, "recording an attempt failed")
            }
            _ => {}
        }
    }
}

/// Attempts a lane may have waiting to be recorded.
const RECORDING: usize = 8;

/// What a lane's next step found.
enum Step {
    Idle(Outcome),
    Tried(Box<Attempted>),
}

/// An attempt made and not yet recorded.
struct Attempted {
    delivery: Delivery,
    event: Option<Arc<Event>>,
    tried: Tried,
}

/// What one attempt came to.
struct Tried {
    action: Action,
    next: Next,
    record: Attempt,
    latency_ms: u64,
    /// An incident target's record to store with the outcome.
    state: incident::Record,
}

/// The record of one attempt: what came back, and the reason when it was not a success.
fn attempt_record(
    number: u32,
    at_ms: u64,
    latency_ms: u64,
    result: &AttemptResult,
    action: &Action,
) -> Attempt {
    let (status, response_excerpt) = match result {
        AttemptResult::Response {
            status, excerpt, ..
        } => (Some(*status), excerpt.clone()),
        _ => (None, None),
    };
    let error = match action {
        Action::Done => None,
        Action::Retry { reason, .. } | Action::Permanent { reason } | Action::Skip { reason } => {
            Some(reason.clone())
        }
    };
    Attempt {
        number,
        at_ms,
        latency_ms,
        status,
        error,
        response_excerpt,
    }
}

/// What templates see; documented in `templates/README.md`.
pub fn context(
    event: &Event,
    delivery: &Delivery,
    attempt: u32,
    target: &str,
    needs: ContextNeeds,
) -> Context {
    context_with(event, delivery, attempt, target, needs, None)
}

/// [`context`], with the VictorOps `STATE.*`/`INCIDENT.*` variables filled from `incident`
/// (the entity's incident as a `statushub` target keeps it) instead of from the alert alone.
pub fn context_with(
    event: &Event,
    delivery: &Delivery,
    attempt: u32,
    target: &str,
    needs: ContextNeeds,
    incident: Option<&victorops::IncidentView>,
) -> Context {
    let ev = serde_json::to_value(event.for_templates()).unwrap_or(Value::Null);
    let mut ctx = serde_json::Map::with_capacity(7);
    ctx.insert(
        "alert".into(),
        ev.get("alert").cloned().unwrap_or(Value::Null),
    );
    ctx.insert(
        "query".into(),
        ev.get("query").cloned().unwrap_or(Value::Null),
    );
    ctx.insert("event".into(), ev);
    if needs.vo {
        let single;
        let view = match incident {
            Some(v) => v,
            None => {
                single = victorops::IncidentView::of_alert(event, delivery.seq);
                &single
            }
        };
        ctx.insert(
            "vo".into(),
            Value::Object(victorops::namespaces(event, view)),
        );
    }
    if needs.payload {
        ctx.insert("payload".into(), event.payload());
    }
    if needs.raw {
        ctx.insert(
            "raw".into(),
            json!({"content_type": event.raw.content_type, "body": String::from_utf8_lossy(&event.raw.body)}),
        );
    }
    ctx.insert(
        "delivery".into(),
        // `superseded` and `flapped` are set by traffic shaping (`shaping::finish`).
        json!({"id": delivery.seq, "attempt": attempt, "target": target, "superseded": 0, "flapped": false}),
    );
    Context::from(Value::Object(ctx))
}
