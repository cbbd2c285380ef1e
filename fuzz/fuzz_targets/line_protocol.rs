//! InfluxDB line protocol (`POST /v1/ts/write`, `/write`): any body parses or fails with an
//! error; what parses becomes a write batch that decodes back to the same series.
#![no_main]
use edgefabric_tsdb::batch::WriteBatch;
use edgefabric_tsdb::line::{parse_points, Precision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else { return };
    for precision in [Precision::Ns, Precision::Ms, Precision::S] {
        let Ok(points) = parse_points(body, precision, 1_700_000_000_000) else { continue };
        let Ok(batch) = WriteBatch::from_points("fuzz", points) else { continue };
        let back = WriteBatch::decode(&batch.encode()).expect("a batch the node encoded decodes");
        assert_eq!(back.series.len(), batch.series.len());
        for (a, b) in back.series.iter().zip(&batch.series) {
            assert_eq!(a.labels, b.labels);
            let bits = |s: &[(i64, f64)]| s.iter().map(|(t, v)| (*t, v.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&a.samples), bits(&b.samples));
        }
    }
});
