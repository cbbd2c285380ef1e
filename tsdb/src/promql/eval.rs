//! PromQL evaluation with Prometheus 3's semantics.
//!
//! An instant query is a range query of one step. Every node is evaluated for all steps at once
//! (as Prometheus's `rangeEval` does): selectors load their series once for the whole range, and
//! a vector is a set of rows, each with one optional value per step. Vector matching,
//! aggregation and label handling happen per step, so series that come and go inside the range
//! behave as they would in Prometheus.
//!
//! Semantics kept from Prometheus (and checked against its own test scripts in
//! `tsdb/tests/promql.rs`): the lookback window and range windows are left-open
//! (`(t - range, t]`), stale markers end a series, arithmetic and most functions drop the
//! metric name, vector matching ignores `__name__`, duplicate label sets in a result are an error.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::ast::*;
use super::functions::{self, kahan_inc, quantile, Window};
use crate::codec::Sample;
use crate::engine::Series;
use crate::matcher::{MatchOp, Matcher};
use crate::Error;

pub type Labels = Vec<(String, String)>;

/// Where a query reads series from.
pub trait Queryable {
    /// Series matching all matchers with their samples in `[mint, maxt]` (stale markers
    /// included), sorted by labels.
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, Error>;
}

/// Prometheus's staleness marker: a NaN with this bit pattern.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN
}

#[derive(Clone, Debug)]
pub struct Options {
    pub lookback_ms: i64,
    /// Samples a query may hold at once.
    pub max_samples: usize,
    /// Subquery step when none is given.
    pub default_step_ms: i64,
    /// How long an evaluation may run before it stops with `Error::Timeout` (Prometheus's
    /// `-query.timeout`, 2 minutes by default). The sample limit bounds a query's memory, not
    /// its time: a range function over long windows at many steps does work proportional to
    /// both, and nothing else would stop it.
    pub timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lookback_ms: 300_000,
            max_samples: 50_000_000,
            default_step_ms: 60_000,
            timeout: Some(Duration::from_secs(120)),
        }
    }
}

/// Work units (about one sample or step touched each) between two looks at the clock.
const CLOCK_EVERY: u64 = 1 << 14;

/// A query's result, as the HTTP API returns it.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryResult {
    Scalar(i64, f64),
    String(i64, String),
    /// (labels, timestamp ms, value), in result order.
    Vector(Vec<(Labels, i64, f64)>),
    /// (labels, samples), sorted by labels.
    Matrix(Vec<(Labels, Vec<Sample>)>),
}

pub fn instant_query(q: &dyn Queryable, expr: &Expr, t: i64, opts: &Options) -> Result<QueryResult, Error> {
    let mut ev = Ev::new(q, t, t, 1, t, t, opts);
    Ok(match ev.eval(expr)? {
        Val::Scalar(v) => QueryResult::Scalar(t, v[0]),
        Val::Str(s) => QueryResult::String(t, s),
        Val::Vector(rows) => QueryResult::Vector(
            rows.into_iter().filter_map(|r| r.vals[0].map(|v| (r.labels, t, v))).collect(),
        ),
        Val::Matrix(m) => {
            let (lo_t, hi_t) = m.bounds(&ev, 0);
            let mut out: Vec<(Labels, Vec<Sample>)> = m
                .series
                .into_iter()
                .filter_map(|(l, s)| {
                    let w: Vec<Sample> = s.into_iter().filter(|x| x.0 > lo_t && x.0 <= hi_t).collect();
                    (!w.is_empty()).then_some((l, w))
                })
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            QueryResult::Matrix(out)
        }
    })
}

pub fn range_query(
    q: &dyn Queryable,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    opts: &Options,
) -> Result<QueryResult, Error> {
    if step <= 0 {
        return Err(Error::Invalid("step: must be positive".into()));
    }
    if end < start {
        return Err(Error::Invalid("end: must not be before start".into()));
    }
    let n = ((end - start) / step) as usize + 1;
    if n > 11_000 {
        return Err(Error::Invalid(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
                .into(),
        ));
    }
    let mut ev = Ev::new(q, start, end, step, start, end, opts);
    ev.query_step = step;
    let v = ev.eval(expr)?;
    let points = |vals: &[Option<f64>]| -> Vec<Sample> {
        vals.iter().enumerate().filter_map(|(i, v)| v.map(|v| (start + i as i64 * step, v))).collect()
    };
    Ok(match v {
        Val::Scalar(v) => {
            let vals: Vec<Option<f64>> = v.into_iter().map(Some).collect();
            QueryResult::Matrix(vec![(Vec::new(), points(&vals))])
        }
        Val::Vector(rows) => {
            let mut out: Vec<(Labels, Vec<Sample>)> = rows
                .into_iter()
                .map(|r| (r.labels, points(&r.vals)))
                .filter(|(_, p)| !p.is_empty())
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            QueryResult::Matrix(out)
        }
        Val::Matrix(_) | Val::Str(_) => {
            return Err(Error::Invalid(format!(
                "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                expr.value_type().name()
            )))
        }
    })
}

/// One series of an instant vector: a value (or none) per step.
#[derive(Clone, Debug)]
struct Row {
    labels: Labels,
    vals: Vec<Option<f64>>,
}

/// Range-vector data: series samples (stale markers removed) and how windows are placed.
struct MatrixVal {
    series: Vec<(Labels, Vec<Sample>)>,
    range: i64,
    offset: i64,
    at: Option<i64>,
}

impl MatrixVal {
    /// The window at step i: `(start, end]`.
    fn bounds(&self, ev: &Ev, i: usize) -> (i64, i64) {
        let r = self.at.unwrap_or_else(|| ev.t(i)) - self.offset;
        (r - self.range, r)
    }
}

enum Val {
    Scalar(Vec<f64>),
    Vector(Vec<Row>),
    Str(String),
    Matrix(MatrixVal),
}

struct Ev<'a> {
    q: &'a dyn Queryable,
    start: i64,
    end: i64,
    step: i64,
    n: usize,
    /// The outermost query's range, for `@ start()` and `@ end()`.
    query_start: i64,
    query_end: i64,
    /// The outermost query's step (0 for an instant query), for `step()`.
    query_step: i64,
    opts: &'a Options,
    samples: usize,
    deadline: Option<Instant>,
    /// Work done since the clock was last read.
    work: u64,
}

fn drop_name(mut l: Labels) -> Labels {
    l.retain(|(k, _)| k != "__name__");
    l
}

fn get<'l>(l: &'l Labels, name: &str) -> &'l str {
    l.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

fn set(l: &mut Labels, name: &str, value: &str) {
    match l.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
        Ok(i) if value.is_empty() => {
            l.remove(i);
        }
        Ok(i) => l[i].1 = value.to_string(),
        Err(_) if value.is_empty() => {}
        Err(i) => l.insert(i, (name.to_string(), value.to_string())),
    }
}

/// Prometheus's float formatting (Go's `strconv.FormatFloat(f, 'f', -1, 64)`).
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Collects output rows, merging rows with equal labels present at different steps and refusing
/// two values for one label set at one step.
struct Out {
    index: HashMap<Labels, usize>,
    rows: Vec<Row>,
    n: usize,
}

impl Out {
    fn new(n: usize) -> Out {
        Out { index: HashMap::new(), rows: Vec::new(), n }
    }

    fn put(&mut self, labels: &Labels, i: usize, v: f64) -> Result<(), Error> {
        let k = match self.index.get(labels) {
            Some(&k) => k,
            None => {
                self.rows.push(Row { labels: labels.clone(), vals: vec![None; self.n] });
                self.index.insert(labels.clone(), self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        let slot = &mut self.rows[k].vals[i];
        if slot.is_some() {
            return Err(Error::Invalid("vector cannot contain metrics with the same labelset".into()));
        }
        *slot = Some(v);
        Ok(())
    }
}

/// An instant-vector function of each value (`f(step, value)`; None drops the sample): the
/// metric name is dropped, and rows that become equal are merged.
fn map_values(rows: Vec<Row>, n: usize, f: impl Fn(usize, f64) -> Option<f64>) -> Result<Val, Error> {
    let rows = rows
        .into_iter()
        .map(|r| Row {
            labels: drop_name(r.labels),
            vals: r.vals.into_iter().enumerate().map(|(i, v)| v.and_then(|x| f(i, x))).collect(),
        })
        .collect();
    Ok(Val::Vector(merge(rows, n)?))
}

/// Merges rows by label set (after a name drop), refusing clashes at a step.
fn merge(rows: Vec<Row>, n: usize) -> Result<Vec<Row>, Error> {
    let mut seen = HashSet::with_capacity(rows.len());
    if rows.iter().all(|r| seen.insert(&r.labels)) {
        return Ok(rows);
    }
    let mut out = Out::new(n);
    for r in rows {
        for (i, v) in r.vals.iter().enumerate() {
            if let Some(v) = v {
                out.put(&r.labels, i, *v)?;
            }
        }
    }
    Ok(out.rows)
}

fn unwrap_paren(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(inner) => unwrap_paren(inner),
        e => e,
    }
}

impl<'a> Ev<'a> {
    fn new(
        q: &'a dyn Queryable,
        start: i64,
        end: i64,
        step: i64,
        query_start: i64,
        query_end: i64,
        opts: &'a Options,
    ) -> Ev<'a> {
        let n = ((end - start) / step.max(1)) as usize + 1;
        let deadline = opts.timeout.and_then(|t| Instant::now().checked_add(t));
        Ev {
            q,
            start,
            end,
            step,
            n,
            query_start,
            query_end,
            query_step: 0,
            opts,
            samples: 0,
            deadline,
            work: 0,
        }
    }

    /// Counts `units` of work about to be done, and stops the query once it is past its
    /// deadline. Every loop whose length the query controls calls this.
    fn spend(&mut self, units: usize) -> Result<(), Error> {
        self.work = self.work.saturating_add(units as u64);
        if self.work >= CLOCK_EVERY {
            self.work = 0;
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout);
            }
        }
        Ok(())
    }

    fn t(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }

    fn at(&self, at: Option<At>) -> Option<i64> {
        at.map(|a| match a {
            At::Time(t) => t,
            At::Start => self.query_start,
            At::End => self.query_end,
        })
    }

    /// Counts `k` more samples (loaded, or slots of a step vector about to be allocated)
    /// against `max_samples`. The count only grows, so it bounds the query's memory from above.
    fn charge(&mut self, k: usize) -> Result<(), Error> {
        self.samples = self.samples.saturating_add(k);
        if self.samples > self.opts.max_samples {
            return Err(Error::Invalid(
                "query processing would load too many samples into memory in query execution".into(),
            ));
        }
        Ok(())
    }

    fn load(&mut self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, Error> {
        let s = self.q.select(matchers, mint, maxt)?;
        self.charge(s.iter().map(|x| x.samples.len()).sum::<usize>())?;
        Ok(s)
    }

    /// Reference times of a selector: its `@` time or each step, minus the offset.
    fn refs(&self, offset: i64, at: Option<i64>) -> (i64, i64) {
        match at {
            Some(t) => (t - offset, t - offset),
            None => (self.start - offset, self.end - offset),
        }
    }

    fn eval(&mut self, e: &Expr) -> Result<Val, Error> {
        // Every node does at least a step vector's worth of work.
        self.spend(self.n)?;
        match e {
            Expr::Number(v) => Ok(Val::Scalar(vec![*v; self.n])),
            Expr::Str(s) => Ok(Val::Str(s.clone())),
            Expr::Paren(e) => self.eval(e),
            Expr::Neg(e) => Ok(match self.eval(e)? {
                Val::Scalar(v) => Val::Scalar(v.into_iter().map(|x| -x).collect()),
                Val::Vector(rows) => map_values(rows, self.n, |_, x| Some(-x))?,
                _ => return Err(Error::Invalid("unary minus needs a scalar or an instant vector".into())),
            }),
            Expr::Selector(s) => Ok(Val::Vector(self.vector_selector(s, false)?)),
            Expr::Matrix(s, range) => Ok(Val::Matrix(self.matrix_selector(s, *range)?)),
            Expr::Subquery { expr, range, step, offset, at } => {
                Ok(Val::Matrix(self.subquery(expr, *range, *step, *offset, *at)?))
            }
            Expr::Call { func, args } => self.call(func, args),
            Expr::Aggregate { op, expr, param, grouping, without } => {
                self.aggregate(*op, expr, param.as_deref(), grouping, *without)
            }
            Expr::Binary { op, lhs, rhs, return_bool, matching } => {
                let l = self.eval(lhs)?;
                let r = self.eval(rhs)?;
                self.binary(*op, l, r, *return_bool, matching.as_ref())
            }
        }
    }

    /// An instant vector selector; with `timestamps`, each value is its sample's time (s).
    fn vector_selector(&mut self, s: &Selector, timestamps: bool) -> Result<Vec<Row>, Error> {
        let at = self.at(s.at);
        let (lo, hi) = self.refs(s.offset, at);
        let lookback = self.opts.lookback_ms;
        let data = self.load(&s.matchers, lo - lookback + 1, hi)?;
        self.charge(data.len().saturating_mul(self.n))?;
        self.spend(data.len().saturating_mul(self.n))?;
        let mut rows = Vec::with_capacity(data.len());
        for series in data {
            let smp = &series.samples;
            let mut vals = vec![None; self.n];
            let mut any = false;
            for (i, slot) in vals.iter_mut().enumerate() {
                let r = at.unwrap_or_else(|| self.t(i)) - s.offset;
                let idx = smp.partition_point(|x| x.0 <= r);
                if idx == 0 {
                    continue;
                }
                let (t, v) = smp[idx - 1];
                if t <= r - lookback || is_stale(v) {
                    continue;
                }
                *slot = Some(if timestamps { t as f64 / 1000.0 } else { v });
                any = true;
            }
            if any {
                rows.push(Row { labels: (*series.labels).clone(), vals });
            }
        }
        Ok(rows)
    }

    fn matrix_selector(&mut self, s: &Selector, range: i64) -> Result<MatrixVal, Error> {
        let at = self.at(s.at);
        let (lo, hi) = self.refs(s.offset, at);
        let data = self.load(&s.matchers, lo - range + 1, hi)?;
        let series = data
            .into_iter()
            .map(|x| {
                // In place: without stale markers (the usual case) nothing moves.
                let mut samples = x.samples;
                samples.retain(|s| !is_stale(s.1));
                ((*x.labels).clone(), samples)
            })
            .collect();
        Ok(MatrixVal { series, range, offset: s.offset, at })
    }

    fn subquery(
        &mut self,
        expr: &Expr,
        range: i64,
        step: Option<i64>,
        offset: i64,
        at: Option<At>,
    ) -> Result<MatrixVal, Error> {
        let step = step.unwrap_or(self.opts.default_step_ms).max(1);
        let at = self.at(at);
        let (lo, hi) = self.refs(offset, at);
        // The first step after `lo - range` that is a multiple of the step (as Prometheus).
        let from = lo - range;
        let mut start = step * (from / step);
        if start <= from {
            start += step;
        }
        // A subquery's steps are not bounded the way a range query's are (11,000): `[1000d:1ms]`
        // asks for 86 billion, and allocating one vector of them aborted the process. Each
        // step is a sample the inner evaluation holds, as Prometheus counts them.
        let steps = (hi.max(start) - start) / step + 1;
        self.charge(usize::try_from(steps).unwrap_or(usize::MAX))?;
        let mut inner =
            Ev::new(self.q, start, hi.max(start), step, self.query_start, self.query_end, self.opts);
        inner.samples = self.samples;
        inner.deadline = self.deadline;
        inner.query_step = self.query_step;
        let v = inner.eval(expr)?;
        self.samples = inner.samples;
        let rows = match v {
            Val::Vector(rows) => rows,
            Val::Scalar(v) => vec![Row { labels: Vec::new(), vals: v.into_iter().map(Some).collect() }],
            _ => return Err(Error::Invalid("subquery is only allowed on instant vector".into())),
        };
        let series = rows
            .into_iter()
            .map(|r| {
                let s: Vec<Sample> =
                    r.vals.iter().enumerate().filter_map(|(i, v)| v.map(|v| (inner.t(i), v))).collect();
                (r.labels, s)
            })
            .collect();
        Ok(MatrixVal { series, range, offset, at })
    }

    fn scalar_arg(&mut self, e: &Expr) -> Result<Vec<f64>, Error> {
        match self.eval(e)? {
            Val::Scalar(v) => Ok(v),
            _ => Err(Error::Invalid("expected a scalar".into())),
        }
    }

    /// An instant-vector argument; whatever takes it does work in proportion to its rows.
    fn vector_arg(&mut self, e: &Expr) -> Result<Vec<Row>, Error> {
        match self.eval(e)? {
            Val::Vector(v) => {
                self.spend(v.len().saturating_mul(self.n))?;
                Ok(v)
            }
            _ => Err(Error::Invalid("expected an instant vector".into())),
        }
    }

    fn string_arg(&mut self, e: &Expr) -> Result<String, Error> {
        match unwrap_paren(e) {
            Expr::Str(s) => Ok(s.clone()),
            _ => Err(Error::Invalid("expected a string literal".into())),
        }
    }

    fn call(&mut self, func: &'static str, args: &[Expr]) -> Result<Val, Error> {
        let n = self.n;
        match func {
            "time" => return Ok(Val::Scalar((0..n).map(|i| self.t(i) as f64 / 1000.0).collect())),
            "step" => return Ok(Val::Scalar(vec![self.query_step as f64 / 1000.0; n])),
            "range" => return Ok(Val::Scalar(vec![(self.query_end - self.query_start) as f64 / 1000.0; n])),
            "start" => return Ok(Val::Scalar(vec![self.query_start as f64 / 1000.0; n])),
            "end" => return Ok(Val::Scalar(vec![self.query_end as f64 / 1000.0; n])),
            "min_of" | "max_of" => {
                let a = self.scalar_arg(&args[0])?;
                let b = self.scalar_arg(&args[1])?;
                let f = if func == "min_of" { f64::min } else { f64::max };
                // Go's math.Min/Max: NaN wins.
                return Ok(Val::Scalar(
                    a.into_iter()
                        .zip(b)
                        .map(|(x, y)| if x.is_nan() || y.is_nan() { f64::NAN } else { f(x, y) })
                        .collect(),
                ));
            }
            "pi" => return Ok(Val::Scalar(vec![std::f64::consts::PI; n])),
            "vector" => {
                let v = self.scalar_arg(&args[0])?;
                return Ok(Val::Vector(vec![Row {
                    labels: Vec::new(),
                    vals: v.into_iter().map(Some).collect(),
                }]));
            }
            "scalar" => {
                let rows = self.vector_arg(&args[0])?;
                let out = (0..n)
                    .map(|i| {
                        let mut present = rows.iter().filter_map(|r| r.vals[i]);
                        match (present.next(), present.next()) {
                            (Some(v), None) => v,
                            _ => f64::NAN,
                        }
                    })
                    .collect();
                return Ok(Val::Scalar(out));
            }
            "timestamp" => {
                let rows = match unwrap_paren(&args[0]) {
                    Expr::Selector(s) => self.vector_selector(s, true)?,
                    other => {
                        let rows = self.vector_arg(other)?;
                        rows.into_iter()
                            .map(|r| Row {
                                vals: r
                                    .vals
                                    .iter()
                                    .enumerate()
                                    .map(|(i, v)| v.map(|_| self.t(i) as f64 / 1000.0))
                                    .collect(),
                                labels: r.labels,
                            })
                            .collect()
                    }
                };
                let rows =
                    rows.into_iter().map(|r| Row { labels: drop_name(r.labels), vals: r.vals }).collect();
                return Ok(Val::Vector(merge(rows, n)?));
            }
            "minute" | "hour" | "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month"
            | "month" | "year" => {
                let rows = if args.is_empty() {
                    vec![Row {
                        labels: Vec::new(),
                        vals: (0..n).map(|i| Some(self.t(i) as f64 / 1000.0)).collect(),
                    }]
                } else {
                    self.vector_arg(&args[0])?
                };
                return map_values(rows, n, |_, x| Some(functions::date_fn(func, x)));
            }
            "round" => {
                let rows = self.vector_arg(&args[0])?;
                let to = match args.get(1) {
                    Some(a) => self.scalar_arg(a)?,
                    None => vec![1.0; n],
                };
                // Prometheus multiplies by the inverse: fewer floating-point surprises.
                return map_values(rows, n, |i, x| {
                    let inv = 1.0 / to[i];
                    Some((x * inv + 0.5).floor() / inv)
                });
            }
            "clamp" | "clamp_min" | "clamp_max" => {
                let rows = self.vector_arg(&args[0])?;
                let (lo, hi) = match func {
                    "clamp" => (self.scalar_arg(&args[1])?, self.scalar_arg(&args[2])?),
                    "clamp_min" => (self.scalar_arg(&args[1])?, vec![f64::INFINITY; n]),
                    _ => (vec![f64::NEG_INFINITY; n], self.scalar_arg(&args[1])?),
                };
                return map_values(rows, n, |i, x| (hi[i] >= lo[i]).then(|| lo[i].max(hi[i].min(x))));
            }
            "sort_by_label" | "sort_by_label_desc" => {
                let mut rows = self.vector_arg(&args[0])?;
                let names: Vec<String> =
                    args[1..].iter().map(|a| self.string_arg(a)).collect::<Result<_, _>>()?;
                let desc = func == "sort_by_label_desc";
                rows.sort_by(|a, b| {
                    let mut o = std::cmp::Ordering::Equal;
                    for n in &names {
                        o = functions::natural_cmp(get(&a.labels, n), get(&b.labels, n));
                        if o != std::cmp::Ordering::Equal {
                            break;
                        }
                    }
                    let o = o.then_with(|| a.labels.cmp(&b.labels));
                    if desc {
                        o.reverse()
                    } else {
                        o
                    }
                });
                return Ok(Val::Vector(rows));
            }
            "histogram_quantile" => {
                let q = self.scalar_arg(&args[0])?;
                let rows = self.vector_arg(&args[1])?;
                // Buckets grouped by their labels without `le` (and the name).
                let mut groups: Vec<(Labels, Vec<(f64, usize)>)> = Vec::new();
                for (ri, r) in rows.iter().enumerate() {
                    let le = get(&r.labels, "le");
                    let Ok(upper) = (if le == "+Inf" { Ok(f64::INFINITY) } else { le.parse::<f64>() }) else {
                        continue;
                    };
                    let key: Labels =
                        r.labels.iter().filter(|(k, _)| k != "le" && k != "__name__").cloned().collect();
                    match groups.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, b)) => b.push((upper, ri)),
                        None => groups.push((key, vec![(upper, ri)])),
                    }
                }
                let mut out = Out::new(n);
                for (labels, members) in &groups {
                    for (i, &qi) in q.iter().enumerate() {
                        let mut buckets: Vec<(f64, f64)> = members
                            .iter()
                            .filter_map(|&(le, ri)| rows[ri].vals[i].map(|c| (le, c)))
                            .collect();
                        if buckets.is_empty() {
                            continue;
                        }
                        out.put(labels, i, functions::bucket_quantile(qi, &mut buckets))?;
                    }
                }
                return Ok(Val::Vector(out.rows));
            }
            "sort" | "sort_desc" => {
                let mut rows = self.vector_arg(&args[0])?;
                let desc = func == "sort_desc";
                // NaNs last either way (as Prometheus).
                rows.sort_by(|a, b| {
                    let (x, y) = (a.vals[0].unwrap_or(f64::NAN), b.vals[0].unwrap_or(f64::NAN));
                    match (x.is_nan(), y.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ if desc => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
                        _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
                    }
                });
                return Ok(Val::Vector(rows));
            }
            "label_replace" => {
                let rows = self.vector_arg(&args[0])?;
                let dst = self.string_arg(&args[1])?;
                let repl = self.string_arg(&args[2])?;
                let src = self.string_arg(&args[3])?;
                let re_src = self.string_arg(&args[4])?;
                let re = regex::Regex::new(&format!("^(?s:{re_src})$")).map_err(|e| {
                    Error::Invalid(format!("invalid regular expression in label_replace(): {e}"))
                })?;
                if !valid_label_name(&dst) {
                    return Err(Error::Invalid(format!(
                        "invalid destination label name in label_replace(): {dst}"
                    )));
                }
                let rows = rows
                    .into_iter()
                    .map(|mut r| {
                        let v = get(&r.labels, &src).to_string();
                        if let Some(c) = re.captures(&v) {
                            let mut out = String::new();
                            c.expand(&go_template(&repl), &mut out);
                            set(&mut r.labels, &dst, &out);
                        }
                        r
                    })
                    .collect();
                return Ok(Val::Vector(merge(rows, n)?));
            }
            "label_join" => {
                let rows = self.vector_arg(&args[0])?;
                let dst = self.string_arg(&args[1])?;
                let sep = self.string_arg(&args[2])?;
                let srcs: Vec<String> =
                    args[3..].iter().map(|a| self.string_arg(a)).collect::<Result<_, _>>()?;
                if !valid_label_name(&dst) {
                    return Err(Error::Invalid(format!(
                        "invalid destination label name in label_join(): {dst}"
                    )));
                }
                let rows = rows
                    .into_iter()
                    .map(|mut r| {
                        let joined = srcs.iter().map(|s| get(&r.labels, s)).collect::<Vec<_>>().join(&sep);
                        set(&mut r.labels, &dst, &joined);
                        r
                    })
                    .collect();
                return Ok(Val::Vector(merge(rows, n)?));
            }
            "absent" => {
                let rows = self.vector_arg(&args[0])?;
                let labels = absent_labels(&args[0]);
                let vals: Vec<Option<f64>> =
                    (0..n).map(|i| (!rows.iter().any(|r| r.vals[i].is_some())).then_some(1.0)).collect();
                let rows =
                    if vals.iter().any(Option::is_some) { vec![Row { labels, vals }] } else { Vec::new() };
                return Ok(Val::Vector(rows));
            }
            _ => {}
        }
        if functions::math_fn(func, 0.0).is_some() {
            let rows = self.vector_arg(&args[0])?;
            return map_values(rows, n, |_, x| functions::math_fn(func, x));
        }
        // Range-vector functions.
        let (matrix_arg, param) = match func {
            "quantile_over_time" => (&args[1], Some(self.scalar_arg(&args[0])?)),
            "predict_linear" => (&args[0], Some(self.scalar_arg(&args[1])?)),
            _ => (&args[0], None),
        };
        let m = match self.eval(matrix_arg)? {
            Val::Matrix(m) => m,
            _ => return Err(Error::Invalid(format!("expected a range vector in call to {func}"))),
        };
        if func == "absent_over_time" {
            // Each series' samples are in time order: a binary search per series and step
            // (a scan of every sample at every step was quadratic).
            let mut vals = Vec::with_capacity(n);
            for i in 0..n {
                self.spend(m.series.len())?;
                let (lo, hi) = m.bounds(self, i);
                let present = m.series.iter().any(|(_, s)| {
                    let j = s.partition_point(|x| x.0 <= lo);
                    j < s.len() && s[j].0 <= hi
                });
                vals.push((!present).then_some(1.0));
            }
            let labels = match unwrap_paren(matrix_arg) {
                Expr::Matrix(s, _) => labels_of_equal_matchers(&s.matchers),
                _ => Vec::new(),
            };
            let rows = if vals.iter().any(Option::is_some) { vec![Row { labels, vals }] } else { Vec::new() };
            return Ok(Val::Vector(rows));
        }
        let keep = functions::keeps_name(func);
        self.charge(m.series.len().saturating_mul(n))?;
        let mut rows = Vec::with_capacity(m.series.len());
        for (labels, samples) in &m.series {
            let mut vals = vec![None; n];
            let mut any = false;
            // Windows only move forward with the steps: two cursors instead of two binary
            // searches per step.
            let (mut a, mut b) = (0, 0);
            for (i, slot) in vals.iter_mut().enumerate() {
                let (lo, hi) = m.bounds(self, i);
                while a < samples.len() && samples[a].0 <= lo {
                    a += 1;
                }
                b = b.max(a);
                while b < samples.len() && samples[b].0 <= hi {
                    b += 1;
                }
                if a >= b {
                    continue;
                }
                // Windows overlap when the range is longer than the step, so this work grows
                // with both: the deadline's main reason.
                self.spend(b - a)?;
                let w =
                    Window { samples: &samples[a..b], start: lo, end: hi, range: m.range, eval_t: self.t(i) };
                let p = param.as_ref().map_or(0.0, |p| p[i]);
                *slot = functions::range_fn(func, &w, p);
                any |= slot.is_some();
            }
            if any {
                rows.push(Row {
                    labels: if keep { labels.clone() } else { drop_name(labels.clone()) },
                    vals,
                });
            }
        }
        Ok(Val::Vector(merge(rows, n)?))
    }

    fn aggregate(
        &mut self,
        op: AggOp,
        expr: &Expr,
        param: Option<&Expr>,
        grouping: &[String],
        without: bool,
    ) -> Result<Val, Error> {
        let n = self.n;
        let (scalar_param, label_param) = match (op, param) {
            (AggOp::CountValues, Some(p)) => (None, Some(self.string_arg(p)?)),
            (_, Some(p)) => (Some(self.scalar_arg(p)?), None),
            _ => (None, None),
        };
        let rows = self.vector_arg(expr)?;
        // count_values groups by its value label too (Prometheus appends it to `by`).
        let mut grouping = grouping.to_vec();
        if let (AggOp::CountValues, Some(l), false) = (op, &label_param, without) {
            grouping.push(l.clone());
        }
        let grouping = &grouping;
        let group_labels = |l: &Labels| -> Labels {
            if without {
                l.iter().filter(|(k, _)| k != "__name__" && !grouping.contains(k)).cloned().collect()
            } else {
                l.iter().filter(|(k, _)| grouping.contains(k)).cloned().collect()
            }
        };
        if op == AggOp::CountValues {
            let label = label_param.unwrap_or_default();
            if !valid_label_name(&label) {
                return Err(Error::Invalid(format!("invalid label name {label:?}")));
            }
            let mut out = Out::new(n);
            for i in 0..n {
                let mut counts: Vec<(Labels, f64)> = Vec::new();
                for r in &rows {
                    let Some(v) = r.vals[i] else { continue };
                    let mut l = r.labels.clone();
                    set(&mut l, &label, &format_float(v));
                    let g = group_labels(&l);
                    match counts.iter_mut().find(|(k, _)| *k == g) {
                        Some((_, c)) => *c += 1.0,
                        None => counts.push((g, 1.0)),
                    }
                }
                for (g, c) in counts {
                    out.put(&g, i, c)?;
                }
            }
            return Ok(Val::Vector(out.rows));
        }
        // Group of each input row.
        let mut keys: HashMap<Labels, usize> = HashMap::new();
        let mut groups: Vec<Labels> = Vec::new();
        let row_group: Vec<usize> = rows
            .iter()
            .map(|r| {
                let g = group_labels(&r.labels);
                *keys.entry(g.clone()).or_insert_with(|| {
                    groups.push(g);
                    groups.len() - 1
                })
            })
            .collect();
        if matches!(op, AggOp::Topk | AggOp::Bottomk) {
            let k = scalar_param.unwrap_or_default();
            let mut out_vals: Vec<Vec<Option<f64>>> = vec![vec![None; n]; rows.len()];
            // Row order for an instant query: per group, best first.
            let mut order: Vec<usize> = Vec::new();
            for i in 0..n {
                let kf = k[i];
                if kf.is_nan() {
                    return Err(Error::Invalid(format!(
                        "Parameter value is NaN for {}",
                        if op == AggOp::Topk { "topk" } else { "bottomk" }
                    )));
                }
                if kf < 1.0 {
                    continue;
                }
                let kk = if kf >= 9.0e18 { usize::MAX } else { kf as usize };
                let mut by_group: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
                for (ri, r) in rows.iter().enumerate() {
                    if r.vals[i].is_some() {
                        by_group[row_group[ri]].push(ri);
                    }
                }
                for members in by_group {
                    let vals: Vec<(usize, f64)> =
                        members.iter().map(|&ri| (ri, rows[ri].vals[i].unwrap_or(f64::NAN))).collect();
                    let m = k_select(&vals, kk, op == AggOp::Topk);
                    for &ri in m.iter() {
                        out_vals[ri][i] = rows[ri].vals[i];
                        if n == 1 {
                            order.push(ri);
                        }
                    }
                }
            }
            let mut rows_out: Vec<Row> = Vec::new();
            if n == 1 {
                for ri in order {
                    rows_out.push(Row { labels: rows[ri].labels.clone(), vals: out_vals[ri].clone() });
                }
            } else {
                for (ri, vals) in out_vals.into_iter().enumerate() {
                    if vals.iter().any(Option::is_some) {
                        rows_out.push(Row { labels: rows[ri].labels.clone(), vals });
                    }
                }
            }
            return Ok(Val::Vector(rows_out));
        }
        let mut out: Vec<Row> =
            groups.iter().map(|g| Row { labels: g.clone(), vals: vec![None; n] }).collect();
        #[derive(Clone, Default)]
        struct Acc {
            seen: bool,
            value: f64,
            c: f64,
            count: f64,
            mean: f64,
            incremental: bool,
            values: Vec<f64>,
        }
        for i in 0..n {
            let mut acc: Vec<Acc> = vec![Acc::default(); groups.len()];
            for (ri, r) in rows.iter().enumerate() {
                let Some(f) = r.vals[i] else { continue };
                let a = &mut acc[row_group[ri]];
                if !a.seen {
                    *a = Acc { seen: true, value: f, count: 1.0, mean: f, ..Acc::default() };
                    match op {
                        AggOp::Group => a.value = 1.0,
                        AggOp::Stddev | AggOp::Stdvar => {
                            // Welford's update from zero, so a NaN first value yields NaN.
                            let mean = f;
                            (a.count, a.mean, a.value) = (1.0, mean, f * (f - mean));
                        }
                        AggOp::Quantile => a.values.push(f),
                        _ => {}
                    }
                    continue;
                }
                match op {
                    AggOp::Sum => (a.value, a.c) = kahan_inc(f, a.value, a.c),
                    AggOp::Avg => {
                        a.count += 1.0;
                        if !a.incremental {
                            let (nv, nc) = kahan_inc(f, a.value, a.c);
                            if !nv.is_infinite() {
                                (a.value, a.c) = (nv, nc);
                                continue;
                            }
                            a.incremental = true;
                            a.mean = a.value / (a.count - 1.0);
                            a.c /= a.count - 1.0;
                        }
                        if a.mean.is_infinite() {
                            if f.is_infinite() && (a.mean > 0.0) == (f > 0.0) {
                                continue;
                            }
                            if !f.is_infinite() && !f.is_nan() {
                                continue;
                            }
                        }
                        let current = a.mean + a.c;
                        (a.mean, a.c) = kahan_inc(f / a.count - current / a.count, a.mean, a.c);
                    }
                    AggOp::Max => {
                        if a.value < f || a.value.is_nan() {
                            a.value = f;
                        }
                    }
                    AggOp::Min => {
                        if a.value > f || a.value.is_nan() {
                            a.value = f;
                        }
                    }
                    AggOp::Count => a.count += 1.0,
                    AggOp::Group => {}
                    AggOp::Stddev | AggOp::Stdvar => {
                        a.count += 1.0;
                        let delta = f - a.mean;
                        a.mean += delta / a.count;
                        a.value += delta * (f - a.mean);
                    }
                    AggOp::Quantile => a.values.push(f),
                    AggOp::Topk | AggOp::Bottomk | AggOp::CountValues => {}
                }
            }
            for (g, a) in acc.iter_mut().enumerate() {
                if !a.seen {
                    continue;
                }
                let v = match op {
                    AggOp::Sum => {
                        if a.value.is_infinite() {
                            a.value
                        } else {
                            a.value + a.c
                        }
                    }
                    AggOp::Avg if a.incremental => a.mean + a.c,
                    AggOp::Avg => (a.value + a.c) / a.count,
                    AggOp::Count => a.count,
                    AggOp::Stdvar => a.value / a.count,
                    AggOp::Stddev => (a.value / a.count).sqrt(),
                    AggOp::Quantile => {
                        quantile(scalar_param.as_ref().map_or(f64::NAN, |p| p[i]), &mut a.values)
                    }
                    _ => a.value,
                };
                out[g].vals[i] = Some(v);
            }
        }
        out.retain(|r| r.vals.iter().any(Option::is_some));
        Ok(Val::Vector(out))
    }

    fn binary(
        &mut self,
        op: BinOp,
        l: Val,
        r: Val,
        return_bool: bool,
        m: Option<&Matching>,
    ) -> Result<Val, Error> {
        let n = self.n;
        let rows = |v: &Val| if let Val::Vector(r) = v { r.len() } else { 1 };
        self.spend((rows(&l) + rows(&r)).saturating_mul(n))?;
        match (l, r) {
            (Val::Scalar(a), Val::Scalar(b)) => Ok(Val::Scalar(
                a.into_iter()
                    .zip(b)
                    .map(|(x, y)| {
                        let (v, keep) = elem(op, x, y);
                        if op.is_comparison() {
                            if keep {
                                1.0
                            } else {
                                0.0
                            }
                        } else {
                            v
                        }
                    })
                    .collect(),
            )),
            (Val::Vector(rows), Val::Scalar(s)) => self.vector_scalar(op, rows, &s, false, return_bool),
            (Val::Scalar(s), Val::Vector(rows)) => self.vector_scalar(op, rows, &s, true, return_bool),
            (Val::Vector(lhs), Val::Vector(rhs)) => {
                let m = m.cloned().unwrap_or(Matching {
                    card: if op.is_set() { Card::ManyToMany } else { Card::OneToOne },
                    on: false,
                    labels: Vec::new(),
                    include: Vec::new(),
                });
                let sig = |l: &Labels| -> Labels {
                    if m.on {
                        l.iter().filter(|(k, _)| m.labels.contains(k)).cloned().collect()
                    } else {
                        l.iter().filter(|(k, _)| k != "__name__" && !m.labels.contains(k)).cloned().collect()
                    }
                };
                let lsig: Vec<Labels> = lhs.iter().map(|r| sig(&r.labels)).collect();
                let rsig: Vec<Labels> = rhs.iter().map(|r| sig(&r.labels)).collect();
                if op.is_set() {
                    return self.set_op(op, lhs, rhs, &lsig, &rsig);
                }
                let mut out = Out::new(n);
                // The "many" side is on the left (swap for group_right).
                let swap = m.card == Card::OneToMany;
                let (many, one, msig, osig) =
                    if swap { (&rhs, &lhs, &rsig, &lsig) } else { (&lhs, &rhs, &lsig, &rsig) };
                let mut metric_cache: HashMap<(usize, usize), Labels> = HashMap::new();
                for i in 0..n {
                    let mut one_side: HashMap<&Labels, usize> = HashMap::new();
                    for (oi, o) in one.iter().enumerate() {
                        if o.vals[i].is_none() {
                            continue;
                        }
                        if let Some(prev) = one_side.insert(&osig[oi], oi) {
                            let side = if swap { "left" } else { "right" };
                            return Err(Error::Invalid(format!(
                                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                                fmt_labels(&osig[oi]), fmt_labels(&o.labels), fmt_labels(&one[prev].labels)
                            )));
                        }
                    }
                    let mut matched: HashMap<&Labels, HashSet<Labels>> = HashMap::new();
                    for (mi, mrow) in many.iter().enumerate() {
                        let Some(mv) = mrow.vals[i] else { continue };
                        let Some(&oi) = one_side.get(&msig[mi]) else { continue };
                        let ov = one[oi].vals[i].unwrap_or(f64::NAN);
                        let (x, y) = if swap { (ov, mv) } else { (mv, ov) };
                        let (mut v, keep) = elem(op, x, y);
                        let metric = metric_cache
                            .entry((mi, oi))
                            .or_insert_with(|| {
                                result_metric(&mrow.labels, &one[oi].labels, op, &m, return_bool)
                            })
                            .clone();
                        // Matching errors count even for samples a comparison filters out (as
                        // Prometheus: the error must not depend on the values).
                        let seen = matched.entry(&msig[mi]).or_default();
                        if m.card == Card::OneToOne {
                            if !seen.is_empty() {
                                return Err(Error::Invalid(
                                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                                        .into(),
                                ));
                            }
                            seen.insert(metric.clone());
                        } else if !seen.insert(metric.clone()) {
                            return Err(Error::Invalid(
                                "multiple matches for labels: grouping labels must ensure unique matches"
                                    .into(),
                            ));
                        }
                        if return_bool {
                            v = if keep { 1.0 } else { 0.0 };
                        } else if !keep {
                            continue;
                        }
                        out.put(&metric, i, v)?;
                    }
                }
                Ok(Val::Vector(out.rows))
            }
            _ => Err(Error::Invalid(format!("operator {} needs scalars or instant vectors", op.as_str()))),
        }
    }

    fn vector_scalar(
        &mut self,
        op: BinOp,
        rows: Vec<Row>,
        s: &[f64],
        swap: bool,
        return_bool: bool,
    ) -> Result<Val, Error> {
        let drop = !op.is_comparison() || return_bool;
        let rows = rows
            .into_iter()
            .map(|r| {
                let vals = r
                    .vals
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let v = v?;
                        let (x, y) = if swap { (s[i], v) } else { (v, s[i]) };
                        let (mut out, keep) = elem(op, x, y);
                        if op.is_comparison() {
                            out = v;
                        }
                        if return_bool {
                            return Some(if keep { 1.0 } else { 0.0 });
                        }
                        keep.then_some(out)
                    })
                    .collect();
                Row { labels: if drop { drop_name(r.labels) } else { r.labels }, vals }
            })
            .filter(|r: &Row| r.vals.iter().any(Option::is_some))
            .collect();
        Ok(Val::Vector(merge(rows, self.n)?))
    }

    fn set_op(
        &mut self,
        op: BinOp,
        lhs: Vec<Row>,
        rhs: Vec<Row>,
        lsig: &[Labels],
        rsig: &[Labels],
    ) -> Result<Val, Error> {
        let n = self.n;
        let mut out = Out::new(n);
        for i in 0..n {
            let right: HashSet<&Labels> =
                rhs.iter().enumerate().filter(|(_, r)| r.vals[i].is_some()).map(|(k, _)| &rsig[k]).collect();
            let left: HashSet<&Labels> =
                lhs.iter().enumerate().filter(|(_, r)| r.vals[i].is_some()).map(|(k, _)| &lsig[k]).collect();
            for (k, r) in lhs.iter().enumerate() {
                let Some(v) = r.vals[i] else { continue };
                let keep = match op {
                    BinOp::And => right.contains(&lsig[k]),
                    BinOp::Unless => !right.contains(&lsig[k]),
                    _ => true,
                };
                if keep {
                    out.put(&r.labels, i, v)?;
                }
            }
            if op == BinOp::Or {
                for (k, r) in rhs.iter().enumerate() {
                    let Some(v) = r.vals[i] else { continue };
                    if !left.contains(&rsig[k]) {
                        out.put(&r.labels, i, v)?;
                    }
                }
            }
        }
        // Keep the left side's series first, as Prometheus lists them.
        Ok(Val::Vector(out.rows))
    }
}

/// topk/bottomk of one group at one step, exactly as Prometheus picks them: a binary heap of at
/// most `k` samples in input order (Go's `container/heap`), an element replaced only by a
/// strictly better one, then sorted best first — so ties resolve as in Prometheus.
fn k_select(vals: &[(usize, f64)], k: usize, top: bool) -> Vec<usize> {
    // The heap's "less": for topk the smallest value (NaN counts as smallest) is on top.
    let less = |a: f64, b: f64| -> bool {
        if top {
            a.is_nan() || a < b
        } else {
            a.is_nan() || a > b
        }
    };
    let up = |h: &mut Vec<(usize, f64)>, mut j: usize| {
        while j > 0 {
            let i = (j - 1) / 2;
            if !less(h[j].1, h[i].1) {
                break;
            }
            h.swap(i, j);
            j = i;
        }
    };
    let down = |h: &mut Vec<(usize, f64)>, mut i: usize| {
        let n = h.len();
        loop {
            let j1 = 2 * i + 1;
            if j1 >= n {
                break;
            }
            let mut j = j1;
            if j1 + 1 < n && less(h[j1 + 1].1, h[j1].1) {
                j = j1 + 1;
            }
            if !less(h[j].1, h[i].1) {
                break;
            }
            h.swap(i, j);
            i = j;
        }
    };
    let mut h: Vec<(usize, f64)> = Vec::with_capacity(k.min(vals.len()));
    for &(ri, v) in vals {
        if h.len() < k {
            h.push((ri, v));
            let last = h.len() - 1;
            up(&mut h, last);
        } else if !h.is_empty() {
            let head = h[0].1;
            let better = if top { head < v } else { head > v } || (head.is_nan() && !v.is_nan());
            if better {
                h[0] = (ri, v);
                if k > 1 {
                    down(&mut h, 0);
                }
            }
        }
    }
    // Best first (Prometheus sorts the heap in reverse).
    h.sort_by(|a, b| {
        if less(b.1, a.1) {
            std::cmp::Ordering::Less
        } else if less(a.1, b.1) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    h.into_iter().map(|(ri, _)| ri).collect()
}

/// The value of `x op y` and, for comparisons, whether it holds.
fn elem(op: BinOp, x: f64, y: f64) -> (f64, bool) {
    match op {
        BinOp::Add => (x + y, true),
        BinOp::Sub => (x - y, true),
        BinOp::Mul => (x * y, true),
        BinOp::Div => (x / y, true),
        BinOp::Mod => (x % y, true),
        BinOp::Pow => (x.powf(y), true),
        BinOp::Atan2 => (x.atan2(y), true),
        BinOp::Eql => (x, x == y),
        BinOp::Neq => (x, x != y),
        BinOp::Lss => (x, x < y),
        BinOp::Gtr => (x, x > y),
        BinOp::Lte => (x, x <= y),
        BinOp::Gte => (x, x >= y),
        BinOp::And | BinOp::Or | BinOp::Unless => (x, true),
    }
}

fn result_metric(lhs: &Labels, rhs: &Labels, op: BinOp, m: &Matching, return_bool: bool) -> Labels {
    let mut l = lhs.clone();
    if !op.is_comparison() || return_bool {
        l.retain(|(k, _)| k != "__name__");
    }
    if m.card == Card::OneToOne {
        if m.on {
            l.retain(|(k, _)| m.labels.contains(k));
        } else {
            l.retain(|(k, _)| !m.labels.contains(k));
        }
    }
    for name in &m.include {
        set(&mut l, name, get(rhs, name));
    }
    l
}

fn fmt_labels(l: &Labels) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn valid_label_name(s: &str) -> bool {
    !s.is_empty()
}

/// Labels `absent()` reports: the selector's equality matchers (not the name).
fn absent_labels(e: &Expr) -> Labels {
    match unwrap_paren(e) {
        Expr::Selector(s) => labels_of_equal_matchers(&s.matchers),
        _ => Vec::new(),
    }
}

fn labels_of_equal_matchers(ms: &[Matcher]) -> Labels {
    let mut out: Labels = Vec::new();
    // A label named by more than one matcher has no single value to report.
    let mut dup: HashSet<String> = HashSet::new();
    let mut named: HashSet<&str> = HashSet::new();
    for m in ms {
        if !named.insert(&m.name) {
            dup.insert(m.name.clone());
        }
        if m.name == "__name__" || m.op != MatchOp::Eq {
            continue;
        }
        out.push((m.name.clone(), m.value.clone()));
    }
    out.retain(|(k, _)| !dup.contains(k));
    out.sort();
    out
}

/// Go's regexp template syntax (`$1`, `${1}`, `$name`) into the regex crate's (`${1}`, `${name}`):
/// in Go `$1x` names the group "1x"; the crate reads it the same way, so only escaping differs.
fn go_template(s: &str) -> String {
    s.to_string()
}
