//! Property tests over everything that reads untrusted input: no panic and no hang, whatever
//! the bytes; errors are values. Plus the properties the parsers promise.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::config::rules::{compile_rules, RawRule};
use crate::normalize::{normalize, parse_form, parse_time, Received, SourceKind};
use crate::template::{compile_vo_variables, Escape, Templates};

fn received(kind: SourceKind, content_type: Option<String>, body: Vec<u8>) {
    let ct = content_type;
    let r = Received {
        source: "s",
        kind,
        content_type: ct.as_deref(),
        body: body.into(),
        query: BTreeMap::new(),
        received_at: chrono::Utc::now(),
        webhook_id: Some("w"),
    };
    let _ = normalize(&r);
}

/// JSON-ish text: shapes close enough to real payloads to get past the first check.
fn jsonish() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-zA-Z0-9 _.:-]{0,12}".prop_map(|s| format!("{s:?}")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("type"),
                        Just("event"),
                        Just("messages"),
                        Just("status"),
                        Just("service"),
                        Just("data"),
                        Just("monitor"),
                        Just("id")
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| format!(
                "{{{}}}",
                kv.iter()
                    .map(|(k, v)| format!("{k:?}:{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        ]
    })
}

proptest! {
    #[test]
    fn normalize_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512), ct in prop::option::of("[a-z/+; =-]{0,40}")) {
        received(SourceKind::Statusgator, ct.clone(), body.clone());
        received(SourceKind::Pagerduty, ct, body);
    }

    #[test]
    fn normalize_never_panics_on_json_shapes(body in jsonish()) {
        received(SourceKind::Statusgator, Some("application/json".into()), body.clone().into_bytes());
        received(SourceKind::Pagerduty, Some("application/json".into()), body.into_bytes());
    }

    #[test]
    fn form_parsing_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_form(&body);
    }

    #[test]
    fn form_round_trips(pairs in prop::collection::btree_map("[^\\x00]{1,12}", "[^\\x00]{0,12}", 0..6)) {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            ser.append_pair(k, v);
        }
        let parsed: BTreeMap<String, String> = parse_form(ser.finish().as_bytes()).unwrap().into_iter().collect();
        prop_assert_eq!(parsed, pairs);
    }

    #[test]
    fn time_parsing_never_panics(s in "\\PC{0,40}") {
        let _ = parse_time(&s);
    }

    #[test]
    fn templates_compile_or_fail_and_render_without_panicking(src in "\\PC{0,60}", value in "\\PC{0,20}") {
        let _ = compile_vo_variables(&src);
        let mut t = Templates::default();
        for escape in [Escape::Url, Escape::Json, Escape::None] {
            if let Ok(r) = t.register(escape, "p", &src) {
                let ctx = serde_json::json!({"alert": {"a": value}, "vo": {"ALERT.a": value}, "event": {"id": value}});
                let _ = t.render(&r, &crate::template::Context::from(ctx));
            }
        }
    }

    #[test]
    fn rules_compile_or_fail_and_apply_without_panicking(pattern in "\\PC{0,30}", regex in "\\PC{0,30}", value in "\\PC{0,30}", set in "\\PC{0,20}") {
        #[derive(serde::Deserialize)]
        struct Doc { rules: Vec<RawRule> }
        for kind in ["wildcard", "regex"] {
            let p = if kind == "wildcard" { &pattern } else { &regex };
            let text = format!("[[rules]]\nfield = \"f\"\n{kind} = {}\nset = {{ g = {} }}\n", toml_str(p), toml_str(&set));
            let Ok(doc) = toml::from_str::<Doc>(&text) else { continue };
            if let Ok(rules) = compile_rules(&doc.rules, &[]) {
                let mut alert: BTreeMap<String, String> = [("f".to_owned(), value.clone())].into();
                let _ = rules.apply(&mut alert, &serde_json::Value::Null);
            }
        }
    }

    #[test]
    fn a_wildcard_without_stars_is_a_case_insensitive_equality(a in "[a-zA-Z0-9 .?+()|\\[\\]^$]{0,12}", b in "[a-zA-Z0-9 .?+()|\\[\\]^$]{0,12}") {
        #[derive(serde::Deserialize)]
        struct Doc { rules: Vec<RawRule> }
        let doc: Doc = toml::from_str(&format!("[[rules]]\nfield = \"f\"\nwildcard = {}\nstop = true\n", toml_str(&a))).unwrap();
        let rules = compile_rules(&doc.rules, &[]).unwrap();
        for value in [&a, &b, &a.to_uppercase()] {
            let mut alert: BTreeMap<String, String> = [("f".to_owned(), value.clone())].into();
            let matched = !rules.apply(&mut alert, &serde_json::Value::Null).matched.is_empty();
            prop_assert_eq!(matched, value.to_lowercase() == a.to_lowercase(), "pattern {:?} value {:?}", a, value);
        }
    }

    #[test]
    fn signature_checks_never_panic(header in prop::collection::vec(any::<u8>(), 0..200), body in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = crate::ingest::verify_signature(Some(&header), &body, &["s".to_owned()]);
    }
}

/// A TOML literal string when possible, else a basic one with escapes.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
