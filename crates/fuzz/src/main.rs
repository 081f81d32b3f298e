//! `virtlet-fuzz`: runs the fuzz targets (see the crate docs and `scripts/fuzz`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use virtlet_fuzz::{coverage, engine, targets};

#[derive(Parser)]
#[command(about = "Coverage-guided fuzzing of virtlet's parsers")]
struct Cli {
    /// Targets to run (all when none are named).
    targets: Vec<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Random seed (runs with the same seed, binary and corpus mutate the same way).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Longest input tried.
    #[arg(long, default_value_t = 4096)]
    max_len: usize,
    /// Keeps each target's corpus in DIR/<target> (read at start, new inputs added).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Where crashing inputs are written.
    #[arg(long, default_value = "target/fuzz-artifacts")]
    artifacts: PathBuf,
    /// Runs one saved input through the (single) named target instead of fuzzing.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Lists the targets.
    #[arg(long)]
    list: bool,
    /// Runs without coverage counters (blind random mutation); for builds without the
    /// instrumentation only.
    #[arg(long)]
    allow_uninstrumented: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.list {
        for t in targets::TARGETS {
            println!("{}", t.name);
        }
        return Ok(());
    }
    let chosen: Vec<&targets::Target> = if cli.targets.is_empty() {
        targets::TARGETS.iter().collect()
    } else {
        cli.targets
            .iter()
            .map(|n| {
                targets::find(n)
                    .with_context(|| format!("no fuzz target {n:?} (--list shows them)"))
            })
            .collect::<Result<_>>()?
    };
    if let Some(path) = &cli.replay {
        let [target] = chosen[..] else {
            bail!("--replay needs exactly one target name");
        };
        if engine::replay(target, path)? {
            println!("{}: {} runs clean", target.name, path.display());
            return Ok(());
        }
        bail!("{}: {} panics", target.name, path.display());
    }
    if !coverage::is_instrumented() && !cli.allow_uninstrumented {
        bail!(
            "this virtlet-fuzz binary has no coverage counters: build it with scripts/fuzz \
             (RUSTFLAGS with -Cpasses=sancov-module), or pass --allow-uninstrumented"
        );
    }
    println!(
        "virtlet-fuzz: {} edge counters, {} s per target, seed {}",
        coverage::total_counters(),
        cli.seconds,
        cli.seed
    );
    let mut failed = Vec::new();
    for target in chosen {
        let report = engine::fuzz(
            target,
            &engine::Options {
                duration: Duration::from_secs(cli.seconds),
                seed: cli.seed,
                max_len: cli.max_len,
                corpus_dir: cli.corpus.as_ref().map(|d| d.join(target.name)),
                artifacts_dir: cli.artifacts.clone(),
            },
        )
        .with_context(|| format!("fuzzing {}", target.name))?;
        println!(
            "{:<20} {:>9} execs in {:>5.1} s ({:>7.0}/s), {:>5} edges, corpus {:>4}",
            target.name,
            report.execs,
            report.elapsed.as_secs_f64(),
            report.execs as f64 / report.elapsed.as_secs_f64().max(1e-9),
            report.edges,
            report.corpus
        );
        if let Some((input, path)) = report.crash {
            println!(
                "{}: CRASH on a {}-byte input, saved to {}\n  replay: virtlet-fuzz --replay {} {}",
                target.name,
                input.len(),
                path.display(),
                path.display(),
                target.name
            );
            failed.push(target.name);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets found panics: {}", failed.join(", "));
    }
    Ok(())
}
