//! The one piece of runtime that LLVM's SanitizerCoverage needs for inline 8-bit counters.
//!
//! Built with `-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-inline-8bit-counters`
//! (see `scripts/fuzz`), every instrumented module calls
//! `__sanitizer_cov_8bit_counters_init(start, stop)` once at load time with its array of edge
//! counters; the code then bumps a counter each time an edge runs. This is the same interface
//! libFuzzer reads (cargo-fuzz's engine); we read it here because libfuzzer-sys could not be
//! fetched on our machines. Without the instrumentation nothing registers, and
//! [`is_instrumented`] says so.
#![allow(unsafe_code)]

use std::sync::Mutex;

/// Registered counter arrays, as (address, length).
static REGIONS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Called by instrumented code before `main`.
///
/// # Safety
/// `start..stop` must be one module's counter array, alive for the whole process (LLVM
/// emits it as a static).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __sanitizer_cov_8bit_counters_init(start: *mut u8, stop: *mut u8) {
    let len = (stop as usize).saturating_sub(start as usize);
    if len == 0 {
        return;
    }
    let mut regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    if !regions.iter().any(|&(s, _)| s == start as usize) {
        regions.push((start as usize, len));
    }
}

/// Whether this binary was built with coverage counters.
pub fn is_instrumented() -> bool {
    total_counters() > 0
}

/// How many edge counters the binary has.
pub fn total_counters() -> usize {
    regions().iter().map(|&(_, len)| len).sum()
}

fn regions() -> Vec<(usize, usize)> {
    REGIONS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Bucket of a hit count, as libFuzzer and AFL count them: 1, 2, 3, 4-7, 8-15, 16-31,
/// 32-127, 128+ (one bit each).
fn bucket(count: u8) -> u8 {
    match count {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 4,
        4..=7 => 8,
        8..=15 => 16,
        16..=31 => 32,
        32..=127 => 64,
        128.. => 128,
    }
}

/// What has been seen so far: for each counter, the buckets its counts fell in.
pub struct CoverageMap {
    regions: Vec<(usize, usize)>,
    seen: Vec<u8>,
}

impl Default for CoverageMap {
    fn default() -> Self {
        let regions = regions();
        let total = regions.iter().map(|&(_, len)| len).sum();
        CoverageMap {
            regions,
            seen: vec![0; total],
        }
    }
}

impl CoverageMap {
    /// Zeroes the counters before a run.
    pub fn reset(&self) {
        for &(start, len) in &self.regions {
            // SAFETY: registered by the instrumentation as a live static array of `len` bytes;
            // it is only written by the code under test on this thread, which is not running.
            unsafe { std::ptr::write_bytes(start as *mut u8, 0, len) };
        }
    }

    /// Folds the counters of the last run into the map. Returns how many (counter, bucket)
    /// pairs were new: more than zero means the input found new behaviour.
    pub fn absorb(&mut self) -> usize {
        let mut new = 0;
        let mut offset = 0;
        for &(start, len) in &self.regions {
            // SAFETY: as in `reset`; read after the run finished.
            let counters = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
            // Most counters stay zero: skip them eight at a time.
            for (chunk_index, chunk) in counters.chunks(8).enumerate() {
                if chunk.len() == 8 && chunk.iter().fold(0u8, |acc, &c| acc | c) == 0 {
                    continue;
                }
                for (j, &c) in chunk.iter().enumerate() {
                    if c != 0 {
                        let b = bucket(c);
                        let seen = &mut self.seen[offset + chunk_index * 8 + j];
                        if *seen & b == 0 {
                            *seen |= b;
                            new += 1;
                        }
                    }
                }
            }
            offset += len;
        }
        new
    }

    /// How many counters have been hit at least once.
    pub fn edges(&self) -> usize {
        self.seen.iter().filter(|&&s| s != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_single_bits_in_count_order() {
        let mut last = 0;
        for c in 1..=255u8 {
            let b = bucket(c);
            assert_eq!(b.count_ones(), 1, "{c}");
            assert!(b >= last, "{c}");
            last = b;
        }
        assert_eq!(bucket(0), 0);
    }
}
