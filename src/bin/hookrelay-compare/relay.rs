//! The relay under test: a release `hookrelay` child with its own store in the run's
//! directory, admin API off, free-space reserve off, one PagerDuty source on `/pd`, and
//! webhook targets `/t0`, `/t1`, … on the sink (plus, for the backlog case, one that is down).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::procs;

/// Where a relay keeps its store and configuration, kept across restarts.
pub struct Setup {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    pub sink_port: u16,
    pub lanes: usize,
}

impl Setup {
    pub fn new(bin: &Path, dir: PathBuf, sink_port: u16, lanes: usize) -> anyhow::Result<Setup> {
        std::fs::create_dir_all(&dir)?;
        Ok(Setup {
            bin: bin.to_owned(),
            dir,
            port: procs::free_port()?,
            sink_port,
            lanes,
        })
    }

    /// Writes the configuration: `live` targets on the sink, and with `down` one more that is
    /// unreachable (each delivery to it fails once and waits an hour; never suspended).
    pub fn configure(&self, live: usize, down: bool) -> anyhow::Result<PathBuf> {
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nmax_connections = 4096\n[admin]\nenabled = false\n\
             [store]\npath = \"{}\"\nmin_free_bytes = 0\n\
             [[sources]]\nname = \"pd\"\nkind = \"pagerduty\"\npath = \"/pd\"\n",
            self.port,
            self.dir.join("data").display()
        );
        for i in 0..live {
            text.push_str(&format!(
                "[[targets]]\nname = \"t{i}\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/t{i}\"\nconcurrency = {}\n",
                self.sink_port, self.lanes
            ));
        }
        if down {
            text.push_str(&format!(
                "[[targets]]\nname = \"down\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/down\"\n\
                 retry = {{ initial_delay = \"1h\" }}\nsuspend_after = 0\n",
                procs::free_port()?
            ));
        }
        let path = self.dir.join("relay.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts the relay on the configuration written last and waits until it answers HTTP.
    pub fn start(&self) -> anyhow::Result<Relay> {
        let launched = Instant::now();
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("relay.toml"))
            .env(
                "HOOKRELAY_LOG",
                std::env::var("HOOKRELAY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        while procs::answers(self.port).is_err() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("the relay exited ({status}) before it answered");
            }
            anyhow::ensure!(
                launched.elapsed() < Duration::from_secs(300),
                "the relay did not answer within 300 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Relay {
            startup: launched.elapsed(),
            child,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub struct Relay {
    child: Child,
    /// From launch until it answered HTTP.
    pub startup: Duration,
}

impl Relay {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the relay uses less than a tenth of a core over half a second (or `longest`
    /// passed).
    pub async fn wait_idle(&self, longest: Duration) {
        let (started, mut cpu) = (Instant::now(), procs::cpu_us(&[self.pid()]));
        while started.elapsed() < longest {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = procs::cpu_us(&[self.pid()]);
            if now - cpu < 50_000 {
                return;
            }
            cpu = now;
        }
    }

    /// A clean stop (SIGTERM), waiting for the process to end.
    pub fn stop(mut self) {
        procs::signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }

    /// A crash (SIGKILL).
    pub fn crash(self) {
        // Drop kills it.
    }
}

/// A relay the benchmark lets go of without stopping it (an error on the way) is killed: left
/// running, it would take CPU from every later run on the machine.
impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU time (user + system, µs) of `pid`'s threads, summed by kind: the thread's name without
/// a trailing `-N` (`sled-io-3` is `sled-io`). Where the relay's CPU goes: `tokio-rt-worker`
/// (HTTP in and out, normalizing, delivery lanes), `hookrelay-store` (the log writer),
/// `hookrelay-apply` (the applier into sled), `sled-io` (sled's own writes).
pub fn thread_cpu_us(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut by_kind = std::collections::BTreeMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let name = name.trim_end();
        let kind = match name.rsplit_once('-') {
            Some((kind, n)) if n.bytes().all(|b| b.is_ascii_digit()) => kind,
            _ => name,
        };
        let us = procs::stat_us_in(&procs::stat_fields_at(&dir.join("stat")), [11, 12]);
        *by_kind.entry(kind.to_owned()).or_default() += us;
    }
    by_kind
}
