//! For the fuzz targets (`fuzz/`) only, not an API: the decoders of every internal RPC's
//! request, some of whose types are private to this crate. Each is a bincode decode of bytes
//! from a peer, bounded by `codec::MAX_DECODE_BYTES`.

use crate::codec::decode;
use crate::raft_store::{NodeId, TypeConfig};

/// Decodes `data` as each internal request type; the results are dropped.
#[doc(hidden)]
pub fn decode_rpc_requests(data: &[u8]) {
    let _ = decode::<crate::node::ReadRequest>(data);
    let _ = decode::<crate::node::ScanRequest>(data);
    let _ = decode::<crate::ts::TsSelectRequest>(data);
    let _ = decode::<crate::ts::TsSeriesRequest>(data);
    let _ = decode::<crate::types::Command>(data);
    let _ = decode::<(NodeId, String, NodeId)>(data);
    let _ = decode::<(NodeId, u64)>(data);
    let _ = decode::<(u64, edgefabric_ledger::Hash)>(data);
    let _ = decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(data);
    let _ = decode::<openraft::raft::VoteRequest<NodeId>>(data);
    let _ = decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(data);
    let _ = decode::<crate::ts_queue::TsQueueStatus>(data);
}
