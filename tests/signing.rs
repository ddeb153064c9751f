//! Signed requests out: a webhook target with `signing_secrets` signs each attempt as the
//! Standard Webhooks specification describes, checked by an independent implementation (the
//! specification project's own `standardwebhooks` crate, with its own HMAC) on a real local
//! receiver.

mod common;

use std::time::Duration;

use common::*;

const OLD: &str = "whsec_aG9va3JlbGF5LXRlc3Qtc2VjcmV0LW51bWJlci1vbmU=";
const NEW: &str = "whsec_aG9va3JlbGF5LXRlc3Qtc2VjcmV0LW51bWJlci10d28=";
const OTHER: &str = "whsec_YS1zZWNyZXQtbm9ib2R5LWNvbmZpZ3VyZWQtaGVyZSE=";

fn headers(r: &Recorded) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (k, v) in &r.headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

fn verify(secret: &str, r: &Recorded) -> Result<(), standardwebhooks::WebhookError> {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &headers(r))
}

/// Guards the signing of `webhook` targets: each attempt carries `webhook-id` (the same on a
/// retry), `webhook-timestamp` and one `v1,` signature per secret, which the reference
/// verifier accepts with either secret of a rotation and refuses with any other. Signing over
/// anything but `id.timestamp.body`, or with the base64 text instead of the decoded key,
/// fails it; an unsigned target sends none of the headers.
#[tokio::test]
async fn webhook_requests_are_signed_as_standard_webhooks_describes() {
    let dir = tempdir();
    let signed = Receiver::statuses(&[503]).await;
    let plain = Receiver::ok().await;
    let config = format!(
        "{SOURCES}\n[[targets]]\nname = \"signed\"\nkind = \"webhook\"\nurl = \"{}\"\nsigning_secrets = [\"{OLD}\", \"{NEW}\"]\nretry = {{ initial_delay = \"200ms\", jitter = 0.0 }}\n\n[[targets]]\nname = \"plain\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        signed.url("/hook"),
        plain.url("/hook"),
    );
    let relay = spawn_relay(&config, dir.path()).await;
    let (status, _) = send_fixture(
        &relay,
        "/com.statusgator/v1",
        "statusgator-v3-status-change.json",
    )
    .await;
    assert_eq!(status, 200);
    let got = signed.wait_for(2, Duration::from_secs(10)).await;
    for r in &got {
        verify(OLD, r).expect("the old secret verifies");
        verify(NEW, r).expect("the new secret verifies");
        assert!(verify(OTHER, r).is_err(), "another secret does not");
        let signatures = r.header("webhook-signature").unwrap();
        assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
        assert!(signatures.split(' ').all(|s| s.starts_with("v1,")));
        let ts: u64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(ts) < 60, "the attempt's time, in seconds");
        let id = r.header("webhook-id").unwrap();
        assert!(id.starts_with("msg_") && !id.contains('.'), "{id}");
    }
    assert_eq!(
        got[0].header("webhook-id"),
        got[1].header("webhook-id"),
        "a retry keeps its message id"
    );
    let mut tampered = got[1].clone();
    tampered.body.push(b' ');
    assert!(verify(NEW, &tampered).is_err(), "the body is signed");

    let unsigned = plain.wait_for(1, Duration::from_secs(10)).await;
    assert!(unsigned[0].header("webhook-signature").is_none());
    assert!(unsigned[0].header("webhook-id").is_none());
    relay.shutdown().await.unwrap();
}
