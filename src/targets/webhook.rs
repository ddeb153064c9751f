//! `webhook`: any HTTP endpoint, with method, URL, headers and body rendered from templates.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::Value;

use super::{AttemptResult, EXCERPT_BYTES};
use crate::config::WebhookSpec;
use crate::deliver::parse_retry_after;
use crate::template::Templates;

pub struct Webhook {
    spec: WebhookSpec,
}

impl Webhook {
    pub fn new(spec: WebhookSpec) -> Webhook {
        Webhook { spec }
    }

    fn build(
        &self,
        templates: &Templates,
        ctx: &Value,
    ) -> Result<(reqwest::Url, HeaderMap, String), String> {
        let url = templates
            .render(&self.spec.url, ctx)
            .map_err(|e| format!("url template: {e}"))?;
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| format!("rendered URL {url:?} is invalid: {e}"))?;
        let origin = (
            parsed.scheme().to_owned(),
            parsed.host_str().unwrap_or_default().to_owned(),
            parsed.port_or_known_default().unwrap_or(0),
        );
        if origin != self.spec.origin {
            return Err(format!("rendered URL {url:?} leaves the configured host"));
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
        let body = templates
            .render(&self.spec.body, ctx)
            .map_err(|e| format!("body template: {e}"))?;
        Ok((parsed, headers, body))
    }

    pub async fn send(
        &self,
        client: &reqwest::Client,
        templates: &Templates,
        ctx: &Value,
        timeout: Duration,
    ) -> AttemptResult {
        let (url, headers, body) = match self.build(templates, ctx) {
            Ok(parts) => parts,
            Err(e) => return AttemptResult::Invalid(e),
        };
        let request = client
            .request(self.spec.method.clone(), url)
            .headers(headers)
            .body(body)
            .timeout(timeout);
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let mut excerpt = Vec::new();
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt
                    .extend_from_slice(&chunk[..chunk.len().min(EXCERPT_BYTES - excerpt.len())]),
                Ok(None) => break,
                // The status is what counts; a body cut short only shortens the excerpt.
                Err(_) => break,
            }
        }
        AttemptResult::Response {
            status,
            retry_after,
            excerpt: (!excerpt.is_empty()).then(|| String::from_utf8_lossy(&excerpt).into_owned()),
        }
    }
}

fn transport_error(e: &reqwest::Error) -> AttemptResult {
    if e.is_timeout() {
        AttemptResult::Timeout
    } else if e.is_connect() {
        AttemptResult::Connect(error_chain(e))
    } else {
        AttemptResult::Io(error_chain(e))
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); keep the chain.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
