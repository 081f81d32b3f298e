//! Coverage-guided fuzzing of virtlet's parsers.
//!
//! `scripts/fuzz [seconds] [target...]` builds `virtlet-fuzz` with LLVM SanitizerCoverage
//! (inline 8-bit edge counters, the instrumentation libFuzzer uses) and runs each target for
//! the given time. The engine ([`engine`]) keeps every input that reaches a new edge or hit
//! count, mutates kept inputs libFuzzer-style, and stops at the first panic, saving the input
//! under `target/fuzz-artifacts/<target>/`.
//!
//! Why not cargo-fuzz: libfuzzer-sys and cargo-fuzz could not be fetched on our machines (the
//! crates.io registry did not resolve). The targets are plain `fn(&[u8])`, so moving them
//! under `cargo fuzz` is a one-line `fuzz_target!` wrapper each once it can be fetched.

pub mod coverage;
pub mod engine;
pub mod targets;
