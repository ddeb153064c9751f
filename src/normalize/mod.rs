//! Turns an accepted request body into normalized [`Event`]s.
//!
//! Every payload format a source can send becomes the same `Event` shape, so that routing,
//! templates and targets never need to know which generation of which sender produced it. The
//! parsers are lenient about what they read (senders add keys and leave others out) and strict
//! about what makes a body unusable, which they report as [`NormalizeError`].
//!
//! Status → VictorOps `message_type` mapping (the `alert.message_type` field):
//!
//! | source value | `message_type` | `entity_state` |
//! |---|---|---|
//! | StatusGator `down` | `CRITICAL` | `CRITICAL` |
//! | StatusGator `warn`, `maintenance` | `WARNING` | `WARNING` |
//! | StatusGator `up` | `RECOVERY` | `OK` |
//! | StatusGator early warning signal | `WARNING` | `WARNING` |
//! | PagerDuty `incident.triggered`, `incident.unacknowledged`, `incident.reopened` (V1/V2 `incident.trigger`, `incident.unacknowledge`) | `CRITICAL` | `CRITICAL` |
//! | PagerDuty `incident.acknowledged` (V1/V2 `incident.acknowledge`) | `ACKNOWLEDGEMENT` | `ACKNOWLEDGEMENT` |
//! | PagerDuty `incident.resolved` (V1/V2 `incident.resolve`) | `RECOVERY` | `OK` |
//! | every other PagerDuty type (priority changes, escalations, reassignments, notes, responders, pings, service events, …) and StatusGator `unknown` | `INFO` | `INFO` |

mod form;
mod pagerduty;
mod statusgator;
mod time;
pub mod victorops;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use form::{parse_form, MAX_FORM_PAIRS};
pub(crate) use time::{format_time, parse_time};

/// The kind of sender a source accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Statusgator,
    Pagerduty,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Statusgator => "statusgator",
            SourceKind::Pagerduty => "pagerduty",
        }
    }
}

/// One normalized alert event, as stored and as seen by templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub kind: SourceKind,
    pub format: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub dedup_key: String,
    pub occurred_at: String,
    pub received_at: String,
    pub service: Service,
    pub status: Option<String>,
    pub previous_status: Option<String>,
    pub title: String,
    pub details: Option<String>,
    pub components: Vec<Component>,
    pub query: BTreeMap<String, String>,
    /// Flat fields in VictorOps vocabulary; what rules read and write.
    pub alert: BTreeMap<String, String>,
    /// Names of the rules that matched at ingest, in order: what the console shows. Not part
    /// of what templates see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_rules: Vec<String>,
    /// The request exactly as received (for a PagerDuty V1/V2 `messages` batch, the one
    /// message's JSON text, byte for byte as it stood in the request). Stored beside the event
    /// rather than inside its JSON, so the bytes are kept verbatim and never escaped.
    #[serde(skip)]
    pub raw: Raw,
    /// [`Event::template_json`]'s bytes once made; see [`JsonMemo`].
    #[serde(skip)]
    pub json_memo: JsonMemo,
}

/// The bytes of `{{json event}}`, made once per event and shared by every delivery of it and
/// by the store's encoding. Made on first use, which comes after ingest's rules have changed
/// the event for the last time (it is stored, then delivered); an event is not changed after
/// it was stored. A copy of an event starts without it (a copy may be changed), and two events
/// compare equal whatever their memos hold.
#[derive(Default)]
pub struct JsonMemo(std::sync::OnceLock<bytes::Bytes>);

impl JsonMemo {
    /// The length of the bytes made, 0 before they are.
    pub fn made_len(&self) -> usize {
        self.0.get().map_or(0, |b| b.len())
    }
}

impl Clone for JsonMemo {
    fn clone(&self) -> JsonMemo {
        JsonMemo::default()
    }
}

impl PartialEq for JsonMemo {
    fn eq(&self, _: &JsonMemo) -> bool {
        true
    }
}

impl std::fmt::Debug for JsonMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonMemo")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: Option<String>,
    pub name: Option<String>,
    pub slug: Option<String>,
    pub home_page_url: Option<String>,
    pub status_page_url: Option<String>,
    pub icon_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub group: Option<String>,
    pub name: String,
    pub status: Option<String>,
    pub previous_status: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Raw {
    pub content_type: Option<String>,
    pub body: bytes::Bytes,
}

/// An event as templates see it (`{{json event}}`, the template context's `event`): every
/// field but the rules that matched (the console's) and the raw body (`raw`, `payload`).
#[derive(Serialize)]
pub struct ForTemplates<'a> {
    id: &'a str,
    source: &'a str,
    kind: SourceKind,
    format: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    dedup_key: &'a str,
    occurred_at: &'a str,
    received_at: &'a str,
    service: &'a Service,
    status: &'a Option<String>,
    previous_status: &'a Option<String>,
    title: &'a str,
    details: &'a Option<String>,
    components: &'a [Component],
    query: &'a BTreeMap<String, String>,
    alert: &'a BTreeMap<String, String>,
}

impl Event {
    /// The event as templates see it.
    pub fn for_templates(&self) -> ForTemplates<'_> {
        // Every field named: a field added to `Event` must be placed here or left out here.
        let Event {
            id,
            source,
            kind,
            format,
            event_type,
            dedup_key,
            occurred_at,
            received_at,
            service,
            status,
            previous_status,
            title,
            details,
            components,
            query,
            alert,
            matched_rules: _,
            raw: _,
            json_memo: _,
        } = self;
        ForTemplates {
            id,
            source,
            kind: *kind,
            format,
            event_type,
            dedup_key,
            occurred_at,
            received_at,
            service,
            status,
            previous_status,
            title,
            details,
            components,
            query,
            alert,
        }
    }

    /// What `{{json event}}` writes, without building a template context: made once, then
    /// shared ([`JsonMemo`]).
    pub fn template_json(&self) -> bytes::Bytes {
        self.json_memo
            .0
            .get_or_init(|| {
                serde_json::to_vec(&self.for_templates())
                    .expect("an event serializes")
                    .into()
            })
            .clone()
    }

    /// The sender's payload as a JSON value: the parsed body, the decoded form for StatusGator
    /// v1, or the one message of a PagerDuty batch this event came from (its raw body). Linear
    /// in the body's size; callers with a large body run it off the async threads
    /// ([`HEAVY_BODY_BYTES`]).
    pub fn payload(&self) -> Value {
        if self.format == "statusgator.v1" {
            return match parse_form(&self.raw.body) {
                Ok(pairs) => Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                ),
                Err(_) => Value::Null,
            };
        }
        serde_json::from_slice(&self.raw.body).unwrap_or(Value::Null)
    }
}

/// Bodies at least this large are parsed, and turned into a delivery's request, on a blocking
/// thread rather than on the async runtime's: the work is linear, but a megabyte of JSON or
/// form is still milliseconds of CPU that would hold up every other connection on that thread.
pub const HEAVY_BODY_BYTES: usize = 64 * 1024;

/// Dedup keys longer than this are replaced by a digest of themselves, so no sender can make
/// the store keep a key as large as a header (`X-Webhook-Id`) or an id field may be.
pub const MAX_DEDUP_KEY_BYTES: usize = 128;

/// Messages a PagerDuty V1/V2 `messages` batch may carry by default (`server.max_batch_messages`):
/// PagerDuty sends one in practice.
pub const DEFAULT_MAX_BATCH_MESSAGES: usize = 100;

/// Limits that come from the config rather than from the request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Above this many messages a PagerDuty batch is refused whole
    /// ([`NormalizeError::TooManyMessages`]).
    pub max_batch_messages: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_batch_messages: DEFAULT_MAX_BATCH_MESSAGES,
        }
    }
}

/// What the ingest layer knows about a request besides its body.
pub struct Received<'a> {
    pub source: &'a str,
    pub kind: SourceKind,
    pub content_type: Option<&'a str>,
    pub body: bytes::Bytes,
    pub query: BTreeMap<String, String>,
    pub received_at: DateTime<Utc>,
    /// PagerDuty's `X-Webhook-Id`, repeated on every retry of one webhook.
    pub webhook_id: Option<&'a str>,
}

/// Why a body cannot become an event. Each maps to a 4xx; the message says what is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NormalizeError {
    #[error("request body is empty")]
    Empty,
    #[error("request body is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("malformed form body: {0}")]
    Form(String),
    #[error("{0}")]
    Shape(String),
    #[error("the batch has {count} messages; at most {max} are accepted in one request")]
    TooManyMessages { count: usize, max: usize },
}

/// Classification of a request's Content-Type header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    Json,
    Form,
    /// Missing or generic (`text/plain`, `application/octet-stream`): decided from the body.
    Sniff,
}

/// Returns `None` for a media type that can never carry a webhook the relay understands.
pub fn classify_content_type(content_type: Option<&str>) -> Option<BodyType> {
    let Some(ct) = content_type else {
        return Some(BodyType::Sniff);
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "" | "text/plain" | "application/octet-stream" | "*/*" => Some(BodyType::Sniff),
        "application/x-www-form-urlencoded" => Some(BodyType::Form),
        "application/json" | "text/json" => Some(BodyType::Json),
        m if m.ends_with("+json") => Some(BodyType::Json),
        _ => None,
    }
}

/// Parses and normalizes one request body with the default [`Limits`].
pub fn normalize(received: &Received<'_>) -> Result<Vec<Event>, NormalizeError> {
    normalize_with(received, Limits::default())
}

/// Parses and normalizes one request body. A PagerDuty V1/V2 batch yields one event per
/// message; an empty batch yields none. The work is linear in the body's size.
pub fn normalize_with(
    received: &Received<'_>,
    limits: Limits,
) -> Result<Vec<Event>, NormalizeError> {
    if received.body.is_empty() {
        return Err(NormalizeError::Empty);
    }
    let text = std::str::from_utf8(&received.body)
        .map_err(|e| NormalizeError::NotUtf8(e.valid_up_to()))?;
    if text.trim().is_empty() {
        return Err(NormalizeError::Empty);
    }
    let body_type = classify_content_type(received.content_type).unwrap_or(BodyType::Sniff);
    let parsed = match received.kind {
        SourceKind::Statusgator => statusgator::parse(text, body_type)?,
        SourceKind::Pagerduty => {
            pagerduty::parse(text, received.webhook_id, limits.max_batch_messages)?
        }
    };
    let received_at = format_time(received.received_at);
    Ok(parsed
        .into_iter()
        .map(|p| p.into_event(received, &received_at))
        .collect())
}

/// A parser's result before the ingest context (ids, time, query, raw body) is attached.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Parsed {
    pub format: &'static str,
    pub event_type: String,
    pub dedup_key: String,
    pub occurred_at: Option<DateTime<Utc>>,
    pub service: Service,
    pub status: Option<String>,
    pub previous_status: Option<String>,
    pub title: String,
    pub details: Option<String>,
    pub components: Vec<Component>,
    pub alert: BTreeMap<String, String>,
    /// Where this event's own bytes are in the body, when they are not the whole body (one
    /// message of a PagerDuty batch).
    pub raw_range: Option<std::ops::Range<usize>>,
}

impl Parsed {
    fn into_event(self, received: &Received<'_>, received_at: &str) -> Event {
        let occurred = self.occurred_at.unwrap_or(received.received_at);
        let mut alert = self.alert;
        alert
            .entry("timestamp".into())
            .or_insert_with(|| occurred.timestamp().to_string());
        alert
            .entry("state_start_time".into())
            .or_insert_with(|| occurred.timestamp().to_string());
        // VictorOps' built-in fields for time-based rules; the week date reads e.g.
        // 2020-W10-3T17:38:32Z (ISO 8601, days 1-7 = Monday-Sunday).
        let at = received.received_at;
        alert.insert(
            "alert_received_time_utc".into(),
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        alert.insert("alert_received_week_time_utc".into(), time::week_time(at));
        Event {
            id: uuid::Uuid::now_v7().to_string(),
            source: received.source.to_owned(),
            kind: received.kind,
            format: self.format.to_owned(),
            event_type: self.event_type,
            dedup_key: bounded_key(self.dedup_key),
            occurred_at: format_time(occurred),
            received_at: received_at.to_owned(),
            service: self.service,
            status: self.status,
            previous_status: self.previous_status,
            title: self.title,
            details: self.details,
            components: self.components,
            query: received.query.clone(),
            alert,
            matched_rules: Vec::new(),
            json_memo: JsonMemo::default(),
            raw: Raw {
                content_type: received.content_type.map(str::to_owned),
                // A slice shares the request's buffer: no copy until the store encodes it.
                body: match self.raw_range {
                    Some(range) => received.body.slice(range),
                    None => received.body.clone(),
                },
            },
        }
    }
}

/// VictorOps `message_type` and `entity_state` for a StatusGator status (see the module
/// table; PagerDuty maps its event types in `pagerduty`).
pub(crate) fn message_type_for(status: &str) -> (&'static str, &'static str) {
    match status {
        "down" => ("CRITICAL", "CRITICAL"),
        "warn" | "maintenance" => ("WARNING", "WARNING"),
        "up" => ("RECOVERY", "OK"),
        _ => ("INFO", "INFO"),
    }
}

/// Reads a string at a path of object keys; numbers and booleans are rendered as text.
pub(crate) fn text_at(value: &Value, path: &[&str]) -> Option<String> {
    let mut v = value;
    for key in path {
        v = v.get(key)?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Like [`text_at`], but an empty string counts as absent.
pub(crate) fn nonempty_at(value: &Value, path: &[&str]) -> Option<String> {
    text_at(value, path).filter(|s| !s.is_empty())
}

/// A short, stable hex digest of identifying fields, for senders that send no id.
pub(crate) fn digest(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// A dedup key as stored: itself when short, else `sha256:` and the hex digest of all of it
/// (the same key always gives the same digest, so duplicates are still recognised).
pub(crate) fn bounded_key(key: String) -> String {
    use sha2::{Digest, Sha256};
    if key.len() <= MAX_DEDUP_KEY_BYTES {
        return key;
    }
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// Puts `value` into the alert map when it is present.
pub(crate) fn put(alert: &mut BTreeMap<String, String>, key: &str, value: Option<String>) {
    if let Some(v) = value {
        alert.insert(key.to_owned(), v);
    }
}

pub(crate) fn parse_json(text: &str) -> Result<Value, NormalizeError> {
    serde_json::from_str(text).map_err(|e| NormalizeError::Json(e.to_string()))
}
