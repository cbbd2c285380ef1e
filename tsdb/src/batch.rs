//! A write batch: samples for many series of one namespace, as ingest builds it and as it travels
//! through raft. Its encoding compresses each series' samples with the chunk codec, so a raft
//! entry of thousands of samples stays small.

use std::collections::BTreeMap;

use crate::bits::{get_uvarint, put_uvarint};
use crate::codec::{self, Sample};
use crate::line::Point;
use crate::Error;

/// Label pairs sorted by name, `__name__` included; no empty names or values, no duplicates.
pub type Labels = Vec<(String, String)>;

/// Bounds that keep one batch (a raft entry) and one series reasonable.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_BYTES: usize = 4096;
pub const MAX_NS_BYTES: usize = 255;

#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSamples {
    pub labels: Labels,
    /// Strictly increasing timestamps.
    pub samples: Vec<Sample>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WriteBatch {
    pub ns: String,
    pub series: Vec<SeriesSamples>,
}

impl WriteBatch {
    /// Groups points by series, sorts each series' samples and keeps the last value written for a
    /// timestamp (as a later write of the same sample replaces it). Labels with empty values are
    /// dropped (Prometheus: an empty label is an absent label). Checks every label set.
    pub fn from_points(ns: &str, points: Vec<Point>) -> Result<WriteBatch, Error> {
        check_ns(ns)?;
        // Group by the labels as given (a hash lookup per point), then normalize each distinct
        // label set once and merge groups that normalize alike (labels written in another order).
        let mut raw: std::collections::HashMap<Labels, usize, foldhash::fast::RandomState> =
            Default::default();
        let mut groups: Vec<(Labels, Vec<(usize, Sample)>)> = Vec::new();
        for (i, p) in points.into_iter().enumerate() {
            let g = match raw.get(&p.labels) {
                Some(&g) => g,
                None => {
                    raw.insert(p.labels.clone(), groups.len());
                    groups.push((p.labels, Vec::new()));
                    groups.len() - 1
                }
            };
            groups[g].1.push((i, (p.time_ms, p.value)));
        }
        let mut by: BTreeMap<Labels, Vec<(usize, Sample)>> = BTreeMap::new();
        for (labels, v) in groups {
            by.entry(normalize(labels)?).or_default().extend(v);
        }
        let series = by
            .into_iter()
            .map(|(labels, mut v)| {
                // Order by time, then by arrival so that the last write of a timestamp wins.
                v.sort_by_key(|&(i, (t, _))| (t, i));
                let mut samples: Vec<Sample> = Vec::with_capacity(v.len());
                for (_, s) in v {
                    match samples.last_mut() {
                        Some(last) if last.0 == s.0 => *last = s,
                        _ => samples.push(s),
                    }
                }
                SeriesSamples { labels, samples }
            })
            .collect();
        Ok(WriteBatch { ns: ns.to_string(), series })
    }

    pub fn samples(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.samples() * 2);
        put_str(&mut out, &self.ns);
        put_uvarint(&mut out, self.series.len() as u64);
        for s in &self.series {
            put_labels(&mut out, &s.labels);
            let chunk = codec::encode_fast(&s.samples);
            put_uvarint(&mut out, chunk.len() as u64);
            out.extend_from_slice(&chunk);
        }
        out
    }

    /// Decodes and checks a batch (it may come from another node: nothing is trusted).
    pub fn decode(buf: &[u8]) -> Result<WriteBatch, Error> {
        let mut pos = 0;
        let ns = get_str(buf, &mut pos)?;
        let n = get_uvarint(buf, &mut pos)?;
        let mut series = Vec::new();
        for _ in 0..n {
            let labels = get_labels(buf, &mut pos)?;
            let len = get_uvarint(buf, &mut pos)? as usize;
            let chunk = buf
                .get(pos..pos.saturating_add(len))
                .ok_or_else(|| Error::Corrupt("batch ends inside a series".into()))?;
            pos += len;
            let samples = codec::decode(chunk)?;
            if samples.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(Error::Corrupt("batch series samples out of order".into()));
            }
            series.push(SeriesSamples { labels, samples });
        }
        if pos != buf.len() {
            return Err(Error::Corrupt("trailing bytes after a batch".into()));
        }
        check_ns(&ns).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(WriteBatch { ns, series })
    }
}

/// One series' samples of a batch in a confidential namespace, sealed by the node that accepted
/// them. Its labels and time bounds are in clear (they route, index and expire it, as a KV
/// key is in clear); its samples are ciphertext that no replica reads.
#[derive(Clone, Debug, PartialEq)]
pub struct SealedSeries {
    pub labels: Labels,
    pub min_t: i64,
    pub max_t: i64,
    /// Samples inside.
    pub count: u32,
    /// The version of the namespace's data key that sealed it.
    pub key_version: u32,
    pub sealed: Vec<u8>,
}

impl SealedSeries {
    /// What the seal authenticates besides the samples: everything in clear, so a replica
    /// cannot move a block to another series, time or namespace unnoticed.
    pub fn aad(&self, ns: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"edgefabric-ts-v1\0");
        put_str(&mut out, ns);
        self.put_clear(&mut out);
        out
    }

    /// The fields in clear, as both the batch encoding and the AAD write them.
    fn put_clear(&self, out: &mut Vec<u8>) {
        put_labels(out, &self.labels);
        crate::bits::put_varint(out, self.min_t);
        crate::bits::put_varint(out, self.max_t);
        put_uvarint(out, u64::from(self.count));
        put_uvarint(out, u64::from(self.key_version));
    }
}

/// A batch of sealed series (a confidential namespace's `WriteBatch`).
#[derive(Clone, Debug, PartialEq)]
pub struct SealedBatch {
    pub ns: String,
    pub series: Vec<SealedSeries>,
}

/// The largest sealed block one series may carry in a batch.
pub const MAX_SEALED_BYTES: usize = 8 << 20;

impl SealedBatch {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.series.iter().map(|s| s.sealed.len() + 64).sum::<usize>());
        put_str(&mut out, &self.ns);
        put_uvarint(&mut out, self.series.len() as u64);
        for s in &self.series {
            s.put(&mut out);
        }
        out
    }

    /// Decodes and checks a sealed batch (from another node: nothing is trusted).
    pub fn decode(buf: &[u8]) -> Result<SealedBatch, Error> {
        let mut pos = 0;
        let ns = get_str(buf, &mut pos)?;
        let n = get_uvarint(buf, &mut pos)?;
        let mut series: Vec<SealedSeries> = Vec::new();
        for _ in 0..n {
            let s = SealedSeries::get(buf, &mut pos)?;
            if series.iter().any(|x| x.labels == s.labels) {
                return Err(Error::Corrupt("a series twice in one sealed batch".into()));
            }
            series.push(s);
        }
        if pos != buf.len() {
            return Err(Error::Corrupt("trailing bytes after a sealed batch".into()));
        }
        check_ns(&ns).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(SealedBatch { ns, series })
    }
}

impl SealedSeries {
    fn put(&self, out: &mut Vec<u8>) {
        self.put_clear(out);
        put_uvarint(out, self.sealed.len() as u64);
        out.extend_from_slice(&self.sealed);
    }

    fn get(buf: &[u8], pos: &mut usize) -> Result<SealedSeries, Error> {
        let labels = get_labels(buf, pos)?;
        let min_t = crate::bits::get_varint(buf, pos)?;
        let max_t = crate::bits::get_varint(buf, pos)?;
        let count = u32::try_from(get_uvarint(buf, pos)?)
            .map_err(|_| Error::Corrupt("sealed series count".into()))?;
        let key_version = u32::try_from(get_uvarint(buf, pos)?)
            .map_err(|_| Error::Corrupt("sealed series key version".into()))?;
        let len = get_uvarint(buf, pos)? as usize;
        if len > MAX_SEALED_BYTES || min_t > max_t || count == 0 {
            return Err(Error::Corrupt(format!(
                "sealed series of {len} bytes, {count} samples in [{min_t}, {max_t}]"
            )));
        }
        let sealed = buf
            .get(*pos..pos.saturating_add(len))
            .ok_or_else(|| Error::Corrupt("sealed batch ends inside a series".into()))?
            .to_vec();
        *pos += len;
        Ok(SealedSeries { labels, min_t, max_t, count, key_version, sealed })
    }
}

/// The most blocks one compaction replaces.
pub const MAX_COMPACTED_BLOCKS: usize = 100_000;

/// A key site's merge of some of a sealed series' blocks into one block: the replicas, which
/// cannot read them, swap the blocks for the merge (`Engine::apply_compaction`).
#[derive(Clone, Debug, PartialEq)]
pub struct SealedCompaction {
    pub ns: String,
    /// The blocks replaced, as their keys locate them.
    pub replaces: Vec<crate::engine::BlockId>,
    /// Their samples merged (of one timestamp the later batch's), sealed as a batch's are.
    pub merged: SealedSeries,
}

impl SealedCompaction {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.merged.sealed.len() + 24 * self.replaces.len());
        put_str(&mut out, &self.ns);
        self.merged.put(&mut out);
        put_uvarint(&mut out, self.replaces.len() as u64);
        for b in &self.replaces {
            crate::bits::put_varint(&mut out, b.max_t);
            put_uvarint(&mut out, b.index);
            put_uvarint(&mut out, u64::from(b.position));
            crate::bits::put_varint(&mut out, b.min_t);
        }
        out
    }

    /// Decodes and checks a compaction (from another node: nothing is trusted).
    pub fn decode(buf: &[u8]) -> Result<SealedCompaction, Error> {
        let mut pos = 0;
        let ns = get_str(buf, &mut pos)?;
        let merged = SealedSeries::get(buf, &mut pos)?;
        let n = get_uvarint(buf, &mut pos)? as usize;
        if !(1..=MAX_COMPACTED_BLOCKS).contains(&n) {
            return Err(Error::Corrupt(format!("a compaction of {n} blocks")));
        }
        let mut replaces = Vec::with_capacity(n);
        for _ in 0..n {
            let max_t = crate::bits::get_varint(buf, &mut pos)?;
            let index = get_uvarint(buf, &mut pos)?;
            let position = u32::try_from(get_uvarint(buf, &mut pos)?)
                .map_err(|_| Error::Corrupt("compacted block position".into()))?;
            let min_t = crate::bits::get_varint(buf, &mut pos)?;
            if min_t > max_t {
                return Err(Error::Corrupt(format!("a compacted block of [{min_t}, {max_t}]")));
            }
            replaces.push(crate::engine::BlockId { max_t, index, position, min_t });
        }
        if pos != buf.len() {
            return Err(Error::Corrupt("trailing bytes after a compaction".into()));
        }
        check_ns(&ns).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(SealedCompaction { ns, replaces, merged })
    }
}

/// A series' labels as batches encode them: a count, then name and value of each.
fn put_labels(out: &mut Vec<u8>, labels: &Labels) {
    put_uvarint(out, labels.len() as u64);
    for (k, v) in labels {
        put_str(out, k);
        put_str(out, v);
    }
}

/// Labels written by `put_labels`, checked as `normalize` checks a client's (they come from
/// another node or the disk: a bad set is corruption).
fn get_labels(buf: &[u8], pos: &mut usize) -> Result<Labels, Error> {
    let n = get_uvarint(buf, pos)?;
    if n as usize > MAX_LABELS + 1 {
        return Err(Error::Corrupt(format!("a batch series with {n} labels")));
    }
    let mut labels = Vec::with_capacity(n as usize);
    for _ in 0..n {
        labels.push((get_str(buf, pos)?, get_str(buf, pos)?));
    }
    normalize(labels).map_err(|e| Error::Corrupt(e.to_string()))
}

fn check_ns(ns: &str) -> Result<(), Error> {
    if ns.is_empty() || ns.len() > MAX_NS_BYTES {
        return Err(Error::Invalid(format!("ns: must be 1 to {MAX_NS_BYTES} bytes")));
    }
    Ok(())
}

/// Sorts labels, drops empty values, and checks names, sizes and duplicates.
pub fn normalize(mut labels: Labels) -> Result<Labels, Error> {
    labels.retain(|(_, v)| !v.is_empty());
    labels.sort();
    if labels.len() > MAX_LABELS {
        return Err(Error::Invalid(format!("a series has {} labels; at most {MAX_LABELS}", labels.len())));
    }
    for w in labels.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(Error::Invalid(format!("label `{}` appears twice", w[0].0)));
        }
    }
    let mut named = false;
    for (k, v) in &labels {
        if k.is_empty() {
            return Err(Error::Invalid("a label name is empty".into()));
        }
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(Error::Invalid(format!("label `{k}`: longer than {MAX_LABEL_BYTES} bytes")));
        }
        named |= k == "__name__";
    }
    if !named {
        return Err(Error::Invalid("a series has no name (`__name__`)".into()));
    }
    Ok(labels)
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn get_str(buf: &[u8], pos: &mut usize) -> Result<String, Error> {
    let len = get_uvarint(buf, pos)? as usize;
    let b =
        buf.get(*pos..pos.saturating_add(len)).ok_or_else(|| Error::Corrupt("string ends early".into()))?;
    *pos += len;
    String::from_utf8(b.to_vec()).map_err(|_| Error::Corrupt("string is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, extra: &[(&str, &str)], t: i64, v: f64) -> Point {
        let mut labels = vec![("__name__".to_string(), name.to_string())];
        labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Point { labels, time_ms: t, value: v }
    }

    #[test]
    fn groups_sorts_and_keeps_the_last_write() {
        let b = WriteBatch::from_points(
            "ns",
            vec![
                p("a", &[("z", "1"), ("b", "2")], 20, 1.0),
                p("a", &[("b", "2"), ("z", "1")], 10, 2.0),
                p("a", &[("b", "2"), ("z", "1")], 20, 3.0),
                p("c", &[("e", "")], 5, 4.0),
            ],
        )
        .unwrap();
        assert_eq!(b.series.len(), 2);
        assert_eq!(b.series[0].samples, vec![(10, 2.0), (20, 3.0)]);
        assert_eq!(b.series[1].labels, vec![("__name__".to_string(), "c".to_string())]);
        let d = WriteBatch::decode(&b.encode()).unwrap();
        assert_eq!(d, b);
    }

    #[test]
    fn bad_label_sets_are_refused() {
        let dup = Point {
            labels: vec![("__name__".into(), "a".into()), ("x".into(), "1".into()), ("x".into(), "2".into())],
            time_ms: 0,
            value: 0.0,
        };
        assert!(WriteBatch::from_points("ns", vec![dup])
            .unwrap_err()
            .to_string()
            .contains("`x` appears twice"));
        let unnamed = Point { labels: vec![("x".into(), "1".into())], time_ms: 0, value: 0.0 };
        assert!(WriteBatch::from_points("ns", vec![unnamed]).unwrap_err().to_string().contains("no name"));
        assert!(WriteBatch::from_points("", vec![]).is_err());
    }

    #[test]
    fn corrupt_batches_are_errors() {
        let b = WriteBatch::from_points("ns", vec![p("a", &[], 1, 1.0), p("a", &[], 2, 2.0)]).unwrap();
        let e = b.encode();
        for cut in 1..e.len() {
            assert!(WriteBatch::decode(&e[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = e.clone();
        longer.push(0);
        assert!(WriteBatch::decode(&longer).is_err());
    }
}
