//! The web console at `/`: one page, its script and its style sheet, embedded in the binary
//! (no CDN, no build step), over the admin API.
//!
//! The page and its files hold no data and are served without the token; everything they show
//! comes from the admin API, fetched by the page's own script with `Authorization: Bearer`
//! (the token is asked for once and kept in the tab's `sessionStorage`). No cookie carries
//! authority, so another site cannot make the browser act (no CSRF), and the page never turns
//! a value into markup: the script builds every node with `textContent`, and the Content
//! Security Policy below allows no inline script besides, so an event holding HTML shows it
//! as text.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;
use serde_json::{json, Value};

use super::{ok, Admin, AdminError, Answer};
use crate::config::Config;
use crate::dry_run::{DryRun, Outcome};
use crate::store::Store;
use crate::targets::{Outgoing, Prepared};

const PAGE: &str = include_str!("index.html");

/// The files the page loads, by name under `/console/`.
const FILES: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("style.css"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("icon.svg")),
    ("app.js", JS, include_str!("app.js")),
    ("core.js", JS, include_str!("core.js")),
    ("events.js", JS, include_str!("events.js")),
    ("event.js", JS, include_str!("event.js")),
    ("targets.js", JS, include_str!("targets.js")),
    ("dead.js", JS, include_str!("dead.js")),
    ("try.js", JS, include_str!("try.js")),
];

const JS: &str = "text/javascript; charset=utf-8";

/// Scripts and styles from this origin only, nothing inline, no framing, no form posts, and
/// requests back to this origin only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn respond(content_type: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Always asked again, so an upgraded relay never runs a stale script.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

/// `GET /`: the console's page.
pub(super) fn page() -> Response<Full<Bytes>> {
    respond("text/html; charset=utf-8", PAGE)
}

/// `GET /console/{name}`: one of the page's files.
pub(super) fn file(name: &str) -> Option<Response<Full<Bytes>>> {
    FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ct, body)| respond(ct, body))
}

/// `GET /sources`: the configured sources (for filters and the dry run), without secrets.
pub(super) fn sources(config: &Config) -> Value {
    let list: Vec<Value> = config
        .sources
        .iter()
        .map(|s| json!({"name": s.name, "kind": s.kind, "path": s.path}))
        .collect();
    json!({ "sources": list })
}

impl<S: Store> Admin<S> {
    /// `POST /dry-run[?source=NAME]`: what `hookrelay rules test` prints for the body, as
    /// `{"source", "output"}`; nothing is stored or sent. The output is the dry run's own text,
    /// shown as it is (credentials in the requests hidden), so whatever the dry run reports
    /// the console shows.
    pub(super) async fn dry_run(
        &self,
        source: Option<&String>,
        body: hyper::body::Incoming,
    ) -> Answer {
        let config = self.config.load_full();
        let limit = config.server.max_body_bytes;
        let body = tokio::time::timeout(
            config.server.body_timeout,
            Limited::new(body, limit).collect(),
        )
        .await
        .map_err(|_| AdminError::BadRequest("the body did not arrive in time".into()))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                AdminError::TooLarge(limit)
            } else {
                AdminError::BadRequest(format!("cannot read the body: {e}"))
            }
        })?
        .to_bytes();
        let source = source.map(String::as_str).filter(|s| !s.is_empty());
        let mut run =
            crate::dry_run::dry_run(&config, source, &body).map_err(AdminError::BadRequest)?;
        hide_credentials(&mut run);
        ok(json!({ "source": run.source, "output": run.to_string() }))
    }
}

/// What replaces a credential in the dry run's requests.
const HIDDEN: &str = "[hidden]";

/// The admin API answers with no secret, and a target's request may carry one (a header such
/// as `Authorization`, a password or key in its URL): those values are replaced before the
/// report is written. Names that look like credentials count, whatever their value.
fn hide_credentials(run: &mut DryRun) {
    let secret = |name: &str| {
        let name = name.to_ascii_lowercase();
        [
            "auth",
            "token",
            "secret",
            "key",
            "password",
            "signature",
            "cookie",
        ]
        .iter()
        .any(|w| name.contains(w))
    };
    for target in run.events.iter_mut().flat_map(|e| e.targets.iter_mut()) {
        let Outcome::Send(prepared) = &mut target.outcome else {
            continue;
        };
        let Prepared::Http(Outgoing { url, headers, .. }) = prepared.as_mut() else {
            continue;
        };
        for (name, value) in headers.iter_mut() {
            if secret(name.as_str()) {
                *value = HeaderValue::from_static(HIDDEN);
            }
        }
        if url.password().is_some() {
            let _ = url.set_password(Some(HIDDEN));
        }
        if url.query_pairs().any(|(k, _)| secret(&k)) {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if secret(&k) {
                        HIDDEN.into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
}
