//! `edgefabric-ledger-load`: signed image registrations against a running cluster, to measure
//! how many entries per second the ledger appends (ordered by raft, validated by every node).
//!
//! Each cell runs `--clients` concurrent clients for `--duration` seconds, spread over the
//! endpoints, each sending registrations in requests of `--batch` entries (`1`:
//! `POST /v1/images`, more: `POST /v1/images/batch`). Every entry is signed by the publisher
//! before the cell starts (signing is the app store's cost, not the ledger's). An entry counts
//! once the node acknowledged it: appended in a committed, applied block.
//!
//!   edgefabric-ledger-load --http http://127.0.0.1:9101,http://127.0.0.1:9103,http://127.0.0.1:9105 \
//!       --token-file DIR/admin.token --clients 4,16 --batch 1,100,1000 --duration 10

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Parser;
use edgefabric_crypto::Identity;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Ledger load: signed image registrations per second")]
struct Args {
    /// REST endpoints, comma-separated.
    #[arg(long, value_delimiter = ',')]
    http: Vec<String>,
    #[arg(long)]
    token_file: std::path::PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    clients: Vec<usize>,
    /// Entries per request.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    batch: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Most entries signed ahead for one cell.
    #[arg(long, default_value_t = 600_000)]
    pool: usize,
}

struct Cell {
    clients: usize,
    batch: usize,
    entries: u64,
    errors: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

/// `n` registrations signed ahead, on every core.
fn sign_pool(publisher: &Arc<Identity>, salt: u64, n: usize) -> Vec<Value> {
    let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
    let chunk = n.div_ceil(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let p = publisher.clone();
                s.spawn(move || {
                    (t * chunk..((t + 1) * chunk).min(n))
                        .map(|i| {
                            let d = edgefabric_crypto::sha256(format!("{salt}-{i}").as_bytes());
                            let digest = format!("sha256:{}", hex::encode(d));
                            let name = format!("load/app-{i}");
                            let sig = p.sign(&edgefabric_ledger::entry::image_message(&name, &digest));
                            json!({"name": name, "digest": digest, "publisher": "loadgen", "signature": STANDARD.encode(sig)})
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

async fn run_cell(
    args: &Args,
    token: &str,
    publisher: &Arc<Identity>,
    clients: usize,
    batch: usize,
) -> Result<Cell> {
    let salt: u64 = u64::from_le_bytes(edgefabric_crypto::random_bytes::<8>()?);
    eprintln!("cell: {clients} clients x batch {batch}: signing {} entries ...", args.pool);
    let pool = Arc::new(sign_pool(publisher, salt, args.pool));
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(vec![]));
    let http = bench_client(Some(Duration::from_secs(30)))?;
    let mut tasks = vec![];
    for c in 0..clients {
        let (pool, next, stop, done, errors, lat, http) = (
            pool.clone(),
            next.clone(),
            stop.clone(),
            done.clone(),
            errors.clone(),
            lat.clone(),
            http.clone(),
        );
        let base = args.http[c % args.http.len()].trim_end_matches('/').to_string();
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let mut mine = vec![];
            while !stop.load(Ordering::Relaxed) {
                let from = next.fetch_add(batch as u64, Ordering::Relaxed) as usize;
                if from + batch > pool.len() {
                    break; // pool exhausted: raise --pool
                }
                let items = &pool[from..from + batch];
                let (url, body) = if batch == 1 {
                    (format!("{base}/v1/images"), items[0].clone())
                } else {
                    (format!("{base}/v1/images/batch"), json!({ "images": items }))
                };
                let t = Instant::now();
                let r = http.post(&url).bearer_auth(&token).json(&body).send().await;
                let ok = match r {
                    Ok(r) if r.status().is_success() => {
                        if batch == 1 {
                            1
                        } else {
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            v["results"]
                                .as_array()
                                .map_or(0, |a| a.iter().filter(|x| x["status"] == 201).count())
                        }
                    }
                    _ => 0,
                };
                mine.push(t.elapsed());
                done.fetch_add(ok as u64, Ordering::Relaxed);
                errors.fetch_add((batch - ok) as u64, Ordering::Relaxed);
            }
            lat.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *lat.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
    Ok(Cell {
        clients,
        batch,
        entries: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        secs,
        p50: pct(0.5).unwrap_or_default(),
        p99: pct(0.99).unwrap_or_default(),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.http.is_empty() {
        bail!("--http: give at least one endpoint");
    }
    if args.batch.iter().any(|b| *b == 0 || *b > 1000) {
        bail!("--batch: between 1 and 1000");
    }
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading {}", args.token_file.display()))?
        .trim()
        .to_string();
    // A publisher for this run (registered once; a rerun registers a new one).
    let publisher = Arc::new(Identity::generate()?);
    let http = bench_client(None)?;
    let base = args.http[0].trim_end_matches('/');
    let r = http
        .post(format!("{base}/v1/publishers"))
        .bearer_auth(&token)
        .json(&json!({"id": "loadgen", "public_key": publisher.public_key().to_base64()}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "registering the publisher: {} {} (a cluster used by an earlier run needs a fresh one)",
            r.status(),
            r.text().await?
        );
    }
    let mut cells = vec![];
    for &clients in &args.clients {
        for &batch in &args.batch {
            cells.push(run_cell(&args, &token, &publisher, clients, batch).await?);
        }
    }
    let best_single =
        cells.iter().filter(|c| c.batch == 1).map(|c| c.entries as f64 / c.secs).fold(0.0, f64::max);
    println!("\n| clients | entries/request | entries/s | request p50 ms | request p99 ms | errors | vs best batch=1 |");
    println!("|--------:|----------------:|----------:|---------------:|---------------:|-------:|----------------:|");
    for c in &cells {
        let rate = c.entries as f64 / c.secs;
        println!(
            "| {:>7} | {:>15} | {:>9.0} | {:>14.2} | {:>14.2} | {:>6} | {:>14.2}x |",
            c.clients,
            c.batch,
            rate,
            c.p50.as_secs_f64() * 1e3,
            c.p99.as_secs_f64() * 1e3,
            c.errors,
            if best_single > 0.0 { rate / best_single } else { 0.0 }
        );
    }
    Ok(())
}

/// An HTTP client for the benchmark: https:// nodes are verified against the CA file named by
/// `EDGEFABRIC_CA_FILE` (the cluster's `ca.pem`), as the CLI does.
fn bench_client(timeout: Option<std::time::Duration>) -> anyhow::Result<reqwest::Client> {
    let ca = std::env::var_os("EDGEFABRIC_CA_FILE").map(std::path::PathBuf::from);
    edgefabric::client::http_client(ca.as_deref(), timeout)
}
