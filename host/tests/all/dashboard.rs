//! The web dashboard in a real browser: a `weir serve` process runs a keyed
//! job, and headless Chromium, driven through chromedriver's W3C WebDriver
//! protocol, follows the jobs list to the job's page, sees live rates and
//! checkpoints, upgrades the operator to a broken version with the page's
//! button (giving the token when asked), sees the rollback and the guest's
//! panic in the logs, and takes a screenshot of the page.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TempDir, examples_dir, fixtures_dir, free_port, wait_for_port, weir_serve};

const TOKEN: &str = "dashboard-token";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver in a process group of its own, with the browser it starts:
/// the session is closed and the whole group killed when dropped, however
/// the test ends.
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    profile: TempDir,
}

impl Browser {
    fn start() -> Self {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install Debian's `chromium` and `chromium-driver` packages \
                 (scripts/test.sh does)"
            );
        }
        let port = free_port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts")
        };
        let profile = TempDir::new("chromium-profile");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            profile,
        };
        wait_for_port(port, "chromedriver");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", browser.profile.0.display()),
            "--window-size=1280,1000",
        ];
        let session = browser.call(
            reqwest::Method::POST,
            "/session",
            Some(json!({
                "capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
                }}
            })),
        );
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        browser
    }

    /// A WebDriver command; its `value`, or a panic with the driver's error.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let (status, text) = self.runtime.block_on(async {
            let response = request.send().await.expect("chromedriver answers");
            let status = response.status();
            (status, response.text().await.unwrap_or_default())
        });
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("WebDriver {path}: {status} {text}"));
        assert!(status.is_success(), "WebDriver {path}: {status} {v}");
        v["value"].clone()
    }

    fn session_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.session_call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page.
    fn script(&self, script: &str) -> Value {
        self.session_call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn element(&self, css: &str) -> String {
        let v = self.session_call(
            reqwest::Method::POST,
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Waits until `probe` (a script returning a value) returns something
    /// for which `done` holds; fails with what the page showed.
    fn wait_for(&self, what: &str, probe: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let v = self.script(probe);
            if done(&v) {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.script("return document.body.innerText;");
                panic!(
                    "the page never showed {what}; last probe: {v}\npage:\n{}",
                    page.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the whole page: the viewport is made as tall as the page
    /// (through chromedriver's DevTools passthrough; W3C WebDriver has no
    /// full-page screenshot, and a window is never taller than its screen).
    fn screenshot(&self) -> Vec<u8> {
        let height = self
            .script("window.scrollTo(0, 0); return document.documentElement.scrollHeight;")
            .as_u64()
            .unwrap_or(1000);
        self.session_call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({
                "cmd": "Emulation.setDeviceMetricsOverride",
                "params": {"width": 1280, "height": height.clamp(600, 4000),
                           "deviceScaleFactor": 1, "mobile": false},
            })),
        );
        let png = self.session_call(reqwest::Method::GET, "/screenshot", None);
        base64_decode(png.as_str().expect("a base64 screenshot"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let close = self
                .http
                .delete(format!("{}/session/{}", self.base, self.session));
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), close.send()).await
            });
        }
        // The browser is chromedriver's child, in its process group.
        // SAFETY: kill(2) on a process group this test created; no memory
        // is involved.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (value(c) << (18 - 6 * i)));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn post(url: &str, body: Vec<u8>) -> (u16, String) {
    crate::support::post_with_token(url, TOKEN, body)
}

/// A number shown as a rate (`12.3k/s`), if the text is one.
fn rate(text: &Value) -> Option<f64> {
    let t = text.as_str()?.strip_suffix("/s")?;
    let (digits, scale) = match t.as_bytes().last()? {
        b'k' => (&t[..t.len() - 1], 1e3),
        b'M' => (&t[..t.len() - 1], 1e6),
        _ => (t, 1.0),
    };
    digits.parse::<f64>().ok().map(|v| v * scale)
}

#[test]
fn the_job_page_shows_live_figures_and_upgrades_an_operator_in_a_browser() {
    let tmp = TempDir::new("dashboard");
    let port = free_port();
    let _server = weir_serve(port, &tmp.path("data"), TOKEN);
    let base = format!("http://127.0.0.1:{port}");
    for (dir, wasm) in [
        (examples_dir(), "keyed_count"),
        (fixtures_dir(), "keyed_count_broken"),
    ] {
        let bytes = std::fs::read(dir.join(format!("{wasm}.wasm"))).unwrap();
        let (status, body) = post(&format!("{base}/v1/modules?name=keyed-count"), bytes);
        assert_eq!(status, 201, "{body}");
    }
    let spec = format!(
        "name: clicks-per-user\nparallelism: 2\n\
         source: {{type: generator, events: 1000000000, keys: 1000, rate: 4000}}\n\
         operators: [{{name: count, module: keyed-count@1, input: key}}]\n\
         sink: {{type: discard}}\n\
         checkpoint: {{interval: 1s, dir: {}}}\n",
        tmp.path("checkpoints").display()
    );
    let (status, body) = post(&format!("{base}/v1/jobs"), spec.into_bytes());
    assert_eq!(status, 201, "{body}");

    let browser = Browser::start();
    browser.open(&format!("{base}/"));
    browser.wait_for(
        "the job in the jobs list, running at a non-zero rate",
        "const tr = document.querySelector('#jobs tr[data-job=\"clicks-per-user\"]');\
         const a = tr && tr.querySelector('a[href=\"#/jobs/clicks-per-user\"]');\
         return tr && [a && a.textContent, tr.children[1].textContent, tr.children[5].textContent];",
        |v| v[0] == "clicks-per-user" && v[1] == "running" && rate(&v[2]).is_some_and(|r| r > 0.0),
    );
    browser.click("#jobs a[href=\"#/jobs/clicks-per-user\"]");
    let hash = browser.script("return location.hash;");
    assert_eq!(hash, "#/jobs/clicks-per-user");

    let out_rate = "const td = document.querySelector(\
         '#operators tr[data-node=\"operator:count\"] .rate-out');\
         return td && td.textContent;";
    browser.wait_for("a non-zero rate out of the operator", out_rate, |v| {
        rate(v).is_some_and(|r| r > 0.0)
    });
    browser.wait_for(
        "the operator in the graph, with its parallelism and module",
        "const g = document.querySelector('#graph [data-node=\"operator:count\"]');\
         return g && g.textContent;",
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("×2") && t.contains("keyed-count@1"))
        },
    );
    browser.wait_for(
        "completed checkpoints",
        "return [...document.querySelectorAll('#checkpoints tbody tr')]\
         .filter(tr => tr.textContent.includes('completed')).length;",
        |v| v.as_u64().is_some_and(|n| n >= 2),
    );
    let watermark = browser.script(
        "return document.querySelector('#operators tr[data-node=\"operator:count\"]')\
         .children[6].textContent;",
    );
    assert!(
        watermark.as_str().is_some_and(|w| w.starts_with("t = ")),
        "the generator's event time is the watermark: {watermark}"
    );

    // The upgrade button asks for the token, the broken version fails and
    // is rolled back, and its panic reaches the page's logs.
    browser.click("#modules tr[data-operator=\"count\"] option[value=\"keyed-count@2\"]");
    browser.click("#modules tr[data-operator=\"count\"] button.upgrade");
    browser.wait_for(
        "the token dialog",
        "return document.querySelector('#token-dialog').open;",
        |v| v == true,
    );
    browser.type_into("#token-input", TOKEN);
    browser.click("#token-save");
    let result = browser.wait_for(
        "the upgrade's outcome",
        "const td = document.querySelector('#modules tr.result-row[data-operator=\"count\"] td');\
         return td && td.textContent;",
        |v| {
            v.as_str()
                .is_some_and(|t| !t.is_empty() && !t.starts_with("upgrading"))
        },
    );
    assert!(
        result
            .as_str()
            .is_some_and(|t| t.starts_with("rolled back to keyed-count@1")),
        "{result}"
    );
    assert_eq!(
        browser.script("return localStorage.getItem('weir.token');"),
        TOKEN,
        "the token is kept for the next change"
    );
    browser.wait_for(
        "the guest's panic and the task failure in the logs",
        "return [...document.querySelectorAll('#logs li')].map(li => li.textContent).join('\\n');",
        |v| {
            v.as_str().is_some_and(|t| {
                t.contains("this version cannot handle count") && t.contains("task failed")
            })
        },
    );
    browser.wait_for(
        "the job running again on version 1 with a non-zero rate",
        &format!(
            "const running = document.querySelector('#job-state').textContent;\
             const module = document.querySelector('#modules tr[data-operator=\"count\"] td.mono');\
             const rate = (() => {{ {out_rate} }})();\
             return [running, module && module.textContent, rate];"
        ),
        |v| v[0] == "running" && v[1] == "keyed-count@1" && rate(&v[2]).is_some_and(|r| r > 0.0),
    );
    // Once the job runs again (during the restart it takes none).
    browser.click("#take-savepoint");
    browser.wait_for(
        "the savepoint taken from the page",
        "return document.querySelectorAll('#savepoints tbody tr').length;",
        |v| v.as_u64().is_some_and(|n| n >= 1),
    );
    browser.wait_for(
        "a checkpoint of the resumed job",
        "const rows = [...document.querySelectorAll('#checkpoints tbody tr')];\
         return rows.length > 0 && rows[0].textContent.includes('completed');",
        |v| v == true,
    );

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    std::fs::write(tmp.path("dashboard-job.png"), &png).unwrap();
    if std::env::var_os("WEIR_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        let docs = crate::support::repo_root().join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("dashboard-job.png"), &png).unwrap();
    }
}
