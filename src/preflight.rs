//! Config checks that need the runtime: a validated config is run once, without storing or
//! sending anything. `check-config`, startup and reload all go through [`load`].
//!
//! Today one check: a body that must be JSON (its Content-Type is JSON) is rendered with every
//! built-in sample (`hookrelay send-test list`) that reaches its target, after the rules, and
//! must parse as JSON. Values are JSON-escaped, so a body that does not parse has broken
//! template text (a missing quote or comma, a triple-stash); it would fail for every event, so
//! it is a config error rather than a dead letter per event. A sample the template cannot
//! render at all (strict mode: a field that sample's format lacks) proves nothing and is
//! passed over; an empty body is allowed.

use std::path::Path;

use crate::config::{Config, ConfigError, SourceConfig, TargetKind};
use crate::deliver::context;
use crate::ingest::prepare_alert;
use crate::normalize::{normalize, Received};
use crate::samples::SAMPLES;
use crate::store::Delivery;

/// [`Config::load`], then [`check`].
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let config = Config::load(path)?;
    check(&config)?;
    Ok(config)
}

/// Renders every JSON body with every built-in sample its target can get.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    for t in &config.targets {
        let (TargetKind::Webhook(spec) | TargetKind::Statushub(spec)) = &t.kind else {
            continue;
        };
        let Some(origin) = &spec.json_body else {
            continue;
        };
        let takes = |s: &&SourceConfig| t.sources.as_ref().is_none_or(|l| l.contains(&s.name));
        for sample in SAMPLES {
            let Some(source) = config
                .sources
                .iter()
                .filter(takes)
                .find(|s| s.kind == sample.kind)
            else {
                continue;
            };
            let received = Received {
                source: &source.name,
                kind: source.kind,
                content_type: Some(sample.content_type),
                body: bytes::Bytes::from_static(sample.body),
                query: Default::default(),
                received_at: chrono::Utc::now(),
                webhook_id: None,
            };
            let Ok(events) = normalize(&received) else {
                continue;
            };
            for mut event in events {
                prepare_alert(&mut event, source, &config.rules);
                let delivery = Delivery::placeholder(uuid::Uuid::nil(), 0);
                let ctx = context(&event, &delivery, 1, &t.name, t.needs());
                let Ok(body) = config.templates.render(&spec.body, &ctx) else {
                    continue;
                };
                if body.trim().is_empty() {
                    continue;
                }
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&body) {
                    return Err(origin.error(format!(
                        "the body is sent as JSON but renders invalid JSON for the built-in \
                         sample {} ({e}): values are JSON-escaped, so check the template's own \
                         quotes and commas, write objects with {{{{json x}}}}, or set a \
                         Content-Type header that is not JSON",
                        sample.name
                    )));
                }
            }
        }
    }
    Ok(())
}
