//! Ingest: the HTTP side senders talk to. A request is routed to its source by path,
//! authenticated by URL token, read within the body limit, normalized into events, routed to
//! targets, and stored in one durable write. Only then does the sender get its 2xx: exactly
//! `200` for StatusGator (anything else counts towards disabling the integration), `202` for
//! PagerDuty.

mod error;
mod signature;

#[cfg(test)]
pub(crate) use signature::verify as verify_signature;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use subtle::ConstantTimeEq;

pub use error::IngestError;

use crate::admin::metrics::{IngestMetrics, SourceMetrics};
use crate::config::{OrderingKey, SourceConfig};
use crate::deliver::{context, now_ms, TargetRuntime, TargetSpec};
use crate::normalize::{
    classify_content_type, normalize_with, victorops, Event, Received, SourceKind, HEAVY_BODY_BYTES,
};
use crate::rules::{routing, Routing, Rules, Trace};
use crate::store::{
    clamp_ordering_key, Delivery, EventOutcome, IngestBatch, NewDelivery, NewEvent, Store,
    StoreError,
};
use crate::template::ContextNeeds;

pub struct Ingest<S> {
    pub store: Arc<S>,
    /// Sources and rules, swapped whole on reload.
    pub live: ArcSwap<Live>,
    pub targets: Vec<Arc<TargetRuntime>>,
    pub metrics: Arc<IngestMetrics>,
    pub max_body_bytes: usize,
    /// Parsing limits from the config (`server.max_batch_messages`).
    pub limits: crate::normalize::Limits,
    pub body_timeout: std::time::Duration,
    pub dedup_window_ms: u64,
    /// Set by the relay's disk check while the store is over its budget, or its disk is
    /// nearly full.
    pub disk: Arc<DiskState>,
    pub write_timeout: std::time::Duration,
    /// Where the events just stored wait, decoded, for their deliveries.
    pub events: Arc<crate::deliver::EventCache>,
}

/// What the once-a-second disk check found.
#[derive(Default)]
pub struct DiskState {
    pub over_budget: std::sync::atomic::AtomicBool,
    pub nearly_full: std::sync::atomic::AtomicBool,
}

/// What ingest reads from the config that a reload may change.
pub struct Live {
    pub sources: Vec<SourceConfig>,
    pub rules: Arc<Rules>,
}

/// What a stored request produced.
struct Accepted {
    kind: SourceKind,
    stored: Vec<String>,
    duplicates: usize,
}

/// An acknowledgement's body: `{"status":"accepted","events":[ids],"duplicates":n}`, or
/// `{"status":"duplicate"}` when every event was one. Written from this struct, in this order,
/// without a `serde_json::Value` map made first for every request.
#[derive(serde::Serialize)]
struct Ack<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicates: Option<usize>,
}

impl<S: Store> Ingest<S> {
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let mut source = None;
        let result = self.accept(req, &mut source).await;
        let m: &SourceMetrics =
            source.map_or(&self.metrics.unrouted, |i| &self.metrics.sources[i].1);
        m.received.fetch_add(1, Relaxed);
        match result {
            Ok(a) => {
                m.events_stored.fetch_add(a.stored.len() as u64, Relaxed);
                m.events_duplicate.fetch_add(a.duplicates as u64, Relaxed);
                let status = match a.kind {
                    SourceKind::Statusgator => StatusCode::OK,
                    SourceKind::Pagerduty => StatusCode::ACCEPTED,
                };
                let body = if a.stored.is_empty() && a.duplicates > 0 {
                    Ack {
                        status: "duplicate",
                        events: None,
                        duplicates: None,
                    }
                } else {
                    Ack {
                        status: "accepted",
                        events: Some(&a.stored),
                        duplicates: Some(a.duplicates),
                    }
                };
                respond(status, &body)
            }
            Err(e) => {
                m.reject(e.code());
                let status = e.status();
                if status.is_server_error() {
                    tracing::error!(error = %e, source_error = ?std::error::Error::source(&e), "ingest failed");
                } else {
                    tracing::info!(code = e.code(), error = %e, "request rejected");
                }
                let mut resp = respond(status, &json!({"error": e.to_string(), "code": e.code()}));
                match e {
                    IngestError::MethodNotAllowed => {
                        resp.headers_mut()
                            .insert(ALLOW, HeaderValue::from_static("POST"));
                    }
                    IngestError::Unavailable(_)
                    | IngestError::DiskBudget
                    | IngestError::DiskFull => {
                        resp.headers_mut()
                            .insert(RETRY_AFTER, HeaderValue::from_static("5"));
                    }
                    _ => {}
                }
                resp
            }
        }
    }

    /// `(source, token from the path)` for a request path: the source's own path, or its path
    /// followed by one secret segment.
    fn route<'a>(
        live: &'a Live,
        path: &'a str,
    ) -> Option<(usize, &'a SourceConfig, Option<&'a str>)> {
        let path = path.trim_end_matches('/');
        live.sources.iter().enumerate().find_map(|(i, s)| {
            if path == s.path {
                return Some((i, s, None));
            }
            let rest = path.strip_prefix(s.path.as_str())?.strip_prefix('/')?;
            (!rest.contains('/') && s.token.is_some()).then_some((i, s, Some(rest)))
        })
    }

    /// Sets `source_index` as soon as the request is routed, for the metrics.
    async fn accept(
        &self,
        req: Request<Incoming>,
        source_index: &mut Option<usize>,
    ) -> Result<Accepted, IngestError> {
        let (req, body) = req.into_parts();
        let live = self.live.load_full();
        let (index, source, path_token) =
            Self::route(&live, req.uri.path()).ok_or(IngestError::NotFound)?;
        // Reloads keep the set of source names, so the metrics' slots line up.
        *source_index = Some(index);
        if req.method != Method::POST {
            return Err(IngestError::MethodNotAllowed);
        }
        let mut query = BTreeMap::new();
        let mut query_token = None;
        for (k, v) in form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes()) {
            if k == "token" {
                query_token = Some(v.into_owned());
            } else {
                query.insert(k.into_owned(), v.into_owned());
            }
        }
        if let Some(expected) = &source.token {
            let given = path_token.or(query_token.as_deref()).unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(IngestError::Unauthorized);
            }
        }
        let content_type = req
            .headers
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if classify_content_type(content_type.as_deref()).is_none() {
            return Err(IngestError::UnsupportedMediaType(
                content_type.unwrap_or_default(),
            ));
        }
        let declared = req
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return Err(IngestError::PayloadTooLarge(self.max_body_bytes));
        }
        let signature = req
            .headers
            .get("x-pagerduty-signature")
            .map(|v| v.as_bytes().to_vec());
        // Not signed: where the body is, the signed event id is the dedup key instead, so a
        // captured request cannot be stored again under a new header.
        let webhook_id = req
            .headers
            .get("x-webhook-id")
            .and_then(|v| v.to_str().ok())
            .filter(|_| source.secrets.is_empty())
            .map(str::to_owned);
        // A client trickling its body must not hold a connection (and a task) forever.
        let collected = tokio::time::timeout(
            self.body_timeout,
            Limited::new(body, self.max_body_bytes).collect(),
        )
        .await
        .map_err(|_| IngestError::BodyTimeout(self.body_timeout.as_millis()))?;
        let body = collected
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    IngestError::PayloadTooLarge(self.max_body_bytes)
                } else {
                    IngestError::BodyRead(e.to_string())
                }
            })?
            .to_bytes();
        let body_len = body.len();
        if !source.secrets.is_empty() && !body.is_empty() {
            // Checked over the bytes as received, before anything parses them.
            signature::verify(signature.as_deref(), &body, &source.secrets).map_err(
                |e| match e {
                    signature::SignatureError::Malformed => IngestError::SignatureMalformed,
                    signature::SignatureError::Mismatch => IngestError::SignatureMismatch,
                },
            )?;
        }
        if self.disk.nearly_full.load(Relaxed) {
            return Err(IngestError::DiskFull);
        }
        if self.disk.over_budget.load(Relaxed) {
            return Err(IngestError::DiskBudget);
        }
        let received_ms = now_ms();
        let parse = {
            let (live, index, limits) = (live.clone(), index, self.limits);
            move || -> Result<(Vec<Event>, Vec<Trace>), IngestError> {
                let source = &live.sources[index];
                let mut events = normalize_with(
                    &Received {
                        source: &source.name,
                        kind: source.kind,
                        content_type: content_type.as_deref(),
                        body,
                        query,
                        received_at: chrono::DateTime::from_timestamp_millis(received_ms as i64)
                            .unwrap_or_default(),
                        webhook_id: webhook_id.as_deref(),
                    },
                    limits,
                )?;
                let traces = events
                    .iter_mut()
                    .map(|e| prepare_alert(e, source, &live.rules))
                    .collect();
                Ok((events, traces))
            }
        };
        // Linear, but a large body is still milliseconds of CPU: not on the async threads.
        let (events, traces) = if body_len >= HEAVY_BODY_BYTES {
            tokio::task::spawn_blocking(parse)
                .await
                .map_err(|e| IngestError::BodyRead(format!("parser failed: {e}")))??
        } else {
            parse()?
        };
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let batch = IngestBatch {
            events: events
                .iter()
                .zip(&traces)
                .map(|(event, trace)| self.route_event(event, trace))
                .collect::<Result<_, _>>()
                .map_err(IngestError::Unavailable)?,
            now_ms: received_ms,
            dedup_until_ms: received_ms + self.dedup_window_ms,
        };
        // The deliveries that will take each event from the delivery cache soon: not a paused
        // or suspended target's (it sends nothing until resumed).
        let takers: Vec<_> = self
            .targets
            .iter()
            .filter(|t| t.mode() == crate::store::TargetMode::Active)
            .map(|t| t.id)
            .collect();
        let deliveries: Vec<usize> = batch
            .events
            .iter()
            .map(|e| {
                e.deliveries
                    .iter()
                    .filter(|d| takers.contains(&d.target))
                    .count()
            })
            .collect();
        let touched: Vec<usize> = self
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                batch
                    .events
                    .iter()
                    .any(|e| e.deliveries.iter().any(|d| d.target == t.id))
            })
            .map(|(i, _)| i)
            .collect();
        // In the cache before the write: a lane may claim a delivery the moment its write group
        // lands, and must find the event there. What is not stored after all leaves again.
        let cached: Vec<Option<uuid::Uuid>> = ids
            .iter()
            .zip(events)
            .zip(&deliveries)
            .map(|((id, event), deliveries)| {
                let uuid = uuid::Uuid::parse_str(id).ok()?;
                self.events.put(uuid, event, *deliveries);
                Some(uuid)
            })
            .collect();
        // A write stuck in the storage engine must not hold the sender past its own timeout:
        // answer 503 (it retries; if the write lands after all, dedup absorbs the repeat).
        let written = tokio::time::timeout(self.write_timeout, self.store.ingest(batch))
            .await
            .map_err(|_| StoreError::Stalled(self.write_timeout.as_millis()))
            .and_then(|r| r);
        let outcomes = match written {
            Ok(outcomes) => outcomes,
            Err(e) => {
                cached
                    .iter()
                    .flatten()
                    .for_each(|id| self.events.forget(id));
                return Err(IngestError::Unavailable(e));
            }
        };
        let mut accepted = Accepted {
            kind: source.kind,
            stored: Vec::new(),
            duplicates: 0,
        };
        for ((id, outcome), uuid) in ids.into_iter().zip(outcomes).zip(cached) {
            match outcome {
                EventOutcome::Stored => accepted.stored.push(id),
                EventOutcome::Duplicate => {
                    if let Some(uuid) = uuid {
                        self.events.forget(&uuid);
                    }
                    accepted.duplicates += 1
                }
            }
        }
        // After the cache has the events: the lanes woken find them there.
        for i in touched {
            self.targets[i].notify.notify_one();
        }
        tracing::debug!(source = %source.name, stored = accepted.stored.len(), duplicates = accepted.duplicates, "accepted");
        Ok(accepted)
    }

    /// One delivery per target the event is routed to.
    fn route_event(&self, event: &Event, trace: &Trace) -> Result<NewEvent, StoreError> {
        let deliveries = self
            .targets
            .iter()
            .filter_map(|t| {
                let spec = t.spec();
                let selected =
                    routing(&spec.config, &event.source, &event.alert, trace) == Routing::Selected;
                selected.then(|| NewDelivery {
                    target: t.id,
                    ordering_key: ordering_key(t, &spec, event),
                })
            })
            .collect();
        NewEvent::new(event, deliveries)
    }
}

/// The ordering key of `event` for `target`, from the target's current spec.
pub(crate) fn ordering_key(target: &TargetRuntime, spec: &TargetSpec, event: &Event) -> String {
    let mut key = match &spec.config.ordering_key {
        OrderingKey::AlertField(field) => event.alert.get(field).cloned().unwrap_or_default(),
        OrderingKey::Template(t) => {
            let placeholder = Delivery::placeholder(uuid::Uuid::nil(), target.id);
            let ctx = context(event, &placeholder, 1, &target.name, ContextNeeds::ALL);
            spec.templates.render(t, &ctx).unwrap_or_else(|e| {
                // An event is never refused for a target's key template; it shares the
                // empty key instead, which keeps it in order with the others that did.
                tracing::warn!(target_name = %target.name, error = %e, "ordering_key template failed; using the empty key");
                String::new()
            })
        }
    };
    clamp_ordering_key(&mut key);
    key
}

/// Source-level fields, then the rules (the names of those that matched are kept on the
/// event), then VictorOps' field limits.
pub(crate) fn prepare_alert(event: &mut Event, source: &SourceConfig, rules: &Rules) -> Trace {
    if let Some(rk) = &source.routing_key {
        event
            .alert
            .entry("routing_key".into())
            .or_insert_with(|| rk.clone());
    }
    // Rules see values within VictorOps' limits, and leave them within: every value a rule
    // makes is cut to its field's limit as it is made.
    victorops::clamp_fields(&mut event.alert);
    let payload = if rules.needs_payload() {
        event.payload()
    } else {
        serde_json::Value::Null
    };
    let trace = rules.apply(&mut event.alert, &payload);
    event.matched_rules.clone_from(&trace.matched);
    trace
}

fn respond(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).expect("answers are strings and numbers");
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
