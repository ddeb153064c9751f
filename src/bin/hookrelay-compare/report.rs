//! The figures of each run and the report: a markdown table with every figure of issue 15
//! for nginx and hookrelay and their ratio, the details of each run, and one JSON line.

use std::time::Duration;

use serde::Serialize;

use crate::wrk::Outcome;
use crate::Args;

/// CPU used during a run, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    /// The server's processes (nginx's master and workers, or the relay).
    pub server_us: u64,
    pub wrk_us: u64,
    pub wrk_threads: u64,
    /// This process: the sink.
    pub sink_us: u64,
}

/// One loaded run of one server.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Requests answered 2xx (the relay: webhooks durably acknowledged).
    pub acked: u64,
    pub acked_per_s: f64,
    pub load_s: f64,
    /// From the end of the load until the last request reached the sink (the relay: the last
    /// event reached every target); 0 when it was there before the load ended.
    pub after_load_s: f64,
    /// acked ÷ (load time + after_load_s).
    pub end_to_end_per_s: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_p999_ms: f64,
    pub ack_max_ms: f64,
    /// User + system CPU of the server's processes (for the relay, until its last delivery),
    /// per acknowledged request.
    pub cpu_us_per_request: f64,
    /// wrk's CPU per request, and the share of its threads' time it was busy during the load
    /// (near 1: wrk was the limit).
    pub wrk_cpu_us_per_request: f64,
    pub wrk_busy: f64,
    /// This process's CPU (the sink, and the waiting) per request.
    pub sink_cpu_us_per_request: f64,
    /// Connections the sink accepted (nginx keeps its upstream connections alive).
    pub sink_connections: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    /// Requests that reached the sink (the relay: distinct events, at the target that got
    /// fewest).
    pub reached: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub peak_rss_mb: Option<u64>,
    /// The 1-minute load average before and after.
    pub load_average: [f64; 2],
    /// The relay's CPU per acknowledged event by kind of thread (`relay::thread_cpu_us`), in
    /// µs; empty for nginx and the sink.
    pub threads_us_per_event: std::collections::BTreeMap<String, f64>,
}

impl Measured {
    pub fn new(
        o: &Outcome,
        after_load: Duration,
        cpu: Cpu,
        reached: u64,
        duplicates: u64,
        load_average: [f64; 2],
    ) -> Measured {
        let acked = o.acked();
        let whole = o.load_time() + after_load;
        Measured {
            acked,
            acked_per_s: o.acked_per_s(),
            load_s: o.load_time().as_secs_f64(),
            after_load_s: after_load.as_secs_f64(),
            end_to_end_per_s: acked as f64 / whole.as_secs_f64().max(1e-9),
            ack_p50_ms: o.p50_us as f64 / 1000.0,
            ack_p99_ms: o.p99_us as f64 / 1000.0,
            ack_p999_ms: o.p999_us as f64 / 1000.0,
            ack_max_ms: o.max_us as f64 / 1000.0,
            cpu_us_per_request: cpu.server_us as f64 / acked.max(1) as f64,
            wrk_cpu_us_per_request: cpu.wrk_us as f64 / o.requests.max(1) as f64,
            wrk_busy: cpu.wrk_us as f64 / (o.duration_us.max(1) * cpu.wrk_threads) as f64,
            sink_cpu_us_per_request: cpu.sink_us as f64 / o.requests.max(1) as f64,
            sink_connections: 0,
            non_2xx: o.status,
            socket_errors: o.errors(),
            reached,
            lost: acked.saturating_sub(reached),
            duplicates,
            peak_rss_mb: None,
            threads_us_per_event: Default::default(),
            load_average,
        }
    }
}

/// The backlog case (`--pending`).
#[derive(Debug, Serialize)]
pub struct Backlog {
    pub pending: u64,
    pub empty: Measured,
    pub loaded: Measured,
    pub startup_after_crash_ms: u64,
    pub startup_after_stop_ms: u64,
    pub store_bytes: u64,
}

pub struct Report<'a> {
    pub args: &'a Args,
    pub wrk_path: String,
    pub nginx_path: Option<String>,
    pub body_bytes: usize,
    pub ceiling: Measured,
    pub nginx: Option<Measured>,
    /// (targets, run): one target first, then the fan-out run.
    pub relays: Vec<(usize, Measured)>,
    pub backlog: Option<Backlog>,
}

/// "1 target", "5 targets".
pub fn targets(n: usize) -> String {
    match n {
        1 => "1 target".into(),
        n => format!("{n} targets"),
    }
}

/// 12,345 (rounded to a whole number).
fn count(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(x: f64) -> String {
    format!("{x:.2} ms")
}

fn us(x: f64) -> String {
    format!("{x:.1} µs")
}

fn verdict(text: &str, met: bool) -> String {
    match met {
        true => format!("{text}: met"),
        false => format!("{text}: **missed**"),
    }
}

/// One figure of a run: how it is read and shown.
struct Figure {
    get: fn(&Measured) -> f64,
    show: fn(f64) -> String,
    /// A cost (latency, CPU): its ratio reads as a multiple (12.2×), a rate's as a fraction.
    cost: bool,
}

impl Figure {
    const fn rate(get: fn(&Measured) -> f64) -> Figure {
        Figure {
            get,
            show: count,
            cost: false,
        }
    }

    const fn cost(get: fn(&Measured) -> f64, show: fn(f64) -> String) -> Figure {
        Figure {
            get,
            show,
            cost: true,
        }
    }
}

const ACKED: Figure = Figure::rate(|m| m.acked_per_s);
const END_TO_END: Figure = Figure::rate(|m| m.end_to_end_per_s);
const P50: Figure = Figure::cost(|m| m.ack_p50_ms, ms);
const P99: Figure = Figure::cost(|m| m.ack_p99_ms, ms);
const CPU: Figure = Figure::cost(|m| m.cpu_us_per_request, us);

/// A goal of issue 15: its text, and whether it is met given the ratio to nginx (if any) and
/// the relay's value.
type Goal = (&'static str, fn(Option<f64>, f64) -> Option<bool>);

impl Report<'_> {
    /// A row of the table: the relay's `value` of figure `f` against nginx's.
    fn row(&self, label: &str, f: &Figure, value: f64, goal: Option<Goal>) -> String {
        let base = self.nginx.as_ref().map(f.get);
        let ratio = base.filter(|b| *b > 0.0).map(|b| value / b);
        let goal = goal.map_or(String::new(), |(text, met)| match met(ratio, value) {
            Some(met) => verdict(text, met),
            None => format!("{text}: –"),
        });
        format!(
            "| {label} | {} | {} | {} | {goal} |",
            base.map_or("not installed".into(), f.show),
            (f.show)(value),
            match ratio {
                Some(r) if f.cost => format!("{r:.1}×"),
                Some(r) => format!("{r:.2}"),
                None => "–".into(),
            }
        )
    }

    fn table(&self) -> Vec<String> {
        let mut rows = vec![
            "| figure | nginx proxy | hookrelay | ratio | goal (issue 15) |".to_owned(),
            "|---|---|---|---|---|".to_owned(),
        ];
        let (_, one) = &self.relays[0];
        for (label, f, goal) in [
            (
                "requests acknowledged/s while loaded",
                &ACKED,
                Some::<Goal>(("≥ 0.5", |r, _| r.map(|r| r >= 0.5))),
            ),
            (
                "end to end/s: acknowledged ÷ (load time + time until the last reached the sink)",
                &END_TO_END,
                Some(("≥ 0.35 (stretch 0.5)", |r, _| r.map(|r| r >= 0.35))),
            ),
            ("ack p50", &P50, None),
            ("ack p99", &P99, Some(("≤ 5 ms", |_, v| Some(v <= 5.0)))),
            (
                "CPU per request / per event (user+system of the server's processes)",
                &CPU,
                Some(("≤ 3×", |r, _| r.map(|r| r <= 3.0))),
            ),
        ] {
            rows.push(self.row(label, f, (f.get)(one), goal));
        }
        if let Some((t, many)) = self.relays.get(1) {
            for (label, f) in [
                ("requests acknowledged/s while loaded", &ACKED),
                ("end to end/s (every event at every target)", &END_TO_END),
                ("ack p99", &P99),
                ("CPU per event", &CPU),
            ] {
                rows.push(self.row(&format!("{t} targets: {label}"), f, (f.get)(many), None));
            }
            let extra = (many.cpu_us_per_request - one.cpu_us_per_request) / (*t as f64 - 1.0);
            rows.push(self.row(
                &format!(
                    "CPU per extra target: (CPU per event with {t} − with 1) ÷ {}",
                    t - 1
                ),
                &CPU,
                extra,
                Some(("≤ 1×", |r, _| r.map(|r| r <= 1.0))),
            ));
        }
        if let Some(b) = &self.backlog {
            rows.extend(self.backlog_rows(b));
        }
        rows
    }

    /// The backlog case, against the same relay on an empty queue.
    fn backlog_rows(&self, b: &Backlog) -> Vec<String> {
        let p = count(b.pending as f64);
        let (e, l) = (&b.empty, &b.loaded);
        let mut rows = vec![format!(
            "| {p} pending for a down target: acknowledged/s (1 target + the down one) | – | {} (empty queue: {}) | {:.2} of empty | {} |",
            count(l.acked_per_s),
            count(e.acked_per_s),
            l.acked_per_s / e.acked_per_s.max(1e-9),
            verdict("≥ 0.90", l.acked_per_s >= 0.9 * e.acked_per_s),
        )];
        for (label, f) in [("ack p99", &P99), ("CPU per event", &CPU)] {
            rows.push(format!(
                "| {p} pending: {label} | – | {} (empty queue: {}) | | |",
                (f.show)((f.get)(l)),
                (f.show)((f.get)(e)),
            ));
        }
        let (rss_e, rss_l) = (e.peak_rss_mb.unwrap_or(0), l.peak_rss_mb.unwrap_or(0));
        rows.push(format!(
            "| {p} pending: peak RSS | – | {rss_l} MB (empty queue: {rss_e} MB) | | {} |",
            verdict("≤ 100 MB", rss_l <= 100),
        ));
        for (what, at) in [
            (
                "a crash (SIGKILL right after the fill)",
                b.startup_after_crash_ms,
            ),
            ("a clean stop", b.startup_after_stop_ms),
        ] {
            rows.push(format!(
                "| {p} pending: startup after {what}, until it answers HTTP | – | {} ms | | {} |",
                count(at as f64),
                verdict("≤ 1 s", at <= 1000),
            ));
        }
        rows
    }

    /// Whether the generator limited the baseline: wrk alone against the sink must far exceed
    /// nginx's rate, and wrk must have had time to spare while it drove nginx.
    fn generator_verdict(&self) -> String {
        let c = &self.ceiling;
        let alone = format!(
            "wrk straight to the sink: {} requests/s (wrk busy {:.0} % of its thread(s), {:.1} µs of CPU per request)",
            count(c.acked_per_s),
            c.wrk_busy * 100.0,
            c.wrk_cpu_us_per_request
        );
        let Some(n) = &self.nginx else {
            return format!("The generator's ceiling, {alone}.");
        };
        let (times, busy) = (c.acked_per_s / n.acked_per_s.max(1e-9), n.wrk_busy);
        let driving = format!(
            "{alone}, {times:.1}× nginx's rate; while it drove nginx, wrk was busy {:.0} % of its thread(s)",
            busy * 100.0
        );
        if busy >= 0.9 {
            format!("**Warning: wrk limited nginx's figure**: {driving}. Give it more threads (`--threads 2`).")
        } else if times < 1.5 {
            format!(
                "**Warning: nginx's figure may be low**: {driving}. wrk had time to spare, so the sink or the \
                 machine's other load (load average {:.1}) held the sink-alone run to less than 1.5× nginx's rate.",
                c.load_average[0]
            )
        } else {
            format!("The generator is not the bottleneck: {driving}.")
        }
    }

    fn details(&self) -> Vec<String> {
        let mut runs: Vec<(String, &Measured)> = vec![("wrk → sink alone".into(), &self.ceiling)];
        if let Some(n) = &self.nginx {
            runs.push(("wrk → nginx → sink".into(), n));
        }
        for (t, m) in &self.relays {
            runs.push((format!("wrk → hookrelay → {}", targets(*t)), m));
        }
        if let Some(b) = &self.backlog {
            runs.push(("hookrelay, 1 target + 1 down, empty queue".into(), &b.empty));
            runs.push((
                format!(
                    "hookrelay, 1 target + 1 down, {} pending",
                    count(b.pending as f64)
                ),
                &b.loaded,
            ));
        }
        let mut rows = vec![
            "| run | acknowledged | /s | non-2xx | socket errors | reached the sink | lost | duplicates | last arrival after the load | ack p99.9 / max | peak RSS | wrk busy, µs/request | sink µs/request, connections | load average before → after |".to_owned(),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned(),
        ];
        for (name, m) in runs {
            rows.push(format!(
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {:.2} s | {} / {} | {} | {:.0} %, {:.1} | {:.1}, {} | {:.2} → {:.2} |",
                count(m.acked as f64),
                count(m.acked_per_s),
                m.non_2xx,
                m.socket_errors,
                count(m.reached as f64),
                m.lost,
                m.duplicates,
                m.after_load_s,
                ms(m.ack_p999_ms),
                ms(m.ack_max_ms),
                m.peak_rss_mb.map_or("–".into(), |r| format!("{r} MB")),
                m.wrk_busy * 100.0,
                m.wrk_cpu_us_per_request,
                m.sink_cpu_us_per_request,
                count(m.sink_connections as f64),
                m.load_average[0],
                m.load_average[1],
            ));
        }
        rows
    }

    pub fn print(&self) {
        let a = self.args;
        println!(
            "wrk ({}), {} thread(s), {} connections, {} s per run; PagerDuty V3 bodies of {} bytes, incidents drawn in turn from {}; {} delivery lanes per target; nginx: {}.\n",
            self.wrk_path,
            a.threads,
            a.connections,
            a.seconds,
            self.body_bytes,
            match a.incidents {
                0 => "an unbounded set (every webhook its own)".to_owned(),
                n => count(n as f64),
            },
            a.lanes,
            self.nginx_path.as_deref().unwrap_or("not installed"),
        );
        for row in self.table() {
            println!("{row}");
        }
        println!(
            "\nratio: hookrelay ÷ nginx (rates as a fraction, latencies and CPU as a multiple). \
             nginx proxies each request once: in the fan-out rows its column repeats its \
             one-upstream figures. CPU: user + system of the server's processes only (nginx's \
             master and workers; the relay, until its last delivery reached the sink), from /proc.\n"
        );
        println!("{}\n", self.generator_verdict());
        for row in self.details() {
            println!("{row}");
        }
        println!();
        for (t, m) in &self.relays {
            println!(
                "hookrelay with {}, CPU per event by thread: {}.",
                targets(*t),
                by_thread(m)
            );
        }
        if let Some(b) = &self.backlog {
            println!(
                "hookrelay with {} pending, CPU per event by thread: {}.",
                count(b.pending as f64),
                by_thread(&b.loaded)
            );
        }
        println!();
        let json = serde_json::json!({
            "seconds": a.seconds, "connections": a.connections, "threads": a.threads,
            "incidents": a.incidents, "lanes": a.lanes, "body_bytes": self.body_bytes,
            "sink_alone": self.ceiling, "nginx": self.nginx,
            "hookrelay": self.relays.iter().map(|(t, m)| serde_json::json!({"targets": t, "run": m})).collect::<Vec<_>>(),
            "backlog": self.backlog,
        });
        println!("{json}");
    }
}

/// "tokio-rt-worker 100.2 µs, hookrelay-apply 31.7 µs, …", largest first; kinds under 0.5 µs
/// left out.
fn by_thread(m: &Measured) -> String {
    let mut kinds: Vec<(&String, &f64)> = m
        .threads_us_per_event
        .iter()
        .filter(|(_, us)| **us >= 0.5)
        .collect();
    kinds.sort_by(|a, b| b.1.total_cmp(a.1));
    kinds
        .iter()
        .map(|(k, us)| format!("{k} {us:.1} µs"))
        .collect::<Vec<_>>()
        .join(", ")
}
