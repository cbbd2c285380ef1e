//! CLI commands of the ledger: `image sign|register|revoke|verify`, `publisher add`,
//! `ledger verify|checkpoint|consistency`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Subcommand;
use edgefabric_crypto::{Identity, PublicKey};
use edgefabric_ledger::entry::{check_digest, check_id, check_name, image_message, revocation_message};
use edgefabric_ledger::note::{self, TrustedKey};
use edgefabric_ledger::verify::{self, Presented};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{encode_segment, Client, ClientOpts};
use crate::config::TrustFile;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Print the base64 signature that `POST /v1/images` expects: the publisher's ed25519
    /// signature over `edgefabric-image-v1\nname: NAME\ndigest: DIGEST\n`.
    Sign {
        /// The publisher's secret key file (`edgefabric keygen`).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        name: String,
        /// `sha256:` and 64 lowercase hex digits.
        #[arg(long)]
        digest: String,
    },
    /// Sign and register an image in one step.
    Register {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        digest: String,
        /// The publisher id the key is registered under.
        #[arg(long)]
        publisher: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Revoke an image: as its publisher (--key and --publisher) or as the admin.
    Revoke {
        #[arg(long)]
        digest: String,
        #[arg(long)]
        reason: String,
        #[arg(long, requires = "publisher")]
        key: Option<PathBuf>,
        #[arg(long, requires = "key")]
        publisher: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Prove an image genuine, offline: its entry, its inclusion proof and a checkpoint signed
    /// by at least --min-signatures of the node keys pinned in --trust. Exits 0 only for a
    /// registered, unrevoked image whose proof verifies.
    Verify {
        #[arg(long)]
        digest: String,
        /// The node to ask (nothing it says is trusted).
        #[arg(long, default_value = "http://127.0.0.1:7480", env = "EDGEFABRIC_ENDPOINT")]
        endpoint: String,
        /// CA certificate(s) (PEM) for https:// endpoints. Default: `ca.pem` beside the trust
        /// file, when there is one.
        #[arg(long, env = "EDGEFABRIC_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// trust.json: `{"nodes":[{"id":1,"public_key":"..."}], "origin": "..."}`.
        #[arg(long)]
        trust: PathBuf,
        #[arg(long, default_value_t = 1)]
        min_signatures: usize,
        /// Also require this image name.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PublisherCmd {
    /// Register a publisher's public key (admin).
    Add {
        #[arg(long)]
        id: String,
        /// The publisher's public key file (`KEY.pub` from `edgefabric keygen`) ...
        #[arg(long, conflicts_with = "public_key")]
        public_key_file: Option<PathBuf>,
        /// ... or the base64 key itself.
        #[arg(long)]
        public_key: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
pub enum LedgerCmd {
    /// Re-verify a stopped node's stored ledger from genesis; exits non-zero naming the first
    /// bad block if anything was altered.
    Verify {
        /// The node's data directory.
        #[arg(long)]
        data: PathBuf,
        /// The node's config: also check genesis against its founders and the node's own last
        /// signed checkpoint against its key.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the latest cosigned checkpoint (and verify it if --trust is given).
    Checkpoint {
        #[arg(long, default_value = "http://127.0.0.1:7480", env = "EDGEFABRIC_ENDPOINT")]
        endpoint: String,
        /// CA certificate(s) (PEM) for https:// endpoints. Default: `ca.pem` beside the trust
        /// file, when there is one.
        #[arg(long, env = "EDGEFABRIC_CA_FILE")]
        ca_file: Option<PathBuf>,
        #[arg(long)]
        trust: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        min_signatures: usize,
    },
    /// Check that the log only grew since an older checkpoint (a file holding its note): fetch
    /// the latest checkpoint and a consistency proof between them, verify both offline.
    Consistency {
        #[arg(long)]
        old: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:7480", env = "EDGEFABRIC_ENDPOINT")]
        endpoint: String,
        /// CA certificate(s) (PEM) for https:// endpoints. Default: `ca.pem` beside the trust
        /// file, when there is one.
        #[arg(long, env = "EDGEFABRIC_CA_FILE")]
        ca_file: Option<PathBuf>,
        #[arg(long)]
        trust: PathBuf,
        #[arg(long, default_value_t = 1)]
        min_signatures: usize,
    },
}

fn sign_image(key: &Path, name: &str, digest: &str) -> Result<String> {
    check_name(name).context("--name")?;
    check_digest(digest).context("--digest")?;
    let id = Identity::read(key).with_context(|| format!("reading the key {}", key.display()))?;
    Ok(STANDARD.encode(id.sign(&image_message(name, digest))))
}

pub async fn image(cmd: ImageCmd) -> Result<i32> {
    match cmd {
        ImageCmd::Sign { key, name, digest } => println!("{}", sign_image(&key, &name, &digest)?),
        ImageCmd::Register { key, name, digest, publisher, client } => {
            check_id("publisher", &publisher).context("--publisher")?;
            let signature = sign_image(&key, &name, &digest)?;
            let c = Client::new(&client)?;
            let body =
                json!({"name": name, "digest": digest, "publisher": publisher, "signature": signature});
            crate::client::print_json(&c.json(Method::POST, "/v1/images", Some(body)).await?)?;
        }
        ImageCmd::Revoke { digest, reason, key, publisher, client } => {
            check_digest(&digest).context("--digest")?;
            let mut body = json!({"reason": reason});
            if let (Some(key), Some(p)) = (key, publisher) {
                let id =
                    Identity::read(&key).with_context(|| format!("reading the key {}", key.display()))?;
                body["publisher"] = json!(p);
                body["signature"] = json!(STANDARD.encode(id.sign(&revocation_message(&digest, &reason))));
            }
            let c = Client::new(&client)?;
            let path = format!("/v1/images/{}/revoke", encode_segment(&digest));
            crate::client::print_json(&c.json(Method::POST, &path, Some(body)).await?)?;
        }
        ImageCmd::Verify { digest, endpoint, ca_file, trust, min_signatures, name } => {
            let http = anonymous_client(ca_file.as_deref(), Some(&trust))?;
            return verify_image(&http, &digest, &endpoint, &trust, min_signatures, name.as_deref()).await;
        }
    }
    Ok(0)
}

pub async fn publisher(cmd: PublisherCmd) -> Result<i32> {
    match cmd {
        PublisherCmd::Add { id, public_key_file, public_key, client } => {
            let key = match (public_key_file, public_key) {
                (Some(f), None) => {
                    std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
                }
                (None, Some(k)) => k,
                _ => bail!("give --public-key-file or --public-key"),
            };
            let key = PublicKey::from_base64(key.trim()).context("the public key")?;
            let c = Client::new(&client)?;
            let body = json!({"id": id, "public_key": key.to_base64()});
            crate::client::print_json(&c.json(Method::POST, "/v1/publishers", Some(body)).await?)?;
        }
    }
    Ok(0)
}

/// The pinned keys and origin of a trust file.
pub fn load_trust(path: &Path) -> Result<(Vec<TrustedKey>, Option<String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let t: TrustFile = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut keys = vec![];
    for n in t.nodes {
        let key = PublicKey::from_base64(&n.public_key)
            .with_context(|| format!("{}: node {}", path.display(), n.id))?;
        keys.push(TrustedKey { name: edgefabric_store::ledger::key_name(n.id), key });
    }
    if keys.is_empty() {
        bail!("{}: pins no node keys", path.display());
    }
    Ok((keys, t.origin))
}

fn base(endpoint: &str) -> Result<String> {
    let b = endpoint.trim_end_matches('/').to_string();
    if !b.starts_with("http://") && !b.starts_with("https://") {
        bail!("--endpoint: {b:?} must start with http:// or https://");
    }
    Ok(b)
}

/// The client of the commands that read without a token (what they read is verified, not
/// trusted; TLS keeps it private and the endpoint honest about who it is).
fn anonymous_client(ca_file: Option<&Path>, trust: Option<&Path>) -> Result<reqwest::Client> {
    let ca = crate::client::ca_file_or_default(ca_file, trust);
    crate::client::http_client(ca.as_deref(), Some(std::time::Duration::from_secs(30)))
}

/// A GET without a token; the body (JSON or text) whatever the status.
async fn get(client: &reqwest::Client, url: &str) -> Result<(reqwest::StatusCode, Vec<u8>)> {
    let r = client.get(url).send().await.with_context(|| format!("cannot reach {url}"))?;
    let status = r.status();
    let body = r.bytes().await.context("reading the answer")?.to_vec();
    // Bound what a hostile server can make us parse.
    if body.len() > 4 << 20 {
        bail!("{url}: the answer is larger than 4 MiB");
    }
    Ok((status, body))
}

fn hex32(v: &Value, what: &str) -> Result<Vec<u8>> {
    let s = v.as_str().with_context(|| format!("{what}: missing or not a string"))?;
    hex::decode(s).with_context(|| format!("{what}: not hex"))
}

/// (log index, tree size, stated root, proof hashes) of an `inclusion_proof` object.
type InclusionParts = (u64, u64, Vec<u8>, Vec<Vec<u8>>);

fn proof_of(v: &Value) -> Result<InclusionParts> {
    let index = v["log_index"].as_u64().context("inclusion_proof.log_index: missing")?;
    let size = v["tree_size"].as_u64().context("inclusion_proof.tree_size: missing")?;
    let root = hex32(&v["root_hash"], "inclusion_proof.root_hash")?;
    let hashes = v["hashes"]
        .as_array()
        .context("inclusion_proof.hashes: missing")?
        .iter()
        .enumerate()
        .map(|(i, h)| hex32(h, &format!("inclusion_proof.hashes[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    Ok((index, size, root, hashes))
}

async fn verify_image(
    http: &reqwest::Client,
    digest: &str,
    endpoint: &str,
    trust: &Path,
    min: usize,
    name: Option<&str>,
) -> Result<i32> {
    check_digest(digest).context("--digest")?;
    if min == 0 {
        bail!("--min-signatures: must be at least 1");
    }
    let (keys, origin) = load_trust(trust)?;
    if min > keys.len() {
        bail!("--min-signatures {min}: {} pins only {} node keys", trust.display(), keys.len());
    }
    let url = format!("{}/v1/images/{}", base(endpoint)?, encode_segment(digest));
    let (status, body) = get(http, &url).await?;
    let v: Value =
        serde_json::from_slice(&body).with_context(|| format!("{url}: the answer is not JSON ({status})"))?;
    match v["status"].as_str() {
        Some("registered") | Some("revoked") => {}
        Some("unknown") => {
            eprintln!("UNKNOWN: {digest} is not registered (the server says so; absence cannot be proven)");
            return Ok(1);
        }
        _ => bail!("{url}: {status}: {}", String::from_utf8_lossy(&body)),
    }
    let note_text = v["checkpoint"].as_str().context("checkpoint: missing")?;
    let leaf =
        STANDARD.decode(v["leaf_base64"].as_str().context("leaf_base64: missing")?).context("leaf_base64")?;
    let (index, size, root, hashes) = proof_of(&v["inclusion_proof"])?;
    let presented = Presented {
        leaf: &leaf,
        log_index: index,
        tree_size: size,
        root_hash: Some(&root),
        proof: &hashes,
        checkpoint: note_text,
    };
    let proven =
        verify::verify_entry(&keys, origin.as_deref(), min, &presented).context("verification failed")?;
    let revoked = verify::image_record(&proven.entry, digest, name).context("verification failed")?;
    let cp = &proven.checkpoint;
    match revoked {
        None => {
            // A server must not pass off a revoked image as registered by showing only the
            // registration: it can withhold a revocation (see ledger/src/verify.rs), but it
            // cannot mislabel the entry it shows.
            if v["status"] != "registered" {
                bail!("verification failed: the server says {:?} but shows a registration", v["status"]);
            }
            println!(
                "OK: {digest} is registered (entry {index} of {}, checkpoint signed by {} of {} pinned nodes: {})",
                cp.size,
                proven.signers.len(),
                keys.len(),
                proven.signers.join(", ")
            );
            Ok(0)
        }
        Some(reason) => {
            println!("REVOKED: {digest} was revoked (entry {index} of {}): {reason}", cp.size);
            Ok(1)
        }
    }
}

pub async fn ledger(cmd: LedgerCmd) -> Result<i32> {
    match cmd {
        LedgerCmd::Verify { data, config } => verify_store(&data, config.as_deref()),
        LedgerCmd::Checkpoint { endpoint, ca_file, trust, min_signatures } => {
            let url = format!("{}/v1/ledger/checkpoint", base(&endpoint)?);
            let http = anonymous_client(ca_file.as_deref(), trust.as_deref())?;
            let (status, body) = get(&http, &url).await?;
            let text = String::from_utf8_lossy(&body).into_owned();
            if !status.is_success() {
                bail!("{url}: {status}: {text}");
            }
            if let Some(t) = trust {
                let (keys, origin) = load_trust(&t)?;
                let (cp, signers) =
                    note::verify_checkpoint(&text, &keys, min_signatures).context("checkpoint")?;
                if let Some(o) = origin {
                    if cp.origin != o {
                        bail!("checkpoint origin {:?} is not the pinned {o:?}", cp.origin);
                    }
                }
                eprintln!("verified: size {}, signed by {}", cp.size, signers.join(", "));
            }
            print!("{text}");
            Ok(0)
        }
        LedgerCmd::Consistency { old, endpoint, ca_file, trust, min_signatures } => {
            let http = anonymous_client(ca_file.as_deref(), Some(&trust))?;
            let (keys, origin) = load_trust(&trust)?;
            let old_text =
                std::fs::read_to_string(&old).with_context(|| format!("reading {}", old.display()))?;
            let (old_cp, _) =
                note::verify_checkpoint(&old_text, &keys, min_signatures).context("the old checkpoint")?;
            let b = base(&endpoint)?;
            let (status, body) = get(&http, &format!("{b}/v1/ledger/checkpoint")).await?;
            let new_text = String::from_utf8_lossy(&body).into_owned();
            if !status.is_success() {
                bail!("checkpoint: {status}: {new_text}");
            }
            let (new_cp, _) =
                note::verify_checkpoint(&new_text, &keys, min_signatures).context("the new checkpoint")?;
            for cp in [&old_cp, &new_cp] {
                if let Some(o) = &origin {
                    if &cp.origin != o {
                        bail!("checkpoint origin {:?} is not the pinned {o:?}", cp.origin);
                    }
                }
            }
            let url = format!("{b}/v1/ledger/proof/consistency?from={}&to={}", old_cp.size, new_cp.size);
            let (status, body) = get(&http, &url).await?;
            let v: Value =
                serde_json::from_slice(&body).with_context(|| format!("{url}: not JSON ({status})"))?;
            let hashes = v["hashes"]
                .as_array()
                .with_context(|| format!("{url}: {status}: {v}"))?
                .iter()
                .enumerate()
                .map(|(i, h)| hex32(h, &format!("hashes[{i}]")))
                .collect::<Result<Vec<_>>>()?;
            edgefabric_ledger::merkle::verify_consistency(
                old_cp.size,
                new_cp.size,
                &hashes,
                &old_cp.root,
                &new_cp.root,
            )
            .context("the log is NOT an extension of the old checkpoint")?;
            println!(
                "OK: the log grew from {} to {} entries without rewriting any",
                old_cp.size, new_cp.size
            );
            print!("{new_text}");
            Ok(0)
        }
    }
}

/// `ledger verify --data DIR`: opens the stopped node's sled and replays its chain.
fn verify_store(data: &Path, config: Option<&Path>) -> Result<i32> {
    let sm = data.join("sm");
    if !sm.exists() {
        bail!(
            "--data: {} has no state machine directory (sm/); is it a node's data directory?",
            data.display()
        );
    }
    let (genesis, identity, id) = match config {
        Some(p) => {
            let cfg = crate::config::NodeConfig::load(p)?;
            let identity = std::sync::Arc::new(Identity::read(&cfg.key_file).context("the node key")?);
            let opts = cfg.node_options(identity.clone())?;
            (opts.ledger_genesis, Some(identity), cfg.id)
        }
        None => (None, None, 0),
    };
    let db = sled::Config::new()
        .path(&sm)
        .open()
        .with_context(|| format!("opening {} (is the node still running?)", sm.display()))?;
    let tree = db.open_tree(format!("group-{}", edgefabric_store::shard::LEDGER_GROUP))?;
    let head = match edgefabric_ledger::chain::verify_chain(&tree, genesis.as_deref()) {
        Ok(h) => h,
        Err(e @ edgefabric_ledger::LedgerError::Corrupt { .. }) => {
            eprintln!("CORRUPT: {e}");
            return Ok(1);
        }
        Err(e) => bail!("verification could not run: {e}"),
    };
    let Some(head) = head else {
        println!("the ledger is empty (no genesis block yet)");
        return Ok(0);
    };
    // The last checkpoint the node signed: its root must still be the chain's at that size.
    let cp_path = data.join("ledger-checkpoint");
    if cp_path.exists() {
        let cp = match &identity {
            Some(identity) => edgefabric_store::ledger::read_own_checkpoint(&cp_path, id, identity)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            None => {
                let text = std::fs::read_to_string(&cp_path)?;
                let n = note::Note::parse(&text).context("ledger-checkpoint")?;
                Some(note::Checkpoint::parse(&n.text).context("ledger-checkpoint")?)
            }
        };
        if let Some(cp) = cp {
            let ok = cp.size <= head.log_size
                && edgefabric_ledger::chain::root_at(&tree, cp.size).is_ok_and(|r| r == cp.root);
            if !ok {
                eprintln!(
                    "CORRUPT: the chain ({} entries) does not contain the checkpoint this node signed (size {})",
                    head.log_size, cp.size
                );
                return Ok(1);
            }
        }
    }
    println!(
        "OK: {} blocks, {} entries, every block re-validated; head {}",
        head.height + 1,
        head.log_size,
        hex::encode(head.hash)
    );
    Ok(0)
}
