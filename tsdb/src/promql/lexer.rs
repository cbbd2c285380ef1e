//! PromQL tokens.

use crate::Error;

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Ident(String),
    Number(f64),
    /// Milliseconds.
    Duration(i64),
    Str(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Comma,
    Colon,
    At,
    /// `=` in a label matcher.
    Assign,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Eql,
    Neq,
    Lss,
    Gtr,
    Lte,
    Gte,
    ReMatch,
    NotReMatch,
    Eof,
}

/// A token and the byte offset where it starts.
#[derive(Clone, Debug)]
pub struct Token {
    pub tok: Tok,
    pub pos: usize,
}

pub fn lex(src: &str) -> Result<Vec<Token>, Error> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |pos: usize, msg: String| Error::Invalid(format!("parse error at char {}: {msg}", pos + 1));
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let two = |x: u8| b.get(i + 1) == Some(&x);
        let (tok, len) = match c {
            b'(' => (Tok::LParen, 1),
            b')' => (Tok::RParen, 1),
            b'{' => (Tok::LBrace, 1),
            b'}' => (Tok::RBrace, 1),
            b'[' => (Tok::LBracket, 1),
            b']' => (Tok::RBracket, 1),
            b',' => (Tok::Comma, 1),
            b':' if !b.get(i + 1).is_some_and(|x| x.is_ascii_alphabetic() || *x == b'_' || *x == b':') => {
                (Tok::Colon, 1)
            }
            b'@' => (Tok::At, 1),
            b'+' => (Tok::Add, 1),
            b'-' => (Tok::Sub, 1),
            b'*' => (Tok::Mul, 1),
            b'/' => (Tok::Div, 1),
            b'%' => (Tok::Mod, 1),
            b'^' => (Tok::Pow, 1),
            b'=' if two(b'=') => (Tok::Eql, 2),
            b'=' if two(b'~') => (Tok::ReMatch, 2),
            b'=' => (Tok::Assign, 1),
            b'!' if two(b'=') => (Tok::Neq, 2),
            b'!' if two(b'~') => (Tok::NotReMatch, 2),
            b'<' if two(b'=') => (Tok::Lte, 2),
            b'<' => (Tok::Lss, 1),
            b'>' if two(b'=') => (Tok::Gte, 2),
            b'>' => (Tok::Gtr, 1),
            b'"' | b'\'' | b'`' => {
                let (s, n) = string(&src[i..]).map_err(|m| err(start, m))?;
                (Tok::Str(s), n)
            }
            b'0'..=b'9' | b'.' => {
                let (t, n) = number_or_duration(&src[i..]).map_err(|m| err(start, m))?;
                (t, n)
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b':') {
                    j += 1;
                }
                let word = &src[i..j];
                let lower = word.to_ascii_lowercase();
                if lower == "inf" || lower == "nan" {
                    (Tok::Number(if lower == "inf" { f64::INFINITY } else { f64::NAN }), j - i)
                } else {
                    (Tok::Ident(word.to_string()), j - i)
                }
            }
            other => return Err(err(start, format!("unexpected character `{}`", other as char))),
        };
        out.push(Token { tok, pos: start });
        i += len;
    }
    out.push(Token { tok: Tok::Eof, pos: b.len() });
    Ok(out)
}

fn string(s: &str) -> Result<(String, usize), String> {
    let b = s.as_bytes();
    let q = b[0];
    // Bytes, not chars: `\x` and octal escapes write single bytes (as in Go), and the result
    // must still be valid UTF-8.
    let mut out: Vec<u8> = Vec::new();
    let push = |out: &mut Vec<u8>, c: char| {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    };
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c as u32 == u32::from(q) {
            return String::from_utf8(out)
                .map(|s| (s, i + 1))
                .map_err(|_| "invalid UTF-8 in string".to_string());
        }
        if q == b'`' {
            push(&mut out, c);
            continue;
        }
        if c == '\n' {
            return Err("unterminated quoted string".into());
        }
        if c != '\\' {
            push(&mut out, c);
            continue;
        }
        let Some((_, e)) = chars.next() else { break };
        let simple = match e {
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'v' => Some('\u{b}'),
            '\\' => Some('\\'),
            '"' => Some('"'),
            '\'' => Some('\''),
            _ => None,
        };
        if let Some(c) = simple {
            push(&mut out, c);
            continue;
        }
        match e {
            'x' => {
                let mut v = 0u32;
                for _ in 0..2 {
                    let (_, h) = chars.next().ok_or("unterminated escape")?;
                    v = v * 16 + h.to_digit(16).ok_or("invalid escape")?;
                }
                out.push(v as u8);
            }
            'u' | 'U' => {
                let n = if e == 'u' { 4 } else { 8 };
                let mut v = 0u32;
                for _ in 0..n {
                    let (_, h) = chars.next().ok_or("unterminated escape")?;
                    v = v * 16 + h.to_digit(16).ok_or("invalid escape")?;
                }
                push(&mut out, char::from_u32(v).ok_or("invalid escape")?);
            }
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    let (_, h) = chars.next().ok_or("unterminated escape")?;
                    v = v * 8 + h.to_digit(8).ok_or("invalid escape")?;
                }
                if v > 255 {
                    return Err("octal escape value > 255".into());
                }
                out.push(v as u8);
            }
            other => return Err(format!("unknown escape sequence `\\{other}`")),
        }
    }
    Err("unterminated quoted string".into())
}

/// Units by decreasing size; a duration's units must appear in this order ("1h30m").
const UNITS: [(&str, i64); 7] = [
    ("y", 31_536_000_000),
    ("w", 604_800_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

/// A number (`1`, `1.5e3`, `0x1f`) or a duration (`5m`, `1h30m`, `500ms`).
fn number_or_duration(s: &str) -> Result<(Tok, usize), String> {
    let b = s.as_bytes();
    // Durations: one or more <digits><unit>, units in decreasing order.
    if let Some((ms, n)) = duration(s) {
        return Ok((Tok::Duration(ms), n));
    }
    if b.len() > 2 && b[0] == b'0' && (b[1] == b'x' || b[1] == b'X') {
        let mut j = 2;
        while j < b.len() && b[j].is_ascii_hexdigit() {
            j += 1;
        }
        let v = i64::from_str_radix(&s[2..j], 16).map_err(|e| format!("bad number `{}`: {e}", &s[..j]))?;
        return Ok((Tok::Number(v as f64), j));
    }
    let mut j = 0;
    while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
        j += 1;
    }
    if j < b.len() && (b[j] == b'e' || b[j] == b'E') {
        let mut k = j + 1;
        if k < b.len() && (b[k] == b'+' || b[k] == b'-') {
            k += 1;
        }
        if k < b.len() && b[k].is_ascii_digit() {
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            j = k;
        }
    }
    if j < b.len() && (b[j].is_ascii_alphabetic() || b[j] == b'_') {
        return Err(format!("bad number or duration syntax `{}`", &s[..=j]));
    }
    let v: f64 = s[..j].parse().map_err(|_| format!("bad number `{}`", &s[..j]))?;
    Ok((Tok::Number(v), j))
}

/// Parses a duration at the start of `s`: `(<digits><unit>)+`.
pub fn duration(s: &str) -> Option<(i64, usize)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    let mut last: Option<usize> = None;
    loop {
        let d0 = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == d0 {
            break;
        }
        let n: i64 = s[d0..i].parse().ok()?;
        let rest = &s[i..];
        let ends = |len: usize| !rest[len..].starts_with(|c: char| c.is_ascii_alphabetic());
        // "ms" before "m".
        let rank = if rest.starts_with("ms") && ends(2) {
            6
        } else {
            UNITS[..6].iter().position(|(name, _)| rest.starts_with(name) && ends(name.len()))?
        };
        if last.is_some_and(|l| rank <= l) {
            return None;
        }
        last = Some(rank);
        total = total.checked_add(n.checked_mul(UNITS[rank].1)?)?;
        i += UNITS[rank].0.len();
        if !b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            break;
        }
    }
    last.map(|_| (total, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn tokens() {
        assert_eq!(
            toks(r#"rate(http{a="x",b!~'y'}[5m] offset 1h30m) > 0x10"#),
            vec![
                Tok::Ident("rate".into()),
                Tok::LParen,
                Tok::Ident("http".into()),
                Tok::LBrace,
                Tok::Ident("a".into()),
                Tok::Assign,
                Tok::Str("x".into()),
                Tok::Comma,
                Tok::Ident("b".into()),
                Tok::NotReMatch,
                Tok::Str("y".into()),
                Tok::RBrace,
                Tok::LBracket,
                Tok::Duration(300_000),
                Tok::RBracket,
                Tok::Ident("offset".into()),
                Tok::Duration(5_400_000),
                Tok::RParen,
                Tok::Gtr,
                Tok::Number(16.0),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("1.5e3 500ms 2d")[..3],
            [Tok::Number(1500.0), Tok::Duration(500), Tok::Duration(172_800_000)]
        );
        assert_eq!(toks("a:b:c[1m:30s]")[0], Tok::Ident("a:b:c".into()));
        assert_eq!(toks(r#""a\"b\n\x41\u00e9\xc3\xa9""#)[0], Tok::Str("a\"b\nAéé".into()));
        assert!(lex(r#""\xff""#).is_err());
        assert!(lex("\"abc").is_err());
        assert!(lex("1x").is_err());
        assert!(lex("a $ b").is_err());
    }
}
