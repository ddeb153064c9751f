//! Rules as written in `[[rules]]`, and their compilation. Problems carry the span and key so
//! the config module can name the line.

use std::collections::BTreeMap;
use std::ops::Range;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use super::{Condition, Expansion, Part, Rule, Rules};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    pub field: Spanned<String>,
    pub wildcard: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnnotation {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub label: Spanned<String>,
    pub value: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<Spanned<String>>,
    pub field: Spanned<String>,
    pub wildcard: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
    pub and: Option<RawCondition>,
    pub routing_key: Option<Spanned<String>>,
    pub set: Option<BTreeMap<String, Spanned<String>>>,
    pub annotations: Option<Vec<RawAnnotation>>,
    pub route: Option<Spanned<Vec<String>>>,
    pub stop: Option<bool>,
    pub enabled: Option<bool>,
}

#[derive(Debug)]
pub struct Problem {
    pub span: Option<Range<usize>>,
    pub key: String,
    pub message: String,
}

fn problem<T>(
    span: Option<Range<usize>>,
    key: &str,
    message: impl Into<String>,
) -> Result<T, Problem> {
    Err(Problem {
        span,
        key: key.to_owned(),
        message: message.into(),
    })
}

const MAX_REGEX: usize = 128;

fn wildcard_regex(pattern: &str) -> String {
    let parts: Vec<String> = pattern.split('*').map(regex::escape).collect();
    format!("(?is)\\A{}\\z", parts.join("(.*?)"))
}

pub fn compile_condition(raw: &RawCondition, key: &str) -> Result<Condition, Problem> {
    condition(&raw.field, raw.wildcard.as_ref(), raw.regex.as_ref(), key)
}

fn condition(
    field: &Spanned<String>,
    wildcard: Option<&Spanned<String>>,
    regex: Option<&Spanned<String>>,
    key: &str,
) -> Result<Condition, Problem> {
    if field.get_ref().is_empty() {
        return problem(
            Some(field.span()),
            &format!("{key}.field"),
            "must name an alert field",
        );
    }
    let (pattern, source) = match (wildcard, regex) {
        (Some(w), None) => (w.get_ref().clone(), wildcard_regex(w.get_ref())),
        (None, Some(r)) => {
            let text = r.get_ref();
            if text.chars().count() > MAX_REGEX {
                return problem(
                    Some(r.span()),
                    &format!("{key}.regex"),
                    format!(
                        "is {} characters long; the limit is {MAX_REGEX}",
                        text.chars().count()
                    ),
                );
            }
            // \A and \z, not ^ and $: a (?m) in the pattern must not make it match one line.
            (text.clone(), format!("\\A(?:{text})\\z"))
        }
        (Some(w), Some(_)) => {
            return problem(
                Some(w.span()),
                key,
                "set either wildcard or regex, not both",
            )
        }
        (None, None) => {
            return problem(
                Some(field.span()),
                key,
                "needs a wildcard or a regex to match the field with",
            )
        }
    };
    let regex = Regex::new(&source).or_else(|e| {
        let span = regex.map(|r| r.span());
        problem(
            span,
            &format!("{key}.regex"),
            format!(
                "bad regex: {}",
                e.to_string().lines().last().unwrap_or_default().trim()
            ),
        )
    })?;
    Ok(Condition {
        field: field.get_ref().clone(),
        pattern,
        regex,
    })
}

/// Parses `${{field}}` and `${{\N}}` references; `groups` is how many capture groups exist.
fn expansion(value: &Spanned<String>, key: &str, groups: usize) -> Result<Expansion, Problem> {
    let mut parts = Vec::new();
    let mut rest = value.get_ref().as_str();
    while let Some(start) = rest.find("${{") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            return problem(Some(value.span()), key, "an unclosed ${{ in the value");
        };
        let name = after[..end].trim();
        match name.strip_prefix('\\') {
            Some(n) => {
                let index: usize = n.parse().or_else(|_| {
                    problem(
                        Some(value.span()),
                        key,
                        format!(
                            "${{{{{name}}}}} is not a capture group reference like ${{{{\\1}}}}"
                        ),
                    )
                })?;
                if index == 0 || index >= groups {
                    return problem(
                        Some(value.span()),
                        key,
                        format!(
                            "uses ${{{{\\{index}}}}} but the condition has {} capture group(s)",
                            groups.saturating_sub(1)
                        ),
                    );
                }
                parts.push(Part::Capture(index));
            }
            None if name.is_empty() => {
                return problem(Some(value.span()), key, "an empty ${{}} in the value")
            }
            None => parts.push(Part::Field(name.to_owned())),
        }
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(Expansion(parts))
}

pub fn compile_rules(raw: &[RawRule], targets: &[String]) -> Result<Rules, Problem> {
    let mut first = Vec::new();
    let mut last = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("rules[{i}]");
        let name = r
            .name
            .as_ref()
            .map_or_else(|| key.clone(), |n| n.get_ref().clone());
        let when = condition(&r.field, r.wildcard.as_ref(), r.regex.as_ref(), &key)?;
        let groups = when.regex.captures_len();
        let and = r
            .and
            .as_ref()
            .map(|c| compile_condition(c, &format!("{key}.and")))
            .transpose()?;
        let routing_key = r
            .routing_key
            .as_ref()
            .map(|rk| {
                let field = Spanned::new(rk.span(), "routing_key".to_owned());
                condition(&field, Some(rk), None, &format!("{key}.routing_key"))
            })
            .transpose()?;
        let mut set = Vec::new();
        for (field, value) in r.set.iter().flatten() {
            if field.is_empty() {
                return problem(
                    Some(value.span()),
                    &format!("{key}.set"),
                    "a field name is empty",
                );
            }
            set.push((
                field.clone(),
                expansion(value, &format!("{key}.set.{field}"), groups)?,
            ));
        }
        let mut annotations = Vec::new();
        for (j, a) in r.annotations.iter().flatten().enumerate() {
            let akey = format!("{key}.annotations[{j}]");
            let tag = match a.kind.get_ref().as_str() {
                "url" => "u",
                "note" => "s",
                "image" => "i",
                other => return problem(Some(a.kind.span()), &format!("{akey}.type"), format!("unknown annotation type {other:?}: expected \"url\", \"note\" or \"image\"")),
            };
            if a.label.get_ref().is_empty() {
                return problem(
                    Some(a.label.span()),
                    &format!("{akey}.label"),
                    "must not be empty",
                );
            }
            annotations.push((
                format!("vo_annotate.{tag}.{}", a.label.get_ref()),
                expansion(&a.value, &format!("{akey}.value"), groups)?,
            ));
        }
        let route = r
            .route
            .as_ref()
            .map(|r| r.get_ref().clone())
            .unwrap_or_default();
        if let Some(unknown) = route.iter().find(|t| !targets.contains(t)) {
            let span = r.route.as_ref().map(|r| r.span());
            return problem(
                span,
                &format!("{key}.route"),
                format!("unknown target {unknown:?}"),
            );
        }
        if set.is_empty() && annotations.is_empty() && route.is_empty() && r.stop != Some(true) {
            return problem(
                Some(r.field.span()),
                &key,
                "does nothing: give it set, annotations, route or stop",
            );
        }
        if r.enabled == Some(false) {
            continue;
        }
        let rule = Rule {
            name,
            when,
            and,
            routing_key,
            set,
            annotations,
            route,
            stop: r.stop.unwrap_or(false),
        };
        if rule.routing_key.is_some() {
            last.push(rule);
        } else {
            first.push(rule);
        }
    }
    first.extend(last);
    Ok(Rules(first))
}
