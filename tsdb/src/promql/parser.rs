//! A recursive-descent PromQL parser with Prometheus's operator precedence and its parse-time
//! type checks (so `rate(foo)` or `1 > 2` are refused before anything is evaluated).

use super::ast::*;
use super::functions;
use super::lexer::{lex, Tok, Token};
use crate::matcher::{MatchOp, Matcher};
use crate::Error;

/// How many levels a query may nest. Parentheses, function calls, aggregations, unary signs,
/// subqueries and each operator of a chain (`a or b or c` is a tree three levels deep) count
/// as one level each, so the limit bounds the depth of the tree.
///
/// Why a limit: parsing, evaluating and dropping a query all recurse over its tree. Without a
/// bound, a query of a few hundred nested parentheses, well inside a URL, overflowed a thread's
/// stack and aborted the whole node. Go's growable stacks spare Prometheus this, so it has no
/// such limit; the queries of Prometheus's own test scripts nest at most 10 levels by this count.
pub const MAX_DEPTH: usize = 128;

/// The stack a thread must have to parse and evaluate any query `parse` accepts. The node runs
/// its tokio threads (workers and the blocking pool) with it. At `MAX_DEPTH` the deepest shape
/// (nested function calls) needs under 0.5 MiB in a release build and 3 MiB in a debug build;
/// `tsdb/tests/promql_limits.rs` checks every shape at the limit on half of this.
pub const STACK_SIZE: usize = 8 << 20;

/// The longest duration (range, step, offset) a query may hold: Prometheus's, the largest Go
/// `time.Duration`, about 292 years.
pub const MAX_DURATION_MS: i64 = i64::MAX / 1_000_000;

/// The furthest time from 1970 a query may name (`@`, and the HTTP API's times): 2^61 ms, about
/// 73 million years. With `MAX_DURATION_MS` this keeps every time the evaluator computes (a
/// time less offsets, ranges and a lookback, through at most `MAX_DEPTH` nested subqueries)
/// and the distance between any two inside i64, where `[292277026y]` or
/// `@ -9e15 offset 106751991167d` used to overflow.
pub const MAX_TIME_MS: i64 = 1 << 61;

pub fn parse(src: &str) -> Result<Expr, Error> {
    let toks = lex(src)?;
    let mut p = Parser { toks, i: 0, depth: 0 };
    let e = p.expr(0)?;
    if p.peek() != &Tok::Eof {
        return p.err(format!("unexpected {}", describe(p.peek())));
    }
    Ok(e)
}

/// Parses a series selector alone (the `match[]` parameter of the metadata routes).
pub fn parse_selector(src: &str) -> Result<Vec<Matcher>, Error> {
    match parse(src)? {
        Expr::Selector(s) if s.offset == 0 && s.at.is_none() => Ok(s.matchers),
        _ => Err(Error::Invalid(format!("`{src}` is not a series selector"))),
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("identifier `{s}`"),
        Tok::Number(n) => format!("number {n}"),
        Tok::Duration(_) => "duration".into(),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Eof => "end of input".into(),
        other => format!("`{}`", symbol(other)),
    }
}

fn symbol(t: &Tok) -> &'static str {
    match t {
        Tok::LParen => "(",
        Tok::RParen => ")",
        Tok::LBrace => "{",
        Tok::RBrace => "}",
        Tok::LBracket => "[",
        Tok::RBracket => "]",
        Tok::Comma => ",",
        Tok::Colon => ":",
        Tok::At => "@",
        Tok::Assign => "=",
        Tok::Add => "+",
        Tok::Sub => "-",
        Tok::Mul => "*",
        Tok::Div => "/",
        Tok::Mod => "%",
        Tok::Pow => "^",
        Tok::Eql => "==",
        Tok::Neq => "!=",
        Tok::Lss => "<",
        Tok::Gtr => ">",
        Tok::Lte => "<=",
        Tok::Gte => ">=",
        Tok::ReMatch => "=~",
        Tok::NotReMatch => "!~",
        _ => "?",
    }
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    /// An upper bound on the depth of the tree being built at this point (see `MAX_DEPTH`).
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].tok
    }

    fn peek_at(&self, k: usize) -> &Tok {
        &self.toks[(self.i + k).min(self.toks.len() - 1)].tok
    }

    fn pos(&self) -> usize {
        self.toks[self.i.min(self.toks.len() - 1)].pos
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn err<T>(&self, msg: impl Into<String>) -> Result<T, Error> {
        Err(Error::Invalid(format!("parse error at char {}: {}", self.pos() + 1, msg.into())))
    }

    fn expect(&mut self, t: Tok) -> Result<(), Error> {
        if *self.peek() == t {
            self.next();
            Ok(())
        } else {
            self.err(format!("expected `{}`, found {}", symbol(&t), describe(self.peek())))
        }
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    fn binop(&self) -> Option<BinOp> {
        Some(match self.peek() {
            Tok::Add => BinOp::Add,
            Tok::Sub => BinOp::Sub,
            Tok::Mul => BinOp::Mul,
            Tok::Div => BinOp::Div,
            Tok::Mod => BinOp::Mod,
            Tok::Pow => BinOp::Pow,
            Tok::Eql => BinOp::Eql,
            Tok::Neq => BinOp::Neq,
            Tok::Lss => BinOp::Lss,
            Tok::Gtr => BinOp::Gtr,
            Tok::Lte => BinOp::Lte,
            Tok::Gte => BinOp::Gte,
            Tok::Ident(s) => match s.to_ascii_lowercase().as_str() {
                "and" => BinOp::And,
                "or" => BinOp::Or,
                "unless" => BinOp::Unless,
                "atan2" => BinOp::Atan2,
                _ => return None,
            },
            _ => return None,
        })
    }

    /// One more level of nesting, refused past `MAX_DEPTH`. The levels an `expr` call adds
    /// (its own, one per operator of its chain, one per subquery of its operands) are given
    /// back when it returns.
    fn deeper(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!("query nests more than {MAX_DEPTH} levels deep"));
        }
        Ok(())
    }

    fn expr(&mut self, min: u8) -> Result<Expr, Error> {
        let base = self.depth;
        self.deeper()?;
        let e = self.chain(min);
        self.depth = base;
        e
    }

    /// Precedence climbing; `^` is right-associative.
    fn chain(&mut self, min: u8) -> Result<Expr, Error> {
        let mut lhs = self.unary()?;
        while let Some(op) = self.binop() {
            let prec = op.precedence();
            if prec < min {
                break;
            }
            self.next();
            let mut return_bool = false;
            if self.is_keyword("bool") {
                self.next();
                return_bool = true;
            }
            let mut matching = Matching {
                card: if op.is_set() { Card::ManyToMany } else { Card::OneToOne },
                on: false,
                labels: Vec::new(),
                include: Vec::new(),
            };
            if self.is_keyword("on") || self.is_keyword("ignoring") {
                matching.on = self.is_keyword("on");
                self.next();
                matching.labels = self.label_list()?;
                if self.is_keyword("group_left") || self.is_keyword("group_right") {
                    if op.is_set() {
                        return self.err(format!("no grouping allowed for \"{}\" operation", op.as_str()));
                    }
                    matching.card =
                        if self.is_keyword("group_left") { Card::ManyToOne } else { Card::OneToMany };
                    self.next();
                    if *self.peek() == Tok::LParen {
                        matching.include = self.label_list()?;
                    }
                }
            }
            let next_min = if op == BinOp::Pow { prec } else { prec + 1 };
            let rhs = self.expr(next_min)?;
            lhs = self.binary(op, lhs, rhs, return_bool, matching)?;
            // A left-associative chain is built here without recursion, but it is a tree as
            // deep as it is long.
            self.deeper()?;
        }
        Ok(lhs)
    }

    fn binary(&self, op: BinOp, lhs: Expr, rhs: Expr, return_bool: bool, m: Matching) -> Result<Expr, Error> {
        let (lt, rt) = (lhs.value_type(), rhs.value_type());
        for t in [lt, rt] {
            if t != ValueType::Scalar && t != ValueType::Vector {
                return self.err(format!(
                    "binary expression must contain only scalar and instant vector types, got {}",
                    t.name()
                ));
            }
        }
        if return_bool && !op.is_comparison() {
            return self.err("bool modifier can only be used on comparison operators");
        }
        if op.is_comparison() && !return_bool && lt == ValueType::Scalar && rt == ValueType::Scalar {
            return self.err("comparisons between scalars must use BOOL modifier");
        }
        if op.is_set() && (lt == ValueType::Scalar || rt == ValueType::Scalar) {
            return self
                .err(format!("set operator \"{}\" not allowed in binary scalar expression", op.as_str()));
        }
        let both_vectors = lt == ValueType::Vector && rt == ValueType::Vector;
        if !both_vectors && (m.on || !m.labels.is_empty() || m.card != Card::OneToOne && !op.is_set()) {
            return self.err("vector matching only allowed between instant vectors");
        }
        if both_vectors && !m.include.is_empty() {
            for l in &m.include {
                if m.on && m.labels.contains(l) {
                    return self.err(format!("label \"{l}\" must not occur in ON and GROUP clause at once"));
                }
            }
        }
        Ok(Expr::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
            return_bool,
            matching: both_vectors.then_some(m),
        })
    }

    fn unary(&mut self) -> Result<Expr, Error> {
        match self.peek() {
            Tok::Sub | Tok::Add => {
                let neg = *self.peek() == Tok::Sub;
                self.next();
                let e = self.expr(BinOp::Pow.precedence())?;
                match e.value_type() {
                    ValueType::Scalar | ValueType::Vector => {}
                    t => return self.err(format!("unary expression only allowed on expressions of type scalar or instant vector, got {}", t.name())),
                }
                Ok(match (neg, e) {
                    (false, e) => e,
                    (true, Expr::Number(n)) => Expr::Number(-n),
                    (true, e) => Expr::Neg(Box::new(e)),
                })
            }
            _ => {
                let e = self.primary()?;
                self.postfix(e)
            }
        }
    }

    fn postfix(&mut self, mut e: Expr) -> Result<Expr, Error> {
        loop {
            match self.peek() {
                Tok::LBracket => {
                    self.next();
                    let range = self.duration("range")?;
                    if *self.peek() == Tok::Colon {
                        self.next();
                        let step =
                            if *self.peek() == Tok::RBracket { None } else { Some(self.duration("step")?) };
                        self.expect(Tok::RBracket)?;
                        self.deeper()?;
                        match e.value_type() {
                            ValueType::Vector => {}
                            t => {
                                return self.err(format!(
                                    "subquery is only allowed on instant vector, got {} instead",
                                    t.name()
                                ))
                            }
                        }
                        e = Expr::Subquery { expr: Box::new(e), range, step, offset: 0, at: None };
                    } else {
                        self.expect(Tok::RBracket)?;
                        match e {
                            Expr::Selector(s) if s.offset == 0 && s.at.is_none() => {
                                if range <= 0 {
                                    return self.err("range must be positive");
                                }
                                e = Expr::Matrix(s, range)
                            }
                            Expr::Selector(_) => {
                                return self.err("no offset or @ modifiers allowed before range")
                            }
                            _ => return self.err("ranges only allowed for vector selectors"),
                        }
                    }
                }
                Tok::Ident(s) if s.eq_ignore_ascii_case("offset") => {
                    self.next();
                    let neg = if *self.peek() == Tok::Sub {
                        self.next();
                        true
                    } else {
                        if *self.peek() == Tok::Add {
                            self.next();
                        }
                        false
                    };
                    let d = self.duration("offset")?;
                    let d = if neg { -d } else { d };
                    let slot = match &mut e {
                        Expr::Selector(s) | Expr::Matrix(s, _) => &mut s.offset,
                        Expr::Subquery { offset, .. } => offset,
                        _ => return self.err("offset modifier must be preceded by an instant vector selector or range vector selector or a subquery"),
                    };
                    if *slot != 0 {
                        return self.err("offset may not be set multiple times");
                    }
                    *slot = d;
                }
                Tok::At => {
                    self.next();
                    let at = match self.next() {
                        Tok::Number(n) => At::Time(
                            secs_to_ms(n)
                                .ok_or(())
                                .or_else(|_| self.err("timestamp out of bounds for @ modifier"))?,
                        ),
                        Tok::Duration(d) if d <= MAX_TIME_MS => At::Time(d),
                        Tok::Duration(_) => return self.err("timestamp out of bounds for @ modifier"),
                        Tok::Sub => match self.next() {
                            Tok::Number(n) => At::Time(
                                secs_to_ms(-n)
                                    .ok_or(())
                                    .or_else(|_| self.err("timestamp out of bounds for @ modifier"))?,
                            ),
                            _ => return self.err("expected a timestamp after @"),
                        },
                        Tok::Ident(f) if (f == "start" || f == "end") && *self.peek() == Tok::LParen => {
                            self.next();
                            self.expect(Tok::RParen)?;
                            if f == "start" {
                                At::Start
                            } else {
                                At::End
                            }
                        }
                        _ => return self.err("@ modifier must be followed by a number, start() or end()"),
                    };
                    let slot = match &mut e {
                        Expr::Selector(s) | Expr::Matrix(s, _) => &mut s.at,
                        Expr::Subquery { at, .. } => at,
                        _ => return self.err("@ modifier must be preceded by an instant vector selector or range vector selector or a subquery"),
                    };
                    if slot.is_some() {
                        return self.err("@ <timestamp> may not be set multiple times");
                    }
                    *slot = Some(at);
                }
                _ => return Ok(e),
            }
        }
    }

    /// A duration, or a number of seconds; at most `MAX_DURATION_MS` either way.
    fn duration(&mut self, what: &str) -> Result<i64, Error> {
        let d = match self.next() {
            Tok::Duration(d) => Some(d),
            Tok::Number(n) if n.is_finite() => secs_to_ms(n),
            t => return self.err(format!("{what}: expected a duration, found {}", describe(&t))),
        };
        match d {
            Some(d) if d.unsigned_abs() <= MAX_DURATION_MS as u64 => Ok(d),
            _ => self.err(format!("{what}: out of range (at most 292 years)")),
        }
    }

    fn label_list(&mut self) -> Result<Vec<String>, Error> {
        self.expect(Tok::LParen)?;
        let mut out = Vec::new();
        loop {
            match self.next() {
                Tok::RParen => return Ok(out),
                Tok::Ident(s) | Tok::Str(s) => {
                    out.push(s);
                    match self.next() {
                        Tok::Comma => continue,
                        Tok::RParen => return Ok(out),
                        t => {
                            return self.err(format!(
                                "unexpected {} in grouping opts, expected \",\" or \")\"",
                                describe(&t)
                            ))
                        }
                    }
                }
                t => {
                    return self.err(format!("unexpected {} in grouping opts, expected label", describe(&t)))
                }
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, Error> {
        match self.peek().clone() {
            Tok::Number(n) => {
                self.next();
                Ok(Expr::Number(n))
            }
            Tok::Duration(d) => {
                // A bare duration is a number of seconds (Prometheus 3).
                self.next();
                Ok(Expr::Number(d as f64 / 1000.0))
            }
            Tok::Str(s) => {
                self.next();
                Ok(Expr::Str(s))
            }
            Tok::LParen => {
                self.next();
                let e = self.expr(0)?;
                self.expect(Tok::RParen)?;
                Ok(Expr::Paren(Box::new(e)))
            }
            Tok::LBrace => self.selector(None),
            Tok::Ident(name) => {
                if let Some(op) = AggOp::from_name(&name) {
                    if matches!(self.peek_at(1), Tok::LParen)
                        || matches!(self.peek_at(1), Tok::Ident(k) if k.eq_ignore_ascii_case("by") || k.eq_ignore_ascii_case("without"))
                    {
                        self.next();
                        return self.aggregate(op);
                    }
                }
                if *self.peek_at(1) == Tok::LParen {
                    let Some(sig) = functions::signature(&name) else {
                        return self.err(format!("unknown function with name \"{name}\""));
                    };
                    self.next();
                    return self.call(sig);
                }
                for kw in ["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"] {
                    if name.eq_ignore_ascii_case(kw) {
                        return self.err(format!("unexpected keyword `{name}`"));
                    }
                }
                self.next();
                self.selector(Some(name))
            }
            t => self.err(format!("unexpected {}", describe(&t))),
        }
    }

    fn call(&mut self, sig: &'static functions::Signature) -> Result<Expr, Error> {
        self.expect(Tok::LParen)?;
        let mut args = Vec::new();
        if *self.peek() != Tok::RParen {
            loop {
                args.push(self.expr(0)?);
                if *self.peek() == Tok::Comma {
                    self.next();
                    if *self.peek() == Tok::RParen {
                        break;
                    }
                    continue;
                }
                break;
            }
        }
        self.expect(Tok::RParen)?;
        let max = if sig.variadic { usize::MAX } else { sig.args.len() };
        if args.len() < sig.min_args || args.len() > max {
            return self.err(format!(
                "expected {} argument(s) in call to \"{}\", got {}",
                if sig.min_args == sig.args.len() {
                    sig.min_args.to_string()
                } else {
                    format!("{}..{}", sig.min_args, sig.args.len())
                },
                sig.name,
                args.len()
            ));
        }
        for (i, a) in args.iter().enumerate() {
            let want = sig.args[i.min(sig.args.len() - 1)];
            let got = a.value_type();
            if got != want {
                return self.err(format!(
                    "expected type {} in call to function \"{}\", got {}",
                    want.name(),
                    sig.name,
                    got.name()
                ));
            }
        }
        Ok(Expr::Call { func: sig.name, args })
    }

    fn aggregate(&mut self, op: AggOp) -> Result<Expr, Error> {
        let mut grouping = Vec::new();
        let mut without = false;
        let mut grouped = false;
        if self.is_keyword("by") || self.is_keyword("without") {
            without = self.is_keyword("without");
            self.next();
            grouping = self.label_list()?;
            grouped = true;
        }
        self.expect(Tok::LParen)?;
        let first = self.expr(0)?;
        let (param, expr) = if *self.peek() == Tok::Comma {
            self.next();
            let e = self.expr(0)?;
            (Some(first), e)
        } else {
            (None, first)
        };
        self.expect(Tok::RParen)?;
        if !grouped && (self.is_keyword("by") || self.is_keyword("without")) {
            without = self.is_keyword("without");
            self.next();
            grouping = self.label_list()?;
        }
        if op.takes_param() != param.is_some() {
            return self.err(if op.takes_param() {
                "wrong number of arguments for aggregate expression provided, expected 2, got 1".to_string()
            } else {
                "wrong number of arguments for aggregate expression provided, expected 1, got 2".to_string()
            });
        }
        if expr.value_type() != ValueType::Vector {
            return self.err(format!(
                "expected type instant vector in aggregation expression, got {}",
                expr.value_type().name()
            ));
        }
        if let Some(p) = &param {
            let want = if op == AggOp::CountValues { ValueType::String } else { ValueType::Scalar };
            if p.value_type() != want {
                return self.err(format!(
                    "expected type {} in aggregation parameter, got {}",
                    want.name(),
                    p.value_type().name()
                ));
            }
        }
        Ok(Expr::Aggregate { op, expr: Box::new(expr), param: param.map(Box::new), grouping, without })
    }

    fn selector(&mut self, name: Option<String>) -> Result<Expr, Error> {
        let mut matchers = Vec::new();
        let mut name = name;
        if let Some(n) = &name {
            matchers.push(Matcher::eq("__name__", n));
        }
        if *self.peek() == Tok::LBrace {
            self.next();
            loop {
                let label = match self.next() {
                    Tok::RBrace => break,
                    Tok::Ident(s) => s,
                    Tok::Str(s) => {
                        // A quoted name alone is the metric name (Prometheus 3's UTF-8 names).
                        if matches!(self.peek(), Tok::Comma | Tok::RBrace) {
                            if name.is_some() {
                                return self.err("metric name must not be set twice");
                            }
                            matchers.push(Matcher::eq("__name__", &s));
                            name = Some(s);
                            if *self.peek() == Tok::Comma {
                                self.next();
                            }
                            continue;
                        }
                        s
                    }
                    t => {
                        return self
                            .err(format!("unexpected {} in label matching, expected label", describe(&t)))
                    }
                };
                let op = match self.next() {
                    Tok::Assign => MatchOp::Eq,
                    Tok::Neq => MatchOp::Ne,
                    Tok::ReMatch => MatchOp::Re,
                    Tok::NotReMatch => MatchOp::Nre,
                    t => {
                        return self.err(format!(
                            "unexpected {} in label matching, expected one of \"=\", \"!=\", \"=~\", \"!~\"",
                            describe(&t)
                        ))
                    }
                };
                let value = match self.next() {
                    Tok::Str(s) => s,
                    t => {
                        return self
                            .err(format!("unexpected {} in label matching, expected string", describe(&t)))
                    }
                };
                matchers.push(Matcher::new(&label, op, &value)?);
                match self.next() {
                    Tok::Comma => continue,
                    Tok::RBrace => break,
                    t => {
                        return self.err(format!(
                            "unexpected {} in label matching, expected \",\" or \"}}\"",
                            describe(&t)
                        ))
                    }
                }
            }
        }
        if matchers.is_empty() {
            return self.err("vector selector must contain at least one non-empty matcher");
        }
        if matchers.iter().all(|m| m.matches_empty()) {
            return self.err("vector selector must contain at least one non-empty matcher");
        }
        if name.is_some() && matchers.iter().filter(|m| m.name == "__name__").count() > 1 {
            return self.err("metric name must not be set twice");
        }
        Ok(Expr::Selector(Selector { name, matchers, offset: 0, at: None }))
    }
}

/// Seconds as milliseconds, if within `MAX_TIME_MS`.
fn secs_to_ms(s: f64) -> Option<i64> {
    let ms = (s * 1000.0).round();
    (ms.is_finite() && ms.abs() <= MAX_TIME_MS as f64).then_some(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Expr {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn fails(s: &str) -> String {
        parse(s).map(|e| panic!("{s} parsed as {e:?}")).unwrap_err().to_string()
    }

    #[test]
    fn precedence_and_associativity() {
        // 1 + 2 * 3 ^ 2 ^ 0.5 → 1 + (2 * (3 ^ (2 ^ 0.5)))
        let Expr::Binary { op: BinOp::Add, rhs, .. } = p("1 + 2 * 3 ^ 2 ^ 0.5") else { panic!() };
        let Expr::Binary { op: BinOp::Mul, rhs, .. } = *rhs else { panic!() };
        let Expr::Binary { op: BinOp::Pow, rhs, .. } = *rhs else { panic!() };
        assert!(matches!(*rhs, Expr::Binary { op: BinOp::Pow, .. }));
        // -2 ^ 2 is -(2 ^ 2).
        assert!(matches!(p("-a ^ 2"), Expr::Neg(_)));
        // Left-associative subtraction.
        let Expr::Binary { lhs, .. } = p("a - b - c") else { panic!() };
        assert!(matches!(*lhs, Expr::Binary { op: BinOp::Sub, .. }));
        assert!(matches!(p("a or b and c"), Expr::Binary { op: BinOp::Or, .. }));
    }

    #[test]
    fn selectors_and_modifiers() {
        let Expr::Matrix(s, r) = p(r#"http_requests{job="api", code=~"5.."}[5m] offset 1h"#) else {
            panic!()
        };
        assert_eq!((r, s.offset), (300_000, 3_600_000));
        assert_eq!(s.matchers.len(), 3);
        let Expr::Selector(s) = p(r#"{"my.metric", a="b"} @ 100"#) else { panic!() };
        assert_eq!(s.name.as_deref(), Some("my.metric"));
        assert_eq!(s.at, Some(At::Time(100_000)));
        assert!(matches!(p("rate(x[5m:1m])"), Expr::Call { .. }));
        assert!(matches!(p("sum by (a) (x)"), Expr::Aggregate { .. }));
        assert!(matches!(p("sum(x) without (a)"), Expr::Aggregate { without: true, .. }));
        assert!(matches!(p("topk(3, x)"), Expr::Aggregate { param: Some(_), .. }));
        let Expr::Binary { matching: Some(m), .. } = p("a * on(x) group_left(y) b") else { panic!() };
        assert_eq!(
            (m.card, m.on, m.labels, m.include),
            (Card::ManyToOne, true, vec!["x".to_string()], vec!["y".to_string()])
        );
        assert!(matches!(p("1 > bool 2"), Expr::Binary { return_bool: true, .. }));
        assert_eq!(p("x[600]"), p("x[10m]"));
    }

    #[test]
    fn errors_are_clear() {
        assert!(fails("rate(x)").contains("expected type range vector in call to function \"rate\""));
        assert!(fails("1 > 2").contains("BOOL"));
        assert!(fails("foo(x)").contains("unknown function with name \"foo\""));
        assert!(fails("{a=~\".*\"}").contains("at least one non-empty matcher"));
        assert!(fails("sum(x").contains("expected `)`"));
        assert!(fails("x[5m] offset 1m [1m]").contains("ranges only allowed"));
        assert!(fails("a and 1").contains("set operator"));
        assert!(fails("x{a=~\"(\"}").contains("bad regex"));
        assert!(fails("topk(x)").contains("wrong number of arguments"));
        assert!(fails("x y").contains("unexpected identifier `y`"));
        assert!(fails("").contains("unexpected end of input"));
    }
}
