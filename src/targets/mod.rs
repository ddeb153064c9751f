//! Target kinds. Each file has the same shape: a struct built from its validated spec and a
//! `prepare` that turns a delivery's template context into the exact request to make (or a
//! reason not to make one). Sending is shared, so `hookrelay rules test` can show precisely what
//! a target would receive without sending it, and results are reported without being judged
//! (judging is `deliver::classify`'s job).

mod client;
mod file;
pub mod incident;
pub mod signing;
mod snowplow;
mod statushub;
mod victorops;
mod webhook;

use std::time::Duration;

pub use client::{Client, Outgoing};
pub use snowplow::PLATFORMS;
pub use statushub::{
    DEFAULT_BODY as STATUSHUB_BODY, DEFAULT_KEY_FIELD, DEFAULT_URL as STATUSHUB_DEFAULT_URL,
};
pub use victorops::{VictoropsSpec, REST_PATH as VICTOROPS_REST_PATH};

use crate::config::{TargetConfig, TargetKind};
use crate::template::{Context, Templates};

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Response {
        status: u16,
        retry_after: Option<Duration>,
        excerpt: Option<String>,
    },
    Connect(String),
    Timeout,
    /// A local or transport failure worth retrying.
    Io(String),
    /// The request cannot be built (template error, bad header value, URL leaving its host):
    /// retrying the same event would fail the same way.
    Invalid(String),
    /// The target does not take this event (a URL variable it lacks, a type the destination
    /// has no schema for).
    Skipped(String),
}

/// How much of a response body is kept with an attempt.
pub const EXCERPT_BYTES: usize = 1024;

/// The request a target would make for one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    /// Its body is shared with the event when it is `{{json event}}` (see
    /// `Event::template_json`).
    Http(Outgoing),
    /// One line to append to a file.
    Line {
        path: std::path::PathBuf,
        line: Vec<u8>,
    },
    /// Nothing to send, and why.
    Skip(String),
}

pub enum Target {
    Webhook(webhook::Webhook),
    File(file::FileTarget),
    Snowplow(snowplow::Snowplow),
    Victorops(victorops::Victorops),
}

impl Target {
    pub fn new(config: &TargetConfig) -> Target {
        match &config.kind {
            TargetKind::Webhook(spec) | TargetKind::Statushub(spec) => {
                Target::Webhook(webhook::Webhook::new(spec.clone()))
            }
            TargetKind::File(spec) => Target::File(file::FileTarget::new(spec.path.clone())),
            TargetKind::Snowplow(spec) => Target::Snowplow(snowplow::Snowplow::new(spec.clone())),
            TargetKind::Victorops(spec) => {
                Target::Victorops(victorops::Victorops::new(spec.clone()))
            }
        }
    }

    /// For a target that fires on incident changes (`statushub`), which changes fire.
    pub fn fire_on(&self) -> Option<&incident::FireOn> {
        match self {
            Target::Webhook(w) => w.fire_on(),
            _ => None,
        }
    }

    /// The exact request for a delivery, or why there is none. `Err` means the request cannot
    /// be built at all.
    pub fn prepare(&self, templates: &Templates, ctx: &Context) -> Result<Prepared, String> {
        match self {
            Target::Webhook(w) => w.prepare(templates, ctx),
            Target::File(f) => Ok(f.prepare(ctx.data())),
            Target::Snowplow(s) => s.prepare(ctx.data()),
            Target::Victorops(v) => v.prepare(templates, ctx),
        }
    }

    /// The request for delivery `seq` of `event` when it can be built without a template
    /// context (a webhook sending the default body to a constant URL); `None`: use
    /// [`Target::prepare`], which builds the same request.
    pub fn prepare_event(&self, event: &crate::normalize::Event, seq: u64) -> Option<Prepared> {
        match self {
            Target::Webhook(w) => w.prepare_event(event, seq),
            _ => None,
        }
    }

    /// One attempt with a request [`Target::prepare`] built.
    pub async fn send(
        &self,
        client: &Client,
        prepared: Result<Prepared, String>,
        timeout: Duration,
    ) -> AttemptResult {
        match prepared {
            Err(e) => AttemptResult::Invalid(e),
            Ok(Prepared::Skip(reason)) => AttemptResult::Skipped(reason),
            Ok(Prepared::Line { line, .. }) => match self {
                Target::File(f) => f.append(&line).await,
                _ => AttemptResult::Invalid("only a file target writes lines".into()),
            },
            Ok(Prepared::Http(request)) => client.send(request, timeout).await,
        }
    }
}

/// A URL for messages: scheme, host, port and path, never the query.
pub(crate) fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}{}", u.origin().ascii_serialization(), u.path()),
        Err(_) => "(unparseable)".into(),
    }
}

/// Checks that a URL kept the scheme, host and port it was configured with.
pub(crate) fn same_origin(url: &reqwest::Url, origin: &(String, String, u16)) -> bool {
    url.scheme() == origin.0
        && url.host_str() == Some(origin.1.as_str())
        && url.port_or_known_default() == Some(origin.2)
}
