//! A real browser for tests of the worker's web pages: a headless Chromium driven over WebDriver
//! ([fantoccini]).
//!
//! - chromedriver: `CHROMEDRIVER_URL` when set (one already running; it finds its own browser
//!   unless `CHROME_BIN` names one). Otherwise each [`Browser`] starts `chromedriver` (from
//!   `PATH`, else `/usr/bin/chromedriver`) on a free loopback port, and kills it and its Chromium
//!   when dropped.
//! - Chromium: `CHROME_BIN`, else `/usr/bin/chromium`.
//!
//! Debian's `chromium` and `chromium-driver` packages provide both: `scripts/services.sh up`
//! installs them.
//!
//! The helpers panic, naming the selector and what the page showed, as test helpers do; for
//! anything else, [`Browser::client`] is the WebDriver client itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::{free_port, random_name, WAIT};

/// Chromium's window: what screenshots show.
pub const WINDOW: (u32, u32) = (1280, 900);

/// Where Debian's `chromium` package puts the browser.
const DEFAULT_CHROME: &str = "/usr/bin/chromium";

/// How long chromedriver may take to answer once started.
const DRIVER_START: Duration = Duration::from_secs(10);

/// How often waits look again.
const POLL: Duration = Duration::from_millis(50);

const INSTALL_HINT: &str = "install Debian's `chromium` and `chromium-driver` packages: \
     `scripts/services.sh up` does (or set CHROMEDRIVER_URL to a running chromedriver)";

/// A headless Chromium session, with its own profile directory and (unless `CHROMEDRIVER_URL`
/// is set) its own chromedriver.
pub struct Browser {
    client: Client,
    session_id: String,
    driver_url: String,
    /// The chromedriver this browser started, if it did.
    driver: Option<Driver>,
    /// Chromium's profile (`--user-data-dir`) and chromedriver's log, removed on drop.
    dir: PathBuf,
    timeout: Duration,
    /// The session was ended by [`Browser::close`].
    closed: bool,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("driver_url", &self.driver_url)
            .field("session_id", &self.session_id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A chromedriver process of a [`Browser`]'s own, in a process group of its own: killing the
/// group kills the Chromium it started as well.
#[derive(Debug)]
struct Driver {
    child: Child,
    log: PathBuf,
}

impl Browser {
    /// Starts chromedriver (or connects to `CHROMEDRIVER_URL`) and opens a headless Chromium
    /// session with a [`WINDOW`]-sized window.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("genesys-worker-browser-{}", random_name()));
        std::fs::create_dir_all(dir.join("profile")).unwrap();
        let chrome = std::env::var_os("CHROME_BIN").map(PathBuf::from);
        let (driver_url, driver, chrome) = match std::env::var("CHROMEDRIVER_URL") {
            Ok(url) => (url, None, chrome),
            Err(_) => {
                let chrome = chrome.unwrap_or_else(|| DEFAULT_CHROME.into());
                assert!(
                    chrome.is_file(),
                    "no Chromium at {} (CHROME_BIN, else {DEFAULT_CHROME}): {INSTALL_HINT}",
                    chrome.display()
                );
                let (url, driver) = Driver::start(&dir).await;
                (url, Some(driver), Some(chrome))
            }
        };
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                format!("--user-data-dir={}", dir.join("profile").display()),
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
            ],
        });
        if let Some(chrome) = chrome {
            options["binary"] = Value::String(chrome.display().to_string());
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), options);
        let connected = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver_url)
            .await;
        let client = match connected {
            Ok(client) => client,
            Err(err) => {
                let log = driver.as_ref().map(Driver::log_text).unwrap_or_default();
                drop(driver);
                let _ = std::fs::remove_dir_all(&dir);
                panic!("chromedriver at {driver_url} opened no Chromium session: {err}\n{log}");
            }
        };
        let session_id = client
            .session_id()
            .await
            .ok()
            .flatten()
            .expect("a new session has an id");
        Self {
            client,
            session_id,
            driver_url,
            driver,
            dir,
            timeout: WAIT,
            closed: false,
        }
    }

    /// How long the waits below wait ([`WAIT`] unless set).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The WebDriver client, for what the helpers do not do.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Loads `url` (WebDriver waits for the page's load event).
    pub async fn goto(&self, url: &str) {
        if let Err(err) = self.client.goto(url).await {
            panic!("the browser could not load {url}: {err}");
        }
    }

    /// The page's URL now.
    pub async fn current_url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(String::from)
            .unwrap_or_else(|err| format!("(no URL: {err})"))
    }

    /// The first element matching the CSS `selector`, once there is one.
    pub async fn wait_for(&self, selector: &str) -> Element {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(element) = self.find(selector).await {
                return element;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "no element matched `{selector}` within {:?}; {}",
                    self.timeout,
                    self.page_summary().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The text of the first element matching `selector`, once it satisfies `accept`; what it
    /// was last, in the panic message, if it never does.
    pub async fn wait_for_text(&self, selector: &str, accept: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut last;
        loop {
            match self.find(selector).await {
                Some(element) => match element.text().await {
                    Ok(text) if accept(&text) => return text,
                    Ok(text) => last = format!("its text was {text:?}"),
                    // The page changed between the two calls: look again.
                    Err(err) => last = format!("its text could not be read: {err}"),
                },
                None => last = String::from("no element matched"),
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the text of `{selector}` was never as expected within {:?}: at last {last}; {}",
                    self.timeout,
                    self.page_summary().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The text of the first element matching `selector`, once there is one.
    pub async fn text(&self, selector: &str) -> String {
        let element = self.wait_for(selector).await;
        element
            .text()
            .await
            .unwrap_or_else(|err| panic!("the text of `{selector}` could not be read: {err}"))
    }

    /// Clicks the first element matching `selector`, once there is one that takes the click.
    pub async fn click(&self, selector: &str) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let err = match self.wait_for(selector).await.click().await {
                Ok(()) => return,
                Err(err) => err,
            };
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "`{selector}` could not be clicked within {:?}: {err}; {}",
                    self.timeout,
                    self.page_summary().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Replaces the value of the input matching `selector` with `value`, typed as keys.
    pub async fn fill(&self, selector: &str, value: &str) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let input = self.wait_for(selector).await;
            let err = match input.clear().await {
                Ok(()) => match input.send_keys(value).await {
                    Ok(()) => return,
                    Err(err) => err,
                },
                Err(err) => err,
            };
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "`{selector}` could not be filled within {:?}: {err}; {}",
                    self.timeout,
                    self.page_summary().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Writes a PNG of the window to `path` (its directory is created).
    pub async fn screenshot_png(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|err| panic!("no screenshot for {}: {err}", path.display()));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, png)
            .unwrap_or_else(|err| panic!("screenshot not written to {}: {err}", path.display()));
    }

    /// Ends the session (Chromium quits) and stops chromedriver; dropping the browser does as
    /// much, but blocks the thread while it does.
    pub async fn close(mut self) {
        self.closed = self.client.clone().close().await.is_ok();
    }

    /// The first element matching `selector` now, if any; a panic on any other error than
    /// none matching (a bad selector, the browser gone), so that waits do not wait for nothing.
    async fn find(&self, selector: &str) -> Option<Element> {
        match self.client.find(Locator::Css(selector)).await {
            Ok(element) => Some(element),
            Err(err) if err.is_no_such_element() => None,
            Err(err) => panic!("looking for `{selector}` failed: {err}"),
        }
    }

    /// The page's URL and the start of its text, for the panic messages.
    async fn page_summary(&self) -> String {
        let url = self.current_url().await;
        let body = match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let mut shown: String = body.chars().take(500).collect();
        if shown.len() < body.len() {
            shown.push('…');
        }
        format!("the page at {url} showed {shown:?}")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.closed {
            // fantoccini ends the session from a task of the test's runtime, which may be
            // shutting down: end it here, on a runtime of its own.
            let url = format!(
                "{}/session/{}",
                self.driver_url.trim_end_matches('/'),
                self.session_id
            );
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime.block_on(async {
                    reqwest::Client::new()
                        .delete(url)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await
                        .ok()
                })
            })
            .join();
        }
        drop(self.driver.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Driver {
    /// Starts chromedriver on a free loopback port, its log in `dir`; its URL once it answers.
    async fn start(dir: &Path) -> (String, Self) {
        let bin = chromedriver_bin()
            .unwrap_or_else(|| panic!("chromedriver is not on PATH nor in /usr/bin: {INSTALL_HINT}"));
        let log = dir.join("chromedriver.log");
        let http = reqwest::Client::new();
        // The port is free when picked; should another process take it first, pick another.
        for _ in 0..3 {
            let port = free_port();
            let file = std::fs::File::create(&log).unwrap();
            let child = {
                use std::os::unix::process::CommandExt;
                Command::new(&bin)
                    .arg(format!("--port={port}"))
                    .stdin(Stdio::null())
                    .stdout(file.try_clone().unwrap())
                    .stderr(file)
                    .process_group(0)
                    .spawn()
                    .unwrap_or_else(|err| panic!("{} does not start: {err}", bin.display()))
            };
            let mut driver = Self {
                child,
                log: log.clone(),
            };
            let url = format!("http://127.0.0.1:{port}");
            let deadline = tokio::time::Instant::now() + DRIVER_START;
            loop {
                if driver.child.try_wait().unwrap().is_some() {
                    break;
                }
                let status = http
                    .get(format!("{url}/status"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await;
                if status.is_ok_and(|s| s.status().is_success()) {
                    return (url, driver);
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "chromedriver did not answer on {url} within {DRIVER_START:?}:\n{}",
                    driver.log_text()
                );
                tokio::time::sleep(POLL).await;
            }
        }
        panic!(
            "{} exited as it started, three times; at last:\n{}",
            bin.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn log_text(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("chromedriver's log ({}):\n{log}", self.log.display())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group: chromedriver and the Chromium processes it started, should a session be
        // left open.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `chromedriver` on `PATH`, else Debian's.
fn chromedriver_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromedriver"))
        .chain([PathBuf::from("/usr/bin/chromedriver")])
        .find(|bin| bin.is_file())
}
