//! Shared end-to-end helpers: a real relay on port 0 with a real sled directory, a scriptable
//! local HTTP receiver, and polling waits. Everything talks over 127.0.0.1.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookrelay::{Config, Relay};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).unwrap()
}

/// Starts a relay from config text; `{dir}` in the text is replaced by `dir`.
pub async fn spawn_relay(config: &str, dir: &Path) -> Relay {
    let text = config.replace("{dir}", dir.to_str().unwrap());
    let config = Config::parse(&text, "test.toml", dir).expect("test config is valid");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Relay::start(config, listener).await.expect("relay starts")
}

pub fn url(relay: &Relay, path: &str) -> String {
    format!("http://{}{}", relay.local_addr(), path)
}

/// One request as a receiver saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The status the receiver answered.
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("receiver got JSON")
    }
}

/// Decides a receiver's answer: given the request and how many requests came before it,
/// returns status, extra headers and body. An extra header `x-test-delay-ms` is not sent:
/// the receiver waits that long before answering.
pub type Script =
    Arc<dyn Fn(&Recorded, usize) -> (u16, Vec<(String, String)>, String) + Send + Sync>;

pub struct Receiver {
    pub addr: std::net::SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Receiver {
    /// A receiver answering 200 to everything.
    pub async fn ok() -> Receiver {
        Receiver::scripted(Arc::new(|_, _| (200, vec![], "ok".into()))).await
    }

    /// A receiver answering the given statuses in turn, then 200.
    pub async fn statuses(statuses: &[u16]) -> Receiver {
        let statuses = statuses.to_vec();
        Receiver::scripted(Arc::new(move |_, n| {
            let s = statuses.get(n).copied().unwrap_or(200);
            (s, vec![], format!("answer {s}"))
        }))
        .await
    }

    pub async fn scripted(script: Script) -> Receiver {
        Receiver::scripted_on(script, "127.0.0.1:0").await
    }

    pub async fn scripted_on(script: Script, addr: &str) -> Receiver {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in this set, so stopping the receiver also ends its
            // keep-alive connections instead of leaving them answering with the old script.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                let script = script.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        let script = script.clone();
                        async move {
                            let method = req.method().to_string();
                            let uri = req.uri().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                            let mut rec = Recorded {
                                method,
                                uri,
                                headers,
                                body,
                                at: Instant::now(),
                                status: 0,
                            };
                            let (status, extra, text) = {
                                let mut seen = seen.lock().unwrap();
                                let n = seen.len();
                                let answer = script(&rec, n);
                                rec.status = answer.0;
                                seen.push(rec);
                                answer
                            };
                            let delay = extra
                                .iter()
                                .find(|(k, _)| k == "x-test-delay-ms")
                                .map(|(_, v)| v.parse::<u64>().unwrap());
                            if let Some(ms) = delay {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            for (k, v) in extra.into_iter().filter(|(k, _)| k != "x-test-delay-ms")
                            {
                                resp.headers_mut().insert(
                                    hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    v.parse().unwrap(),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            seen,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops listening and closes every open connection before returning.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        wait_until(timeout, || self.count() >= n).await;
        let got = self.requests();
        assert!(
            got.len() >= n,
            "receiver got {} requests, wanted {n}",
            got.len()
        );
        got
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls an async condition every 20 ms for up to 10 s; returns whether it held.
pub async fn wait_until_async<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Waits until something accepts connections on a loopback port (a relay process starting).
pub async fn wait_listening(port: u16, within: Duration) {
    assert!(
        wait_until(within, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok())
        .await,
        "nothing listened on port {port} within {within:?}"
    );
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Posts a fixture with the Content-Type its extension implies.
pub async fn send_fixture(relay: &Relay, path: &str, file: &str) -> (u16, serde_json::Value) {
    let ct = if file.ends_with(".form") {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    post(&url(relay, path), Some(ct), fixture(file)).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn post(
    url: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let mut req = client().post(url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.expect("relay answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn read_lines(path: &PathBuf) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The two default sources, as in the shipped config.
pub const SOURCES: &str = r#"
[store]
path = "{dir}/data"
min_free_bytes = 1048576

[admin]
listen = "127.0.0.1:0"

[[sources]]
name = "statusgator"
kind = "statusgator"
path = "/com.statusgator/v1"

[[sources]]
name = "pagerduty"
kind = "pagerduty"
path = "/com.pagerduty/v1"
"#;

/// The server the PostgreSQL tests use: `HOOKRELAY_TEST_DATABASE_URL` (a URL ending in a
/// database name, e.g. `postgres://postgres@127.0.0.1:55432/postgres`) when set; otherwise
/// the one `.ci/postgres` starts on loopback (installing PostgreSQL from Debian's packages
/// when it is missing). A test that needs it fails with the reason when neither works: it
/// never passes without running.
pub fn test_database_url() -> String {
    static URL: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let found = URL.get_or_init(|| {
        if let Ok(url) = std::env::var("HOOKRELAY_TEST_DATABASE_URL") {
            if !url.trim().is_empty() {
                return Ok(url);
            }
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres");
        let out = std::process::Command::new("bash")
            .arg(script)
            .output()
            .map_err(|e| format!("cannot run {script}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout
            .lines()
            .find_map(|l| l.strip_prefix("export HOOKRELAY_TEST_DATABASE_URL="))
        {
            Some(url) if out.status.success() => Ok(url.trim().to_owned()),
            _ => Err(format!(
                "no PostgreSQL for the tests: HOOKRELAY_TEST_DATABASE_URL is not set and {script} \
                 failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    });
    match found {
        Ok(url) => url.clone(),
        Err(why) => panic!("{why}"),
    }
}

/// A new, empty database on the test server; its URL.
pub async fn fresh_database() -> String {
    let admin = test_database_url();
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL server answers");
    let conn = tokio::spawn(conn);
    let name = format!("hookrelay_test_{}", uuid::Uuid::now_v7().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    drop(client);
    let _ = conn.await;
    let base = admin.rsplit_once('/').expect("URL ends in a database").0;
    format!("{base}/{name}")
}

/// Starts `hookrelay serve --config config` as a child process (the binary this test run
/// built), its log (level `warn`) appended to `log`.
pub fn spawn_serve(config: &Path, log: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("HOOKRELAY_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

/// A StatusGator "down" event for `monitor` (its ordering key) with message `n{n}`, normalized
/// as ingest would, for tests that write to a store directly.
pub fn statusgator_event(monitor: &str, n: usize) -> hookrelay::Event {
    use hookrelay::normalize::{normalize, Received, SourceKind};
    let body = serde_json::json!({
        "type": "StatusChange", "recorded_at": "2025-07-17T02:20:45Z",
        "monitor": {"id": monitor}, "status": "down", "message": format!("n{n}"),
    })
    .to_string();
    normalize(&Received {
        source: "sg",
        kind: SourceKind::Statusgator,
        content_type: Some("application/json"),
        body: body.into(),
        query: Default::default(),
        received_at: chrono::Utc::now(),
        webhook_id: None,
    })
    .unwrap()
    .pop()
    .unwrap()
}
