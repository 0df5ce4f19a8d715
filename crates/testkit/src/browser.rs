//! A real browser for tests: headless Chromium driven over WebDriver (the W3C protocol, spoken to
//! `chromedriver` with a few lines of HTTP), to open the studio's pages, click, type, and read
//! back what a person would see.
//!
//! [`Browser::start`] returns `None` with a loud message when `chromium` or `chromedriver` is
//! missing, so the rest of the suite runs on such a machine; with `CHATFORGE_REQUIRE_BROWSER=1`
//! (set by `.ci/run`, which installs both) that is a failure instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key W3C WebDriver puts an element reference under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// An element of the page.
#[derive(Clone)]
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

fn find_program(names: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            if dir.join(n).is_file() {
                return Some(dir.join(n).to_string_lossy().into_owned());
            }
        }
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 request to the driver: the JSON answer's `value`, or the driver's error.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body.as_bytes()).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let mut length = None;
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut buf = Vec::new();
    match length {
        Some(n) => {
            buf.resize(n, 0);
            r.read_exact(&mut buf).map_err(|e| e.to_string())?;
        }
        None => {
            r.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        }
    }
    let v: Value =
        serde_json::from_slice(&buf).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&buf)))?;
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if let Some(err) = value.get("error").and_then(Value::as_str) {
        return Err(format!("{err}: {}", value["message"].as_str().unwrap_or("")));
    }
    Ok(value)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a `width`×`height` window.
    pub fn start(width: u32, height: u32) -> Option<Browser> {
        let required = std::env::var("CHATFORGE_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        let (Some(driver), Some(chrome)) = (
            find_program(&["chromedriver", "chromium.chromedriver"]),
            find_program(&["chromium", "chromium-browser", "google-chrome"]),
        ) else {
            let msg = "chromium and chromedriver are not installed: the browser tests are skipped \
                       (apt-get install chromium chromium-driver; .ci/run installs them)";
            assert!(!required, "{msg}, and CHATFORGE_REQUIRE_BROWSER=1");
            eprintln!("SKIPPED: {msg}");
            return None;
        };
        let port = free_port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let t0 = Instant::now();
        while http(port, "GET", "/status", None).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().expect("a profile folder");
        let downloads = profile.path().join("downloads");
        std::fs::create_dir_all(&downloads).expect("a downloads folder");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", format!("--user-data-dir={}", profile.path().display()),
                         format!("--window-size={width},{height}")],
                "prefs": {"download.default_directory": downloads, "download.prompt_for_download": false},
            },
        }}});
        let mut b = Browser {
            driver: child,
            port,
            session: String::new(),
            _profile: profile,
        };
        let v = http(port, "POST", "/session", Some(&caps)).expect("a browser session");
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        Some(b)
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        http(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        )
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .expect("navigate");
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page: its return value.
    pub fn js(&self, script: &str, args: &[Value]) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    fn find_now(&self, css: &str) -> Option<Element<'_>> {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .ok()?;
        Some(Element {
            browser: self,
            id: v[ELEMENT].as_str()?.to_string(),
        })
    }

    /// The first element matching `css`, waiting up to `secs` for it to appear.
    pub fn find(&self, css: &str, secs: u64) -> Element<'_> {
        let t0 = Instant::now();
        loop {
            if let Some(e) = self.find_now(css) {
                return e;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "no element {css:?} after {secs} s; the page shows:\n{}",
                self.text("body")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the first element matching `css` (waiting up to `secs` for it). A page that redraws
    /// between finding and clicking (a stale element) is found again.
    pub fn click(&self, css: &str, secs: u64) {
        let t0 = Instant::now();
        loop {
            let e = self.find(css, secs);
            match self.cmd("POST", &format!("/element/{}/click", e.id), Some(json!({}))) {
                Ok(_) => return,
                Err(err) if err.starts_with("stale element") && t0.elapsed() < Duration::from_secs(secs) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => panic!("click {css}: {err}"),
            }
        }
    }

    /// Types `text` into the first element matching `css`, after clearing it; found again when
    /// the page redrew it meanwhile.
    pub fn fill(&self, css: &str, text: &str, secs: u64) {
        let t0 = Instant::now();
        loop {
            let e = self.find(css, secs);
            let _ = self.cmd("POST", &format!("/element/{}/clear", e.id), Some(json!({})));
            match self.cmd(
                "POST",
                &format!("/element/{}/value", e.id),
                Some(json!({ "text": text })),
            ) {
                Ok(_) => return,
                Err(err) if err.starts_with("stale element") && t0.elapsed() < Duration::from_secs(secs) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => panic!("type into {css}: {err}"),
            }
        }
    }

    /// Waits until `check` (a JS expression) is truthy, failing with `what` and the page's text.
    pub fn wait_for(&self, check: &str, secs: u64, what: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.js(&format!("return ({check});"), &[]);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{what}: not after {secs} s; the page shows:\n{}",
                self.text("body")
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// The visible text of the first element matching `css` (empty when none).
    pub fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            &[json!(css)],
        )
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "/screenshot", None).expect("a screenshot");
        let png = base64_decode(v.as_str().expect("base64 PNG"));
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Where the browser saves downloads.
    pub fn downloads(&self) -> std::path::PathBuf {
        self._profile.path().join("downloads")
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .expect("resize");
    }
}

impl Element<'_> {
    pub fn click(&self) {
        self.browser
            .cmd("POST", &format!("/element/{}/click", self.id), Some(json!({})))
            .unwrap_or_else(|e| panic!("click: {e}"));
    }

    /// Types `text` into the element (after clearing it).
    pub fn fill(&self, text: &str) {
        let _ = self
            .browser
            .cmd("POST", &format!("/element/{}/clear", self.id), Some(json!({})));
        self.browser
            .cmd(
                "POST",
                &format!("/element/{}/value", self.id),
                Some(json!({ "text": text })),
            )
            .unwrap_or_else(|e| panic!("type: {e}"));
    }

    pub fn text(&self) -> String {
        self.browser
            .cmd("GET", &format!("/element/{}/text", self.id), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.cmd("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
