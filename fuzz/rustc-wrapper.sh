#!/bin/sh
# RUSTC_WRAPPER for fuzz builds (fuzz/run-all.sh sets it): builds the regex crates without
# coverage instrumentation; every other crate is built exactly as cargo-fuzz asks.
#
# Why: `promql` fuzzes our PromQL parser, and each `=~` matcher compiles a regex. With coverage
# feedback from inside `regex-syntax` and `regex-automata` (crates OSS-Fuzz fuzzes on their own)
# libFuzzer kept every input that reached a new corner of regex compilation: the corpus grew to
# 11,000 inputs, two thirds of them regexes, and an execution took 4 ms. The regex code still
# runs in every execution, so a panic there still stops the fuzzer; it only stops steering it.
#
# rustc takes the last `-sanitizer-coverage-level` it is given, so level 0 at the end of the
# command line switches the pass off for that crate.
rustc="$1"
shift
case " $* " in
*" --crate-name regex "* | *" --crate-name regex_syntax "* | *" --crate-name regex_automata "* | \
  *" --crate-name aho_corasick "*)
  exec "$rustc" "$@" -Cllvm-args=-sanitizer-coverage-level=0
  ;;
esac
exec "$rustc" "$@"
