//! Label matchers (`=`, `!=`, `=~`, `!~`) with Prometheus's semantics: regexes are fully
//! anchored RE2 syntax in which `.` also matches a newline (Prometheus 3), and an absent label
//! has the value "" (so `{a!="x"}` and `{a=~".*"}` match series without `a`).

use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Ne,
    Re,
    Nre,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
            MatchOp::Nre => "!~",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<regex::Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.op == o.op && self.value == o.value
    }
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, Error> {
        let re = match op {
            MatchOp::Re | MatchOp::Nre => Some(
                regex::RegexBuilder::new(&format!("^(?s:{value})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| Error::Invalid(format!("label `{name}`: bad regex `{value}`: {e}")))?,
            ),
            _ => None,
        };
        Ok(Matcher { name: name.to_string(), op, value: value.to_string(), re })
    }

    pub fn eq(name: &str, value: &str) -> Matcher {
        Matcher { name: name.to_string(), op: MatchOp::Eq, value: value.to_string(), re: None }
    }

    /// Whether a label value (`""` when the label is absent) matches.
    pub fn matches(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Eq => v == self.value,
            MatchOp::Ne => v != self.value,
            MatchOp::Re => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::Nre => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }

    /// Whether the matcher selects series that lack the label.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// Whether a label set (sorted by name) matches.
    pub fn matches_labels(&self, labels: &[(String, String)]) -> bool {
        let v =
            labels.binary_search_by(|(k, _)| k.as_str().cmp(&self.name)).map_or("", |i| labels[i].1.as_str());
        self.matches(v)
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semantics() {
        let re = Matcher::new("a", MatchOp::Re, "fo+|ba.").unwrap();
        assert!(re.matches("foo") && re.matches("ba\n") && !re.matches("xfoo") && !re.matches("food"));
        assert!(Matcher::new("a", MatchOp::Ne, "x").unwrap().matches_empty());
        assert!(!Matcher::new("a", MatchOp::Re, ".+").unwrap().matches_empty());
        assert!(Matcher::new("a", MatchOp::Nre, "x").unwrap().matches("y"));
        assert!(Matcher::new("a", MatchOp::Re, "(")
            .unwrap_err()
            .to_string()
            .contains("label `a`: bad regex"));
        let labels = vec![("__name__".to_string(), "m".to_string()), ("b".to_string(), "1".to_string())];
        assert!(Matcher::eq("b", "1").matches_labels(&labels));
        assert!(Matcher::eq("c", "").matches_labels(&labels));
    }
}
