//! StatusGator v1 (form), v2 (JSON) and v3 (JSON) webhooks.
//!
//! The version is decided by the body: JSON when the Content-Type says so or the body starts
//! with `{`, otherwise form. A JSON object with a string `type` is v3, one with `service_name` and
//! `current_status` is v2. StatusGator documents no Content-Type for v2/v3, so the header alone
//! never decides.
//!
//! StatusGator sends no event id, so the dedup key is a digest of every field that tells one
//! webhook from another (including the texts: two alerts that differ only in their message are
//! two alerts, and calling them duplicates would lose one).
//!
//! `alert.entity_id` is the most specific stable identity the payload has: the v3 monitor id,
//! else the service slug or id, else the v1 service name. Every alert of one monitor therefore
//! shares an ordering key, and a target sees its downs and ups in order.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    digest, message_type_for, nonempty_at, parse_form, parse_json, parse_time, put, text_at,
    BodyType, Component, NormalizeError, Parsed, Service,
};

pub(crate) fn parse(text: &str, body_type: BodyType) -> Result<Vec<Parsed>, NormalizeError> {
    let looks_json = text.trim_start().starts_with('{');
    if body_type == BodyType::Json || looks_json {
        let value = parse_json(text)?;
        if !value.is_object() {
            return Err(NormalizeError::Shape(
                "a StatusGator JSON body must be an object".into(),
            ));
        }
        if value.get("type").is_some_and(Value::is_string) {
            return Ok(vec![v3(&value)]);
        }
        if value.get("service_name").is_some() && value.get("current_status").is_some() {
            return Ok(vec![v2(&value)]);
        }
        return Err(NormalizeError::Shape(
            "JSON body is not a StatusGator v2 or v3 payload: expected a string `type` (v3) \
             or `service_name` and `current_status` (v2)"
                .into(),
        ));
    }
    let pairs = parse_form(text.as_bytes())?;
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    for required in ["service_name", "current_status"] {
        if get(required).is_none() {
            return Err(NormalizeError::Shape(format!(
                "form body is not a StatusGator v1 payload: missing field `{required}`"
            )));
        }
    }
    let fields = V1Fields {
        name: get("service_name").unwrap_or_default(),
        slug: None,
        icon: get("favicon_url"),
        status_page: get("status_page_url"),
        home_page: get("home_page_url"),
        status: get("current_status").map(|s| s.to_ascii_lowercase()),
        last: get("last_status").map(|s| s.to_ascii_lowercase()),
        occurred: get("occurred_at"),
        message: None,
        details: None,
    };
    Ok(vec![flat("statusgator.v1", fields, Vec::new())])
}

/// The seven v1 fields, which v2 also carries at top level (plus message, details, slug).
struct V1Fields {
    name: String,
    slug: Option<String>,
    icon: Option<String>,
    status_page: Option<String>,
    home_page: Option<String>,
    status: Option<String>,
    last: Option<String>,
    occurred: Option<String>,
    message: Option<String>,
    details: Option<String>,
}

fn v2(v: &Value) -> Parsed {
    let fields = V1Fields {
        name: nonempty_at(v, &["service_name"]).unwrap_or_default(),
        slug: nonempty_at(v, &["slug"]),
        icon: nonempty_at(v, &["favicon_url"]),
        status_page: nonempty_at(v, &["status_page_url"]),
        home_page: nonempty_at(v, &["home_page_url"]),
        status: nonempty_at(v, &["current_status"]).map(|s| s.to_ascii_lowercase()),
        last: nonempty_at(v, &["last_status"]).map(|s| s.to_ascii_lowercase()),
        occurred: nonempty_at(v, &["occurred_at"]),
        message: nonempty_at(v, &["message"]),
        details: nonempty_at(v, &["details"]),
    };
    flat("statusgator.v2", fields, components(v))
}

fn flat(format: &'static str, f: V1Fields, components: Vec<Component>) -> Parsed {
    let status = f.status.clone().unwrap_or_else(|| "unknown".into());
    let dedup_key = digest(&[
        format,
        &f.name,
        f.occurred.as_deref().unwrap_or(""),
        &status,
        f.last.as_deref().unwrap_or(""),
        f.message.as_deref().unwrap_or(""),
        f.details.as_deref().unwrap_or(""),
    ]);
    let entity_id = f.slug.clone().unwrap_or_else(|| f.name.clone());
    let display = format!("{} is {}", f.name, status);
    let title = f.message.clone().unwrap_or_else(|| display.clone());
    let mut alert = base_alert(
        &entity_id,
        &display,
        &state_message(&title, &f.details),
        &status,
    );
    put(&mut alert, "service_name", Some(f.name.clone()));
    put(&mut alert, "service_slug", f.slug.clone());
    put(&mut alert, "status", Some(status.clone()));
    put(&mut alert, "previous_status", f.last.clone());
    put(&mut alert, "status_page_url", f.status_page.clone());
    put(&mut alert, "home_page_url", f.home_page.clone());
    put(&mut alert, "statusgator_type", Some("StatusChange".into()));
    Parsed {
        format,
        event_type: "status_change".into(),
        dedup_key,
        occurred_at: f.occurred.as_deref().and_then(parse_time),
        service: Service {
            id: None,
            name: Some(f.name),
            slug: f.slug,
            home_page_url: f.home_page,
            status_page_url: f.status_page,
            icon_url: f.icon,
        },
        status: Some(status),
        previous_status: f.last,
        title,
        details: f.details,
        components,
        alert,
        raw_range: None,
    }
}

fn v3(v: &Value) -> Parsed {
    let sg_type = text_at(v, &["type"]).unwrap_or_default();
    let event_type = match sg_type.as_str() {
        "StatusChange" => "status_change".to_owned(),
        "EarlyWarningSignal" => "early_warning".to_owned(),
        other => snake_case(other),
    };
    let service = Service {
        id: nonempty_at(v, &["service", "id"]),
        name: nonempty_at(v, &["service", "name"]),
        slug: nonempty_at(v, &["service", "slug"]),
        home_page_url: nonempty_at(v, &["service", "home_page_url"]),
        status_page_url: nonempty_at(v, &["service", "status_page_url"]),
        icon_url: nonempty_at(v, &["service", "icon_url"]),
    };
    let monitor_id = nonempty_at(v, &["monitor", "id"]);
    let name = nonempty_at(v, &["monitor", "display_name"])
        .or_else(|| service.name.clone())
        .or_else(|| nonempty_at(v, &["monitor", "url"]))
        .or_else(|| nonempty_at(v, &["monitor", "host"]))
        .unwrap_or_else(|| "unknown monitor".into());
    let recorded_at = nonempty_at(v, &["recorded_at"]);
    let status = nonempty_at(v, &["status"]).map(|s| s.to_ascii_lowercase());
    let previous = nonempty_at(v, &["previous_status"]).map(|s| s.to_ascii_lowercase());
    let message = nonempty_at(v, &["message"]);
    let summary = nonempty_at(v, &["summary"]);
    let details = nonempty_at(v, &["details"]);

    let (display, title, alert_status) = match (sg_type.as_str(), &status) {
        ("EarlyWarningSignal", _) => {
            let title = summary
                .clone()
                .unwrap_or_else(|| "Early warning signal".into());
            (format!("{name}: early warning"), title, "warn".to_owned())
        }
        (_, Some(s)) => {
            let display = format!("{name} is {s}");
            (
                display.clone(),
                message.clone().unwrap_or(display),
                s.clone(),
            )
        }
        (_, None) => {
            let title = message
                .clone()
                .or_else(|| summary.clone())
                .unwrap_or_else(|| format!("{name}: {sg_type}"));
            (format!("{name}: {sg_type}"), title, "unknown".to_owned())
        }
    };
    let entity_id = monitor_id
        .clone()
        .or_else(|| service.slug.clone())
        .or_else(|| service.id.clone())
        .unwrap_or_else(|| name.clone());
    let dedup_key = digest(&[
        "statusgator.v3",
        &sg_type,
        monitor_id.as_deref().unwrap_or(""),
        service.id.as_deref().unwrap_or(""),
        recorded_at.as_deref().unwrap_or(""),
        status.as_deref().unwrap_or(""),
        previous.as_deref().unwrap_or(""),
        summary.as_deref().unwrap_or(""),
        message.as_deref().unwrap_or(""),
        details.as_deref().unwrap_or(""),
    ]);
    let mut alert = base_alert(
        &entity_id,
        &display,
        &state_message(&title, &details),
        &alert_status,
    );
    put(&mut alert, "statusgator_type", Some(sg_type.clone()));
    put(&mut alert, "service_name", service.name.clone());
    put(&mut alert, "service_slug", service.slug.clone());
    put(&mut alert, "service_id", service.id.clone());
    put(&mut alert, "status", status.clone());
    put(&mut alert, "previous_status", previous.clone());
    put(
        &mut alert,
        "status_page_url",
        service.status_page_url.clone(),
    );
    put(&mut alert, "home_page_url", service.home_page_url.clone());
    put(&mut alert, "monitor_id", monitor_id);
    put(
        &mut alert,
        "monitor_type",
        nonempty_at(v, &["monitor", "type"]),
    );
    put(
        &mut alert,
        "monitor_name",
        nonempty_at(v, &["monitor", "display_name"]),
    );
    put(
        &mut alert,
        "monitor_url",
        nonempty_at(v, &["monitor", "url"]),
    );
    put(
        &mut alert,
        "monitor_host",
        nonempty_at(v, &["monitor", "host"]),
    );
    put(&mut alert, "board_id", nonempty_at(v, &["board", "id"]));
    put(&mut alert, "board_name", nonempty_at(v, &["board", "name"]));
    put(
        &mut alert,
        "yes_vote_url",
        nonempty_at(v, &["yes_vote_url"]),
    );
    put(&mut alert, "no_vote_url", nonempty_at(v, &["no_vote_url"]));
    Parsed {
        format: "statusgator.v3",
        event_type,
        dedup_key,
        occurred_at: recorded_at.as_deref().and_then(parse_time),
        service,
        status,
        previous_status: previous,
        title,
        details,
        components: components(v),
        alert,
        raw_range: None,
    }
}

fn components(v: &Value) -> Vec<Component> {
    let Some(list) = v.get("component_status_changes").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|c| {
            Some(Component {
                group: nonempty_at(c, &["group_name"]),
                name: text_at(c, &["name"])?,
                status: nonempty_at(c, &["current_status"]).map(|s| s.to_ascii_lowercase()),
                previous_status: nonempty_at(c, &["last_status"]).map(|s| s.to_ascii_lowercase()),
            })
        })
        .collect()
}

fn state_message(title: &str, details: &Option<String>) -> String {
    match details {
        Some(d) => format!("{title}\n\n{d}"),
        None => title.to_owned(),
    }
}

fn base_alert(
    entity_id: &str,
    display: &str,
    state_message: &str,
    status: &str,
) -> BTreeMap<String, String> {
    let (message_type, entity_state) = message_type_for(status);
    let mut alert = BTreeMap::new();
    alert.insert("entity_id".into(), entity_id.to_owned());
    alert.insert("entity_display_name".into(), display.to_owned());
    alert.insert("state_message".into(), state_message.to_owned());
    alert.insert("message_type".into(), message_type.into());
    alert.insert("entity_state".into(), entity_state.into());
    alert.insert("monitoring_tool".into(), "StatusGator".into());
    alert
}

/// `EarlyWarningSignal` → `early_warning_signal`, for v3 types the relay does not know yet.
fn snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_v3_types_are_kept_in_snake_case() {
        assert_eq!(snake_case("MaintenanceNotice"), "maintenance_notice");
        assert_eq!(snake_case(""), "unknown");
    }

    #[test]
    fn json_that_is_neither_version_is_rejected_with_the_reason() {
        let err = parse(r#"{"hello": 1}"#, BodyType::Json).unwrap_err();
        assert!(
            err.to_string().contains("expected a string `type`"),
            "{err}"
        );
        let err = parse("[1,2]", BodyType::Json).unwrap_err();
        assert!(err.to_string().contains("must be an object"), "{err}");
    }

    #[test]
    fn form_without_required_fields_names_the_field() {
        let err = parse("current_status=up", BodyType::Form).unwrap_err();
        assert_eq!(
            err.to_string(),
            "form body is not a StatusGator v1 payload: missing field `service_name`"
        );
    }

    #[test]
    fn json_sent_as_form_is_sniffed() {
        let p = parse(
            r#"{"service_name":"X","current_status":"down"}"#,
            BodyType::Form,
        )
        .unwrap();
        assert_eq!(p[0].format, "statusgator.v2");
        assert_eq!(p[0].alert["message_type"], "CRITICAL");
    }
}
