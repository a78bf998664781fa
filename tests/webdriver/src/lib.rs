//! A minimal WebDriver client for Debian's headless Chromium (`chromium` + `chromium-driver`):
//! what the dashboard's system tests and `plume bench --suite dashboard` (built with the
//! coordinator's `page-bench` feature) need: open a page, run a script, wait for a condition,
//! take a screenshot, and nothing more. It is test tooling, so a default build of `plume`
//! does not contain it.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the driver and the browser.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A running chromedriver with one headless browser session; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, `width`×`height`.
    pub fn start(width: u32, height: u32) -> Result<Browser> {
        if !Path::new(CHROMEDRIVER).is_file() || !Path::new(CHROMIUM).is_file() {
            bail!(
                "headless Chromium is missing ({CHROMEDRIVER}, {CHROMIUM}): \
                 apt-get install chromium chromium-driver (scripts/setup does this as root)"
            );
        }
        // A free loopback port: bound, then released for chromedriver to take.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let profile = tempfile::tempdir()?;
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{}/status", b.base)).call().is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on port {port}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The flags this machine needs: no sandbox as root, and no background connections
        // (the network is closed; Chromium would retry them endlessly).
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", b._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = b.post("/session", caps)?;
        b.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {v}"))?
            .to_string();
        Ok(b)
    }

    fn post(&self, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let res = ureq::post(&url).send_json(body);
        Self::value(res, &url)
    }

    fn value(res: std::result::Result<ureq::Response, ureq::Error>, url: &str) -> Result<Value> {
        match res {
            Ok(r) => {
                let v: Value = r.into_json()?;
                Ok(v["value"].clone())
            }
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                bail!(
                    "webdriver {url}: HTTP {code}: {}",
                    text.chars().take(600).collect::<String>()
                )
            }
            Err(e) => Err(anyhow!("webdriver {url}: {e}")),
        }
    }

    fn session_path(&self, tail: &str) -> String {
        format!("/session/{}{tail}", self.session)
    }

    /// Opens `url` (returns when the document has loaded).
    pub fn goto(&self, url: &str) -> Result<()> {
        self.post(&self.session_path("/url"), json!({ "url": url }))?;
        Ok(())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub fn eval(&self, script: &str, args: Value) -> Result<Value> {
        self.post(
            &self.session_path("/execute/sync"),
            json!({"script": script, "args": args}),
        )
    }

    /// Polls `script` until it returns something truthy; returns that value.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(script, json!([]))?;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; browser log:\n{}",
                    self.console().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG screenshot of the window.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let url = format!("{}{}", self.base, self.session_path("/screenshot"));
        let v = Self::value(ureq::get(&url).call(), &url)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().ok_or_else(|| anyhow!("no screenshot data"))?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// The browser console since the last call (errors, warnings, logs).
    pub fn console(&self) -> Vec<String> {
        self.post(&self.session_path("/se/log"), json!({"type": "browser"}))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| format!("{} {}", e["level"], e["message"]))
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}{}", self.base, self.session_path(""));
            let _ = ureq::delete(&url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
