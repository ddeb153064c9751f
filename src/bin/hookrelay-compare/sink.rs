//! The sink every run sends to: a small HTTP server in this process that answers `200 ok` and
//! counts what arrives.
//!
//! It tells two kinds of requests apart. A request with `X-Hookrelay-Event-Id` is a relay's
//! delivery: its id is counted once per target path (the path names the target), so a
//! redelivery is counted as a duplicate, not as progress, and the relay's end-to-end figure
//! waits until every acknowledged event reached every target. Any other request (wrk sending
//! straight to the sink, or nginx passing wrk's request on) is counted as it comes.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The relay's deliveries to one target.
#[derive(Default)]
struct Target {
    ids: HashSet<Box<str>>,
    arrivals: u64,
    /// When an id arrived for the first time, the latest such moment.
    last_new: Option<Instant>,
}

#[derive(Default)]
struct Counts {
    plain: AtomicU64,
    /// Nanoseconds after `epoch` of the latest plain arrival, plus one (0: none yet).
    plain_last_ns: AtomicU64,
    /// Connections accepted: a sender that keeps its connections alive opens few.
    connections: AtomicU64,
    targets: Mutex<HashMap<String, Target>>,
}

#[derive(Clone)]
pub struct Sink {
    pub port: u16,
    epoch: Instant,
    counts: Arc<Counts>,
}

/// What the relay delivered to one target so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivered {
    pub distinct: u64,
    pub duplicates: u64,
    pub last_new: Option<Instant>,
}

impl Sink {
    /// Starts the sink on a thread of its own with a single-threaded runtime: one core is far
    /// more than it needs, and it costs less per request than a share of a multi-threaded one.
    pub fn start() -> anyhow::Result<Sink> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let sink = Sink {
            port: listener.local_addr()?.port(),
            epoch: Instant::now(),
            counts: Arc::default(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let serving = sink.clone();
        std::thread::Builder::new()
            .name("sink".into())
            .spawn(move || runtime.block_on(serving.serve(listener)))?;
        Ok(sink)
    }

    async fn serve(self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            self.counts.connections.fetch_add(1, Ordering::Relaxed);
            let sink = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let sink = sink.clone();
                    async move { Ok::<_, Infallible>(sink.arrive(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn arrive(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        // The whole body is read, or the connection could not be kept alive.
        let _ = body.collect().await;
        let now = Instant::now();
        match parts
            .headers
            .get("x-hookrelay-event-id")
            .and_then(|v| v.to_str().ok())
        {
            Some(id) => {
                let mut targets = self.counts.targets.lock().unwrap();
                let target = targets.entry(parts.uri.path().to_owned()).or_default();
                target.arrivals += 1;
                if target.ids.insert(id.into()) {
                    target.last_new = Some(now);
                }
            }
            None => {
                self.counts.plain.fetch_add(1, Ordering::Relaxed);
                let ns = now.duration_since(self.epoch).as_nanos() as u64 + 1;
                self.counts.plain_last_ns.fetch_max(ns, Ordering::Relaxed);
            }
        }
        hyper::Response::new(Full::new(Bytes::from_static(b"ok")))
    }

    /// Forgets everything counted so far (between runs).
    pub fn reset(&self) {
        self.counts.plain.store(0, Ordering::Relaxed);
        self.counts.plain_last_ns.store(0, Ordering::Relaxed);
        self.counts.connections.store(0, Ordering::Relaxed);
        self.counts.targets.lock().unwrap().clear();
    }

    /// Connections accepted since the last reset.
    pub fn connections(&self) -> u64 {
        self.counts.connections.load(Ordering::Relaxed)
    }

    /// Requests without a relay event id, and when the last of them arrived.
    pub fn plain(&self) -> (u64, Option<Instant>) {
        let ns = self.counts.plain_last_ns.load(Ordering::Relaxed);
        let last = (ns > 0).then(|| self.epoch + Duration::from_nanos(ns - 1));
        (self.counts.plain.load(Ordering::Relaxed), last)
    }

    /// The relay's deliveries to the target at `path` (`/t0`, `/t1`, …).
    pub fn delivered(&self, path: &str) -> Delivered {
        let targets = self.counts.targets.lock().unwrap();
        targets
            .get(path)
            .map_or_else(Delivered::default, |t| Delivered {
                distinct: t.ids.len() as u64,
                duplicates: t.arrivals - t.ids.len() as u64,
                last_new: t.last_new,
            })
    }
}
