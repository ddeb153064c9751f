//! The HTTP client deliveries are sent with.
//!
//! A plain `http://` request goes out on the relay's own HTTP/1.1 connections: one hyper
//! connection per request in flight, kept open between requests, at most [`IDLE_PER_ORIGIN`]
//! idle per origin. A target's URL never leaves its configured origin, so a target's lanes
//! share a handful of connections and each request costs the exchange and little else. On the
//! delivery path, reqwest's own handling (its URL and header conversions, boxed bodies and
//! timers, the pool in front of hyper) was about an eighth of the async threads' time.
//!
//! An `https://` request, one whose URL holds credentials (`http://user:password@host/`, sent
//! as basic authentication unless the target sets its own `authorization`), and every request
//! when a proxy for plain HTTP is set in the environment (`http_proxy`, `HTTP_PROXY`,
//! `all_proxy`, `ALL_PROXY`, with `no_proxy` as reqwest reads them), is sent by reqwest, which
//! does the TLS, the credentials and the proxying.
//!
//! Both send the same request: the target's method, path, query, headers and body, plus
//! `host`, `user-agent` (the configured one unless the target sets its own) and `accept: */*`,
//! with the body's `content-length`. Both report the same outcomes: a connection that could
//! not be opened is [`AttemptResult::Connect`], a request that ran out of the target's timeout
//! (or of the connect timeout) before the response's head came is [`AttemptResult::Timeout`],
//! anything else that went wrong on the wire is [`AttemptResult::Io`]; a response whose head
//! came in time is its status, however its body ends. Neither follows redirects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::client::conn::http1::SendRequest;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, HOST, RETRY_AFTER, USER_AGENT};
use reqwest::{Method, Url};

use super::{AttemptResult, EXCERPT_BYTES};
use crate::config::DeliveryConfig;
use crate::deliver::parse_retry_after;
use crate::error_chain;

/// Idle connections kept per origin; more are closed when their request ends.
pub const IDLE_PER_ORIGIN: usize = 64;

/// A kept connection idle this long is closed rather than used (as reqwest's pool did).
const IDLE_FOR: Duration = Duration::from_secs(90);

/// TCP keepalive on the relay's connections: first probe after this much idle time, then at
/// this interval (as reqwest set them).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// A response body is read to its end, so its connection can carry the next request, when it
/// says it is at most this long; otherwise the connection is closed once the excerpt is read.
const DRAIN_BYTES: usize = 64 * 1024;

/// Environment variables that send plain-HTTP requests through a proxy (reqwest's reading).
const HTTP_PROXY_VARS: [&str; 4] = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"];

type Sender = SendRequest<Full<Bytes>>;

/// A host and port.
type Origin = (String, u16);

/// One HTTP request of a delivery, as its target prepared it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Cheap to clone: every clone shares the connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// For `https://`, and for everything when a proxy is set.
    reqwest: reqwest::Client,
    /// Whether plain-HTTP requests use the connections below (no proxy is set).
    own_http: bool,
    connect_timeout: Duration,
    user_agent: HeaderValue,
    /// Per origin, oldest first, with when each was last used.
    idle: Mutex<HashMap<Origin, Vec<(Sender, Instant)>>>,
}

impl Client {
    pub fn new(config: &DeliveryConfig) -> Result<Client, reqwest::Error> {
        let reqwest = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(config.user_agent.clone())
            .build()?;
        let own_http = !HTTP_PROXY_VARS
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        Ok(Client {
            inner: Arc::new(Inner {
                reqwest,
                own_http,
                connect_timeout: config.connect_timeout,
                user_agent: config.user_agent.clone(),
                idle: Mutex::default(),
            }),
        })
    }

    /// One request, its whole exchange (connecting, sending, reading the status, headers and
    /// up to [`EXCERPT_BYTES`] of the body) within `timeout`.
    pub async fn send(&self, request: Outgoing, timeout: Duration) -> AttemptResult {
        let url = &request.url;
        let credentials = !url.username().is_empty() || url.password().is_some();
        if url.scheme() != "http" || credentials || !self.inner.own_http {
            return via_reqwest(&self.inner.reqwest, request, timeout).await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        self.exchange(request, deadline).await
    }

    /// The exchange, until `deadline`: a response whose head came in time is its status, even
    /// when its body is cut short by the deadline (as it was with reqwest); the status is what
    /// the retry policy judges.
    async fn exchange(&self, request: Outgoing, deadline: tokio::time::Instant) -> AttemptResult {
        let url = &request.url;
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return AttemptResult::Invalid("the URL has no host".into());
        };
        let origin = (host.to_owned(), port);
        let request = match self.request(request) {
            Ok(r) => r,
            Err(e) => return AttemptResult::Invalid(e),
        };
        let sent = tokio::time::timeout_at(deadline, self.head(&origin, request)).await;
        let (sender, response) = match sent {
            Ok(Ok(sent)) => sent,
            Ok(Err(failed)) => return failed,
            Err(_) => return AttemptResult::Timeout,
        };
        let (status, headers) = (response.status(), response.headers().clone());
        let mut body = response.into_body();
        let mut excerpt = Vec::new();
        let mut read = 0;
        let ended = loop {
            // Past the excerpt, the rest is read only when the response said it is short.
            if excerpt.len() == EXCERPT_BYTES
                && body
                    .size_hint()
                    .upper()
                    .is_none_or(|rest| read + rest as usize > DRAIN_BYTES)
            {
                break false;
            }
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        read += data.len();
                        let room = EXCERPT_BYTES - excerpt.len();
                        excerpt.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Ok(None) => break true,
                // The status is what counts; a body cut short (or late) only shortens the
                // excerpt, and its connection is not kept.
                Ok(Some(Err(_))) | Err(_) => break false,
            }
        };
        if ended && !sender.is_closed() {
            self.checkin(origin, sender);
        }
        responded(status, &headers, &excerpt)
    }

    /// Sends `request` on a kept connection to `origin`, or on a new one, and waits for the
    /// response's head.
    async fn head(
        &self,
        origin: &Origin,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<(Sender, hyper::Response<hyper::body::Incoming>), AttemptResult> {
        let Some(mut sender) = self.checkout(origin) else {
            return self.send_fresh(origin, request).await;
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok((sender, response)),
            // The kept connection closed before the request went out on it (the server timed
            // it out): nothing was sent, so a new connection sends it.
            Err(mut e) => match e.take_message() {
                Some(request) => self.send_fresh(origin, request).await,
                None => Err(AttemptResult::Io(error_chain(&e.into_error()))),
            },
        }
    }

    /// The request in origin form, with `host` (the URL's) and the default headers, where the
    /// target did not set them.
    fn request(&self, request: Outgoing) -> Result<hyper::Request<Full<Bytes>>, String> {
        let Outgoing {
            method,
            url,
            mut headers,
            body,
        } = request;
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let uri: hyper::Uri = target
            .parse()
            .map_err(|e| format!("the URL's path and query: {e}"))?;
        if !headers.contains_key(HOST) {
            let host = match url.port() {
                Some(port) => {
                    HeaderValue::from_str(&format!("{}:{port}", url.host_str().unwrap_or("")))
                }
                None => HeaderValue::from_str(url.host_str().unwrap_or("")),
            }
            .map_err(|_| "the URL's host".to_owned())?;
            headers.insert(HOST, host);
        }
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, self.inner.user_agent.clone());
        }
        if !headers.contains_key(ACCEPT) {
            headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        }
        let mut request = hyper::Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// An idle connection to `origin` that is ready for a request now, the one used last
    /// first. Closed ones, and ones idle for [`IDLE_FOR`] (a middlebox may have forgotten them
    /// without a word), are dropped; one not ready yet (its connection task has not yet taken
    /// in the end of its last exchange) is left for later. Never waits.
    fn checkout(&self, origin: &Origin) -> Option<Sender> {
        let now = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        let kept = idle.get_mut(origin)?;
        kept.retain(|(_, since)| now.duration_since(*since) < IDLE_FOR);
        let mut later = Vec::new();
        let found = loop {
            let Some((mut sender, since)) = kept.pop() else {
                break None;
            };
            match sender.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => break Some(sender),
                Poll::Ready(Err(_)) => {}
                Poll::Pending => later.push((sender, since)),
            }
        };
        kept.splice(0..0, later);
        found
    }

    fn checkin(&self, origin: Origin, sender: Sender) {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        let kept = idle.entry(origin).or_default();
        if kept.len() < IDLE_PER_ORIGIN {
            kept.push((sender, Instant::now()));
        }
    }

    /// Opens a connection to `origin` and sends `request` on it.
    async fn send_fresh(
        &self,
        origin: &Origin,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<(Sender, hyper::Response<hyper::body::Incoming>), AttemptResult> {
        let timeout = self.inner.connect_timeout;
        let stream = match tokio::time::timeout(timeout, connect(origin, timeout)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(failed)) => return Err(failed),
            Err(_) => return Err(AttemptResult::Timeout),
        };
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| AttemptResult::Connect(error_chain(&e)))?;
        tokio::spawn(async move {
            // Its end (the server closed it, or it was dropped) is seen by its sender.
            let _ = connection.await;
        });
        match sender.send_request(request).await {
            Ok(response) => Ok((sender, response)),
            Err(e) => Err(AttemptResult::Io(error_chain(&e))),
        }
    }
}

/// A TCP connection to the URL's host, trying its addresses in turn, each for its share of
/// `timeout` (so one address that does not answer leaves time for the next). A failure is
/// [`AttemptResult::Connect`], or [`AttemptResult::Timeout`] when the last address tried did
/// not answer in time; its message names the address, never the URL (its query may hold a
/// secret).
async fn connect(
    origin: &Origin,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, AttemptResult> {
    let (host, port) = (origin.0.as_str(), origin.1);
    // An address is taken as it is; a name is resolved (on a blocking thread).
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((name, port)).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => return Err(AttemptResult::Connect(format!("resolving {host}: {e}"))),
    };
    let each = timeout / addrs.len().max(1) as u32;
    let mut last = AttemptResult::Connect(format!("{host}:{port} has no address"));
    for addr in addrs {
        match tokio::time::timeout(each, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                // Probes keep an idle kept connection known to middleboxes, and find a peer
                // that went away.
                let probes = socket2::TcpKeepalive::new()
                    .with_time(KEEPALIVE)
                    .with_interval(KEEPALIVE);
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&probes);
                return Ok(stream);
            }
            Ok(Err(e)) => last = AttemptResult::Connect(format!("connecting to {addr}: {e}")),
            Err(_) => last = AttemptResult::Timeout,
        }
    }
    Err(last)
}

async fn via_reqwest(
    client: &reqwest::Client,
    request: Outgoing,
    timeout: Duration,
) -> AttemptResult {
    let request = client
        .request(request.method, request.url)
        .headers(request.headers)
        .body(request.body)
        .timeout(timeout);
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => return transport_error(e),
    };
    let mut excerpt = Vec::new();
    while excerpt.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                excerpt.extend_from_slice(&chunk[..chunk.len().min(EXCERPT_BYTES - excerpt.len())])
            }
            Ok(None) => break,
            // The status is what counts; a body cut short only shortens the excerpt.
            Err(_) => break,
        }
    }
    responded(response.status(), response.headers(), &excerpt)
}

/// What a response says: its status, the delay its `retry-after` asks for, the start of its
/// body.
fn responded(status: reqwest::StatusCode, headers: &HeaderMap, excerpt: &[u8]) -> AttemptResult {
    AttemptResult::Response {
        status: status.as_u16(),
        retry_after: headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now())),
        excerpt: (!excerpt.is_empty()).then(|| String::from_utf8_lossy(excerpt).into_owned()),
    }
}

/// The URL is left out: its query may hold a secret (a StatusHub key is the `token` parameter),
/// and attempt errors are stored and logged.
fn transport_error(e: reqwest::Error) -> AttemptResult {
    let e = e.without_url();
    if e.is_timeout() {
        AttemptResult::Timeout
    } else if e.is_connect() {
        AttemptResult::Connect(error_chain(&e))
    } else {
        AttemptResult::Io(error_chain(&e))
    }
}
