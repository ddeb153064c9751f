//! `file`: appends one JSON line per delivery to a local file, synced to disk before the
//! delivery counts as done. The default target: it shows the relay working with no network.
//! The file holds every event's raw body, so it is created readable by its owner only.

use std::path::PathBuf;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::{AttemptResult, Prepared};

pub struct FileTarget {
    path: PathBuf,
    file: Mutex<Option<tokio::fs::File>>,
}

impl FileTarget {
    pub fn new(path: PathBuf) -> FileTarget {
        FileTarget {
            path,
            file: Mutex::new(None),
        }
    }

    pub fn prepare(&self, ctx: &Value) -> Prepared {
        let line = serde_json::json!({
            "delivery": ctx.get("delivery"),
            "event": ctx.get("event"),
            "raw": ctx.get("raw"),
        });
        let mut line = serde_json::to_vec(&line).expect("JSON values serialize");
        line.push(b'\n');
        Prepared::Line {
            path: self.path.clone(),
            line,
        }
    }

    pub async fn append(&self, line: &[u8]) -> AttemptResult {
        let mut guard = self.file.lock().await;
        match self.write(&mut guard, line).await {
            Ok(()) => AttemptResult::Response {
                status: 200,
                retry_after: None,
                excerpt: None,
            },
            Err(e) => {
                // Reopen next time: the file may have been moved or its disk replaced.
                *guard = None;
                AttemptResult::Io(format!("{}: {e}", self.path.display()))
            }
        }
    }

    async fn write(&self, file: &mut Option<tokio::fs::File>, line: &[u8]) -> std::io::Result<()> {
        if file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await?;
            }
            let mut options = tokio::fs::OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            options.mode(0o600);
            let f = options.open(&self.path).await?;
            *file = Some(f);
        }
        let f = file.as_mut().expect("opened above");
        f.write_all(line).await?;
        f.flush().await?;
        f.sync_data().await
    }
}
