//! A small WebDriver client for the console's browser tests: Debian's headless Chromium
//! driven through chromedriver over its HTTP protocol (W3C WebDriver), on 127.0.0.1.
//!
//! When Chromium or chromedriver is missing, `.ci/chromium` installs them (as `.ci/postgres`
//! installs PostgreSQL); when that cannot be done the test fails with the reason.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How a W3C element reference is keyed in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a wait for something on the page lasts before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct Browser {
    http: reqwest::Client,
    driver: Child,
    driver_port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// Where `.ci/chromium` found (or put) the browser and its driver.
fn install() -> (String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/chromium");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "the console's browser tests need Chromium and chromedriver: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let path = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{script} printed no {key}: {text}"))
            .to_owned()
    };
    (path("chromium="), path("chromedriver="))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a fresh profile, a window of
    /// `width` × `height`, and nothing that reaches beyond this machine.
    pub async fn start(width: u32, height: u32) -> Browser {
        static INSTALL: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
        let (chromium, chromedriver) = INSTALL.get_or_init(install).clone();
        let driver_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Its own process group, which the Chromium it starts joins: ending the group ends
        // every browser process even when the session's deletion did not (leftover browsers
        // from earlier runs were found still running, orphaned, using CPU).
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={driver_port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {chromedriver}: {e}"));
        let http = reqwest::Client::new();
        let status = format!("http://127.0.0.1:{driver_port}/status");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = http.get(&status).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            // No connection anywhere but the page's own: the machine's network is closed.
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--hide-scrollbars".into(),
            "--force-color-profile=srgb".into(),
            "--lang=en-US".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        // Chromium's sandbox refuses to run as root.
        if unsafe { libc::geteuid() } == 0 {
            args.push("--no-sandbox".into());
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let resp: Value = http
            .post(format!("http://127.0.0.1:{driver_port}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("Chromium did not start: {resp}"))
            .to_owned();
        Browser {
            http,
            driver,
            driver_port,
            session,
            _profile: profile,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/session/{}{path}",
            self.driver_port, self.session
        )
    }

    /// One command; its `value`, or `Err` with WebDriver's error.
    async fn try_cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let req = self.http.request(method.parse().unwrap(), self.url(path));
        let req = if method == "GET" {
            req
        } else {
            req.json(&body)
        };
        let resp: Value = req
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match resp["value"].get("error") {
            Some(err) => Err(format!("{err}: {}", resp["value"]["message"])),
            None => Ok(resp["value"].clone()),
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_cmd(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Element<'_> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self
                .try_cmd(
                    "POST",
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            if let Ok(v) = found {
                return Element {
                    browser: self,
                    id: v[ELEMENT].as_str().unwrap().to_owned(),
                };
            }
            assert!(
                Instant::now() < deadline,
                "no element {css:?} appeared; the page says: {}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> usize {
        self.eval(
            "return document.querySelectorAll(arguments[0]).length",
            vec![json!(css)],
        )
        .await
        .as_u64()
        .unwrap() as usize
    }

    /// The text of every element matching `css`, now (its `textContent`: as written, whatever
    /// the style sheet does to case or layout).
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let v = self
            .eval(
                "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)",
                vec![json!(css)],
            )
            .await;
        serde_json::from_value(v).unwrap()
    }

    /// The text of the first element matching `css`, or "" when there is none.
    pub async fn text(&self, css: &str) -> String {
        let v = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
                vec![json!(css)],
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the text of `css` holds `wanted`.
    pub async fn wait_text(&self, css: &str, wanted: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.text(css).await;
            if text.contains(wanted) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css:?} never showed {wanted:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `count(css) == n`.
    pub async fn wait_count(&self, css: &str, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.count(css).await;
            if got == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css:?} matched {got} elements, never {n}; the page says: {}",
                self.text("main").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn set_size(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// A PNG of the whole page at the window's width: the window grows to the page's height
    /// for the shot (at most 3,000 pixels), then returns to `height`.
    pub async fn screenshot(&self, path: &std::path::Path, width: u32, height: u32) {
        let full = self
            .eval(
                "return Math.ceil(document.documentElement.scrollHeight)",
                vec![],
            )
            .await
            .as_u64()
            .unwrap_or(u64::from(height)) as u32;
        self.set_size(width, full.clamp(height, 3000)).await;
        // Let layout settle at the new size.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b64 = self.cmd("GET", "/screenshot", Value::Null).await;
        let png = base64_decode(b64.as_str().unwrap());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
        self.set_size(width, height).await;
    }

    /// Ends the session (Chromium exits) and stops chromedriver.
    pub async fn quit(mut self) {
        let _ = self.try_cmd("DELETE", "", Value::Null).await;
        self.end_processes();
        self.session.clear();
    }
}

impl Browser {
    /// Kills chromedriver's process group (chromedriver and every Chromium process).
    fn end_processes(&mut self) {
        // SAFETY: kill(2) with a negative pid signals the group chromedriver leads (it was
        // started with `process_group(0)`); no memory is involved.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    /// A test that failed half way still ends its browser: the session is deleted with a plain
    /// blocking request (no runtime is needed here), then chromedriver is killed.
    fn drop(&mut self) {
        if !self.session.is_empty() {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.driver_port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = write!(
                    s,
                    "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.session
                );
                let _ = s.read_to_end(&mut Vec::new());
            }
            self.end_processes();
        }
    }
}

pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

impl Element<'_> {
    fn path(&self, what: &str) -> String {
        format!("/element/{}{what}", self.id)
    }

    pub async fn click(&self) {
        self.browser
            .cmd("POST", &self.path("/click"), json!({}))
            .await;
    }

    pub async fn clear(&self) {
        self.browser
            .cmd("POST", &self.path("/clear"), json!({}))
            .await;
    }

    /// Types `text` into the element, as keystrokes.
    pub async fn send_keys(&self, text: &str) {
        self.browser
            .cmd("POST", &self.path("/value"), json!({ "text": text }))
            .await;
    }
}

/// Standard base64 (what WebDriver screenshots come in), decoded.
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let take = chunk.len() * 6 / 8;
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}
