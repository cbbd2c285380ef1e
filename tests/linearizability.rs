//! A linearizability checker for histories of register operations (put, get, compare-and-set on
//! revisions) on keys of the KV store: the Wing–Gong search with Lowe's memoisation of (set of
//! linearized operations, state) — the algorithm of Porcupine and Knossos — run per key (a
//! history is linearizable iff each key's is: registers compose).
//!
//! An operation whose outcome the client does not know (a timeout, a `503`, a dropped
//! connection) may have taken effect at any time after its call, or never: it is given a return
//! time after every other operation, and the model accepts any result for it. Placed last it has
//! no observable effect, which covers "never".
//!
//! The model is the store's: a key's state is its value and revision (the raft index of the
//! write, so revisions of later writes are larger); a put answers the new revision; a get the
//! value and revision, or not found; a CAS with an expected revision (0: the key must be
//! absent) writes and answers the new revision, or answers a conflict with the current one.

use std::collections::{BTreeMap, HashSet};

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Put(String),
    Get,
    Cas { expect: u64, value: String },
}

/// What it was answered; `Unknown` when it cannot tell (the write may or may not be applied).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    Written(u64),
    Found(String, u64),
    NotFound,
    Conflict(u64),
    Unknown,
}

/// One operation: its key, times (any monotonic clock, e.g. ns since the run began).
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub input: Input,
    pub output: Output,
    pub call: u64,
    pub ret: u64,
}

/// A key's state: its value and revision; the revision is unknown after a write whose answer
/// was lost (until a read shows it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum State {
    Absent,
    Present(String, Option<u64>),
}

impl State {
    fn revision(&self) -> Option<u64> {
        match self {
            State::Absent => Some(0),
            State::Present(_, r) => *r,
        }
    }
}

/// The store's register, one step: the state after `input` answered `output`, if that answer
/// is possible from `state`.
fn step(state: &State, input: &Input, output: &Output) -> Option<State> {
    let newer = |rev: u64| state.revision().is_none_or(|cur| rev > cur);
    match (input, output) {
        (Input::Put(v) | Input::Cas { value: v, .. }, Output::Unknown) => {
            // Applied (it is placed last if it was not): a CAS only if it could have matched.
            match input {
                Input::Cas { expect, .. } if state.revision().is_some_and(|r| r != *expect) => {
                    Some(state.clone())
                }
                _ => Some(State::Present(v.clone(), None)),
            }
        }
        (Input::Get, Output::Unknown) => Some(state.clone()),
        (Input::Put(v), Output::Written(rev)) => newer(*rev).then(|| State::Present(v.clone(), Some(*rev))),
        (Input::Get, Output::NotFound) => (*state == State::Absent).then(|| state.clone()),
        (Input::Get, Output::Found(v, rev)) => match state {
            State::Present(cur, r) if cur == v && r.is_none_or(|r| r == *rev) => {
                Some(State::Present(v.clone(), Some(*rev)))
            }
            _ => None,
        },
        (Input::Cas { expect, value }, Output::Written(rev)) => {
            let matches = match state {
                State::Absent => *expect == 0,
                State::Present(_, r) => *expect != 0 && r.is_none_or(|r| r == *expect),
            };
            (matches && newer(*rev)).then(|| State::Present(value.clone(), Some(*rev)))
        }
        (Input::Cas { expect, .. }, Output::Conflict(current)) => {
            let ok = match state {
                State::Absent => *current == 0 && *expect != 0,
                State::Present(_, r) => {
                    *current != 0 && *current != *expect && r.is_none_or(|r| r == *current)
                }
            };
            ok.then(|| match state {
                State::Present(v, _) => State::Present(v.clone(), Some(*current)),
                State::Absent => State::Absent,
            })
        }
        _ => None,
    }
}

/// The verdict on a history.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Not linearizable: the key, and the operations of its history (for the report).
    Violation {
        key: String,
        ops: usize,
    },
    /// The search gave up after this many steps on a key (never seen with the suite's
    /// histories; a violation is never reported unless proven).
    Unknown {
        key: String,
    },
    /// Not a history a set of sequential clients can produce: a client's operations overlap,
    /// or one returns before its call (a harness bug, not the store's).
    Malformed(String),
}

/// Checks every key's history.
pub fn check(ops: &[Op]) -> Verdict {
    let mut by_client: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if op.ret < op.call {
            return Verdict::Malformed(format!("{op:?} returns before its call"));
        }
        by_client.entry(op.client).or_default().push(op);
    }
    for (client, mut mine) in by_client {
        mine.sort_by_key(|o| o.call);
        if let Some(w) = mine.windows(2).find(|w| w[1].call < w[0].ret) {
            return Verdict::Malformed(format!("client {client}: {:?} overlaps {:?}", w[0], w[1]));
        }
    }
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        match check_key(&ops, 50_000_000) {
            Some(true) => {}
            Some(false) => return Verdict::Violation { key: key.to_string(), ops: ops.len() },
            None => return Verdict::Unknown { key: key.to_string() },
        }
    }
    Verdict::Ok
}

/// Call and return events in time order, as a doubly linked list (indices) so the search can
/// lift an operation's two events out and put them back.
struct Events {
    /// (op, is_call); slot 0 is the head sentinel.
    ev: Vec<(usize, bool)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The return event of each op.
    ret_of: Vec<usize>,
}

const NIL: usize = usize::MAX;

impl Events {
    fn new(ops: &[&Op]) -> Events {
        let mut list: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, o) in ops.iter().enumerate() {
            let ret = if o.output == Output::Unknown { u64::MAX } else { o.ret.max(o.call) };
            list.push((o.call, true, i));
            list.push((ret, false, i));
        }
        // At equal times a return comes before a call: operations that merely touch are not
        // concurrent (the stricter order).
        list.sort_by_key(|&(t, is_call, i)| (t, is_call, i));
        let n = list.len() + 1;
        let mut e = Events {
            ev: vec![(NIL, false)],
            next: vec![NIL; n],
            prev: vec![NIL; n],
            ret_of: vec![0; ops.len()],
        };
        for (t, (_, is_call, i)) in list.into_iter().enumerate() {
            let slot = t + 1;
            e.ev.push((i, is_call));
            if !is_call {
                e.ret_of[i] = slot;
            }
            e.prev[slot] = slot - 1;
            e.next[slot - 1] = slot;
        }
        e
    }

    fn unlink(&mut self, s: usize) {
        let (p, n) = (self.prev[s], self.next[s]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, s: usize) {
        let (p, n) = (self.prev[s], self.next[s]);
        self.next[p] = s;
        if n != NIL {
            self.prev[n] = s;
        }
    }

    /// Takes an operation's call (at `s`) and its return out of the list.
    fn lift(&mut self, s: usize) {
        let r = self.ret_of[self.ev[s].0];
        self.unlink(s);
        self.unlink(r);
    }

    /// Puts them back (in the reverse order of `lift`).
    fn unlift(&mut self, s: usize) {
        let r = self.ret_of[self.ev[s].0];
        self.relink(r);
        self.relink(s);
    }
}

/// Some(linearizable?) for one key, None if the search passed `budget` steps.
fn check_key(ops: &[&Op], budget: u64) -> Option<bool> {
    let mut ev = Events::new(ops);
    let words = ops.len().div_ceil(64);
    let mut done = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = State::Absent;
    let mut at = ev.next[0];
    let mut steps = 0u64;
    while ev.next[0] != NIL {
        steps += 1;
        if steps > budget {
            return None;
        }
        if at == NIL {
            // Past the end with calls left unplaced (cannot happen: every call's return follows
            // it), handled as a dead end.
            let Some((s, prev)) = stack.pop() else { return Some(false) };
            let i = ev.ev[s].0;
            done[i / 64] &= !(1 << (i % 64));
            ev.unlift(s);
            state = prev;
            at = ev.next[s];
            continue;
        }
        let (i, is_call) = ev.ev[at];
        if is_call {
            let op = ops[i];
            if let Some(next) = step(&state, &op.input, &op.output) {
                let mut d = done.clone();
                d[i / 64] |= 1 << (i % 64);
                if seen.insert((d.clone(), next.clone())) {
                    stack.push((at, state));
                    state = next;
                    done = d;
                    ev.lift(at);
                    at = ev.next[0];
                    continue;
                }
            }
            at = ev.next[at];
        } else {
            // An operation returned before every candidate was placed: undo the last choice.
            let Some((s, prev)) = stack.pop() else { return Some(false) };
            let j = ev.ev[s].0;
            done[j / 64] &= !(1 << (j % 64));
            ev.unlift(s);
            state = prev;
            at = ev.next[s];
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, input: Input, output: Output, call: u64, ret: u64) -> Op {
        Op { client, key: "k".into(), input, output, call, ret }
    }
    fn put(v: &str) -> Input {
        Input::Put(v.into())
    }
    fn found(v: &str, rev: u64) -> Output {
        Output::Found(v.into(), rev)
    }

    #[test]
    fn sequential_histories() {
        let good = [
            op(0, Input::Get, Output::NotFound, 0, 1),
            op(0, put("a"), Output::Written(5), 2, 3),
            op(0, Input::Get, found("a", 5), 4, 5),
            op(0, Input::Cas { expect: 5, value: "b".into() }, Output::Written(7), 6, 7),
            op(0, Input::Cas { expect: 5, value: "c".into() }, Output::Conflict(7), 8, 9),
            op(0, Input::Get, found("b", 7), 10, 11),
        ];
        assert_eq!(check(&good), Verdict::Ok);
        // A stale read after a write completed.
        let mut stale = good.to_vec();
        stale.push(op(1, Input::Get, found("a", 5), 12, 13));
        assert!(matches!(check(&stale), Verdict::Violation { .. }));
        // A lost acknowledged write: read absent after it.
        let lost = [op(0, put("a"), Output::Written(5), 0, 1), op(1, Input::Get, Output::NotFound, 2, 3)];
        assert!(matches!(check(&lost), Verdict::Violation { .. }));
        // Revisions going backwards.
        let back = [op(0, put("a"), Output::Written(5), 0, 1), op(0, put("b"), Output::Written(4), 2, 3)];
        assert!(matches!(check(&back), Verdict::Violation { .. }));
        // A CAS that succeeded against the wrong revision.
        let bad_cas = [
            op(0, put("a"), Output::Written(5), 0, 1),
            op(0, Input::Cas { expect: 4, value: "b".into() }, Output::Written(6), 2, 3),
        ];
        assert!(matches!(check(&bad_cas), Verdict::Violation { .. }));
        // A CAS on an absent key needs expect 0; a conflict on an absent key reports 0.
        let absent = [
            op(0, Input::Cas { expect: 3, value: "x".into() }, Output::Conflict(0), 0, 1),
            op(0, Input::Cas { expect: 0, value: "y".into() }, Output::Written(2), 2, 3),
            op(0, Input::Get, found("y", 2), 4, 5),
        ];
        assert_eq!(check(&absent), Verdict::Ok);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Two overlapping puts; reads after both see either, consistently.
        let h = |last: &str, rev: u64| {
            vec![
                op(0, put("a"), Output::Written(5), 0, 10),
                op(1, put("b"), Output::Written(6), 1, 9),
                op(2, Input::Get, found(last, rev), 11, 12),
                op(2, Input::Get, found(last, rev), 13, 14),
            ]
        };
        // Revision 6 was assigned after 5: "b" is the later write.
        assert_eq!(check(&h("b", 6)), Verdict::Ok);
        assert!(matches!(check(&h("a", 5)), Verdict::Violation { .. }));
        // A read concurrent with a write may see the old or the new value...
        let during = [
            op(0, put("a"), Output::Written(5), 0, 1),
            op(0, put("b"), Output::Written(6), 2, 10),
            op(1, Input::Get, found("a", 5), 3, 4),
            op(1, Input::Get, found("b", 6), 5, 6),
        ];
        assert_eq!(check(&during), Verdict::Ok);
        // ...but not the new one and then the old one.
        let flicker = [
            op(0, put("a"), Output::Written(5), 0, 1),
            op(0, put("b"), Output::Written(6), 2, 10),
            op(1, Input::Get, found("b", 6), 3, 4),
            op(1, Input::Get, found("a", 5), 5, 6),
        ];
        assert!(matches!(check(&flicker), Verdict::Violation { .. }));
    }

    #[test]
    fn writes_with_unknown_outcomes_may_or_may_not_happen() {
        let maybe = |reads: Vec<Op>| {
            let mut h = vec![
                op(0, put("a"), Output::Written(5), 0, 1),
                op(1, put("b"), Output::Unknown, 2, u64::MAX),
            ];
            h.extend(reads);
            h
        };
        // Never applied.
        assert_eq!(check(&maybe(vec![op(2, Input::Get, found("a", 5), 3, 4)])), Verdict::Ok);
        // Applied, observed later, with its revision.
        let seen = vec![op(2, Input::Get, found("a", 5), 3, 4), op(2, Input::Get, found("b", 9), 20, 21)];
        assert_eq!(check(&maybe(seen)), Verdict::Ok);
        // But once observed it cannot be un-applied.
        let flicker = vec![op(2, Input::Get, found("b", 9), 3, 4), op(2, Input::Get, found("a", 5), 5, 6)];
        assert!(matches!(check(&maybe(flicker)), Verdict::Violation { .. }));
        // A value nobody wrote is never explained.
        assert!(matches!(
            check(&maybe(vec![op(2, Input::Get, found("z", 7), 3, 4)])),
            Verdict::Violation { .. }
        ));
    }

    #[test]
    fn histories_no_sequential_clients_make_are_refused() {
        let overlapping =
            [op(0, put("a"), Output::Written(1), 0, 10), op(0, Input::Get, found("a", 1), 5, 6)];
        assert!(matches!(check(&overlapping), Verdict::Malformed(_)));
        let backwards = [op(0, put("a"), Output::Written(1), 10, 5)];
        assert!(matches!(check(&backwards), Verdict::Malformed(_)));
    }

    #[test]
    fn keys_are_checked_independently_and_big_histories_finish() {
        // 8 clients x 40 concurrent-ish ops on 3 keys, generated from a sequential execution
        // whose real order is hidden by overlapping intervals: linearizable by construction.
        let mut ops = Vec::new();
        let mut state: BTreeMap<String, (String, u64)> = BTreeMap::new();
        let mut rev = 0u64;
        let mut x = 12345u64;
        for t in 0..320u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let key = format!("k{}", (x >> 33) % 3);
            let client = (t % 8) as usize;
            let (input, output) = match (x >> 40) % 3 {
                0 => {
                    rev += 1;
                    let v = format!("v{t}");
                    state.insert(key.clone(), (v.clone(), rev));
                    (Input::Put(v), Output::Written(rev))
                }
                1 => match state.get(&key) {
                    Some((v, r)) => (Input::Get, Output::Found(v.clone(), *r)),
                    None => (Input::Get, Output::NotFound),
                },
                _ => {
                    let cur = state.get(&key).map_or(0, |s| s.1);
                    let expect = if (x >> 50) & 1 == 0 { cur } else { cur + 1 };
                    if expect == cur {
                        rev += 1;
                        state.insert(key.clone(), (format!("c{t}"), rev));
                        (Input::Cas { expect, value: format!("c{t}") }, Output::Written(rev))
                    } else {
                        (Input::Cas { expect, value: format!("c{t}") }, Output::Conflict(cur))
                    }
                }
            };
            // Each op's interval covers its neighbours' (t*10 - 15 .. t*10 + 15).
            ops.push(Op { client, key, input, output, call: (t * 10).saturating_sub(15), ret: t * 10 + 15 });
        }
        assert_eq!(check(&ops), Verdict::Ok);
        // Corrupt one read: caught.
        let i = ops.iter().rposition(|o| matches!(o.output, Output::Found(..))).unwrap();
        if let Output::Found(_, r) = &ops[i].output {
            ops[i].output = Output::Found("nobody wrote this".into(), *r);
        }
        assert!(matches!(check(&ops), Verdict::Violation { .. }));
    }
}
