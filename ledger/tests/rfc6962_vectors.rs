//! transparency-dev/merkle's RFC 6962 test vectors (`../shared/vectors/rfc6962`), positive and
//! negative: every case must give the result it names.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgefabric_ledger::merkle::{verify_consistency, verify_inclusion};
use serde::Deserialize;

fn vectors() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/rfc6962");
    if dir.exists() {
        Some(dir)
    } else {
        eprintln!("NOTICE: {} not found; RFC 6962 vector tests skipped", dir.display());
        None
    }
}

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for sub in std::fs::read_dir(dir).unwrap() {
        let sub = sub.unwrap().path();
        for f in std::fs::read_dir(&sub).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "json") {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

fn b64(s: &str) -> Vec<u8> {
    STANDARD.decode(s).unwrap()
}

fn b64s(v: &Option<Vec<String>>) -> Vec<Vec<u8>> {
    v.iter().flatten().map(|s| b64(s)).collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Inclusion {
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Consistency {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

/// Runs every case under `kind`; `check` gives (wants an error, verification result, desc).
/// `None` when the vectors are absent (a notice is printed).
fn run<T: serde::de::DeserializeOwned>(
    kind: &str,
    check: impl Fn(&T) -> (bool, Result<(), edgefabric_ledger::ProofError>, String),
) -> Option<(usize, usize)> {
    let dir = vectors()?;
    let files = cases(&dir.join(kind));
    assert!(files.len() > 50, "found only {} {kind} cases", files.len());
    let (mut ok, mut bad) = (0, 0);
    for f in files {
        let case: T = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let (want_err, r, desc) = check(&case);
        assert_eq!(r.is_err(), want_err, "{} ({desc}): {r:?}", f.display());
        if want_err {
            bad += 1
        } else {
            ok += 1
        }
    }
    Some((ok, bad))
}

#[test]
fn inclusion_vectors() {
    let Some((ok, bad)) = run("inclusion", |c: &Inclusion| {
        let r = verify_inclusion(c.leaf_idx, c.tree_size, &b64(&c.leaf_hash), &b64s(&c.proof), &b64(&c.root));
        (c.want_err, r, c.desc.clone())
    }) else {
        return;
    };
    assert!(ok > 5 && bad > 40, "{ok} positive, {bad} negative");
}

#[test]
fn consistency_vectors() {
    let Some((ok, bad)) = run("consistency", |c: &Consistency| {
        let r = verify_consistency(c.size1, c.size2, &b64s(&c.proof), &b64(&c.root1), &b64(&c.root2));
        (c.want_err, r, c.desc.clone())
    }) else {
        return;
    };
    assert!(ok > 3 && bad > 40, "{ok} positive, {bad} negative");
}
