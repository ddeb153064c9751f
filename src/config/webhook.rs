//! Validation of the HTTP targets (`webhook`, `statushub`): URL, method, headers and body
//! templates, the Content-Type that decides how body values are escaped, and where a JSON body
//! was written so `crate::preflight` can name it.

use toml::Spanned;

use super::raw::RawTarget;
use super::{Origin, Result, Validator, WebhookSpec};
use crate::template::{ContextNeeds, Escape, Templates, DEFAULT_BODY};

impl Validator<'_> {
    /// A webhook spec; `default_url` makes it a StatusHub hook (URL and body defaults).
    pub(super) fn webhook(
        &self,
        i: usize,
        name: &str,
        t: &RawTarget,
        templates: &mut Templates,
        default_url: Option<String>,
    ) -> Result<WebhookSpec> {
        let key = |k: &str| format!("targets[{i}].{k}");
        let statushub = default_url.is_some();
        let default_url = default_url.map(|u| Spanned::new(t.kind.span(), u));
        let Some(url) = t.url.as_ref().or(default_url.as_ref()) else {
            return self.err(
                Some(t.name.span()),
                &key("url"),
                "a \"webhook\" target needs a url",
            );
        };
        let origin = self.origin(url, &key("url"))?;
        let url_ref = templates
            .register(Escape::Url, &format!("{name}/url"), url.get_ref())
            .or_else(|e| self.err(Some(url.span()), &key("url"), format!("bad template: {e}")))?;
        let method = match &t.method {
            None => reqwest::Method::POST,
            Some(m) => {
                match reqwest::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                    Ok(m) => m,
                    Err(_) => {
                        return self.err(
                            Some(m.span()),
                            &key("method"),
                            format!("{:?} is not an HTTP method", m.get_ref()),
                        )
                    }
                }
            }
        };
        let mut headers = Vec::new();
        let mut content_type = None;
        for (h, v) in t.headers.iter().flatten() {
            let hk = format!("targets[{i}].headers.{h}");
            let Ok(hname) = reqwest::header::HeaderName::from_bytes(h.as_bytes()) else {
                return self.err(
                    Some(v.span()),
                    &hk,
                    format!("{h:?} is not a valid header name"),
                );
            };
            if hname == reqwest::header::CONTENT_TYPE {
                content_type = Some(v.get_ref().to_ascii_lowercase());
            }
            let r = templates
                .register(Escape::None, &format!("{name}/header/{h}"), v.get_ref())
                .or_else(|e| self.err(Some(v.span()), &hk, format!("bad template: {e}")))?;
            headers.push((hname, r));
        }
        let (body_src, body_span, body_key) = match (&t.body, &t.template) {
            (Some(b), Some(_)) => {
                return self.err(
                    Some(b.span()),
                    &key("body"),
                    "set either body or template, not both",
                )
            }
            (Some(b), None) => (b.get_ref().clone(), Some(b.span()), key("body")),
            (None, Some(p)) => match std::fs::read_to_string(self.path(p.get_ref())) {
                Ok(s) => (s, Some(p.span()), key("template")),
                Err(e) => {
                    return self.err(
                        Some(p.span()),
                        &key("template"),
                        format!("cannot read {}: {e}", self.path(p.get_ref()).display()),
                    )
                }
            },
            (None, None) => {
                let default = if statushub {
                    crate::targets::STATUSHUB_BODY
                } else {
                    DEFAULT_BODY
                };
                (default.to_owned(), None, key("body"))
            }
        };
        // As VictorOps: a request with a body is JSON unless a Content-Type says otherwise.
        if content_type.is_none() && !body_src.is_empty() {
            let r = templates
                .register(
                    Escape::None,
                    &format!("{name}/header/content-type"),
                    "application/json",
                )
                .expect("a constant template compiles");
            headers.push((reqwest::header::CONTENT_TYPE, r));
            content_type = Some("application/json".into());
        }
        let escape = match t.body_escape.as_ref().map(|e| e.get_ref().as_str()) {
            None => Escape::for_content_type(content_type.as_deref()),
            Some("json") => Escape::Json,
            Some("form") => Escape::Form,
            Some("none") => Escape::None,
            Some(other) => {
                let span = t.body_escape.as_ref().map(|e| e.span());
                return self.err(
                    span,
                    &key("body_escape"),
                    format!("unknown escape {other:?}: expected \"json\", \"form\" or \"none\""),
                );
            }
        };
        let body = templates
            .register(escape, &format!("{name}/body"), &body_src)
            .or_else(|e| self.err(body_span.clone(), &body_key, format!("bad template: {e}")))?;
        let header_sources = t
            .headers
            .iter()
            .flatten()
            .map(|(_, v)| v.get_ref().as_str());
        let sources: Vec<&str> = [url.get_ref().as_str(), body_src.as_str()]
            .into_iter()
            .chain(header_sources)
            .collect();
        Ok(WebhookSpec {
            method,
            url: url_ref,
            origin,
            headers,
            body,
            needs: ContextNeeds::of_templates(&sources),
            signing: self.signing(i, t)?,
            fire_on: statushub.then(|| self.fire_on(i, t)).transpose()?,
            json_body: (escape == Escape::Json && !body_src.trim().is_empty()).then(|| Origin {
                file: self.file.to_owned(),
                line: Some(self.line_of(body_span.unwrap_or(t.name.span()).start)),
                key: body_key.clone(),
            }),
        })
    }

    /// The scheme, host and port of a URL template. They must be written out literally: an
    /// event may fill in the path and query, never choose where the request goes.
    pub(super) fn origin(&self, url: &Spanned<String>, key: &str) -> Result<(String, String, u16)> {
        let text = url.get_ref();
        let Some((scheme, rest)) = text.split_once("://") else {
            return self.err(
                Some(url.span()),
                key,
                format!("{text:?} must start with http:// or https://"),
            );
        };
        if scheme != "http" && scheme != "https" {
            return self.err(
                Some(url.span()),
                key,
                format!("scheme {scheme:?} is not http or https"),
            );
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('{') || authority.contains('}') {
            return self.err(Some(url.span()), key, "the host and port must be written out, not templated (an event must not choose where a request goes)");
        }
        match reqwest::Url::parse(&format!("{scheme}://{authority}/")) {
            Ok(u) if u.host_str().is_some() => Ok((
                u.scheme().to_owned(),
                u.host_str().unwrap_or_default().to_owned(),
                u.port_or_known_default().unwrap_or(0),
            )),
            _ => self.err(
                Some(url.span()),
                key,
                format!("{authority:?} is not a valid host"),
            ),
        }
    }
}
