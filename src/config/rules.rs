//! `[[rules]]` and target `filter` conditions as written, and their validation into the data
//! the rules engine (`crate::rules`) runs: conditions with compiled matchers, expansions parsed
//! once, `set` values ordered so each can use the others. Problems carry the span and key so
//! the config validator can name the line.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

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

/// Where a condition or a `${{…}}` reference reads its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldRef {
    /// An alert field, by name.
    Alert(String),
    /// A path into the sender's payload, written `payload.a.b.0.c` (`0`: an array index).
    Payload(Vec<String>),
}

/// The prefix that makes a field name a payload path.
pub const PAYLOAD_PREFIX: &str = "payload.";

impl FieldRef {
    fn parse(name: &str) -> Result<FieldRef, String> {
        match name.strip_prefix(PAYLOAD_PREFIX) {
            Some(path) => {
                let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(format!(
                        "{name:?} is not a payload path like \"payload.event.data.title\""
                    ));
                }
                Ok(FieldRef::Payload(segments))
            }
            None if name == "payload" => {
                Err("name a field inside the payload, like \"payload.event.data.title\"".into())
            }
            None => Ok(FieldRef::Alert(name.to_owned())),
        }
    }
}

/// Regexes longer than this are refused, as VictorOps does.
pub const MAX_REGEX: usize = 128;

/// The backtracking engine's step budget for one match; past it the condition does not match.
pub const BACKTRACK_LIMIT: usize = 50_000;

/// Values longer than this (in characters, VictorOps' default field length) are not tried
/// against a pattern that needs the backtracking engine: look-around inside a repetition costs
/// time quadratic in the value's length, which the backtrack limit does not count (README,
/// "Regex dialect").
pub const BACKTRACKING_MAX_INPUT: usize = 1_024;

/// The compiled size a pattern may reach on the linear engine. Its time is linear in the value
/// but also in the program's size: counted repetitions (`(.{0,100}){60}`) make programs of
/// megabytes that take seconds per match, so those are config errors.
pub const PROGRAM_SIZE_LIMIT: usize = 1 << 20;

/// A compiled whole-value pattern. fancy-regex hands a pattern without look-around,
/// back-references or atomic/possessive parts to the `regex` crate's engine whole (linear
/// time, programs up to [`PROGRAM_SIZE_LIMIT`]); the rest runs on its backtracking engine,
/// under [`BACKTRACK_LIMIT`] and only on values of at most [`BACKTRACKING_MAX_INPUT`]
/// characters.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub regex: fancy_regex::Regex,
    pub backtracking: bool,
}

/// Whether a parsed pattern uses anything beyond what the linear engine runs. Anything not
/// known to be plain counts as backtracking.
fn needs_backtracking(e: &fancy_regex::Expr) -> bool {
    use fancy_regex::Expr;
    match e {
        Expr::Empty
        | Expr::Any { .. }
        | Expr::Assertion(_)
        | Expr::GeneralNewline { .. }
        | Expr::Literal { .. }
        | Expr::LiteralBytes { .. }
        | Expr::Delegate { .. } => false,
        Expr::Concat(v) | Expr::Alt(v) => v.iter().any(needs_backtracking),
        Expr::Group(child) => needs_backtracking(child),
        Expr::Repeat { child, .. } => needs_backtracking(child),
        _ => true,
    }
}

#[derive(Debug, Clone)]
pub struct Condition {
    /// The field as written: an alert field or a `payload.` path.
    pub field: String,
    pub source: FieldRef,
    /// What the user wrote, for messages.
    pub pattern: String,
    pub matcher: Matcher,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Field(FieldRef),
    Capture(usize),
}

/// A value with `${{field}}`, `${{payload.path}}` and `${{\N}}` references, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Expansion(pub Vec<Part>);

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub when: Condition,
    pub and: Option<Condition>,
    pub routing_key: Option<Condition>,
    /// In an order where a value that uses another field this rule sets comes after it.
    pub set: Vec<(String, Expansion)>,
    pub annotations: Vec<(String, Expansion)>,
    pub route: Vec<String>,
    pub stop: bool,
    /// Whether `set` or `annotations` use capture groups (`${{\1}}`): only then are they
    /// extracted, which costs more than deciding the match.
    pub uses_captures: bool,
}

/// Rules in the order they run.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub rules: Vec<Rule>,
    /// Whether any rule reads the sender's payload (parsed for them only then).
    pub needs_payload: bool,
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

fn wildcard_regex(pattern: &str) -> String {
    let parts: Vec<_> = pattern.split('*').map(fancy_regex::escape).collect();
    format!("(?is)\\A{}\\z", parts.join("(.*?)"))
}

/// A target filter's condition. Filters read alert fields only: a rule can copy a payload
/// field into one.
pub fn compile_condition(raw: &RawCondition, key: &str) -> Result<Condition, Problem> {
    let c = condition(&raw.field, raw.wildcard.as_ref(), raw.regex.as_ref(), key)?;
    if matches!(c.source, FieldRef::Payload(_)) {
        return problem(
            Some(raw.field.span()),
            &format!("{key}.field"),
            "a filter reads alert fields; copy the payload field into one with a rule's set",
        );
    }
    Ok(c)
}

/// Compiles a whole-value pattern (Java syntax, as far as fancy-regex goes: see README).
fn matcher(source: &str) -> Result<Matcher, String> {
    let tree = fancy_regex::Expr::parse_tree(source).map_err(|e| e.to_string())?;
    let regex = fancy_regex::RegexBuilder::new(source)
        .backtrack_limit(BACKTRACK_LIMIT)
        .delegate_size_limit(PROGRAM_SIZE_LIMIT)
        .build()
        .map_err(|e| match e.to_string() {
            t if t.contains("error building NFA") || t.contains("exceeds size limit") => {
                format!("{t}: the pattern compiles too big (counted repetitions such as {{100}} multiply it)")
            }
            t => t,
        })?;
    Ok(Matcher {
        regex,
        backtracking: needs_backtracking(&tree.expr),
    })
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
            "must name an alert field or a payload path",
        );
    }
    let source = FieldRef::parse(field.get_ref())
        .or_else(|m| problem(Some(field.span()), &format!("{key}.field"), m))?;
    let (pattern, text) = match (wildcard, regex) {
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
    let matcher = matcher(&text).or_else(|e| {
        let span = regex.map(|r| r.span());
        problem(
            span,
            &format!("{key}.regex"),
            format!("bad regex: {}", e.lines().last().unwrap_or_default().trim()),
        )
    })?;
    Ok(Condition {
        field: field.get_ref().clone(),
        source,
        pattern,
        matcher,
    })
}

impl Condition {
    /// Capture groups, group 0 included.
    fn groups(&self) -> usize {
        self.matcher.regex.captures_len()
    }
}

/// Parses `${{field}}`, `${{payload.path}}` and `${{\N}}` references; `groups` is how many
/// capture groups exist.
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
            None => parts.push(Part::Field(
                FieldRef::parse(name).or_else(|m| problem(Some(value.span()), key, m))?,
            )),
        }
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(Expansion(parts))
}

impl Expansion {
    fn refs(&self) -> impl Iterator<Item = &FieldRef> {
        self.0.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f),
            _ => None,
        })
    }
}

/// Orders a rule's `set` so that a value using another field the rule sets comes after it. A
/// value's reference to its own field reads the value from before the rule.
fn set_order(
    set: Vec<(String, Expansion)>,
    span: Option<Range<usize>>,
    key: &str,
) -> Result<Vec<(String, Expansion)>, Problem> {
    let names: BTreeSet<&str> = set.iter().map(|(f, _)| f.as_str()).collect();
    let deps: Vec<BTreeSet<&str>> = set
        .iter()
        .map(|(field, e)| {
            e.refs()
                .filter_map(|r| match r {
                    FieldRef::Alert(n) if n != field && names.contains(n.as_str()) => {
                        Some(n.as_str())
                    }
                    _ => None,
                })
                .collect()
        })
        .collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(set.len());
    while order.len() < set.len() {
        let next = (0..set.len()).find(|&i| {
            !done.contains(set[i].0.as_str()) && deps[i].iter().all(|d| done.contains(d))
        });
        let Some(i) = next else {
            let circle: Vec<&str> = (0..set.len())
                .filter(|&i| !done.contains(set[i].0.as_str()))
                .map(|i| set[i].0.as_str())
                .collect();
            return problem(
                span,
                key,
                format!(
                    "{} use each other in a circle; a value can use another field the rule sets, \
                     but not one that comes back to it",
                    circle.join(", ")
                ),
            );
        };
        done.insert(set[i].0.as_str());
        order.push(i);
    }
    let mut slots: Vec<Option<(String, Expansion)>> = set.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
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
        let groups = when.groups();
        let and = r
            .and
            .as_ref()
            .map(|c| {
                condition(
                    &c.field,
                    c.wildcard.as_ref(),
                    c.regex.as_ref(),
                    &format!("{key}.and"),
                )
            })
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
            if field == "payload" || field.starts_with(PAYLOAD_PREFIX) {
                return problem(
                    Some(value.span()),
                    &format!("{key}.set.{field}"),
                    "the payload is read-only; set an alert field",
                );
            }
            set.push((
                field.clone(),
                expansion(value, &format!("{key}.set.{field}"), groups)?,
            ));
        }
        let set_span = r
            .set
            .as_ref()
            .and_then(|s| s.values().next())
            .map(|v| v.span());
        let set = set_order(set, set_span, &format!("{key}.set"))?;
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
        let uses_captures = set
            .iter()
            .chain(&annotations)
            .any(|(_, e)| e.0.iter().any(|p| matches!(p, Part::Capture(_))));
        let rule = Rule {
            uses_captures,
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
    let needs_payload = first.iter().any(|r| {
        let conditions = [Some(&r.when), r.and.as_ref()];
        conditions
            .into_iter()
            .flatten()
            .any(|c| matches!(c.source, FieldRef::Payload(_)))
            || r.set
                .iter()
                .chain(&r.annotations)
                .any(|(_, e)| e.refs().any(|f| matches!(f, FieldRef::Payload(_))))
    });
    Ok(Rules {
        rules: first,
        needs_payload,
    })
}
