//! The admin commands of the CLI: requests to a running relay's admin API, printed for people
//! (or as the API's JSON with `--json`).

use std::fmt::Write;

use serde_json::Value;

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

pub enum Command {
    Status,
    EventsList { query: Vec<(String, String)> },
    EventsShow { id: String },
    DlqList { query: Vec<(String, String)> },
    DlqReplayOne { id: String },
    DlqReplayRange { query: Vec<(String, String)> },
    Pause { target: String },
    Resume { target: String },
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(String, String)],
    ) -> Result<Value, String> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .query(query);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.base))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the admin API's answer: {e}"))?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the admin API answered {status} with no JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "{status}: {}",
                body["error"].as_str().unwrap_or("error")
            ));
        }
        Ok(body)
    }

    /// Runs a command; returns what to print.
    pub async fn run(&self, command: Command, json: bool) -> Result<String, String> {
        use reqwest::Method;
        let (value, render): (Value, fn(&Value) -> String) = match command {
            Command::Status => (self.call(Method::GET, "/targets", &[]).await?, status_table),
            Command::EventsList { query } => (
                self.call(Method::GET, "/events", &query).await?,
                events_table,
            ),
            Command::EventsShow { id } => (
                self.call(Method::GET, &format!("/events/{id}"), &[])
                    .await?,
                event_detail,
            ),
            Command::DlqList { query } => (
                self.call(Method::GET, "/dead-letters", &query).await?,
                dead_table,
            ),
            Command::DlqReplayOne { id } => (
                self.call(Method::POST, &format!("/dead-letters/{id}/replay"), &[])
                    .await?,
                replayed,
            ),
            Command::DlqReplayRange { query } => (
                self.call(Method::POST, "/dead-letters/replay", &query)
                    .await?,
                replayed,
            ),
            Command::Pause { target } => (
                self.call(Method::POST, &format!("/targets/{target}/pause"), &[])
                    .await?,
                target_line,
            ),
            Command::Resume { target } => (
                self.call(Method::POST, &format!("/targets/{target}/resume"), &[])
                    .await?,
                target_line,
            ),
        };
        Ok(if json {
            format!("{value:#}\n")
        } else {
            render(&value)
        })
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<String>| {
        let last = cells.len() - 1;
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
        out.push('\n');
    };
    line(&mut out, headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(&mut out, r);
    }
    out
}

fn age(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(secs) if secs < 120 => format!("{secs}s"),
        Some(secs) if secs < 7200 => format!("{}m", secs / 60),
        Some(secs) => format!("{}h", secs / 3600),
    }
}

fn status_table(v: &Value) -> String {
    let rows = v["targets"].as_array().into_iter().flatten().map(|t| {
        vec![
            s(&t["name"]),
            s(&t["state"]),
            s(&t["pending"]),
            age(&t["oldest_pending_age_seconds"]),
            s(&t["dead_letters"]),
            s(&t["last_error"]),
        ]
    });
    table(
        &["TARGET", "STATE", "PENDING", "OLDEST", "DEAD", "LAST ERROR"],
        rows.collect(),
    )
}

fn events_table(v: &Value) -> String {
    let rows = v["events"].as_array().into_iter().flatten().map(|e| {
        vec![
            s(&e["id"]),
            s(&e["received_at"]),
            s(&e["source"]),
            s(&e["type"]),
            s(&e["status"]),
            s(&e["title"]),
        ]
    });
    let mut out = table(
        &["ID", "RECEIVED", "SOURCE", "TYPE", "STATUS", "TITLE"],
        rows.collect(),
    );
    if let Some(next) = v["next"].as_str() {
        let _ = writeln!(out, "more: --before {next}");
    }
    out
}

fn event_detail(v: &Value) -> String {
    let e = &v["event"];
    let mut out = format!(
        "event {} ({}, {}, {})\nreceived {}, occurred {}\ntitle: {}\n",
        s(&e["id"]),
        s(&e["source"]),
        s(&e["format"]),
        s(&e["type"]),
        s(&e["received_at"]),
        s(&e["occurred_at"]),
        s(&e["title"])
    );
    for d in v["deliveries"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "delivery {} to {}: {} after {} attempt(s)",
            s(&d["id"]),
            s(&d["target"]),
            s(&d["state"]),
            s(&d["attempts"])
        );
        for a in d["attempt_log"].as_array().into_iter().flatten() {
            let status = a["status"]
                .as_u64()
                .map_or_else(|| "no answer".to_owned(), |c| format!("HTTP {c}"));
            let error = a["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  #{} {} {status} {}ms{error}",
                s(&a["number"]),
                s(&a["at"]),
                s(&a["latency_ms"])
            );
        }
    }
    out
}

fn dead_table(v: &Value) -> String {
    let rows = v["dead_letters"].as_array().into_iter().flatten().map(|d| {
        vec![
            s(&d["id"]),
            s(&d["target"]),
            s(&d["dead_at"]),
            s(&d["attempts"]),
            s(&d["last_status"]),
            s(&d["event_id"]),
            s(&d["last_error"]),
        ]
    });
    table(
        &[
            "ID",
            "TARGET",
            "DEAD AT",
            "ATTEMPTS",
            "STATUS",
            "EVENT",
            "LAST ERROR",
        ],
        rows.collect(),
    )
}

fn replayed(v: &Value) -> String {
    format!("replayed {}\n", s(&v["replayed"]))
}

fn target_line(v: &Value) -> String {
    format!("target {}: {}\n", s(&v["name"]), s(&v["state"]))
}
