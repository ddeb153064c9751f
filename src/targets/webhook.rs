//! `webhook`: any HTTP endpoint, with method, URL, headers and body rendered from templates.

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

use super::{redacted, same_origin, Prepared};
use crate::config::WebhookSpec;
use crate::template::{Context, RenderFailure, Templates};

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

    pub fn prepare(&self, templates: &Templates, ctx: &Context) -> Result<Prepared, String> {
        let url = match templates.render(&self.spec.url, ctx) {
            Ok(u) => u,
            Err(RenderFailure::MissingVariable(v)) => {
                return Ok(Prepared::Skip(format!(
                    "the URL needs ${{{{{v}}}}}, which this event does not have"
                )))
            }
            Err(e) => return Err(format!("url template: {e}")),
        };
        let parsed =
            reqwest::Url::parse(&url).map_err(|e| format!("the rendered URL is invalid: {e}"))?;
        if !same_origin(&parsed, &self.spec.origin) {
            return Err(format!(
                "the rendered URL {} leaves the configured host",
                redacted(&url)
            ));
        }
        let mut headers = HeaderMap::with_capacity(self.spec.headers.len());
        for (name, template) in &self.spec.headers {
            let value = templates
                .render(template, ctx)
                .map_err(|e| format!("header {name}: {e}"))?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                format!("header {name}: rendered value is not a valid header value")
            })?;
            headers.insert(name.clone(), value);
        }
        // Deliveries are at least once: these let a receiver drop a repeat.
        for (name, value) in [
            (EVENT_ID, &ctx.data()["event"]["id"]),
            (DELIVERY_ID, &ctx.data()["delivery"]["id"]),
        ] {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&text) {
                headers.entry(name).or_insert(v);
            }
        }
        let body = templates
            .render(&self.spec.body, ctx)
            .map_err(|e| format!("body template: {e}"))?;
        Ok(Prepared::Http {
            method: self.spec.method.clone(),
            url: parsed,
            headers,
            body: body.into_bytes(),
        })
    }
}
