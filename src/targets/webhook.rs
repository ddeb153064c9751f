//! `webhook`: any HTTP endpoint, with method, URL, headers and body rendered from templates,
//! signed as Standard Webhooks describes when the target has `signing_secrets` (see `signing`).

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

use super::signing::message_id;
use super::{redacted, same_origin, Outgoing, Prepared};
use crate::config::WebhookSpec;
use crate::normalize::Event;
use crate::template::{Context, RenderFailure, Shape, TemplateRef, Templates};

/// The event's id: the same on every delivery of one event, to every target.
pub const EVENT_ID: &str = "x-hookrelay-event-id";
/// The delivery's id: the same on every attempt of one delivery.
pub const DELIVERY_ID: &str = "x-hookrelay-delivery-id";

pub struct Webhook {
    spec: WebhookSpec,
    /// The request's constant parts, when only the event's JSON and ids vary.
    direct: Option<Box<Direct>>,
}

/// A request whose URL and headers are constant and whose body is the default `{{json
/// event}}`: it is built straight from the event, without a template context (on the delivery
/// path, building the context and rendering were the larger part of an attempt's work).
struct Direct {
    url: reqwest::Url,
    headers: HeaderMap,
}

impl Direct {
    fn of(spec: &WebhookSpec) -> Option<Direct> {
        if spec.fire_on.is_some() || *spec.body.shape() != Shape::EventJson {
            return None;
        }
        let Shape::Constant(url) = spec.url.shape() else {
            return None;
        };
        // Anything [`Webhook::prepare`] would refuse is left to it, and its error.
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| same_origin(u, &spec.origin))?;
        let mut headers = HeaderMap::with_capacity(spec.headers.len() + 5);
        for (name, template) in &spec.headers {
            let Shape::Constant(value) = template.shape() else {
                return None;
            };
            headers.insert(name.clone(), HeaderValue::from_str(value).ok()?);
        }
        Some(Direct { url, headers })
    }
}

impl Webhook {
    pub fn new(spec: WebhookSpec) -> Webhook {
        let direct = Direct::of(&spec).map(Box::new);
        Webhook { spec, direct }
    }

    /// The request for delivery `seq` of `event` built without a template context, when the
    /// target's templates allow it (`None`: use [`Webhook::prepare`]); the same request.
    pub fn prepare_event(&self, event: &Event, seq: u64) -> Option<Prepared> {
        let direct = self.direct.as_ref()?;
        let mut headers = direct.headers.clone();
        for (name, value) in [(EVENT_ID, event.id.clone()), (DELIVERY_ID, seq.to_string())] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.entry(name).or_insert(v);
            }
        }
        let body = event.template_json();
        if !self.spec.signing.is_empty() {
            self.sign(&mut headers, &message_id(&event.id, seq), &body);
        }
        Some(Prepared::Http(Outgoing {
            method: self.spec.method.clone(),
            url: direct.url.clone(),
            headers,
            body,
        }))
    }

    fn sign(&self, headers: &mut HeaderMap, id: &str, body: &[u8]) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.spec.signing.sign_into(headers, id, now, body);
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
            self.sign(&mut headers, &id, &body);
        }
        Ok(Prepared::Http(Outgoing {
            method: self.spec.method.clone(),
            url: parsed,
            headers,
            body: body.into(),
        }))
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, TargetKind};
    use crate::deliver::context;
    use crate::normalize::{normalize, Received, SourceKind};
    use crate::store::Delivery;

    const CONFIG: &str = r#"
[[sources]]
name = "pd"
kind = "pagerduty"
path = "/pd"

[[targets]]
name = "plain"
kind = "webhook"
url = "http://127.0.0.1:9/hook?x=1"
headers = { "X-Team" = "ops" }
signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]

[[targets]]
name = "templated"
kind = "webhook"
url = "http://127.0.0.1:9/{{alert.entity_id}}"
"#;

    fn parts(p: Prepared) -> (reqwest::Method, String, Vec<(String, String)>, Vec<u8>) {
        let Prepared::Http(Outgoing {
            method,
            url,
            headers,
            body,
        }) = p
        else {
            panic!("not a request")
        };
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        (method, url.to_string(), headers, body.to_vec())
    }

    /// A webhook with a constant URL and headers and the default body builds its request
    /// straight from the event, and it is the request the templates render, byte for byte:
    /// method, URL, headers in order (the signature too, within one second), body (which
    /// leaves out the rules that matched). A templated URL takes the templates' path.
    /// Guards `Event::for_templates` and the direct path against drifting from the
    /// templates: with the whole event serialized (its `matched_rules`), or without the id
    /// headers, this fails.
    #[test]
    fn the_direct_request_is_the_rendered_one() {
        let config = Config::parse(CONFIG, "test.toml", Path::new("/tmp")).unwrap();
        let body = include_str!("../../tests/fixtures/pagerduty-v3-incident-triggered.json");
        let mut event = normalize(&Received {
            source: "pd",
            kind: SourceKind::Pagerduty,
            content_type: Some("application/json"),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            query: [("q".to_owned(), "v\"1".to_owned())].into(),
            received_at: chrono::Utc::now(),
            webhook_id: None,
        })
        .unwrap()
        .remove(0);
        event.matched_rules = vec!["a rule".into()];
        let t = &config.targets[0];
        let TargetKind::Webhook(spec) = &t.kind else {
            panic!("a webhook")
        };
        let webhook = Webhook::new(spec.clone());
        let mut delivery = Delivery::placeholder(uuid::Uuid::now_v7(), 1);
        delivery.seq = 42;
        let build = || {
            let direct = webhook.prepare_event(&event, 42).expect("direct");
            let ctx = context(&event, &delivery, 1, &t.name, t.needs());
            let rendered = webhook.prepare(&config.templates, &ctx).unwrap();
            (parts(direct), parts(rendered))
        };
        // The signature covers the second it was made in: a pair may straddle one.
        let mut pair = build();
        if pair.0 != pair.1 {
            pair = build();
        }
        let (direct, rendered) = pair;
        assert_eq!(direct, rendered);
        let names: Vec<&str> = direct.2.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&EVENT_ID) && names.contains(&"webhook-signature"));
        assert!(!String::from_utf8_lossy(&direct.3).contains("matched_rules"));

        let TargetKind::Webhook(templated) = &config.targets[1].kind else {
            panic!("a webhook")
        };
        assert!(Webhook::new(templated.clone())
            .prepare_event(&event, 42)
            .is_none());
    }
}
