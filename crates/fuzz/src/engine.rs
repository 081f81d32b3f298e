//! A small coverage-guided mutational fuzzer in the manner of libFuzzer: keep every input
//! that reaches a new (edge, hit-count bucket), mutate kept inputs, stop at the first panic
//! and save the input that caused it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::coverage::CoverageMap;
use crate::targets::Target;

pub struct Options {
    pub duration: Duration,
    pub seed: u64,
    pub max_len: usize,
    /// Extra inputs to start from; new interesting inputs are written here too.
    pub corpus_dir: Option<PathBuf>,
    /// Where a crashing input is written.
    pub artifacts_dir: PathBuf,
}

#[derive(Debug)]
pub struct Report {
    pub execs: u64,
    pub corpus: usize,
    pub edges: usize,
    pub elapsed: Duration,
    /// The crashing input and where it was saved.
    pub crash: Option<(Vec<u8>, PathBuf)>,
}

/// Runs `data` through the target; `false` when it panicked.
fn exec(target: &Target, data: &[u8]) -> bool {
    catch_unwind(AssertUnwindSafe(|| (target.run)(data))).is_ok()
}

pub fn fuzz(target: &Target, opts: &Options) -> std::io::Result<Report> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut map = CoverageMap::default();
    let started = Instant::now();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut execs = 0u64;

    let mut seeds: Vec<Vec<u8>> = target.seeds.iter().map(|s| s.to_vec()).collect();
    seeds.push(Vec::new());
    if let Some(dir) = &opts.corpus_dir {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_file() {
                seeds.push(std::fs::read(&path)?);
            }
        }
    }
    for seed in seeds {
        map.reset();
        let ok = exec(target, &seed);
        execs += 1;
        if !ok {
            return crashed(target, opts, seed, execs, &corpus, &map, started);
        }
        if map.absorb() > 0 || corpus.is_empty() {
            corpus.push(seed);
        }
    }

    let mut input = Vec::with_capacity(opts.max_len);
    while started.elapsed() < opts.duration {
        for _ in 0..256 {
            let base = &corpus[rng.random_range(0..corpus.len())];
            input.clear();
            input.extend_from_slice(base);
            let other = &corpus[rng.random_range(0..corpus.len())];
            for _ in 0..rng.random_range(1..=6) {
                mutate(&mut input, other, target.dictionary, opts.max_len, &mut rng);
            }
            map.reset();
            let ok = exec(target, &input);
            execs += 1;
            if !ok {
                return crashed(target, opts, input, execs, &corpus, &map, started);
            }
            if map.absorb() > 0 {
                if let Some(dir) = &opts.corpus_dir {
                    std::fs::write(dir.join(name_of(&input)), &input)?;
                }
                corpus.push(input.clone());
            }
        }
    }
    Ok(Report {
        execs,
        corpus: corpus.len(),
        edges: map.edges(),
        elapsed: started.elapsed(),
        crash: None,
    })
}

fn crashed(
    target: &Target,
    opts: &Options,
    input: Vec<u8>,
    execs: u64,
    corpus: &[Vec<u8>],
    map: &CoverageMap,
    started: Instant,
) -> std::io::Result<Report> {
    let dir = opts.artifacts_dir.join(target.name);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("crash-{}", name_of(&input)));
    std::fs::write(&path, &input)?;
    Ok(Report {
        execs,
        corpus: corpus.len(),
        edges: map.edges(),
        elapsed: started.elapsed(),
        crash: Some((input, path)),
    })
}

/// A stable file name for an input (FNV-1a of its bytes).
fn name_of(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Runs one saved input (to reproduce a crash): `Ok(true)` when it ran without panicking.
pub fn replay(target: &Target, path: &Path) -> std::io::Result<bool> {
    let data = std::fs::read(path)?;
    Ok(exec(target, &data))
}

const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'0', b'\n', b'"'];

/// One random change to `input`, libFuzzer-style.
fn mutate(input: &mut Vec<u8>, other: &[u8], dict: &[&[u8]], max_len: usize, rng: &mut StdRng) {
    let len = input.len();
    match rng.random_range(0..11) {
        // Flip a bit.
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] ^= 1 << rng.random_range(0..8);
        }
        // A random byte.
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = rng.random();
        }
        // An interesting byte.
        2 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
        }
        // Small arithmetic.
        3 if len > 0 => {
            let i = rng.random_range(0..len);
            let d = rng.random_range(1..=16u8);
            input[i] = if rng.random() {
                input[i].wrapping_add(d)
            } else {
                input[i].wrapping_sub(d)
            };
        }
        // Delete a range.
        4 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(16));
            input.drain(i..i + n);
        }
        // Insert random bytes.
        5 if len < max_len => {
            let i = rng.random_range(0..=len);
            let n = rng.random_range(1..=(max_len - len).min(8));
            for _ in 0..n {
                input.insert(i, rng.random());
            }
        }
        // Duplicate a range.
        6 if len > 0 && len < max_len => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(max_len - len).min(32));
            let copy: Vec<u8> = input[i..i + n].to_vec();
            let at = rng.random_range(0..=len);
            input.splice(at..at, copy);
        }
        // Insert or overwrite with a dictionary token.
        7 | 8 if !dict.is_empty() => {
            let tok = dict[rng.random_range(0..dict.len())];
            let at = rng.random_range(0..=len);
            if rng.random() || at == len {
                if len + tok.len() <= max_len {
                    input.splice(at..at, tok.iter().copied());
                }
            } else {
                let end = (at + tok.len()).min(len);
                input.splice(at..end, tok.iter().copied());
            }
        }
        // Splice with another corpus input.
        9 if !other.is_empty() => {
            let cut = rng.random_range(0..=len);
            let from = rng.random_range(0..other.len());
            input.truncate(cut);
            let room = max_len.saturating_sub(input.len());
            input.extend(other[from..].iter().take(room));
        }
        // Change a big-endian 16/32-bit length-like field.
        10 if len >= 4 => {
            let i = rng.random_range(0..=len - 4);
            let v = u32::from_be_bytes([input[i], input[i + 1], input[i + 2], input[i + 3]]);
            let nv = match rng.random_range(0..4) {
                0 => 0,
                1 => u32::MAX,
                2 => v.wrapping_add(rng.random_range(1..64)),
                _ => v.wrapping_sub(rng.random_range(1..64)),
            };
            input[i..i + 4].copy_from_slice(&nv.to_be_bytes());
        }
        _ => {
            if len < max_len {
                input.push(rng.random());
            }
        }
    }
    input.truncate(max_len);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_length_limit() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut input = b"hello".to_vec();
        let dict: &[&[u8]] = &[b"#cloud-config\n", b"VirtletSSHKeys"];
        for _ in 0..100_000 {
            mutate(&mut input, b"other input", dict, 64, &mut rng);
            assert!(input.len() <= 64);
        }
    }

    #[test]
    fn a_panicking_target_is_caught_and_saved() {
        fn boom(data: &[u8]) {
            if data.first() == Some(&b'!') {
                panic!("boom");
            }
        }
        let target = Target {
            name: "boom",
            run: boom,
            seeds: &[b"ok", b"!"],
            dictionary: &[],
        };
        let dir = std::env::temp_dir().join(format!("virtlet-fuzz-test-{}", std::process::id()));
        let report = fuzz(
            &target,
            &Options {
                duration: Duration::from_secs(5),
                seed: 1,
                max_len: 16,
                corpus_dir: None,
                artifacts_dir: dir.clone(),
            },
        )
        .unwrap();
        let (input, path) = report.crash.unwrap();
        assert_eq!(input, b"!");
        assert_eq!(std::fs::read(&path).unwrap(), b"!");
        assert!(!replay(&target, &path).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
