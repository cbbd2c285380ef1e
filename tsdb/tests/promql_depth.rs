//! Deeply nested queries: refused past `MAX_DEPTH` with a clear error, however deep, and
//! anything accepted parses, evaluates and is dropped on half the stack the node gives its
//! threads (`STACK_SIZE`), in a debug build, whose frames are the largest. Before the limit a
//! few hundred nested parentheses overflowed a 2 MiB stack and aborted the process (the fuzzer
//! found it); without it this test aborts the same way.

use std::sync::Arc;

use edgefabric_tsdb::engine::Series;
use edgefabric_tsdb::matcher::Matcher;
use edgefabric_tsdb::promql::parser::{MAX_DEPTH, STACK_SIZE};
use edgefabric_tsdb::promql::{instant_query, parse, range_query, Options, QueryResult, Queryable};

/// One series, `x{job="a"}`, one sample a minute with the value 2.
struct OneSeries;

impl Queryable for OneSeries {
    fn select(&self, m: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, edgefabric_tsdb::Error> {
        let labels = vec![("__name__".to_string(), "x".to_string()), ("job".to_string(), "a".to_string())];
        if !m.iter().all(|m| m.matches_labels(&labels)) {
            return Ok(vec![]);
        }
        let samples = (0..=60).map(|i| (i * 60_000, 2.0)).filter(|s| s.0 >= mint && s.0 <= maxt).collect();
        Ok(vec![Series { labels: Arc::new(labels), samples }])
    }
}

/// Half the node's, for margin.
const STACK: usize = STACK_SIZE / 2;

/// Runs `f` on a thread with `STACK`; an overflow aborts the test process.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(STACK).spawn(f).expect("spawn").join().expect("no panic")
}

/// A way of nesting: its name, and the query repeating it n times.
type Shape = (&'static str, fn(usize) -> String);

/// The shapes a query nests by.
fn shapes() -> Vec<Shape> {
    vec![
        ("parentheses", |n| format!("{}x{}", "(".repeat(n), ")".repeat(n))),
        ("unary minus", |n| format!("{}x", "-".repeat(n))),
        ("function calls", |n| format!("{}x{}", "abs(".repeat(n), ")".repeat(n))),
        ("aggregations", |n| format!("{}x{}", "sum(".repeat(n), ")".repeat(n))),
        ("an `or` chain", |n| vec!["x"; n + 1].join(" or ")),
        ("a `+` chain", |n| vec!["x"; n + 1].join(" + ")),
        ("a `^` chain (right-associative)", |n| vec!["x"; n + 1].join(" ^ ")),
        ("parenthesised sums", |n| format!("{}x{}", "(x + ".repeat(n), ")".repeat(n))),
        // Each subquery holds at most one step (range < step), so evaluating them is linear.
        ("subqueries in calls", |n| format!("{}x{}", "max_over_time(".repeat(n), "[30s:1m])".repeat(n))),
    ]
}

/// The largest repetition of `shape` that parses; the next one must be refused for its depth.
fn deepest(shape: fn(usize) -> String) -> usize {
    let mut n = 1;
    loop {
        let q = shape(n + 1);
        match on_small_stack(move || parse(&q).map(|_| ()).map_err(|e| e.to_string())) {
            Ok(()) => n += 1,
            Err(e) => {
                assert!(e.contains(&format!("query nests more than {MAX_DEPTH} levels deep")), "{e}");
                return n;
            }
        }
    }
}

#[test]
fn queries_at_the_depth_limit_parse_evaluate_and_drop_on_half_the_node_stack() {
    for (name, shape) in shapes() {
        let n = deepest(shape);
        // Every shape nests at least one level per repetition and at most two (a chain operand
        // and the operator's own level), so the limit is reached where it says.
        assert!((MAX_DEPTH / 2 - 1..=MAX_DEPTH).contains(&n), "{name}: {n} repetitions accepted");
        let q = shape(n);
        let out = on_small_stack(move || {
            let e = parse(&q).map_err(|e| e.to_string())?;
            let opts = Options::default();
            let instant = instant_query(&OneSeries, &e, 3_600_000, &opts).map_err(|e| e.to_string())?;
            let range =
                range_query(&OneSeries, &e, 0, 3_600_000, 600_000, &opts).map_err(|e| e.to_string())?;
            Ok::<_, String>((instant, range))
        });
        let (instant, _range) = out.unwrap_or_else(|e| panic!("{name} at {n}: {e}"));
        // A real answer, not an empty one: `x` is 2 everywhere, and each shape keeps one row.
        match instant {
            QueryResult::Vector(rows) => assert_eq!(rows.len(), 1, "{name}: {rows:?}"),
            QueryResult::Matrix(m) => assert!(m.len() <= 1, "{name}: {m:?}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn queries_past_the_limit_are_refused_however_deep() {
    for (name, shape) in shapes() {
        for n in [MAX_DEPTH + 1, 10_000, 100_000] {
            let q = shape(n);
            let e = on_small_stack(move || parse(&q).map(|_| ()).map_err(|e| e.to_string()))
                .expect_err(&format!("{name} x{n} parsed"));
            assert!(e.contains("nests more than") && e.starts_with("parse error at char "), "{name}: {e}");
        }
    }
    // Depth, not length: a long query that does not nest is accepted.
    let matchers = (0..2_000).map(|i| format!("l{i}=\"{i}\"")).collect::<Vec<_>>().join(", ");
    let alternatives = (0..2_000).map(|i| i.to_string()).collect::<Vec<_>>().join("|");
    let long = format!("sum by (job) (rate(x{{{matchers}}}[5m])) > on (job) x{{job=~\"{alternatives}\"}}");
    assert!(long.len() > 30_000, "{}", long.len());
    parse(&long).unwrap_or_else(|e| panic!("{e}"));
}
