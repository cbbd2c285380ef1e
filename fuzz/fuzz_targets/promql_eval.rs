//! PromQL evaluation of every query that parses, over a fixed set of series (counters with a
//! reset, gauges, a histogram, and NaN, infinities and a stale marker), as an instant query and
//! as a range query: an answer or an error, never a panic, an allocation past libFuzzer's
//! `-rss_limit_mb`, or a run past its `-timeout` (10 s). The evaluation's own limits are far
//! smaller than a node's (100,000 samples, a 100 ms deadline), so each execution stays short;
//! an input the deadline did not stop within libFuzzer's timeout means a loop that never looks
//! at the clock. (With 2 million samples and 1 s, the fuzzer soon found queries that spend the
//! whole second, as `mad_over_time` over a subquery of 145,000 steps does, and crawled at 200
//! executions a second.)
#![no_main]
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use edgefabric_tsdb::engine::Series;
use edgefabric_tsdb::matcher::Matcher;
use edgefabric_tsdb::promql::{instant_query, parse, range_query, Options, Queryable};
use libfuzzer_sys::fuzz_target;

/// Every 15 s for two hours.
const STEP_MS: i64 = 15_000;
const END_MS: i64 = 7_200_000;

fn series() -> &'static [Series] {
    static ALL: OnceLock<Vec<Series>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut out = Vec::new();
        let mut add = |labels: &[(&str, &str)], f: &dyn Fn(i64) -> f64| {
            let mut l: Vec<(String, String)> =
                labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            l.sort();
            let samples = (0..=END_MS / STEP_MS).map(|i| (i * STEP_MS, f(i))).collect();
            out.push(Series { labels: Arc::new(l), samples });
        };
        for host in ["host_1", "host_2"] {
            for cpu in ["0", "1"] {
                for mode in ["user", "idle"] {
                    let rate = if mode == "user" { 0.3 } else { 0.7 };
                    // A counter that resets halfway.
                    add(
                        &[("__name__", "node_cpu_seconds_total"), ("host", host), ("cpu", cpu), ("mode", mode)],
                        &move |i| (i % 240) as f64 * 15.0 * rate,
                    );
                }
            }
            add(&[("__name__", "node_load1"), ("host", host)], &|i| 1.0 + ((i as f64) * 0.1).sin());
            add(&[("__name__", "node_load5"), ("host", host)], &|i| 0.5 + (i % 7) as f64 * 0.01);
            add(&[("__name__", "node_memory_MemAvailable_bytes"), ("host", host)], &|i| 8e9 - i as f64 * 1e5);
            add(&[("__name__", "node_network_receive_bytes_total"), ("host", host)], &|i| i as f64 * 1e6);
            add(&[("__name__", "node_filesystem_avail_bytes"), ("host", host), ("mountpoint", "/")], &|i| {
                1e11 - (i * i) as f64
            });
            add(&[("__name__", "node_uname_info"), ("host", host), ("release", "6.1")], &|_| 1.0);
        }
        for (le, share) in [("0.1", 0.2), ("0.5", 0.7), ("+Inf", 1.0)] {
            add(&[("__name__", "http_request_duration_seconds_bucket"), ("le", le)], &move |i| {
                (i as f64 * 10.0 * share).floor()
            });
        }
        add(&[("__name__", "weird"), ("kind", "special")], &|i| match i % 5 {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => f64::NEG_INFINITY,
            3 => f64::from_bits(0x7ff0_0000_0000_0002), // a stale marker
            _ => -0.0,
        });
        out
    })
}

struct Fixed;

impl Queryable for Fixed {
    fn select(&self, m: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, edgefabric_tsdb::Error> {
        Ok(series()
            .iter()
            .filter(|s| m.iter().all(|m| m.matches_labels(&s.labels)))
            .map(|s| Series {
                labels: s.labels.clone(),
                samples: s.samples.iter().copied().filter(|x| x.0 >= mint && x.0 <= maxt).collect(),
            })
            .collect())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let Ok(e) = parse(src) else { return };
    let opts = Options { max_samples: 100_000, timeout: Some(Duration::from_millis(100)), ..Options::default() };
    let _ = instant_query(&Fixed, &e, 3_600_000, &opts);
    let _ = range_query(&Fixed, &e, 0, 3_600_000, 60_000, &opts);
});
