//! Templated requests through real HTTP: whatever an event's text holds, the request a target
//! sends is well formed for its content type.

mod common;

use std::time::Duration;

use common::*;

/// A StatusGator v3 status change whose service name and message hold quotes, newlines, a tab
/// and the characters that separate form fields and URL parts.
fn hostile_event() -> (String, String, String) {
    let name = "He said \"down\"\n\tnow & then = 100% + more/less";
    let message = "line one \"quoted\"\nline two \\ back & x=y";
    let body = serde_json::json!({
        "type": "StatusChange",
        "recorded_at": "2025-07-17T02:20:45Z",
        "service": {"name": name, "slug": "x"},
        "monitor": {"id": "a/b c?d", "type": "ServiceMonitor", "display_name": name},
        "status": "down",
        "previous_status": "up",
        "message": message,
        "details": "",
    });
    (body.to_string(), name.to_owned(), message.to_owned())
}

/// Guards escaping by content type: a webhook body with no Content-Type header is sent as
/// `application/json` with every value JSON-escaped (it parses, and each value arrives
/// exactly); a form body's values are form-encoded (each field decodes to the exact value,
/// none added or split); URL values are percent-encoded. (Seen failing three ways: with no
/// default Content-Type the JSON target got no header and raw quotes and newlines, invalid
/// JSON; with form bodies unescaped the `&` and `=` in the name added fields; with the URL
/// escape removed the monitor id changed the path.)
#[tokio::test]
async fn values_arrive_escaped_for_the_content_type() {
    let dir = tempdir();
    let receiver = Receiver::ok().await;
    let config = format!(
        r#"
[store]
path = "{{dir}}/store"
[admin]
enabled = false
[[sources]]
name = "sg"
kind = "statusgator"
path = "/sg"

[[targets]]
name = "json"
kind = "webhook"
url = "{json}"
body = '{{"title": "{{{{alert.entity_display_name}}}}", "message": "${{{{ALERT.state_message}}}}", "tool": "{{{{alert.monitoring_tool}}}}"}}'

[[targets]]
name = "form"
kind = "webhook"
url = "{form}"
headers = {{ "Content-Type" = "application/x-www-form-urlencoded" }}
body = 'title={{{{alert.entity_display_name}}}}&message=${{{{ALERT.state_message}}}}&n=1'

[[targets]]
name = "url"
kind = "webhook"
url = "{url}/{{{{alert.entity_id}}}}?m=${{{{ALERT.state_message}}}}"
body = ""
"#,
        json = receiver.url("/json"),
        form = receiver.url("/form"),
        url = receiver.url("/by-id"),
    );
    let relay = spawn_relay(&config, dir.path()).await;
    let (event, name, message) = hostile_event();
    let (status, _) = post(&url(&relay, "/sg"), Some("application/json"), event).await;
    assert_eq!(status, 200);
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    let by_path = |p: &str| {
        got.iter()
            .find(|r| r.uri.starts_with(p))
            .unwrap_or_else(|| panic!("nothing at {p}: {got:?}"))
    };

    let json = by_path("/json");
    assert_eq!(json.header("content-type"), Some("application/json"));
    let body: serde_json::Value =
        serde_json::from_slice(&json.body).unwrap_or_else(|e| panic!("{e}: {}", json.text()));
    let display = format!("{name} is down");
    assert_eq!(body["title"], display.as_str());
    assert_eq!(body["message"], message.as_str());
    assert_eq!(body["tool"], "StatusGator");

    let form = by_path("/form");
    assert_eq!(
        form.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let fields: Vec<(String, String)> = form_urlencoded::parse(&form.body).into_owned().collect();
    assert_eq!(
        fields,
        [
            ("title".to_owned(), display.clone()),
            ("message".to_owned(), message.clone()),
            ("n".to_owned(), "1".to_owned())
        ]
    );

    let by_id = by_path("/by-id");
    assert_eq!(
        by_id.header("content-type"),
        None,
        "no body, no Content-Type"
    );
    let (path, query) = by_id.uri.split_once('?').unwrap();
    assert_eq!(path, "/by-id/a%2Fb%20c%3Fd");
    let m: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(m, [("m".to_owned(), message)]);
    relay.shutdown().await.unwrap();
}
