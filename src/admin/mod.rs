//! The admin API, on its own listener: health, readiness, Prometheus metrics, and what the
//! relay holds (events, deliveries, attempts, dead letters, target state), with the operations
//! an operator needs (pause and resume a target, replay dead letters, redeliver an event).
//!
//! Every request, whatever its path, first passes [`guard::Guard`]: a foreign `Origin` or `Host`
//! is refused, and with a token configured every endpoint but `/healthz` and `/readyz` needs
//! `Authorization: Bearer <admin.token>`; without a token the listener may only be on loopback
//! (checked when the config is loaded). Secrets (tokens, signing secrets) are never part of any
//! answer, nor are the store's error texts.

pub mod client;
pub mod guard;
pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::deliver::{now_ms, TargetRuntime};
use crate::ingest::ordering_key;
use crate::normalize::{format_time, parse_time, Event};
use crate::store::{Delivery, DeliveryState, NewDelivery, Store, StoreError, TargetMode};
use metrics::{IngestMetrics, TargetGauges};

pub struct Admin<S> {
    pub store: Arc<S>,
    pub targets: Vec<Arc<TargetRuntime>>,
    pub metrics: Arc<IngestMetrics>,
    /// Origin, Host and token: checked before any route.
    pub guard: guard::Guard,
    /// Reports the store's size on disk for `/metrics`.
    pub store_size: Box<dyn Fn() -> u64 + Send + Sync>,
}

#[derive(Debug)]
enum AdminError {
    Refused(guard::Refusal),
    NotFound(String),
    BadRequest(String),
    MethodNotAllowed,
    Store(StoreError),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        AdminError::Store(e)
    }
}

type Answer = Result<Response<Full<Bytes>>, AdminError>;

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn ok(body: Value) -> Answer {
    Ok(json_response(StatusCode::OK, &body))
}

fn time(ms: u64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map_or(Value::Null, |t| Value::String(format_time(t)))
}

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

impl<S: Store> Admin<S> {
    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        // Before anything else, for every path: routes added later are covered too.
        let checked = self.guard.check(&req).map_err(AdminError::Refused);
        let answer = match checked {
            Ok(()) => self.route(&req).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(r) => r,
            Err(e) => {
                let (status, message) = match &e {
                    AdminError::Refused(guard::Refusal::Token) => (
                        StatusCode::UNAUTHORIZED,
                        "missing or wrong bearer token".to_owned(),
                    ),
                    AdminError::Refused(guard::Refusal::Host) => (
                        StatusCode::FORBIDDEN,
                        "this Host is not the relay's: add it to admin.allowed_hosts".to_owned(),
                    ),
                    AdminError::Refused(guard::Refusal::Origin) => (
                        StatusCode::FORBIDDEN,
                        "requests from other sites' pages are refused".to_owned(),
                    ),
                    AdminError::NotFound(what) => {
                        (StatusCode::NOT_FOUND, format!("{what} not found"))
                    }
                    AdminError::BadRequest(why) => (StatusCode::BAD_REQUEST, why.clone()),
                    AdminError::MethodNotAllowed => (
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method not allowed here".to_owned(),
                    ),
                    AdminError::Store(e) => {
                        (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}"))
                    }
                };
                let mut body = json!({ "error": message });
                if let AdminError::Refused(r) = &e {
                    body["code"] = json!(match r {
                        guard::Refusal::Token => "unauthorized",
                        guard::Refusal::Host => "host_not_allowed",
                        guard::Refusal::Origin => "origin_not_allowed",
                    });
                }
                let mut resp = json_response(status, &body);
                if matches!(e, AdminError::Refused(guard::Refusal::Token)) {
                    resp.headers_mut()
                        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                resp
            }
        }
    }

    async fn route<B>(&self, req: &Request<B>) -> Answer {
        let path: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
        let query: HashMap<String, String> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let method = req.method().clone();
        match path.as_slice() {
            ["healthz"] => return ok(json!({"status": "ok"})),
            ["readyz"] => {
                // Anyone may probe: the answer says only whether, never the store's error.
                return match self.store.ping().await {
                    Ok(()) => ok(json!({"status": "ready"})),
                    Err(e) => {
                        tracing::warn!(error = %e, "readiness check failed");
                        Ok(json_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &json!({"status": "unavailable", "code": "store_unavailable"}),
                        ))
                    }
                };
            }
            _ => {}
        }
        let get = method == Method::GET;
        let post = method == Method::POST;
        match path.as_slice() {
            ["metrics"] if get => self.metrics().await,
            ["targets"] if get => self.list_targets().await,
            ["targets", name, action @ ("pause" | "resume")] if post => {
                self.pause_resume(name, action).await
            }
            ["events"] if get => self.list_events(&query).await,
            ["events", id] if get => self.show_event(id).await,
            ["events", id, "redeliver"] if post => self.redeliver(id, query.get("target")).await,
            ["dead-letters"] if get => self.list_dead(&query).await,
            ["dead-letters", "replay"] if post => self.replay_range(&query).await,
            ["dead-letters", seq] if get => self.show_dead(seq).await,
            ["dead-letters", seq, "replay"] if post => self.replay_one(seq).await,
            ["metrics"]
            | ["targets"]
            | ["targets", _, "pause" | "resume"]
            | ["events"]
            | ["events", _]
            | ["events", _, "redeliver"]
            | ["dead-letters"]
            | ["dead-letters", _]
            | ["dead-letters", _, "replay"] => Err(AdminError::MethodNotAllowed),
            _ => Err(AdminError::NotFound(
                format!("{} ", req.uri().path()).trim().to_owned(),
            )),
        }
    }

    fn target(&self, name: &str) -> Result<&Arc<TargetRuntime>, AdminError> {
        self.targets
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| AdminError::NotFound(format!("target {name:?}")))
    }

    fn target_name(&self, id: u32) -> Value {
        self.targets
            .iter()
            .find(|t| t.id == id)
            .map_or(Value::Null, |t| Value::String(t.name.clone()))
    }

    async fn metrics(&self) -> Answer {
        let mut gauges = Vec::with_capacity(self.targets.len());
        let now = now_ms();
        for t in &self.targets {
            let counts = self.store.counts(t.id).await?;
            let oldest = self.store.oldest_pending_ms(t.id).await?;
            let mode = t.mode();
            gauges.push(TargetGauges {
                name: &t.name,
                metrics: &t.metrics,
                pending: counts.pending,
                dead_letters: counts.dead,
                oldest_pending_seconds: oldest
                    .map_or(0.0, |o| now.saturating_sub(o) as f64 / 1000.0),
                suspended: mode == TargetMode::Suspended,
                paused: mode == TargetMode::Paused,
            });
        }
        let text = metrics::render(&self.metrics, &gauges, (self.store_size)());
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        Ok(resp)
    }

    async fn target_json(&self, t: &TargetRuntime) -> Result<Value, AdminError> {
        let counts = self.store.counts(t.id).await?;
        let oldest = self.store.oldest_pending_ms(t.id).await?;
        let state = t.state();
        Ok(json!({
            "name": t.name,
            "state": state.mode,
            "since": time(state.since_ms),
            "reason": state.reason,
            "consecutive_failures": t.consecutive_failures(),
            "pending": counts.pending,
            "oldest_pending_age_seconds": oldest.map(|o| now_ms().saturating_sub(o) / 1000),
            "dead_letters": counts.dead,
            "last_error": t.last_error(),
        }))
    }

    async fn list_targets(&self) -> Answer {
        let mut list = Vec::new();
        for t in &self.targets {
            list.push(self.target_json(t).await?);
        }
        ok(json!({ "targets": list }))
    }

    async fn pause_resume(&self, name: &str, action: &str) -> Answer {
        let t = self.target(name)?;
        if action == "pause" {
            t.set_mode(
                self.store.as_ref(),
                None,
                TargetMode::Paused,
                Some("paused by an operator".into()),
            )
            .await?;
        } else {
            t.set_mode(self.store.as_ref(), None, TargetMode::Active, None)
                .await?;
        }
        ok(self.target_json(t).await?)
    }

    async fn event_status(&self, e: &Event) -> Result<&'static str, AdminError> {
        let id = uuid::Uuid::parse_str(&e.id)
            .map_err(|_| AdminError::BadRequest("bad event id".into()))?;
        let ds = self.store.deliveries_of(id).await?;
        Ok(if ds.iter().any(|d| d.state == DeliveryState::Pending) {
            "pending"
        } else if ds.iter().any(|d| d.state == DeliveryState::Dead) {
            "dead"
        } else {
            "done"
        })
    }

    async fn list_events(&self, q: &HashMap<String, String>) -> Answer {
        let limit = limit(q)?;
        let since = q.get("since").map(|s| parse_ms(s, "since")).transpose()?;
        let until = q.get("until").map(|s| parse_ms(s, "until")).transpose()?;
        let mut after =
            match (q.get("after"), since) {
                (Some(a), _) => Some(uuid::Uuid::parse_str(a).map_err(|_| {
                    AdminError::BadRequest(format!("after: {a:?} is not an event id"))
                })?),
                // The smallest UUIDv7 of that millisecond: events are keyed in time order.
                (None, Some(ms)) => Some(uuid::Uuid::from_u128(
                    (u128::from(ms) << 80).saturating_sub(1),
                )),
                (None, None) => None,
            };
        let mut out = Vec::new();
        let mut next = None;
        'pages: loop {
            let page = self.store.events_page(after, 200).await?;
            if page.is_empty() {
                break;
            }
            for e in page {
                after = uuid::Uuid::parse_str(&e.id).ok();
                let received =
                    parse_time(&e.received_at).map_or(0, |t| t.timestamp_millis() as u64);
                if until.is_some_and(|u| received >= u) {
                    break 'pages;
                }
                if q.get("source").is_some_and(|s| *s != e.source)
                    || q.get("type").is_some_and(|t| *t != e.event_type)
                {
                    continue;
                }
                let status = self.event_status(&e).await?;
                if q.get("status").is_some_and(|s| s != status) {
                    continue;
                }
                if out.len() == limit {
                    next = out
                        .last()
                        .and_then(|v: &Value| v["id"].as_str().map(str::to_owned));
                    break 'pages;
                }
                out.push(json!({
                    "id": e.id, "source": e.source, "type": e.event_type, "format": e.format,
                    "received_at": e.received_at, "occurred_at": e.occurred_at, "title": e.title, "status": status,
                }));
            }
        }
        ok(json!({ "events": out, "next": next }))
    }

    async fn delivery_json(&self, d: &Delivery) -> Result<Value, AdminError> {
        let attempts: Vec<Value> = self
            .store
            .attempts(d.seq)
            .await?
            .into_iter()
            .map(|a| json!({"number": a.number, "at": time(a.at_ms), "status": a.status, "latency_ms": a.latency_ms, "error": a.error, "response_excerpt": a.response_excerpt}))
            .collect();
        Ok(json!({
            "id": d.seq, "event_id": d.event_id.to_string(), "target": self.target_name(d.target), "state": d.state,
            "ordering_key": d.ordering_key, "attempts": d.attempts, "next_attempt_at": (d.state == DeliveryState::Pending).then(|| time(d.due_ms)),
            "created_at": time(d.created_ms), "updated_at": time(d.updated_ms), "last_status": d.last_status,
            "last_error": d.last_error, "response_excerpt": d.response_excerpt, "attempt_log": attempts,
        }))
    }

    /// A stored event by the id in a path.
    async fn stored_event(&self, id: &str) -> Result<(uuid::Uuid, Event), AdminError> {
        let uuid = uuid::Uuid::parse_str(id)
            .map_err(|_| AdminError::BadRequest(format!("{id:?} is not an event id")))?;
        let event = self
            .store
            .event(uuid)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("event {id}")))?;
        Ok((uuid, event))
    }

    async fn show_event(&self, id: &str) -> Answer {
        let (uuid, event) = self.stored_event(id).await?;
        let mut deliveries = Vec::new();
        for d in self.store.deliveries_of(uuid).await? {
            deliveries.push(self.delivery_json(&d).await?);
        }
        ok(json!({
            "event": event,
            "raw": {"content_type": event.raw.content_type, "body": String::from_utf8_lossy(&event.raw.body)},
            "deliveries": deliveries,
        }))
    }

    async fn redeliver(&self, id: &str, only: Option<&String>) -> Answer {
        let (uuid, event) = self.stored_event(id).await?;
        let targets: Vec<&Arc<TargetRuntime>> = match only {
            Some(name) => vec![self.target(name)?],
            None => {
                // The targets it went to before.
                let before: Vec<u32> = self
                    .store
                    .deliveries_of(uuid)
                    .await?
                    .iter()
                    .map(|d| d.target)
                    .collect();
                self.targets
                    .iter()
                    .filter(|t| before.contains(&t.id))
                    .collect()
            }
        };
        let new: Vec<NewDelivery> = targets
            .iter()
            .map(|t| NewDelivery {
                target: t.id,
                ordering_key: ordering_key(t, &t.spec(), &event),
            })
            .collect();
        let seqs = self.store.redeliver(uuid, new, now_ms()).await?;
        for t in targets {
            t.notify.notify_waiters();
        }
        ok(json!({ "deliveries": seqs }))
    }

    async fn dead_filter(
        &self,
        q: &HashMap<String, String>,
    ) -> Result<(Vec<&Arc<TargetRuntime>>, u64, u64), AdminError> {
        let targets = match q.get("target") {
            Some(name) => vec![self.target(name)?],
            None => self.targets.iter().collect(),
        };
        let since = q
            .get("since")
            .map(|s| parse_ms(s, "since"))
            .transpose()?
            .unwrap_or(0);
        let until = q
            .get("until")
            .map(|s| parse_ms(s, "until"))
            .transpose()?
            .unwrap_or(u64::MAX);
        Ok((targets, since, until))
    }

    async fn list_dead(&self, q: &HashMap<String, String>) -> Answer {
        let limit = limit(q)?;
        let (targets, since, until) = self.dead_filter(q).await?;
        let mut out = Vec::new();
        for t in targets {
            for d in self
                .store
                .dead_letters_between(t.id, since, until, limit - out.len())
                .await?
            {
                out.push(json!({
                    "id": d.seq, "event_id": d.event_id.to_string(), "target": t.name, "attempts": d.attempts,
                    "dead_at": time(d.updated_ms), "last_status": d.last_status, "last_error": d.last_error,
                }));
            }
        }
        ok(json!({ "dead_letters": out }))
    }

    async fn dead_letter(&self, seq: &str) -> Result<Delivery, AdminError> {
        let seq: u64 = seq
            .parse()
            .map_err(|_| AdminError::BadRequest(format!("{seq:?} is not a delivery id")))?;
        self.store
            .delivery(seq)
            .await?
            .filter(|d| d.state == DeliveryState::Dead)
            .ok_or_else(|| AdminError::NotFound(format!("dead letter {seq}")))
    }

    async fn show_dead(&self, seq: &str) -> Answer {
        let d = self.dead_letter(seq).await?;
        ok(self.delivery_json(&d).await?)
    }

    async fn replay(&self, seqs: Vec<u64>, targets: &[u32]) -> Answer {
        let n = self.store.replay(seqs, now_ms()).await?;
        for t in self.targets.iter().filter(|t| targets.contains(&t.id)) {
            t.notify.notify_waiters();
        }
        ok(json!({ "replayed": n }))
    }

    async fn replay_one(&self, seq: &str) -> Answer {
        let d = self.dead_letter(seq).await?;
        self.replay(vec![d.seq], &[d.target]).await
    }

    async fn replay_range(&self, q: &HashMap<String, String>) -> Answer {
        if !q.contains_key("target") {
            return Err(AdminError::BadRequest(
                "replaying a range needs target= (and optionally since= and until=)".into(),
            ));
        }
        let (targets, since, until) = self.dead_filter(q).await?;
        let t = targets[0];
        let seqs: Vec<u64> = self
            .store
            .dead_letters_between(t.id, since, until, usize::MAX)
            .await?
            .iter()
            .map(|d| d.seq)
            .collect();
        self.replay(seqs, &[t.id]).await
    }
}

fn limit(q: &HashMap<String, String>) -> Result<usize, AdminError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(AdminError::BadRequest(format!(
                "limit must be 1 to {MAX_LIMIT}"
            ))),
        },
    }
}

/// A time parameter: RFC 3339, or milliseconds since the epoch.
fn parse_ms(s: &str, name: &str) -> Result<u64, AdminError> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    parse_time(s)
        .map(|t| t.timestamp_millis().max(0) as u64)
        .ok_or_else(|| {
            AdminError::BadRequest(format!(
                "{name}: {s:?} is not an RFC 3339 time or epoch milliseconds"
            ))
        })
}
