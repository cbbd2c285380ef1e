//! `POST /v1/backup` and the `edgefabric backup` / `restore` commands. The work is in
//! `edgefabric_store::backup` (what a backup holds, and why a restore is safe); this is the
//! glue: the node writes the backup to a temporary file in its data directory and streams it,
//! the CLI saves it (fsynced, then renamed into place, checked before it says "done"), and
//! `restore` writes a stopped node's new data directory from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use reqwest::Method;

use crate::client::{progress, Client, ClientOpts};
use crate::error::ApiError;
use crate::server::AppState;
use edgefabric_store::backup::BackupSummary;

/// Temporary backup files in a data directory start with this; a node removes leftovers (from
/// a crash mid-backup) when it starts.
pub const TMP_PREFIX: &str = "backup-";
const TMP_SUFFIX: &str = ".efb.tmp";

/// Removes temporary backup files a crash left in `dir`.
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(TMP_PREFIX) && name.ends_with(TMP_SUFFIX) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `POST /v1/backup` (admin): a backup of this node, streamed (`application/octet-stream`); its
/// summary is in the `x-edgefabric-backup` header (JSON).
pub async fn take(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let path = st.node.options().data_dir.join(format!("{TMP_PREFIX}{nanos}{TMP_SUFFIX}"));
    let summary = match st.node.backup_to(&path).await {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
    };
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("backup: {e}"))
    })?;
    // Unlinked now: the open handle still reads it, and nothing is left behind if the
    // client goes away.
    let _ = std::fs::remove_file(&path);
    let stream = futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let name = format!("node{}-{}.efb", summary.node, summary.created_ms);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, summary.bytes.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
            (header::HeaderName::from_static("x-edgefabric-backup"), summary_json(&summary).to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A summary as the API and the CLI show it.
pub fn summary_json(s: &BackupSummary) -> serde_json::Value {
    serde_json::json!({
        "node": s.node,
        "site": s.site,
        "instance": s.instance.to_string(),
        "created_ms": s.created_ms,
        "groups": s.groups.iter().map(|(g, last, bytes)| serde_json::json!({
            "group": g.to_string(), "last_index": last, "bytes": bytes,
        })).collect::<Vec<_>>(),
        "audit_records": s.audit_records,
        "ts_parts": s.ts_parts,
        "bytes": s.bytes,
        "signed": s.signed,
    })
}

#[derive(clap::Args)]
pub struct BackupOpts {
    /// Where to write the backup (refused if it exists). Mode 0600.
    #[arg(long)]
    pub out: PathBuf,
    /// The public key the backup is sealed to (`KEY.pub` from `edgefabric keygen`, or the
    /// base64 key): only its secret key opens it (`restore --identity KEY`). Keep that key off
    /// the nodes.
    #[arg(long)]
    pub recipient: String,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// `edgefabric backup`: downloads a backup of the node at `--endpoint` into `--out`.
pub async fn run_backup(o: BackupOpts) -> Result<()> {
    if o.out.exists() {
        bail!("--out: {} exists; choose a new file", o.out.display());
    }
    let c = Client::new(&o.client)?;
    let bar = progress(None, "{spinner} snapshotting the node's groups ({elapsed})");
    let resp = c.stream(Method::POST, "/v1/backup").await;
    bar.finish_and_clear();
    let mut resp = resp?;
    let len = resp.content_length();
    let bar = progress(len, "{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})");
    let recipient = read_recipient(&o.recipient)?;
    let tmp = o.out.with_extension("partial");
    let sealing = o.out.with_extension("sealing");
    let result = async {
        let mut f = create_private(&tmp)?;
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await.context("reading the backup")? {
            std::io::Write::write_all(&mut f, &chunk)
                .with_context(|| format!("writing {}", tmp.display()))?;
            got += chunk.len() as u64;
            bar.set_position(got);
        }
        f.sync_all()?;
        if len.is_some_and(|l| l != got) {
            bail!("the node sent {got} of {} bytes; the backup is incomplete", len.unwrap_or(0));
        }
        // Checked before it is called a backup.
        let summary =
            edgefabric_store::backup::check_backup(&tmp).context("checking the downloaded backup")?;
        // Sealed to the operator's key; the unsealed download (0600, beside it) goes at once.
        let mut sealed = std::io::BufWriter::new(create_private(&sealing)?);
        let src = std::io::BufReader::new(std::fs::File::open(&tmp)?);
        edgefabric_crypto::sealed_file::seal(src, &mut sealed, &recipient).context("sealing the backup")?;
        let sealed = sealed.into_inner().map_err(|e| e.into_error())?;
        sealed.sync_all()?;
        std::fs::remove_file(&tmp)?;
        std::fs::rename(&sealing, &o.out)?;
        if let Some(dir) = o.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(summary)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&sealing);
    }
    bar.finish_and_clear();
    match result {
        Ok(s) => {
            println!(
                "backup of node {} (site {}) written to {}: {} groups, {} audit records and {} time-series parts queued, {} bytes",
                s.node,
                s.site,
                o.out.display(),
                s.groups.len(),
                s.audit_records,
                s.ts_parts,
                s.bytes
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[derive(clap::Args)]
pub struct RestoreOpts {
    /// The backup file (`edgefabric backup --out`).
    #[arg(long)]
    pub from: PathBuf,
    /// The node's configuration: restores into its `data_dir`, and checks that the backup is
    /// of the same node.
    #[arg(long, conflicts_with = "data", required_unless_present_any = ["data", "check"])]
    pub config: Option<PathBuf>,
    /// Restore into this directory instead (a `serve --dev` node's `--data`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Only read and check the backup, and say what it holds.
    #[arg(long)]
    pub check: bool,
    /// The secret key the backup was sealed to (`edgefabric keygen --out KEY`; `backup
    /// --recipient KEY.pub`).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// The node's public key (`nodeK.key.pub`, or the base64 key), to check the node's
    /// signature on the backup with when restoring with `--data`; with `--config` the key is
    /// the configuration's own.
    #[arg(long)]
    pub node_key: Option<String>,
    /// Restore a backup its node did not sign (made before backups were signed).
    #[arg(long)]
    pub allow_unsigned: bool,
}

/// A new file, mode 0600 from its creation (refused if it exists).
fn create_private(path: &Path) -> Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).with_context(|| format!("creating {}", path.display()))
}

/// `--recipient`: a `.pub` file or the base64 ed25519 key itself.
fn read_recipient(arg: &str) -> Result<edgefabric_crypto::PublicKey> {
    read_public_key("--recipient", arg)
}

/// A public key given as a file (`KEY.pub`) or as base64; `flag` names it in errors.
fn read_public_key(flag: &str, arg: &str) -> Result<edgefabric_crypto::PublicKey> {
    let text = match std::fs::read_to_string(arg) {
        Ok(t) => t,
        Err(_) if !Path::new(arg).exists() => arg.to_string(),
        Err(e) => bail!("{flag}: reading {arg}: {e}"),
    };
    let key = edgefabric_crypto::PublicKey::from_base64(text.trim())
        .with_context(|| format!("{flag}: {arg:?} is neither a key file nor a base64 ed25519 key"))?;
    if key.is_weak() {
        bail!("{flag}: a small-order key");
    }
    Ok(key)
}

/// The backup to read: a sealed one is opened with `--identity` into a private temporary file
/// beside it (removed when the returned guard drops); an unsealed one (made before backups
/// were sealed) is read as it is, with a warning: nothing but its checksum protects it.
struct Opened {
    path: PathBuf,
    temporary: bool,
}

impl Drop for Opened {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn open_backup(from: &Path, identity: Option<&Path>) -> Result<Opened> {
    let mut head = [0u8; 16];
    let n = std::io::Read::read(
        &mut std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?,
        &mut head,
    )?;
    if !edgefabric_crypto::sealed_file::is_sealed(&head[..n]) {
        eprintln!(
            "warning: {} is not sealed (made before backups were): only its checksum protects it",
            from.display()
        );
        return Ok(Opened { path: from.to_path_buf(), temporary: false });
    }
    let Some(key) = identity else {
        bail!("--identity: {} is sealed; give the secret key it was sealed to", from.display());
    };
    let id = edgefabric_crypto::Identity::read(key).context("--identity")?;
    let mut name = from.as_os_str().to_owned();
    name.push(".opened");
    let opened = Opened { path: PathBuf::from(name), temporary: true };
    let _ = std::fs::remove_file(&opened.path);
    let mut dst = std::io::BufWriter::new(create_private(&opened.path)?);
    let src = std::io::BufReader::new(std::fs::File::open(from)?);
    edgefabric_crypto::sealed_file::open(src, &mut dst, &id)
        .with_context(|| format!("{} does not open: refused", from.display()))?;
    std::io::Write::flush(&mut dst)?;
    Ok(opened)
}

/// `edgefabric restore`: writes a stopped node's data directory from a backup.
pub fn run_restore(o: RestoreOpts) -> Result<()> {
    let opened = open_backup(&o.from, o.identity.as_deref())?;
    let from = opened.path.clone();
    if o.check {
        let s = edgefabric_store::backup::check_backup(&from)
            .with_context(|| format!("{} is not a usable backup", o.from.display()))?;
        println!("{}", serde_json::to_string_pretty(&summary_json(&s))?);
        return Ok(());
    }
    // The node's key, to check its signature with: the configuration's own key, or the one
    // given. Without either (a dev node's --data), the signature is not checked, and we say so.
    let given = o.node_key.as_deref().map(|k| read_public_key("--node-key", k)).transpose()?;
    let (dir, node, key) = match (&o.config, &o.data) {
        (Some(path), _) => {
            let cfg = crate::config::NodeConfig::load(path)?;
            let own = edgefabric_crypto::Identity::read(&cfg.key_file)
                .with_context(|| format!("key_file: reading the node's key {}", cfg.key_file.display()))?
                .public_key();
            if given.as_ref().is_some_and(|g| *g != own) {
                bail!("--node-key: not the key of the node in {}", path.display());
            }
            (cfg.data_dir, Some(cfg.id), Some(own))
        }
        (None, Some(d)) => (d.clone(), None, given),
        (None, None) => bail!("--config or --data is required"),
    };
    let signature = match &key {
        Some(k) => edgefabric_store::backup::Signature::Key(k),
        None => {
            eprintln!(
                "warning: the node's signature on {} is not checked (give --node-key, or restore with --config)",
                o.from.display()
            );
            edgefabric_store::backup::Signature::Unchecked
        }
    };
    let bar = progress(None, "{spinner} restoring: {msg}");
    bar.set_message("reading and checking the backup");
    let s = edgefabric_store::backup::restore(&from, &dir, node, signature, o.allow_unsigned, |g| {
        bar.set_message(format!("wrote group {g}"))
    });
    bar.finish_and_clear();
    let s = s.with_context(|| format!("restoring {} into {}", o.from.display(), dir.display()))?;
    println!(
        "restored node {} (site {}) into {}: {} groups, {} audit records and {} time-series parts to ship. \
         Start the node: each group rejoins as a learner and catches up before it votes.",
        s.node,
        s.site,
        dir.display(),
        s.groups.len(),
        s.audit_records,
        s.ts_parts
    );
    Ok(())
}
