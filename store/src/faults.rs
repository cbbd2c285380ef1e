//! Network faults for the fault-injection suite (`tests/faults.rs`): this node's outgoing
//! internal RPCs to chosen peers are dropped (a partition) or delayed (a slow link).
//!
//! Why here and not network namespaces or iptables: every node-to-node message — raft, request
//! forwarding, reads, the ledger's cosigning, time-series fan-out — leaves through one function
//! (`network::call`), so one check there cuts exactly the links a test names, on loopback,
//! without root or kernel features CI may lack, and is switched per node through its admin API
//! while the processes run. A partition between A and B is set on both (A drops to B, B to A);
//! setting it on one side only is an asymmetric link. Clients (HTTP) are not affected: as in
//! Jepsen, they reach both sides of a partition.
//!
//! Off unless the node was started with `[test] faults = true` (the route does not exist
//! otherwise); never in a production config.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::raft_store::NodeId;

/// The faults in force on this node's outgoing links.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultState {
    /// Peers whose messages are dropped (the call fails as unreachable).
    #[serde(default)]
    pub drop_to: BTreeSet<NodeId>,
    /// Peers whose messages wait this long first (ms).
    #[serde(default)]
    pub delay_ms: BTreeMap<NodeId, u64>,
}

#[derive(Default)]
pub struct Faults(RwLock<FaultState>);

/// What a call to a peer meets.
pub enum Fault {
    None,
    Drop,
    Delay(Duration),
}

impl Faults {
    pub fn set(&self, s: FaultState) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub fn get(&self) -> FaultState {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn to(&self, peer: NodeId) -> Fault {
        let s = self.0.read().unwrap_or_else(|p| p.into_inner());
        if s.drop_to.contains(&peer) {
            Fault::Drop
        } else {
            match s.delay_ms.get(&peer) {
                Some(&ms) if ms > 0 => Fault::Delay(Duration::from_millis(ms)),
                _ => Fault::None,
            }
        }
    }
}
