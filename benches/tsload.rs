//! `edgefabric-tsload`: time-series data sets, ingest and range-query timing for the
//! EdgeFabric vs VictoriaMetrics benchmark (`benches/tsdb-vs-victoriametrics.sh`).
//!
//! - `gen --set cpu-only`: TSBS's "cpu-only" use case as TSBS generates it: `--hosts` hosts with
//!   TSBS's ten tags (hostname, region, datacenter, rack, os, arch, team, service,
//!   service_version, service_environment), one `cpu` line per host and interval with TSBS's ten
//!   fields, each a random walk clamped to [0, 100] with N(0, 1) steps from a uniform start,
//!   written at full float precision; from 2016-01-01T00:00:00Z (TSBS's default start).
//! - `gen --set node`: a node-exporter-like set: per host, CPU-seconds counters per cpu and mode
//!   (two decimals, only growing), byte counters (integers, only growing), memory and load
//!   gauges (integers, two decimals), and constant series.
//! - `send`: posts a line-protocol file in batches from `--senders` concurrent clients and prints
//!   samples per second.
//! - `query`: times a range query `--repeat` times and prints the median and p90.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Time-series data sets, ingest and query timing")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Gen {
        /// cpu-only or node.
        #[arg(long)]
        set: String,
        #[arg(long, default_value_t = 100)]
        hosts: usize,
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        #[arg(long, default_value_t = 10)]
        interval_s: i64,
        #[arg(long, default_value_t = 123)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    Send {
        #[arg(long)]
        file: PathBuf,
        /// Where to POST (e.g. http://127.0.0.1:7480/v1/ts/write?precision=ns).
        #[arg(long)]
        url: String,
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[arg(long, default_value_t = 4)]
        senders: usize,
        #[arg(long, default_value_t = 10_000)]
        batch_lines: usize,
    },
    /// Rewrites a line-protocol file as OpenMetrics text for `promtool tsdb
    /// create-blocks-from openmetrics` (series `measurement_field`, grouped by metric name).
    ToOpenmetrics {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Runs each query of `--queries` (one per line) on two Prometheus APIs at each `--at` time
    /// (instant) and over `--range start,end,step`, and compares the results: the same series,
    /// values equal within a relative 1e-9 (NaN equals NaN). Exits 1 on any difference.
    Compare {
        #[arg(long)]
        a: String,
        #[arg(long)]
        a_token_file: Option<PathBuf>,
        #[arg(long)]
        b: String,
        #[arg(long)]
        b_token_file: Option<PathBuf>,
        #[arg(long)]
        queries: PathBuf,
        /// Unix seconds, comma-separated.
        #[arg(long, value_delimiter = ',')]
        at: Vec<f64>,
        /// start,end,step in seconds.
        #[arg(long, value_delimiter = ',')]
        range: Vec<f64>,
    },
    Query {
        /// The Prometheus API base (e.g. http://127.0.0.1:7480).
        #[arg(long)]
        base: String,
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[arg(long)]
        query: String,
        /// Unix seconds.
        #[arg(long)]
        start: i64,
        #[arg(long)]
        end: i64,
        #[arg(long, default_value = "60")]
        step: String,
        #[arg(long, default_value_t = 10)]
        repeat: usize,
        /// Extra query parameters, e.g. nocache=1 for VictoriaMetrics.
        #[arg(long)]
        extra: Option<String>,
    },
}

/// xorshift64*: a small, seeded generator (the data sets must be the same on every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// N(0, 1) by Box-Muller.
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

const TSBS_START_NS: i64 = 1_451_606_400_000_000_000; // 2016-01-01T00:00:00Z
const REGIONS: [(&str, [&str; 3]); 9] = [
    ("us-east-1", ["us-east-1a", "us-east-1b", "us-east-1c"]),
    ("us-west-1", ["us-west-1a", "us-west-1b", "us-west-1c"]),
    ("us-west-2", ["us-west-2a", "us-west-2b", "us-west-2c"]),
    ("eu-west-1", ["eu-west-1a", "eu-west-1b", "eu-west-1c"]),
    ("eu-central-1", ["eu-central-1a", "eu-central-1b", "eu-central-1b"]),
    ("ap-southeast-1", ["ap-southeast-1a", "ap-southeast-1b", "ap-southeast-1b"]),
    ("ap-southeast-2", ["ap-southeast-2a", "ap-southeast-2b", "ap-southeast-2b"]),
    ("ap-northeast-1", ["ap-northeast-1a", "ap-northeast-1c", "ap-northeast-1c"]),
    ("sa-east-1", ["sa-east-1a", "sa-east-1b", "sa-east-1c"]),
];
const CPU_FIELDS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];

fn gen_cpu_only(
    w: &mut impl Write,
    hosts: usize,
    points: i64,
    interval_ns: i64,
    rng: &mut Rng,
) -> Result<u64> {
    let tags: Vec<String> = (0..hosts)
        .map(|h| {
            let (region, dcs) = REGIONS[rng.below(REGIONS.len())];
            format!(
                "hostname=host_{h},region={region},datacenter={},rack={},os={},arch={},team={},service={},service_version={},service_environment={}",
                dcs[rng.below(3)],
                rng.below(100),
                ["Ubuntu16.10", "Ubuntu16.04LTS", "Ubuntu15.10"][rng.below(3)],
                ["x64", "x86"][rng.below(2)],
                ["SF", "NYC", "LON", "CHI"][rng.below(4)],
                rng.below(20),
                rng.below(2),
                ["production", "staging", "test"][rng.below(3)],
            )
        })
        .collect();
    let mut state: Vec<[f64; 10]> =
        (0..hosts).map(|_| std::array::from_fn(|_| rng.uniform() * 100.0)).collect();
    let mut samples = 0;
    for p in 0..points {
        let t = TSBS_START_NS + p * interval_ns;
        for (h, tag) in tags.iter().enumerate() {
            write!(w, "cpu,{tag} ")?;
            for (f, name) in CPU_FIELDS.iter().enumerate() {
                let v = &mut state[h][f];
                *v = (*v + rng.normal()).clamp(0.0, 100.0);
                write!(w, "{}{name}={}", if f == 0 { "" } else { "," }, v)?;
            }
            writeln!(w, " {t}")?;
            samples += 10;
        }
    }
    Ok(samples)
}

fn gen_node(w: &mut impl Write, hosts: usize, points: i64, interval_ns: i64, rng: &mut Rng) -> Result<u64> {
    let modes = ["idle", "user", "system", "iowait"];
    let start_ns = 1_764_115_200_000_000_000; // 2025-11-26T00:00:00Z
    struct Host {
        cpu: [[i64; 4]; 4], // hundredths of a second
        rx: i64,
        tx: i64,
        avail: i64,
        total: i64,
        load: [i64; 3], // hundredths
        fs: i64,
        boot: i64,
    }
    let mut st: Vec<Host> = (0..hosts)
        .map(|_| Host {
            cpu: std::array::from_fn(|_| std::array::from_fn(|_| rng.below(10_000_000) as i64)),
            rx: rng.below(1 << 40) as i64,
            tx: rng.below(1 << 40) as i64,
            total: 16 << 30,
            avail: (8 << 30) + rng.below(1 << 30) as i64,
            load: [rng.below(300) as i64, rng.below(300) as i64, rng.below(300) as i64],
            fs: 100 << 30,
            boot: 1_760_000_000 + rng.below(1_000_000) as i64,
        })
        .collect();
    let mut samples = 0;
    let secs = interval_ns / 1_000_000_000;
    for p in 0..points {
        let t = start_ns + p * interval_ns;
        for (h, s) in st.iter_mut().enumerate() {
            for (c, modes_of) in s.cpu.iter_mut().enumerate() {
                let mut left = secs * 100;
                for (m, v) in modes_of.iter_mut().enumerate().skip(1) {
                    let used = (rng.below(match m {
                        1 => 15,
                        2 => 5,
                        _ => 2,
                    }) as i64)
                        * secs;
                    *v += used.min(left);
                    left -= used.min(left);
                }
                modes_of[0] += left;
                for (m, v) in modes_of.iter().enumerate() {
                    writeln!(
                        w,
                        "node,host=host_{h},cpu={c},mode={} cpu_seconds_total={}.{:02} {t}",
                        modes[m],
                        v / 100,
                        v % 100
                    )?;
                    samples += 1;
                }
            }
            s.rx += rng.below(2_000_000) as i64;
            s.tx += rng.below(500_000) as i64;
            s.avail = (s.avail + (rng.below(257) as i64 - 128) * 4096).clamp(1 << 30, s.total);
            for l in s.load.iter_mut() {
                *l = (*l + rng.below(21) as i64 - 10).max(0);
            }
            if rng.below(30) == 0 {
                s.fs -= 4096 * rng.below(64) as i64;
            }
            let load = |x: i64| format!("{}.{:02}", x / 100, x % 100);
            writeln!(
                w,
                "node,host=host_{h} network_receive_bytes_total={}i,network_transmit_bytes_total={}i,memory_MemAvailable_bytes={}i,memory_MemTotal_bytes={}i,load1={},load5={},load15={},filesystem_avail_bytes={}i,boot_time_seconds={}i,uname_info=1i {t}",
                s.rx, s.tx, s.avail, s.total, load(s.load[0]), load(s.load[1]), load(s.load[2]), s.fs, s.boot
            )?;
            samples += 10;
        }
    }
    Ok(samples)
}

fn token(path: &Option<PathBuf>) -> Result<Option<String>> {
    path.as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .with_context(|| format!("{}", p.display()))
        })
        .transpose()
}

fn fields_in(line: &str) -> u64 {
    // measurement,tags fields timestamp: count commas in the field part outside quotes.
    let mut parts = line.splitn(3, ' ');
    let _ = parts.next();
    parts.next().map_or(0, |f| f.split(',').count() as u64)
}

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::Gen { set, hosts, hours, interval_s, seed, out } => {
            let mut rng = Rng(seed.max(1));
            let points = ((hours * 3600.0) as i64) / interval_s;
            let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
            let samples = match set.as_str() {
                "cpu-only" => gen_cpu_only(&mut w, hosts, points, interval_s * 1_000_000_000, &mut rng)?,
                "node" => gen_node(&mut w, hosts, points, interval_s * 1_000_000_000, &mut rng)?,
                other => bail!("--set: `{other}` is not cpu-only or node"),
            };
            w.flush()?;
            println!("{samples} samples in {}", out.display());
        }
        Cmd::Send { file, url, token_file, senders, batch_lines } => {
            let token = token(&token_file)?;
            let client = bench_client(None)?;
            let (tx, rx) = async_channel(senders * 2);
            let samples = Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..senders {
                let rx = rx.clone();
                let client = client.clone();
                let url = url.clone();
                let token = token.clone();
                tasks.push(tokio::spawn(async move {
                    while let Ok((body, n)) = rx.recv().await {
                        let mut req = client.post(&url).body(body);
                        if let Some(t) = &token {
                            req = req.bearer_auth(t);
                        }
                        let r = req.send().await.context("sending a batch")?;
                        if !r.status().is_success() {
                            bail!("{} {}", r.status(), r.text().await.unwrap_or_default());
                        }
                        let _ = n;
                    }
                    Ok::<_, anyhow::Error>(())
                }));
            }
            let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&file)?);
            let mut buf = String::new();
            let (mut lines, mut n) = (0, 0u64);
            for line in reader.lines() {
                let line = line?;
                n += fields_in(&line);
                buf.push_str(&line);
                buf.push('\n');
                lines += 1;
                if lines == batch_lines {
                    samples.fetch_add(n, Ordering::Relaxed);
                    tx.send((std::mem::take(&mut buf), n))
                        .await
                        .map_err(|_| anyhow::anyhow!("senders stopped"))?;
                    (lines, n) = (0, 0);
                }
            }
            if lines > 0 {
                samples.fetch_add(n, Ordering::Relaxed);
                tx.send((buf, n)).await.map_err(|_| anyhow::anyhow!("senders stopped"))?;
            }
            drop(tx);
            for t in tasks {
                t.await??;
            }
            let secs = started.elapsed().as_secs_f64();
            let total = samples.load(Ordering::Relaxed);
            println!("{total} samples in {secs:.2} s: {:.0} samples/s", total as f64 / secs);
        }
        Cmd::ToOpenmetrics { file, out } => {
            let text = std::fs::read_to_string(&file)?;
            let mut by_name: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for line in text.lines() {
                let mut parts = line.splitn(3, ' ');
                let (Some(head), Some(fields), Some(ts)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                let (measurement, tags) = head.split_once(',').unwrap_or((head, ""));
                let labels: Vec<String> = tags
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .filter_map(|t| t.split_once('='))
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                let ns: i64 = ts.trim().parse().context("timestamp")?;
                let secs = format!("{}.{:03}", ns / 1_000_000_000, (ns / 1_000_000) % 1000);
                for f in fields.split(',') {
                    let Some((k, v)) = f.split_once('=') else { continue };
                    let v = v.trim_end_matches('i');
                    let name = format!("{measurement}_{k}");
                    let line = format!("{name}{{{}}} {v} {secs}", labels.join(","));
                    by_name.entry(name).or_default().push(line);
                }
            }
            let mut w = BufWriter::new(std::fs::File::create(&out)?);
            for lines in by_name.values() {
                for l in lines {
                    writeln!(w, "{l}")?;
                }
            }
            writeln!(w, "# EOF")?;
            w.flush()?;
        }
        Cmd::Compare { a, a_token_file, b, b_token_file, queries, at, range } => {
            let (ta, tb) = (token(&a_token_file)?, token(&b_token_file)?);
            let client = bench_client(None)?;
            let get = |base: &str, tok: &Option<String>, path: String| {
                let mut req = client.get(format!("{base}{path}"));
                if let Some(t) = tok {
                    req = req.bearer_auth(t);
                }
                async move {
                    let r = req.send().await?;
                    let v: serde_json::Value = r.json().await?;
                    Ok::<_, anyhow::Error>(v)
                }
            };
            let mut diffs = 0;
            let mut checked = 0;
            for q in std::fs::read_to_string(&queries)?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                let enc: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
                let mut paths: Vec<String> =
                    at.iter().map(|t| format!("/api/v1/query?query={enc}&time={t}")).collect();
                if range.len() == 3 {
                    paths.push(format!(
                        "/api/v1/query_range?query={enc}&start={}&end={}&step={}",
                        range[0], range[1], range[2]
                    ));
                }
                for path in paths {
                    let va = get(&a, &ta, path.clone()).await?;
                    let vb = get(&b, &tb, path.clone()).await?;
                    checked += 1;
                    match same_result(&va, &vb) {
                        Ok(n) => println!("OK   {n:>4} series  {path}"),
                        Err(why) => {
                            diffs += 1;
                            println!("DIFF {path}: {why}");
                        }
                    }
                }
            }
            println!("{checked} results compared, {diffs} differ");
            if diffs > 0 {
                std::process::exit(1);
            }
        }
        Cmd::Query { base, token_file, query, start, end, step, repeat, extra } => {
            let token = token(&token_file)?;
            let client = bench_client(None)?;
            let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
            let mut url = format!("{base}/api/v1/query_range?query={q}&start={start}&end={end}&step={step}");
            if let Some(e) = &extra {
                url.push('&');
                url.push_str(e);
            }
            let mut times = Vec::new();
            let mut series = 0;
            for _ in 0..repeat.max(1) {
                let t = Instant::now();
                let mut req = client.get(&url);
                if let Some(tk) = &token {
                    req = req.bearer_auth(tk);
                }
                let r = req.send().await?;
                let status = r.status();
                let v: serde_json::Value = r.json().await?;
                if !status.is_success() {
                    bail!("{status}: {v}");
                }
                series = v["data"]["result"].as_array().map_or(0, |a| a.len());
                times.push(t.elapsed());
            }
            times.sort();
            let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
            println!(
                "{series} series; median {:.1} ms, p90 {:.1} ms over {} runs",
                ms(p(0.5)),
                ms(p(0.9)),
                times.len()
            );
        }
    }
    Ok(())
}

/// Compares two Prometheus API answers; Ok(number of series) if they agree.
fn same_result(a: &serde_json::Value, b: &serde_json::Value) -> std::result::Result<usize, String> {
    if a["status"] != "success" || b["status"] != "success" {
        return Err(format!("status: {} vs {}", a, b));
    }
    if a["data"]["resultType"] != b["data"]["resultType"] {
        return Err(format!("type {} vs {}", a["data"]["resultType"], b["data"]["resultType"]));
    }
    let points = |v: &serde_json::Value| -> Vec<(String, Vec<(f64, String)>)> {
        let mut out: Vec<(String, Vec<(f64, String)>)> = match &v["data"]["result"] {
            serde_json::Value::Array(items) => items
                .iter()
                .map(|it| {
                    let m = it["metric"].to_string();
                    let pts = if let Some(vals) = it["values"].as_array() {
                        vals.iter()
                            .map(|p| (p[0].as_f64().unwrap_or(0.0), p[1].as_str().unwrap_or("").to_string()))
                            .collect()
                    } else {
                        vec![(
                            it["value"][0].as_f64().unwrap_or(0.0),
                            it["value"][1].as_str().unwrap_or("").to_string(),
                        )]
                    };
                    (m, pts)
                })
                .collect(),
            other => vec![(
                String::new(),
                vec![(other[0].as_f64().unwrap_or(0.0), other[1].as_str().unwrap_or("").to_string())],
            )],
        };
        out.sort_by(|x, y| x.0.cmp(&y.0));
        out
    };
    let (pa, pb) = (points(a), points(b));
    if pa.len() != pb.len() {
        return Err(format!("{} series vs {}", pa.len(), pb.len()));
    }
    for ((ma, xa), (mb, xb)) in pa.iter().zip(&pb) {
        // serde_json sorts object keys, so equal label sets print equally.
        if ma != mb {
            return Err(format!("series {ma} vs {mb}"));
        }
        if xa.len() != xb.len() {
            return Err(format!("{ma}: {} points vs {}", xa.len(), xb.len()));
        }
        for ((ta, va), (tb, vb)) in xa.iter().zip(xb) {
            let (fa, fb) = (parse_value(va), parse_value(vb));
            let close =
                (fa.is_nan() && fb.is_nan()) || fa == fb || (fa - fb).abs() <= 1e-9 * fa.abs().max(fb.abs());
            if (ta - tb).abs() > 1e-6 || !close {
                return Err(format!("{ma} at {ta}: {va} vs {vb}"));
            }
        }
    }
    Ok(pa.len())
}

fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s.parse().unwrap_or(f64::NAN),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A bounded multi-consumer channel (tokio's mpsc has one consumer).
fn async_channel<T: Send + 'static>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap);
    (Sender(tx), Receiver(Arc::new(tokio::sync::Mutex::new(rx))))
}

struct Sender<T>(tokio::sync::mpsc::Sender<T>);

impl<T> Sender<T> {
    async fn send(&self, v: T) -> std::result::Result<(), ()> {
        self.0.send(v).await.map_err(|_| ())
    }
}

struct Receiver<T>(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>);

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver(self.0.clone())
    }
}

impl<T> Receiver<T> {
    async fn recv(&self) -> std::result::Result<T, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

/// An HTTP client for the benchmark: https:// nodes are verified against the CA file named by
/// `EDGEFABRIC_CA_FILE` (the cluster's `ca.pem`), as the CLI does.
fn bench_client(timeout: Option<std::time::Duration>) -> anyhow::Result<reqwest::Client> {
    let ca = std::env::var_os("EDGEFABRIC_CA_FILE").map(std::path::PathBuf::from);
    edgefabric::client::http_client(ca.as_deref(), timeout)
}
