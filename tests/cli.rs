//! The `hookrelay` binary as a user runs it.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay");

fn run(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `hookrelay serve --config <config>` with its log on a pipe.
fn serve(config: &std::path::Path, cwd: &std::path::Path, log: &str) -> std::process::Child {
    Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .current_dir(cwd)
        .env("HOOKRELAY_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (ok, stdout, stderr) = run(&["check-config", "--config", "config.toml"], root.as_ref());
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "config OK: listen 127.0.0.1:8080, 2 source(s), 1 target(s), store data"
    );
}

#[test]
fn check_config_names_file_line_and_key() {
    let dir = tempdir();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n\n[[targets]]\nname = \"t\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nbody = \"{{#each}}\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(!ok);
    let want = format!(
        "error: {}:10: targets[0].body: bad template: ",
        path.display()
    );
    assert!(
        stderr.starts_with(&want),
        "{stderr:?} should start with {want:?}"
    );

    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:8080\"\nport = 1\n").unwrap();
    let (ok, _, stderr) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        stderr.starts_with(&format!(
            "error: {}:3: unknown field `port`",
            path.display()
        )),
        "{stderr}"
    );
}

/// Guards the JSON body check: a body sent as JSON (no Content-Type header: the default) that
/// renders invalid JSON for a built-in sample is an error naming file, line and key at
/// `check-config` and at startup; the same body declared `text/plain` is fine. (Seen failing
/// with `preflight::check` not called: check-config said OK and the relay started.)
#[test]
fn a_body_that_cannot_render_json_is_a_config_error() {
    let dir = tempdir();
    let path = dir.path().join("relay.toml");
    let write = |headers: &str| {
        std::fs::write(
            &path,
            format!("[admin]\nenabled = false\n[server]\nlisten = \"127.0.0.1:{}\"\n[[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n\n[[targets]]\nname = \"chat\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\n{headers}body = '{{\"text\": \"{{{{alert.entity_display_name}}}}\" \"n\": 1}}'\n", free_port()),
        )
        .unwrap()
    };
    write("");
    let (ok, _, stderr) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(!ok);
    let want = format!(
        "error: {}:14: targets[0].body: the body is sent as JSON but renders invalid JSON for the built-in sample statusgator-v1 (",
        path.display()
    );
    assert!(
        stderr.starts_with(&want),
        "{stderr:?} should start with {want:?}"
    );

    let out = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("renders invalid JSON"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    write("headers = { \"Content-Type\" = \"text/plain\" }\n");
    let (ok, stdout, stderr) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("config OK"), "{stdout}");
}

#[test]
fn send_test_lists_and_rejects_unknown_samples() {
    let dir = tempdir();
    let (ok, stdout, _) = run(&["send-test", "list"], dir.path());
    assert!(ok);
    for name in [
        "statusgator-v1",
        "statusgator-v2",
        "statusgator-v3",
        "pagerduty-v1",
        "pagerduty-v3",
        "pagerduty-ping",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing from {stdout}"
        );
    }
    let (ok, _, stderr) = run(&["send-test", "nagios"], dir.path());
    assert!(!ok);
    assert!(stderr.contains("no sample named \"nagios\""), "{stderr}");
}

/// Also guards `send-test` reading the config: the relay runs the shipped config on another
/// port, with the StatusGator source on another path behind a token, and `send-test` without
/// `--url` finds it through `./config.toml` and through `--config`. (Seen failing with the URL
/// fixed to 127.0.0.1:8080 and the default paths.)
#[tokio::test]
async fn serve_then_send_test_then_sigterm() {
    let dir = tempdir();
    let port = free_port();
    let admin_port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
            .unwrap()
            .replace("127.0.0.1:8080", &format!("0.0.0.0:{port}"))
            .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin_port}"))
            .replace(
                "path = \"/com.statusgator/v1\"\n# token = \"a-long-random-string-of-letters\"",
                "path = \"/status/in\"\ntoken = \"sg-secret-1-long-enough\"",
            ),
    )
    .unwrap();
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("/status/in"));
    let child = serve(&config, dir.path(), "warn,hookrelay=info");
    assert!(listening(port).await, "relay did not start listening");
    // Guards `no_huge_pages` in `main`: without it the kernel reports 1 here.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
        "transparent huge pages are still on for the relay: {status}"
    );

    // Two events have different ordering keys, so the default four lanes may deliver them in
    // either order; each is awaited before the next is sent to check what each line holds.
    let outbox = dir.path().join("data/outbox.jsonl");
    for (n, (sample, status, format)) in [
        ("statusgator-v3", "200 OK", "statusgator.v3"),
        ("pagerduty-v3", "202 Accepted", "pagerduty.v3"),
    ]
    .into_iter()
    .enumerate()
    {
        let (ok, stdout, stderr) = run(&["send-test", sample], dir.path());
        assert!(ok, "{stderr}");
        assert!(stdout.starts_with(status), "{stdout}");
        assert!(
            wait_until(Duration::from_secs(10), || read_lines(&outbox).len()
                == n + 1)
            .await
        );
        assert_eq!(read_lines(&outbox)[n]["event"]["format"], format);
    }

    // The README's admin commands, as written: the shipped config keeps the admin API behind a
    // token the relay generated on its first start (only its owner may read it), which the
    // commands read from the same config. Guards `admin.token_file` in the shipped config and
    // its creation at start: without them `status` is answered 401 below, or is not refused
    // without the token.
    let token_file = dir.path().join("data/admin.token");
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&outbox), 0o600, "the file target's output");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.trim().len() >= 32, "{token:?}");
    let (ok, stdout, stderr) = run(&["status"], dir.path());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("outbox"), "{stdout}");
    let (ok, stdout, stderr) = run(&["events", "list"], dir.path());
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.lines().count(),
        3,
        "a header and two events: {stdout}"
    );
    let unauthorized = reqwest::get(format!("http://127.0.0.1:{admin_port}/targets"))
        .await
        .unwrap()
        .status();
    assert_eq!(unauthorized, 401);

    let stderr = sigterm(child).await;
    // The clean stop opened sled once more, so the next start reads its snapshot; the store
    // it leaves opens and still knows what it stored (the same webhook is a duplicate).
    assert!(
        stderr.contains("store made ready for a quick start"),
        "{stderr}"
    );
    let child = serve(&config, dir.path(), "warn,hookrelay=info");
    assert!(listening(port).await, "relay did not start listening");
    let elsewhere = tempdir();
    let (ok, stdout, stderr) = run(
        &[
            "send-test",
            "pagerduty-v3",
            "--config",
            config.to_str().unwrap(),
        ],
        elsewhere.path(),
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), r#"202 Accepted {"status":"duplicate"}"#);
    sigterm(child).await;
    assert_eq!(read_lines(&outbox).len(), 2);
}

/// A file's permission bits.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Finding 7: `check-config` speaks up about a relay others can reach with nothing guarding a
/// source, and refuses a token anyone could guess. Guards `Config::warnings` being printed
/// (drop the loop in `check_config` and the warning is missing) and the 16-character minimum.
#[test]
fn check_config_warns_about_an_open_public_listener_and_refuses_short_tokens() {
    let dir = tempdir();
    let path = dir.path().join("open.toml");
    let source = "[[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n";
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"0.0.0.0:8080\"\n{source}"),
    )
    .unwrap();
    let (ok, stdout, stderr) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("config OK"), "{stdout}");
    assert_eq!(stderr.trim(), "warning: server.listen 0.0.0.0:8080 is not a loopback address and source \"sg\" has neither a token nor signing secrets: anyone who can reach it can store events");

    std::fs::write(&path, format!("{source}token = \"x\"\n")).unwrap();
    let (ok, _, stderr) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        stderr.contains(
            "sources[0].token: a token must be at least 16 characters long (this one has 1)"
        ),
        "{stderr}"
    );
}

/// Finding 9: a token given on the command line shows in the process list, so the admin
/// commands say so and point to the environment. Guards the warning in `admin_command`.
#[test]
fn a_token_on_the_command_line_is_warned_about() {
    let dir = tempdir();
    let port = free_port();
    let (ok, _, stderr) = run(
        &[
            "status",
            "--admin",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            "not-a-real-token-at-all",
        ],
        dir.path(),
    );
    assert!(!ok, "nothing listens there");
    assert!(
        stderr.starts_with("warning: --token is visible to other users in the process list; set HOOKRELAY_ADMIN_TOKEN instead"),
        "{stderr}"
    );
}

/// Whether a served relay's port accepts connections within 10 s.
async fn listening(port: u16) -> bool {
    wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await
}

/// Stops a served relay with SIGTERM; returns its log once it exited successfully.
async fn sigterm(mut child: std::process::Child) -> String {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut exited = None;
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = exited.expect("relay exits on SIGTERM");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    stderr
}

#[test]
fn rules_test_shows_matches_fields_and_exact_requests_without_storing() {
    let dir = tempdir();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        r#"
[store]
path = "store-must-not-appear"

[[sources]]
name = "pagerduty"
kind = "pagerduty"
path = "/pd"

[[targets]]
name = "statushub"
kind = "statushub"

[[targets]]
name = "snowplow"
kind = "snowplow"
collector = "http://127.0.0.1:9999"

[[targets]]
name = "sg-only"
kind = "file"
path = "out.jsonl"
receive = "routed"

[[rules]]
name = "pig"
field = "service_name"
regex = 'pig(\d+)'
set = { StatusHubfield = '9cc47ae1670bf9c1', host_name = 'pig-${{\1}}' }
"#,
    )
    .unwrap();
    let fixture = format!("{}/pagerduty-v3-incident-triggered.json", FIXTURES);
    let (ok, stdout, stderr) = run(
        &[
            "rules",
            "test",
            &fixture,
            "--config",
            config.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(ok, "{stderr}");
    let want = [
        "source: pagerduty (pagerduty.v3, incident.triggered)",
        "rules matched: pig",
        "  StatusHubfield = \"9cc47ae1670bf9c1\"",
        "  host_name = \"pig-208\"",
        "target statushub (statushub): POST https://hooks.statushub.io/hooks/victor_ops?token=9cc47ae1670bf9c1",
        "content-type: application/json",
        "  with no open incident: fires (triggered): CRITICAL opens incident #2",
        "  with an open incident: not sent (updated): a repeated CRITICAL while incident #1 is open",
        "  the request above is the one sent with no open incident",
        "target snowplow (snowplow): POST http://127.0.0.1:9999/com.pagerduty/v1?p=srv&eid=",
        "{\"messages\":[{\"type\":\"incident.trigger\",\"id\":\"01BZYIL05THJDFF2Y08X9SVMTU\"",
        "target sg-only (file): not sent: receives only events a rule routes to it, and no rule did",
    ];
    for line in want {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("\"ALERT.host_name\":\"pig-208\""),
        "{stdout}"
    );
    assert!(
        !dir.path().join("store-must-not-appear").exists(),
        "a dry run stores nothing"
    );

    let ping = format!("{}/pagerduty-v3-ping.json", FIXTURES);
    let (ok, stdout, _) = run(
        &[
            "rules",
            "test",
            &ping,
            "--config",
            config.to_str().unwrap(),
            "--source",
            "pagerduty",
        ],
        dir.path(),
    );
    assert!(ok);
    // A ping is INFO: it never opens an incident, so StatusHub would not hear of it.
    assert!(
        stdout.contains("target statushub (statushub): not sent: fires for none of these incident states\nincident decision (made at delivery time, from the entity's stored incident):\n  fires on: triggered, acknowledged, resolved\n  with no open incident: not sent (no_incident): INFO never opens an incident\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "target snowplow (snowplow): skipped: PagerDuty \"ping\" has no V1 equivalent"
        ),
        "{stdout}"
    );

    let (ok, _, stderr) = run(
        &[
            "rules",
            "test",
            &ping,
            "--config",
            config.to_str().unwrap(),
            "--source",
            "sg",
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        stderr.contains("no source named \"sg\" (sources: pagerduty)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_config_file_and_keeps_running_on_a_bad_one() {
    let dir = tempdir();
    let first = Receiver::ok().await;
    let second = Receiver::ok().await;
    let port = free_port();
    let config = dir.path().join("relay.toml");
    let write = |url: &str, extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nenabled = false\n[[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n[[targets]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\n{extra}"
            ),
        )
        .unwrap()
    };
    write(&first.url("/one"), "");
    let mut child = serve(&config, dir.path(), "info");
    // The relay's log is read as it is written, so each reload is awaited by its own log line
    // instead of a guessed delay.
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let log = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                let line = line.unwrap();
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    };
    let logged = |text: &'static str| {
        let log = log.clone();
        async move {
            wait_until(Duration::from_secs(10), || {
                log.lock().unwrap().contains(text)
            })
            .await
        }
    };
    assert!(listening(port).await, "relay did not start listening");
    let relay_url = format!("http://127.0.0.1:{port}/sg");
    let send = |n: &str| {
        let body = format!("{{\"type\":\"StatusChange\",\"monitor\":{{\"id\":\"{n}\"}},\"status\":\"down\",\"recorded_at\":\"2025-01-01T00:00:00Z\"}}");
        client()
            .post(relay_url.clone())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };

    assert_eq!(send("a").await.unwrap().status(), 200);
    first.wait_for(1, Duration::from_secs(5)).await;

    write(&second.url("/two"), "");
    assert!(hup().success());
    assert!(logged("config reloaded").await, "{}", log.lock().unwrap());
    assert_eq!(send("b").await.unwrap().status(), 200);
    let got = second.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].uri, "/two");

    // A broken file is refused; the relay keeps running on what it had.
    write(&first.url("/one"), "retry = { jitter = 7.0 }\n");
    assert!(hup().success());
    assert!(logged("reload refused").await, "{}", log.lock().unwrap());
    assert_eq!(send("c").await.unwrap().status(), 200);
    second.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(first.count(), 1);

    // So is a body that cannot render JSON (checked with the built-in samples).
    write(
        &first.url("/one"),
        "body = '{\"a\": {{{alert.entity_id}}}}'\n",
    );
    assert!(hup().success());
    assert!(
        logged("renders invalid JSON").await,
        "{}",
        log.lock().unwrap()
    );
    assert_eq!(send("d").await.unwrap().status(), 200);
    second.wait_for(3, Duration::from_secs(5)).await;
    assert_eq!(first.count(), 1);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let stderr = log.lock().unwrap().clone();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("config reloaded"), "{stderr}");
    assert!(
        stderr.contains("reload refused: the new config is invalid"),
        "{stderr}"
    );
    assert!(
        stderr.contains("targets[0].retry.jitter: must be at least 0.0 and below 1.0"),
        "{stderr}"
    );
}

#[test]
fn check_config_reports_an_unreachable_database_without_its_password() {
    let dir = tempdir();
    let path = dir.path().join("pg.toml");
    let port = free_port();
    std::fs::write(
        &path,
        format!("[store]\nbackend = \"postgres\"\nurl = \"postgres://relay:s3cret@127.0.0.1:{port}/events\"\n[[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n"),
    )
    .unwrap();
    let (ok, _, stderr) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "store.url: cannot reach the PostgreSQL database at postgres://relay@127.0.0.1:{port}/events: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[tokio::test]
async fn check_config_reaches_a_running_database() {
    let url = fresh_database().await;
    let dir = tempdir();
    let path = dir.path().join("pg.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:8099\"\n[store]\nbackend = \"postgres\"\nurl_env = \"RELAY_DB\"\ninstance = \"a\"\n[[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("RELAY_DB", &url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = url.rsplit_once('/').unwrap().1;
    assert!(stdout.starts_with("config OK: listen 127.0.0.1:8099, 1 source(s), 0 target(s), store postgres postgres://"), "{stdout}");
    assert!(
        stdout
            .trim_end()
            .ends_with(&format!("/{db} (reachable; instance a)")),
        "{stdout}"
    );
}
