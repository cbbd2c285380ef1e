//! bincode decodes of bytes from the network or the disk (raft entries and RPCs, commands,
//! records, the cluster map): decoded or refused within the size limit, never a panic or an
//! allocation bomb; a decoded command is validated without panicking.
#![no_main]
use edgefabric_store::codec::decode;
use edgefabric_store::shard::ClusterMap;
use edgefabric_store::types::{validate_command, Command, Record, Response};
use edgefabric_store::{NodeId, TypeConfig};
use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = decode::<Command>(data) {
        let _ = validate_command(&cmd, 1 << 20);
    }
    let _ = decode::<Response>(data);
    let _ = decode::<Record>(data);
    let _ = decode::<ClusterMap>(data);
    let _ = decode::<AppendEntriesRequest<TypeConfig>>(data);
    let _ = decode::<VoteRequest<NodeId>>(data);
    let _ = decode::<InstallSnapshotRequest<TypeConfig>>(data);
    // Every internal RPC's request type, the crate-private ones included.
    edgefabric_store::fuzzing::decode_rpc_requests(data);
});
