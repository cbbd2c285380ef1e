//! PromQL (`/api/v1/query`, `query_range`) and series selectors (`match[]`): parsed or refused
//! with an error, never a panic or unbounded recursion.
#![no_main]
use edgefabric_tsdb::promql::parser::{parse, parse_selector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let _ = parse(src);
    let _ = parse_selector(src);
});
