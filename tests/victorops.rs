//! The `victorops` target: every alert to a VictorOps / Splunk On-Call REST endpoint
//! integration URL, in the REST alert format, against a real local receiver.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Guards the REST endpoint request: the URL with the API key and the alert's routing key,
/// JSON with the fields VictorOps reads (`message_type` upper case, `timestamp` and
/// `state_start_time` as numbers of seconds), and every alert sent, INFO included (VictorOps
/// keeps its own incidents). Fails with the times sent as strings, or with the routing key
/// not substituted.
#[tokio::test]
async fn alerts_reach_the_rest_endpoint_in_its_format() {
    let dir = tempdir();
    let vo = Receiver::scripted(std::sync::Arc::new(|_, _| {
        (
            200,
            vec![],
            r#"{"result":"success","entity_id":"PFQZPSY"}"#.into(),
        )
    }))
    .await;
    let config = format!(
        r#"
[store]
path = "{{dir}}/data"
min_free_bytes = 1048576

[admin]
enabled = false

[[sources]]
name = "pagerduty"
kind = "pagerduty"
path = "/pd"
routing_key = "ops"

[[targets]]
name = "victorops"
kind = "victorops"
url = "{}"
"#,
        vo.url("/integrations/generic/20131114/alert/0a1b2c3d-key/${{ALERT.routing_key}}")
    );
    let relay = spawn_relay(&config, dir.path()).await;
    for file in [
        "pagerduty-v3-incident-triggered.json",
        "pagerduty-v3-ping.json",
    ] {
        let (status, body) = send_fixture(&relay, "/pd", file).await;
        assert_eq!(status, 202, "{body}");
    }
    let got = vo.wait_for(2, Duration::from_secs(10)).await;
    for r in &got {
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.uri,
            "/integrations/generic/20131114/alert/0a1b2c3d-key/ops"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("x-hookrelay-event-id").is_some());
    }
    // Two entities: two ordering keys, delivered in parallel.
    let (trigger, ping): (Vec<_>, Vec<_>) = got
        .iter()
        .map(Recorded::json)
        .partition(|b| b["message_type"] == "CRITICAL");
    let trigger = &trigger[0];
    for (k, v) in [
        ("message_type", json!("CRITICAL")),
        ("entity_id", json!("PFQZPSY")),
        ("entity_display_name", json!("Test Incident 3")),
        ("state_message", json!("Test Incident 3")),
        ("monitoring_tool", json!("PagerDuty")),
        ("routing_key", json!("ops")),
        ("timestamp", json!(1_622_813_729)),
        ("state_start_time", json!(1_622_813_729)),
    ] {
        assert_eq!(trigger[k], v, "{k} in {trigger}");
    }
    assert_eq!(ping[0]["message_type"], "INFO", "a ping goes as INFO");
    relay.shutdown().await.unwrap();
}
