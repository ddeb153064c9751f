//! Handlebars rendering of target requests.
//!
//! Where a value lands decides how it is escaped, so one registry exists per escape mode:
//! percent-encoding for URLs (an event can then never add a path segment, query parameter or
//! another host), JSON string escaping for JSON bodies, form encoding for form bodies, and none
//! for headers and other bodies. A body's mode follows its Content-Type
//! ([`Escape::for_content_type`]).
//! Handlebars' own HTML escaping is never what a webhook wants. Strict mode makes a reference to
//! a missing field an error instead of an empty string, so a typo fails loudly once rather than
//! sending empty alerts forever.
//!
//! Templates are compiled when the config is validated; rendering only looks them up by name.
//!
//! VictorOps-style variables, `${{ALERT.field}}`, `${{STATE.FIELD}}`, `${{INCIDENT.FIELD}}`, work
//! beside Handlebars. They are compiled into calls of the `vo` helper, never substituted as text,
//! so a value coming from an event can never be read as template syntax. They look up the flat
//! variable map in the context's `vo` object (see `normalize::victorops`). A variable the event
//! lacks makes a URL unusable: the render fails with [`RenderFailure::MissingVariable`] and the
//! delivery is skipped, as VictorOps does not fire such a webhook. In a body it renders empty.

pub use handlebars::Context;
use handlebars::{Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::normalize::{classify_content_type, BodyType};

/// The body template a `webhook` target uses when it sets neither `body` nor `template`.
pub const DEFAULT_BODY: &str = include_str!("../templates/event.json.hbs");

/// Everything but RFC 3986's unreserved characters is encoded.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    Url,
    Json,
    /// `application/x-www-form-urlencoded` values: `+` for a space, everything but
    /// alphanumerics and `*-._` percent-encoded, so no value can add or split a field.
    Form,
    None,
}

impl Escape {
    /// How values are escaped into a body with this Content-Type: JSON for `application/json`,
    /// `text/json` and `+json` types, form encoding for forms, as they are for anything else.
    pub fn for_content_type(content_type: Option<&str>) -> Escape {
        match classify_content_type(content_type) {
            Some(BodyType::Json) => Escape::Json,
            Some(BodyType::Form) => Escape::Form,
            _ => Escape::None,
        }
    }
}

/// The parts of a delivery's template context that cost work to build (parsing the sender's
/// payload, deriving the VictorOps variables, copying the raw body), and whether a target's
/// templates read them. Built only when read: on the delivery path that is most of the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextNeeds {
    pub payload: bool,
    pub vo: bool,
    pub raw: bool,
}

impl ContextNeeds {
    pub const NONE: ContextNeeds = ContextNeeds {
        payload: false,
        vo: false,
        raw: false,
    };
    pub const ALL: ContextNeeds = ContextNeeds {
        payload: true,
        vo: true,
        raw: true,
    };

    /// From template sources, erring towards building: any mention of a part, or any way of
    /// reaching the whole context indirectly (`this`, `@root`, `../`, `lookup`), counts.
    pub fn of_templates(sources: &[&str]) -> ContextNeeds {
        let any = |word: &str| sources.iter().any(|s| s.contains(word));
        if ["this", "@root", "../", "lookup"].iter().any(|w| any(w)) {
            return ContextNeeds::ALL;
        }
        ContextNeeds {
            payload: any("payload"),
            vo: any("vo") || any("${{"),
            raw: any("raw"),
        }
    }
}

/// A compiled template: which registry holds it, under which name, and what its source is
/// when that makes rendering unnecessary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    escape: Escape,
    name: String,
    shape: Shape,
}

/// Sources whose rendering is known without Handlebars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// No `{{` anywhere: it renders as itself.
    Constant(String),
    /// Exactly [`DEFAULT_BODY`]: the event as JSON ([`crate::normalize::Event::template_json`]).
    EventJson,
    Other,
}

impl TemplateRef {
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
}

pub struct Templates {
    url: Handlebars<'static>,
    json: Handlebars<'static>,
    form: Handlebars<'static>,
    plain: Handlebars<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

fn registry(escape: fn(&str) -> String, missing_is_error: bool) -> Handlebars<'static> {
    let mut h = Handlebars::new();
    h.set_strict_mode(true);
    h.set_prevent_indent(true);
    h.register_escape_fn(escape);
    h.register_helper("json", Box::new(JsonHelper));
    h.register_helper(
        "vo",
        Box::new(VoHelper {
            escape,
            missing_is_error,
        }),
    );
    h
}

/// Why a render produced nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderFailure {
    /// A `${{NS.FIELD}}` variable in a URL has no value for this event.
    MissingVariable(String),
    /// Anything else: a missing Handlebars field (strict mode), a helper error.
    Error(String),
}

impl std::fmt::Display for RenderFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderFailure::MissingVariable(v) => {
                write!(f, "the event has no value for ${{{{{v}}}}}")
            }
            RenderFailure::Error(e) => f.write_str(e),
        }
    }
}

const MISSING_MARKER: &str = "hookrelay: missing variable ";

/// Rewrites `${{NS.FIELD}}` into `{{vo "NS.FIELD"}}`. Errors on an unclosed variable.
pub fn compile_vo_variables(source: &str) -> Result<String, String> {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after.find("}}").ok_or_else(|| {
            // The first 40 characters, never cut inside one.
            let shown: String = rest[start..].chars().take(40).collect();
            format!("unclosed variable at {shown:?}")
        })?;
        let name = after[..end].trim();
        if name.is_empty() || name.contains(['"', '\\', '{', '}']) {
            return Err(format!("bad variable name {name:?}"));
        }
        out.push_str("{{vo \"");
        out.push_str(name);
        out.push_str("\"}}");
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn escape_url(s: &str) -> String {
    utf8_percent_encode(s, URL_VALUE).to_string()
}

fn escape_form(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn escape_json(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_owned()
}

impl Default for Templates {
    fn default() -> Self {
        Templates {
            url: registry(escape_url, true),
            json: registry(escape_json, false),
            form: registry(escape_form, false),
            plain: registry(handlebars::no_escape, false),
        }
    }
}

impl Templates {
    fn registry(&self, escape: Escape) -> &Handlebars<'static> {
        match escape {
            Escape::Url => &self.url,
            Escape::Json => &self.json,
            Escape::Form => &self.form,
            Escape::None => &self.plain,
        }
    }

    /// Compiles `source` under `name`; the error text comes from the template parser.
    pub fn register(
        &mut self,
        escape: Escape,
        name: &str,
        source: &str,
    ) -> Result<TemplateRef, String> {
        let reg = match escape {
            Escape::Url => &mut self.url,
            Escape::Json => &mut self.json,
            Escape::Form => &mut self.form,
            Escape::None => &mut self.plain,
        };
        let shape = if !source.contains("{{") {
            Shape::Constant(source.to_owned())
        } else if source == DEFAULT_BODY {
            Shape::EventJson
        } else {
            Shape::Other
        };
        let source = compile_vo_variables(source)?;
        reg.register_template_string(name, source)
            .map_err(|e| e.to_string())?;
        Ok(TemplateRef {
            escape,
            name: name.to_owned(),
            shape,
        })
    }

    /// `ctx` is made once per delivery and rendered by every template of it: handing
    /// handlebars a `Value` instead would have it copy the whole context for each one.
    pub fn render(&self, template: &TemplateRef, ctx: &Context) -> Result<String, RenderFailure> {
        if let Shape::Constant(text) = &template.shape {
            return Ok(text.clone());
        }
        self.registry(template.escape)
            .render_with_context(&template.name, ctx)
            .map_err(|e| {
                let text = e.to_string();
                match text.find(MISSING_MARKER) {
                    Some(i) => {
                        let name = text[i + MISSING_MARKER.len()..]
                            .split_whitespace()
                            .next()
                            .unwrap_or("");
                        RenderFailure::MissingVariable(name.to_owned())
                    }
                    None => RenderFailure::Error(text),
                }
            })
    }
}

/// `{{json value}}` writes the value as JSON, unescaped: the way to embed an object, a
/// string with its quotes, or the whole payload in a JSON body.
struct JsonHelper;

impl HelperDef for JsonHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let param = h
            .param(0)
            .ok_or_else(|| handlebars::RenderErrorReason::ParamNotFoundForIndex("json", 0))?;
        let text = serde_json::to_string(param.value())
            .map_err(|e| handlebars::RenderErrorReason::Other(e.to_string()))?;
        out.write(&text)?;
        Ok(())
    }
}

/// `{{vo "NS.FIELD"}}`: a VictorOps variable from the context's `vo` map, escaped for where it
/// lands.
struct VoHelper {
    escape: fn(&str) -> String,
    missing_is_error: bool,
}

impl HelperDef for VoHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let name = h
            .param(0)
            .and_then(|p| p.value().as_str())
            .unwrap_or_default();
        let value = ctx.data().get("vo").and_then(|vo| vo.get(name));
        let text = match value {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => {
                if self.missing_is_error {
                    return Err(handlebars::RenderErrorReason::Other(format!(
                        "{MISSING_MARKER}{name} "
                    ))
                    .into());
                }
                String::new()
            }
            Some(other) => other.to_string(),
        };
        out.write(&(self.escape)(&text))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(escape: Escape, src: &str, ctx: Value) -> Result<String, String> {
        let mut t = Templates::default();
        let r = t.register(escape, "t", src)?;
        t.render(&r, &Context::from(ctx)).map_err(|e| e.to_string())
    }

    #[test]
    fn victorops_variables_escape_per_destination_and_skip_urls_missing_them() {
        let ctx = json!({"vo": {"ALERT.key": "a/b c", "ALERT.msg": "say \"hi\"", "STATE.ALERT_COUNT": 1}});
        assert_eq!(
            render(
                Escape::Url,
                "https://h/hook?token=${{ALERT.key}}&n=${{ STATE.ALERT_COUNT }}",
                ctx.clone()
            )
            .unwrap(),
            "https://h/hook?token=a%2Fb%20c&n=1"
        );
        assert_eq!(
            render(
                Escape::Json,
                r#"{"m":"${{ALERT.msg}}","x":"${{ALERT.none}}"}"#,
                ctx.clone()
            )
            .unwrap(),
            r#"{"m":"say \"hi\"","x":""}"#
        );
        let mut t = Templates::default();
        let r = t
            .register(
                Escape::Url,
                "u",
                "https://h/?token=${{ALERT.StatusHubfield}}",
            )
            .unwrap();
        assert_eq!(
            t.render(&r, &Context::from(ctx)),
            Err(RenderFailure::MissingVariable(
                "ALERT.StatusHubfield".into()
            ))
        );
    }

    #[test]
    fn event_text_is_never_read_as_template_syntax() {
        let ctx = json!({"vo": {"ALERT.a": "{{vo \"ALERT.b\"}} ${{ALERT.b}}", "ALERT.b": "secret"}, "t": "{{t}}"});
        assert_eq!(
            render(Escape::None, "${{ALERT.a}} {{t}}", ctx).unwrap(),
            "{{vo \"ALERT.b\"}} ${{ALERT.b}} {{t}}"
        );
    }

    #[test]
    fn variable_syntax_errors() {
        assert!(compile_vo_variables("x ${{ALERT.a").is_err());
        // The error quotes the start of the variable: 40 characters, not bytes, so a
        // character that straddles byte 40 is not cut (this panicked once).
        let long = "${{ A ¡0ა ে𐏈A\u{e0100}𑘀 𒾐A®𐞲";
        assert_eq!(
            compile_vo_variables(long).unwrap_err(),
            format!("unclosed variable at {long:?}")
        );
        assert!(compile_vo_variables("${{}}").is_err());
        assert_eq!(
            compile_vo_variables("a${{ ALERT.x }}b").unwrap(),
            "a{{vo \"ALERT.x\"}}b"
        );
    }

    #[test]
    fn url_values_are_percent_encoded() {
        let out = render(
            Escape::Url,
            "http://h/x/{{a}}?q={{b}}",
            json!({"a": "../evil host", "b": "a&b=c#d/é"}),
        )
        .unwrap();
        assert_eq!(out, "http://h/x/..%2Fevil%20host?q=a%26b%3Dc%23d%2F%C3%A9");
    }

    #[test]
    fn json_values_are_string_escaped_and_json_helper_embeds() {
        let out = render(
            Escape::Json,
            r#"{"t":"{{a}}","o":{{json o}}}"#,
            json!({"a": "say \"hi\"\n<b>", "o": {"k": [1, "x"]}}),
        )
        .unwrap();
        assert_eq!(out, r#"{"t":"say \"hi\"\n<b>","o":{"k":[1,"x"]}}"#);
        serde_json::from_str::<Value>(&out).unwrap();
    }

    /// Guards form bodies: a value can neither add a field nor split one. (Seen failing with
    /// form bodies rendered unescaped.)
    #[test]
    fn form_values_are_form_encoded() {
        let out = render(
            Escape::Form,
            "text={{a}}&n=${{ALERT.n}}",
            json!({"a": "a&b=c d+e%", "vo": {"ALERT.n": "x=1&y"}}),
        )
        .unwrap();
        assert_eq!(out, "text=a%26b%3Dc+d%2Be%25&n=x%3D1%26y");
        let pairs: Vec<(String, String)> = form_urlencoded::parse(out.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            pairs,
            [
                ("text".into(), "a&b=c d+e%".into()),
                ("n".into(), "x=1&y".into())
            ]
        );
    }

    #[test]
    fn escape_follows_the_content_type() {
        for (ct, want) in [
            (Some("application/json"), Escape::Json),
            (Some("Application/JSON; charset=utf-8"), Escape::Json),
            (Some("application/vnd.api+json"), Escape::Json),
            (Some("application/x-www-form-urlencoded"), Escape::Form),
            (Some("text/plain"), Escape::None),
            (None, Escape::None),
        ] {
            assert_eq!(Escape::for_content_type(ct), want, "{ct:?}");
        }
    }

    #[test]
    fn strict_mode_rejects_missing_fields() {
        let err = render(Escape::None, "{{alert.nope}}", json!({"alert": {}})).unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn context_needs_err_towards_building() {
        assert_eq!(
            ContextNeeds::of_templates(&["{{json event}}", "http://h/{{alert.x}}"]),
            ContextNeeds::NONE
        );
        assert_eq!(
            ContextNeeds::of_templates(&["{{payload.a}}"]),
            ContextNeeds {
                payload: true,
                ..ContextNeeds::NONE
            }
        );
        assert_eq!(
            ContextNeeds::of_templates(&["x ${{ALERT.a}}"]),
            ContextNeeds {
                vo: true,
                ..ContextNeeds::NONE
            }
        );
        assert_eq!(
            ContextNeeds::of_templates(&["{{json vo}}", "{{raw.body}}"]),
            ContextNeeds {
                vo: true,
                raw: true,
                payload: false
            }
        );
        assert_eq!(
            ContextNeeds::of_templates(&["{{#each this}}{{/each}}"]),
            ContextNeeds::ALL
        );
        assert_eq!(
            ContextNeeds::of_templates(&["{{lookup event \"id\"}}"]),
            ContextNeeds::ALL
        );
    }

    #[test]
    fn compile_errors_are_reported() {
        assert!(render(Escape::None, "{{#if}}", json!({})).is_err());
    }
}
