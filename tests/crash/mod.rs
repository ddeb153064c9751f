//! What the crash suites share: a relay child process on a store directory, a load of numbered
//! webhooks from concurrent senders (one ordering key each), and the checks every suite makes
//! afterwards: every acknowledged event delivered, each key in non-decreasing order.
//!
//! Include with `#[path = "crash/mod.rs"] mod crash;` next to `mod common;`.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{free_port, wait_listening, wait_until, Receiver};

/// How long a relay process may take to start listening here.
pub const START: Duration = Duration::from_secs(20);

/// A relay config: one StatusGator source at `/sg`, one webhook target sending the event's
/// title ("sender-n") to `receiver`, the store in `store`, plus `extra` store keys.
pub fn config(dir: &Path, port: u16, store: &Path, receiver: &Receiver, extra: &str) -> PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n[admin]\nenabled = false\n[store]\npath = \"{}\"\nmin_free_bytes = 0\n{extra}\n[[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n[[targets]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"{}\"\nretry = {{ initial_delay = \"100ms\", jitter = 0.0, max_retries = 100 }}\nprobe_interval = \"100ms\"\nbody = '{{{{event.title}}}}'\nheaders = {{ \"content-type\" = \"text/plain\" }}\n",
            store.display(),
            receiver.url("/a"),
        ),
    )
    .unwrap();
    path
}

/// A relay child process whose log goes to `log` (appended, across restarts).
pub struct Relay {
    pub child: Child,
    pub port: u16,
    config: PathBuf,
    pub log: PathBuf,
}

impl Relay {
    pub async fn start(config: &Path, port: u16, log: &Path) -> Relay {
        let child = super::common::spawn_serve(config, log);
        let relay = Relay {
            child,
            port,
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        };
        wait_listening(port, START).await;
        relay
    }

    /// SIGKILL, and waits until the process is gone (its files closed).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
    }

    pub async fn restart(&mut self) {
        self.kill();
        *self = Relay::start(&self.config, self.port, &self.log).await;
    }

    /// Waits up to `within` for the process to exit on its own; its exit code.
    pub async fn exited(&mut self, within: Duration) -> Option<i32> {
        let mut code = None;
        wait_until(within, || match self.child.try_wait() {
            Ok(Some(status)) => {
                code = Some(status.code().unwrap_or(-1));
                true
            }
            _ => false,
        })
        .await;
        code
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Senders posting numbered StatusGator webhooks, each on its own ordering key, one after
/// the other (as a sender waits for each answer). What was acknowledged is recorded.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    acked: Arc<Mutex<HashSet<String>>>,
    /// Answers by status, for what was refused (503) while a fault was on.
    pub statuses: Arc<Mutex<HashMap<u16, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, senders: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
        let statuses: Arc<Mutex<HashMap<u16, u64>>> = Arc::default();
        let tasks = (0..senders)
            .map(|sender| {
                let (stop, sent, acked, statuses) =
                    (stop.clone(), sent.clone(), acked.clone(), statuses.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        sent.fetch_add(1, Ordering::Relaxed);
                        let title = format!("{sender}-{n}");
                        let body = format!(
                            "{{\"type\":\"StatusChange\",\"recorded_at\":\"2025-01-01T00:00:00Z\",\"monitor\":{{\"id\":\"s{sender}\"}},\"status\":\"down\",\"message\":\"{title}\"}}"
                        );
                        let resp = client
                            .post(format!("http://127.0.0.1:{port}/sg"))
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        match resp {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                *statuses.lock().unwrap().entry(status).or_default() += 1;
                                if status == 200 {
                                    acked.lock().unwrap().insert(title);
                                } else {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            }
                            // Cut off while the relay is down: not acknowledged, the sender
                            // would retry; nothing to check.
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            acked,
            statuses,
            tasks,
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` acknowledgements came in after `since` (a count), up to 30 s.
    pub async fn wait_for_acks(&self, since: usize, more: usize) -> bool {
        wait_until(Duration::from_secs(30), || self.acked() >= since + more).await
    }

    pub async fn stop(self) -> HashSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Titles ("sender-n") the receiver answered 200 for, in arrival order.
pub fn delivered(receiver: &Receiver) -> Vec<String> {
    receiver
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.text())
        .collect()
}

/// Waits until every acknowledged title reached the receiver, then checks it, and that each
/// sender's numbers arrived in non-decreasing order (at least once may repeat one; an older
/// one never follows a newer one). Returns (delivered, duplicates).
pub async fn check_delivered(
    receiver: &Receiver,
    acked: &HashSet<String>,
    log: &str,
) -> (usize, usize) {
    wait_until(Duration::from_secs(90), || {
        let got: HashSet<String> = delivered(receiver).into_iter().collect();
        acked.iter().all(|t| got.contains(t))
    })
    .await;
    let got = delivered(receiver);
    let unique: HashSet<&String> = got.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|t| !unique.contains(t)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events never arrived (e.g. {:?}); relay log:\n{log}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let mut last: HashMap<&str, u64> = HashMap::new();
    for title in &got {
        let (sender, n) = title.split_once('-').expect("sender-n");
        let n: u64 = n.parse().unwrap();
        let before = last.insert(sender, n).unwrap_or(0);
        assert!(
            n >= before,
            "sender {sender}'s {n} arrived after its {before}"
        );
    }
    (unique.len(), got.len() - unique.len())
}

/// A port for a relay.
pub fn port() -> u16 {
    free_port()
}
