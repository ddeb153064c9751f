//! The rules engine, with VictorOps Rules Engine semantics, and routing.
//!
//! Rules run on every event at ingest, after normalization and before storing, so what they set
//! is stored with the event and seen by every target's templates as `alert.*` or
//! `${{ALERT.*}}`.
//!
//! - Rules run top to bottom; rules bound to a routing key run last (in their own order), so they
//!   see the `routing_key` other rules produced. A matching rule with `stop = true` ends it.
//! - A condition matches one field: an alert field, or a path into the sender's payload
//!   (`payload.event.data.title`, `payload.component_status_changes.0.name`; see [`lookup`]).
//!   A **wildcard** (the default) must match the whole value, `*` standing for any run of
//!   characters, case-insensitively: `*.mydomain.tld` matches `www.mydomain.tld` but not
//!   `mydomain.tld`. A **regex** must match the whole value too (Java `matches()` semantics;
//!   write `.*` at the ends to find a substring; `(?si)` works); at most 128 characters. A
//!   pattern the `regex` crate accepts runs in linear time; one that needs look-around or
//!   back-references runs on a backtracking engine with a step limit, and only on values of
//!   at most 1,024 characters (see `config::rules`); a match it cannot decide counts as no match
//!   and is logged. A field the alert lacks never matches.
//! - `and` adds a second condition; `routing_key` adds a wildcard condition on the
//!   `routing_key` field and moves the rule to the end.
//! - `set` writes fields (creating them if needed). Values expand `${{field}}` (another alert
//!   field as it was when the rule matched, or its new value, cut to the field's limit, when
//!   this rule sets it too),
//!   `${{payload.path}}` and `${{\1}}`… (the primary condition's capture groups; for a
//!   wildcard, each `*` is a group, earlier stars taking as little as they can). A missing
//!   field expands to nothing.
//! - `annotations` add VictorOps annotation fields: `vo_annotate.u.<label>` (url),
//!   `vo_annotate.s.<label>` (note), `vo_annotate.i.<label>` (image), at most 1124 characters.
//!   Their values expand like `set` values, seeing everything the rule sets.
//! - `route` sends the event to the named targets, in addition to the targets that take every
//!   event from its source.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::rules::{Condition, Expansion, FieldRef, Part, Rule, BACKTRACKING_MAX_INPUT};
pub use crate::config::rules::{Rules, PAYLOAD_PREFIX};
use crate::config::{Receive, TargetConfig};
use crate::normalize::victorops::{clamp_field, PAYLOAD_VALUE_LIMIT};

/// What the rules did to one event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// Names of the rules that matched, in order.
    pub matched: Vec<String>,
    /// Targets the matching rules routed the event to.
    pub routes: Vec<String>,
    /// Conditions that could not be decided (a backtracking pattern over its limits), each
    /// counted as no match: `rule: why`.
    pub gave_up: Vec<String>,
}

/// A field's value for matching and expansion: an alert field, or a payload path's value
/// (strings as they are, numbers and booleans as text, objects and arrays as compact JSON;
/// `null` and missing paths have none), cut to the longest VictorOps field.
pub fn lookup<'a>(
    field: &FieldRef,
    alert: &'a BTreeMap<String, String>,
    payload: &'a Value,
) -> Option<Cow<'a, str>> {
    match field {
        FieldRef::Alert(name) => alert.get(name).map(|v| Cow::Borrowed(v.as_str())),
        FieldRef::Payload(path) => {
            let mut at = payload;
            for segment in path {
                at = match at {
                    Value::Object(map) => map.get(segment)?,
                    Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            let text = match at {
                Value::Null => return None,
                Value::String(s) => Cow::Borrowed(s.as_str()),
                Value::Bool(_) | Value::Number(_) => Cow::Owned(at.to_string()),
                other => Cow::Owned(serde_json::to_string(other).unwrap_or_default()),
            };
            Some(match text.char_indices().nth(PAYLOAD_VALUE_LIMIT) {
                Some((cut, _)) => Cow::Owned(text[..cut].to_owned()),
                None => text,
            })
        }
    }
}

/// Why a condition could not be decided.
struct GaveUp(String);

impl Condition {
    /// Whether the field's value matches, with its capture groups (group 0 first) when
    /// `groups` asks for them (else none: deciding alone is cheaper).
    fn captures(
        &self,
        alert: &BTreeMap<String, String>,
        payload: &Value,
        groups: bool,
    ) -> Result<Option<Vec<String>>, GaveUp> {
        let Some(value) = lookup(&self.source, alert, payload) else {
            return Ok(None);
        };
        let m = &self.matcher;
        if m.backtracking
            && value.len() > BACKTRACKING_MAX_INPUT
            && value.chars().count() > BACKTRACKING_MAX_INPUT
        {
            return Err(GaveUp(format!(
                "{} is longer than the {BACKTRACKING_MAX_INPUT} characters a backtracking \
                 pattern is tried on",
                self.field
            )));
        }
        if !groups {
            return match m.regex.is_match(value.as_ref()) {
                Ok(hit) => Ok(hit.then(Vec::new)),
                Err(e) => Err(GaveUp(format!(
                    "{} against {:?}: {e}",
                    self.field, self.pattern
                ))),
            };
        }
        match m.regex.captures(value.as_ref()) {
            Ok(c) => Ok(c.map(|c| {
                c.iter()
                    .map(|g| g.map_or_else(String::new, |g| g.as_str().to_owned()))
                    .collect()
            })),
            Err(e) => Err(GaveUp(format!(
                "{} against {:?}: {e}",
                self.field, self.pattern
            ))),
        }
    }

    fn decide(&self, alert: &BTreeMap<String, String>, payload: &Value) -> Result<bool, GaveUp> {
        self.captures(alert, payload, false).map(|c| c.is_some())
    }

    /// Whether the alert field matches; an undecidable match is no match.
    pub fn matches(&self, alert: &BTreeMap<String, String>) -> bool {
        self.decide(alert, &Value::Null).unwrap_or(false)
    }
}

impl Expansion {
    /// The value, with `set` the fields this rule has set so far.
    fn expand(
        &self,
        alert: &BTreeMap<String, String>,
        set: &[(&str, String)],
        payload: &Value,
        captures: &[String],
    ) -> String {
        let mut out = String::new();
        for part in &self.0 {
            part.expand_into(&mut out, alert, set, payload, captures);
        }
        out
    }
}

impl Part {
    fn expand_into(
        &self,
        out: &mut String,
        alert: &BTreeMap<String, String>,
        set: &[(&str, String)],
        payload: &Value,
        captures: &[String],
    ) {
        match self {
            Part::Text(t) => out.push_str(t),
            Part::Capture(i) => out.push_str(captures.get(*i).map_or("", String::as_str)),
            // A field this rule already set reads its new value.
            Part::Field(FieldRef::Alert(name)) => match set.iter().find(|(f, _)| f == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(alert.get(name).map_or("", String::as_str)),
            },
            Part::Field(path) => {
                if let Some(v) = lookup(path, alert, payload) {
                    out.push_str(&v);
                }
            }
        }
    }
}

impl Rule {
    /// Whether every condition holds; the captures of the primary one.
    fn check(
        &self,
        alert: &BTreeMap<String, String>,
        payload: &Value,
    ) -> Result<Option<Vec<String>>, GaveUp> {
        let Some(captures) = self.when.captures(alert, payload, self.uses_captures)? else {
            return Ok(None);
        };
        for c in [&self.and, &self.routing_key].into_iter().flatten() {
            if !c.decide(alert, payload)? {
                return Ok(None);
            }
        }
        Ok(Some(captures))
    }
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether [`Rules::apply`] needs the sender's payload.
    pub fn needs_payload(&self) -> bool {
        self.needs_payload
    }

    /// Runs the rules over `alert`. `payload` is the sender's payload, read by `payload.`
    /// paths (`Value::Null` when [`Rules::needs_payload`] is false). Every value it writes is
    /// cut to its field's VictorOps limit, so an alert within the limits stays within them.
    pub fn apply(&self, alert: &mut BTreeMap<String, String>, payload: &Value) -> Trace {
        let mut trace = Trace::default();
        for rule in &self.rules {
            let captures = match rule.check(alert, payload) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(GaveUp(why)) => {
                    tracing::warn!(rule = %rule.name, reason = %why, "rule condition gave up; counted as no match");
                    trace.gave_up.push(format!("{}: {why}", rule.name));
                    continue;
                }
            };
            // Values are computed against the alert as it was, except that a field this rule
            // sets reads its new value (`set` is ordered so it is there first).
            let mut set: Vec<(&str, String)> = Vec::with_capacity(rule.set.len());
            // Every value is cut to its field's limit as it is made, so no field is ever
            // longer than that between rules either: a value can repeat fields and captures,
            // and rules that each doubled a field would otherwise grow it exponentially.
            for (field, value) in &rule.set {
                let mut v = value.expand(alert, &set, payload, &captures);
                clamp_field(field, &mut v);
                set.push((field, v));
            }
            let mut annotations = Vec::with_capacity(rule.annotations.len());
            for (field, value) in &rule.annotations {
                let mut v = value.expand(alert, &set, payload, &captures);
                clamp_field(field, &mut v);
                annotations.push((field.clone(), v));
            }
            for (field, v) in set {
                alert.insert(field.to_owned(), v);
            }
            alert.extend(annotations);
            trace.matched.push(rule.name.clone());
            for t in &rule.route {
                if !trace.routes.contains(t) {
                    trace.routes.push(t.clone());
                }
            }
            if rule.stop {
                break;
            }
        }
        trace
    }
}

/// Why a target does or does not get an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    Selected,
    NotFromSource,
    NotRouted,
    FilteredOut(String),
}

/// The routing decision for one target: rules route explicitly; otherwise a target with
/// `receive = "all"` takes every event from its sources. A target's own `filter` always
/// applies.
pub fn routing(
    target: &TargetConfig,
    source: &str,
    alert: &BTreeMap<String, String>,
    trace: &Trace,
) -> Routing {
    let routed = trace.routes.contains(&target.name);
    if !routed {
        match target.receive {
            Receive::Routed => return Routing::NotRouted,
            Receive::All => {
                if target
                    .sources
                    .as_ref()
                    .is_some_and(|s| !s.iter().any(|s| s == source))
                {
                    return Routing::NotFromSource;
                }
            }
        }
    }
    match target.filter.iter().find(|c| !c.matches(alert)) {
        Some(c) => Routing::FilteredOut(format!("{} does not match {:?}", c.field, c.pattern)),
        None => Routing::Selected,
    }
}

#[cfg(test)]
mod tests;
