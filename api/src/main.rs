//! `edgefabric`: the node (`serve`), cluster setup (`cluster init`) and the client commands.

// The audited gRPC handlers nest async blocks (handler → audit wrapper → store calls) deeper
// than the default query depth allows when rustc computes their layouts.
#![recursion_limit = "256"]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::json;

use edgefabric::client::{encode_segment, print_json, Client, ClientOpts};
#[allow(unused_imports)]
use edgefabric::{audit, auth, client, cluster, config, error, grpc, http, ledger, ledger_cli, server, ts};

/// mimalloc rather than glibc's malloc: the ledger's apply and verification paths allocate
/// many small, short-lived buffers, and glibc's fastbin consolidation showed up as ~15 % of a
/// full verification's time (benches/RESULTS.md: 24 s → 15 s for 1M entries).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "edgefabric", version, about = "EdgeFabric: the data and security fabric for 5G edge sites")]
struct Cli {
    /// Log lines as text, or as one JSON object per line (for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node: `--dev` for a one-node cluster on the embedded default, or `--config FILE`.
    Serve {
        /// A single-node cluster with keys and an admin token generated on first start.
        #[arg(long, conflicts_with = "config")]
        dev: bool,
        /// Node configuration written by `cluster init`.
        #[arg(long, required_unless_present = "dev")]
        config: Option<PathBuf>,
        /// Data directory (with --dev).
        #[arg(long, default_value = "edgefabric-data")]
        data: PathBuf,
        /// REST address (with --dev).
        #[arg(long, default_value = "127.0.0.1:7480")]
        http: SocketAddr,
        /// gRPC address (with --dev).
        #[arg(long, default_value = "127.0.0.1:7400")]
        grpc: SocketAddr,
        /// Re-validate the whole stored ledger before serving ledger reads (always checked:
        /// its head and the node's last signed checkpoint).
        #[arg(long)]
        verify_ledger: bool,
    },
    /// Create a local cluster's files, and inspect a running cluster.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Key-value operations.
    Kv {
        #[command(subcommand)]
        cmd: KvCmd,
    },
    /// Namespace operations.
    Ns {
        #[command(subcommand)]
        cmd: NsCmd,
    },
    /// Write an ed25519 key pair: FILE (secret) and FILE.pub (base64 public key).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Access tokens: `token issue` asks the cluster for one (admin token needed).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// App images: sign, register, revoke, and verify offline against pinned node keys.
    Image {
        #[command(subcommand)]
        cmd: ledger_cli::ImageCmd,
    },
    /// Publishers of app images (admin).
    Publisher {
        #[command(subcommand)]
        cmd: ledger_cli::PublisherCmd,
    },
    /// The attestation ledger: verify a stopped node's store, fetch and check checkpoints.
    Ledger {
        #[command(subcommand)]
        cmd: ledger_cli::LedgerCmd,
    },
    /// The audit trail (role auditor): list records, or verify them offline against pinned
    /// node keys.
    Audit {
        #[command(subcommand)]
        cmd: audit::AuditCmd,
    },
    /// Time series: write line protocol, show the store-and-forward queue.
    Ts {
        #[command(subcommand)]
        cmd: ts::TsCmd,
    },
    /// Start a three-site cluster on this machine and walk through every capability; the
    /// cluster keeps running until Ctrl-C.
    Demo(edgefabric::demo::DemoOpts),
    /// Back up a running node: its groups' snapshots and its local queues, into one file.
    Backup(edgefabric::backup::BackupOpts),
    /// Restore a stopped node's data directory from a backup (`--check` only reads it).
    Restore(edgefabric::backup::RestoreOpts),
    /// Node configuration: `config example` prints every field, documented.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Print a shell completion script: `edgefabric completions bash > /etc/bash_completion.d/edgefabric`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print an example node configuration with every field explained.
    Example,
    /// Check a configuration file: parse and validate it, say what is wrong or OK.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Issue an access token; prints it as the last word of standard output.
    Issue {
        #[arg(long)]
        subject: String,
        /// reader:NS, writer:NS, admin:NS, auditor, publisher or admin; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// How long it is valid: e.g. 30s, 15m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Bind the token to a client key (`KEY.pub` from `edgefabric keygen`): every request
        /// made with it must then be signed by that key (README, "Signed requests").
        #[arg(long)]
        client_key: Option<std::path::PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Revoke a token by its id (printed by `token issue` on standard error).
    Revoke {
        #[arg(long)]
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// "30s", "15m", "24h", "7d" → seconds.
fn parse_ttl(s: &str) -> Result<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().with_context(|| format!("--ttl {s:?}: expected a number and s, m, h or d"))?;
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("--ttl {s:?}: the unit must be s, m, h or d"),
    };
    Ok(n * mult)
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Write everything an N-node local cluster needs into --out.
    Init {
        #[arg(long)]
        nodes: u64,
        /// Site names, comma-separated; assigned to nodes round-robin.
        #[arg(long, value_delimiter = ',')]
        sites: Vec<String>,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Node K uses gRPC port P+2(K-1) and HTTP port P+2(K-1)+1.
        #[arg(long)]
        base_port: u16,
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a node to a running cluster: writes its key and config into --dir (next free id),
    /// registers it, and prints how to start it. Replicas then move onto it.
    Join {
        /// The directory `cluster init` wrote (its cluster.json and trust.json are updated).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        site: String,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// gRPC port; HTTP uses the next one.
        #[arg(long)]
        port: u16,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Drain a node (its replicas move elsewhere) and remove it; returns once that is done.
    Leave {
        #[arg(long)]
        node: u64,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Nodes, leaders and replicas as the node at --endpoint sees them.
    Status {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Issue a TLS certificate from the cluster CA in --dir (`ca.pem`, `ca.key`): to renew a
    /// node's (write it over `node<K>.crt` / `node<K>.tls.key`: the node picks it up at the next
    /// connection), or for a host or tool that must present one. Writes OUT.crt and OUT.key.
    Cert {
        /// The directory `cluster init` wrote.
        #[arg(long)]
        dir: PathBuf,
        /// Host names or IP addresses the certificate is for (its SANs), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        host: Vec<String>,
        /// The certificate's name (its common name).
        #[arg(long, default_value = "edgefabric")]
        name: String,
        /// Output prefix: OUT.crt and OUT.key (mode 0600); both must not exist yet.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum KvCmd {
    /// Write a value: from the argument, or standard input if none is given.
    Put {
        ns: String,
        key: String,
        value: Option<String>,
        /// Write only if the key's current revision is this (0: only if absent).
        #[arg(long)]
        cas: Option<u64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a value to standard output (exit status 1 if absent).
    Get {
        ns: String,
        key: String,
        /// Answer from the node's local replica (may be stale).
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete a key.
    Del {
        ns: String,
        key: String,
        #[arg(long)]
        cas: Option<u64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List keys with a prefix, one JSON object per line.
    Scan {
        ns: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        after: Option<String>,
        /// Follow continuations until the end.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
enum NsCmd {
    /// Create or update a namespace.
    Create {
        ns: String,
        #[arg(long, default_value = "public")]
        class: String,
        #[arg(long)]
        home_site: Option<String>,
        #[arg(long, value_delimiter = ',')]
        key_sites: Vec<String>,
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        #[command(flatten)]
        client: ClientOpts,
    },
    Get {
        ns: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Retire a confidential namespace's key version once no value uses it any more.
    RetireKey {
        ns: String,
        #[arg(long)]
        version: u32,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Rotate a confidential namespace's data key: new writes use the new version, older
    /// values are re-encrypted in the background (at the node at --endpoint, a key site).
    RotateKey {
        ns: String,
        /// Wait until the re-encryption is done, printing progress.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("EDGEFABRIC_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).init(),
    }
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode_segment(v)))).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn kv_path(ns: &str, key: &str) -> String {
    // Slashes in keys stay slashes: the route takes the rest of the path as the key.
    let key: Vec<String> = key.split('/').map(encode_segment).collect();
    format!("/v1/kv/{}/{}", encode_segment(ns), key.join("/"))
}

async fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Serve { dev, config, data, http, grpc, verify_ledger } => {
            let mut cfg = if dev {
                config::dev_config(&data, http, grpc)?
            } else {
                let path = config.context("--config is required without --dev")?;
                config::NodeConfig::load(&path)?
            };
            cfg.ledger.verify_full_at_start |= verify_ledger;
            raise_open_files_limit();
            server::run(cfg).await?;
        }
        Cmd::Cluster { cmd: ClusterCmd::Init { nodes, sites, host, base_port, out } } => {
            config::cluster_init(&config::InitSpec { nodes, sites, host, base_port, out: out.clone() })?;
            println!("wrote a {nodes}-node cluster to {}; start each node with:", out.display());
            for k in 1..=nodes {
                println!("  edgefabric serve --config {}", out.join(format!("node{k}.toml")).display());
            }
        }
        Cmd::Cluster { cmd: ClusterCmd::Join { dir, site, host, port, client } } => {
            let c = Client::new(&client)?;
            let joined = config::prepare_join(&dir, &site, &host, port)?;
            let body = json!({
                "id": joined.id, "site": site,
                "grpc": joined.grpc.to_string(), "http": joined.http.to_string(),
                "public_key": joined.public_key,
            });
            c.json(Method::POST, "/v1/cluster/nodes", Some(body)).await?;
            println!("node {} joined the cluster map; start it with:", joined.id);
            println!("  edgefabric serve --config {}", joined.config.display());
        }
        Cmd::Cluster { cmd: ClusterCmd::Cert { dir, host, name, out } } => {
            let (crt, key) = config::issue_cert(&dir, &host, &name, &out)?;
            println!("wrote {} and {}", crt.display(), key.display());
        }
        Cmd::Cluster { cmd: ClusterCmd::Leave { node, timeout_secs, client } } => {
            let c = Client::new(&client)?;
            c.json(Method::DELETE, &format!("/v1/cluster/nodes/{node}"), None).await?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
            let mut bar: Option<indicatif::ProgressBar> = None;
            loop {
                let st = c.json(Method::GET, "/v1/cluster/status", None).await?;
                let me = st["nodes"].as_array().and_then(|n| n.iter().find(|n| n["id"] == node).cloned());
                match me {
                    None => {
                        if let Some(b) = &bar {
                            b.finish_and_clear();
                        }
                        println!("node {node} has left the cluster");
                        break;
                    }
                    Some(n) => {
                        let left = n["replicas"].as_u64().unwrap_or(0);
                        // The first count is the bar's length: replicas to move elsewhere.
                        let b = bar.get_or_insert_with(|| {
                            client::progress(
                                Some(left),
                                &format!("draining node {node} [{{bar:30}}] {{pos}}/{{len}} replicas moved ({{elapsed}})"),
                            )
                        });
                        b.set_position(b.length().unwrap_or(0).saturating_sub(left));
                        if b.is_hidden() {
                            eprintln!("draining node {node}: {left} replicas left");
                        }
                    }
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("node {node} still a member after {timeout_secs} s; it keeps draining");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        Cmd::Cluster { cmd: ClusterCmd::Status { client } } => {
            let c = Client::new(&client)?;
            print_json(&c.json(Method::GET, "/v1/cluster/status", None).await?)?;
        }
        Cmd::Kv { cmd } => return kv(cmd).await,
        Cmd::Backup(o) => edgefabric::backup::run_backup(o).await?,
        Cmd::Restore(o) => edgefabric::backup::run_restore(o)?,
        Cmd::Ns { cmd: NsCmd::Create { ns, class, home_site, key_sites, replicas, client } } => {
            let c = Client::new(&client)?;
            let body =
                json!({"class": class, "home_site": home_site, "key_sites": key_sites, "replicas": replicas});
            print_json(
                &c.json(Method::PUT, &format!("/v1/namespaces/{}", encode_segment(&ns)), Some(body)).await?,
            )?;
        }
        Cmd::Ns { cmd: NsCmd::RotateKey { ns, wait, client } } => {
            let c = Client::new(&client)?;
            let path = format!("/v1/namespaces/{}", encode_segment(&ns));
            print_json(&c.json(Method::POST, &format!("{path}/rotate-key"), None).await?)?;
            if wait {
                let bar = client::progress(None, "{spinner} re-encrypting {msg} ({elapsed})");
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let p = c.json(Method::GET, &format!("{path}/rotation"), None).await?;
                    let line = format!(
                        "scanned {} re-encrypted {} skipped {}",
                        p["scanned"], p["reencrypted"], p["skipped"]
                    );
                    if bar.is_hidden() {
                        eprintln!("{line}");
                    } else {
                        bar.set_message(line);
                    }
                    if p["done"] == true {
                        bar.finish_and_clear();
                        print_json(&p)?;
                        if !p["error"].is_null() || p["remaining_old"].as_u64() != Some(0) {
                            return Ok(1);
                        }
                        break;
                    }
                }
            }
        }
        Cmd::Ns { cmd: NsCmd::RetireKey { ns, version, client } } => {
            let c = Client::new(&client)?;
            let path = format!("/v1/namespaces/{}/retire-key", encode_segment(&ns));
            print_json(&c.json(Method::POST, &path, Some(json!({ "version": version }))).await?)?;
        }
        Cmd::Ns { cmd: NsCmd::Get { ns, client } } => {
            let c = Client::new(&client)?;
            print_json(
                &c.json(Method::GET, &format!("/v1/namespaces/{}", encode_segment(&ns)), None).await?,
            )?;
        }
        Cmd::Token { cmd: TokenCmd::Issue { subject, roles, ttl, client_key, client } } => {
            for r in &roles {
                auth::Role::parse(r).with_context(|| "--role".to_string())?;
            }
            let c = Client::new(&client)?;
            let mut body = json!({"subject": subject, "roles": roles, "ttl_secs": parse_ttl(&ttl)?});
            if let Some(f) = client_key {
                let text =
                    std::fs::read_to_string(&f).with_context(|| format!("--client-key {}", f.display()))?;
                edgefabric_crypto::PublicKey::from_base64(text.trim())
                    .with_context(|| format!("--client-key {}", f.display()))?;
                body["client_key"] = json!(text.trim());
            }
            let v = c.json(Method::POST, "/v1/tokens", Some(body)).await?;
            eprintln!(
                "token {} for {subject} ({}), expires at {} (Unix time)",
                v["id"].as_str().unwrap_or_default(),
                roles.join(", "),
                v["expires"]
            );
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        Cmd::Token { cmd: TokenCmd::Revoke { id, client } } => {
            let c = Client::new(&client)?;
            print_json(&c.json(Method::POST, "/v1/tokens/revoke", Some(json!({ "id": id }))).await?)?;
        }
        Cmd::Image { cmd } => return ledger_cli::image(cmd).await,
        Cmd::Publisher { cmd } => return ledger_cli::publisher(cmd).await,
        Cmd::Ledger { cmd } => return ledger_cli::ledger(cmd).await,
        Cmd::Audit { cmd } => return audit::run(cmd).await,
        Cmd::Ts { cmd } => return ts::run(cmd).await,
        Cmd::Demo(opts) => return edgefabric::demo::run(opts).await,
        Cmd::Config { cmd: ConfigCmd::Example } => print!("{}", config::EXAMPLE),
        Cmd::Config { cmd: ConfigCmd::Check { file } } => {
            let cfg = config::NodeConfig::load(&file)?;
            println!(
                "OK: {}: node {} at site {:?}, {} members, data in {}",
                file.display(),
                cfg.id,
                cfg.site,
                cfg.members.len(),
                cfg.data_dir.display()
            );
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "edgefabric", &mut std::io::stdout());
        }
        Cmd::Keygen { out } => {
            let id = edgefabric_crypto::Identity::generate()?;
            id.write(&out)?;
            println!("{}", id.public_key().to_base64());
        }
    }
    Ok(0)
}

async fn kv(cmd: KvCmd) -> Result<i32> {
    match cmd {
        KvCmd::Put { ns, key, value, cas, client } => {
            let c = Client::new(&client)?;
            let value = match value {
                Some(v) => v.into_bytes(),
                None => {
                    let mut buf = vec![];
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("reading the value from standard input")?;
                    buf
                }
            };
            let path = format!("{}{}", kv_path(&ns, &key), query(&[("cas", cas.map(|c| c.to_string()))]));
            let (_, _, body) = c.send(Method::PUT, &path, Some(value), false, &[]).await?;
            println!("{}", String::from_utf8_lossy(&body));
        }
        KvCmd::Get { ns, key, stale, client } => {
            let c = Client::new(&client)?;
            let path =
                format!("{}{}", kv_path(&ns, &key), query(&[("consistency", stale.then(|| "stale".into()))]));
            let (status, headers, body) =
                c.send(Method::GET, &path, None, false, &[StatusCode::NOT_FOUND]).await?;
            if status == StatusCode::NOT_FOUND {
                eprintln!("not found: {ns}/{key}");
                return Ok(1);
            }
            if let Some(rev) = headers.get("x-revision").and_then(|v| v.to_str().ok()) {
                tracing::debug!(revision = rev);
            }
            std::io::stdout().write_all(&body)?;
        }
        KvCmd::Del { ns, key, cas, client } => {
            let c = Client::new(&client)?;
            let path = format!("{}{}", kv_path(&ns, &key), query(&[("cas", cas.map(|c| c.to_string()))]));
            let (_, _, body) = c.send(Method::DELETE, &path, None, false, &[]).await?;
            println!("{}", String::from_utf8_lossy(&body));
        }
        KvCmd::Scan { ns, prefix, limit, mut after, all, stale, client } => {
            let c = Client::new(&client)?;
            loop {
                let q = query(&[
                    ("prefix", Some(prefix.clone())),
                    ("limit", Some(limit.to_string())),
                    ("after", after.clone()),
                    ("consistency", stale.then(|| "stale".into())),
                ]);
                let page = c.json(Method::GET, &format!("/v1/kv/{}{q}", encode_segment(&ns)), None).await?;
                for item in page["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
                    println!("{item}");
                }
                match page["next"].as_str() {
                    Some(n) if all => after = Some(n.to_string()),
                    Some(n) => {
                        eprintln!("more keys follow; continue with --after {n:?} (or pass --all)");
                        break;
                    }
                    None => break,
                }
            }
        }
    }
    Ok(0)
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime does for etcd: the
/// listeners may hold thousands of connections waiting for their TLS handshake
/// (`api/src/tls.rs`), beside peers, clients, and the data files, and a default soft limit of
/// 1024 would turn a burst of connections into failed accepts.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                tracing::warn!(soft = lim.rlim_cur, "could not raise the open-files limit");
            }
        }
    }
}

fn main() {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    // PromQL parsing (on the workers) and evaluation (on the blocking pool) recurse over the
    // query's tree, which the parser bounds for this stack size.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(edgefabric_tsdb::promql::parser::STACK_SIZE)
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded() {
        assert_eq!(kv_path("default", "a/b c"), "/v1/kv/default/a/b%20c");
        assert_eq!(query(&[("cas", Some("0".into())), ("x", None)]), "?cas=0");
        assert_eq!(query(&[]), "");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["edgefabric", "serve"]).is_err(), "serve needs --dev or --config");
        assert!(Cli::try_parse_from(["edgefabric", "serve", "--dev"]).is_ok());
    }
}
