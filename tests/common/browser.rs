//! Headless Chromium driven over the DevTools protocol (`--remote-debugging-pipe`: JSON
//! messages separated by NUL bytes, commands on the child's fd 3, answers and events on its
//! fd 4), so a test can do what a person does on a page — click a button, read what is shown —
//! and can play a hostile server by answering chosen requests itself (`Fetch` interception).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Chromium, or `None` (the test then says SKIPPED: `.ci/run` installs it).
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// `certutil` (Debian's libnss3-tools), which puts a CA into the NSS database Chromium trusts.
pub fn certutil() -> Option<&'static str> {
    Command::new("certutil").arg("-H").output().ok().map(|_| "certutil")
}

/// An answer the test gives in the server's place: (status, content type, body).
pub type Fake = (u16, &'static str, String);

pub struct Browser {
    child: Child,
    to: std::io::PipeWriter,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    /// The page's session (flattened target attachment).
    session: String,
    /// Requests whose URL contains the key are answered by the test, not the server.
    fakes: Vec<(String, Fake)>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts a browser with a fresh profile and one blank page. With `ca`, that certificate is
    /// the one root the profile trusts (an NSS database under a fresh HOME): pages are verified
    /// as any HTTPS page is, with no flag that skips certificate checks.
    pub fn start(browser: &str, ca: Option<&Path>) -> Browser {
        // Chromium now and then dies while it starts on a loaded machine (other tests start
        // browsers and clusters beside it); a browser that never answered is started again.
        let mut failures = vec![];
        for _ in 0..3 {
            match Self::launch(browser, ca) {
                Ok(b) => return b,
                Err(e) => {
                    eprintln!("Chromium did not start; starting it again: {e}");
                    failures.push(e)
                }
            }
        }
        panic!("Chromium did not start: {failures:#?}");
    }

    fn launch(browser: &str, ca: Option<&Path>) -> Result<Browser, String> {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        let home = profile.path().join("home");
        let nssdb = home.join(".pki/nssdb");
        std::fs::create_dir_all(&nssdb).unwrap();
        if let Some(ca) = ca {
            let db = format!("sql:{}", nssdb.display());
            let ok = Command::new("certutil").args(["-N", "--empty-password", "-d", &db]).status().unwrap();
            assert!(ok.success(), "certutil -N");
            let ok = Command::new("certutil")
                .args(["-A", "-d", &db, "-n", "edgefabric-test-ca", "-t", "C,,", "-i"])
                .arg(ca)
                .status()
                .unwrap();
            assert!(ok.success(), "certutil -A");
        }
        let (child_reads, to) = std::io::pipe().unwrap();
        let (mut from_child, child_writes) = std::io::pipe().unwrap();
        // The child's ends are moved to descriptors above 10 first: a pipe end that already is
        // fd 3 or 4 would make a dup2 below a no-op (keeping close-on-exec, so Chromium starts
        // without its pipe) or overwrite the other end.
        let high = |fd: &dyn std::os::fd::AsRawFd| {
            // SAFETY: F_DUPFD_CLOEXEC duplicates an open descriptor; the result is owned below.
            let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
            assert!(n >= 10, "fcntl(F_DUPFD_CLOEXEC): {}", std::io::Error::last_os_error());
            // SAFETY: `n` is a fresh descriptor nothing else owns.
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) }
        };
        let (child_reads, child_writes) = {
            let moved = (high(&child_reads), high(&child_writes));
            drop((child_reads, child_writes));
            moved
        };
        let (r, w) =
            (std::os::fd::AsRawFd::as_raw_fd(&child_reads), std::os::fd::AsRawFd::as_raw_fd(&child_writes));
        let mut cmd = Command::new(browser);
        cmd.env("HOME", &home)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--window-size=1280,1500")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(profile.path().join("chromium.log")).unwrap());
        // SAFETY: between fork and exec only dup2 runs, which is async-signal-safe; it puts the
        // pipe ends where Chromium looks for them (fd 3 in, fd 4 out) and clears close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop((child_reads, child_writes));
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = match from_child.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let log = profile.path().join("chromium.log");
        let mut b =
            Browser { child, to, from, next_id: 0, session: String::new(), fakes: vec![], _profile: profile };
        // The first exchange tells whether it started: it answers, or its end of the pipe is gone.
        let first = b.send_raw("Browser.getVersion", json!({}), None);
        let answered = first.is_ok() && b.from.recv_timeout(Duration::from_secs(30)).is_ok();
        if !answered {
            let status = b.child.try_wait().ok().flatten();
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = said
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(format!("no answer ({first:?}, exit {status:?}); its stderr ends:\n{tail}"));
        }
        let target = b.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b.browser_call("Target.attachToTarget", json!({"targetId": target, "flatten": true}));
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 1500, "deviceScaleFactor": 1, "mobile": false}),
        );
        Ok(b)
    }

    /// From now on, requests whose URL contains `url_part` get `fake` from the test instead of
    /// the server's answer: a hostile server, as far as the page can tell.
    pub fn fake(&mut self, url_part: &str, fake: Fake) {
        self.fakes.push((url_part.to_string(), fake));
        self.call("Fetch.enable", json!({"patterns": [{"urlPattern": "*"}]}));
    }

    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> u64 {
        self.send_raw(method, params, session)
            .unwrap_or_else(|e| panic!("{method}: writing to the browser: {e}"))
    }

    fn send_raw(&mut self, method: &str, params: Value, session: Option<String>) -> std::io::Result<u64> {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.to.write_all(&bytes)?;
        Ok(self.next_id)
    }

    /// Sends a command and waits for its answer, handling events meanwhile.
    fn exchange(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.try_exchange(method, params, session).unwrap_or_else(|err| panic!("{method}: {err}"))
    }

    /// As `exchange`, with the browser's refusal as `Err` (the page's context can go away
    /// under a command while the page navigates).
    fn try_exchange(&mut self, method: &str, params: Value, session: Option<String>) -> Result<Value, Value> {
        let id = self.send(method, params, session);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("{method}: no answer from the browser: {e}"));
            if msg["id"] == json!(id) {
                if let Some(err) = msg.get("error") {
                    return Err(err.clone());
                }
                return Ok(msg["result"].clone());
            }
            if msg["method"] == "Fetch.requestPaused" {
                self.on_paused(&msg);
            }
        }
    }

    fn on_paused(&mut self, msg: &Value) {
        use base64::Engine;
        let p = &msg["params"];
        let request_id = p["requestId"].clone();
        let url = p["request"]["url"].as_str().unwrap_or_default().to_string();
        let session = msg["sessionId"].as_str().map(str::to_string);
        match self.fakes.iter().find(|(part, _)| url.contains(part.as_str())).map(|(_, f)| f.clone()) {
            Some((status, content_type, body)) => {
                let body = base64::engine::general_purpose::STANDARD.encode(body);
                let headers = json!([{"name": "Content-Type", "value": content_type}]);
                let params = json!({"requestId": request_id, "responseCode": status, "responseHeaders": headers, "body": body});
                self.send("Fetch.fulfillRequest", params, session);
            }
            None => {
                self.send("Fetch.continueRequest", json!({"requestId": request_id}), session);
            }
        }
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.exchange(method, params, None)
    }

    /// A command to the page's session.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.exchange(method, params, Some(s))
    }

    /// Navigates the page; `Err` with the browser's reason when the page could not load
    /// (`net::ERR_CERT_AUTHORITY_INVALID` for a server the profile does not trust).
    /// Always a new document: a blank page in between, so that a URL differing only in its
    /// fragment loads (and runs) the page afresh rather than scrolling within it.
    pub fn goto(&mut self, url: &str) -> Result<(), String> {
        self.call("Page.navigate", json!({"url": "about:blank"}));
        let r = self.call("Page.navigate", json!({"url": url}));
        match r.get("errorText").and_then(Value::as_str) {
            Some(e) if !e.is_empty() => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page; panics with the page's text if it never is.
    pub fn wait_for(&mut self, expr: &str, within: Duration) {
        let deadline = Instant::now() + within;
        // A page still loading may not have a body yet: that reads as "not yet".
        let check = format!("(() => {{ try {{ return !!({expr}); }} catch (e) {{ return false; }} }})()");
        // So may the browser refuse the evaluation outright, while a document is replaced.
        let params = json!({"expression": check, "returnByValue": true});
        loop {
            let s = self.session.clone();
            let r = self.try_exchange("Runtime.evaluate", params.clone(), Some(s));
            if r.is_ok_and(|r| r["result"]["value"] == json!(true)) {
                return;
            }
            if Instant::now() > deadline {
                panic!("never true: {expr}\npage:\n{}", self.text());
            }
            // Events (intercepted requests) are handled while the next evaluation waits.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The page's markup as it is now (the DOM, serialized).
    pub fn dom(&mut self) -> String {
        self.eval("document.documentElement.outerHTML").as_str().unwrap_or_default().to_string()
    }

    /// What the page shows as text.
    pub fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''").as_str().unwrap_or_default().to_string()
    }

    /// Clicks the element with this id, as a person would.
    pub fn click(&mut self, id: &str) {
        let ok = self.eval(&format!("(() => {{ const e = document.getElementById({id:?}); if (!e || e.offsetParent === null) return false; e.click(); return true; }})()"));
        assert_eq!(ok, json!(true), "#{id} is not on the page, or not visible");
    }

    /// A PNG of the page as shown.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
