//! Configuration: the TOML file parsed into [`raw`] types, then validated into the typed,
//! ready-to-use values below. Nothing unvalidated leaves this module: templates are compiled,
//! durations parsed, URLs checked, secrets read from the environment. Every error names the file,
//! the line and the key.
//!
//! Relative paths (`store.path`, a file target's `path`, `template`) are resolved against the
//! directory of the config file; for the built-in default, the working directory.

mod exposure;
mod outbound;
mod raw;
pub mod rules;
mod shaping;
mod webhook;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use exposure::{ensure_token_file, MIN_TOKEN_CHARS};
use raw::{RawConfig, RawRetry, RawTarget};
use toml::Spanned;

use crate::deliver::RetryPolicy;
use crate::normalize::SourceKind;
use crate::targets::incident::FireOn;
use crate::targets::signing::SigningKeys;
use crate::targets::{VictoropsSpec, DEFAULT_KEY_FIELD, PLATFORMS, STATUSHUB_DEFAULT_URL};
use crate::template::{ContextNeeds, Escape, TemplateRef, Templates};
use rules::{compile_rules, Condition, Rules};

/// The `config.toml` shipped at the repository root, built into the binary so the relay runs
/// with no file at all.
pub const DEFAULT_CONFIG: &str = include_str!("../../config.toml");

#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub delivery: DeliveryConfig,
    pub sources: Vec<SourceConfig>,
    pub targets: Vec<TargetConfig>,
    pub rules: Arc<Rules>,
    pub templates: Arc<Templates>,
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// `None`: no admin API.
    pub listen: Option<SocketAddr>,
    /// Bearer token every admin request but `/healthz` and `/readyz` must carry.
    pub token: Option<String>,
    /// Where the token is kept; the relay creates it with a random token when it is missing.
    pub token_file: Option<PathBuf>,
    /// Host names (besides IP literals and `localhost`) the admin API answers to, in `Host`
    /// and `Origin`.
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests and deliveries.
    pub shutdown_grace: Duration,
    /// A client must send its request headers within this long.
    pub header_timeout: Duration,
    /// …and its body within this long once the headers are in.
    pub body_timeout: Duration,
    /// Connections served at once; at the limit, idle keep-alive connections are closed to make
    /// room, else further ones wait to be accepted.
    pub max_connections: usize,
    /// Connections one client address may hold at once; more are closed as they arrive.
    pub max_connections_per_address: usize,
    /// Messages a PagerDuty V1/V2 batch may carry; a larger one is answered 413.
    pub max_batch_messages: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub dedup_window: Duration,
    /// Events whose deliveries all succeeded (or were skipped) are deleted after this long.
    pub retain_delivered: Duration,
    /// Dead letters are deleted after this long.
    pub retain_dead: Duration,
    pub prune_interval: Duration,
    /// Bytes on disk above which ingest answers 503; 0: no budget.
    pub disk_budget: u64,
    /// Free bytes on the store's filesystem below which ingest answers 503. sled hangs when
    /// its disk fills up, so it must never get there.
    pub min_free_bytes: u64,
    /// How long a request waits for its write before answering 503.
    pub write_timeout: Duration,
    /// The embedded store's write-ahead log begins a new segment past this size.
    pub log_segment_bytes: u64,
    pub backend: Backend,
}

/// Where events are kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// An embedded sled database in `store.path`: one instance.
    Sled,
    /// A PostgreSQL database that several instances share.
    Postgres(crate::store::PgOptions),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub user_agent: reqwest::header::HeaderValue,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    pub path: String,
    pub token: Option<String>,
    /// Set as `alert.routing_key` on every event of this source.
    pub routing_key: Option<String>,
    /// PagerDuty V3 signing secrets; when set, every request must carry a valid signature.
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: String,
    pub kind: TargetKind,
    pub ordering_key: OrderingKey,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Only events from these sources are routed here; `None` means all.
    pub sources: Option<Vec<String>>,
    /// Consecutive failed attempts that suspend the target; 0 never suspends.
    pub suspend_after: u32,
    /// First wait of the suspension probe; it doubles up to 5 minutes.
    pub probe_interval: Duration,
    pub receive: Receive,
    /// Conditions every event must meet to be delivered here.
    pub filter: Vec<Condition>,
    /// Rate limit, coalescing, flap suppression, maintenance windows.
    pub shaping: crate::deliver::Shaping,
}

impl TargetConfig {
    /// What of the template context this target's requests read: the rest is not built.
    pub fn needs(&self) -> ContextNeeds {
        match &self.kind {
            TargetKind::Webhook(spec) | TargetKind::Statushub(spec) => spec.needs,
            TargetKind::File(_) => ContextNeeds {
                raw: true,
                ..ContextNeeds::NONE
            },
            TargetKind::Snowplow(_) => ContextNeeds {
                payload: true,
                ..ContextNeeds::NONE
            },
            TargetKind::Victorops(spec) => spec.needs,
        }
    }
}

/// Which events a target takes, before its `filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receive {
    /// Every event from its `sources`, plus those rules route to it.
    All,
    /// Only events a rule routes to it.
    Routed,
}

#[derive(Debug, Clone)]
pub enum TargetKind {
    Webhook(WebhookSpec),
    File(FileSpec),
    Snowplow(SnowplowSpec),
    /// A webhook with StatusHub's defaults, firing on incident changes (`fire_on`).
    Statushub(WebhookSpec),
    /// Alerts to a VictorOps REST endpoint integration.
    Victorops(VictoropsSpec),
}

#[derive(Debug, Clone)]
pub struct SnowplowSpec {
    /// `scheme://host[:port]`, no trailing slash.
    pub collector: String,
    pub app_id: Option<String>,
    pub platform: Option<String>,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct WebhookSpec {
    pub method: reqwest::Method,
    pub url: TemplateRef,
    /// Scheme, host and port of the configured URL. A rendered URL must keep them.
    pub origin: (String, String, u16),
    pub headers: Vec<(reqwest::header::HeaderName, TemplateRef)>,
    pub body: TemplateRef,
    /// What of the template context its templates read.
    pub needs: ContextNeeds,
    /// Standard Webhooks signing secrets (`signing_secrets`); empty: unsigned.
    pub signing: SigningKeys,
    /// For a `statushub` target: which incident changes fire (`fire_on`).
    pub fire_on: Option<FireOn>,
    /// Set when the body must be JSON (its Content-Type says so): where the body was written,
    /// for the check that renders it with the built-in samples (`crate::preflight`).
    pub json_body: Option<Origin>,
}

/// Where in the config a value was written, for errors found after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
}

impl Origin {
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            key: self.key.clone(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FileSpec {
    pub path: PathBuf,
}

/// How a delivery's ordering key is computed. The default, one alert field, is read directly
/// on the ingest path instead of going through a template render.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderingKey {
    AlertField(String),
    Template(TemplateRef),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file, line)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads `path`, or with `None` `./config.toml` when it exists and the built-in default
    /// otherwise.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from("config.toml")).filter(|p| p.exists()),
        };
        match path {
            Some(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(&p).map_err(|e| ConfigError {
                    file: name.clone(),
                    line: None,
                    key: String::new(),
                    message: format!("cannot read: {e}"),
                })?;
                let base = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                Config::parse(&text, &name, base)
            }
            None => Config::parse(DEFAULT_CONFIG, "<built-in config.toml>", Path::new(".")),
        }
    }

    /// Parses and validates config text; `file` names it in errors, `base` anchors relative
    /// paths.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, file, base, &|var| std::env::var(var).ok())
    }

    /// [`Config::parse`] with `env` standing in for the environment that `*_env` keys read
    /// (the documentation's examples are checked with placeholders).
    pub fn parse_with_env(
        text: &str,
        file: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let v = Validator {
            file,
            text,
            base,
            env,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: e.span().map(|s| v.line_of(s.start)),
            key: String::new(),
            message: e.message().trim().to_owned(),
        })?;
        v.validate(raw)
    }
}

struct Validator<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

const NAME_HELP: &str = "use letters, digits, '-', '_' or '.'";

impl Validator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn err<T>(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        msg: impl Into<String>,
    ) -> Result<T> {
        Err(ConfigError {
            file: self.file.to_owned(),
            line: span.map(|s| self.line_of(s.start)),
            key: key.to_owned(),
            message: msg.into(),
        })
    }

    fn duration(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration> {
        let Some(v) = v else { return Ok(default) };
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) => Ok(d),
            Err(_) => self.err(
                Some(v.span()),
                key,
                format!(
                    "{:?} is not a duration like \"2s\", \"5m\" or \"30d\"",
                    v.get_ref()
                ),
            ),
        }
    }

    fn int(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64> {
        let Some(v) = v else { return Ok(default) };
        let n = *v.get_ref();
        if !range.contains(&n) {
            return self.err(
                Some(v.span()),
                key,
                format!("{n} is out of range ({} to {})", range.start(), range.end()),
            );
        }
        Ok(n)
    }

    /// A secret given inline or by the name of an environment variable, not both.
    fn secret(
        &self,
        inline: &Option<Spanned<String>>,
        env: &Option<Spanned<String>>,
        key: &str,
        env_key: &str,
    ) -> Result<Option<String>> {
        match (inline, env) {
            (Some(t), Some(_)) => self.err(
                Some(t.span()),
                key,
                format!("set either {} or {}, not both", last(key), last(env_key)),
            ),
            (Some(t), None) => Ok(Some(t.get_ref().clone())),
            (None, Some(var)) => match (self.env)(var.get_ref()) {
                Some(t) => Ok(Some(t)),
                None => self.err(
                    Some(var.span()),
                    env_key,
                    format!("environment variable {} is not set", var.get_ref()),
                ),
            },
            (None, None) => Ok(None),
        }
    }

    /// A listen address, by default `127.0.0.1:<port>`.
    fn listen(&self, v: &Option<Spanned<String>>, key: &str, port: u16) -> Result<SocketAddr> {
        let Some(l) = v else {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        };
        match l.get_ref().parse() {
            Ok(a) => Ok(a),
            Err(_) => self.err(
                Some(l.span()),
                key,
                format!(
                    "{:?} is not an address like \"127.0.0.1:{port}\"",
                    l.get_ref()
                ),
            ),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() || self.base == Path::new(".") {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn name(&self, v: &Spanned<String>, key: &str, seen: &mut HashSet<String>) -> Result<String> {
        let n = v.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return self.err(
                Some(v.span()),
                key,
                format!("{n:?} is not a valid name: {NAME_HELP}"),
            );
        }
        if !seen.insert(n.clone()) {
            return self.err(Some(v.span()), key, format!("{n:?} is used twice"));
        }
        Ok(n.clone())
    }

    fn validate(&self, raw: RawConfig) -> Result<Config> {
        let listen = self.listen(&raw.server.listen, "server.listen", 8080)?;
        let server = ServerConfig {
            listen,
            max_body_bytes: self.int(
                &raw.server.max_body_bytes,
                "server.max_body_bytes",
                1..=64 << 20,
                1 << 20,
            )? as usize,
            shutdown_grace: self.duration(
                &raw.server.shutdown_grace,
                "server.shutdown_grace",
                Duration::from_secs(10),
            )?,
            header_timeout: self.duration(
                &raw.server.header_timeout,
                "server.header_timeout",
                Duration::from_secs(10),
            )?,
            body_timeout: self.duration(
                &raw.server.body_timeout,
                "server.body_timeout",
                Duration::from_secs(10),
            )?,
            max_connections: self.int(
                &raw.server.max_connections,
                "server.max_connections",
                1..=100_000,
                1024,
            )? as usize,
            max_connections_per_address: self.int(
                &raw.server.max_connections_per_address,
                "server.max_connections_per_address",
                1..=100_000,
                64,
            )? as usize,
            max_batch_messages: self.int(
                &raw.server.max_batch_messages,
                "server.max_batch_messages",
                1..=100_000,
                crate::normalize::DEFAULT_MAX_BATCH_MESSAGES as i64,
            )? as usize,
        };
        let store = StoreConfig {
            path: self.path(
                raw.store
                    .path
                    .as_ref()
                    .map_or("data", |p| p.get_ref().as_str()),
            ),
            dedup_window: self.duration(
                &raw.store.dedup_window,
                "store.dedup_window",
                Duration::from_secs(30 * 86_400),
            )?,
            retain_delivered: self.duration(
                &raw.store.retain_delivered,
                "store.retain_delivered",
                Duration::from_secs(7 * 86_400),
            )?,
            retain_dead: self.duration(
                &raw.store.retain_dead,
                "store.retain_dead",
                Duration::from_secs(30 * 86_400),
            )?,
            prune_interval: self.duration(
                &raw.store.prune_interval,
                "store.prune_interval",
                Duration::from_secs(60),
            )?,
            disk_budget: self.int(&raw.store.disk_budget, "store.disk_budget", 0..=i64::MAX, 0)?
                as u64,
            min_free_bytes: self.int(
                &raw.store.min_free_bytes,
                "store.min_free_bytes",
                0..=i64::MAX,
                64 << 20,
            )? as u64,
            write_timeout: self.duration(
                &raw.store.write_timeout,
                "store.write_timeout",
                Duration::from_secs(4),
            )?,
            log_segment_bytes: self.int(
                &raw.store.log_segment_bytes,
                "store.log_segment_bytes",
                4096..=1 << 30,
                64 << 20,
            )? as u64,
            // Set once the targets' timeouts are known: the lease must outlast them.
            backend: Backend::Sled,
        };
        let delivery = DeliveryConfig {
            connect_timeout: self.duration(
                &raw.delivery.connect_timeout,
                "delivery.connect_timeout",
                Duration::from_secs(5),
            )?,
            timeout: self.duration(
                &raw.delivery.timeout,
                "delivery.timeout",
                Duration::from_secs(30),
            )?,
            user_agent: match &raw.delivery.user_agent {
                None => reqwest::header::HeaderValue::from_static(concat!(
                    "hookrelay/",
                    env!("CARGO_PKG_VERSION")
                )),
                Some(u) => match reqwest::header::HeaderValue::from_str(u.get_ref()) {
                    Ok(v) => v,
                    Err(_) => {
                        return self.err(
                            Some(u.span()),
                            "delivery.user_agent",
                            format!("{:?} is not a valid header value", u.get_ref()),
                        )
                    }
                },
            },
        };
        let default_concurrency = self.int(
            &raw.delivery.concurrency,
            "delivery.concurrency",
            1..=256,
            4,
        )?;
        self.retry(&raw.retry, "retry")?;
        let default_suspend = self.int(
            &raw.delivery.suspend_after,
            "delivery.suspend_after",
            0..=1000,
            5,
        )? as u32;
        let default_probe = self.duration(
            &raw.delivery.probe_interval,
            "delivery.probe_interval",
            Duration::from_secs(5),
        )?;
        let admin = self.admin(&raw.admin)?;

        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        let mut sources = Vec::new();
        for (i, s) in raw.sources.iter().enumerate() {
            let key = |k: &str| format!("sources[{i}].{k}");
            let name = self.name(&s.name, &key("name"), &mut names)?;
            let kind = match s.kind.get_ref().as_str() {
                "statusgator" => SourceKind::Statusgator,
                "pagerduty" => SourceKind::Pagerduty,
                other => {
                    return self.err(
                        Some(s.kind.span()),
                        &key("kind"),
                        format!(
                            "unknown kind {other:?}: expected \"statusgator\" or \"pagerduty\""
                        ),
                    )
                }
            };
            let path = s.path.get_ref();
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) || path.len() < 2 {
                return self.err(
                    Some(s.path.span()),
                    &key("path"),
                    format!("{path:?} must be a URL path like \"/com.statusgator/v1\""),
                );
            }
            let path = path.trim_end_matches('/').to_owned();
            if !paths.insert(path.clone()) {
                return self.err(
                    Some(s.path.span()),
                    &key("path"),
                    format!("{path:?} is used by two sources"),
                );
            }
            let token = self.secret(&s.token, &s.token_env, &key("token"), &key("token_env"))?;
            if let Some(t) = &token {
                let bad = t.is_empty()
                    || !t
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
                let span = s.token.as_ref().or(s.token_env.as_ref()).map(|t| t.span());
                if bad {
                    return self.err(span, &key("token"), "a token must be non-empty and use only letters, digits, '-', '_', '.' or '~' (it travels in a URL)");
                }
                self.token_strength(t, span, &key("token"))?;
            }
            let routing_key = s.routing_key.as_ref().map(|r| r.get_ref().clone());
            let secrets = match (&s.secrets, &s.secrets_env) {
                (Some(list), None) => list.get_ref().clone(),
                (None, Some(var)) => match (self.env)(var.get_ref()) {
                    Some(v) => v
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                    None => {
                        return self.err(
                            Some(var.span()),
                            &key("secrets_env"),
                            format!("environment variable {} is not set", var.get_ref()),
                        )
                    }
                },
                (Some(list), Some(_)) => {
                    return self.err(
                        Some(list.span()),
                        &key("secrets"),
                        "set either secrets or secrets_env, not both",
                    )
                }
                (None, None) => Vec::new(),
            };
            let secrets_span = s
                .secrets
                .as_ref()
                .map(|l| l.span())
                .or(s.secrets_env.as_ref().map(|v| v.span()));
            if secrets_span.is_some() {
                if kind != SourceKind::Pagerduty {
                    return self.err(secrets_span, &key("secrets"), "only PagerDuty signs its webhooks; protect a StatusGator source with a token");
                }
                if secrets.is_empty() || secrets.iter().any(String::is_empty) {
                    return self.err(
                        secrets_span,
                        &key("secrets"),
                        "a signing secret must not be empty",
                    );
                }
            }
            sources.push(SourceConfig {
                name,
                kind,
                path,
                token,
                routing_key,
                secrets,
            });
        }
        if sources.is_empty() {
            return self.err(
                None,
                "sources",
                "no [[sources]] configured: the relay would accept nothing",
            );
        }

        let mut templates = Templates::default();
        let mut targets = Vec::new();
        let mut target_names = HashSet::new();
        for (i, t) in raw.targets.iter().enumerate() {
            targets.push(self.target(
                i,
                t,
                &raw.retry,
                &sources,
                &mut target_names,
                &mut templates,
                default_concurrency as usize,
                delivery.timeout,
            )?);
            let last = targets.last_mut().expect("just pushed");
            let t = &raw.targets[i];
            last.suspend_after = self.int(
                &t.suspend_after,
                &format!("targets[{i}].suspend_after"),
                0..=1000,
                default_suspend as i64,
            )? as u32;
            last.probe_interval = self.duration(
                &t.probe_interval,
                &format!("targets[{i}].probe_interval"),
                default_probe,
            )?;
        }
        let target_names: Vec<String> = targets
            .iter()
            .map(|t: &TargetConfig| t.name.clone())
            .collect();
        let rules = compile_rules(&raw.rules, &target_names)
            .or_else(|p| self.err(p.span, &p.key, p.message))?;
        let longest = targets
            .iter()
            .map(|t| t.timeout)
            .chain([delivery.timeout])
            .max()
            .unwrap_or_default()
            + delivery.connect_timeout;
        let mut store = store;
        store.backend = self.backend(&raw.store, &server, longest)?;
        Ok(Config {
            server,
            store,
            delivery,
            sources,
            targets,
            rules: Arc::new(rules),
            templates: Arc::new(templates),
            admin,
        })
    }

    /// `store.backend` and, for PostgreSQL, how to reach it. `longest` is the longest an
    /// attempt may take, which a lease must exceed.
    fn backend(
        &self,
        raw: &raw::RawStore,
        server: &ServerConfig,
        longest: Duration,
    ) -> Result<Backend> {
        let kind = raw.backend.as_ref();
        let postgres_only = [
            (raw.url.as_ref().map(|v| v.span()), "store.url"),
            (raw.url_env.as_ref().map(|v| v.span()), "store.url_env"),
            (raw.pool_size.as_ref().map(|v| v.span()), "store.pool_size"),
            (raw.lease.as_ref().map(|v| v.span()), "store.lease"),
            (raw.instance.as_ref().map(|v| v.span()), "store.instance"),
        ];
        match kind.map(|k| k.get_ref().as_str()) {
            None | Some("sled") => {
                if let Some((span, key)) = postgres_only.into_iter().find(|(s, _)| s.is_some()) {
                    return self.err(
                        span,
                        key,
                        "applies only to backend = \"postgres\"; the store is sled",
                    );
                }
                Ok(Backend::Sled)
            }
            Some("postgres") => {
                let Some(url) =
                    self.secret(&raw.url, &raw.url_env, "store.url", "store.url_env")?
                else {
                    return self.err(
                        kind.map(|k| k.span()),
                        "store.url",
                        "backend = \"postgres\" needs store.url (or store.url_env naming a \
                         variable that holds it), like postgres://user:password@host/db",
                    );
                };
                let span = raw.url.as_ref().or(raw.url_env.as_ref()).map(|v| v.span());
                let key = if raw.url.is_some() {
                    "store.url"
                } else {
                    "store.url_env"
                };
                if let Err(e) = url.parse::<tokio_postgres::Config>() {
                    return self.err(span, key, format!("not a PostgreSQL URL: {e}"));
                }
                let pool_size = self.int(&raw.pool_size, "store.pool_size", 1..=1000, 16)? as usize;
                let default_lease = longest + Duration::from_secs(30);
                let lease = self.duration(&raw.lease, "store.lease", default_lease)?;
                if lease <= longest {
                    return self.err(
                        raw.lease.as_ref().map(|v| v.span()),
                        "store.lease",
                        format!(
                            "{} is not longer than the longest attempt ({} with the connect \
                             timeout): another instance could send a delivery still in flight",
                            humantime::format_duration(lease),
                            humantime::format_duration(longest)
                        ),
                    );
                }
                let instance = match &raw.instance {
                    Some(i) if i.get_ref().trim().is_empty() || i.get_ref().contains('\n') => {
                        return self.err(
                            Some(i.span()),
                            "store.instance",
                            "must be a non-empty name on one line",
                        )
                    }
                    Some(i) => i.get_ref().clone(),
                    None => default_instance(server.listen),
                };
                Ok(Backend::Postgres(crate::store::PgOptions {
                    url,
                    pool_size,
                    lease,
                    instance,
                }))
            }
            Some(other) => self.err(
                kind.map(|k| k.span()),
                "store.backend",
                format!("{other:?} is not a backend; use \"sled\" or \"postgres\""),
            ),
        }
    }

    fn retry(&self, r: &RawRetry, key: &str) -> Result<RetryPolicy> {
        let d = RetryPolicy::default();
        let k = |s: &str| format!("{key}.{s}");
        let policy = RetryPolicy {
            max_retries: self.int(
                &r.max_retries,
                &k("max_retries"),
                0..=1000,
                d.max_retries as i64,
            )? as u32,
            initial_delay: self.duration(&r.initial_delay, &k("initial_delay"), d.initial_delay)?,
            multiplier: r.multiplier.as_ref().map_or(d.multiplier, |m| *m.get_ref()),
            jitter: r.jitter.as_ref().map_or(d.jitter, |j| *j.get_ref()),
            max_delay: self.duration(&r.max_delay, &k("max_delay"), d.max_delay)?,
            retry_after_max: self.duration(
                &r.retry_after_max,
                &k("retry_after_max"),
                d.retry_after_max,
            )?,
        };
        if let Some(m) = &r.multiplier {
            if !(1.0..=100.0).contains(m.get_ref()) {
                return self.err(
                    Some(m.span()),
                    &k("multiplier"),
                    "must be between 1.0 and 100.0",
                );
            }
        }
        if let Some(j) = &r.jitter {
            if !(0.0..1.0).contains(j.get_ref()) {
                return self.err(
                    Some(j.span()),
                    &k("jitter"),
                    "must be at least 0.0 and below 1.0",
                );
            }
        }
        if policy.initial_delay.is_zero() {
            return self.err(
                r.initial_delay.as_ref().map(|s| s.span()),
                &k("initial_delay"),
                "must be longer than zero",
            );
        }
        Ok(policy)
    }

    #[allow(clippy::too_many_arguments)]
    fn target(
        &self,
        i: usize,
        t: &RawTarget,
        global_retry: &RawRetry,
        sources: &[SourceConfig],
        names: &mut HashSet<String>,
        templates: &mut Templates,
        default_concurrency: usize,
        default_timeout: Duration,
    ) -> Result<TargetConfig> {
        let key = |k: &str| format!("targets[{i}].{k}");
        let name = self.name(&t.name, &key("name"), names)?;
        let kind_name = t.kind.get_ref().as_str();
        let allowed: &[&str] = match kind_name {
            "webhook" => &["url", "method", "headers", "body", "template", "body_escape", "signing_secrets", "signing_secrets_env"],
            "file" => &["path"],
            "snowplow" => &["collector", "app_id", "platform", "max_body_bytes"],
            "statushub" => &["url", "key_field", "headers", "body", "template", "body_escape", "fire_on", "signing_secrets", "signing_secrets_env"],
            "victorops" => &["url", "url_env"],
            other => return self.err(Some(t.kind.span()), &key("kind"), format!("unknown kind {other:?}: expected \"webhook\", \"file\", \"snowplow\", \"statushub\" or \"victorops\"")),
        };
        let span_of = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.span());
        let specific: [(&str, bool, Option<std::ops::Range<usize>>); 16] = [
            ("url", t.url.is_some(), span_of(&t.url)),
            ("method", t.method.is_some(), span_of(&t.method)),
            (
                "headers",
                t.headers.is_some(),
                t.headers
                    .as_ref()
                    .and_then(|h| h.values().next())
                    .map(|v| v.span()),
            ),
            ("body", t.body.is_some(), span_of(&t.body)),
            ("template", t.template.is_some(), span_of(&t.template)),
            (
                "body_escape",
                t.body_escape.is_some(),
                span_of(&t.body_escape),
            ),
            ("path", t.path.is_some(), span_of(&t.path)),
            ("collector", t.collector.is_some(), span_of(&t.collector)),
            ("app_id", t.app_id.is_some(), span_of(&t.app_id)),
            ("platform", t.platform.is_some(), span_of(&t.platform)),
            (
                "max_body_bytes",
                t.max_body_bytes.is_some(),
                t.max_body_bytes.as_ref().map(|v| v.span()),
            ),
            ("key_field", t.key_field.is_some(), span_of(&t.key_field)),
            ("url_env", t.url_env.is_some(), span_of(&t.url_env)),
            (
                "fire_on",
                t.fire_on.is_some(),
                t.fire_on.as_ref().map(|v| v.span()),
            ),
            (
                "signing_secrets",
                t.signing_secrets.is_some(),
                t.signing_secrets.as_ref().map(|v| v.span()),
            ),
            (
                "signing_secrets_env",
                t.signing_secrets_env.is_some(),
                span_of(&t.signing_secrets_env),
            ),
        ];
        for (k, present, span) in specific {
            if present && !allowed.contains(&k) {
                return self.err(
                    span.or(Some(t.kind.span())),
                    &key(k),
                    format!("a {kind_name:?} target has no key {k:?}"),
                );
            }
        }
        let kind = match kind_name {
            "webhook" => TargetKind::Webhook(self.webhook(i, &name, t, templates, None)?),
            "statushub" => {
                let field = t
                    .key_field
                    .as_ref()
                    .map_or(DEFAULT_KEY_FIELD, |f| f.get_ref().as_str());
                if field.is_empty() || field.contains(['{', '}', '"', '\\']) {
                    return self.err(
                        span_of(&t.key_field),
                        &key("key_field"),
                        format!("{field:?} is not a usable alert field name"),
                    );
                }
                let url = STATUSHUB_DEFAULT_URL.replace("{key_field}", field);
                TargetKind::Statushub(self.webhook(i, &name, t, templates, Some(url))?)
            }
            "snowplow" => TargetKind::Snowplow(self.snowplow(i, t)?),
            "victorops" => TargetKind::Victorops(self.victorops(i, &name, t, templates)?),
            _ => match &t.path {
                Some(p) if !p.get_ref().is_empty() => TargetKind::File(FileSpec {
                    path: self.path(p.get_ref()),
                }),
                _ => {
                    return self.err(
                        Some(t.name.span()),
                        &key("path"),
                        "a \"file\" target needs a path",
                    )
                }
            },
        };
        if kind_name == "statushub" {
            self.statushub_ordering_key(i, t)?;
        }
        let ordering_key = match &t.ordering_key {
            None => OrderingKey::AlertField("entity_id".into()),
            Some(src) => match alert_field(src.get_ref()) {
                Some(field) => OrderingKey::AlertField(field.to_owned()),
                None => OrderingKey::Template(
                    templates
                        .register(Escape::None, &format!("{name}/ordering_key"), src.get_ref())
                        .or_else(|e| {
                            self.err(
                                Some(src.span()),
                                &key("ordering_key"),
                                format!("bad template: {e}"),
                            )
                        })?,
                ),
            },
        };
        let mut retry = global_retry.clone();
        if let Some(over) = &t.retry {
            let o = over.get_ref();
            macro_rules! overlay { ($($f:ident),*) => { $( if o.$f.is_some() { retry.$f = o.$f.clone(); } )* } }
            overlay!(
                max_retries,
                initial_delay,
                multiplier,
                jitter,
                max_delay,
                retry_after_max
            );
        }
        let retry = self.retry(&retry, &key("retry"))?;
        if let Some(list) = &t.sources {
            for s in list.get_ref() {
                if !sources.iter().any(|src| &src.name == s) {
                    return self.err(
                        Some(list.span()),
                        &key("sources"),
                        format!("unknown source {s:?}"),
                    );
                }
            }
        }
        let receive = match t.receive.as_ref().map(|r| r.get_ref().as_str()) {
            None | Some("all") => Receive::All,
            Some("routed") => Receive::Routed,
            Some(other) => {
                return self.err(
                    t.receive.as_ref().map(|r| r.span()),
                    &key("receive"),
                    format!("{other:?} is not \"all\" or \"routed\""),
                )
            }
        };
        let filter = self.filter(&t.filter, &key("filter"))?;
        let shaping = self.shaping(i, t, kind_name == "statushub")?;
        Ok(TargetConfig {
            name,
            kind,
            receive,
            filter,
            shaping,
            ordering_key,
            retry,
            timeout: self.duration(&t.timeout, &key("timeout"), default_timeout)?,
            concurrency: self.int(
                &t.concurrency,
                &key("concurrency"),
                1..=256,
                default_concurrency as i64,
            )? as usize,
            sources: t.sources.as_ref().map(|s| s.get_ref().clone()),
            suspend_after: 5,
            probe_interval: Duration::from_secs(5),
        })
    }

    fn snowplow(&self, i: usize, t: &RawTarget) -> Result<SnowplowSpec> {
        let key = |k: &str| format!("targets[{i}].{k}");
        let Some(collector) = &t.collector else {
            return self.err(Some(t.name.span()), &key("collector"), "a \"snowplow\" target needs a collector URL like \"https://collector.example.com\"");
        };
        let text = collector.get_ref().trim_end_matches('/');
        let parsed = reqwest::Url::parse(text).ok().filter(|u| {
            (u.scheme() == "http" || u.scheme() == "https")
                && u.host_str().is_some()
                && u.path() == "/"
                && u.query().is_none()
                && u.fragment().is_none()
        });
        if parsed.is_none() || text.contains('{') {
            return self.err(Some(collector.span()), &key("collector"), format!("{:?} must be scheme://host[:port] with no path (Snowplow's adapters take exactly /<vendor>/<version>)", collector.get_ref()));
        }
        let platform = match &t.platform {
            None => Some("srv".to_owned()),
            Some(p) if PLATFORMS.contains(&p.get_ref().as_str()) => Some(p.get_ref().clone()),
            Some(p) => {
                return self.err(
                    Some(p.span()),
                    &key("platform"),
                    format!(
                        "{:?} is not a Snowplow platform code ({})",
                        p.get_ref(),
                        PLATFORMS.join(", ")
                    ),
                )
            }
        };
        let app_id = t.app_id.as_ref().map(|a| a.get_ref().clone());
        if let (Some(a), Some(raw)) = (&app_id, &t.app_id) {
            if a.chars().count() > 255 || a.contains(['\n', '\r', '\t']) {
                return self.err(
                    Some(raw.span()),
                    &key("app_id"),
                    "must be at most 255 characters with no tabs or newlines",
                );
            }
        }
        Ok(SnowplowSpec {
            collector: text.to_owned(),
            app_id,
            platform,
            max_body_bytes: self.int(
                &t.max_body_bytes,
                &key("max_body_bytes"),
                1_000..=1_000_000,
                1_000_000,
            )? as usize,
        })
    }
}

/// The last segment of a dotted key: `sources[0].token` → `token`.
fn last(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// `{{alert.NAME}}` (spaces allowed inside the braces) → `NAME`.
fn alert_field(src: &str) -> Option<&str> {
    let inner = src.trim().strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let field = inner.strip_prefix("alert.")?;
    (!field.is_empty() && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(field)
}

#[cfg(test)]
mod tests;

/// An instance's name when none is configured: the host's name and the ingest port, which
/// differ between instances on one host and stay the same across restarts.
fn default_instance(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hookrelay".into());
    match listen.port() {
        // A port picked at bind time (tests) says nothing stable: never share a name.
        0 => format!("{host}:0:{}", uuid::Uuid::now_v7().simple()),
        port => format!("{host}:{port}"),
    }
}
