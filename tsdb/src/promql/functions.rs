//! PromQL functions: signatures (checked at parse time) and the computations over one window
//! (range-vector functions) or one value (instant-vector functions), following Prometheus's
//! `promql/functions.go`.

use super::ast::ValueType::{self, Matrix, Scalar, String as Str, Vector};
use crate::codec::Sample;

pub struct Signature {
    pub name: &'static str,
    pub args: &'static [ValueType],
    pub min_args: usize,
    /// The last argument type repeats.
    pub variadic: bool,
    pub ret: ValueType,
}

macro_rules! sig {
    ($name:literal, [$($a:expr),*], $min:expr, $var:expr, $ret:expr) => {
        Signature { name: $name, args: &[$($a),*], min_args: $min, variadic: $var, ret: $ret }
    };
}

static SIGNATURES: &[Signature] = &[
    sig!("abs", [Vector], 1, false, Vector),
    sig!("absent", [Vector], 1, false, Vector),
    sig!("absent_over_time", [Matrix], 1, false, Vector),
    sig!("acos", [Vector], 1, false, Vector),
    sig!("acosh", [Vector], 1, false, Vector),
    sig!("asin", [Vector], 1, false, Vector),
    sig!("asinh", [Vector], 1, false, Vector),
    sig!("atan", [Vector], 1, false, Vector),
    sig!("atanh", [Vector], 1, false, Vector),
    sig!("avg_over_time", [Matrix], 1, false, Vector),
    sig!("ceil", [Vector], 1, false, Vector),
    sig!("changes", [Matrix], 1, false, Vector),
    sig!("clamp", [Vector, Scalar, Scalar], 3, false, Vector),
    sig!("clamp_max", [Vector, Scalar], 2, false, Vector),
    sig!("clamp_min", [Vector, Scalar], 2, false, Vector),
    sig!("cos", [Vector], 1, false, Vector),
    sig!("cosh", [Vector], 1, false, Vector),
    sig!("count_over_time", [Matrix], 1, false, Vector),
    sig!("day_of_month", [Vector], 0, false, Vector),
    sig!("day_of_week", [Vector], 0, false, Vector),
    sig!("day_of_year", [Vector], 0, false, Vector),
    sig!("days_in_month", [Vector], 0, false, Vector),
    sig!("deg", [Vector], 1, false, Vector),
    sig!("delta", [Matrix], 1, false, Vector),
    sig!("deriv", [Matrix], 1, false, Vector),
    sig!("end", [], 0, false, Scalar),
    sig!("exp", [Vector], 1, false, Vector),
    sig!("first_over_time", [Matrix], 1, false, Vector),
    sig!("floor", [Vector], 1, false, Vector),
    sig!("histogram_quantile", [Scalar, Vector], 2, false, Vector),
    sig!("hour", [Vector], 0, false, Vector),
    sig!("idelta", [Matrix], 1, false, Vector),
    sig!("increase", [Matrix], 1, false, Vector),
    sig!("irate", [Matrix], 1, false, Vector),
    sig!("label_join", [Vector, Str, Str, Str], 3, true, Vector),
    sig!("label_replace", [Vector, Str, Str, Str, Str], 5, false, Vector),
    sig!("last_over_time", [Matrix], 1, false, Vector),
    sig!("ln", [Vector], 1, false, Vector),
    sig!("log10", [Vector], 1, false, Vector),
    sig!("log2", [Vector], 1, false, Vector),
    sig!("mad_over_time", [Matrix], 1, false, Vector),
    sig!("max_of", [Scalar, Scalar], 2, false, Scalar),
    sig!("max_over_time", [Matrix], 1, false, Vector),
    sig!("min_of", [Scalar, Scalar], 2, false, Scalar),
    sig!("min_over_time", [Matrix], 1, false, Vector),
    sig!("minute", [Vector], 0, false, Vector),
    sig!("month", [Vector], 0, false, Vector),
    sig!("pi", [], 0, false, Scalar),
    sig!("predict_linear", [Matrix, Scalar], 2, false, Vector),
    sig!("present_over_time", [Matrix], 1, false, Vector),
    sig!("quantile_over_time", [Scalar, Matrix], 2, false, Vector),
    sig!("rad", [Vector], 1, false, Vector),
    sig!("range", [], 0, false, Scalar),
    sig!("rate", [Matrix], 1, false, Vector),
    sig!("resets", [Matrix], 1, false, Vector),
    sig!("round", [Vector, Scalar], 1, false, Vector),
    sig!("scalar", [Vector], 1, false, Scalar),
    sig!("sgn", [Vector], 1, false, Vector),
    sig!("sin", [Vector], 1, false, Vector),
    sig!("sinh", [Vector], 1, false, Vector),
    sig!("sort", [Vector], 1, false, Vector),
    sig!("sort_by_label", [Vector, Str], 1, true, Vector),
    sig!("sort_by_label_desc", [Vector, Str], 1, true, Vector),
    sig!("sort_desc", [Vector], 1, false, Vector),
    sig!("sqrt", [Vector], 1, false, Vector),
    sig!("start", [], 0, false, Scalar),
    sig!("stddev_over_time", [Matrix], 1, false, Vector),
    sig!("step", [], 0, false, Scalar),
    sig!("stdvar_over_time", [Matrix], 1, false, Vector),
    sig!("sum_over_time", [Matrix], 1, false, Vector),
    sig!("tan", [Vector], 1, false, Vector),
    sig!("tanh", [Vector], 1, false, Vector),
    sig!("time", [], 0, false, Scalar),
    sig!("timestamp", [Vector], 1, false, Vector),
    sig!("ts_of_first_over_time", [Matrix], 1, false, Vector),
    sig!("ts_of_last_over_time", [Matrix], 1, false, Vector),
    sig!("ts_of_max_over_time", [Matrix], 1, false, Vector),
    sig!("ts_of_min_over_time", [Matrix], 1, false, Vector),
    sig!("vector", [Scalar], 1, false, Vector),
    sig!("year", [Vector], 0, false, Vector),
];

pub fn signature(name: &str) -> Option<&'static Signature> {
    SIGNATURES.iter().find(|s| s.name == name)
}

/// Range-vector functions that keep the metric name (they pick a sample, like `offset`).
pub fn keeps_name(func: &str) -> bool {
    matches!(func, "last_over_time" | "first_over_time")
}

/// Kahan-Babuška summation step, as Prometheus's `kahansum.Inc`.
pub fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Prometheus's `quantile`: linear interpolation between the closest ranks.
pub fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()).reverse()));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0) as usize;
    let upper = (lower + 1).min(values.len() - 1);
    let weight = rank - rank.floor();
    values[lower] * (1.0 - weight) + values[upper] * weight
}

/// The window a range function sees at one step.
pub struct Window<'a> {
    pub samples: &'a [Sample],
    /// Exclusive start and inclusive end of the range, in ms.
    pub start: i64,
    pub end: i64,
    /// The range in ms.
    pub range: i64,
    /// The evaluation time (for predict_linear).
    pub eval_t: i64,
}

/// rate, increase, delta: Prometheus's `extrapolatedRate`.
fn extrapolated_rate(w: &Window, is_counter: bool, is_rate: bool) -> Option<f64> {
    let s = w.samples;
    if s.len() < 2 {
        return None;
    }
    let (first, last) = (s[0], s[s.len() - 1]);
    let mut result = last.1 - first.1;
    if is_counter {
        for p in s.windows(2) {
            if p[1].1 < p[0].1 {
                result += p[0].1;
            }
        }
    }
    let mut to_start = (first.0 - w.start) as f64 / 1000.0;
    let mut to_end = (w.end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let avg = sampled / (s.len() - 1) as f64;
    let threshold = avg * 1.1;
    if to_start >= threshold {
        to_start = avg / 2.0;
    }
    if is_counter {
        let mut to_zero = to_start;
        if result > 0.0 && first.1 >= 0.0 {
            to_zero = sampled * (first.1 / result);
        }
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = avg / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if is_rate {
        factor /= w.range as f64 / 1000.0;
    }
    Some(result * factor)
}

/// irate and idelta: the last two samples.
fn instant_value(w: &Window, is_rate: bool) -> Option<f64> {
    let s = w.samples;
    if s.len() < 2 {
        return None;
    }
    let (prev, last) = (s[s.len() - 2], s[s.len() - 1]);
    let interval = last.0 - prev.0;
    if interval == 0 {
        return None;
    }
    let mut v = if is_rate && last.1 < prev.1 { last.1 } else { last.1 - prev.1 };
    if is_rate {
        v /= interval as f64 / 1000.0;
    }
    Some(v)
}

/// Least-squares slope and intercept at `intercept_t` (Prometheus's `linearRegression`).
fn linear_regression(s: &[Sample], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut cx, mut sum_y, mut cy, mut sum_xy, mut cxy, mut sum_x2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init_y = s[0].1;
    let mut const_y = true;
    for (i, &(t, v)) in s.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_t) as f64 / 1000.0;
        (sum_x, cx) = kahan_inc(x, sum_x, cx);
        (sum_y, cy) = kahan_inc(v, sum_y, cy);
        (sum_xy, cxy) = kahan_inc(x * v, sum_xy, cxy);
        (sum_x2, cx2) = kahan_inc(x * x, sum_x2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + cx, sum_y + cy, sum_xy + cxy, sum_x2 + cx2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

fn avg_over_time(s: &[Sample]) -> f64 {
    let (mut sum, mut count, mut mean, mut c) = (s[0].1, 1.0, 0.0, 0.0);
    let mut incremental = false;
    for &(_, f) in &s[1..] {
        count += 1.0;
        if !incremental {
            let (ns, nc) = kahan_inc(f, sum, c);
            if !ns.is_infinite() {
                (sum, c) = (ns, nc);
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(f / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
}

fn variance_over_time(s: &[Sample]) -> f64 {
    let (mut count, mut mean, mut cm, mut aux, mut ca) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, f) in s {
        count += 1.0;
        let delta = f - (mean + cm);
        (mean, cm) = kahan_inc(delta / count, mean, cm);
        (aux, ca) = kahan_inc(delta * (f - (mean + cm)), aux, ca);
    }
    (aux + ca) / count
}

/// A range-vector function over one window; None leaves no sample at this step.
/// `param` is the scalar argument of quantile_over_time and predict_linear.
pub fn range_fn(name: &str, w: &Window, param: f64) -> Option<f64> {
    let s = w.samples;
    if s.is_empty() {
        return None;
    }
    Some(match name {
        "rate" => return extrapolated_rate(w, true, true),
        "increase" => return extrapolated_rate(w, true, false),
        "delta" => return extrapolated_rate(w, false, false),
        "irate" => return instant_value(w, true),
        "idelta" => return instant_value(w, false),
        "deriv" => {
            if s.len() < 2 {
                return None;
            }
            linear_regression(s, s[0].0).0
        }
        "predict_linear" => {
            if s.len() < 2 {
                return None;
            }
            let (slope, intercept) = linear_regression(s, w.eval_t);
            slope * param + intercept
        }
        "avg_over_time" => avg_over_time(s),
        "sum_over_time" => {
            let (mut sum, mut c) = (0.0, 0.0);
            for &(_, f) in s {
                (sum, c) = kahan_inc(f, sum, c);
            }
            if sum.is_infinite() {
                sum
            } else {
                sum + c
            }
        }
        "count_over_time" => s.len() as f64,
        "min_over_time" => s.iter().fold(s[0].1, |m, &(_, f)| if f < m || m.is_nan() { f } else { m }),
        "max_over_time" => s.iter().fold(s[0].1, |m, &(_, f)| if f > m || m.is_nan() { f } else { m }),
        "last_over_time" => s[s.len() - 1].1,
        "first_over_time" => s[0].1,
        "ts_of_first_over_time" => s[0].0 as f64 / 1000.0,
        "ts_of_last_over_time" => s[s.len() - 1].0 as f64 / 1000.0,
        "ts_of_max_over_time" => {
            let (mut m, mut t) = (s[0].1, s[0].0);
            for &(ts, f) in s {
                if f >= m || m.is_nan() {
                    (m, t) = (f, ts);
                }
            }
            t as f64 / 1000.0
        }
        "ts_of_min_over_time" => {
            let (mut m, mut t) = (s[0].1, s[0].0);
            for &(ts, f) in s {
                if f <= m || m.is_nan() {
                    (m, t) = (f, ts);
                }
            }
            t as f64 / 1000.0
        }
        "mad_over_time" => {
            // A NaN sample makes the result NaN rather than being silently dropped.
            if s.iter().any(|x| x.1.is_nan()) {
                return Some(f64::NAN);
            }
            let mut v: Vec<f64> = s.iter().map(|x| x.1).collect();
            let median = quantile(0.5, &mut v);
            let mut dev: Vec<f64> = s.iter().map(|x| (x.1 - median).abs()).collect();
            quantile(0.5, &mut dev)
        }
        "present_over_time" => 1.0,
        "quantile_over_time" => {
            let mut v: Vec<f64> = s.iter().map(|x| x.1).collect();
            quantile(param, &mut v)
        }
        "stddev_over_time" => variance_over_time(s).sqrt(),
        "stdvar_over_time" => variance_over_time(s),
        "changes" => {
            s.windows(2).filter(|p| p[1].1 != p[0].1 && !(p[1].1.is_nan() && p[0].1.is_nan())).count() as f64
        }
        "resets" => s.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64,
        _ => return None,
    })
}

/// Prometheus's `BucketQuantile` over classic histogram buckets `(upper bound, cumulative
/// count)`: linear interpolation inside the bucket holding the rank; NaN without a `+Inf`
/// bucket or observations. Counts are made monotonic first (scrapes of separate series are not
/// atomic).
pub fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Buckets with the same bound are one bucket.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(le, c) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for b in merged.iter_mut() {
        if b.1 < max {
            b.1 = max;
        }
        max = b.1;
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 || observations.is_nan() {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1].partition_point(|x| x.1 < rank);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// Natural order of label values (numbers inside compare by value), as `sort_by_label` uses.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let i = x.iter().position(|c| !c.is_ascii_digit()).unwrap_or(x.len());
                let j = y.iter().position(|c| !c.is_ascii_digit()).unwrap_or(y.len());
                let (n, m) = (
                    std::str::from_utf8(&x[..i]).unwrap_or("0"),
                    std::str::from_utf8(&y[..j]).unwrap_or("0"),
                );
                let (nt, mt) = (n.trim_start_matches('0'), m.trim_start_matches('0'));
                let o = nt.len().cmp(&mt.len()).then_with(|| nt.cmp(mt));
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
                (x, y) = (&x[i..], &y[j..]);
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                (x, y) = (&x[1..], &y[1..]);
            }
        }
    }
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31) (Howard Hinnant's civil_from_days).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// The date functions of a Unix time in seconds (UTC).
pub fn date_fn(name: &str, secs: f64) -> f64 {
    if !secs.is_finite() {
        return f64::NAN;
    }
    let s = secs.floor() as i64;
    let days = s.div_euclid(86_400);
    let (y, m, d) = civil(days);
    match name {
        "minute" => (s.rem_euclid(3600) / 60) as f64,
        "hour" => (s.rem_euclid(86_400) / 3600) as f64,
        "day_of_month" => f64::from(d),
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_year" => {
            let (jan1, _, _) = (y, 1, 1);
            let start = days_from_civil(jan1, 1, 1);
            (days - start + 1) as f64
        }
        "days_in_month" => f64::from(match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }),
        "month" => f64::from(m),
        "year" => y as f64,
        _ => f64::NAN,
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Instant-vector math functions of one value.
pub fn math_fn(name: &str, v: f64) -> Option<f64> {
    Some(match name {
        "abs" => v.abs(),
        "ceil" => v.ceil(),
        "floor" => v.floor(),
        "exp" => v.exp(),
        "sqrt" => v.sqrt(),
        "ln" => v.ln(),
        "log2" => v.log2(),
        "log10" => v.log10(),
        "sin" => v.sin(),
        "cos" => v.cos(),
        "tan" => v.tan(),
        "asin" => v.asin(),
        "acos" => v.acos(),
        "atan" => v.atan(),
        "sinh" => v.sinh(),
        "cosh" => v.cosh(),
        "tanh" => v.tanh(),
        "asinh" => v.asinh(),
        "acosh" => v.acosh(),
        "atanh" => v.atanh(),
        "deg" => v * 180.0 / std::f64::consts::PI,
        "rad" => v * std::f64::consts::PI / 180.0,
        "sgn" => {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(date_fn("day_of_week", 0.0), 4.0); // a Thursday
        assert_eq!(date_fn("days_in_month", 1_709_164_800.0), 29.0); // 2024-02-29
        assert_eq!(date_fn("day_of_year", 1_735_603_200.0), 366.0); // 2024-12-31
        assert_eq!(date_fn("hour", 3600.0 * 25.0), 1.0);
    }

    #[test]
    fn classic_histogram_quantiles() {
        let b = || vec![(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (f64::INFINITY, 50.0)];
        assert!((bucket_quantile(0.5, &mut b()) - 0.4).abs() < 1e-12);
        assert_eq!(bucket_quantile(0.99, &mut b()), 1.0, "in the +Inf bucket: the highest finite bound");
        assert!((bucket_quantile(0.05, &mut b()) - 0.025).abs() < 1e-12);
        assert!(bucket_quantile(0.5, &mut [(0.1, 1.0), (0.5, 2.0)]).is_nan(), "no +Inf bucket");
        assert!(bucket_quantile(0.5, &mut [(0.1, 0.0), (f64::INFINITY, 0.0)]).is_nan(), "no observations");
        // Non-monotonic counts are fixed up, not trusted.
        let mut m = [(0.1, 10.0), (0.5, 8.0), (f64::INFINITY, 20.0)];
        assert!((bucket_quantile(0.5, &mut m) - 0.1).abs() < 1e-12);
        assert_eq!(bucket_quantile(-1.0, &mut b()), f64::NEG_INFINITY);
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["a10", "a9", "a1", "b", "a09x"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, vec!["a1", "a9", "a09x", "a10", "b"]);
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(0.5, &mut [1.0, 3.0, 2.0]), 2.0);
        assert_eq!(quantile(0.75, &mut [1.0, 2.0]), 1.75);
        assert_eq!(quantile(2.0, &mut [1.0]), f64::INFINITY);
        assert!(quantile(0.5, &mut []).is_nan());
    }
}
