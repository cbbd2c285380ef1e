//! Sharding, as plain functions: which shard owns a key, and where a shard's replicas go.
//!
//! The keyspace is the 64-bit hash of (namespace, key) (FNV-1a, fixed forever: it decides
//! where data lives). Shards own contiguous hash ranges, so a split halves a range and a lookup
//! is a binary search. Hashing spreads hot prefixes over shards; the price is that a prefix scan
//! asks every shard (the node merges the answers in key order).
//!
//! Placement puts each shard's replicas on distinct sites when the cluster has enough sites,
//! then on the nodes holding the fewest replicas, so replicas and (via the first replica, the
//! preferred leader) leadership spread evenly.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::log::GroupId;
use crate::raft_store::NodeId;

/// The metadata group: nodes, sites, shards and namespaces.
pub const META_GROUP: GroupId = 0;

/// The ledger group: replicated by every node, like the metadata group (voters up to 5, the
/// rest learners). Far from the shard ids, which count up from 1.
pub const LEDGER_GROUP: GroupId = u64::MAX - 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub site: String,
    /// Internal gRPC address.
    pub addr: String,
    /// REST address, for clients and tools.
    #[serde(default)]
    pub http: String,
    /// The node's ed25519 public key (base64), which signs its ledger entries and checkpoints;
    /// empty if unknown.
    #[serde(default)]
    pub public_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub id: GroupId,
    /// First hash owned (inclusive).
    pub start: u64,
    /// Last hash owned (inclusive), so the top range can own `u64::MAX`.
    pub end: u64,
    /// Replicas; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// Set for a shard born from a split: it starts from the snapshot its parent's replicas
    /// wrote when they applied the split, and is never initialized empty.
    #[serde(default)]
    pub parent: Option<GroupId>,
}

/// Everything a node needs to route: kept in the metadata group, changed only through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterMap {
    /// Bumped by every change.
    pub epoch: u64,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Sorted by `start`, covering the whole hash space without gaps or overlap.
    pub shards: Vec<ShardInfo>,
    /// Nodes being drained: their replicas move away, then they are removed.
    #[serde(default)]
    pub leaving: BTreeSet<NodeId>,
    /// The replica move under way, if any (at most one at a time). Recorded so that a new
    /// metadata leader finishes a move its predecessor started.
    #[serde(default)]
    pub moving: Option<Move>,
    /// The split under way, if any; recorded for the same reason.
    #[serde(default)]
    pub splitting: Option<Split>,
    /// Site-local namespaces' own shards, by namespace: each covers the namespace's whole hash
    /// range and has every replica at the namespace's home site (so its raft traffic, logs and
    /// snapshots never leave the site). Never split; moved only within the site.
    #[serde(default)]
    pub pinned: BTreeMap<String, PinnedShard>,
}

/// A shard pinned to one site (a site-local namespace's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedShard {
    pub site: String,
    pub shard: ShardInfo,
}

/// A split of `shard` at hash `at`: `child` takes `[at, shard.end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub shard: GroupId,
    pub at: u64,
    pub child: GroupId,
}

/// FNV-1a over `len(ns) ‖ ns ‖ key` (the length keeps ("ab","c") apart from ("a","bc")).
pub fn key_hash(ns: &str, key: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in [ns.len() as u8].iter().chain(ns.as_bytes()).chain(key.as_bytes()) {
        h ^= *b as u64;
        h = h.wrapping_mul(PRIME);
    }
    // FNV's low bits mix well, its high bits less so for short keys; fold them so that range
    // sharding on the high bits spreads sequential keys.
    h ^ (h >> 29).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

impl ClusterMap {
    /// The shard owning `hash`. The map always covers the whole space (checked by `validate`).
    pub fn shard_for_hash(&self, hash: u64) -> Option<&ShardInfo> {
        let i = self.shards.partition_point(|s| s.end < hash);
        self.shards.get(i).filter(|s| s.start <= hash)
    }

    /// The shard holding `key` of `ns`: the namespace's pinned shard if it has one, else the
    /// shared shard owning the key's hash.
    pub fn shard_for(&self, ns: &str, key: &str) -> Option<&ShardInfo> {
        match self.pinned.get(ns) {
            Some(p) => Some(&p.shard),
            None => self.shard_for_hash(key_hash(ns, key)),
        }
    }

    /// The shards a scan of `ns` must ask.
    pub fn shards_for_ns(&self, ns: &str) -> Vec<&ShardInfo> {
        match self.pinned.get(ns) {
            Some(p) => vec![&p.shard],
            None => self.shards.iter().collect(),
        }
    }

    /// Every shard: the shared ones, then the pinned ones.
    pub fn all_shards(&self) -> impl Iterator<Item = &ShardInfo> {
        self.shards.iter().chain(self.pinned.values().map(|p| &p.shard))
    }

    /// The site a shard is pinned to, if it is a pinned shard.
    pub fn pinned_site(&self, id: GroupId) -> Option<&str> {
        self.pinned.values().find(|p| p.shard.id == id).map(|p| p.site.as_str())
    }

    pub fn shard(&self, id: GroupId) -> Option<&ShardInfo> {
        self.all_shards().find(|s| s.id == id)
    }

    pub fn shard_mut(&mut self, id: GroupId) -> Option<&mut ShardInfo> {
        self.shards.iter_mut().chain(self.pinned.values_mut().map(|p| &mut p.shard)).find(|s| s.id == id)
    }

    /// The next free shard id.
    pub fn next_shard_id(&self) -> GroupId {
        self.all_shards().map(|s| s.id).max().unwrap_or(0) + 1
    }

    /// Pins a new shard for site-local namespace `ns` at `site`: up to `replicas` of the site's
    /// active nodes, least loaded first. Deterministic (every replica of the metadata group
    /// computes the same). An error if the site has no active node.
    pub fn pin_namespace(&mut self, ns: &str, site: &str, replicas: usize) -> Result<(), String> {
        if self.pinned.contains_key(ns) {
            return Ok(());
        }
        let at_site: BTreeMap<NodeId, NodeInfo> = self
            .nodes
            .values()
            .filter(|n| n.site == site && !self.leaving.contains(&n.id))
            .map(|n| (n.id, n.clone()))
            .collect();
        if at_site.is_empty() {
            return Err(format!("no active node at site {site:?} to hold namespace {ns:?}"));
        }
        let id = self.next_shard_id();
        let chosen = place(&at_site, &self.load(), replicas.min(at_site.len()), id);
        let shard = ShardInfo { id, start: 0, end: u64::MAX, replicas: chosen, parent: None };
        self.pinned.insert(ns.to_string(), PinnedShard { site: site.to_string(), shard });
        self.epoch += 1;
        Ok(())
    }

    /// Shards this node replicates.
    pub fn shards_of(&self, node: NodeId) -> impl Iterator<Item = &ShardInfo> {
        self.all_shards().filter(move |s| s.replicas.contains(&node))
    }

    /// Checks the invariants every node relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.shards.is_empty() {
            return Err("no shards".into());
        }
        if self.shards[0].start != 0 || self.shards.last().map(|s| s.end) != Some(u64::MAX) {
            return Err("shards must cover the whole hash space".into());
        }
        for w in self.shards.windows(2) {
            if w[0].end.checked_add(1) != Some(w[1].start) {
                return Err(format!("shards {} and {} leave a gap or overlap", w[0].id, w[1].id));
            }
        }
        for (ns, p) in &self.pinned {
            if p.shard.start != 0 || p.shard.end != u64::MAX {
                return Err(format!("namespace {ns:?}'s pinned shard must cover its whole hash space"));
            }
            if p.shard.replicas.iter().any(|r| self.nodes.get(r).is_some_and(|n| n.site != p.site)) {
                return Err(format!("namespace {ns:?}'s shard has a replica outside site {:?}", p.site));
            }
        }
        let mut ids = BTreeSet::new();
        for s in self.all_shards() {
            if s.id == META_GROUP || !ids.insert(s.id) {
                return Err(format!("shard id {} is reserved or repeated", s.id));
            }
            if s.start > s.end {
                return Err(format!("shard {} has an empty range", s.id));
            }
            if s.replicas.is_empty() || s.replicas.iter().any(|r| !self.nodes.contains_key(r)) {
                return Err(format!("shard {} has no replicas or an unknown one", s.id));
            }
            let distinct: BTreeSet<_> = s.replicas.iter().collect();
            if distinct.len() != s.replicas.len() {
                return Err(format!("shard {} repeats a replica", s.id));
            }
        }
        Ok(())
    }
}

/// Chooses `replicas` nodes for one shard: distinct sites first, then the least-loaded nodes
/// (`load`: replicas already placed per node), ties broken by `salt` so equal shards rotate.
pub fn place(
    nodes: &BTreeMap<NodeId, NodeInfo>,
    load: &BTreeMap<NodeId, usize>,
    replicas: usize,
    salt: u64,
) -> Vec<NodeId> {
    let mut chosen: Vec<NodeId> = vec![];
    let mut sites: BTreeSet<&str> = BTreeSet::new();
    let n = nodes.len() as u64;
    while chosen.len() < replicas.min(nodes.len()) {
        let best = nodes
            .values()
            .filter(|c| !chosen.contains(&c.id))
            .min_by_key(|c| {
                let new_site = !sites.contains(c.site.as_str());
                let l = load.get(&c.id).copied().unwrap_or(0);
                let rotation = (c.id.wrapping_add(n - salt % n.max(1))) % n.max(1);
                (!new_site, l, rotation)
            })
            .expect("a candidate remains while chosen < nodes");
        sites.insert(best.site.as_str());
        chosen.push(best.id);
    }
    chosen
}

/// The initial map: `count` shards of equal hash ranges, each placed by [`place`], with the
/// preferred leaders (first replicas) spread evenly.
pub fn initial_map(nodes: &[NodeInfo], count: u64, replicas: usize) -> ClusterMap {
    let nodes: BTreeMap<NodeId, NodeInfo> = nodes.iter().map(|n| (n.id, n.clone())).collect();
    let count = count.max(1);
    let width = u64::MAX / count;
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut shards = vec![];
    for i in 0..count {
        let start = i * width;
        let end = if i + 1 == count { u64::MAX } else { (i + 1) * width - 1 };
        let mut replicas = place(&nodes, &load, replicas, i);
        for r in &replicas {
            *load.entry(*r).or_default() += 1;
        }
        // Preferred leader: the replica leading the fewest shards so far.
        if let Some(pos) =
            (0..replicas.len()).min_by_key(|&p| (leaders.get(&replicas[p]).copied().unwrap_or(0), p))
        {
            replicas.swap(0, pos);
        }
        *leaders.entry(replicas[0]).or_default() += 1;
        shards.push(ShardInfo { id: i + 1, start, end, replicas, parent: None });
    }
    ClusterMap {
        epoch: 1,
        nodes,
        shards,
        leaving: BTreeSet::new(),
        moving: None,
        splitting: None,
        pinned: BTreeMap::new(),
    }
}

/// One replica move: `shard`'s replica on `from` goes to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub shard: GroupId,
    pub from: NodeId,
    pub to: NodeId,
}

impl ClusterMap {
    /// Plans splitting `shard` in the middle of its hash range; `None` if it is one hash wide.
    pub fn plan_split(&self, shard: GroupId) -> Option<Split> {
        // Pinned shards are not split (one per site-local namespace).
        let s = self.shards.iter().find(|s| s.id == shard)?;
        if s.start == s.end {
            return None;
        }
        let at = s.start + (s.end - s.start) / 2 + 1;
        let child = self.next_shard_id();
        Some(Split { shard, at, child })
    }

    /// The map after `split`: the parent keeps `[start, at - 1]`, the child (same replicas)
    /// takes `[at, end]`. Idempotent: a map that already has the child is returned unchanged.
    pub fn apply_split(&mut self, split: &Split) -> Result<(), String> {
        if self.shard(split.child).is_some() {
            return Ok(());
        }
        let i = self
            .shards
            .iter()
            .position(|s| s.id == split.shard)
            .ok_or(format!("no shard {}", split.shard))?;
        let parent = self.shards[i].clone();
        if split.at <= parent.start || split.at > parent.end {
            return Err(format!("split point {:x} is outside shard {}", split.at, parent.id));
        }
        self.shards[i].end = split.at - 1;
        let child = ShardInfo {
            id: split.child,
            start: split.at,
            end: parent.end,
            replicas: parent.replicas.clone(),
            parent: Some(parent.id),
        };
        self.shards.insert(i + 1, child);
        Ok(())
    }

    /// Replicas per node (every node listed, zero included).
    pub fn load(&self) -> BTreeMap<NodeId, usize> {
        let mut load: BTreeMap<NodeId, usize> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for s in self.all_shards() {
            for r in &s.replicas {
                *load.entry(*r).or_default() += 1;
            }
        }
        load
    }

    fn distinct_sites(&self, replicas: impl Iterator<Item = NodeId>) -> usize {
        replicas.filter_map(|r| self.nodes.get(&r).map(|n| n.site.as_str())).collect::<BTreeSet<_>>().len()
    }

    /// The next replica move, if any, in priority order: drain leaving nodes; then even out
    /// replica counts (difference of 2 or more) without losing site diversity. Deterministic,
    /// so every planner computes the same move.
    pub fn plan_move(&self) -> Option<Move> {
        let load = self.load();
        let active: Vec<&NodeInfo> = self.nodes.values().filter(|n| !self.leaving.contains(&n.id)).collect();
        // A target for `shard` replacing `from`: most new site diversity, then least loaded.
        let best_target = |shard: &ShardInfo, from: NodeId| -> Option<NodeId> {
            let others = || shard.replicas.iter().copied().filter(move |r| *r != from);
            active
                .iter()
                .filter(|n| !shard.replicas.contains(&n.id))
                .min_by_key(|n| {
                    let sites = self.distinct_sites(others().chain([n.id]));
                    (std::cmp::Reverse(sites), load.get(&n.id).copied().unwrap_or(0), n.id)
                })
                .map(|n| n.id)
        };
        for shard in &self.shards {
            for from in shard.replicas.iter().filter(|r| self.leaving.contains(r)) {
                if let Some(to) = best_target(shard, *from) {
                    return Some(Move { shard: shard.id, from: *from, to });
                }
            }
        }
        // A pinned shard's replica on a leaving node moves to another node of the same site
        // (never elsewhere: the namespace's bytes stay at its site).
        for p in self.pinned.values() {
            for from in p.shard.replicas.iter().filter(|r| self.leaving.contains(r)) {
                let to = active
                    .iter()
                    .filter(|n| n.site == p.site && !p.shard.replicas.contains(&n.id))
                    .min_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id));
                if let Some(to) = to {
                    return Some(Move { shard: p.shard.id, from: *from, to: to.id });
                }
            }
        }
        // Balance: from the most to the least loaded active node, keeping site diversity.
        let mut by_load: Vec<&NodeInfo> = active.clone();
        by_load.sort_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id));
        for to in &by_load {
            for from in by_load.iter().rev() {
                let (lt, lf) = (load[&to.id], load[&from.id]);
                if lf < lt + 2 {
                    continue;
                }
                for shard in self.shards.iter().filter(|s| s.replicas.contains(&from.id)) {
                    if shard.replicas.contains(&to.id) {
                        continue;
                    }
                    let before = self.distinct_sites(shard.replicas.iter().copied());
                    let after = self.distinct_sites(
                        shard.replicas.iter().copied().filter(|r| *r != from.id).chain([to.id]),
                    );
                    if after >= before {
                        return Some(Move { shard: shard.id, from: from.id, to: to.id });
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(sites: &[&str]) -> Vec<NodeInfo> {
        sites
            .iter()
            .enumerate()
            .map(|(i, s)| NodeInfo {
                id: i as u64 + 1,
                site: s.to_string(),
                addr: format!("127.0.0.1:{}", 9000 + i),
                http: String::new(),
                public_key: String::new(),
            })
            .collect()
    }

    #[test]
    fn initial_map_covers_the_space_and_spreads_over_sites() {
        // 5 nodes over 3 sites, as the acceptance cluster.
        let ns = nodes(&["a", "b", "c", "a", "b"]);
        let map = initial_map(&ns, 16, 3);
        map.validate().unwrap();
        assert_eq!(map.shards.len(), 16);
        for s in &map.shards {
            let sites: BTreeSet<&str> = s.replicas.iter().map(|r| map.nodes[r].site.as_str()).collect();
            assert_eq!(sites.len(), 3, "shard {} replicas {:?} must span 3 sites", s.id, s.replicas);
        }
        let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
        for s in &map.shards {
            for r in &s.replicas {
                *load.entry(*r).or_default() += 1;
            }
            *leaders.entry(s.replicas[0]).or_default() += 1;
        }
        // 48 replicas over 5 nodes, but site c has one node and must hold a replica of every
        // shard: 16 there, 32 over the other four (8 each).
        assert_eq!(load[&3], 16);
        for id in [1, 2, 4, 5] {
            assert_eq!(load[&id], 8, "load {load:?}");
        }
        let (min, max) = (leaders.values().min().unwrap(), leaders.values().max().unwrap());
        assert!(max - min <= 1 && leaders.len() == 5, "preferred leaders {leaders:?}");
    }

    #[test]
    fn fewer_sites_than_replicas_still_places() {
        let ns = nodes(&["a", "a", "b"]);
        let map = initial_map(&ns, 4, 3);
        map.validate().unwrap();
        assert!(map.shards.iter().all(|s| s.replicas.len() == 3));
        let one = initial_map(&nodes(&["dev"]), 16, 3);
        one.validate().unwrap();
        assert!(one.shards.iter().all(|s| s.replicas == vec![1]));
    }

    #[test]
    fn lookup_finds_the_owning_shard() {
        let map = initial_map(&nodes(&["a", "b", "c"]), 16, 3);
        assert_eq!(map.shard_for_hash(0).unwrap().id, 1);
        assert_eq!(map.shard_for_hash(u64::MAX).unwrap().id, 16);
        for s in &map.shards {
            assert_eq!(map.shard_for_hash(s.start).unwrap().id, s.id);
            assert_eq!(map.shard_for_hash(s.end).unwrap().id, s.id);
        }
    }

    #[test]
    fn keys_spread_evenly_over_shards() {
        let map = initial_map(&nodes(&["a", "b", "c"]), 16, 3);
        let mut per: BTreeMap<GroupId, usize> = BTreeMap::new();
        for i in 0..16_000 {
            *per.entry(map.shard_for("default", &format!("k{i}")).unwrap().id).or_default() += 1;
        }
        assert_eq!(per.len(), 16);
        for (id, n) in per {
            assert!((700..1300).contains(&n), "shard {id} got {n} of 16000 sequential keys");
        }
    }

    /// Computed independently (Python) from the definition in the doc comment.
    const GOLDEN_HELLO: u64 = 0x7689_9fa0_7c1d_e8a2;

    #[test]
    fn hash_is_stable_and_separates_namespaces() {
        // Fixed forever: data placement depends on it.
        assert_eq!(key_hash("default", "k"), key_hash("default", "k"));
        assert_ne!(key_hash("ab", "c"), key_hash("a", "bc"));
        assert_eq!(key_hash("default", "hello"), GOLDEN_HELLO, "key_hash changed: data would move");
    }

    /// Applies moves until none is planned; returns how many were made.
    fn settle(map: &mut ClusterMap) -> usize {
        let mut n = 0;
        while let Some(m) = map.plan_move() {
            let s = map.shard_mut(m.shard).unwrap();
            let pos = s.replicas.iter().position(|r| *r == m.from).unwrap();
            s.replicas[pos] = m.to;
            n += 1;
            assert!(n < 1000, "moves do not converge");
        }
        map.validate().unwrap();
        n
    }

    #[test]
    fn a_joined_node_gets_its_share_without_losing_sites() {
        let mut map = initial_map(&nodes(&["a", "b", "c"]), 8, 3);
        let mut joined = nodes(&["a", "b", "c", "a"]);
        let new = joined.pop().unwrap();
        map.nodes.insert(new.id, new);
        let moved = settle(&mut map);
        let load = map.load();
        // Site a now has two nodes sharing its 8 replicas.
        assert_eq!((load[&1], load[&4]), (4, 4), "{load:?}");
        assert_eq!(moved, 4);
        for s in &map.shards {
            assert_eq!(map.distinct_sites(s.replicas.iter().copied()), 3);
        }
        assert_eq!(map.plan_move(), None, "settled maps stay put");
    }

    #[test]
    fn a_leaving_node_is_drained_onto_the_right_sites() {
        let mut map = initial_map(&nodes(&["a", "b", "c", "a", "b"]), 16, 3);
        map.leaving.insert(4);
        settle(&mut map);
        let load = map.load();
        assert_eq!(load[&4], 0, "drained: {load:?}");
        for s in &map.shards {
            assert_eq!(map.distinct_sites(s.replicas.iter().copied()), 3, "shard {} {:?}", s.id, s.replicas);
        }
        // Node 1 is site a's only remaining node: it holds a replica of every shard.
        assert_eq!(load[&1], 16);
    }

    #[test]
    fn pinned_shards_stay_at_their_site() {
        let mut map = initial_map(&nodes(&["a", "b", "c", "a", "b", "b"]), 4, 3);
        map.pin_namespace("cams", "b", 2).unwrap();
        let p = map.pinned["cams"].shard.clone();
        assert_eq!(p.replicas.len(), 2);
        assert!(p.replicas.iter().all(|r| map.nodes[r].site == "b"), "{p:?}");
        assert_eq!(map.shard_for("cams", "anything").map(|s| s.id), Some(p.id));
        assert_ne!(map.shard_for("default", "anything").map(|s| s.id), Some(p.id));
        assert_eq!(map.shards_for_ns("cams").len(), 1);
        assert_eq!(map.shards_for_ns("default").len(), 4);
        assert!(map.plan_split(p.id).is_none(), "pinned shards are not split");
        assert!(map.pin_namespace("x", "z", 3).is_err(), "no node at site z");
        map.validate().unwrap();
        // Draining a replica moves it to the site's third node, never to another site.
        let leaving = p.replicas[0];
        map.leaving.insert(leaving);
        settle(&mut map);
        let after = &map.pinned["cams"].shard;
        assert!(!after.replicas.contains(&leaving));
        assert!(after.replicas.iter().all(|r| map.nodes[r].site == "b"), "{after:?}");
        // With no other node at the site, the replica stays (the node cannot finish leaving).
        let mut map = initial_map(&nodes(&["a", "b", "c"]), 2, 3);
        map.pin_namespace("cams", "b", 3).unwrap();
        map.leaving.insert(2);
        settle(&mut map);
        assert_eq!(map.pinned["cams"].shard.replicas, vec![2]);
        // A map with a pinned replica off its site is invalid.
        map.pinned.get_mut("cams").unwrap().shard.replicas = vec![1];
        assert!(map.validate().is_err());
    }

    #[test]
    fn draining_the_last_node_of_a_site_keeps_three_replicas() {
        let mut map = initial_map(&nodes(&["a", "b", "c", "a"]), 4, 3);
        map.leaving.insert(3); // site c's only node
        settle(&mut map);
        assert!(map.shards.iter().all(|s| s.replicas.len() == 3 && !s.replicas.contains(&3)));
    }

    #[test]
    fn a_split_halves_the_range_and_keeps_replicas() {
        let mut map = initial_map(&nodes(&["a", "b", "c"]), 2, 3);
        let split = map.plan_split(1).unwrap();
        assert_eq!(split.child, 3);
        let parent = map.shard(1).unwrap().clone();
        map.apply_split(&split).unwrap();
        map.validate().unwrap();
        let (p, c) = (map.shard(1).unwrap(), map.shard(3).unwrap());
        assert_eq!((p.start, p.end + 1, c.start, c.end), (parent.start, split.at, split.at, parent.end));
        assert_eq!((c.replicas.clone(), c.parent), (parent.replicas.clone(), Some(1)));
        // Keys route to one side or the other, never lost.
        for i in 0..2000 {
            let s = map.shard_for("default", &format!("k{i}")).unwrap().id;
            assert!([1, 2, 3].contains(&s));
        }
        let again = map.clone();
        map.apply_split(&split).unwrap();
        assert_eq!(map, again, "idempotent");
        let bad = Split { shard: 2, at: 0, child: 9 };
        assert!(map.apply_split(&bad).is_err());
    }

    #[test]
    fn validate_catches_broken_maps() {
        let mut map = initial_map(&nodes(&["a", "b", "c"]), 4, 3);
        map.shards[1].start += 1;
        assert!(map.validate().unwrap_err().contains("gap"));
        let mut map = initial_map(&nodes(&["a", "b", "c"]), 4, 3);
        map.shards[2].replicas.push(99);
        assert!(map.validate().is_err());
        let mut map = initial_map(&nodes(&["a", "b", "c"]), 4, 3);
        map.shards[3].id = 1;
        assert!(map.validate().is_err());
    }
}
