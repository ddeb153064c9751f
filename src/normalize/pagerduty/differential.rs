//! The one-pass V3 reader against the `serde_json::Value` path it replaces on the hot path.
//!
//! Every body below goes through [`parse`] (the typed reader first, the `Value` path when it
//! declines) and through [`parse_value`] (the `Value` path alone, the reference), and the two
//! results must be identical: every `Parsed` field by field, the alert map included, or the same
//! error. The bodies are the PagerDuty fixtures (the published samples) and the benchmark's
//! compacted body, plus mutations of V3 events: each field the mapping reads, and some it
//! does not, replaced, removed or repeated, with every JSON type and the values that flip the
//! mapping's branches.

use serde_json::Value;

use super::{parse, parse_value, typed};

const FIXTURES: [&str; 6] = [
    include_str!("../../../tests/fixtures/pagerduty-v3-incident-triggered.json"),
    include_str!("../../../tests/fixtures/pagerduty-v3-incident-resolved.json"),
    include_str!("../../../tests/fixtures/pagerduty-v3-ping.json"),
    include_str!("../../../tests/fixtures/pagerduty-v1-trigger.json"),
    include_str!("../../../tests/fixtures/pagerduty-v1-resolve.json"),
    include_str!("../../../tests/fixtures/pagerduty-v2-trigger.json"),
];

/// V3 events of the other data types the mapping branches on.
const OTHER_EVENTS: [&str; 5] = [
    r#"{"event":{"id":"N1","event_type":"incident.annotated","resource_type":"incident","occurred_at":"2024-01-02T03:04:05Z","agent":{"summary":"Ann","type":"user_reference"},"data":{"type":"incident_note","id":"NOTE1","content":"looked at it","trimmed":false,"incident":{"id":"PINC","type":"incident_reference","summary":"Disk full","html_url":"https://x/i/PINC","status":"acknowledged","number":12,"urgency":"low","incident_key":"k-1","priority":{"summary":"P2"},"service":{"id":"PSVC","summary":"db","html_url":"https://x/s/PSVC"}}}}}"#,
    r#"{"event":{"id":"S1","event_type":"incident.status_update_published","resource_type":"incident","occurred_at":"2024-01-02T03:04:05.123+02:00","data":{"type":"incident_status_update","id":"U1","message":"all good now","incident":{"id":"PINC","title":"Checkout down","service":{"id":"PSVC","name":"checkout"}}}}}"#,
    r#"{"event":{"id":"R1","event_type":"incident.responder.added","resource_type":"incident","data":{"type":"incident_responder","message":"please help","user":{"id":"U"},"incident":{"id":"PINC","number":"7"}}}}"#,
    r#"{"event":{"id":"V1","event_type":"service.updated","resource_type":"service","data":{"type":"service","id":"PSVC","name":"api","summary":"api (summary)","html_url":"https://x/s/PSVC","status":"active"}}}"#,
    r#"{"event":{"id":"Q1","event_type":"incident.priority_updated","data":{"type":"incident","id":"PINC","summary":"only a summary","status":"Resolved","priority":{"id":"PR","summary":"P1"},"service":"not an object","incident":{"id":"IGNORED"}}}}"#,
];

/// The objects a mutation may edit, as key paths from the top.
const PATHS: [&[&str]; 9] = [
    &[],
    &["event"],
    &["event", "agent"],
    &["event", "data"],
    &["event", "data", "service"],
    &["event", "data", "priority"],
    &["event", "data", "incident"],
    &["event", "data", "incident", "service"],
    &["event", "data", "incident", "priority"],
];

/// Every key the mapping reads at any level, and two it does not.
const KEYS: [&str; 24] = [
    "event",
    "messages",
    "id",
    "event_type",
    "occurred_at",
    "resource_type",
    "type",
    "summary",
    "message",
    "content",
    "title",
    "name",
    "status",
    "html_url",
    "incident_key",
    "urgency",
    "number",
    "agent",
    "data",
    "incident",
    "service",
    "priority",
    "self",
    "ti\\u0074le",
];

/// Values as JSON text: every type, numbers serde_json writes in its own way, strings that
/// flip the mapping's branches, and values that make the `Value` parse fail.
const VALUES: [&str; 32] = [
    "7",
    "-3",
    "-0",
    "1.0",
    "1.5e3",
    "0.1",
    "18446744073709551615",
    "-9223372036854775808",
    "123456789012345678901234567890",
    "1e400",
    "true",
    "false",
    "null",
    "{}",
    r#"{"summary":"S","id":"I","name":"N","title":"T"}"#,
    "[]",
    r#"[1,"x",{"a":null}]"#,
    r#""""#,
    r#""a\"b\u00e9""#,
    r#""\ud800""#,
    r#""\ud83d\ude00 ok""#,
    r#""incident""#,
    r#""service""#,
    r#""incident_note""#,
    r#""incident_status_update""#,
    r#""ping""#,
    r#""pagey.ping""#,
    r#""incident.resolved""#,
    r#""TRIGGERED""#,
    r#""2021-06-04T13:35:29Z""#,
    r#"{"$serde_json::private::RawValue":"{\"summary\":\"R\"}"}"#,
    r#"{"a":"\ud800"}"#,
];

/// The values a key is repeated with.
const REPEATED: [&str; 4] = ["7", "null", r#""""#, r#"{"summary":"S","id":"I"}"#];

/// What a mutation does to one key of one object.
#[derive(Clone, Copy)]
enum Edit<'a> {
    /// Replaces the value, or adds the key when it is not there.
    Set(&'a str),
    Remove,
    /// The key once more before the others (so the original, later, is the one kept).
    RepeatFirst(&'a str),
    /// The key once more after the others (so this one is kept).
    RepeatLast(&'a str),
}

/// `value` as JSON text with `edit` applied to `key` of the object at `path`.
fn render(value: &Value, path: &[&str], key: &str, edit: Edit<'_>, out: &mut String) {
    let Value::Object(map) = value else {
        out.push_str(&value.to_string());
        return;
    };
    let target = path.is_empty();
    let quoted = |k: &str| {
        // A key given with an escape in it stays as written.
        if k.contains('\\') {
            format!("\"{k}\"")
        } else {
            Value::from(k).to_string()
        }
    };
    let mut members = Vec::new();
    if let (true, Edit::RepeatFirst(v)) = (target, edit) {
        members.push(format!("{}:{v}", quoted(key)));
    }
    let mut seen = false;
    for (k, v) in map {
        if target && k == key {
            seen = true;
            match edit {
                Edit::Set(new) => members.push(format!("{}:{new}", quoted(k))),
                Edit::Remove => {}
                _ => members.push(format!("{}:{v}", quoted(k))),
            }
        } else if !target && k == path[0] {
            let mut inner = String::new();
            render(v, &path[1..], key, edit, &mut inner);
            members.push(format!("{}:{inner}", quoted(k)));
        } else {
            members.push(format!("{}:{v}", quoted(k)));
        }
    }
    match (target, edit) {
        (true, Edit::Set(v)) if !seen => members.push(format!("{}:{v}", quoted(key))),
        (true, Edit::RepeatLast(v)) => members.push(format!("{}:{v}", quoted(key))),
        _ => {}
    }
    out.push('{');
    out.push_str(&members.join(","));
    out.push('}');
}

/// The benchmark's body: the triggered sample, compacted.
pub(super) fn benchmark_body() -> String {
    let v: Value = serde_json::from_str(FIXTURES[0]).unwrap();
    v.to_string()
}

/// Bodies of V3 events edited every way above; all keep `event` an object, so the typed reader
/// must take each one the `Value` path accepts.
fn mutations() -> Vec<String> {
    // The resolved sample has the triggered one's shape.
    let bases: Vec<Value> = [FIXTURES[0], FIXTURES[2]]
        .iter()
        .chain(&OTHER_EVENTS)
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    let mut out = Vec::new();
    for base in &bases {
        for path in PATHS {
            let pointer: String = path.iter().map(|k| format!("/{k}")).collect();
            if !base.pointer(&pointer).is_some_and(Value::is_object) {
                continue;
            }
            for key in KEYS {
                if path.is_empty() && key == "event" {
                    continue;
                }
                let mut edits: Vec<Edit> = VALUES.iter().map(|v| Edit::Set(v)).collect();
                edits.push(Edit::Remove);
                for v in REPEATED {
                    edits.extend([Edit::RepeatFirst(v), Edit::RepeatLast(v)]);
                }
                for edit in edits {
                    let mut body = String::new();
                    render(base, path, key, edit, &mut body);
                    out.push(body);
                }
            }
        }
    }
    out
}

/// Bodies that are not a plain V3 event, or that sit at the edges of the parse, each with
/// whether the typed reader takes it (else the `Value` path answers it alone).
fn oddities() -> Vec<(bool, String)> {
    let nest = |depth: usize| {
        format!(
            r#"{{"event":{{"id":"D","data":{{"type":"incident","title":"deep","x":{}{}}}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    let mut out: Vec<(bool, String)> = [
        // `event` not an object: the batch, or the refusal.
        (false, r#"{"event":7,"messages":[{"id":"a","type":"incident.trigger"}]}"#),
        (false, r#"{"messages":[{"id":"a","type":"incident.trigger"}],"event":null}"#),
        (false, r#"{"event":"x"}"#),
        (false, r#"{"event":[{"id":"E"}],"messages":[]}"#),
        (false, r#"{"event":"\ud800","messages":[]}"#),
        (false, r#"{"event":1e400,"messages":[]}"#),
        (true, r#"{"messages":[{"id":"a"}],"event":{"id":"E","event_type":"incident.resolved"}}"#),
        // A repeated `event`: the last one counts.
        (true, r#"{"event":{"id":"A"},"event":{"id":"B"}}"#),
        (false, r#"{"event":{"id":"A"},"event":7,"messages":[{"id":"m"}]}"#),
        (true, r#"{"event":7,"event":{"id":"B"}}"#),
        (false, r#"{"event":{"id":"\ud800"},"event":{"id":"B"}}"#),
        // Beside `event` nothing is checked; inside it everything is.
        (true, r#"{"event":{"id":"E"},"other":"\ud800","more":1e400}"#),
        (false, r#"{"event":{"id":"E","junk":"\ud800"}}"#),
        (false, r#"{"event":{"id":"E","junk":1e400}}"#),
        (false, r#"{"event":{"id":"E","junk":{"\ud800":1}}}"#),
        (true, r#"{"event":{"id":"E","junk":"a\u0000b"}}"#),
        // serde_json's raw-value token, which a `Value` reads as the JSON in its string.
        (false, r#"{"event":{"$serde_json::private::RawValue":"{\"id\":\"R\",\"event_type\":\"incident.resolved\"}"}}"#),
        (false, r#"{"event":{"id":"E","data":{"$serde_json::private::RawValue":"{\"type\":\"incident\",\"title\":\"T\"}"}}}"#),
        (false, r#"{"event":{"id":"E","data":{"type":"incident","x":{"$serde_json::private::RawValue":"1"}}}}"#),
        (false, r#"{"event":{"id":"E","data":{"type":"incident","title":{"a":1,"$serde_json::private::RawValue":"1"}}}}"#),
        (true, r#"{"event":{"\u0069d":"E","data":{"ty\u0070e":"incident","ti\u0074le":"T\u00e9"}}}"#),
        (true, r#"{"event":{}}"#),
        (true, r#"{"event":{},"messages":[{"id":"m"}]}"#),
        (true, r#"{"event":{"id":""}}"#),
        (true, r#"{"event":{"id":"E","data":[{"type":"incident"}]}}"#),
        (true, r#"{"event":{"id":"E","data":{"type":"note","incident":"PINC"}}}"#),
        (true, r#"{"event":{"id":"E","data":{"type":"service","id":"S","incident":{"id":"I"}}}}"#),
        (true, r#"{"event":{"id":"E","data":{"type":"service","id":"S","incident":{"id":"I","service":null}}}}"#),
        (true, r#"{"event":{"id":"E","data":{"type":"incident","number":""}}}"#),
        (true, r#" {"event":{"id":"E"}} "#),
        (false, r#"{"event":{"id":"E"}} x"#),
        (false, r#"{"event":{"id":"E"}"#),
        (false, r#"{"hello":"world"}"#),
        (false, r#"{}"#),
        (false, r#"[]"#),
        (false, r#""event""#),
        (false, r#"{"messages":[]}"#),
        (false, r#"{"messages":{}}"#),
    ]
    .map(|(typed, body)| (typed, body.to_owned()))
    .into();
    // The typed reader counts nesting from the top, the `Value` path from `event`: one level
    // less for the typed reader, where the `Value` path still answers (125) and no longer (126).
    out.extend([(true, nest(124)), (false, nest(125)), (false, nest(126))]);
    out
}

/// Asserts both paths give the same for `body` under each of `webhook_ids`; whether the typed
/// reader took it.
fn check_with(body: &str, webhook_ids: &[Option<&str>]) -> bool {
    for &webhook_id in webhook_ids {
        let want = parse_value(body, webhook_id, 100);
        let got = parse(body, webhook_id, 100);
        assert_eq!(got, want, "body: {body}\nwebhook id: {webhook_id:?}");
    }
    typed::event(body).is_some()
}

fn check(body: &str) -> bool {
    check_with(body, &[None, Some("W1")])
}

/// Guards that the one-pass reader maps every V3 body exactly as the `Value` path does,
/// leniency and oddities included, and declines only what the `Value` path must answer. Seen
/// failing with each of these broken in `typed`: a `u64` left without text, `title` read as
/// `summary`, a repeated key keeping its first value, a `service` of another type read as
/// absent, the raw-value token not declined, and the checking skip replaced by `IgnoredAny`
/// (an unread `"\ud800"` or `1e400` in the event then accepted).
#[test]
fn the_typed_reader_maps_every_body_as_the_value_path_does() {
    // The V3 samples and events, then the V1 and V2 batches.
    for (i, body) in FIXTURES.iter().chain(&OTHER_EVENTS).enumerate() {
        assert_eq!(check(body), !(3..6).contains(&i), "{body}");
    }
    assert!(check(&benchmark_body()));
    for (typed, body) in oddities() {
        assert_eq!(check(&body), typed, "typed reader taken: {body}");
    }
    let mut bodies = 0;
    for body in mutations() {
        bodies += 1;
        // Every mutation keeps `event` an object: the typed reader declines only what the
        // `Value` path refuses, and the raw-value token.
        let declined = !check_with(&body, &[None]);
        assert!(
            !declined
                || parse_value(&body, None, 100).is_err()
                || body.contains("$serde_json::private::RawValue"),
            "declined: {body}"
        );
    }
    assert!(bodies > 10_000, "{bodies} bodies");
}
