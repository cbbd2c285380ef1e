//! Chunks as they come from the disk or a peer (`codec::decode`): decoded or refused; what
//! decodes (sorted, as every chunk is) encodes and decodes back bit for bit.
#![no_main]
use edgefabric_tsdb::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = codec::count(data);
    let Ok(samples) = codec::decode(data) else { return };
    // Round trips of long decodes (a few header bytes can say a million regular samples) only
    // cost time: the decoder has been exercised by then.
    if samples.len() > 4096 || samples.windows(2).any(|w| w[0].0 >= w[1].0) {
        return;
    }
    let bits = |s: &[(i64, f64)]| s.iter().map(|(t, v)| (*t, v.to_bits())).collect::<Vec<_>>();
    for enc in [codec::encode(&samples), codec::encode_fast(&samples), codec::encode_xor_only(&samples)] {
        assert_eq!(bits(&codec::decode(&enc).expect("own encoding decodes")), bits(&samples));
    }
});
