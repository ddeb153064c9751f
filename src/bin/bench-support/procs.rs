//! Processes and files as the benchmarks see them, from /proc: CPU time, peak memory, bytes
//! on disk, and the waits and signals the runs need. Shared by `hookrelay-bench` and
//! `hookrelay-compare` (each includes this file as a module).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Sends one HTTP request and waits for the first byte of an answer, whatever its status.
/// A port that accepts says nothing: the relay binds before it opens its store, so the
/// kernel accepts connections that wait for the whole of startup.
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

/// The fields of /proc/PID/stat after the command name (which may hold spaces), so that
/// `ppid` is field 1, `utime` 11, `stime` 12, `cutime` 13 and `cstime` 14.
pub fn stat_fields(pid: u32) -> Vec<String> {
    stat_fields_at(Path::new(&format!("/proc/{pid}/stat")))
}

/// The same from a stat file by path (a thread's: /proc/PID/task/TID/stat; /proc/TID/stat
/// counts the whole process).
pub fn stat_fields_at(path: &Path) -> Vec<String> {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    stat.rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Microseconds of CPU in two fields of /proc/PID/stat, counted in ticks of USER_HZ (100 per
/// second on Linux).
pub fn stat_us(pid: u32, fields: [usize; 2]) -> u64 {
    stat_us_in(&stat_fields(pid), fields)
}

/// The same from fields read already.
pub fn stat_us_in(f: &[String], fields: [usize; 2]) -> u64 {
    fields
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum::<u64>()
        * 10_000
}

/// CPU time (user + system) the processes have used, in microseconds. Unlike throughput it
/// hardly depends on what else the shared machine runs, so it is the figure to compare builds
/// by.
pub fn cpu_us(pids: &[u32]) -> u64 {
    pids.iter().map(|&pid| stat_us(pid, [11, 12])).sum()
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

/// Bytes in the files under `path`.
pub fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Sends a signal (`TERM`, `QUIT`, …) to a process.
pub fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// The 1-minute load average: benchmark figures from a machine busy with other work are not
/// comparable.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
