//! Prometheus metrics. Every series is known at startup (sources, targets, rejection reasons),
//! so the counters are plain atomics allocated once: the ingest and delivery paths bump them
//! without locks or allocation. Gauges that describe the store are read when scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The `code`s of `IngestError`, in a fixed order.
pub const REJECT_REASONS: &[&str] = &[
    "not_found",
    "method_not_allowed",
    "unauthorized",
    "signature_malformed",
    "signature_mismatch",
    "unsupported_media_type",
    "payload_too_large",
    "body_read",
    "body_timeout",
    "empty_body",
    "invalid_utf8",
    "malformed_json",
    "malformed_form",
    "unrecognized_payload",
    "store_unavailable",
    "disk_budget",
    "disk_full",
];

pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        if let Some(i) = self.bounds.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_micros
            .fetch_add((seconds.max(0.0) * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

const ATTEMPT_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const LAG_BOUNDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86_400.0,
];

#[derive(Default)]
pub struct SourceMetrics {
    pub received: AtomicU64,
    pub events_stored: AtomicU64,
    pub events_duplicate: AtomicU64,
    rejected: [AtomicU64; REJECT_REASONS.len()],
}

impl SourceMetrics {
    pub fn reject(&self, code: &str) {
        if let Some(i) = REJECT_REASONS.iter().position(|r| *r == code) {
            self.rejected[i].fetch_add(1, Relaxed);
        }
    }
}

pub struct TargetMetrics {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub skipped: AtomicU64,
    /// Traffic shaping: deliveries superseded by a newer one of their key, holds (maintenance
    /// windows, flapping), and sends that waited for the rate limit or a 429's `Retry-After`.
    pub superseded: AtomicU64,
    pub held: AtomicU64,
    pub rate_limited: AtomicU64,
    pub attempt_seconds: Histogram,
    /// From receipt of the webhook to the target's success.
    pub lag_seconds: Histogram,
}

impl Default for TargetMetrics {
    fn default() -> Self {
        TargetMetrics {
            delivered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
            held: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            attempt_seconds: Histogram::new(ATTEMPT_BOUNDS),
            lag_seconds: Histogram::new(LAG_BOUNDS),
        }
    }
}

/// Ingest-side metrics: one set per source, and one for requests that matched no source.
pub struct IngestMetrics {
    pub sources: Vec<(String, SourceMetrics)>,
    pub unrouted: SourceMetrics,
}

impl IngestMetrics {
    pub fn new(names: impl IntoIterator<Item = String>) -> IngestMetrics {
        IngestMetrics {
            sources: names
                .into_iter()
                .map(|n| (n, SourceMetrics::default()))
                .collect(),
            unrouted: SourceMetrics::default(),
        }
    }
}

/// What a scrape reads from the store and target state, per target.
pub struct TargetGauges<'a> {
    pub name: &'a str,
    pub metrics: &'a TargetMetrics,
    pub pending: u64,
    pub dead_letters: u64,
    pub oldest_pending_seconds: f64,
    pub suspended: bool,
    pub paused: bool,
    /// One of its maintenance windows is open.
    pub maintenance: bool,
}

/// Name, help text, and which of a target's counters.
type CounterSpec = (&'static str, &'static str, fn(&TargetMetrics) -> &AtomicU64);

/// Name, help text, and how to read the value from a target's gauges.
type GaugeSpec = (&'static str, &'static str, fn(&TargetGauges<'_>) -> f64);

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The store's and the event cache's figures for `/metrics`.
pub struct StoreGauges {
    pub size_bytes: u64,
    /// The embedded store's log syncs and the operations they made durable.
    pub log_syncs: Option<(u64, u64)>,
    /// Events the delivery cache holds, and their bytes (`deliver::EventCache`).
    pub cached: (usize, usize),
}

/// Label values are config names (letters, digits, `-_.`), so they need no escaping.
pub fn render(ingest: &IngestMetrics, targets: &[TargetGauges<'_>], store: StoreGauges) -> String {
    let mut out = String::with_capacity(4096);
    let sources = ingest
        .sources
        .iter()
        .map(|(n, m)| (n.as_str(), m))
        .chain([("", &ingest.unrouted)]);
    let sources: Vec<_> = sources.collect();
    header(
        &mut out,
        "hookrelay_requests_received_total",
        "counter",
        "Webhook requests received, by source (empty: matched no source).",
    );
    for (n, m) in &sources {
        let _ = writeln!(
            out,
            "hookrelay_requests_received_total{{source=\"{n}\"}} {}",
            m.received.load(Relaxed)
        );
    }
    header(
        &mut out,
        "hookrelay_requests_rejected_total",
        "counter",
        "Webhook requests answered with an error, by source and reason.",
    );
    for (n, m) in &sources {
        for (reason, c) in REJECT_REASONS.iter().zip(&m.rejected) {
            let _ = writeln!(
                out,
                "hookrelay_requests_rejected_total{{source=\"{n}\",reason=\"{reason}\"}} {}",
                c.load(Relaxed)
            );
        }
    }
    header(
        &mut out,
        "hookrelay_events_accepted_total",
        "counter",
        "Events stored, by source.",
    );
    for (n, m) in &sources[..sources.len() - 1] {
        let _ = writeln!(
            out,
            "hookrelay_events_accepted_total{{source=\"{n}\"}} {}",
            m.events_stored.load(Relaxed)
        );
    }
    header(
        &mut out,
        "hookrelay_events_duplicate_total",
        "counter",
        "Events acknowledged as duplicates and not stored again, by source.",
    );
    for (n, m) in &sources[..sources.len() - 1] {
        let _ = writeln!(
            out,
            "hookrelay_events_duplicate_total{{source=\"{n}\"}} {}",
            m.events_duplicate.load(Relaxed)
        );
    }
    header(
        &mut out,
        "hookrelay_deliveries_total",
        "counter",
        "Delivery attempts by target and outcome.",
    );
    for t in targets {
        for (outcome, c) in [
            ("delivered", &t.metrics.delivered),
            ("retry", &t.metrics.retried),
            ("dead", &t.metrics.dead),
            ("skipped", &t.metrics.skipped),
        ] {
            let _ = writeln!(
                out,
                "hookrelay_deliveries_total{{target=\"{}\",outcome=\"{outcome}\"}} {}",
                t.name,
                c.load(Relaxed)
            );
        }
    }
    let shaping: [CounterSpec; 3] = [
        (
            "hookrelay_deliveries_superseded_total",
            "Deliveries never sent because a newer one of their ordering key was (coalescing), by target.",
            |m| &m.superseded,
        ),
        (
            "hookrelay_deliveries_held_total",
            "Times a delivery was held by a maintenance window or flap suppression, by target.",
            |m| &m.held,
        ),
        (
            "hookrelay_deliveries_rate_limited_total",
            "Times a send waited for the target's rate limit or a 429's Retry-After, by target.",
            |m| &m.rate_limited,
        ),
    ];
    for (name, help, read) in shaping {
        header(&mut out, name, "counter", help);
        for t in targets {
            let _ = writeln!(
                out,
                "{name}{{target=\"{}\"}} {}",
                t.name,
                read(t.metrics).load(Relaxed)
            );
        }
    }
    header(
        &mut out,
        "hookrelay_attempt_duration_seconds",
        "histogram",
        "Time one delivery attempt took, by target.",
    );
    for t in targets {
        t.metrics.attempt_seconds.render(
            &mut out,
            "hookrelay_attempt_duration_seconds",
            &format!("target=\"{}\"", t.name),
        );
    }
    header(
        &mut out,
        "hookrelay_delivery_lag_seconds",
        "histogram",
        "Time from receiving a webhook to its successful delivery, by target.",
    );
    for t in targets {
        t.metrics.lag_seconds.render(
            &mut out,
            "hookrelay_delivery_lag_seconds",
            &format!("target=\"{}\"", t.name),
        );
    }
    let gauges: [GaugeSpec; 6] = [
        (
            "hookrelay_queue_depth",
            "Deliveries waiting, by target.",
            |t| t.pending as f64,
        ),
        (
            "hookrelay_oldest_pending_age_seconds",
            "Age of the oldest waiting delivery, by target.",
            |t| t.oldest_pending_seconds,
        ),
        (
            "hookrelay_dead_letters",
            "Dead letters kept, by target.",
            |t| t.dead_letters as f64,
        ),
        (
            "hookrelay_target_suspended",
            "1 while a target is suspended after consecutive failures.",
            |t| f64::from(u8::from(t.suspended)),
        ),
        (
            "hookrelay_target_paused",
            "1 while an operator has paused a target.",
            |t| f64::from(u8::from(t.paused)),
        ),
        (
            "hookrelay_target_maintenance",
            "1 while one of a target's maintenance windows is open.",
            |t| f64::from(u8::from(t.maintenance)),
        ),
    ];
    for (name, help, read) in gauges {
        header(&mut out, name, "gauge", help);
        for t in targets {
            let _ = writeln!(out, "{name}{{target=\"{}\"}} {}", t.name, read(t));
        }
    }
    header(
        &mut out,
        "hookrelay_targets_suspended",
        "gauge",
        "Targets currently suspended.",
    );
    let _ = writeln!(
        out,
        "hookrelay_targets_suspended {}",
        targets.iter().filter(|t| t.suspended).count()
    );
    header(
        &mut out,
        "hookrelay_store_size_bytes",
        "gauge",
        "Size of the store on disk.",
    );
    let _ = writeln!(out, "hookrelay_store_size_bytes {}", store.size_bytes);
    if let Some((syncs, ops)) = store.log_syncs {
        header(
            &mut out,
            "hookrelay_store_log_syncs_total",
            "counter",
            "Syncs of the embedded store's write-ahead log, each making a write group durable.",
        );
        let _ = writeln!(out, "hookrelay_store_log_syncs_total {syncs}");
        header(
            &mut out,
            "hookrelay_store_log_operations_total",
            "counter",
            "Operations (requests' ingests, deliveries' outcomes, ...) in the write groups \
             those syncs made durable; divided by the syncs, the mean write group.",
        );
        let _ = writeln!(out, "hookrelay_store_log_operations_total {ops}");
    }
    let (events, bytes) = store.cached;
    header(
        &mut out,
        "hookrelay_event_cache_events",
        "gauge",
        "Stored events kept decoded for the deliveries still to take them.",
    );
    let _ = writeln!(out, "hookrelay_event_cache_events {events}");
    header(
        &mut out,
        "hookrelay_event_cache_bytes",
        "gauge",
        "Bytes the kept events are counted for (bodies, their JSON, and 512 for the rest of each).",
    );
    let _ = writeln!(out, "hookrelay_event_cache_bytes {bytes}");
    out
}
