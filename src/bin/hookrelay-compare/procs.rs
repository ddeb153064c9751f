//! Processes as Linux shows them in /proc: their CPU time, peak memory and children, and the
//! small waits and signals the runs need.

use std::io::{Read, Write};
use std::time::Duration;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Sends one HTTP request and waits for the first byte of an answer, whatever its status.
/// A port that accepts says nothing: the relay binds before it opens its store.
pub fn answers(port: u16) -> std::io::Result<()> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(120)))?;
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")?;
    let mut first = [0u8; 1];
    match c.read(&mut first)? {
        1 => Ok(()),
        _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
    }
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `pid` and every process descended from it.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(p) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            if let Some(ppid) = stat_fields(p).get(1).and_then(|f| f.parse().ok()) {
                parents.push((p, ppid));
            }
        }
    }
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

/// Microseconds of CPU in the given fields of /proc/PID/stat, counted in ticks of USER_HZ
/// (100 per second on Linux).
fn stat_us(pid: u32, fields: [usize; 2]) -> u64 {
    let f = stat_fields(pid);
    fields
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum::<u64>()
        * 10_000
}

/// CPU time (user + system) the processes have used, in microseconds.
pub fn cpu_us(pids: &[u32]) -> u64 {
    pids.iter().map(|&pid| stat_us(pid, [11, 12])).sum()
}

/// CPU time (user + system) of this process, and of its children that ended and were waited
/// for (wrk, once a run is over), in microseconds.
pub fn own_cpu_us() -> (u64, u64) {
    let me = std::process::id();
    (stat_us(me, [11, 12]), stat_us(me, [13, 14]))
}

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
