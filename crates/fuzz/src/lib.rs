//! virtlet's fuzz targets: its parsers (annotations, user-data, image references and
//! translation configs, disk formats, SPDY, DHCP) as plain `fn(&[u8])` that must never panic
//! and check what they can of the result.
//!
//! The engine is libFuzzer, through `libfuzzer-sys`: `fuzz/` (a cargo-fuzz project outside
//! the workspace) wraps each target in `fuzz_target!`. `scripts/fuzz` builds it on the
//! stable toolchain with the SanitizerCoverage flags cargo-fuzz passes (edge counters,
//! comparison tracing, PC table) and runs each target with its seeds (`fuzz/corpus/<name>`)
//! and dictionary (`fuzz/dict/<name>.dict`). With a nightly toolchain, `cargo fuzz run
//! <name>` in the repository works too. This crate is in the workspace, so the seeds run as
//! unit tests.

pub mod targets;
