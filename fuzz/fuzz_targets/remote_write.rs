//! Prometheus remote write bodies (`POST /api/v1/write`): snappy, then a protobuf
//! `WriteRequest`. Both the raw bytes (the snappy layer) and the bytes compressed (so the
//! protobuf decoder sees them) are fed; decoded or refused with a 400, within the size bound.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgefabric::ts::remote_write_points(data);
    if let Ok(compressed) = snap::raw::Encoder::new().compress_vec(data) {
        let _ = edgefabric::ts::remote_write_points(&compressed);
    }
});
