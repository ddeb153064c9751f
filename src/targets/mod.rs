//! Target kinds. Each file has the same shape: a struct built from its validated spec, and an
//! async `send` that performs one attempt and reports an [`AttemptResult`] without judging it
//! (judging is `deliver::classify`'s job).

mod file;
mod webhook;

use std::time::Duration;

use serde_json::Value;

use crate::config::{TargetConfig, TargetKind};
use crate::template::Templates;

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
}

/// How much of a response body is kept with an attempt.
pub const EXCERPT_BYTES: usize = 1024;

pub enum Target {
    Webhook(webhook::Webhook),
    File(file::FileTarget),
}

impl Target {
    pub fn new(config: &TargetConfig) -> Target {
        match &config.kind {
            TargetKind::Webhook(spec) => Target::Webhook(webhook::Webhook::new(spec.clone())),
            TargetKind::File(spec) => Target::File(file::FileTarget::new(spec.path.clone())),
        }
    }

    /// One attempt. `ctx` is the template context of the delivery.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        templates: &Templates,
        ctx: &Value,
        timeout: Duration,
    ) -> AttemptResult {
        match self {
            Target::Webhook(w) => w.send(client, templates, ctx, timeout).await,
            Target::File(f) => f.send(ctx).await,
        }
    }
}
