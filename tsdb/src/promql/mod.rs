//! A PromQL subset with Prometheus 3's semantics: parsing (`parser`), evaluation (`eval`) and
//! the functions (`functions`). What is covered, and which of Prometheus's own test cases are
//! skipped and why, is listed in `tsdb/tests/promql.rs`.

pub mod ast;
pub mod eval;
pub mod functions;
pub mod lexer;
pub mod parser;

pub use eval::{instant_query, range_query, Options, QueryResult, Queryable};
pub use parser::{parse, parse_selector};

/// The engine's series of one namespace, as a query source.
pub struct NsQuerier<'a> {
    pub engine: &'a crate::engine::Engine,
    pub ns: &'a str,
}

impl Queryable for NsQuerier<'_> {
    fn select(
        &self,
        matchers: &[crate::matcher::Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<crate::engine::Series>, crate::Error> {
        self.engine.select(self.ns, matchers, mint, maxt)
    }
}
