//! The HTTP client deliveries go out on: what a receiver sees on the wire, kept connections,
//! connections a receiver closed, and proxies set in the environment.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hookrelay::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SG: &str = "/com.statusgator/v1";

/// One request as it arrived: the head's bytes, the body, and which connection (numbered from
/// 0 in accepting order) carried it.
#[derive(Debug, Clone)]
struct Raw {
    head: String,
    body: Vec<u8>,
    connection: usize,
}

/// How a [`RawReceiver`] answers.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// `200 ok`, the connection kept open.
    Keep,
    /// `200 ok`, then the connection closed 20 ms later without having said so (as a server
    /// whose keep-alive timeout fired would).
    CloseAfter,
    /// `200` with a head promising 10 bytes of body, 2 of them sent, and the rest never.
    Stall,
}

/// A receiver speaking HTTP/1.1 by hand, so the test sees the bytes the relay wrote.
struct RawReceiver {
    port: u16,
    seen: Arc<Mutex<Vec<Raw>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawReceiver {
    async fn start(answer: Answer) -> RawReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Raw>>> = Arc::default();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut connection = 0;
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    tokio::spawn(serve(stream, connection, answer, seen.clone()));
                    connection += 1;
                }
            })
        };
        RawReceiver { port, seen, task }
    }

    fn requests(&self) -> Vec<Raw> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Raw> {
        wait_until(Duration::from_secs(10), || self.requests().len() >= n).await;
        let got = self.requests();
        assert!(got.len() >= n, "got {} requests, wanted {n}", got.len());
        got
    }
}

async fn serve(
    mut stream: TcpStream,
    connection: usize,
    answer: Answer,
    seen: Arc<Mutex<Vec<Raw>>>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[end..end + length].to_vec();
        buf.drain(..end + length);
        seen.lock().unwrap().push(Raw {
            head,
            body,
            connection,
        });
        let bytes: &[u8] = match answer {
            Answer::Stall => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok",
            Answer::Keep | Answer::CloseAfter => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        };
        if stream.write_all(bytes).await.is_err() {
            return;
        }
        if answer == Answer::Stall {
            std::future::pending::<()>().await;
        }
        if answer == Answer::CloseAfter {
            // A moment later, while the relay keeps the connection idle.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
    }
}

fn config(target_url: &str) -> String {
    format!(
        "{SOURCES}\n[[targets]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{target_url}\"\n\
         concurrency = 1\nheaders = {{ \"X-Team\" = \"ops\" }}\ntimeout = \"300ms\"\n\
         retry = {{ initial_delay = \"50ms\", jitter = 0.0 }}\n"
    )
}

/// Sends StatusGator webhook `n` to the relay; it must be accepted.
async fn send(relay: &hookrelay::Relay, n: usize) {
    let (status, _) = post(&url(relay, SG), Some("application/json"), sg_body(n)).await;
    assert_eq!(status, 200);
}

fn sg_body(n: usize) -> String {
    serde_json::json!({
        "type": "StatusChange",
        "monitor": {"id": format!("m{n}"), "type": "WebsiteMonitor", "display_name": "m"},
        "status": "down",
        "previous_status": "up",
        "message": format!("message {n}"),
    })
    .to_string()
}

/// A receiver sees the request head the documentation promises: origin-form request line with
/// the path and query, `host`, the target's headers, `user-agent`, `accept`, the body's
/// `content-length`; and five deliveries made one after another travel on one kept
/// connection. Guards the client's connection keeping and the head it writes: with a
/// connection not handed back after its response, five connections are opened; without
/// `host` or the default headers, the head differs.
#[tokio::test]
async fn deliveries_share_one_kept_connection_and_write_the_documented_head() {
    let dir = tempdir();
    let receiver = RawReceiver::start(Answer::Keep).await;
    let target = format!("http://127.0.0.1:{}/in/hook?x=1&y=%20z", receiver.port);
    let relay = spawn_relay(&config(&target), dir.path()).await;
    for n in 0..5 {
        send(&relay, n).await;
        receiver.wait_for(n + 1).await;
    }
    let got = receiver.requests();
    assert_eq!(got.len(), 5);
    assert_eq!(
        got.iter().map(|r| r.connection).collect::<Vec<_>>(),
        [0; 5],
        "every delivery on the first connection"
    );
    let events = relay.store().events_page(None, 10).await.unwrap();
    for r in &got {
        let mut lines = r.head.lines();
        assert_eq!(lines.next(), Some("POST /in/hook?x=1&y=%20z HTTP/1.1"));
        let mut headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let event_id = take(&mut headers, "x-hookrelay-event-id");
        assert!(events.iter().any(|e| e.id == event_id));
        take(&mut headers, "x-hookrelay-delivery-id")
            .parse::<u64>()
            .unwrap();
        headers.sort();
        let mut expected = vec![
            ("accept".to_owned(), "*/*".to_owned()),
            ("content-length".to_owned(), r.body.len().to_string()),
            ("content-type".to_owned(), "application/json".to_owned()),
            ("host".to_owned(), format!("127.0.0.1:{}", receiver.port)),
            (
                "user-agent".to_owned(),
                concat!("hookrelay/", env!("CARGO_PKG_VERSION")).to_owned(),
            ),
            ("x-team".to_owned(), "ops".to_owned()),
        ];
        expected.sort();
        assert_eq!(headers, expected, "{}", r.head);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["id"].as_str(), Some(event_id.as_str()));
    }
}

fn take(headers: &mut Vec<(String, String)>, name: &str) -> String {
    let i = headers
        .iter()
        .position(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"));
    headers.remove(i).1
}

/// A kept connection the receiver closed after its answer (without `connection: close`) is
/// not used again, and costs no failed attempt: each delivery is made once, each on a new
/// connection. Guards the check of a kept connection before its use together with the resend
/// of a request that never went out; with both removed, a delivery fails on the closed
/// connection and is retried, so attempts are counted twice.
#[tokio::test]
async fn a_connection_the_receiver_closed_costs_no_attempt() {
    let dir = tempdir();
    let receiver = RawReceiver::start(Answer::CloseAfter).await;
    let target = format!("http://127.0.0.1:{}/hook", receiver.port);
    let relay = spawn_relay(&config(&target), dir.path()).await;
    for n in 0..4 {
        send(&relay, n).await;
        receiver.wait_for(n + 1).await;
        // The connection is closed while idle, before the next delivery.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = receiver.requests();
    assert_eq!(
        got.iter().map(|r| r.connection).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    for seq in 1..=4 {
        let attempts = relay.store().attempts(seq).await.unwrap();
        let statuses: Vec<_> = attempts.iter().map(|a| a.status).collect();
        assert_eq!(statuses, [Some(200)], "delivery {seq}");
    }
}

/// With `HTTP_PROXY` set, a plain-HTTP delivery goes through the proxy, as reqwest sends it
/// (the request line in absolute form); the target itself is never connected to. Guards the
/// client's check of the proxy variables: with the relay's own connections used regardless,
/// the delivery goes to the target's address, where nothing listens, and the proxy sees
/// nothing.
#[tokio::test]
async fn a_proxy_in_the_environment_carries_plain_http_deliveries() {
    let dir = tempdir();
    let proxy = Receiver::ok().await;
    let port = free_port();
    let unreachable = free_port();
    let text = config(&format!("http://127.0.0.1:{unreachable}/hook?k=v"))
        .replace("{dir}", dir.path().to_str().unwrap())
        + &format!("\n[server]\nlisten = \"127.0.0.1:{port}\"\n");
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .current_dir(dir.path())
        .env("HTTP_PROXY", proxy.url(""))
        .env_remove("http_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let delivered = if started {
        let (status, _) = post(
            &format!("http://127.0.0.1:{port}{SG}"),
            Some("application/json"),
            sg_body(0),
        )
        .await;
        assert_eq!(status, 200);
        wait_until(Duration::from_secs(10), || proxy.count() >= 1).await
    } else {
        false
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "the relay did not start listening");
    assert!(delivered, "the proxy saw no request");
    let got = proxy.requests();
    assert_eq!(got[0].method, "POST");
    assert_eq!(
        got[0].uri,
        format!("http://127.0.0.1:{unreachable}/hook?k=v")
    );
    assert_eq!(got[0].header("x-team"), Some("ops"));
}

/// Credentials in a target's URL are sent as basic authentication and never in the request
/// line, as before the relay had its own connections. Guards the client's handing of such a
/// URL to reqwest: sent on the relay's own connections, the request has no `authorization`.
#[tokio::test]
async fn credentials_in_the_url_are_sent_as_basic_authentication() {
    let dir = tempdir();
    let receiver = RawReceiver::start(Answer::Keep).await;
    let target = format!("http://ops:s%40cret@127.0.0.1:{}/hook", receiver.port);
    let relay = spawn_relay(&config(&target), dir.path()).await;
    send(&relay, 0).await;
    let got = receiver.wait_for(1).await;
    let mut lines = got[0].head.lines();
    assert_eq!(lines.next(), Some("POST /hook HTTP/1.1"));
    // "ops:s@cret" in base64.
    assert!(
        lines.any(|l| l == "authorization: Basic b3BzOnNAY3JldA=="),
        "{}",
        got[0].head
    );
}

/// A response whose head came in time is its status, though its body never ends: the
/// delivery is done after one request (as it was with reqwest, whose timeout cut the body
/// short). Guards the deadline's split between the head and the body: with the whole exchange
/// under one timeout, the attempt is a timeout and the event is sent again and again.
#[tokio::test]
async fn a_body_that_never_ends_does_not_undo_its_status() {
    let dir = tempdir();
    let receiver = RawReceiver::start(Answer::Stall).await;
    let target = format!("http://127.0.0.1:{}/hook", receiver.port);
    let relay = spawn_relay(&config(&target), dir.path()).await;
    send(&relay, 0).await;
    let done =
        wait_until_async(|| async { !relay.store().attempts(1).await.unwrap().is_empty() }).await;
    assert!(done, "no attempt was recorded");
    // Time for a retry, were there one (the timeout is 300 ms, the first retry 50 ms later).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let attempts = relay.store().attempts(1).await.unwrap();
    let seen: Vec<_> = attempts
        .iter()
        .map(|a| (a.status, a.response_excerpt.clone()))
        .collect();
    assert_eq!(seen, [(Some(200), Some("ok".to_owned()))]);
    assert_eq!(receiver.requests().len(), 1);
}
