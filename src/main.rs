/// Allocation is a large share of the relay's CPU; see BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookrelay::admin::client;
use hookrelay::config::Backend;
use hookrelay::normalize::SourceKind;
use hookrelay::{preflight, samples, Config};

/// Turns transparent huge pages off for the process. mimalloc asks for them on its arenas
/// (`MADV_HUGEPAGE`), and the kernel then backs each 2 MiB the relay touches with a zeroed huge
/// page. With them off, the peak RSS of `hookrelay-compare`'s relay fell from 113 to 61 MB
/// under load and from 350 to 298 MB with a million deliveries pending, and the startup after
/// a crash lost the third of its time that was the kernel zeroing pages (BENCHMARKS.md, "Huge
/// pages off"). The setting is the process's, so it covers sled's allocations too.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: `PR_SET_THP_DISABLE` takes plain integers and touches no memory of ours. Should
    // the kernel refuse it, the relay runs as before, only larger.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// A durable webhook relay for StatusGator and PagerDuty alert traffic.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay. Without --config: ./config.toml if present, else the built-in default.
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and exit; errors name the key and line.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Rules: `rules test <payload-file>` shows what the relay would do with a payload.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Targets of a running relay: state, pending, oldest pending, dead letters, last error.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Events a running relay holds.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Dead letters of a running relay.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Pause or resume a target of a running relay.
    Targets {
        #[command(subcommand)]
        command: TargetsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The store on disk (the relay must not be running).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Post a built-in sample payload to a running relay. `send-test list` lists them.
    SendTest {
        /// Sample name, or `list`.
        sample: String,
        /// Full URL to post to; by default the config's first source of the sample's kind,
        /// at its `server.listen` (with its token when it has one).
        #[arg(long)]
        url: Option<String>,
        /// Without --url: the config to read (default ./config.toml, else the built-in one).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// How to reach the admin API: by default the address and token in the config.
#[derive(clap::Args)]
struct AdminArgs {
    /// Admin API base URL, e.g. http://127.0.0.1:9090.
    #[arg(long, global = true)]
    admin: Option<String>,
    /// Bearer token. Prefer HOOKRELAY_ADMIN_TOKEN (or the config's token or token_file, the
    /// default): a command-line argument is visible to every user in the process list.
    #[arg(long, global = true)]
    token: Option<String>,
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

// Filters shared by the list commands: RFC 3339 times or epoch milliseconds.
#[derive(clap::Args)]
struct Window {
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    #[arg(long)]
    limit: Option<u32>,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// List events, newest first, with their delivery status.
    List {
        #[arg(long)]
        source: Option<String>,
        #[arg(long = "type")]
        event_type: Option<String>,
        /// pending, done or dead
        #[arg(long)]
        status: Option<String>,
        /// Continue with the events older than this event id (what `more:` prints).
        #[arg(long)]
        before: Option<String>,
        #[command(flatten)]
        window: Window,
    },
    /// One event with its deliveries and every attempt.
    Show { id: String },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        window: Window,
    },
    /// Replay one dead letter by id, or all of a target's within a time range.
    Replay {
        id: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
enum TargetsCommand {
    /// Stop sending to a target (nothing is dropped) until resumed.
    Pause { name: String },
    /// Resume a paused or suspended target.
    Resume { name: String },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// After the relay refused a damaged store: accept what it still holds and let the relay
    /// start with it. What was lost stays lost; restore a backup instead if there is one.
    AcceptDamage,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Dry run: which rules match, the alert fields after them, and the exact request each
    /// target would get (or why it would get none). Nothing is stored or sent.
    Test {
        /// A webhook body (JSON or form), as a sender would post it.
        payload: PathBuf,
        /// The source to run it through; by default the first source that accepts it.
        #[arg(long)]
        source: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(config),
        Command::SendTest {
            sample,
            url,
            config,
        } => send_test(&sample, url, config),
        Command::Status { admin } => admin_command(admin, client::Command::Status),
        Command::Events { command, admin } => admin_command(
            admin,
            match command {
                EventsCommand::List {
                    source,
                    event_type,
                    status,
                    before,
                    window,
                } => client::Command::EventsList {
                    query: query(
                        &[
                            ("source", source),
                            ("type", event_type),
                            ("status", status),
                            ("before", before),
                        ],
                        window,
                    ),
                },
                EventsCommand::Show { id } => client::Command::EventsShow { id },
            },
        ),
        Command::Dlq { command, admin } => admin_command(
            admin,
            match command {
                DlqCommand::List { target, window } => client::Command::DlqList {
                    query: query(&[("target", target)], window),
                },
                DlqCommand::Replay { id: Some(id), .. } => client::Command::DlqReplayOne { id },
                DlqCommand::Replay {
                    id: None,
                    target,
                    since,
                    until,
                } => client::Command::DlqReplayRange {
                    query: query(
                        &[("target", target), ("since", since), ("until", until)],
                        Window {
                            since: None,
                            until: None,
                            limit: None,
                        },
                    ),
                },
            },
        ),
        Command::Targets { command, admin } => admin_command(
            admin,
            match command {
                TargetsCommand::Pause { name } => client::Command::Pause { target: name },
                TargetsCommand::Resume { name } => client::Command::Resume { target: name },
            },
        ),
        Command::Store {
            command: StoreCommand::AcceptDamage,
            config,
        } => accept_damage(config),
        Command::Rules {
            command:
                RulesCommand::Test {
                    payload,
                    source,
                    config,
                },
        } => rules_test(&payload, source.as_deref(), config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = preflight::load(path.as_deref())?;
    init_logging();
    let runtime = tokio::runtime::Runtime::new()?;
    let sled_path =
        matches!(config.store.backend, Backend::Sled).then(|| config.store.path.clone());
    let result = runtime.block_on(async {
        // Before the port opens: a SIGHUP that arrives while the relay starts is then a
        // reload once it runs, never the default action (which ends the process).
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let relay = hookrelay::Relay::start(config, listener).await?;
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            #[cfg(unix)]
            let reload = hangup.recv();
            #[cfg(not(unix))]
            let reload = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = &mut shutdown => break,
                // Fail-stop: no graceful stop, nothing more is acknowledged; the next start
                // replays the log.
                cause = relay.failed() => anyhow::bail!("the store stopped: {cause}"),
                _ = reload => match preflight::load(path.as_deref()) {
                    Ok(new) => {
                        if let Err(e) = relay.reload(new) {
                            tracing::error!(error = %e, "reload refused");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "reload refused: the new config is invalid; the running config stays"),
                },
            }
        }
        tracing::info!("shutting down");
        relay.shutdown().await?;
        Ok(())
    });
    // Every task, and with them every handle to the store, is gone with the runtime.
    drop(runtime);
    if let (Ok(()), Some(path)) = (&result, sled_path) {
        match hookrelay::store::SledStore::settle(&path) {
            Ok(took) => tracing::info!(
                ms = took.as_millis() as u64,
                "store made ready for a quick start"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not prepare the store for the next start; it will take longer")
            }
        }
    }
    result
}

/// Level from `HOOKRELAY_LOG` (default `info`); `HOOKRELAY_LOG_FORMAT=json` for one JSON
/// object per line. Colour only on a terminal.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOOKRELAY_LOG")
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("HOOKRELAY_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn check_config(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = preflight::load(path.as_deref())?;
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    let store = match &config.store.backend {
        Backend::Sled => config.store.path.display().to_string(),
        Backend::Postgres(pg) => {
            let where_ = hookrelay::store::redact_url(&pg.url);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(hookrelay::store::check_connection(
                    &pg.url,
                    std::time::Duration::from_secs(5),
                ))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "store.url: cannot reach the PostgreSQL database at {where_}: {e}"
                    )
                })?;
            format!("postgres {where_} (reachable; instance {})", pg.instance)
        }
    };
    println!(
        "config OK: listen {}, {} source(s), {} target(s), store {store}",
        config.server.listen,
        config.sources.len(),
        config.targets.len(),
    );
    Ok(())
}

fn query(pairs: &[(&str, Option<String>)], w: Window) -> Vec<(String, String)> {
    let window = [
        ("since", w.since),
        ("until", w.until),
        ("limit", w.limit.map(|l| l.to_string())),
    ];
    pairs
        .iter()
        .cloned()
        .chain(window)
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect()
}

fn admin_command(args: AdminArgs, command: client::Command) -> anyhow::Result<()> {
    let (base, config_token) = match &args.admin {
        Some(url) => (url.clone(), None),
        None => {
            let config = Config::load(args.config.as_deref())?;
            let listen = config
                .admin
                .listen
                .context("the admin API is disabled in this config; pass --admin URL")?;
            (format!("http://{listen}"), config.admin.token)
        }
    };
    if args.token.is_some() {
        eprintln!("warning: --token is visible to other users in the process list; set HOOKRELAY_ADMIN_TOKEN instead");
    }
    let token = args
        .token
        .or_else(|| std::env::var("HOOKRELAY_ADMIN_TOKEN").ok())
        .or(config_token);
    let runtime = tokio::runtime::Runtime::new()?;
    let out = runtime
        .block_on(client::Client::new(&base, token).run(command, args.json))
        .map_err(anyhow::Error::msg)?;
    print!("{out}");
    Ok(())
}

fn accept_damage(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(path.as_deref())?;
    if let Backend::Postgres(_) = config.store.backend {
        anyhow::bail!("store accept-damage applies to the sled store; this config uses PostgreSQL, whose own recovery applies");
    }
    let (recorded, found) = hookrelay::store::Manifest::accept_damage(&config.store.path)
        .with_context(|| format!("cannot open the store at {}", config.store.path.display()))?;
    println!(
        "store {}: accepted as it is; it had recorded deliveries up to #{recorded} and holds up to #{found}",
        config.store.path.display()
    );
    Ok(())
}

fn rules_test(payload: &Path, source: Option<&str>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = preflight::load(config.as_deref())?;
    let body =
        std::fs::read(payload).with_context(|| format!("cannot read {}", payload.display()))?;
    let run = hookrelay::dry_run::dry_run(&config, source, &body).map_err(anyhow::Error::msg)?;
    print!("{run}");
    Ok(())
}

fn send_test(name: &str, url: Option<String>, config: Option<PathBuf>) -> anyhow::Result<()> {
    if name == "list" {
        for s in samples::SAMPLES {
            println!("{:<30} {}", s.name, s.about);
        }
        return Ok(());
    }
    let sample = samples::find(name).with_context(|| {
        format!("no sample named {name:?}; `hookrelay send-test list` shows them")
    })?;
    let url = match url {
        Some(url) => url,
        None => source_url(&Config::load(config.as_deref())?, sample.kind)?,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(&url)
            .header("content-type", sample.content_type)
            .body(sample.body)
            .send()
            .await
            .with_context(|| format!("cannot post to {url}"))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        println!("{status} {body}");
        anyhow::ensure!(status.is_success(), "the relay answered {status}");
        Ok(())
    })
}

/// Where a running relay with `config` takes `kind` webhooks: its first source of that kind,
/// at `server.listen` (a wildcard address is reached on loopback), with the source's token.
fn source_url(config: &Config, kind: SourceKind) -> anyhow::Result<String> {
    let source = config
        .sources
        .iter()
        .find(|s| s.kind == kind)
        .with_context(|| {
            format!(
                "the config has no {} source; pass --url",
                format!("{kind:?}").to_lowercase()
            )
        })?;
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut url = format!("http://{addr}{}", source.path);
    if let Some(token) = &source.token {
        url.push_str("?token=");
        url.push_str(token);
    }
    Ok(url)
}
