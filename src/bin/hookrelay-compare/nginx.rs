//! nginx as the baseline: a plain reverse proxy in front of the sink, started here from
//! Debian's `nginx` package (2 workers, upstream keep-alive, no access log), with its own
//! configuration, pid file, logs and temporary paths in the run's directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::procs;

pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

fn config(dir: &Path, port: u16, sink_port: u16, connections: usize) -> String {
    let d = dir.display();
    format!(
        "worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {workers}; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream sink {{
        server 127.0.0.1:{sink_port};
        keepalive {connections};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
        workers = (connections * 2).max(1024),
    )
}

impl Nginx {
    /// Starts nginx in front of the sink on `sink_port` and waits until it answers.
    pub fn start(
        bin: &Path,
        dir: &Path,
        sink_port: u16,
        connections: usize,
    ) -> anyhow::Result<Nginx> {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let port = procs::free_port()?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(&dir, port, sink_port, connections))?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut nginx = Nginx { child, port, dir };
        let started = Instant::now();
        // Up when it answers and both workers are there (their CPU is what is measured).
        while procs::answers(port).is_err() || tree(nginx.child.id()).len() < 3 {
            if let Some(status) = nginx.child.try_wait()? {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                anyhow::bail!("nginx exited ({status}):\n{log}");
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        tree(self.child.id())
    }

    pub fn stop(mut self) {
        procs::signal(self.child.id(), "QUIT");
        let _ = self.child.wait();
    }
}

/// `pid` and every process descended from it.
fn tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.file_name().to_str()?.parse().ok()?;
            Some((p, procs::stat_fields(p).get(1)?.parse().ok()?))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|&&(_, pp)| pp == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    found
}
