//! The virtlet daemon: reads the node configuration, opens the metadata store and the image
//! store, and serves CRI v1 on a unix socket until SIGTERM or SIGINT. It wires; it decides
//! nothing.

mod config;
mod server;

use std::process::ExitCode;

use config::Invocation;

fn main() -> ExitCode {
    let invocation = match config::parse(std::env::args(), |k| std::env::var(k).ok()) {
        Ok(i) => i,
        Err(e) => {
            // clap's own help/version output arrives here too.
            let text = e.to_string();
            if text.starts_with("Usage")
                || text.starts_with("Kubernetes")
                || text.starts_with("virtlet ")
            {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            eprintln!("virtlet: {text}");
            return ExitCode::from(2);
        }
    };
    let config = match invocation {
        Invocation::DumpConfig(c) => {
            print!("{}", c.dump());
            return ExitCode::SUCCESS;
        }
        Invocation::Run(c) => c,
    };
    init_logging(config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("virtlet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("virtlet cannot run: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: u8) {
    let default = match level {
        0 => "info",
        1 | 2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},h2=info,hyper=info,tower=info"))
    });
    // At debug level every span reports its duration when it closes: a slow pod start then
    // explains itself phase by phase (sandbox, root disk, seed, define, start, console, resume).
    let span_events = if level >= 1 {
        tracing_subscriber::fmt::format::FmtSpan::CLOSE
    } else {
        tracing_subscriber::fmt::format::FmtSpan::NONE
    };
    tracing_subscriber::fmt()
        .with_span_events(span_events)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
