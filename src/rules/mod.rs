//! The rules engine, with VictorOps Rules Engine semantics, and routing.
//!
//! Rules run on every event at ingest, after normalization and before storing, so what they set
//! is stored with the event and seen by every target's templates as `alert.*` or
//! `${{ALERT.*}}`.
//!
//! - Rules run top to bottom; rules bound to a routing key run last (in their own order), so they
//!   see the `routing_key` other rules produced. A matching rule with `stop = true` ends it.
//! - A condition matches one alert field. A **wildcard** (the default) must match the whole value,
//!   `*` standing for any run of characters, case-insensitively: `*.mydomain.tld` matches
//!   `www.mydomain.tld` but not `mydomain.tld`. A **regex** must match the whole value too (Java
//!   `matches()` semantics; write `.*` at the ends to find a substring; `(?si)` works); at most
//!   128 characters; matching is linear-time. A field the alert lacks never matches.
//! - `and` adds a second condition; `routing_key` adds a wildcard condition on the
//!   `routing_key` field and moves the rule to the end.
//! - `set` writes fields (creating them if needed). Values expand `${{field}}` (another alert
//!   field, as it was when the rule matched) and `${{\1}}`… (the primary condition's capture
//!   groups; for a wildcard, each `*` is a group, earlier stars taking as little as they can).
//!   A missing field expands to nothing.
//! - `annotations` add VictorOps annotation fields: `vo_annotate.u.<label>` (url),
//!   `vo_annotate.s.<label>` (note), `vo_annotate.i.<label>` (image), at most 1124 characters.
//! - `route` sends the event to the named targets, in addition to the targets that take every
//!   event from its source.

mod config;

use std::collections::BTreeMap;

use regex::Regex;

pub(crate) use config::{compile_condition, compile_rules, RawCondition, RawRule};

use crate::config::{Receive, TargetConfig};

#[derive(Debug, Clone)]
pub struct Condition {
    pub field: String,
    /// What the user wrote, for messages.
    pub pattern: String,
    regex: Regex,
}

impl Condition {
    /// The capture groups (group 0 first) when the field's value matches.
    fn captures(&self, alert: &BTreeMap<String, String>) -> Option<Vec<String>> {
        let value = alert.get(&self.field)?;
        let caps = self.regex.captures(value)?;
        Some(
            caps.iter()
                .map(|m| m.map_or_else(String::new, |m| m.as_str().to_owned()))
                .collect(),
        )
    }

    pub fn matches(&self, alert: &BTreeMap<String, String>) -> bool {
        alert
            .get(&self.field)
            .is_some_and(|v| self.regex.is_match(v))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(String),
    Capture(usize),
}

/// A value with `${{field}}` and `${{\N}}` references, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Expansion(Vec<Part>);

impl Expansion {
    fn expand(&self, alert: &BTreeMap<String, String>, captures: &[String]) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => out.push_str(alert.get(f).map_or("", String::as_str)),
                Part::Capture(i) => out.push_str(captures.get(*i).map_or("", String::as_str)),
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    when: Condition,
    and: Option<Condition>,
    routing_key: Option<Condition>,
    set: Vec<(String, Expansion)>,
    annotations: Vec<(String, Expansion)>,
    pub route: Vec<String>,
    stop: bool,
}

/// Rules in the order they run.
#[derive(Debug, Clone, Default)]
pub struct Rules(Vec<Rule>);

/// What the rules did to one event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// Names of the rules that matched, in order.
    pub matched: Vec<String>,
    /// Targets the matching rules routed the event to.
    pub routes: Vec<String>,
}

const ANNOTATION_LIMIT: usize = 1124;

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn apply(&self, alert: &mut BTreeMap<String, String>) -> Trace {
        let mut trace = Trace::default();
        for rule in &self.0 {
            let Some(captures) = rule.when.captures(alert) else {
                continue;
            };
            if rule.and.as_ref().is_some_and(|c| !c.matches(alert))
                || rule.routing_key.as_ref().is_some_and(|c| !c.matches(alert))
            {
                continue;
            }
            let snapshot = alert.clone();
            for (field, value) in &rule.set {
                alert.insert(field.clone(), value.expand(&snapshot, &captures));
            }
            for (field, value) in &rule.annotations {
                let mut v = value.expand(&snapshot, &captures);
                if let Some((cut, _)) = v.char_indices().nth(ANNOTATION_LIMIT) {
                    v.truncate(cut);
                }
                alert.insert(field.clone(), v);
            }
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
