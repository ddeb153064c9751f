use std::collections::BTreeMap;

use super::*;

fn rules(toml_text: &str) -> Result<Rules, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        rules: Vec<RawRule>,
    }
    let doc: Doc = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    compile_rules(&doc.rules, &["statushub".into(), "chat".into()])
        .map_err(|p| format!("{}: {}", p.key, p.message))
}

fn alert(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn wildcard_matches(pattern: &str, value: &str) -> bool {
    let r = rules(&format!(
        "[[rules]]\nfield = \"host\"\nwildcard = {pattern:?}\nstop = true\n"
    ))
    .unwrap();
    !r.apply(&mut alert(&[("host", value)])).matched.is_empty()
}

fn regex_matches(pattern: &str, value: &str) -> bool {
    let r = rules(&format!(
        "[[rules]]\nfield = \"host\"\nregex = '{pattern}'\nstop = true\n"
    ))
    .unwrap();
    !r.apply(&mut alert(&[("host", value)])).matched.is_empty()
}

#[test]
fn documented_wildcard_examples() {
    assert!(wildcard_matches("*.mydomain.tld", "www.mydomain.tld"));
    assert!(!wildcard_matches("*.mydomain.tld", "mydomain.tld"));
    assert!(!wildcard_matches(
        "*.mydomain.tld",
        "x.mydomain.tld/with/a/long/path/suffix.html"
    ));
    assert!(wildcard_matches("db-*.*", "db-123.foobar.baz"));
    assert!(!wildcard_matches("db-*.*", "db-123"));
    assert!(wildcard_matches("*db-mydomain*", "foo-db-mydomain-bar"));
    assert!(!wildcard_matches("*db-mydomain*", "db.mydomain"));
    assert!(wildcard_matches(
        "*this is an incident*",
        "This is an incident!"
    ));
    // A direct match is a wildcard without `*`: whole value, any case, no regex meaning.
    assert!(wildcard_matches("Cloudwatch", "cloudwatch"));
    assert!(!wildcard_matches("Cloud", "Cloudwatch"));
    assert!(!wildcard_matches("a.c", "abc"));
    assert!(wildcard_matches("line*", "line one\nline two"));
}

#[test]
fn regexes_match_the_whole_value() {
    assert!(regex_matches("db-[0-9]+", "db-123"));
    assert!(!regex_matches("db-[0-9]+", "prod-db-123"));
    assert!(regex_matches(".*db-[0-9]+.*", "prod-db-123-eu"));
    assert!(!regex_matches("DB-1", "db-1"));
    assert!(regex_matches("(?si)DB-1", "db-1"));
    // (?m) must not let the pattern match a single line of a longer value.
    assert!(!regex_matches("(?m)^ok$", "ok\nnot ok"));
    assert!(regex_matches(
        "(?si).*hostname: ([^\\n]+).*",
        "x\nhostname: web1\ny"
    ));
}

#[test]
fn missing_fields_never_match() {
    let r = rules("[[rules]]\nfield = \"nope\"\nwildcard = \"*\"\nstop = true\n").unwrap();
    assert!(r.apply(&mut alert(&[("host", "a")])).matched.is_empty());
}

#[test]
fn the_statushub_guide_example() {
    let r = rules(
        "[[rules]]\nname = \"cloudwatch\"\nfield = \"monitoring_tool\"\nwildcard = \"Cloudwatch\"\nset = { StatusHubfield = \"9cc47ae1670bf9c1\" }\n",
    )
    .unwrap();
    let mut a = alert(&[("monitoring_tool", "Cloudwatch")]);
    assert_eq!(r.apply(&mut a).matched, ["cloudwatch"]);
    assert_eq!(a["StatusHubfield"], "9cc47ae1670bf9c1");
    let mut other = alert(&[("monitoring_tool", "Nagios")]);
    r.apply(&mut other);
    assert!(!other.contains_key("StatusHubfield"));
}

#[test]
fn expansion_captures_and_snapshot() {
    let r = rules(
        r#"[[rules]]
field = "state_message"
regex = '(?si).*hostname: ([^\n]+).*service: ([^\n]+).*'
set = { host_name = '${{\1}}', entity_display_name = '${{\2}} on ${{\1}} (was: ${{entity_display_name}})', entity_id = "${{host_name}}|${{nope}}" }
annotations = [{ type = "url", label = "Runbook", value = 'https://wiki/${{\2}}' }, { type = "note", label = "Who", value = "ops" }]
route = ["chat"]
"#,
    )
    .unwrap();
    let mut a = alert(&[
        ("state_message", "hostname: web1\nservice: nginx\n"),
        ("entity_display_name", "old"),
    ]);
    let trace = r.apply(&mut a);
    assert_eq!(trace.routes, ["chat"]);
    assert_eq!(a["host_name"], "web1");
    assert_eq!(a["entity_display_name"], "nginx on web1 (was: old)");
    assert_eq!(
        a["entity_id"], "|",
        "expansions see the alert as it was when the rule matched"
    );
    assert_eq!(a["vo_annotate.u.Runbook"], "https://wiki/nginx");
    assert_eq!(a["vo_annotate.s.Who"], "ops");
}

#[test]
fn wildcard_stars_capture() {
    let r = rules("[[rules]]\nfield = \"host\"\nwildcard = \"db-*.*\"\nset = { shard = '${{\\1}}', rest = '${{\\2}}' }\n").unwrap();
    let mut a = alert(&[("host", "DB-12.eu.example")]);
    r.apply(&mut a);
    assert_eq!(
        (a["shard"].as_str(), a["rest"].as_str()),
        ("12", "eu.example")
    );
}

#[test]
fn order_stop_and_routing_key_rules_last() {
    let r = rules(
        r#"[[rules]]
name = "bound"
field = "entity_id"
wildcard = "*"
routing_key = "team-b"
set = { seen = "${{routing_key}}" }

[[rules]]
name = "reroute"
field = "host"
wildcard = "b-*"
set = { routing_key = "team-b" }

[[rules]]
name = "chain"
field = "routing_key"
wildcard = "team-b"
set = { chained = "yes" }
stop = true

[[rules]]
name = "never"
field = "host"
wildcard = "*"
set = { never = "1" }
"#,
    )
    .unwrap();
    let mut a = alert(&[
        ("host", "b-1"),
        ("entity_id", "e"),
        ("routing_key", "team-a"),
    ]);
    let trace = r.apply(&mut a);
    assert_eq!(trace.matched, ["reroute", "chain"]);
    assert!(!a.contains_key("never"), "stop ends processing");
    assert!(!a.contains_key("seen"), "stop also ends routing-key rules");

    let r2 = rules(
        "[[rules]]\nname = \"bound\"\nfield = \"entity_id\"\nwildcard = \"*\"\nrouting_key = \"team-b\"\nset = { seen = \"${{routing_key}}\" }\n\n[[rules]]\nname = \"reroute\"\nfield = \"host\"\nwildcard = \"b-*\"\nset = { routing_key = \"team-b\" }\n",
    )
    .unwrap();
    let mut a = alert(&[
        ("host", "b-1"),
        ("entity_id", "e"),
        ("routing_key", "team-a"),
    ]);
    assert_eq!(
        r2.apply(&mut a).matched,
        ["reroute", "bound"],
        "bound rules run last and see the new key"
    );
    assert_eq!(a["seen"], "team-b");
}

#[test]
fn disabled_rules_are_checked_but_skipped() {
    let r = rules(
        "[[rules]]\nfield = \"host\"\nwildcard = \"*\"\nset = { x = \"1\" }\nenabled = false\n",
    )
    .unwrap();
    assert!(r.is_empty());
    assert!(rules(
        "[[rules]]\nfield = \"host\"\nregex = \"(\"\nset = { x = \"1\" }\nenabled = false\n"
    )
    .is_err());
}

#[test]
fn compile_errors_name_the_rule() {
    let cases = [
        ("[[rules]]\nfield = \"h\"\nregex = \"(unclosed\"\nset = { x = \"1\" }\n", "rules[0].regex: bad regex:"),
        ("[[rules]]\nfield = \"h\"\nset = { x = \"1\" }\n", "rules[0]: needs a wildcard or a regex"),
        ("[[rules]]\nfield = \"h\"\nwildcard = \"a\"\nregex = \"a\"\nset = { x = \"1\" }\n", "rules[0]: set either wildcard or regex"),
        ("[[rules]]\nfield = \"h\"\nwildcard = \"a\"\n", "rules[0]: does nothing"),
        ("[[rules]]\nfield = \"h\"\nwildcard = \"a\"\nroute = [\"pager\"]\n", "rules[0].route: unknown target \"pager\""),
        ("[[rules]]\nfield = \"h\"\nregex = \"(a)\"\nset = { x = \"${{\\\\2}}\" }\n", "rules[0].set.x: uses ${{\\2}} but the condition has 1 capture group(s)"),
        ("[[rules]]\nfield = \"h\"\nwildcard = \"a\"\nset = { x = \"${{oops\" }\n", "rules[0].set.x: an unclosed ${{"),
        ("[[rules]]\nfield = \"h\"\nwildcard = \"a\"\nannotations = [{ type = \"video\", label = \"l\", value = \"v\" }]\n", "rules[0].annotations[0].type: unknown annotation type \"video\""),
    ];
    for (text, want) in cases {
        let err = rules(text).unwrap_err();
        assert!(err.starts_with(want), "{err:?} should start with {want:?}");
    }
    let long = format!(
        "[[rules]]\nfield = \"h\"\nregex = \"{}\"\nset = {{ x = \"1\" }}\n",
        "a".repeat(129)
    );
    assert!(rules(&long).unwrap_err().contains("the limit is 128"));
}
