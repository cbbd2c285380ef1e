//! What REST clients send besides line protocol and PromQL: every JSON body of the `/v1`
//! routes, their query strings, the Prometheus API's parameters (form bodies, times,
//! durations), role names and request paths (authorization). Parsed or refused with a 400,
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edgefabric::http::fuzz_inputs(data);
    edgefabric::ts::fuzz_params(data);
});
