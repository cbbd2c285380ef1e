//! `edgefabric-loadgen`: drives EdgeFabric and etcd with the same workload, side by side in one
//! run, and prints throughput and latency for each and the EdgeFabric/etcd ratio.
//!
//! Workload (issue 3): puts of `--value-size` bytes over `--keys` keys, and linearizable gets,
//! at each of `--clients` concurrency levels, each cell for `--duration` seconds. Both systems
//! are driven over gRPC (EdgeFabric's `edgefabric.v1.Kv`, etcd's `etcdserverpb.KV`). etcd's
//! clients are spread over its endpoints (etcd's own client does not route; a follower hands
//! proposals to its leader). EdgeFabric's route each request to its shard's leader from the
//! shard map, as its Rust client does (`edgefabric::kv_client`; `--route any` spreads them over
//! the nodes instead, `--route both` runs both). Cells alternate between the systems, so
//! machine noise hits both.
//!
//! Example (what `benches/etcd-vs-edgefabric.sh` runs):
//!   edgefabric-loadgen --edgefabric http://127.0.0.1:9100,... --token-file DIR/admin.token \
//!       --etcd http://127.0.0.1:23791,... --clients 1,16,256 --duration 10

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::{Channel, Endpoint};

mod ef {
    tonic::include_proto!("edgefabric.v1");
}
mod etcd {
    tonic::include_proto!("etcdserverpb");
}

#[derive(Parser)]
#[command(about = "Side-by-side load: EdgeFabric vs etcd")]
struct Args {
    /// EdgeFabric gRPC endpoints, comma-separated.
    #[arg(long, value_delimiter = ',')]
    edgefabric: Vec<String>,
    /// EdgeFabric admin token file.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// etcd client endpoints, comma-separated (optional: EdgeFabric alone without it).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    clients: Vec<usize>,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Seconds per cell.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Operations: put, get.
    #[arg(long, value_delimiter = ',', default_value = "put,get")]
    ops: Vec<String>,
    /// EdgeFabric namespaces to run each cell against, side by side (e.g. `default,conf` to
    /// compare a public namespace with a confidential one). The first is the baseline.
    #[arg(long, value_delimiter = ',', default_value = "default")]
    ns: Vec<String>,
    /// A second EdgeFabric cluster's gRPC endpoints, run after the first in every cell (e.g.
    /// the same build with a setting changed), so the two compare side by side in one run.
    #[arg(long, value_delimiter = ',')]
    compare: Vec<String>,
    /// The second cluster's admin token file.
    #[arg(long, requires = "compare")]
    compare_token_file: Option<std::path::PathBuf>,
    /// Names for the first and the second cluster in the table.
    #[arg(long, value_delimiter = ',', default_value = "A,B")]
    labels: Vec<String>,
    /// CA certificate (PEM) that verifies https:// EdgeFabric endpoints. Default: `ca.pem`
    /// beside each cluster's token file (where `cluster init` writes both).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) for https:// etcd endpoints (default: --ca-file).
    #[arg(long)]
    etcd_ca_file: Option<std::path::PathBuf>,
    /// How EdgeFabric clients pick a node: `leader` sends each request to its shard's leader
    /// (learned from the shard map, as `edgefabric::kv_client` does); `any` spreads clients over
    /// the endpoints given and lets the node forward; `both` runs every EdgeFabric cell both
    /// ways, side by side.
    #[arg(long, default_value = "leader")]
    route: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Put,
    Get,
}

#[derive(Clone)]
enum Target {
    EdgeFabric {
        channels: Vec<Channel>,
        auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        ns: String,
        /// Set when two clusters are compared: its name in the table.
        label: Option<String>,
        /// Routing to shard leaders (`--route leader`); `None`: any node.
        router: Option<edgefabric::kv_client::Client>,
    },
    Etcd {
        channels: Vec<Channel>,
    },
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::EdgeFabric { label: Some(l), .. } => l.clone(),
            Target::EdgeFabric { ns, .. } if ns == "default" => "EdgeFabric".into(),
            Target::EdgeFabric { ns, .. } => format!("EF ns={ns}"),
            Target::Etcd { .. } => "etcd".into(),
        }
    }

    /// Client `i`'s connection; none for routed clients (the router holds its own per node).
    fn channel(&self, i: usize) -> Option<Channel> {
        match self {
            Target::EdgeFabric { channels, .. } | Target::Etcd { channels } => {
                (!channels.is_empty()).then(|| channels[i % channels.len()].clone())
            }
        }
    }

    async fn op(&self, ch: Option<Channel>, op: Op, key: u64, value: &[u8]) -> Result<()> {
        let key = format!("bench/{key:08}");
        match self {
            Target::EdgeFabric { router: Some(r), ns, .. } => match op {
                Op::Put => {
                    r.put(ns, &key, value.to_vec()).await?;
                }
                Op::Get => {
                    r.get(ns, &key).await?;
                }
            },
            Target::EdgeFabric { auth, ns, .. } => {
                let mut c = ef::kv_client::KvClient::new(ch.context("no connection")?);
                match op {
                    Op::Put => {
                        let mut req = tonic::Request::new(ef::PutRequest {
                            ns: ns.clone(),
                            key,
                            value: value.to_vec(),
                            cas: None,
                        });
                        req.metadata_mut().insert("authorization", auth.clone());
                        c.put(req).await?;
                    }
                    Op::Get => {
                        let mut req =
                            tonic::Request::new(ef::GetRequest { ns: ns.clone(), key, stale: false });
                        req.metadata_mut().insert("authorization", auth.clone());
                        c.get(req).await?;
                    }
                }
            }
            Target::Etcd { .. } => {
                let mut c = etcd::kv_client::KvClient::new(ch.context("no connection")?);
                match op {
                    Op::Put => {
                        c.put(etcd::PutRequest {
                            key: key.into_bytes(),
                            value: value.to_vec(),
                            lease: 0,
                            prev_kv: false,
                        })
                        .await?;
                    }
                    Op::Get => {
                        c.range(etcd::RangeRequest { key: key.into_bytes(), ..Default::default() }).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The CA for a cluster whose token file is `token_file`: `--ca-file`, else `ca.pem` beside it.
fn ca_near(args: &Args, token_file: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    edgefabric::client::ca_file_or_default(args.ca_file.as_deref(), token_file)
}

/// One HTTP/2 connection per 16 clients per endpoint (at least one per endpoint); https://
/// endpoints over TLS verified against `ca`.
async fn connect(endpoints: &[String], clients: usize, ca: Option<&std::path::Path>) -> Result<Vec<Channel>> {
    let per = clients.div_ceil(16).max(1);
    let mut out = vec![];
    for _ in 0..per {
        for e in endpoints {
            let mut ep = Endpoint::from_shared(e.clone())
                .with_context(|| format!("endpoint {e:?}"))?
                .tcp_nodelay(true);
            if e.starts_with("https://") {
                let ca = ca.context("https:// endpoints need --ca-file")?;
                let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                let tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem));
                ep = ep.tls_config(tls)?;
            }
            let ch = ep.connect().await.with_context(|| format!("connecting to {e}"))?;
            out.push(ch);
        }
    }
    Ok(out)
}

struct Cell {
    target: String,
    op: Op,
    clients: usize,
    ops: u64,
    errors: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

impl Cell {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

async fn run_cell(target: Target, op: Op, clients: usize, args: &Args) -> Result<Cell> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let value = Arc::new(vec![b'v'; args.value_size]);
    let bar = ProgressBar::new(args.duration);
    bar.set_style(
        ProgressStyle::with_template("{prefix:28} [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} {:?} x{}", target.name(), op, clients));
    let mut tasks = vec![];
    for i in 0..clients {
        let (target, stop, done, errors, value) =
            (target.clone(), stop.clone(), done.clone(), errors.clone(), value.clone());
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let ch = target.channel(i);
            let mut lat = Vec::with_capacity(1 << 16);
            // A cheap per-client pseudo-random key sequence (xorshift), different per client.
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t = Instant::now();
                match target.op(ch.clone(), op, x % keys, &value).await {
                    Ok(()) => {
                        lat.push(t.elapsed());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let start = Instant::now();
    for s in 1..=args.duration {
        tokio::time::sleep_until((start + Duration::from_secs(s)).into()).await;
        bar.set_position(s);
        bar.set_message(format!("{:.0} ops/s", done.load(Ordering::Relaxed) as f64 / s as f64));
    }
    stop.store(true, Ordering::Relaxed);
    let mut lat = vec![];
    for t in tasks {
        lat.extend(t.await?);
    }
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
    Ok(Cell {
        target: target.name(),
        op,
        clients,
        ops: lat.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        secs,
        p50: pct(0.50).unwrap_or_default(),
        p99: pct(0.99).unwrap_or_default(),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.edgefabric.is_empty() {
        bail!("--edgefabric: give at least one endpoint");
    }
    let ops: Vec<Op> = args
        .ops
        .iter()
        .map(|o| match o.as_str() {
            "put" => Ok(Op::Put),
            "get" => Ok(Op::Get),
            other => bail!("--ops: {other:?} is not put or get"),
        })
        .collect::<Result<_>>()?;
    let read_auth =
        |file: &Option<std::path::PathBuf>, flag: &str| -> Result<tonic::metadata::MetadataValue<_>> {
            let token = match file {
                Some(f) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim()
                    .to_string(),
                None => bail!("{flag}: EdgeFabric needs its admin token"),
            };
            format!("Bearer {token}").parse().context("token")
        };
    let auth = read_auth(&args.token_file, "--token-file")?;
    let routes: Vec<bool> = match args.route.as_str() {
        "leader" => vec![true],
        "any" => vec![false],
        "both" => vec![true, false],
        other => bail!("--route: {other:?} is not leader, any or both"),
    };
    if routes.len() == 2 && !args.compare.is_empty() {
        bail!("--route both and --compare: one comparison at a time");
    }
    let token = match &args.token_file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        None => bail!("--token-file: EdgeFabric needs its admin token"),
    };
    let router = |endpoints: &[String], token: &str, ca: Option<std::path::PathBuf>, clients: usize| {
        let mut o = edgefabric::kv_client::Options::new(endpoints.to_vec(), token);
        o.ca_file = ca;
        o.connections_per_node = clients.div_ceil(16).max(1);
        edgefabric::kv_client::Client::connect(o)
    };
    let compare = if args.compare.is_empty() {
        None
    } else {
        if args.labels.len() != 2 {
            bail!("--labels: give two names, for the first and the second cluster");
        }
        Some(read_auth(&args.compare_token_file, "--compare-token-file")?)
    };
    let label = |i: usize| compare.as_ref().map(|_| args.labels[i].clone());
    let mut cells = vec![];
    for op in &ops {
        for &clients in &args.clients {
            for ns in &args.ns {
                for &routed in &routes {
                    let ca = ca_near(&args, args.token_file.as_deref());
                    let ef = Target::EdgeFabric {
                        channels: if routed {
                            vec![]
                        } else {
                            connect(&args.edgefabric, clients, ca.as_deref()).await?
                        },
                        auth: auth.clone(),
                        ns: ns.clone(),
                        label: if routes.len() == 2 {
                            Some(if routed { "EF leader" } else { "EF any" }.into())
                        } else {
                            label(0)
                        },
                        router: if routed {
                            Some(router(&args.edgefabric, &token, ca, clients).await?)
                        } else {
                            None
                        },
                    };
                    cells.push(run_cell(ef, *op, clients, &args).await?);
                }
                if let Some(auth2) = &compare {
                    let ca = ca_near(&args, args.compare_token_file.as_deref());
                    let token2 = match &args.compare_token_file {
                        Some(f) => {
                            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
                        }
                        None => bail!("--compare-token-file: the second cluster's admin token"),
                    };
                    let ef = Target::EdgeFabric {
                        channels: if routes[0] {
                            vec![]
                        } else {
                            connect(&args.compare, clients, ca.as_deref()).await?
                        },
                        auth: auth2.clone(),
                        ns: ns.clone(),
                        label: label(1),
                        router: if routes[0] {
                            Some(router(&args.compare, &token2, ca, clients).await?)
                        } else {
                            None
                        },
                    };
                    cells.push(run_cell(ef, *op, clients, &args).await?);
                }
            }
            if !args.etcd.is_empty() {
                let et = Target::Etcd {
                    channels: connect(
                        &args.etcd,
                        clients,
                        args.etcd_ca_file.as_deref().or(args.ca_file.as_deref()),
                    )
                    .await?,
                };
                cells.push(run_cell(et, *op, clients, &args).await?);
            }
        }
    }
    println!("\n{} keys, {}-byte values, {} s per cell\n", args.keys, args.value_size, args.duration);
    // Ratios against etcd when it ran, else against the first namespace's cells.
    let baseline = if args.etcd.is_empty() {
        Target::EdgeFabric {
            channels: vec![],
            auth: auth.clone(),
            ns: args.ns[0].clone(),
            label: if routes.len() == 2 { Some("EF leader".into()) } else { label(0) },
            router: None,
        }
        .name()
    } else {
        "etcd".to_string()
    };
    println!(
        "| op  | clients | system     |    ops/s | p50 ms | p99 ms | errors | ops/s vs {baseline} | p99 vs {baseline} |"
    );
    println!(
        "|-----|--------:|------------|---------:|-------:|-------:|-------:|--------------:|------------:|"
    );
    for c in &cells {
        let base = cells.iter().find(|o| o.op == c.op && o.clients == c.clients && o.target == baseline);
        let (ratio, p99_ratio) = match base {
            Some(e) if e.rate() > 0.0 && c.target != baseline => (
                format!("{:.2}x", c.rate() / e.rate()),
                format!("{:.2}x", c.p99.as_secs_f64() / e.p99.as_secs_f64().max(1e-9)),
            ),
            _ => (String::new(), String::new()),
        };
        println!(
            "| {:<3} | {:>7} | {:<10} | {:>8.0} | {:>6} | {:>6} | {:>6} | {:>13} | {:>11} |",
            format!("{:?}", c.op).to_lowercase(),
            c.clients,
            c.target,
            c.rate(),
            ms(c.p50),
            ms(c.p99),
            c.errors,
            ratio,
            p99_ratio
        );
    }
    Ok(())
}
