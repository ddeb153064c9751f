//! `webhook`: any HTTP endpoint, with method, URL, headers and body rendered from templates,
//! signed as Standard Webhooks describes when the target has `signing_secrets` (see `signing`).

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

use super::signing::message_id;
use super::{redacted, same_origin, Prepared};
use crate::config::WebhookSpec;
use crate::template::{Context, RenderFailure, TemplateRef, Templates};

/// The event's id: the same on every delivery of one event, to every target.
pub const EVENT_ID: &str = "x-hookrelay-event-id";
/// The delivery's id: the same on every attempt of one delivery.
pub const DELIVERY_ID: &str = "x-hookrelay-delivery-id";

pub struct Webhook {
    spec: WebhookSpec,
}

impl Webhook {
    pub fn new(spec: WebhookSpec) -> Webhook {
        Webhook { spec }
    }

    pub fn fire_on(&self) -> Option<&super::incident::FireOn> {
        self.spec.fire_on.as_ref()
    }

    pub fn prepare(&self, templates: &Templates, ctx: &Context) -> Result<Prepared, String> {
        let parsed = match render_url(templates, &self.spec.url, &self.spec.origin, ctx)? {
            Ok(url) => url,
            Err(skip) => return Ok(skip),
        };
        let mut headers = HeaderMap::with_capacity(self.spec.headers.len() + 5);
        for (name, template) in &self.spec.headers {
            let value = templates
                .render(template, ctx)
                .map_err(|e| format!("header {name}: {e}"))?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                format!("header {name}: rendered value is not a valid header value")
            })?;
            headers.insert(name.clone(), value);
        }
        id_headers(&mut headers, ctx);
        let body = templates
            .render(&self.spec.body, ctx)
            .map_err(|e| format!("body template: {e}"))?
            .into_bytes();
        if !self.spec.signing.is_empty() {
            let id = message_id(&text(&ctx.data()["event"]["id"]), delivery_seq(ctx));
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.spec.signing.sign_into(&mut headers, &id, now, &body);
        }
        Ok(Prepared::Http {
            method: self.spec.method.clone(),
            url: parsed,
            headers,
            body,
        })
    }
}

/// Renders a target's URL and checks it kept its configured origin. `Ok(Err(skip))`: the URL
/// needs a variable the event lacks, so the delivery is skipped.
pub(super) fn render_url(
    templates: &Templates,
    url: &TemplateRef,
    origin: &(String, String, u16),
    ctx: &Context,
) -> Result<Result<reqwest::Url, Prepared>, String> {
    let url = match templates.render(url, ctx) {
        Ok(u) => u,
        Err(RenderFailure::MissingVariable(v)) => {
            return Ok(Err(Prepared::Skip(format!(
                "the URL needs ${{{{{v}}}}}, which this event does not have"
            ))))
        }
        Err(e) => return Err(format!("url template: {e}")),
    };
    let parsed =
        reqwest::Url::parse(&url).map_err(|e| format!("the rendered URL is invalid: {e}"))?;
    if !same_origin(&parsed, origin) {
        return Err(format!(
            "the rendered URL {} leaves the configured host",
            redacted(&url)
        ));
    }
    Ok(Ok(parsed))
}

/// Deliveries are at least once: these let a receiver drop a repeat.
pub(super) fn id_headers(headers: &mut HeaderMap, ctx: &Context) {
    for (name, value) in [
        (EVENT_ID, &ctx.data()["event"]["id"]),
        (DELIVERY_ID, &ctx.data()["delivery"]["id"]),
    ] {
        if let Ok(v) = HeaderValue::from_str(&text(value)) {
            headers.entry(name).or_insert(v);
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn delivery_seq(ctx: &Context) -> u64 {
    ctx.data()["delivery"]["id"].as_u64().unwrap_or(0)
}
