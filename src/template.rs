//! Handlebars rendering of target requests.
//!
//! Where a value lands decides how it is escaped, so one registry exists per escape mode:
//! percent-encoding for URLs (an event can then never add a path segment, query parameter or
//! another host), JSON string escaping for JSON bodies, and none for headers and plain bodies.
//! Handlebars' own HTML escaping is never what a webhook wants. Strict mode makes a reference to
//! a missing field an error instead of an empty string, so a typo fails loudly once rather than
//! sending empty alerts forever.
//!
//! Templates are compiled when the config is validated; rendering only looks them up by name.

use handlebars::{Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

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
    None,
}

/// A compiled template: which registry holds it, under which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    escape: Escape,
    name: String,
}

pub struct Templates {
    url: Handlebars<'static>,
    json: Handlebars<'static>,
    plain: Handlebars<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

fn registry(escape: fn(&str) -> String) -> Handlebars<'static> {
    let mut h = Handlebars::new();
    h.set_strict_mode(true);
    h.set_prevent_indent(true);
    h.register_escape_fn(escape);
    h.register_helper("json", Box::new(JsonHelper));
    h
}

fn escape_url(s: &str) -> String {
    utf8_percent_encode(s, URL_VALUE).to_string()
}

fn escape_json(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_owned()
}

impl Default for Templates {
    fn default() -> Self {
        Templates {
            url: registry(escape_url),
            json: registry(escape_json),
            plain: registry(handlebars::no_escape),
        }
    }
}

impl Templates {
    fn registry(&self, escape: Escape) -> &Handlebars<'static> {
        match escape {
            Escape::Url => &self.url,
            Escape::Json => &self.json,
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
            Escape::None => &mut self.plain,
        };
        reg.register_template_string(name, source)
            .map_err(|e| e.to_string())?;
        Ok(TemplateRef {
            escape,
            name: name.to_owned(),
        })
    }

    pub fn render(&self, template: &TemplateRef, ctx: &Value) -> Result<String, String> {
        self.registry(template.escape)
            .render(&template.name, ctx)
            .map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(escape: Escape, src: &str, ctx: Value) -> Result<String, String> {
        let mut t = Templates::default();
        let r = t.register(escape, "t", src)?;
        t.render(&r, &ctx)
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

    #[test]
    fn strict_mode_rejects_missing_fields() {
        let err = render(Escape::None, "{{alert.nope}}", json!({"alert": {}})).unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn compile_errors_are_reported() {
        assert!(render(Escape::None, "{{#if}}", json!({})).is_err());
    }
}
