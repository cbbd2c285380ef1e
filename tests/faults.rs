//! Faults and adversaries against real processes (issue 8): clients run register operations
//! (put, get, compare-and-set) on a few keys through every node while a seeded nemesis kills
//! (`kill -9`) and restarts nodes, pauses them (SIGSTOP), cuts links between them (the test
//! fault layer, `store/src/faults.rs`, on in these clusters only) and slows links; afterwards
//! every client history is checked for linearizability (`linearizability.rs`), which also
//! proves no acknowledged write was lost (final reads through every node are part of it).
//!
//! Profiles: the default (CI) runs seed 1 for 20 s. The long profile:
//!   FAULT_RUNS=100 FAULT_SECS=30 cargo test --release -p edgefabric --test faults -- --nocapture
//! (`FAULT_SEEDS=7,9` replays chosen seeds; the seed of a failing run is in its panic message.)
//! Results are reported in `tests/FAULTS.md`.

mod common;
mod linearizability;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cluster;
use linearizability::{check, Input, Op, Output, Verdict};

const READY: Duration = Duration::from_secs(60);
const KEYS: usize = 6;
const CLIENTS: usize = 5;

/// A small deterministic generator (splitmix64): the nemesis's choices follow from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("FAULT_SEEDS") {
        return s.split(',').map(|x| x.trim().parse().expect("FAULT_SEEDS: numbers")).collect();
    }
    let runs: u64 = std::env::var("FAULT_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    (1..=runs).collect()
}

fn run_secs() -> u64 {
    std::env::var("FAULT_SECS").ok().and_then(|r| r.parse().ok()).unwrap_or(20)
}

/// A cluster whose nodes serve the test fault route.
fn fault_cluster(n: u16, sites: &str) -> Cluster {
    Cluster::init(n, sites, |t| format!("{t}\n[test]\nfaults = true\n"))
}

/// Sets node `id`'s outgoing faults (`{}` heals).
async fn set_faults(c: &Cluster, id: u64, faults: serde_json::Value) {
    let body = serde_json::to_vec(&faults).unwrap();
    // A paused or dead node cannot take it; the nemesis heals it again once it is back.
    let _ = c.request(id, reqwest::Method::PUT, "/v1/test/faults", Some(body)).await;
}

/// One register operation through `url` (a node's HTTP address); its answer as the checker
/// sees it, or None when the request never reached the node (nothing can have happened).
async fn register_op(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    key: &str,
    input: &Input,
) -> Option<Output> {
    let path = format!("{url}/v1/kv/default/{key}");
    let req = match input {
        Input::Get => client.get(&path),
        Input::Put(v) => client.put(&path).body(v.clone()),
        Input::Cas { expect, value } => client.put(format!("{path}?cas={expect}")).body(value.clone()),
    };
    let resp = match req.bearer_auth(token).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return None,
        Err(_) => return Some(Output::Unknown),
    };
    let status = resp.status().as_u16();
    let revision = resp.headers().get("x-revision").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let Ok(body) = resp.bytes().await else { return Some(Output::Unknown) };
    let json = || serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
    Some(match (input, status) {
        (Input::Get, 200) => {
            Output::Found(String::from_utf8_lossy(&body).into_owned(), revision.expect("x-revision"))
        }
        (Input::Get, 404) => Output::NotFound,
        (Input::Put(_) | Input::Cas { .. }, 200) => {
            Output::Written(json()["revision"].as_u64().expect("revision"))
        }
        (Input::Cas { .. }, 409) => {
            Output::Conflict(json()["error"]["current_revision"].as_u64().expect("current_revision"))
        }
        // Unavailable (no quorum, timed out): a write may or may not have been applied.
        (_, 503 | 504) => Output::Unknown,
        (_, s) => panic!("{input:?} on {key}: unexpected {s}: {}", String::from_utf8_lossy(&body)),
    })
}

/// Clients: each loops over random keys and operations through random live nodes, recording
/// every operation whose request reached a node.
fn spawn_clients(
    c: &Cluster,
    seed: u64,
    down: Arc<Mutex<BTreeSet<u64>>>,
    history: Arc<Mutex<Vec<Op>>>,
    start: Instant,
    until: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ep = c.endpoints();
    let client = c.http_client(Duration::from_secs(8));
    (0..CLIENTS)
        .map(|id| {
            let (ep, client, down, history) = (ep.clone(), client.clone(), down.clone(), history.clone());
            tokio::spawn(async move {
                let mut rng = Rng(seed * 1000 + id as u64);
                let mut seen: BTreeMap<String, u64> = BTreeMap::new();
                let mut n = 0u64;
                while Instant::now() < until {
                    let key = format!("r{}", rng.below(KEYS as u64));
                    n += 1;
                    let value = format!("c{id}-{n}");
                    let input = match rng.below(10) {
                        0..=3 => Input::Get,
                        4..=7 => Input::Put(value),
                        // CAS on the revision this client last saw (often stale: conflicts too).
                        _ => Input::Cas { expect: seen.get(&key).copied().unwrap_or(0), value },
                    };
                    let nodes: Vec<u64> = {
                        let down = down.lock().unwrap();
                        ep.http.keys().copied().filter(|i| !down.contains(i)).collect()
                    };
                    let via = nodes[rng.below(nodes.len() as u64) as usize];
                    let call = start.elapsed().as_nanos() as u64;
                    let Some(output) = register_op(&client, &ep.http[&via], &ep.token, &key, &input).await
                    else {
                        continue;
                    };
                    let ret = start.elapsed().as_nanos() as u64;
                    match &output {
                        Output::Found(_, r) | Output::Written(r) | Output::Conflict(r) => {
                            seen.insert(key.clone(), *r);
                        }
                        _ => {}
                    }
                    // A read that got no answer did nothing: left out.
                    if !(input == Input::Get && output == Output::Unknown) {
                        history.lock().unwrap().push(Op { client: id, key, input, output, call, ret });
                    }
                }
            })
        })
        .collect()
}

/// The nemesis: one fault at a time, held for a while, then healed.
async fn nemesis(
    c: &mut Cluster,
    seed: u64,
    down: &Arc<Mutex<BTreeSet<u64>>>,
    until: Instant,
    log: &mut Vec<String>,
) {
    let mut rng = Rng(seed);
    let ids = c.ids();
    while Instant::now() + Duration::from_secs(3) < until {
        tokio::time::sleep(rng.millis(500, 1500)).await;
        let x = ids[rng.below(ids.len() as u64) as usize];
        let others: Vec<u64> = ids.iter().copied().filter(|i| *i != x).collect();
        let hold = rng.millis(1000, 4000);
        match rng.below(5) {
            0 => {
                log.push(format!("kill -9 {x}, restart after {hold:?}"));
                down.lock().unwrap().insert(x);
                c.kill9(x);
                tokio::time::sleep(hold).await;
                c.start(x);
                down.lock().unwrap().remove(&x);
            }
            1 => {
                log.push(format!("pause {x} for {hold:?}"));
                down.lock().unwrap().insert(x);
                c.pause(x);
                tokio::time::sleep(hold).await;
                c.resume(x);
                down.lock().unwrap().remove(&x);
            }
            2 => {
                log.push(format!("isolate {x} for {hold:?}"));
                set_faults(c, x, serde_json::json!({"drop_to": others})).await;
                for o in &others {
                    set_faults(c, *o, serde_json::json!({"drop_to": [x]})).await;
                }
                tokio::time::sleep(hold).await;
                for id in &ids {
                    set_faults(c, *id, serde_json::json!({})).await;
                }
            }
            3 => {
                // A one-way cut: x cannot send to y, y still reaches x.
                let y = others[rng.below(others.len() as u64) as usize];
                log.push(format!("cut {x} -> {y} for {hold:?}"));
                set_faults(c, x, serde_json::json!({"drop_to": [y]})).await;
                tokio::time::sleep(hold).await;
                set_faults(c, x, serde_json::json!({})).await;
            }
            _ => {
                let ms = 50 + rng.below(400);
                log.push(format!("slow links from {x} (+{ms} ms) for {hold:?}"));
                let delays: BTreeMap<String, u64> = others.iter().map(|o| (o.to_string(), ms)).collect();
                set_faults(c, x, serde_json::json!({ "delay_ms": delays })).await;
                tokio::time::sleep(hold).await;
                set_faults(c, x, serde_json::json!({})).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_registers_stay_linearizable_under_faults() {
    for seed in seeds() {
        let mut c = fault_cluster(3, "a,b,c");
        c.start_all();
        c.wait_ready(READY).await;
        // A bad fault setting is refused, naming the field, and changes nothing.
        let r = c
            .request(1, reqwest::Method::PUT, "/v1/test/faults", Some(br#"{"drop":[2]}"#.to_vec()))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("drop"), "{}", r.text());
        let r = c.request(1, reqwest::Method::GET, "/v1/test/faults", None).await.unwrap();
        assert_eq!(r.json(), serde_json::json!({"drop_to": [], "delay_ms": {}}));
        let start = Instant::now();
        let until = start + Duration::from_secs(run_secs());
        let down = Arc::new(Mutex::new(BTreeSet::new()));
        let history = Arc::new(Mutex::new(Vec::new()));
        let clients = spawn_clients(&c, seed, down.clone(), history.clone(), start, until);
        let mut log = Vec::new();
        nemesis(&mut c, seed, &down, until, &mut log).await;
        for h in clients {
            h.await.unwrap();
        }
        // Healed: every node up, no faults; then each key read through each node.
        for id in c.ids() {
            set_faults(&c, id, serde_json::json!({})).await;
        }
        c.wait_ready(READY).await;
        let client = c.http_client(Duration::from_secs(8));
        let ep = c.endpoints();
        for k in 0..KEYS {
            for id in c.ids() {
                let key = format!("r{k}");
                let deadline = Instant::now() + READY;
                loop {
                    let call = start.elapsed().as_nanos() as u64;
                    let out = register_op(&client, &ep.http[&id], &ep.token, &key, &Input::Get).await;
                    let ret = start.elapsed().as_nanos() as u64;
                    match out {
                        Some(output @ (Output::Found(..) | Output::NotFound)) => {
                            history.lock().unwrap().push(Op {
                                client: 99,
                                key,
                                input: Input::Get,
                                output,
                                call,
                                ret,
                            });
                            break;
                        }
                        _ => {
                            assert!(Instant::now() < deadline, "seed {seed}: no final read of {key} via {id}")
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let history = history.lock().unwrap().clone();
        let count = |f: fn(&Op) -> bool| history.iter().filter(|o| f(o)).count();
        let acked = count(|o| matches!(o.output, Output::Written(_)));
        let unknown = count(|o| o.output == Output::Unknown);
        let reads = count(|o| o.input == Input::Get);
        println!(
            "seed {seed}: {} ops ({acked} acknowledged writes, {unknown} unknown, {reads} reads); faults: {}",
            history.len(),
            log.join("; ")
        );
        let verdict = check(&history);
        if verdict != Verdict::Ok {
            c.dump_logs();
            let key = match &verdict {
                Verdict::Violation { key, .. } | Verdict::Unknown { key } => key.clone(),
                Verdict::Malformed(_) | Verdict::Ok => String::new(),
            };
            let mut ops: Vec<&Op> = history.iter().filter(|o| o.key == key).collect();
            ops.sort_by_key(|o| o.call);
            for o in ops {
                println!("  {o:?}");
            }
        }
        assert_eq!(verdict, Verdict::Ok, "seed {seed}; faults: {}", log.join("; "));
        assert!(acked > 20, "seed {seed}: only {acked} writes acknowledged: the run checked little");
    }
}

/// What writers had acknowledged, and what they could not tell.
#[derive(Default)]
struct Acked {
    kv: Vec<(String, String)>,
    kv_unknown: BTreeSet<String>,
    /// Time-series samples (ms, value).
    ts: BTreeMap<i64, f64>,
    ts_unknown: BTreeMap<i64, f64>,
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

async fn get_json(client: &reqwest::Client, url: &str, token: &str) -> Result<serde_json::Value, String> {
    let r = client.get(url).bearer_auth(token).send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{url}: {status} {v}"));
    }
    Ok(v)
}

/// Crash loops under write load (issue 8, workloads b–e): `FAULT_CRASH_CYCLES` (default 15;
/// the long profile 50) times, one or two random nodes are killed with `kill -9` and restarted
/// while writers put unique keys and time-series samples through the live nodes. Then: every
/// acknowledged key reads back (b); every node holds the same ledger blocks at every height
/// and its chain verifies (c); each acknowledged write is in the audit trail exactly once (d);
/// each acknowledged sample is queryable, once, with its value (e).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_crash_loops() {
    let cycles: u64 = std::env::var("FAULT_CRASH_CYCLES").ok().and_then(|r| r.parse().ok()).unwrap_or(15);
    for seed in seeds() {
        let mut c = fault_cluster(3, "a,b,c");
        c.start_all();
        c.wait_ready(READY).await;
        let writer = c.issue_token("crasher", "writer:default").await;
        let auditor = c.issue_token("auditor-x", "auditor").await;
        let ep = c.endpoints();
        let down = Arc::new(Mutex::new(BTreeSet::new()));
        let acked = Arc::new(Mutex::new(Acked::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = c.http_client(Duration::from_secs(8));
        let t0 =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let mut tasks = Vec::new();
        for w in 0..3u64 {
            let (ep, down, acked, stop, client, writer) =
                (ep.clone(), down.clone(), acked.clone(), stop.clone(), client.clone(), writer.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(seed * 77 + w);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let nodes: Vec<u64> = {
                        let down = down.lock().unwrap();
                        ep.http.keys().copied().filter(|i| !down.contains(i)).collect()
                    };
                    let via = &ep.http[&nodes[rng.below(nodes.len() as u64) as usize]];
                    if w < 2 {
                        let (key, value) = (format!("cl-{w}-{n}"), format!("v{w}-{n}"));
                        let url = format!("{via}/v1/kv/default/{key}");
                        match client.put(&url).bearer_auth(&writer).body(value.clone()).send().await {
                            Ok(r) if r.status() == 200 => acked.lock().unwrap().kv.push((key, value)),
                            Err(e) if e.is_connect() => {}
                            _ => {
                                acked.lock().unwrap().kv_unknown.insert(key);
                            }
                        }
                    } else {
                        // Samples 10 ms apart, one write each.
                        let (t, v) = (t0 + n as i64 * 10, n as f64 * 0.5);
                        let url = format!("{via}/v1/ts/write?ns=default&precision=ms");
                        let body = format!("crash,w=ts v={v} {t}");
                        match client.post(&url).bearer_auth(&writer).body(body).send().await {
                            Ok(r) if r.status() == 204 => {
                                acked.lock().unwrap().ts.insert(t, v);
                            }
                            Err(e) if e.is_connect() => {}
                            _ => {
                                acked.lock().unwrap().ts_unknown.insert(t, v);
                            }
                        }
                    }
                }
            }));
        }
        let mut rng = Rng(seed);
        let ids = c.ids();
        let mut log = Vec::new();
        for _ in 0..cycles {
            tokio::time::sleep(rng.millis(300, 1200)).await;
            let x = ids[rng.below(3) as usize];
            // One in five cycles kills two nodes: no quorum until they are back.
            let victims: Vec<u64> = if rng.below(5) == 0 {
                vec![x, ids[(ids.iter().position(|i| *i == x).unwrap() + 1) % 3]]
            } else {
                vec![x]
            };
            let hold = rng.millis(200, 1500);
            log.push(format!("kill -9 {victims:?} for {hold:?}"));
            for v in &victims {
                down.lock().unwrap().insert(*v);
                c.kill9(*v);
            }
            tokio::time::sleep(hold).await;
            for v in &victims {
                c.start(*v);
                down.lock().unwrap().remove(v);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        c.wait_ready(READY).await;
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        println!(
            "seed {seed}: {} cycles; {} keys acknowledged ({} unknown), {} samples acknowledged ({} unknown)",
            cycles,
            acked.kv.len(),
            acked.kv_unknown.len(),
            acked.ts.len(),
            acked.ts_unknown.len()
        );
        assert!(acked.kv.len() > 50 && acked.ts.len() > 20, "seed {seed}: too little acknowledged to check");

        // (b) Every acknowledged key reads back, through every node in turn.
        for (i, (key, value)) in acked.kv.iter().enumerate() {
            let via = ids[i % 3];
            let got = eventually(READY, &format!("seed {seed}: read {key}"), || async {
                c.read_back(via, "default", key).await
            })
            .await;
            assert_eq!(got.as_deref(), Some(value.as_bytes()), "seed {seed}: {key} lost; faults {log:?}");
        }

        // (e) Every acknowledged sample is there once with its value; nothing that was never
        // written. Samples a node queued (their shard was unreachable) are forwarded first:
        // wait until every queue is empty (a backlog of thousands of one-sample parts drains
        // at one proposal each), and say so if one never empties.
        eventually(
            Duration::from_secs(300),
            &format!("seed {seed}: store-and-forward queues drained"),
            || async {
                let mut left = Vec::new();
                for id in &ids {
                    let v = get_json(&client, &format!("{}/v1/ts/queue", c.http(*id)), &c.token).await?;
                    if v["parts"] != 0 {
                        left.push(format!("node {id}: {v}"));
                    }
                }
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(left.join("; "))
                }
            },
        )
        .await;
        let end_s = (t0 + 1_000_000) / 1000;
        let query = format!("/api/v1/query?query=crash_v%5B1h%5D&time={end_s}");
        let samples: BTreeMap<i64, f64> = eventually(READY, &format!("seed {seed}: samples"), || async {
            let v = get_json(&client, &format!("{}{query}", c.http(1)), &c.token).await?;
            let mut got = BTreeMap::new();
            for s in v["data"]["result"].as_array().into_iter().flatten() {
                for p in s["values"].as_array().into_iter().flatten() {
                    let t = (p[0].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
                    let val: f64 = p[1].as_str().unwrap_or("").parse().map_err(|_| format!("{p}"))?;
                    if got.insert(t, val).is_some() {
                        return Err(format!("sample at {t} twice"));
                    }
                }
            }
            let missing: Vec<i64> =
                acked.ts.iter().filter(|(t, v)| got.get(t) != Some(v)).map(|(t, _)| *t).collect();
            if !missing.is_empty() {
                // Contiguous runs (10 ms apart), relative to t0, for the report.
                let mut runs: Vec<(i64, i64)> = Vec::new();
                for t in &missing {
                    match runs.last_mut() {
                        Some(r) if *t - r.1 <= 10 => r.1 = *t,
                        _ => runs.push((*t, *t)),
                    }
                }
                let runs: Vec<String> =
                    runs.iter().take(20).map(|(a, b)| format!("{}..{}", a - t0, b - t0)).collect();
                return Err(format!(
                    "{} acknowledged samples missing of {} (stored {}), runs (ms after t0): {}",
                    missing.len(),
                    acked.ts.len(),
                    got.len(),
                    runs.join(" ")
                ));
            }
            Ok(got)
        })
        .await;
        for (t, v) in &samples {
            assert!(
                acked.ts.get(t) == Some(v) || acked.ts_unknown.get(t) == Some(v),
                "seed {seed}: sample ({t}, {v}) was never written"
            );
        }

        // (c) Every node ends with the same verified chain, block for block.
        let heights: Vec<u64> =
            eventually(READY, &format!("seed {seed}: identical ledger heads"), || async {
                let mut heads = Vec::new();
                for id in &ids {
                    let v = get_json(&client, &format!("{}/v1/ledger/status", c.http(*id)), &c.token).await?;
                    if v["health"] != "verified" {
                        return Err(format!("node {id}: {v}"));
                    }
                    heads.push(v);
                }
                Ok(heads.iter().map(|h| h["height"].as_u64().unwrap_or(0)).collect())
            })
            .await;
        let common_height = *heights.iter().min().unwrap();
        for h in 0..=common_height {
            let mut blocks = Vec::new();
            for id in &ids {
                let url = format!("{}/v1/ledger/blocks/{h}", c.http(*id));
                blocks.push(
                    eventually(READY, &format!("block {h} from {id}"), || get_json(&client, &url, &c.token))
                        .await,
                );
            }
            assert!(
                blocks.iter().all(|b| *b == blocks[0]),
                "seed {seed}: nodes differ at height {h}: {blocks:?}"
            );
        }

        // (d) Each acknowledged put is in the audit trail exactly once (as a 200), and no key
        // was recorded as written twice.
        eventually(Duration::from_secs(90), &format!("seed {seed}: audit records"), || async {
            let mut ok: BTreeMap<String, usize> = BTreeMap::new();
            let mut after: Option<String> = None;
            loop {
                let mut url = format!("{}/v1/audit?actor=crasher&limit=1000", c.http(1));
                if let Some(a) = &after {
                    url.push_str(&format!("&after={a}"));
                }
                let v = get_json(&client, &url, &auditor).await?;
                for r in v["records"].as_array().into_iter().flatten() {
                    if r["action"] == "kv.put" && r["status"] == 200 {
                        *ok.entry(r["key"].as_str().unwrap_or("").to_string()).or_default() += 1;
                    }
                }
                match v["next"].as_str() {
                    Some(n) => after = Some(n.to_string()),
                    None => break,
                }
            }
            if let Some((k, n)) = ok.iter().find(|(_, n)| **n > 1) {
                panic!("seed {seed}: {k} recorded {n} times");
            }
            let missing: Vec<&String> =
                acked.kv.iter().map(|(k, _)| k).filter(|k| !ok.contains_key(*k)).collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{} acknowledged puts not in the audit trail, e.g. {:?}",
                    missing.len(),
                    missing[0]
                ));
            }
            Ok(())
        })
        .await;
    }
}

/// A tmpfs of `mb` MiB mounted at `dir` (root only), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mb: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Disk full: node 3's data directory is a small tmpfs, filled to the brim while clients
/// write through every node. The other two keep acknowledging writes; node 3 refuses what it
/// cannot make durable (an error, never a panic or a lie); once space is freed and it is
/// restarted it catches up, and every acknowledged write reads back through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_on_one_node_loses_nothing() {
    if !is_root() {
        // tmpfs needs root (CI runs as root; `.ci/run` says so). Say it rather than pass.
        println!("SKIPPED: a_full_disk_on_one_node_loses_nothing needs root to mount a tmpfs");
        return;
    }
    let mut c = fault_cluster(3, "a,b,c");
    let _disk = match Tmpfs::mount(c.data_dir(3), 96) {
        Ok(d) => d,
        // Root without CAP_SYS_ADMIN (some containers): say so loudly rather than fail on
        // what the environment forbids.
        Err(e) => {
            println!("SKIPPED: a_full_disk_on_one_node_loses_nothing: mounting a tmpfs failed: {e}");
            return;
        }
    };
    c.start_all();
    c.wait_ready(READY).await;
    let ep = c.endpoints();
    let client = c.http_client(Duration::from_secs(8));
    // Fill node 3's disk, leaving a few KiB.
    let filler = c.data_dir(3).join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![7u8; 1 << 20];
    use std::io::Write;
    while f.write_all(&chunk).is_ok() {}
    let small = vec![7u8; 4096];
    while f.write_all(&small).is_ok() {}
    drop(f);
    let _ = std::fs::OpenOptions::new().write(true).open(&filler).and_then(|f| {
        let len = f.metadata()?.len();
        f.set_len(len.saturating_sub(16 << 10))
    });

    // Writes through every node; node 3 can no longer make anything durable.
    let mut acked = Vec::new();
    let mut refused_at_3 = 0;
    for n in 0..300u64 {
        let via = 1 + n % 3;
        let (key, value) = (format!("df-{n}"), format!("value-{n}-{}", "x".repeat(200)));
        let url = format!("{}/v1/kv/default/{key}", ep.http[&via]);
        match client.put(&url).bearer_auth(&ep.token).body(value.clone()).send().await {
            Ok(r) if r.status() == 200 => acked.push((key, value)),
            Ok(r) => {
                let status = r.status().as_u16();
                assert!(status == 503 || status == 500, "put via {via}: {status}");
                if via == 3 {
                    refused_at_3 += 1;
                }
            }
            Err(e) => panic!("put via {via}: {e}"),
        }
    }
    let via_others = acked.len();
    println!("disk full on node 3: {via_others} of 300 puts acknowledged, {refused_at_3} refused by node 3");
    assert!(via_others >= 150, "the two healthy nodes stopped acknowledging: {via_others}");
    assert!(c.is_running(3), "node 3 exited on a full disk");
    // Node 1 and 2 still serve every acknowledged write.
    for (key, value) in acked.iter().take(50) {
        assert_eq!(c.read_back(1, "default", key).await.unwrap().as_deref(), Some(value.as_bytes()));
    }

    // Space again, and a restart: node 3 catches up and serves everything acknowledged.
    std::fs::remove_file(&filler).unwrap();
    c.kill9(3);
    c.start(3);
    c.wait_ready(READY).await;
    for (key, value) in &acked {
        let got = eventually(READY, &format!("read {key} via 3"), || async {
            c.read_back(3, "default", key).await
        })
        .await;
        assert_eq!(got.as_deref(), Some(value.as_bytes()), "{key} via node 3 after the disk was freed");
    }
    let log = c.log_text(3);
    assert!(!log.contains("panicked"), "node 3 panicked on the full disk");
}
