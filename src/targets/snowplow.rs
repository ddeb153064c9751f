//! `snowplow`: feeds a Snowplow collector through the two webhook adapters it still has, which
//! only accept StatusGator's 2016 form and PagerDuty's retired V1 format.
//!
//! - StatusGator events of every version → `POST {collector}/com.statusgator/v1`, the seven v1
//!   form fields, strictly encoded (only `A-Z a-z 0-9 * - . _` unescaped, space as `+`; so `+`,
//!   `;` and `#` cannot corrupt a value), absent values omitted, lengths within the Iglu schema,
//!   `Content-Type: application/x-www-form-urlencoded` with no charset. Early warnings and unknown
//!   v3 types are skipped: `status_change` has nothing to carry them.
//! - PagerDuty events → `POST {collector}/com.pagerduty/v1`, a V1 `messages` array of exactly one
//!   message (one bad message must never take others down), its type mapped from V2/V3, every
//!   object cut to the keys `com.pagerduty/incident/jsonschema/1-0-0` allows
//!   (`additionalProperties: false` at every level), `Content-Type: application/json` with no
//!   charset. Types with no V1 equivalent are skipped.
//!
//! Query: `p` (platform) and `aid` (app id) come from the ingest request when it had valid ones
//! (a webhook URL moved from a collector keeps meaning the same), else from the target's
//! `platform` and `app_id`; `eid` is the event id, so Snowplow's `event_id` is the relay's.
//!
//! The collector answers `200 ok` whatever the adapter and schema validation later decide; only
//! a pipeline running enrich shows those failures.

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde_json::{json, Map, Value};

use super::{Outgoing, Prepared};
use crate::config::SnowplowSpec;
use crate::normalize::parse_time;

/// Platform codes enrich accepts for `p`.
pub const PLATFORMS: &[&str] = &[
    "web", "mob", "pc", "srv", "app", "tv", "cnsl", "iot", "headset",
];

pub struct Snowplow {
    spec: SnowplowSpec,
}

impl Snowplow {
    pub fn new(spec: SnowplowSpec) -> Snowplow {
        Snowplow { spec }
    }

    pub fn prepare(&self, ctx: &Value) -> Result<Prepared, String> {
        let event = &ctx["event"];
        let payload = &ctx["payload"];
        let built = match event["kind"].as_str() {
            Some("statusgator") => statusgator_form(event, payload).map(|b| {
                (
                    "/com.statusgator/v1",
                    "application/x-www-form-urlencoded",
                    b.into_bytes(),
                )
            }),
            Some("pagerduty") => pagerduty_message(event, payload).map(|m| {
                let body =
                    serde_json::to_vec(&json!({ "messages": [m] })).expect("JSON serializes");
                ("/com.pagerduty/v1", "application/json", body)
            }),
            other => Err(format!("no Snowplow adapter for events of kind {other:?}")),
        };
        let (path, content_type, body) = match built {
            Ok(b) => b,
            Err(skip) => return Ok(Prepared::Skip(skip)),
        };
        if body.len() > self.spec.max_body_bytes {
            return Err(format!(
                "the body is {} bytes, over the collector's {}-byte limit",
                body.len(),
                self.spec.max_body_bytes
            ));
        }
        let query = |k: &str| event["query"][k].as_str().filter(|v| !v.is_empty());
        let platform = query("p")
            .filter(|p| PLATFORMS.contains(p))
            .or(self.spec.platform.as_deref());
        let app_id = query("aid").or(self.spec.app_id.as_deref());
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(p) = platform {
            q.append_pair("p", p);
        }
        if let Some(aid) = app_id {
            q.append_pair("aid", aid);
        }
        if let Some(id) = event["id"].as_str() {
            q.append_pair("eid", id);
        }
        let url = format!("{}{}?{}", self.spec.collector, path, q.finish());
        let url = reqwest::Url::parse(&url).map_err(|e| format!("collector URL {url:?}: {e}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        Ok(Prepared::Http(Outgoing {
            method: reqwest::Method::POST,
            url,
            headers,
            body: body.into(),
        }))
    }
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for k in path {
        v = v.get(k)?;
    }
    v.as_str().filter(|s| !s.is_empty())
}

fn cut(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The seven v1 fields, mapped from whichever StatusGator version the event came in.
fn statusgator_form(event: &Value, p: &Value) -> Result<String, String> {
    match event["type"].as_str() {
        Some("status_change") => {}
        Some("early_warning") => {
            return Err("an early warning is not a status change; com.statusgator/status_change has no place for it".into())
        }
        other => return Err(format!("StatusGator type {other:?} has no Snowplow schema")),
    }
    let v3 = event["format"] == "statusgator.v3";
    let field = |v1: &str, v3_paths: &[&[&str]]| -> Option<&str> {
        if v3 {
            v3_paths.iter().find_map(|path| text(p, path))
        } else {
            text(p, &[v1])
        }
    };
    let name = field(
        "service_name",
        &[&["service", "name"], &["monitor", "display_name"]],
    );
    let icon = field(
        "favicon_url",
        &[&["service", "icon_url"], &["monitor", "icon_url"]],
    );
    let status_page = field("status_page_url", &[&["service", "status_page_url"]]);
    let home_page = field("home_page_url", &[&["service", "home_page_url"]]);
    let current = field("current_status", &[&["status"]]);
    let last = field("last_status", &[&["previous_status"]]);
    // The sender's timestamp when it is valid RFC 3339 (so a v1 body passes through unchanged),
    // else the normalized one.
    let sent = field("occurred_at", &[&["recorded_at"]])
        .filter(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok());
    let occurred = sent.or(event["occurred_at"].as_str());
    fn uri(u: Option<&str>) -> Option<&str> {
        u.filter(|u| reqwest::Url::parse(u).is_ok())
            .map(|u| cut(u, 8192))
    }
    let mut form = form_urlencoded::Serializer::new(String::new());
    let pairs = [
        ("service_name", name.map(|s| cut(s, 128))),
        ("favicon_url", uri(icon)),
        ("status_page_url", uri(status_page)),
        ("home_page_url", uri(home_page)),
        ("current_status", current.map(|s| cut(s, 128))),
        ("last_status", last.map(|s| cut(s, 128))),
        ("occurred_at", occurred),
    ];
    for (k, v) in pairs {
        if let Some(v) = v {
            form.append_pair(k, v);
        }
    }
    Ok(form.finish())
}

const V1_TYPES: &[&str] = &[
    "incident.trigger",
    "incident.acknowledge",
    "incident.unacknowledge",
    "incident.resolve",
    "incident.assign",
    "incident.escalate",
    "incident.delegate",
];

fn v1_type(format: &str, event_type: &str) -> Option<&'static str> {
    let mapped = match (format, event_type) {
        ("pagerduty.v3", "incident.triggered") => "incident.trigger",
        ("pagerduty.v3", "incident.acknowledged") => "incident.acknowledge",
        ("pagerduty.v3", "incident.unacknowledged") => "incident.unacknowledge",
        ("pagerduty.v3", "incident.resolved") => "incident.resolve",
        ("pagerduty.v3", "incident.reassigned") => "incident.assign",
        ("pagerduty.v3", "incident.escalated") => "incident.escalate",
        ("pagerduty.v3", "incident.delegated") => "incident.delegate",
        ("pagerduty.v3", _) => return None,
        (_, t) => t,
    };
    V1_TYPES.iter().copied().find(|t| *t == mapped)
}

/// A reference (`{id, summary, html_url}`) as a V1 object `{id, name, html_url}`.
fn person(r: &Value) -> Value {
    let mut m = Map::new();
    for (to, from) in [
        ("id", "id"),
        ("name", "name"),
        ("name", "summary"),
        ("email", "email"),
        ("html_url", "html_url"),
    ] {
        if let Some(v) = r.get(from).filter(|v| v.is_string()) {
            m.entry(to).or_insert_with(|| v.clone());
        }
    }
    Value::Object(m)
}

fn with_deleted_at(r: &Value) -> Value {
    let mut v = person(r);
    v.as_object_mut()
        .map(|m| m.insert("deleted_at".into(), Value::Null));
    v
}

/// One V1 message for the event, or why there is none.
fn pagerduty_message(event: &Value, p: &Value) -> Result<Value, String> {
    let format = event["format"].as_str().unwrap_or("");
    let event_type = event["type"].as_str().unwrap_or("");
    let Some(v1) = v1_type(format, event_type) else {
        return Err(format!(
            "PagerDuty {event_type:?} has no V1 equivalent for com.pagerduty/incident"
        ));
    };
    let message = match format {
        "pagerduty.v1" => p.clone(),
        "pagerduty.v2" => from_v2(p),
        _ => from_v3(p),
    };
    let mut message = conform(&message, &MESSAGE).unwrap_or_else(|| json!({}));
    message["type"] = Value::String(v1.into());
    Ok(message)
}

/// Where a V1 message's values come from in a newer payload; the only part that differs
/// between V2 and V3.
struct Sources<'a> {
    message_id: &'a Value,
    occurred: &'a Value,
    incident: &'a Value,
    number: &'a Value,
    created: &'a Value,
    changed_on: &'a Value,
    changed_by: &'a Value,
    /// `(at, user reference)` per assignee.
    assigned: Vec<(&'a Value, &'a Value)>,
}

fn from_v3(p: &Value) -> Value {
    let e = &p["event"];
    let d = &e["data"];
    let at = &e["occurred_at"];
    v1_message(Sources {
        message_id: &e["id"],
        occurred: at,
        incident: d,
        number: &d["number"],
        created: d.get("created_at").unwrap_or(at),
        changed_on: at,
        changed_by: &e["agent"],
        assigned: d["assignees"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| (at, u))
            .collect(),
    })
}

fn from_v2(m: &Value) -> Value {
    let i = &m["incident"];
    v1_message(Sources {
        message_id: &m["id"],
        occurred: &m["created_on"],
        incident: i,
        number: &i["incident_number"],
        created: &i["created_at"],
        changed_on: &i["last_status_change_at"],
        changed_by: &i["last_status_change_by"],
        assigned: i["assignments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| (&x["at"], &x["assignee"]))
            .collect(),
    })
}

/// A V1 message in the schema's key order; `conform` then drops what is absent or mistyped.
fn v1_message(s: Sources<'_>) -> Value {
    let i = s.incident;
    let mut inc = Map::new();
    inc.insert("id".into(), i["id"].clone());
    inc.insert("incident_number".into(), s.number.clone());
    inc.insert("created_on".into(), s.created.clone());
    inc.insert("status".into(), i["status"].clone());
    inc.insert("html_url".into(), i["html_url"].clone());
    if i.get("incident_key").is_some_and(Value::is_string) {
        inc.insert("incident_key".into(), i["incident_key"].clone());
    }
    inc.insert("service".into(), with_deleted_at(&i["service"]));
    inc.insert(
        "escalation_policy".into(),
        with_deleted_at(&i["escalation_policy"]),
    );
    inc.insert(
        "trigger_summary_data".into(),
        json!({ "subject": i["title"] }),
    );
    inc.insert("last_status_change_on".into(), s.changed_on.clone());
    let by = if s.changed_by.is_object() {
        person(s.changed_by)
    } else {
        Value::Null
    };
    inc.insert("last_status_change_by".into(), by);
    let assigned = s
        .assigned
        .into_iter()
        .map(|(at, user)| {
            let mut o = person(user);
            o["type"] = "user".into();
            json!({"at": at, "object": o})
        })
        .collect();
    inc.insert("assigned_to".into(), Value::Array(assigned));
    json!({"type": "", "id": s.message_id, "created_on": s.occurred, "data": {"incident": inc}})
}

/// The Iglu schema `com.pagerduty/incident/jsonschema/1-0-0`, as a shape to cut values to.
enum Shape {
    Str,
    Int,
    DateTime,
    Array,
    StrOrNull,
    /// Always sent as `null` (the schema allows nothing else).
    Null,
    Obj(&'static [(&'static str, Shape)]),
    ObjOrNull(&'static [(&'static str, Shape)]),
    ArrayOf(&'static [(&'static str, Shape)]),
}

const USER: &[(&str, Shape)] = &[
    ("id", Shape::Str),
    ("name", Shape::Str),
    ("email", Shape::Str),
    ("html_url", Shape::Str),
];
const ASSIGNEE: &[(&str, Shape)] = &[
    ("id", Shape::Str),
    ("name", Shape::Str),
    ("email", Shape::Str),
    ("html_url", Shape::Str),
    ("type", Shape::Str),
];
const INCIDENT: &[(&str, Shape)] = &[
    ("id", Shape::Str),
    ("incident_number", Shape::Int),
    ("created_on", Shape::DateTime),
    ("status", Shape::Str),
    ("pending_actions", Shape::Array),
    ("html_url", Shape::Str),
    ("incident_key", Shape::StrOrNull),
    (
        "service",
        Shape::Obj(&[
            ("id", Shape::Str),
            ("name", Shape::Str),
            ("html_url", Shape::Str),
            ("deleted_at", Shape::Null),
        ]),
    ),
    (
        "escalation_policy",
        Shape::Obj(&[
            ("id", Shape::Str),
            ("name", Shape::Str),
            ("deleted_at", Shape::Null),
        ]),
    ),
    ("assigned_to_user", Shape::ObjOrNull(USER)),
    (
        "trigger_summary_data",
        Shape::Obj(&[
            ("description", Shape::Str),
            ("subject", Shape::Str),
            ("client", Shape::Str),
        ]),
    ),
    ("trigger_details_html_url", Shape::Str),
    ("trigger_type", Shape::Str),
    ("last_status_change_on", Shape::DateTime),
    ("last_status_change_by", Shape::ObjOrNull(USER)),
    ("number_of_escalations", Shape::Int),
    (
        "assigned_to",
        Shape::ArrayOf(&[("at", Shape::Str), ("object", Shape::Obj(ASSIGNEE))]),
    ),
    // Not nullable: a `null` is omitted.
    ("resolved_by_user", Shape::Obj(USER)),
];
const MESSAGE: Shape = Shape::Obj(&[
    ("type", Shape::Str),
    ("id", Shape::Str),
    ("created_on", Shape::DateTime),
    ("data", Shape::Obj(&[("incident", Shape::Obj(INCIDENT))])),
]);

/// Cuts `v` to `shape`: unknown keys dropped, values of the wrong type omitted, timestamps that
/// are not RFC 3339 repaired (`" 00:00"` → `"+00:00"`) or omitted. `None` means "omit".
fn conform(v: &Value, shape: &Shape) -> Option<Value> {
    match shape {
        Shape::Str => v.as_str().map(|_| v.clone()),
        Shape::Int => v.as_i64().map(Value::from),
        Shape::Array => v.as_array().map(|_| v.clone()),
        Shape::StrOrNull => (v.is_string() || v.is_null()).then(|| v.clone()),
        Shape::Null => Some(Value::Null),
        Shape::DateTime => {
            let s = v.as_str()?;
            if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
                return Some(v.clone());
            }
            parse_time(s)
                .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
        }
        Shape::ObjOrNull(_) if v.is_null() => Some(Value::Null),
        Shape::Obj(fields) | Shape::ObjOrNull(fields) => {
            let obj = v.as_object()?;
            let mut out = Map::new();
            for (k, val) in obj {
                if let Some((_, s)) = fields.iter().find(|(name, _)| name == k) {
                    if let Some(c) = conform(val, s) {
                        out.insert(k.clone(), c);
                    }
                }
            }
            // Keys the schema pins to null are sent even when the sender left them out.
            for (k, s) in fields.iter() {
                if matches!(s, Shape::Null) && !out.contains_key(*k) {
                    out.insert((*k).to_owned(), Value::Null);
                }
            }
            Some(Value::Object(out))
        }
        Shape::ArrayOf(fields) => {
            let items = v.as_array()?;
            Some(Value::Array(
                items
                    .iter()
                    .filter_map(|i| conform(i, &Shape::Obj(fields)))
                    .collect(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conform_drops_unknown_keys_and_wrong_types() {
        let v = json!({"type": "incident.trigger", "x": 1, "data": {"incident": {
            "id": "P1", "urgency": "high", "incident_number": "7", "resolved_by_user": null,
            "service": {"id": "S", "description": "d"}, "created_on": "2014-11-12T18:53:47 00:00"
        }}});
        let c = conform(&v, &MESSAGE).unwrap();
        assert_eq!(
            c,
            json!({"type": "incident.trigger", "data": {"incident": {
                "id": "P1", "service": {"id": "S", "deleted_at": null}, "created_on": "2014-11-12T18:53:47Z"
            }}})
        );
    }

    #[test]
    fn type_mapping() {
        assert_eq!(
            v1_type("pagerduty.v3", "incident.reassigned"),
            Some("incident.assign")
        );
        assert_eq!(v1_type("pagerduty.v3", "incident.annotated"), None);
        assert_eq!(v1_type("pagerduty.v3", "ping"), None);
        assert_eq!(v1_type("pagerduty.v2", "incident.annotate"), None);
        assert_eq!(
            v1_type("pagerduty.v1", "incident.delegate"),
            Some("incident.delegate")
        );
    }

    #[test]
    fn form_escapes_everything_snowplow_would_misread() {
        let event = json!({"type": "status_change", "format": "statusgator.v2", "occurred_at": "2020-01-01T00:00:00Z"});
        let p = json!({"service_name": "a;b#c+d e&f=g", "current_status": "up", "occurred_at": "2017-11-11T15:36:18+00:00"});
        assert_eq!(
            statusgator_form(&event, &p).unwrap(),
            "service_name=a%3Bb%23c%2Bd+e%26f%3Dg&current_status=up&occurred_at=2017-11-11T15%3A36%3A18%2B00%3A00"
        );
    }
}
