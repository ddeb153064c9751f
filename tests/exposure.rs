//! What the relay exposes to pages in a browser and to other users of the machine: the admin
//! API's guard (Host, Origin, token) over real HTTP, and the file target's output mode.
//! (The shipped config's generated admin token and `check-config`'s warnings: tests/cli.rs.)

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn hook_target(url: &str) -> String {
    format!("\n[[targets]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\n")
}

/// Posts the StatusGator v1 sample; it is accepted.
async fn accept_one(relay: &hookrelay::Relay) {
    let (status, answer) = post(
        &url(relay, "/com.statusgator/v1"),
        Some("application/x-www-form-urlencoded"),
        fixture("statusgator-v1.form"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

/// An admin request with the given Host and Origin headers; status and JSON answer.
async fn admin(
    base: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
    origin: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = client().request(method.parse().unwrap(), format!("{base}{path}"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Finding 5: a page on another site cannot drive the admin API, and a rebound name cannot read
/// it, on any path, while the admin listener's own pages and configured names can. Guards the
/// guard at the top of `Admin::handle` (src/admin/guard.rs): remove its call and the
/// cross-site pause succeeds (200) and the rebound Host reads events.
#[tokio::test]
async fn foreign_origins_and_hosts_are_refused_on_every_path() {
    let dir = tempdir();
    let hook = Receiver::ok().await;
    let config = format!(
        "{}{}",
        SOURCES.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nallowed_hosts = [\"relay.internal\"]"
        ),
        hook_target(&hook.url("/h"))
    );
    let relay = spawn_relay(&config, dir.path()).await;
    let admin_addr = relay.admin_addr().unwrap();
    let base = format!("http://{admin_addr}");
    accept_one(&relay).await;

    // A cross-site form post: refused, and the target keeps sending.
    let evil = Some("https://evil.example");
    let (status, answer) = admin(&base, "POST", "/targets/hook/pause", None, evil).await;
    assert_eq!(
        (status, answer),
        (
            403,
            json!({"error": "requests from other sites' pages are refused", "code": "origin_not_allowed"})
        )
    );
    let (_, targets) = admin(&base, "GET", "/targets", None, None).await;
    assert_eq!(targets["targets"][0]["state"], "active");

    // DNS rebinding: the page's own name arrives as Host. Every path, known or not, even the
    // probes and a console a later version may serve.
    for path in [
        "/events", "/targets", "/healthz", "/readyz", "/", "/console",
    ] {
        let (status, answer) = admin(&base, "GET", path, Some("attacker.example:9090"), None).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(answer["code"], "host_not_allowed", "{path}");
    }
    // Other loopback pages are other origins too.
    let (status, _) = admin(&base, "GET", "/events", None, Some("http://127.0.0.1:3000")).await;
    assert_eq!(status, 403);

    // The admin listener's own pages, IP literals, localhost and configured names work.
    let same = format!("http://{admin_addr}");
    let (status, paused) = admin(&base, "POST", "/targets/hook/pause", None, Some(&same)).await;
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")));
    let localhost = format!("localhost:{}", admin_addr.port());
    let (status, _) = admin(
        &base,
        "POST",
        "/targets/hook/resume",
        Some(&localhost),
        Some(&format!("http://{localhost}")),
    )
    .await;
    assert_eq!(status, 200);
    let (status, events) = admin(
        &base,
        "GET",
        "/events",
        Some("relay.internal:443"),
        Some("https://relay.internal"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    hook.wait_for(1, Duration::from_secs(10)).await;
    relay.shutdown().await.unwrap();
}

/// Finding 8: `/readyz` says whether the store answers, never why (its error text may name
/// paths, hosts or internals). Guards the code-only answer: put `e.to_string()` back in it and
/// the body comparison fails.
#[tokio::test]
async fn readiness_answers_a_code_not_the_store_error() {
    let dir = tempdir();
    let relay = spawn_relay(SOURCES, dir.path()).await;
    let base = format!("http://{}", relay.admin_addr().unwrap());
    assert_eq!(
        admin(&base, "GET", "/readyz", None, None).await,
        (200, json!({"status": "ready"}))
    );
    relay.store().close().await.unwrap();
    assert_eq!(
        admin(&base, "GET", "/readyz", None, None).await,
        (
            503,
            json!({"status": "unavailable", "code": "store_unavailable"})
        )
    );
    relay.shutdown().await.unwrap();
}

/// Finding 6 (the file target's part; the store directory and its files are the store's own):
/// the output file holds every event's raw body, so only its owner may read it. Guards the
/// 0600 mode the file target opens it with: remove it and the file is 0644 under the usual
/// umask.
#[cfg(unix)]
#[tokio::test]
async fn the_file_target_writes_a_file_only_its_owner_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let config = format!(
        "{SOURCES}\n[[targets]]\nname = \"outbox\"\nkind = \"file\"\npath = \"{{dir}}/out/outbox.jsonl\"\n"
    );
    let relay = spawn_relay(&config, dir.path()).await;
    accept_one(&relay).await;
    let out = dir.path().join("out/outbox.jsonl");
    assert!(wait_until(Duration::from_secs(10), || read_lines(&out).len() == 1).await);
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    relay.shutdown().await.unwrap();
}
