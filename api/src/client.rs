//! The CLI's client side: REST calls with the admin token, errors printed as the server said.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use reqwest::{Method, StatusCode};

use crate::config::read_token;

#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// The node's REST endpoint.
    #[arg(long, default_value = "http://127.0.0.1:7480", env = "EDGEFABRIC_ENDPOINT")]
    pub endpoint: String,
    /// File holding the bearer token.
    #[arg(long, default_value = "edgefabric-data/admin.token", env = "EDGEFABRIC_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// CA certificate(s) (PEM) that verify the node's certificate for https:// endpoints.
    /// Default: `ca.pem` beside the token file, when there is one (`cluster init` writes both).
    #[arg(long, env = "EDGEFABRIC_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow an http:// endpoint on another host (a cluster run with `[tls] enabled = false`):
    /// the token then crosses the network readable by anyone on the path.
    #[arg(long)]
    pub plaintext: bool,
}

/// Refuses to send a bearer token in clear to another host unless told to: a mistyped
/// `http://` would otherwise hand the token to everyone on the path before the node's TLS
/// listener refused the request.
pub fn check_endpoint(endpoint: &str, plaintext: bool) -> Result<()> {
    if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
        bail!("--endpoint: {endpoint:?} must start with http:// or https://");
    }
    let url =
        reqwest::Url::parse(endpoint).with_context(|| format!("--endpoint: {endpoint:?} is not a URL"))?;
    if url.scheme() == "http" && !plaintext {
        let host = url.host_str().unwrap_or("");
        let local = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !local {
            bail!(
                "--endpoint: {endpoint} is plain http to another host, so the token would cross the network in clear; \
                 use https:// (nodes serve TLS by default), or pass --plaintext for a cluster run with [tls] enabled = false"
            );
        }
    }
    Ok(())
}

/// The CA file to use: the one given, else `ca.pem` in `near`'s directory when it exists.
pub fn ca_file_or_default(given: Option<&Path>, near: Option<&Path>) -> Option<PathBuf> {
    if let Some(g) = given {
        return Some(g.to_path_buf());
    }
    let dir = near?.parent()?;
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    Some(dir.join("ca.pem")).filter(|p| p.exists())
}

/// An HTTP client for the CLI: rustls; with `ca_file`, servers are verified against its
/// certificates only, else against the system's roots.
pub fn http_client(ca_file: Option<&Path>, timeout: Option<std::time::Duration>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().use_rustls_tls();
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("--ca-file: reading {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-file: {} holds no PEM certificate", path.display()))?;
        if certs.is_empty() {
            bail!("--ca-file: {} holds no PEM certificate", path.display());
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().context("building the HTTP client")
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters pass through).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(opts: &ClientOpts) -> Result<Self> {
        let token = read_token(&opts.token_file)?;
        let base = opts.endpoint.trim_end_matches('/').to_string();
        check_endpoint(&base, opts.plaintext)?;
        let ca = ca_file_or_default(opts.ca_file.as_deref(), Some(&opts.token_file));
        Ok(Client { http: http_client(ca.as_deref(), None)?, base, token })
    }

    /// Sends a request; returns status, headers and body. Non-2xx answers become errors that
    /// carry the server's message, except the statuses listed in `ok_statuses`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        json: bool,
        ok_statuses: &[StatusCode],
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            if json {
                req = req.header("content-type", "application/json");
            }
            req = req.body(b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.context("reading the answer")?.to_vec();
        if status.is_success() || ok_statuses.contains(&status) {
            return Ok((status, headers, bytes));
        }
        bail!("{} {}", status.as_u16(), server_message(&bytes))
    }

    /// Sends a request without a body and returns the answer to read as a stream (a large
    /// download); a non-2xx answer is an error carrying the server's message.
    pub async fn stream(&self, method: Method, path: &str) -> Result<reqwest::Response> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the answer")?;
        bail!("{} {}", status.as_u16(), server_message(&bytes))
    }

    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let body = body.map(|b| b.to_string().into_bytes());
        let (_, _, bytes) = self.send(method, path, body, true, &[]).await?;
        serde_json::from_slice(&bytes).context("the server's answer is not JSON")
    }
}

/// The message of an error answer: `code: message` from our JSON errors, else the body.
fn server_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!("{}: {}", e.get("code")?.as_str()?, e.get("message")?.as_str()?))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}

/// A progress bar on standard error for long work a person watches (a drain, a rotation):
/// with `len`, a bar of that many steps; without, a spinner. Hidden when standard error is not
/// a terminal (`is_hidden`), where callers print plain progress lines instead.
pub fn progress(len: Option<u64>, template: &str) -> indicatif::ProgressBar {
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Prints a JSON answer as the CLI shows them (pretty).
pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_goes_in_clear_only_to_this_machine_unless_told() {
        for ok in
            ["https://node1.example:7480", "http://127.0.0.1:7480", "http://localhost:1", "http://[::1]:7480"]
        {
            check_endpoint(ok, false).unwrap();
        }
        let e = check_endpoint("http://node1.example:7480", false).unwrap_err().to_string();
        assert!(e.contains("--endpoint") && e.contains("--plaintext"), "{e}");
        assert!(check_endpoint("http://10.0.0.5:7480", false).is_err());
        check_endpoint("http://10.0.0.5:7480", true).unwrap();
        assert!(check_endpoint("ftp://x", true).unwrap_err().to_string().contains("must start with"));
    }
}
