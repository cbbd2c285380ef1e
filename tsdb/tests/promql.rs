//! Prometheus's own PromQL test scripts (`../shared/vectors/promql`, from
//! prometheus/prometheus `promql/promqltest/testdata`), run against the real engine: every
//! `load` is applied as write batches to an `Engine` in a temporary directory, and every
//! `eval` whose query lies in the subset is evaluated and compared as Prometheus's test runner
//! compares (values within a relative 1e-6, NaN equal to NaN, order only when `ordered`).
//!
//! Skipped, and why (see `skip_reason`):
//! - native histograms (`{{...}}` samples and the `histogram_*` functions): the store keeps floats;
//! - annotations (`expect info` / `expect warn`): the engine returns none yet, so those cases
//!   check the values only (reported apart);
//! - functions and modifiers outside the subset (`UNSUPPORTED_FUNCTIONS`: the native-histogram
//!   functions, `double_exponential_smoothing`, `limitk`/`limit_ratio`, `info`; the
//!   `smoothed`/`anchored` range modifiers).
//!
//! Everything else must pass; the test prints the counts per file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use edgefabric_tsdb::batch::{normalize, SeriesSamples, WriteBatch};
use edgefabric_tsdb::engine::{Engine, Options as EngineOptions};
use edgefabric_tsdb::promql::eval::{format_float, STALE_NAN};
use edgefabric_tsdb::promql::{self, NsQuerier, QueryResult};

/// Functions the subset does not have (yet).
const UNSUPPORTED_FUNCTIONS: &[&str] = &[
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "double_exponential_smoothing",
    "holt_winters",
    "limitk",
    "limit_ratio",
    "info",
];

fn vectors() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/promql");
    p.is_dir().then_some(p)
}

type Labels = Vec<(String, String)>;

#[derive(Debug)]
struct Expected {
    labels: Option<Labels>,
    /// One per expected point; None is `_` (no sample).
    values: Vec<Option<f64>>,
}

#[derive(Debug)]
enum Cmd {
    Load { interval: i64, series: Vec<(Labels, Vec<Option<f64>>)>, histograms: Vec<String> },
    Clear,
    Eval(Eval),
}

#[derive(Debug)]
struct Eval {
    line: usize,
    text: String,
    query: String,
    /// (start, end, step); an instant query has start == end and step 0.
    start: i64,
    end: i64,
    step: i64,
    fail: bool,
    ordered: bool,
    annotations: bool,
    /// For an instant query returning a range vector: the expected points' times.
    range_vector: Option<(i64, i64, i64)>,
    /// `expect string "..."`.
    string: Option<String>,
    /// The expected result holds native histograms.
    histogram_result: bool,
    expected: Vec<Expected>,
}

fn dur(s: &str) -> i64 {
    if let Some((ms, n)) = promql::lexer::duration(s) {
        if n == s.len() {
            return ms;
        }
    }
    (s.parse::<f64>().unwrap_or_else(|_| panic!("bad time {s}")) * 1000.0) as i64
}

/// Splits `metric{a="b, c"} 1 2+3x4` into the series descriptor and the rest.
fn split_series(line: &str) -> (&str, &str) {
    let line = line.trim();
    if let Some(open) = line.find('{') {
        let before = &line[..open];
        if !before.contains(char::is_whitespace) && !line.starts_with("{{") {
            // Find the closing brace outside quotes.
            let mut in_str: Option<char> = None;
            let mut esc = false;
            for (i, c) in line[open..].char_indices() {
                if esc {
                    esc = false;
                    continue;
                }
                match (in_str, c) {
                    (Some(_), '\\') => esc = true,
                    (Some(q), c) if c == q => in_str = None,
                    (None, '"') | (None, '\'') | (None, '`') => in_str = Some(c),
                    (None, '}') => {
                        let end = open + i + 1;
                        return (&line[..end], &line[end..]);
                    }
                    _ => {}
                }
            }
        }
    }
    match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, ""),
    }
}

fn parse_labels(desc: &str) -> Labels {
    use promql::lexer::{lex, Tok};
    let toks: Vec<Tok> =
        lex(desc).unwrap_or_else(|e| panic!("series {desc}: {e}")).into_iter().map(|t| t.tok).collect();
    let mut out = Vec::new();
    let mut i = 0;
    if let Some(Tok::Ident(n)) = toks.first() {
        out.push(("__name__".to_string(), n.clone()));
        i = 1;
    }
    if toks.get(i) == Some(&Tok::LBrace) {
        i += 1;
        while i < toks.len() {
            match &toks[i] {
                Tok::RBrace => break,
                Tok::Comma => i += 1,
                Tok::Ident(k) | Tok::Str(k) => {
                    if toks.get(i + 1) == Some(&Tok::Assign) {
                        let Tok::Str(v) = &toks[i + 2] else { panic!("series {desc}") };
                        out.push((k.clone(), v.clone()));
                        i += 3;
                    } else {
                        out.push(("__name__".to_string(), k.clone()));
                        i += 1;
                    }
                }
                t => panic!("series {desc}: unexpected {t:?}"),
            }
        }
    }
    out.retain(|(_, v)| !v.is_empty());
    out.sort();
    out
}

fn num(s: &str) -> f64 {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => f64::INFINITY,
        "-Inf" | "-inf" => f64::NEG_INFINITY,
        "NaN" | "nan" => f64::NAN,
        "stale" => f64::from_bits(STALE_NAN),
        _ => s.parse().unwrap_or_else(|_| panic!("bad value `{s}`")),
    }
}

/// Expands promtool's notation; returns None for histograms.
fn parse_values(s: &str) -> Option<Vec<Option<f64>>> {
    if s.contains("{{") {
        return None;
    }
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        if tok == "_" {
            out.push(None);
            continue;
        }
        if let Some((base, n)) = tok.rsplit_once('x') {
            if let Ok(n) = n.parse::<usize>() {
                if base == "_" {
                    out.extend(std::iter::repeat_n(None, n));
                    continue;
                }
                // base is `a`, `a+b` or `a-b` (a may be negative or in e-notation).
                let b = base.as_bytes();
                let split = (1..b.len())
                    .rev()
                    .find(|&i| (b[i] == b'+' || b[i] == b'-') && b[i - 1] != b'e' && b[i - 1] != b'E');
                let (a, step) = match split {
                    Some(i) => (num(&base[..i]), num(&base[i..])),
                    None => (num(base), 0.0),
                };
                let mut v = a;
                out.push(Some(v));
                for _ in 0..n {
                    v += step;
                    out.push(Some(v));
                }
                continue;
            }
        }
        out.push(Some(num(tok)));
    }
    Some(out)
}

fn parse_script(text: &str) -> Vec<Cmd> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cmds = Vec::new();
    let mut i = 0;
    let is_cmd = |l: &str| {
        let t = l.trim_start();
        t.starts_with("load") || t == "clear" || t.starts_with("eval")
    };
    while i < lines.len() {
        let line = lines[i].trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The block: following lines up to a blank line or the next command.
        let mut block = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() && !is_cmd(lines[i]) {
            if !lines[i].trim().starts_with('#') {
                block.push(lines[i].trim());
            }
            i += 1;
        }
        if line == "clear" {
            cmds.push(Cmd::Clear);
        } else if let Some(rest) = line.strip_prefix("load_with_nhcb") {
            let _ = rest;
            cmds.push(Cmd::Load { interval: 60_000, series: Vec::new(), histograms: vec!["*".into()] });
        } else if let Some(rest) = line.strip_prefix("load") {
            let interval = dur(rest.trim());
            let mut series = Vec::new();
            let mut histograms = Vec::new();
            for l in block {
                let (desc, vals) = split_series(l);
                let labels = parse_labels(desc);
                match parse_values(vals) {
                    Some(v) => series.push((labels, v)),
                    None => histograms.push(
                        labels
                            .iter()
                            .find(|(k, _)| k == "__name__")
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default(),
                    ),
                }
            }
            cmds.push(Cmd::Load { interval, series, histograms });
        } else if line.starts_with("eval") {
            let (head, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let mut fail = head == "eval_fail";
            let mut ordered = head == "eval_ordered";
            let mut annotations = head == "eval_warn" || head == "eval_info";
            let rest = rest.trim();
            let (start, end, step, query) = if let Some(r) = rest.strip_prefix("instant") {
                let r = r.trim().strip_prefix("at").unwrap_or(r).trim();
                let (t, q) = r.split_once(char::is_whitespace).unwrap();
                let t = dur(t);
                (t, t, 0, q.trim().to_string())
            } else {
                let r = rest.strip_prefix("range").unwrap().trim().strip_prefix("from").unwrap().trim();
                let (a, r) = r.split_once(" to ").unwrap();
                let (b, r) = r.trim().split_once(" step ").unwrap();
                let (s, q) = r.trim().split_once(char::is_whitespace).unwrap();
                (dur(a.trim()), dur(b.trim()), dur(s), q.trim().to_string())
            };
            let mut expected = Vec::new();
            let mut range_vector = None;
            let mut string = None;
            let mut histogram_result = false;
            for l in block {
                if let Some(e) = l.strip_prefix("expect") {
                    let e = e.trim();
                    if e.starts_with("fail") {
                        fail = true;
                    } else if e.starts_with("ordered") {
                        ordered = true;
                    } else if e.starts_with("info") || e.starts_with("warn") {
                        annotations = true;
                    } else if let Some(s) = e.strip_prefix("string") {
                        let s = s.trim();
                        let Ok(promql::lexer::Tok::Str(v)) = promql::lexer::lex(s).map(|t| t[0].tok.clone())
                        else {
                            panic!("bad expect string {s}")
                        };
                        string = Some(v);
                    } else if let Some(r) = e.strip_prefix("range vector from") {
                        let (a, r) = r.trim().split_once(" to ").unwrap();
                        let (b, s) = r.trim().split_once(" step ").unwrap();
                        range_vector = Some((dur(a.trim()), dur(b.trim()), dur(s.trim())));
                    }
                    continue;
                }
                if l.starts_with("expected_fail") {
                    fail = true;
                    continue;
                }
                // A scalar result is a bare number.
                let first = l.split_whitespace().next().unwrap_or("");
                let bare = first.parse::<f64>().is_ok() || matches!(first, "Inf" | "-Inf" | "NaN" | "+Inf");
                if bare && !l.contains('{') {
                    expected.push(Expected { labels: None, values: parse_values(l).unwrap_or_default() });
                    continue;
                }
                let (desc, vals) = split_series(l);
                match parse_values(vals) {
                    Some(values) => expected.push(Expected { labels: Some(parse_labels(desc)), values }),
                    None => {
                        histogram_result = true;
                        expected.push(Expected {
                            labels: Some(parse_labels(desc)),
                            values: vec![Some(f64::NAN)],
                        });
                    }
                }
            }
            cmds.push(Cmd::Eval(Eval {
                line: i,
                text: line.to_string(),
                query,
                start,
                end,
                step,
                fail,
                ordered,
                annotations,
                range_vector,
                string,
                histogram_result,
                expected,
            }));
        }
    }
    cmds
}

fn almost_equal(a: f64, b: f64) -> bool {
    const EPS: f64 = 0.000001;
    let min_normal = f64::from_bits(0x0010_0000_0000_0000);
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < min_normal {
        return diff < EPS * min_normal;
    }
    diff / abs_sum.min(f64::MAX) < EPS
}

fn skip_reason(e: &Eval, histogram_names: &BTreeSet<String>) -> Option<String> {
    if e.histogram_result {
        return Some("native histograms in the expected result".into());
    }
    if histogram_names.contains("*") {
        return Some("native histograms (load_with_nhcb)".into());
    }
    for h in histogram_names {
        if !h.is_empty() && e.query.contains(h.as_str()) {
            return Some(format!("native histogram series `{h}`"));
        }
    }
    if !histogram_names.is_empty() && e.query.contains("__name__=~") {
        return Some("a name regex that may select native histogram series".into());
    }
    for f in UNSUPPORTED_FUNCTIONS {
        if e.query.contains(&format!("{f}(")) || e.query.contains(&format!("{f} (")) {
            return Some(format!("function {f}"));
        }
    }
    for m in ["smoothed", "anchored"] {
        if e.query.contains(m) {
            return Some(format!("`{m}` modifier"));
        }
    }
    None
}

fn fmt(l: &Labels) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// Compares; returns a description of the first difference.
fn check(e: &Eval, got: Result<QueryResult, edgefabric_tsdb::Error>) -> Result<(), String> {
    let got = match got {
        Err(err) if e.fail => return Ok(()).map(|()| drop(err)),
        Err(err) => return Err(format!("error: {err}")),
        Ok(_) if e.fail => return Err("expected a failure, got a result".into()),
        Ok(g) => g,
    };
    let times =
        |a: i64, b: i64, s: i64| -> Vec<i64> { (0..).map(|k| a + k * s).take_while(|t| *t <= b).collect() };
    match got {
        QueryResult::Scalar(_, v) => {
            let [Expected { labels: None, values }] = &e.expected[..] else {
                return Err(format!("got scalar {v}, expected {:?}", e.expected));
            };
            if values.len() != 1 || !almost_equal(values[0].unwrap_or(f64::NAN), v) {
                return Err(format!("got scalar {v}, expected {values:?}"));
            }
            Ok(())
        }
        QueryResult::String(_, s) if e.string.as_deref() == Some(s.as_str()) => Ok(()),
        QueryResult::String(_, s) => Err(format!("got string {s:?}, expected {:?}", e.string)),
        QueryResult::Vector(rows) => {
            if rows.len() != e.expected.len() {
                return Err(format!(
                    "got {} series, expected {}: {}",
                    rows.len(),
                    e.expected.len(),
                    rows.iter()
                        .map(|r| format!("{} {}", fmt(&r.0), format_float(r.2)))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            for (k, ex) in e.expected.iter().enumerate() {
                let Some(labels) = &ex.labels else { return Err("expected a scalar, got a vector".into()) };
                let found = if e.ordered {
                    rows.get(k).filter(|r| r.0 == *labels)
                } else {
                    rows.iter().find(|r| r.0 == *labels)
                };
                let Some(r) = found else {
                    return Err(format!(
                        "missing {} (got {})",
                        fmt(labels),
                        rows.iter().map(|r| fmt(&r.0)).collect::<Vec<_>>().join("; ")
                    ));
                };
                let want = ex.values.first().copied().flatten().unwrap_or(f64::NAN);
                if ex.values.len() != 1 || !almost_equal(want, r.2) {
                    return Err(format!(
                        "{}: got {}, expected {:?}",
                        fmt(labels),
                        format_float(r.2),
                        ex.values
                    ));
                }
            }
            Ok(())
        }
        QueryResult::Matrix(series) => {
            let ts = match e.range_vector {
                Some((a, b, s)) => times(a, b, s),
                None if e.step > 0 => times(e.start, e.end, e.step),
                None => {
                    return Err("got a range vector for an instant query without `expect range vector`".into())
                }
            };
            let want: Vec<(Labels, Vec<(i64, f64)>)> = e
                .expected
                .iter()
                .map(|ex| {
                    let pts = ex.values.iter().zip(&ts).filter_map(|(v, t)| v.map(|v| (*t, v))).collect();
                    (ex.labels.clone().unwrap_or_default(), pts)
                })
                .filter(|(_, p): &(Labels, Vec<(i64, f64)>)| !p.is_empty())
                .collect();
            if series.len() != want.len() {
                return Err(format!(
                    "got {} series ({}), expected {}",
                    series.len(),
                    series.iter().map(|s| fmt(&s.0)).collect::<Vec<_>>().join("; "),
                    want.len()
                ));
            }
            for (labels, pts) in &want {
                let Some((_, got)) = series.iter().find(|s| s.0 == *labels) else {
                    return Err(format!("missing {}", fmt(labels)));
                };
                let same = got.len() == pts.len()
                    && got.iter().zip(pts).all(|(g, w)| g.0 == w.0 && almost_equal(g.1, w.1));
                if !same {
                    return Err(format!("{}: got {got:?}, expected {pts:?}", fmt(labels)));
                }
            }
            Ok(())
        }
    }
}

#[test]
fn prometheus_evaluation_scripts() {
    let Some(dir) = vectors() else {
        eprintln!("NOTICE: ../shared/vectors/promql is absent; Prometheus's PromQL scripts were not run");
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "test"));
    files.sort();
    let mut failures = Vec::new();
    let (mut total_pass, mut total_skip) = (0, 0);
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(file).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut gen = 0;
        let opts = EngineOptions { ooo_window_ms: i64::MAX / 4, ..EngineOptions::default() };
        let mut engine = Engine::open(&dir.path().join("t0"), opts.clone()).unwrap();
        let mut index = 0u64;
        let mut histograms: BTreeSet<String> = BTreeSet::new();
        let (mut pass, mut skip) = (0, 0);
        for cmd in parse_script(&text) {
            match cmd {
                Cmd::Clear => {
                    gen += 1;
                    engine = Engine::open(&dir.path().join(format!("t{gen}")), opts.clone()).unwrap();
                    histograms.clear();
                }
                Cmd::Load { interval, series, histograms: h } => {
                    histograms.extend(h);
                    let batch = WriteBatch {
                        ns: "default".into(),
                        series: series
                            .into_iter()
                            .map(|(labels, vals)| SeriesSamples {
                                labels: normalize(labels).unwrap(),
                                samples: vals
                                    .into_iter()
                                    .enumerate()
                                    .filter_map(|(k, v)| v.map(|v| (k as i64 * interval, v)))
                                    .collect(),
                            })
                            .filter(|s| !s.samples.is_empty())
                            .collect(),
                    };
                    index += 1;
                    engine.apply(index, &batch).unwrap();
                }
                Cmd::Eval(e) => {
                    if let Some(why) = skip_reason(&e, &histograms) {
                        *reasons.entry(why).or_insert(0) += 1;
                        skip += 1;
                        continue;
                    }
                    let q = NsQuerier { engine: &engine, ns: "default" };
                    let popts = promql::Options::default();
                    let result = promql::parse(&e.query).and_then(|expr| {
                        if e.step == 0 {
                            promql::instant_query(&q, &expr, e.start, &popts)
                        } else {
                            promql::range_query(&q, &expr, e.start, e.end, e.step, &popts)
                        }
                    });
                    match check(&e, result) {
                        // The values are right; the info/warning annotation Prometheus would add
                        // is not produced (counted apart).
                        Ok(()) if e.annotations => {
                            pass += 1;
                            *reasons
                                .entry(
                                    "(ran, values checked) an annotation Prometheus adds is not produced"
                                        .into(),
                                )
                                .or_insert(0) += 1;
                        }
                        Ok(()) => pass += 1,
                        Err(msg) => failures.push(format!("{name}:{} `{}`: {msg}", e.line, e.text)),
                    }
                }
            }
        }
        eprintln!("{name}: {pass} passed, {skip} skipped");
        total_pass += pass;
        total_skip += skip;
    }
    eprintln!("total: {total_pass} passed, {total_skip} skipped, {} failed", failures.len());
    for (why, n) in &reasons {
        eprintln!("skipped {n}: {why}");
    }
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    assert!(failures.is_empty(), "{} PromQL cases failed (listed above)", failures.len());
    // The scripts were read and run (a parsing slip in this harness must not pass silently).
    assert!(total_pass >= 700, "only {total_pass} cases ran");
}
