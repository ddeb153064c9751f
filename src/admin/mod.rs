//! The admin API, on its own listener: health, readiness, Prometheus metrics, and what the
//! relay holds (events, deliveries, attempts, dead letters, target state), with the operations
//! an operator needs (pause and resume a target, replay dead letters, redeliver an event).
//!
//! Every request, whatever its path, first passes [`guard::Guard`]: a foreign `Origin` or `Host`
//! is refused, and with a token configured every endpoint but `/healthz`, `/readyz` and the
//! console's page and files (which hold no data; see [`console`]) needs
//! `Authorization: Bearer <admin.token>`; without a token the listener may only be on loopback
//! (checked when the config is loaded). Secrets (tokens, signing secrets) are never part of any
//! answer, nor are the store's error texts.

pub mod client;
mod console;
pub mod guard;
pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::config::Config;
use crate::deliver::{now_ms, TargetRuntime};
use crate::ingest::ordering_key;
use crate::normalize::{format_time, parse_time, Event};
use crate::store::{
    Delivery, DeliveryState, EventQuery, EventStatus, NewDelivery, Store, StoreError, TargetMode,
};
use metrics::{IngestMetrics, TargetGauges};

pub struct Admin<S> {
    pub store: Arc<S>,
    pub targets: Vec<Arc<TargetRuntime>>,
    pub metrics: Arc<IngestMetrics>,
    /// Origin, Host and token: checked before any route.
    pub guard: guard::Guard,
    /// The config in force (swapped on reload): sources and the dry run.
    pub config: Arc<ArcSwap<Config>>,
    /// Reports the store's size on disk and its log syncs for `/metrics`.
    pub store_gauges: Box<dyn Fn() -> metrics::StoreGauges + Send + Sync>,
}

#[derive(Debug)]
enum AdminError {
    Refused(guard::Refusal),
    NotFound(String),
    BadRequest(String),
    TooLarge(usize),
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

/// Events one `GET /events` looks at, matching or not (see `EventQuery::max_examined`): with a
/// million stored, a page of 50 costs about as much as the filter lets it, up to this.
const EXAMINE_PER_REQUEST: usize = 2_000;

/// Titles in lists are cut to this many characters; the event itself has the whole.
const TITLE_CHARS: usize = 300;

impl<S: Store> Admin<S> {
    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        // Before anything else, for every path: routes added later are covered too.
        let answer = match self.guard.check(&req) {
            Ok(()) => self.route(req).await,
            Err(refused) => Err(AdminError::Refused(refused)),
        };
        match answer {
            Ok(r) => r,
            Err(e) => {
                let (status, message) = match &e {
                    AdminError::Refused(r) => (r.status(), r.message().to_owned()),
                    AdminError::NotFound(what) => {
                        (StatusCode::NOT_FOUND, format!("{what} not found"))
                    }
                    AdminError::BadRequest(why) => (StatusCode::BAD_REQUEST, why.clone()),
                    AdminError::TooLarge(limit) => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body is over {limit} bytes (server.max_body_bytes)"),
                    ),
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
                    body["code"] = json!(r.code());
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

    async fn route(&self, req: Request<hyper::body::Incoming>) -> Answer {
        let (req, body) = req.into_parts();
        let path: Vec<&str> = req.uri.path().trim_matches('/').split('/').collect();
        let query: HashMap<String, String> =
            form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let method = req.method.clone();
        let get = method == Method::GET;
        let post = method == Method::POST;
        match path.as_slice() {
            // The console's page and files: no data, so no token (the page asks for it).
            [""] if get => return Ok(console::page()),
            ["console", file] if get => {
                return console::file(file)
                    .ok_or_else(|| AdminError::NotFound(format!("/console/{file}")))
            }
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
        match path.as_slice() {
            ["metrics"] if get => self.metrics().await,
            ["sources"] if get => ok(console::sources(&self.config.load())),
            ["dry-run"] if post => self.dry_run(query.get("source"), body).await,
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
            | [""]
            | ["console", _]
            | ["sources"]
            | ["dry-run"]
            | ["targets"]
            | ["targets", _, "pause" | "resume"]
            | ["events"]
            | ["events", _]
            | ["events", _, "redeliver"]
            | ["dead-letters"]
            | ["dead-letters", _]
            | ["dead-letters", _, "replay"] => Err(AdminError::MethodNotAllowed),
            _ => Err(AdminError::NotFound(
                format!("{} ", req.uri.path()).trim().to_owned(),
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
                maintenance: t.in_maintenance(now),
            });
        }
        let text = metrics::render(&self.metrics, &gauges, (self.store_gauges)());
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
            "last_hour": t.history.last_hour(now_ms()), "shaping": t.shaping_view(now_ms()),
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

    /// `GET /events`: newest first, a page at a time; `next` is the `before` of the next page.
    /// One request looks at [`EXAMINE_PER_REQUEST`] events at most, so a page can come back
    /// short (even empty) with a `next` to continue from.
    async fn list_events(&self, q: &HashMap<String, String>) -> Answer {
        let id = |name: &str| {
            q.get(name)
                .map(|v| {
                    uuid::Uuid::parse_str(v).map_err(|_| {
                        AdminError::BadRequest(format!("{name}: {v:?} is not an event id"))
                    })
                })
                .transpose()
        };
        let since = q.get("since").map(|s| parse_ms(s, "since")).transpose()?;
        let until = q.get("until").map(|s| parse_ms(s, "until")).transpose()?;
        // Ids are UUIDv7, whose first 48 bits are the millisecond: this is the smallest id of
        // a millisecond, so a time range is an id range.
        let first_id = |ms: u64| uuid::Uuid::from_u128(u128::from(ms.min((1 << 48) - 1)) << 80);
        let before = [id("before")?, until.map(first_id)]
            .into_iter()
            .flatten()
            .min();
        let after = [
            id("after")?,
            since.map(|ms| uuid::Uuid::from_u128(first_id(ms).as_u128().saturating_sub(1))),
        ]
        .into_iter()
        .flatten()
        .max();
        let status = match q.get("status").map(String::as_str) {
            None | Some("") => None,
            Some("pending") => Some(EventStatus::Pending),
            Some("dead") => Some(EventStatus::Dead),
            Some("done") => Some(EventStatus::Done),
            Some(other) => {
                return Err(AdminError::BadRequest(format!(
                    "status: {other:?} is not pending, dead or done"
                )))
            }
        };
        let filter = |name: &str| q.get(name).filter(|v| !v.is_empty()).cloned();
        let page = self
            .store
            .event_log(EventQuery {
                before,
                after,
                source: filter("source"),
                event_type: filter("type"),
                status,
                limit: limit(q)?,
                max_examined: EXAMINE_PER_REQUEST,
            })
            .await?;
        let events: Vec<Value> = page
            .events
            .iter()
            .map(|l| {
                let e = &l.event;
                let deliveries: Vec<Value> = l
                    .deliveries
                    .iter()
                    .map(|d| {
                        json!({
                            "id": d.seq, "target": self.target_name(d.target), "state": d.state,
                            "attempts": d.attempts, "last_status": d.last_status,
                        })
                    })
                    .collect();
                json!({
                    "id": e.id, "source": e.source, "type": e.event_type, "format": e.format,
                    "received_at": e.received_at, "occurred_at": e.occurred_at,
                    "title": clip(&e.title, TITLE_CHARS), "event_status": e.status,
                    "service": e.service.name, "status": EventStatus::of(&l.deliveries),
                    "deliveries": deliveries,
                })
            })
            .collect();
        ok(json!({
            "events": events,
            "next": page.resume.map(|id| id.to_string()),
            "examined": page.examined,
        }))
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
            "last_error": d.last_error, "note": d.note, "response_excerpt": d.response_excerpt, "attempt_log": attempts,
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
                let event = self.store.event(d.event_id).await?.map(|e| {
                    json!({"source": e.source, "type": e.event_type, "title": clip(&e.title, TITLE_CHARS)})
                });
                out.push(json!({
                    "id": d.seq, "event_id": d.event_id.to_string(), "target": t.name, "attempts": d.attempts,
                    "dead_at": time(d.updated_ms), "last_status": d.last_status, "last_error": d.last_error,
                    "event": event,
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
        if let Some(ids) = q.get("ids") {
            return self.replay_listed(ids).await;
        }
        if !q.contains_key("target") {
            return Err(AdminError::BadRequest(
                "replaying a range needs target= (and optionally since= and until=), or ids="
                    .into(),
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

    /// `ids=1,2,3`: these dead letters (the console's "replay all shown"); ids that are not
    /// dead letters are left alone.
    async fn replay_listed(&self, ids: &str) -> Answer {
        let seqs = ids
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| AdminError::BadRequest(format!("ids: {s:?} is not a delivery id")))
            })
            .collect::<Result<Vec<u64>, _>>()?;
        if seqs.len() > MAX_LIMIT {
            return Err(AdminError::BadRequest(format!(
                "ids: at most {MAX_LIMIT} at once"
            )));
        }
        let mut targets = Vec::new();
        for seq in &seqs {
            if let Some(d) = self.store.delivery(*seq).await? {
                targets.push(d.target);
            }
        }
        self.replay(seqs, &targets).await
    }
}

/// At most `n` characters of `s`, with an ellipsis when cut.
fn clip(s: &str, n: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(n) {
        Some((end, _)) => format!("{}…", &s[..end]).into(),
        None => s.into(),
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
