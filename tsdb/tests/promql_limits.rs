//! Queries built to hurt the node: each one answers or is refused with a clear error, and none
//! aborts the process.
//!
//! Deeply nested queries are refused past `MAX_DEPTH`, however deep, and anything accepted
//! parses, evaluates and is dropped on half the stack the node gives its threads
//! (`STACK_SIZE`), in a debug build, whose frames are the largest. Before the limit a few
//! hundred nested parentheses overflowed a 2 MiB stack and aborted the process (the fuzzer found
//! it); without it the first test aborts the same way. Subqueries of billions of steps are
//! refused before anything is allocated, and extreme times and parameters do not overflow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefabric_tsdb::engine::Series;
use edgefabric_tsdb::matcher::Matcher;
use edgefabric_tsdb::promql::parser::{MAX_DEPTH, MAX_TIME_MS, STACK_SIZE};
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

#[test]
fn a_subquery_of_too_many_steps_is_refused_not_allocated() {
    // 86 billion steps: allocating their vector aborted the process before steps were counted.
    for q in
        ["max_over_time(x[1000d:1ms])", "max_over_time(x[1d:1ms])", "count_over_time(vector(1)[1000d:1ms])"]
    {
        let e = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        let err = instant_query(&OneSeries, &e, 3_600_000, &Options::default()).expect_err(q).to_string();
        assert!(err.contains("too many samples"), "{q}: {err}");
    }
    // The same subquery at a sane step answers.
    let e = parse("max_over_time(x[1d:1m])").unwrap_or_else(|e| panic!("{e}"));
    match instant_query(&OneSeries, &e, 3_600_000, &Options::default()) {
        Ok(QueryResult::Vector(rows)) => assert_eq!(rows.len(), 1, "{rows:?}"),
        other => panic!("{other:?}"),
    }
    // And the limit is the configured one: a smaller budget refuses a smaller subquery.
    let small = Options { max_samples: 1_000, ..Options::default() };
    let e = parse("max_over_time(x[1d:1m])").unwrap_or_else(|e| panic!("{e}"));
    assert!(instant_query(&OneSeries, &e, 3_600_000, &small).is_err());
}

/// Extreme values everywhere a query takes a number or a time, up to the bounds the parser
/// allows (`MAX_DURATION_MS`, `MAX_TIME_MS`): each answers or is refused, in an instant query,
/// a range query and a range query across all the times a query may name; none panics (this
/// is a debug build, so an arithmetic overflow would) or aborts.
#[test]
fn extreme_times_and_parameters_answer_or_are_refused() {
    let queries = [
        "x offset 106751d",
        "x offset -106751d",
        "x @ 2.3e15",
        "x @ -2.3e15",
        "max_over_time(x[106751d])",
        "rate(x[106751d] offset -106751d)",
        "max_over_time(x[106751d:106751d])",
        "max_over_time(x[1ms:106751d] offset 106751d)",
        "max_over_time(x[106751d:1d] @ -2.3e15)",
        "max_over_time(x[1h:1ms] @ 2.3e15 offset -106751d)",
        "predict_linear(x[5m], 1e308)",
        "quantile(1e308, x)",
        "topk(1e308, x)",
        "topk(-1, x)",
        "topk(NaN, x)",
        "bottomk(9e18, x)",
        "round(x, 1e-320)",
        "round(x, -1e308)",
        "clamp(x, NaN, 1)",
        "vector(1) / 0",
        "timestamp(x @ 2.3e15)",
        "x ^ 1e308",
        "x % 0",
        "time() - 9e18",
        "count_values(\"__name__\", x)",
        "label_replace(x, \"__name__\", \"$1$1$1$1$1$1$1$1\", \"job\", \"(.*)\")",
        "histogram_quantile(9e18, x)",
        "quantile_over_time(-1, x[5m])",
        "deriv(x[106751d])",
        "changes(x[106751d])",
        "scalar(x) * -9e18",
        // Times and durations at their bounds, stacked through nested subqueries.
        "rate(x[292y] @ -2.3e15 offset -292y)",
        "max_over_time(max_over_time(x[292y:1w] offset 292y)[292y:1w] @ -2.3e15 offset 292y)",
        "max_over_time(max_over_time(x[292y:1w] offset -292y)[292y:1w] @ 2.3e15 offset -292y)",
        "timestamp(x @ 2305843009213693.951)",
    ];
    let opts = Options::default();
    let mut answered = 0;
    for q in queries {
        let e = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        let results = [
            instant_query(&OneSeries, &e, 3_600_000, &opts),
            range_query(&OneSeries, &e, 0, 3_600_000, 600_000, &opts),
            range_query(&OneSeries, &e, -MAX_TIME_MS, MAX_TIME_MS, MAX_TIME_MS / 1000, &opts),
        ];
        answered += results.iter().filter(|r| r.is_ok()).count();
    }
    // Most of them are ordinary queries with odd numbers: they answer.
    assert!(answered > queries.len() * 2, "{answered} answers");

    // Past the bounds, the parser refuses, naming what is out of range. These used to overflow
    // in the evaluator: a panic in a debug build, wrapped times in a release one.
    for (q, what) in [
        ("rate(x[293y])", "range: out of range (at most 292 years)"),
        ("x offset 9223372036854775807ms", "offset: out of range"),
        ("max_over_time(x[1h:106752d])", "step: out of range"),
        ("x @ 2.4e15", "timestamp out of bounds for @ modifier"),
        ("x @ -2.4e15", "timestamp out of bounds for @ modifier"),
        ("x @ 106751991167d", "timestamp out of bounds for @ modifier"),
    ] {
        let e = parse(q).map(|_| ()).expect_err(q).to_string();
        assert!(e.contains(what), "{q}: {e}");
    }
}

/// `d`: one sample a second for a day.
struct DenseSeries;

impl Queryable for DenseSeries {
    fn select(&self, m: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, edgefabric_tsdb::Error> {
        let labels = vec![("__name__".to_string(), "d".to_string())];
        if !m.iter().all(|m| m.matches_labels(&labels)) {
            return Ok(vec![]);
        }
        let lo = mint.max(0) / 1000;
        let hi = maxt.min(DAY_MS) / 1000;
        let samples = (lo..=hi).map(|s| (s * 1000, (s % 97) as f64)).collect();
        Ok(vec![Series { labels: Arc::new(labels), samples }])
    }
}

const DAY_MS: i64 = 86_400_000;

#[test]
fn a_query_past_its_timeout_stops_with_a_timeout_error() {
    // 11,000 steps, each a quantile over a window of up to a day of samples: about a billion
    // samples sorted in windows, minutes of work.
    let e = parse("quantile_over_time(0.5, d[1d])").unwrap_or_else(|e| panic!("{e}"));
    let step = DAY_MS / 10_999;
    let opts = Options { timeout: Some(Duration::from_millis(200)), ..Options::default() };
    let started = Instant::now();
    let r = range_query(&DenseSeries, &e, 0, DAY_MS, step, &opts);
    assert!(matches!(r, Err(edgefabric_tsdb::Error::Timeout)), "{:?}", r.map(|_| ()));
    // Not a performance figure: a bound far above the 200 ms that only a loop without a look at
    // the clock would break.
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert_eq!(
        edgefabric_tsdb::Error::Timeout.to_string(),
        "query timed out in expression evaluation",
        "Prometheus's message"
    );

    // Inside a subquery too.
    {
        let q = "max_over_time(quantile_over_time(0.5, d[1d:1s])[1d:1m])";
        let e = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        let started = Instant::now();
        let r = range_query(&DenseSeries, &e, 0, DAY_MS, step, &opts);
        assert!(matches!(r, Err(edgefabric_tsdb::Error::Timeout)), "{q}: {:?}", r.map(|_| ()));
        assert!(started.elapsed() < Duration::from_secs(30), "{q}: {:?}", started.elapsed());
    }

    // The same query over a short range answers within the same timeout.
    let r = range_query(&DenseSeries, &e, 0, 600_000, 60_000, &opts);
    match r {
        Ok(QueryResult::Matrix(m)) => assert_eq!(m.len(), 1, "{m:?}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}
