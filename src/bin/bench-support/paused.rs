//! A relay started in the benchmark's own process with one target paused, so that a backlog
//! builds up for it: what the shaping and console benchmarks both start from.

use std::path::Path;

use anyhow::Context;

pub struct Paused {
    pub relay: hookrelay::Relay,
    /// The ingest listener's base URL, and the admin API's.
    pub base: String,
    pub admin: String,
    pub client: reqwest::Client,
}

/// Starts a relay on `config` (written for `dir`) and pauses its target `target`.
pub async fn start(config: &str, dir: &Path, target: &str) -> anyhow::Result<Paused> {
    let config = hookrelay::Config::parse(config, "bench.toml", dir).context("bench config")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let relay = hookrelay::Relay::start(config, listener).await?;
    let base = format!("http://{}", relay.local_addr());
    let admin = format!("http://{}", relay.admin_addr().context("admin API")?);
    let client = reqwest::Client::new();
    client
        .post(format!("{admin}/targets/{target}/pause"))
        .send()
        .await?
        .error_for_status()?;
    Ok(Paused {
        relay,
        base,
        admin,
        client,
    })
}
