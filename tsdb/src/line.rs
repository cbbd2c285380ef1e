//! InfluxDB line protocol (v2 reference: docs.influxdata.com, "Line protocol"):
//!
//! ```text
//! measurement[,tag=value...] field=value[,field=value...] [timestamp]
//! ```
//!
//! Escapes: in measurements `\,` and `\ `; in tag keys, tag values and field keys `\,`, `\=` and
//! `\ `; in string field values `\"`; everywhere `\\` is one backslash. A backslash before
//! anything else is literal.
//! Field values: floats (`1`, `-1.5`, `1e3`, `inf` is not a number here), integers (`1i`),
//! unsigned integers (`1u`), strings (`"..."`), booleans (`t`, `T`, `true`, `True`, `TRUE`, `f`,
//! ...). Lines starting with `#` and blank lines are skipped.
//!
//! Mapping to series (the convention VictoriaMetrics uses; docs/api.md): field `f` of
//! measurement `m` becomes the series `m_f` with the tags as labels; booleans become 1 and 0;
//! string fields carry no number and are not stored (they are still checked for syntax).
//!
//! A parse is all or nothing: the first bad line fails the whole batch with its line and byte
//! column (both 1-based), so a client never has to guess which half of a batch landed.

use crate::Error;

/// Timestamp precision of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Ns,
    Us,
    Ms,
    S,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Precision, Error> {
        Ok(match s {
            "ns" | "n" => Precision::Ns,
            "us" | "u" | "µs" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            other => return Err(Error::Invalid(format!("precision: `{other}` is not one of ns, us, ms, s"))),
        })
    }

    /// Milliseconds (floor), or None if out of range.
    fn to_ms(self, t: i64) -> Option<i64> {
        match self {
            Precision::Ns => Some(t.div_euclid(1_000_000)),
            Precision::Us => Some(t.div_euclid(1_000)),
            Precision::Ms => Some(t),
            Precision::S => t.checked_mul(1000),
        }
    }
}

/// A field's value as written.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Float(f64),
    Int(i64),
    UInt(u64),
    Str(String),
    Bool(bool),
}

impl FieldValue {
    /// The sample value, or None for strings.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FieldValue::Float(v) => Some(*v),
            FieldValue::Int(v) => Some(*v as f64),
            FieldValue::UInt(v) => Some(*v as f64),
            FieldValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            FieldValue::Str(_) => None,
        }
    }
}

/// One parsed line.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub measurement: String,
    /// In the order written.
    pub tags: Vec<(String, String)>,
    pub fields: Vec<(String, FieldValue)>,
    /// Milliseconds since the epoch; the default if the line has none.
    pub time_ms: i64,
}

/// A sample for one series: its labels (`__name__` first, then sorted by name), time, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub labels: Vec<(String, String)>,
    pub time_ms: i64,
    pub value: f64,
}

/// Parses a batch. `default_ms` is the time of lines without a timestamp (the server's clock).
pub fn parse(body: &str, precision: Precision, default_ms: i64) -> Result<Vec<Line>, Error> {
    let mut out = Vec::new();
    for (i, text) in body.split('\n').enumerate() {
        let text = text.strip_suffix('\r').unwrap_or(text);
        let trimmed = text.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let lead = text.len() - trimmed.len();
        let mut p = Parser { text: trimmed, s: trimmed.as_bytes(), pos: 0 };
        let line = p.line(precision, default_ms).map_err(|(col, msg)| {
            Error::Invalid(format!("line {}, column {}: {msg}", i + 1, lead + col + 1))
        })?;
        out.push(line);
    }
    Ok(out)
}

/// Parses a batch into points, one per numeric field (the series `measurement_field`).
pub fn parse_points(body: &str, precision: Precision, default_ms: i64) -> Result<Vec<Point>, Error> {
    let lines = parse(body, precision, default_ms)?;
    let mut out = Vec::with_capacity(lines.len());
    for l in lines {
        let mut labels: Vec<(String, String)> = l.tags;
        labels.sort();
        for (f, v) in &l.fields {
            let Some(value) = v.as_f64() else { continue };
            let mut ls = Vec::with_capacity(labels.len() + 1);
            let mut name = String::with_capacity(l.measurement.len() + 1 + f.len());
            name.push_str(&l.measurement);
            name.push('_');
            name.push_str(f);
            ls.push(("__name__".to_string(), name));
            ls.extend(labels.iter().cloned());
            out.push(Point { labels: ls, time_ms: l.time_ms, value });
        }
    }
    Ok(out)
}

type Fail = (usize, String);

struct Parser<'a> {
    text: &'a str,
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn fail<T>(&self, at: usize, msg: impl Into<String>) -> Result<T, Fail> {
        Err((at, msg.into()))
    }

    /// Reads up to an unescaped byte in `stops`, unescaping `escapable`.
    fn token(&mut self, stops: &[u8], escapable: &[u8]) -> Result<String, Fail> {
        let start = self.pos;
        // Most tokens have no escapes: one copy of the slice (it starts and ends at ASCII
        // bytes of a `str`, so it is valid UTF-8 and `get` finds char boundaries).
        let end = self.s[start..]
            .iter()
            .position(|b| *b == b'\\' || stops.contains(b))
            .map_or(self.s.len(), |i| start + i);
        if self.s.get(end) != Some(&b'\\') {
            if let Some(t) = self.text.get(start..end) {
                self.pos = end;
                return Ok(t.to_string());
            }
        }
        let mut out = Vec::new();
        while let Some(&b) = self.s.get(self.pos) {
            if b == b'\\' {
                if let Some(&next) = self.s.get(self.pos + 1) {
                    if escapable.contains(&next) || next == b'\\' {
                        out.push(next);
                        self.pos += 2;
                        continue;
                    }
                }
                out.push(b);
                self.pos += 1;
                continue;
            }
            if stops.contains(&b) {
                break;
            }
            out.push(b);
            self.pos += 1;
        }
        String::from_utf8(out).or_else(|_| self.fail(start, "not valid UTF-8"))
    }

    fn line(&mut self, precision: Precision, default_ms: i64) -> Result<Line, Fail> {
        let measurement = self.token(b", ", b", ")?;
        if measurement.is_empty() {
            return self.fail(0, "missing measurement");
        }
        let mut tags = Vec::new();
        while self.s.get(self.pos) == Some(&b',') {
            self.pos += 1;
            let at = self.pos;
            let key = self.token(b",= ", b",= ")?;
            if key.is_empty() {
                return self.fail(at, "missing tag key");
            }
            if self.s.get(self.pos) != Some(&b'=') {
                return self.fail(self.pos, format!("tag `{key}`: expected `=`"));
            }
            self.pos += 1;
            let vat = self.pos;
            let value = self.token(b", ", b",= ")?;
            if value.is_empty() {
                return self.fail(vat, format!("tag `{key}`: missing value"));
            }
            if key == "__name__" {
                return self.fail(at, "tag `__name__`: reserved for the series name");
            }
            if tags.iter().any(|(k, _)| *k == key) {
                return self.fail(at, format!("tag `{key}` appears twice"));
            }
            tags.push((key, value));
        }
        if self.s.get(self.pos) != Some(&b' ') {
            return self.fail(self.pos, "expected a space before the fields");
        }
        while self.s.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
        let mut fields = Vec::new();
        loop {
            let at = self.pos;
            let key = self.token(b",= ", b",= ")?;
            if key.is_empty() {
                return self.fail(at, "missing field key");
            }
            if self.s.get(self.pos) != Some(&b'=') {
                return self.fail(self.pos, format!("field `{key}`: expected `=`"));
            }
            self.pos += 1;
            let value = self.field_value(&key)?;
            if fields.iter().any(|(k, _)| *k == key) {
                return self.fail(at, format!("field `{key}` appears twice"));
            }
            fields.push((key, value));
            if self.s.get(self.pos) == Some(&b',') {
                self.pos += 1;
                continue;
            }
            break;
        }
        let mut time_ms = default_ms;
        if self.pos < self.s.len() {
            if self.s[self.pos] != b' ' {
                return self.fail(self.pos, "expected a space or the end of the line after the fields");
            }
            while self.s.get(self.pos) == Some(&b' ') {
                self.pos += 1;
            }
            let at = self.pos;
            let end = self.s[at..].iter().position(|&b| b == b' ').map_or(self.s.len(), |i| at + i);
            let text = std::str::from_utf8(&self.s[at..end]).unwrap_or("");
            if !text.is_empty() {
                let t: i64 = match text.parse() {
                    Ok(t) => t,
                    Err(_) => return self.fail(at, format!("timestamp `{text}`: not an integer")),
                };
                time_ms = match precision.to_ms(t) {
                    Some(t) => t,
                    None => return self.fail(at, format!("timestamp `{text}`: out of range")),
                };
            }
            self.pos = end;
            if self.s[self.pos..].iter().any(|&b| b != b' ') {
                return self.fail(self.pos, "unexpected text after the timestamp");
            }
        }
        Ok(Line { measurement, tags, fields, time_ms })
    }

    fn field_value(&mut self, key: &str) -> Result<FieldValue, Fail> {
        let at = self.pos;
        if self.s.get(self.pos) == Some(&b'"') {
            self.pos += 1;
            let mut out = Vec::new();
            loop {
                match self.s.get(self.pos) {
                    None => return self.fail(at, format!("field `{key}`: unterminated string")),
                    Some(b'"') => {
                        self.pos += 1;
                        break;
                    }
                    Some(b'\\') if matches!(self.s.get(self.pos + 1), Some(b'"') | Some(b'\\')) => {
                        out.push(self.s[self.pos + 1]);
                        self.pos += 2;
                    }
                    Some(&b) => {
                        out.push(b);
                        self.pos += 1;
                    }
                }
            }
            return String::from_utf8(out)
                .map(FieldValue::Str)
                .or_else(|_| self.fail(at, format!("field `{key}`: not valid UTF-8")));
        }
        let end = self.s[at..].iter().position(|&b| b == b',' || b == b' ').map_or(self.s.len(), |i| at + i);
        let text = std::str::from_utf8(&self.s[at..end]).unwrap_or("");
        self.pos = end;
        if text.is_empty() {
            return self.fail(at, format!("field `{key}`: missing value"));
        }
        let bad = |what: &str| -> Result<FieldValue, Fail> {
            Err((at, format!("field `{key}`: `{text}` is not {what}")))
        };
        match text {
            "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Bool(true)),
            "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Bool(false)),
            _ => {}
        }
        if let Some(num) = text.strip_suffix('i') {
            return num.parse().map(FieldValue::Int).or_else(|_| bad("a 64-bit integer"));
        }
        if let Some(num) = text.strip_suffix('u') {
            return num.parse().map(FieldValue::UInt).or_else(|_| bad("an unsigned 64-bit integer"));
        }
        // Rust's float parser also takes "inf", "NaN" and "infinity", which line protocol does not.
        let numeric =
            text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
        match text.parse::<f64>() {
            Ok(v) if numeric && v.is_finite() => Ok(FieldValue::Float(v)),
            _ => bad("a number, an integer (`1i`), a string (`\"...\"`) or a boolean"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Line {
        let mut v = parse(s, Precision::Ns, 7).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn err(s: &str) -> String {
        parse(s, Precision::Ns, 0).unwrap_err().to_string()
    }

    #[test]
    fn the_basic_forms() {
        let l = one("cpu,host=a,region=eu usage_idle=99.5,usage_user=0.5 1700000000000000000");
        assert_eq!(l.measurement, "cpu");
        assert_eq!(l.tags, vec![("host".into(), "a".into()), ("region".into(), "eu".into())]);
        assert_eq!(
            l.fields,
            vec![
                ("usage_idle".into(), FieldValue::Float(99.5)),
                ("usage_user".into(), FieldValue::Float(0.5))
            ]
        );
        assert_eq!(l.time_ms, 1_700_000_000_000);
        // No tags, no timestamp: the default time.
        let l = one("m v=1");
        assert!(l.tags.is_empty());
        assert_eq!(l.time_ms, 7);
    }

    #[test]
    fn every_field_type() {
        let l =
            one(r#"m a=1,b=-2.5e3,c=3i,d=4u,e="x y, \"z\" \\",f=t,g=FALSE,h=True,i=-9223372036854775808i"#);
        let v: Vec<FieldValue> = l.fields.into_iter().map(|(_, v)| v).collect();
        assert_eq!(
            v,
            vec![
                FieldValue::Float(1.0),
                FieldValue::Float(-2500.0),
                FieldValue::Int(3),
                FieldValue::UInt(4),
                FieldValue::Str(r#"x y, "z" \"#.into()),
                FieldValue::Bool(true),
                FieldValue::Bool(false),
                FieldValue::Bool(true),
                FieldValue::Int(i64::MIN),
            ]
        );
    }

    #[test]
    fn escaping() {
        let l = one(r"my\ meas\,ure,t\ a\,g\=k=v\ a\,l\=ue f\ i\,e\=ld=1 0");
        assert_eq!(l.measurement, "my meas,ure");
        assert_eq!(l.tags, vec![("t a,g=k".into(), "v a,l=ue".into())]);
        assert_eq!(l.fields[0].0, "f i,e=ld");
        // A backslash before anything else is literal; `=` needs no escape in a measurement.
        let l = one(r"a\b=c,t=x\y v=1");
        assert_eq!(l.measurement, r"a\b=c");
        assert_eq!(l.tags[0].1, r"x\y");
        assert_eq!(one(r"my\\measurement v=1").measurement, r"my\measurement");
    }

    #[test]
    fn precision_and_comments() {
        let body = "# a comment\n\n  m v=1 1500\r\nm v=2 -1500\n";
        let ms = |p| parse(body, p, 0).unwrap().iter().map(|l| l.time_ms).collect::<Vec<_>>();
        assert_eq!(ms(Precision::S), vec![1_500_000, -1_500_000]);
        assert_eq!(ms(Precision::Ms), vec![1500, -1500]);
        assert_eq!(ms(Precision::Us), vec![1, -2]);
        assert_eq!(ms(Precision::Ns), vec![0, -1]);
        assert!(Precision::parse("h").is_err());
        assert!(parse("m v=1 9223372036854775807", Precision::S, 0).is_err());
    }

    #[test]
    fn points_are_named_measurement_field_with_sorted_labels() {
        let p = parse_points("cpu,z=1,a=2 user=1,idle=2i,ok=t,name=\"x\" 5000000", Precision::Ns, 0).unwrap();
        assert_eq!(p.len(), 3, "the string field is not a sample");
        assert_eq!(
            p[0].labels,
            vec![("__name__".into(), "cpu_user".into()), ("a".into(), "2".into()), ("z".into(), "1".into())]
        );
        assert_eq!(p[1].labels[0].1, "cpu_idle");
        assert_eq!((p[2].time_ms, p[2].value), (5, 1.0));
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let e = parse("m v=1\nm v=1\nm,host=a v=oops 1", Precision::Ns, 0).unwrap_err().to_string();
        assert!(e.starts_with("line 3, column 12:"), "{e}");
        assert!(e.contains("field `v`: `oops` is not a number"), "{e}");
        assert!(err("m").contains("column 2: expected a space before the fields"));
        assert!(err(",t=1 v=1").contains("column 1: missing measurement"));
        assert!(err("m,t v=1").contains("tag `t`: expected `=`"));
        assert!(err("m,t= v=1").contains("tag `t`: missing value"));
        assert!(err("m,=x v=1").contains("missing tag key"));
        assert!(err("m,t=1,t=2 v=1").contains("tag `t` appears twice"));
        assert!(err("m,__name__=x v=1").contains("reserved"));
        assert!(err("m v").contains("field `v`: expected `=`"));
        assert!(err("m v=").contains("field `v`: missing value"));
        assert!(err("m v=1,v=2").contains("field `v` appears twice"));
        assert!(err("m v=\"abc").contains("unterminated string"));
        assert!(err("m v=1x").contains("is not a number"));
        assert!(err("m v=inf").contains("is not a number"));
        assert!(err("m v=NaN").contains("is not a number"));
        assert!(err("m v=1.5i").contains("not a 64-bit integer"));
        assert!(err("m v=-1u").contains("not an unsigned"));
        assert!(err("m v=1 12x").contains("timestamp `12x`: not an integer"));
        assert!(err("m v=1 12 13").contains("unexpected text after the timestamp"));
        assert!(err("m v=1,").contains("missing field key"));
        assert!(err("m  ").contains("missing field key"));
    }

    #[test]
    fn a_bad_line_fails_the_whole_batch() {
        assert!(parse_points("m v=1\nm v=2\nm v=?", Precision::Ns, 0).is_err());
    }

    /// Names written the way a client library escapes them (`,`, space and `\\` preceded by
    /// `\\`, and `=` too except in the measurement) parse back to themselves, whatever
    /// characters they hold.
    #[test]
    fn escaped_names_round_trip() {
        use proptest::prelude::*;
        fn esc_with(s: &str, eq: bool) -> String {
            let mut o = String::new();
            for c in s.chars() {
                if matches!(c, ',' | ' ' | '\\') || (eq && c == '=') {
                    o.push('\\');
                }
                o.push(c);
            }
            o
        }
        let name = "[a-zA-Z0-9_,= \\\\é€😀]{1,12}";
        proptest!(|(m in name, k in name, v in name, f in name)| {
            prop_assume!(k != "__name__");
            let esc = |s: &str| esc_with(s, true);
            let text = format!("{},{}={} {}=1 0", esc_with(&m, false), esc(&k), esc(&v), esc(&f));
            let l = one(&text);
            prop_assert_eq!(l.measurement, m);
            prop_assert_eq!(l.tags, vec![(k, v)]);
            prop_assert_eq!(&l.fields[0].0, &f);
        });
    }
}
