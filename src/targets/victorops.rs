//! `victorops`: every alert to a VictorOps / Splunk On-Call REST endpoint integration,
//! `POST .../integrations/generic/20131114/alert/<api key>/<routing key>`, so a team keeps
//! paging through VictorOps while the relay also drives StatusHub. VictorOps keeps its own
//! incidents, so every alert goes (INFO ones too: VictorOps puts them on its timeline).
//!
//! The body is the REST alert format: a JSON object of the alert's fields, `message_type` (the
//! one required field) upper case, `entity_id`, `entity_display_name`, `state_message`,
//! `monitoring_tool`, and `timestamp` / `state_start_time` as numbers of Unix seconds; every
//! other alert field (rule-set fields, annotations as `vo_annotate.*`) is passed as a string,
//! as VictorOps takes custom fields. The URL is a template (`${{ALERT.routing_key}}` picks the
//! routing key per alert); its scheme, host and port are fixed by the config.

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde_json::{Map, Value};

use super::webhook::{id_headers, render_url};
use super::{Outgoing, Prepared};
use crate::template::{Context, ContextNeeds, TemplateRef, Templates};

/// The part of a REST endpoint URL's path before the API key.
pub const REST_PATH: &str = "/integrations/generic/20131114/alert/";

/// Alert fields VictorOps reads as Unix seconds.
const SECONDS_FIELDS: [&str; 2] = ["timestamp", "state_start_time"];

#[derive(Debug, Clone)]
pub struct VictoropsSpec {
    pub url: TemplateRef,
    pub origin: (String, String, u16),
    /// What of the template context the URL reads.
    pub needs: ContextNeeds,
}

pub struct Victorops {
    spec: VictoropsSpec,
}

impl Victorops {
    pub fn new(spec: VictoropsSpec) -> Victorops {
        Victorops { spec }
    }

    pub fn prepare(&self, templates: &Templates, ctx: &Context) -> Result<Prepared, String> {
        let url = match render_url(templates, &self.spec.url, &self.spec.origin, ctx)? {
            Ok(url) => url,
            Err(skip) => return Ok(skip),
        };
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        id_headers(&mut headers, ctx);
        let body = alert_body(&ctx.data()["alert"]);
        Ok(Prepared::Http(Outgoing {
            method: reqwest::Method::POST,
            url,
            headers,
            body: serde_json::to_vec(&body)
                .expect("JSON values serialize")
                .into(),
        }))
    }
}

/// The REST alert for an event's `alert` map.
fn alert_body(alert: &Value) -> Value {
    let mut out = Map::new();
    for (k, v) in alert.as_object().into_iter().flatten() {
        let text = v.as_str().unwrap_or_default();
        let value = match k.as_str() {
            "message_type" => Value::String(text.to_ascii_uppercase()),
            k if SECONDS_FIELDS.contains(&k) => text
                .parse::<i64>()
                .map_or_else(|_| Value::String(text.to_owned()), Value::from),
            _ => Value::String(text.to_owned()),
        };
        out.insert(k.clone(), value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the body's types: the message type upper case, times as numbers.
    #[test]
    fn times_are_numbers_and_the_message_type_upper_case() {
        let body = alert_body(&serde_json::json!({
            "message_type": "critical", "timestamp": "1622813729", "state_start_time": "x",
            "entity_id": "PFQZPSY"
        }));
        assert_eq!(
            body,
            serde_json::json!({"message_type": "CRITICAL", "timestamp": 1622813729,
                "state_start_time": "x", "entity_id": "PFQZPSY"})
        );
    }
}
