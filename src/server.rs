//! The accept loop both listeners (ingest and admin) share, and the limits that keep one client
//! from taking every connection:
//!
//! - at most `max_connections` are served at once. At the limit, a new connection first asks
//!   one idle keep-alive connection (one that has had an answer and waits for its next request)
//!   to close; when none is idle it waits until one ends, and further connections wait in the
//!   kernel's backlog;
//! - one client address holds at most `max_connections_per_address` of them: another one from
//!   it is closed as soon as it is accepted, so a single client can never fill the table;
//! - headers must arrive within `header_timeout`, else the connection is closed.
//!
//! On stop, every connection finishes the request it is serving (up to `grace`) and closes.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};

/// What one listener allows its clients.
pub(crate) struct Limits {
    pub grace: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
}

/// One open connection, as the accept loop sees it.
#[derive(Default)]
struct Conn {
    /// Requests being answered right now.
    in_flight: AtomicUsize,
    /// At least one answer was given: between requests it is an idle keep-alive connection.
    answered: AtomicBool,
    /// Asked to close (once).
    closing: AtomicBool,
    close: Notify,
}

impl Conn {
    fn idle(&self) -> bool {
        self.answered.load(Ordering::Acquire)
            && self.in_flight.load(Ordering::Acquire) == 0
            && !self.closing.load(Ordering::Acquire)
    }
}

/// Counts a request in flight on its connection until it is answered (or dropped).
struct Busy(Arc<Conn>);

impl Busy {
    fn start(conn: &Arc<Conn>) -> Busy {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.answered.store(true, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections, by id, and how many each client address holds.
#[derive(Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, (IpAddr, Arc<Conn>)>,
    per_address: HashMap<IpAddr, usize>,
}

impl Table {
    /// Registers a connection from `ip` unless that address already holds `max`.
    fn admit(&mut self, ip: IpAddr, max: usize) -> Option<(u64, Arc<Conn>)> {
        let held = self.per_address.entry(ip).or_default();
        if *held >= max {
            return None;
        }
        *held += 1;
        self.next_id += 1;
        let conn = Arc::new(Conn::default());
        self.conns.insert(self.next_id, (ip, conn.clone()));
        Some((self.next_id, conn))
    }

    fn remove(&mut self, id: u64) {
        if let Some((ip, _)) = self.conns.remove(&id) {
            if let Some(held) = self.per_address.get_mut(&ip) {
                *held -= 1;
                if *held == 0 {
                    self.per_address.remove(&ip);
                }
            }
        }
    }

    /// Asks one idle keep-alive connection to close; whether there was one.
    fn close_one_idle(&self) -> bool {
        let Some((_, conn)) = self.conns.values().find(|(_, c)| c.idle()) else {
            return false;
        };
        conn.closing.store(true, Ordering::Release);
        conn.close.notify_one();
        true
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// The client's address, an IPv4 client on a dual-stack socket counted as itself.
fn client_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
) where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let table = Arc::new(Mutex::new(Table::default()));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let ip = client_address(peer.ip());
        let Some((id, conn)) = lock(&table).admit(ip, limits.max_connections_per_address) else {
            tracing::debug!(client = %ip, limit = limits.max_connections_per_address, "connection refused: this address holds its limit");
            continue;
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Full: make room by closing an idle keep-alive connection, or wait for one to
                // end (further clients wait in the backlog meanwhile).
                lock(&table).close_one_idle();
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = stop.changed() => {
                        lock(&table).remove(id);
                        break;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let counted = conn.clone();
        let service = service_fn(move |req| {
            let busy = Busy::start(&counted);
            let response = handler(req);
            async move {
                let response = response.await;
                drop(busy);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let http = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let mut stop = stop.clone();
        let table = table.clone();
        tokio::spawn(async move {
            tokio::pin!(http);
            let mut closing = *stop.borrow();
            if closing {
                http.as_mut().graceful_shutdown();
            }
            loop {
                tokio::select! {
                    ended = http.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    // Finishes the request in flight, if any, then closes.
                    _ = conn.close.notified(), if !closing => {
                        closing = true;
                        http.as_mut().graceful_shutdown();
                    }
                    _ = stop.changed(), if !closing => {
                        closing = true;
                        http.as_mut().graceful_shutdown();
                    }
                }
            }
            lock(&table).remove(id);
            drop(slot);
        });
    }
    drop(listener);
    // Every slot back means every connection has ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after the grace period; closing their connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_counts_and_idle_choice() {
        let mut t = Table::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let (a1, c1) = t.admit(a, 2).unwrap();
        let (_, c2) = t.admit(a, 2).unwrap();
        assert!(t.admit(a, 2).is_none(), "a third from one address");
        assert!(t.admit(b, 2).is_some(), "another address has its own count");
        assert!(!t.close_one_idle(), "nothing answered yet is idle");
        drop(Busy::start(&c2));
        let _busy = Busy::start(&c1);
        assert!(t.close_one_idle(), "c2 answered and waits");
        assert!(c2.closing.load(Ordering::Acquire));
        assert!(!t.close_one_idle(), "c2 is already closing and c1 is busy");
        t.remove(a1);
        assert!(t.admit(a, 2).is_some(), "a slot of the address came back");
        assert_eq!(
            client_address("::ffff:127.0.0.2".parse().unwrap()),
            a,
            "IPv4-mapped"
        );
    }
}
