//! hookrelay: a durable webhook relay for operations alert traffic.
//!
//! It receives StatusGator and PagerDuty webhooks, turns each into a normalized [`Event`],
//! stores it durably before answering the sender, and delivers it to every configured target
//! with persisted retries.
//!
//! Module map, in the order an event flows through them:
//!
//! | module | stage |
//! |---|---|
//! | [`config`] | TOML → validated, typed configuration (templates compiled, URLs checked, rules compiled) |
//! | [`preflight`] | config checks that run the config once: JSON bodies rendered with the built-in samples |
//! | `ingest` | HTTP server: routing by path, URL-token auth, body limits, error → status |
//! | [`normalize`] | StatusGator v1/v2/v3 and PagerDuty V1/V2/V3 bodies → [`Event`] with its `alert` map |
//! | [`rules`] | VictorOps-style rules (match, set, annotate, stop) and routing to targets |
//! | [`store`] | the [`store::Store`] trait; sled (one instance: a write-ahead log synced per group and holding event bodies, ready index, per-key FIFOs, leases) and PostgreSQL (several instances: head rows, `SKIP LOCKED` claims, named leases, `NOTIFY`) behind [`store::AnyStore`] |
//! | [`deliver`] | workers (`deliver_one`), classification (whether to retry) and [`deliver::RetryPolicy`] (when) |
//! | `targets` | one file per target kind: `webhook` (with Standard Webhooks `signing`), `file`, `snowplow`, `statushub` (firing on `incident` changes), `victorops` |
//! | [`template`] | Handlebars rendering with per-destination escaping |
//! | [`admin`] | admin API on its own listener, Prometheus metrics |
//! | [`relay`] | wiring, startup and graceful shutdown |
//! | `server` | the listeners' accept loop: connection limits (global, per address, idle first) |
//! | [`dry_run`] | `hookrelay rules test`: the whole path without storing or sending |
//! | [`samples`] | built-in sample payloads for `hookrelay send-test` |

pub mod admin;
pub mod config;
pub mod deliver;
pub mod dry_run;
mod ingest;
pub mod normalize;
pub mod preflight;
pub mod relay;
pub mod rules;
pub mod samples;
mod server;
pub mod store;
mod targets;
pub mod template;

#[cfg(test)]
mod proptests;

pub use config::Config;
pub use normalize::Event;
pub use relay::{run, Relay, RelayError};

/// An error with its causes, `outer: inner: innermost`. Client libraries put the useful part
/// in the causes: reqwest's top level says "error sending request", tokio-postgres's "db error".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
