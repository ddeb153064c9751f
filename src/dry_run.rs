//! `hookrelay rules test`: what the relay would do with a payload, without storing or sending
//! anything. It runs the same code as ingest and delivery (normalize, rules, field limits,
//! routing, each target's `prepare`), so what it prints is what a target would get.

use std::fmt;

use crate::config::{Config, SourceConfig, TargetKind};
use crate::deliver::{context, context_with, now_ms};
use crate::ingest::prepare_alert;
use crate::normalize::{normalize, Event, Received};
use crate::rules::{routing, Routing};
use crate::store::Delivery;
use crate::targets::incident::{step, FireOn, Incident, Phase};
use crate::targets::{Outgoing, Prepared, Target};

pub struct DryRun {
    pub source: String,
    pub events: Vec<EventRun>,
}

pub struct EventRun {
    pub event: Event,
    pub matched: Vec<String>,
    /// Conditions that gave up (counted as no match), `rule: why`.
    pub gave_up: Vec<String>,
    pub targets: Vec<TargetRun>,
}

pub struct TargetRun {
    pub name: String,
    pub kind: &'static str,
    pub outcome: Outcome,
    /// For a target that fires on incident changes: whether it would fire, for each state
    /// the entity's incident could be in.
    pub firing: Vec<String>,
}

pub enum Outcome {
    NotRouted(String),
    Send(Box<Prepared>),
    Invalid(String),
}

/// Runs `body` through the source named `source`, or through the first source that accepts
/// it.
pub fn dry_run(config: &Config, source: Option<&str>, body: &[u8]) -> Result<DryRun, String> {
    let candidates: Vec<&SourceConfig> = match source {
        Some(name) => vec![config
            .sources
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
                format!("no source named {name:?} (sources: {})", names.join(", "))
            })?],
        None => config.sources.iter().collect(),
    };
    let content_type = if body.trim_ascii_start().starts_with(b"{") {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    let mut errors = Vec::new();
    for src in candidates {
        let received = Received {
            source: &src.name,
            kind: src.kind,
            content_type: Some(content_type),
            body: bytes::Bytes::copy_from_slice(body),
            query: Default::default(),
            received_at: chrono::DateTime::from_timestamp_millis(now_ms() as i64)
                .unwrap_or_default(),
            webhook_id: None,
        };
        match normalize(&received) {
            Ok(events) => return Ok(run(config, src, events)),
            Err(e) => errors.push(format!("{}: {e}", src.name)),
        }
    }
    Err(format!(
        "no source accepts this payload ({})",
        errors.join("; ")
    ))
}

fn run(config: &Config, source: &SourceConfig, events: Vec<Event>) -> DryRun {
    let events = events
        .into_iter()
        .map(|mut event| {
            let trace = prepare_alert(&mut event, source, &config.rules);
            let targets = config
                .targets
                .iter()
                .map(|t| {
                    let mut firing = Vec::new();
                    let outcome = match routing(t, &event.source, &event.alert, &trace) {
                        Routing::Selected => {
                            let mut delivery = Delivery::placeholder(
                                uuid::Uuid::parse_str(&event.id).unwrap_or_default(),
                                0,
                            );
                            let target = Target::new(t);
                            let ctx = match target.fire_on() {
                                None => Some(context(&event, &delivery, 1, &t.name, t.needs())),
                                Some(fire_on) => {
                                    delivery.seq = 2;
                                    let (lines, view) = decide(fire_on, &event, delivery.seq);
                                    firing = lines;
                                    view.map(|v| {
                                        context_with(
                                            &event,
                                            &delivery,
                                            1,
                                            &t.name,
                                            t.needs(),
                                            Some(&v),
                                        )
                                    })
                                }
                            };
                            match ctx.map(|ctx| target.prepare(&config.templates, &ctx)) {
                                None => Outcome::NotRouted(
                                    "fires for none of these incident states".into(),
                                ),
                                Some(Ok(p)) => Outcome::Send(Box::new(p)),
                                Some(Err(e)) => Outcome::Invalid(e),
                            }
                        }
                        Routing::NotFromSource => Outcome::NotRouted(format!(
                            "takes events from {} only",
                            t.sources.as_deref().unwrap_or_default().join(", ")
                        )),
                        Routing::NotRouted => Outcome::NotRouted(
                            "receives only events a rule routes to it, and no rule did".into(),
                        ),
                        Routing::FilteredOut(why) => {
                            Outcome::NotRouted(format!("filtered out: {why}"))
                        }
                    };
                    TargetRun {
                        name: t.name.clone(),
                        kind: kind_name(&t.kind),
                        outcome,
                        firing,
                    }
                })
                .collect();
            EventRun {
                event,
                matched: trace.matched,
                gave_up: trace.gave_up,
                targets,
            }
        })
        .collect();
    DryRun {
        source: source.name.clone(),
        events,
    }
}

/// Whether an incident target fires for `event`, for each state the entity's incident could be
/// in (the real decision is made at delivery time, from the stored state); and the incident
/// the request shows in the first state that fires.
fn decide(
    fire_on: &FireOn,
    event: &Event,
    seq: u64,
) -> (
    Vec<String>,
    Option<crate::normalize::victorops::IncidentView>,
) {
    let mut lines = vec![format!("fires on: {}", fire_on.names().join(", "))];
    let mut first = None;
    for (label, prior) in [
        ("with no open incident", None),
        (
            "with an open incident",
            Some(Incident::assumed(Phase::Unacked, event)),
        ),
        (
            "with an acknowledged incident",
            Some(Incident::assumed(Phase::Acked, event)),
        ),
    ] {
        let s = step(prior, event, seq);
        let fires = fire_on.fires(s.change);
        lines.push(format!(
            "{label}: {} ({}): {}",
            if fires { "fires" } else { "not sent" },
            s.change.name(),
            s.why
        ));
        if fires && first.is_none() {
            first = Some((label, s.view));
        }
    }
    if let Some((label, _)) = &first {
        lines.push(format!("the request above is the one sent {label}"));
    }
    (lines, first.map(|(_, view)| view))
}

fn kind_name(kind: &TargetKind) -> &'static str {
    match kind {
        TargetKind::Webhook(_) => "webhook",
        TargetKind::File(_) => "file",
        TargetKind::Snowplow(_) => "snowplow",
        TargetKind::Statushub(_) => "statushub",
        TargetKind::Victorops(_) => "victorops",
    }
}

impl fmt::Display for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.events.len();
        if n == 0 {
            return writeln!(f, "source {}: the payload holds no events", self.source);
        }
        for (i, run) in self.events.iter().enumerate() {
            let e = &run.event;
            if n > 1 {
                writeln!(f, "== event {} of {n}", i + 1)?;
            }
            writeln!(
                f,
                "source: {} ({}, {})",
                self.source, e.format, e.event_type
            )?;
            if run.matched.is_empty() {
                writeln!(f, "rules matched: none")?;
            } else {
                writeln!(f, "rules matched: {}", run.matched.join(", "))?;
            }
            for why in &run.gave_up {
                writeln!(f, "rule gave up (counted as no match): {why}")?;
            }
            writeln!(f, "alert fields:")?;
            for (k, v) in &e.alert {
                writeln!(f, "  {k} = {v:?}")?;
            }
            for t in &run.targets {
                write!(f, "\ntarget {} ({}): ", t.name, t.kind)?;
                write_outcome(f, &t.outcome)?;
                if !t.firing.is_empty() {
                    writeln!(
                        f,
                        "incident decision (made at delivery time, from the entity's stored incident):"
                    )?;
                    for line in &t.firing {
                        writeln!(f, "  {line}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn write_outcome(f: &mut fmt::Formatter<'_>, outcome: &Outcome) -> fmt::Result {
    let prepared = match outcome {
        Outcome::NotRouted(why) => return writeln!(f, "not sent: {why}"),
        Outcome::Invalid(why) => {
            return writeln!(f, "cannot be sent (would be a dead letter): {why}")
        }
        Outcome::Send(p) => p.as_ref(),
    };
    match prepared {
        Prepared::Skip(why) => writeln!(f, "skipped: {why}"),
        Prepared::Line { path, line } => {
            writeln!(f, "append one line to {}", path.display())?;
            write!(f, "{}", String::from_utf8_lossy(line))
        }
        Prepared::Http(Outgoing {
            method,
            url,
            headers,
            body,
        }) => {
            writeln!(f, "{method} {url}")?;
            for (k, v) in headers {
                writeln!(f, "{k}: {}", String::from_utf8_lossy(v.as_bytes()))?;
            }
            writeln!(f)?;
            writeln!(f, "{}", String::from_utf8_lossy(body))
        }
    }
}
