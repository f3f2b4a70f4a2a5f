//! A real browser for the web client's tests, screenshots and benchmark: Debian's `chromium`,
//! headless, driven over WebDriver by Debian's `chromedriver` (the `fantoccini` client).
//!
//! - [`Driver`] is one `chromedriver` process on a free local port, killed when dropped. Nothing
//!   is downloaded: both binaries come from the Debian packages `scripts/install-deps.sh`
//!   installs (`HERMET_CHROMEDRIVER` / `HERMET_CHROMIUM` override the paths).
//! - [`Driver::page`] opens a browser session with a fresh profile of its own, so two pages are
//!   two people: separate storage, cookies and WebSockets.
//! - [`Page`] reads and drives the page by CSS selector. Its `wait_*` helpers poll through
//!   [`crate::eventually`], so a failure names what was awaited and what the page showed last.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::{eventually, within};

/// Bound of every wait on the page (a projector batch, a WebSocket reconnect, a slow machine).
pub const PAGE_WAIT: Duration = Duration::from_secs(60);

fn binary(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.to_owned())
}

/// One `chromedriver` process.
pub struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts `chromedriver` on a free port and waits until it answers `/status`.
    pub async fn start() -> Driver {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let exe = binary("HERMET_CHROMEDRIVER", "/usr/bin/chromedriver");
        // A process group of its own: dropping the driver kills the browsers it started too,
        // also those of sessions a failed assertion never closed.
        let mut child = Command::new(&exe)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {exe}: {e} (scripts/install-deps.sh installs chromium-driver)")
            });
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let status = format!("{url}/status");
        eventually("chromedriver answers", PAGE_WAIT, async || {
            if let Ok(Some(exit)) = child.try_wait() {
                panic!("{exe} exited at start: {exit}");
            }
            http.get(&status)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Driver { child, url }
    }

    /// A new headless browser with a fresh profile, its window `width`×`height` CSS pixels.
    pub async fn page(&self, width: u32, height: u32) -> Page {
        let chromium = binary("HERMET_CHROMIUM", "/usr/bin/chromium");
        // Without the background-networking flags, Chromium tries Google's hosts at start,
        // which this closed network refuses; `--no-sandbox` because the tests may run as root.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-features=Translate,MediaRouter,OptimizationHints",
            &format!("--window-size={width},{height}"),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("a chromium session: {e}"));
        Page { client }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every chromium it started.
        let _ = crate::signal::group(self.child.id(), crate::signal::Signal::Kill);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
pub struct Page {
    pub client: Client,
}

impl Page {
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub async fn find(&self, css: &str) -> Option<Element> {
        self.client.find(Locator::Css(css)).await.ok()
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_default()
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Whether an element matching `css` is shown (exists, and neither it nor an ancestor is
    /// `hidden` or not rendered).
    pub async fn shown(&self, css: &str) -> bool {
        self.js(
            "const e = document.querySelector(arguments[0]);
             return !!e && e.getClientRects().length > 0;",
            vec![json!(css)],
        )
        .await
        .as_bool()
        .unwrap_or(false)
    }

    /// Waits until `css` is shown, and returns it. On failure the panic says what the page
    /// showed instead ([`Page::describe`]).
    pub async fn wait_shown(&self, css: &str) -> Element {
        eventually(format!("{css} is shown"), PAGE_WAIT, async || {
            if self.shown(css).await {
                if let Some(e) = self.find(css).await {
                    return Ok(e);
                }
            }
            Err(self.describe().await)
        })
        .await
    }

    /// What the page shows, for failure messages: its address and load state, the ids of the
    /// body's shown children, and the text of every non-empty alert. (Not the console: reading
    /// ChromeDriver's log empties it, and the tests check it at the end.)
    pub async fn describe(&self) -> String {
        let v = self
            .js(
                "const shown = [...document.body.children]
                   .filter(e => e.id && e.getClientRects().length > 0).map(e => '#' + e.id);
                 const alerts = [...document.querySelectorAll('[role=alert]')]
                   .map(e => e.textContent.trim()).filter(t => t);
                 return location.href + ' (' + document.readyState + '); shown: ' +
                   (shown.join(' ') || 'nothing') + '; alerts: ' + (alerts.join(' | ') || 'none');",
                vec![],
            )
            .await;
        v.as_str()
            .map_or_else(|| format!("unreadable page: {v}"), str::to_owned)
    }

    /// Waits until no element matching `css` is shown.
    pub async fn wait_gone(&self, css: &str) {
        eventually(format!("{css} is gone"), PAGE_WAIT, async || {
            !self.shown(css).await
        })
        .await
    }

    /// The text of the first match of `css` as rendered, if it exists (`textContent`, trimmed,
    /// so hidden elements read too).
    pub async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]);
                 return e ? e.textContent.trim() : null;",
                vec![json!(css)],
            )
            .await;
        v.as_str().map(str::to_owned)
    }

    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]);
                 return e ? e.getAttribute(arguments[1]) : null;",
                vec![json!(css), json!(name)],
            )
            .await;
        v.as_str().map(str::to_owned)
    }

    /// Waits until `css` exists and `probe` holds for its text; returns that text.
    pub async fn wait_text(&self, css: &str, what: &str, probe: impl Fn(&str) -> bool) -> String {
        let mut last = None;
        let r = within(PAGE_WAIT, async || {
            let t = self.text(css).await;
            last = t.clone();
            t.filter(|t| probe(t))
        })
        .await;
        r.unwrap_or_else(|_| panic!("{css}: {what}; its text was {last:?}"))
    }

    /// Waits until attribute `name` of `css` equals `value`.
    pub async fn wait_attr(&self, css: &str, name: &str, value: &str) {
        let mut last = None;
        let r = within(PAGE_WAIT, async || {
            let v = self.attr(css, name).await;
            let done = v.as_deref() == Some(value);
            last = v;
            done
        })
        .await;
        r.unwrap_or_else(|_| panic!("{css} [{name}] = {value:?}; it was {last:?}"));
    }

    /// Types `text` into the field `css` after clearing it.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.wait_shown(css).await;
        e.clear()
            .await
            .unwrap_or_else(|err| panic!("clear {css}: {err}"));
        if !text.is_empty() {
            e.send_keys(text)
                .await
                .unwrap_or_else(|err| panic!("type into {css}: {err}"));
        }
    }

    /// Sets the field `css` to `text` at once, as a paste would, and tells the page (`input`).
    pub async fn set_value(&self, css: &str, text: &str) {
        self.wait_shown(css).await;
        self.js(
            "const e = document.querySelector(arguments[0]);
             e.value = arguments[1];
             e.dispatchEvent(new Event('input', {bubbles: true}));",
            vec![json!(css), json!(text)],
        )
        .await;
    }

    /// Clicks the element `css` once it is shown.
    pub async fn click(&self, css: &str) {
        let e = self.wait_shown(css).await;
        e.click()
            .await
            .unwrap_or_else(|err| panic!("click {css}: {err}"));
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot: {e}"))
    }

    pub async fn set_size(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("window size: {e}"));
    }

    /// Errors the page's scripts logged (uncaught exceptions, failed loads), if the driver
    /// keeps the log.
    pub async fn console_errors(&self) -> Vec<String> {
        let r = self
            .client
            .issue_cmd(Extension {
                path: "se/log",
                body: json!({"type": "browser"}),
            })
            .await;
        let Ok(Value::Array(entries)) = r else {
            return Vec::new();
        };
        entries
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .filter_map(|e| e["message"].as_str().map(str::to_owned))
            .collect()
    }

    /// Slows this session's network as ChromeDriver emulates it: `latency` added to each
    /// round trip, throughput in bytes per second each way.
    pub async fn throttle(&self, latency: Duration, down_bps: u64, up_bps: u64) {
        self.client
            .issue_cmd(Extension {
                path: "chromium/network_conditions",
                body: json!({"network_conditions": {
                    "offline": false,
                    "latency": latency.as_millis() as u64,
                    "download_throughput": down_bps,
                    "upload_throughput": up_bps,
                }}),
            })
            .await
            .unwrap_or_else(|e| panic!("network conditions: {e}"));
    }

    /// Ends the session (the browser process exits).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// A ChromeDriver extension command: `POST /session/{id}/<path>` with a JSON body.
#[derive(Debug)]
struct Extension {
    path: &'static str,
    body: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Extension {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _url: &url::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(self.body.to_string()))
    }
}
