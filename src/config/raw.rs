//! The TOML file exactly as written. Every table denies unknown keys, and every value that
//! validation can reject is `Spanned`, so its error can name the line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::rules::{RawCondition, RawRule};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub delivery: RawDelivery,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub admin: RawAdmin,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub enabled: Option<bool>,
    pub listen: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub allowed_hosts: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub header_timeout: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_address: Option<Spanned<i64>>,
    pub max_batch_messages: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub path: Option<Spanned<String>>,
    pub dedup_window: Option<Spanned<String>>,
    pub retain_delivered: Option<Spanned<String>>,
    pub retain_dead: Option<Spanned<String>>,
    pub prune_interval: Option<Spanned<String>>,
    pub disk_budget: Option<Spanned<i64>>,
    pub min_free_bytes: Option<Spanned<i64>>,
    pub write_timeout: Option<Spanned<String>>,
    pub log_segment_bytes: Option<Spanned<i64>>,
    pub backend: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub url_env: Option<Spanned<String>>,
    pub pool_size: Option<Spanned<i64>>,
    pub lease: Option<Spanned<String>>,
    pub instance: Option<Spanned<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub max_retries: Option<Spanned<i64>>,
    pub initial_delay: Option<Spanned<String>>,
    pub multiplier: Option<Spanned<f64>>,
    pub jitter: Option<Spanned<f64>>,
    pub max_delay: Option<Spanned<String>>,
    pub retry_after_max: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    pub connect_timeout: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub concurrency: Option<Spanned<i64>>,
    pub user_agent: Option<Spanned<String>>,
    pub suspend_after: Option<Spanned<i64>>,
    pub probe_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    pub path: Spanned<String>,
    pub token: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub routing_key: Option<Spanned<String>>,
    pub secrets: Option<Spanned<Vec<String>>>,
    pub secrets_env: Option<Spanned<String>>,
}

/// One flat table for every target kind, so spans survive deserialization (an internally
/// tagged enum would buffer the values and lose them). Validation rejects the keys a kind
/// does not take.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    pub url: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    pub headers: Option<BTreeMap<String, Spanned<String>>>,
    pub body: Option<Spanned<String>>,
    pub template: Option<Spanned<String>>,
    pub body_escape: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub ordering_key: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub concurrency: Option<Spanned<i64>>,
    pub sources: Option<Spanned<Vec<String>>>,
    pub retry: Option<Spanned<RawRetry>>,
    pub receive: Option<Spanned<String>>,
    pub filter: Option<Vec<RawCondition>>,
    pub collector: Option<Spanned<String>>,
    pub app_id: Option<Spanned<String>>,
    pub platform: Option<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub key_field: Option<Spanned<String>>,
    pub suspend_after: Option<Spanned<i64>>,
    pub probe_interval: Option<Spanned<String>>,
    pub url_env: Option<Spanned<String>>,
    pub fire_on: Option<Spanned<Vec<String>>>,
    pub signing_secrets: Option<Spanned<Vec<String>>>,
    pub signing_secrets_env: Option<Spanned<String>>,
}
