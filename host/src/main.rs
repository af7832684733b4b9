//! The `weft` binary: parses the command line, sets up logging, runs the command.

use clap::Parser;
use std::time::Duration;

/// How long the runtime waits, once the command has returned, for blocking work still running —
/// a guest call a forced stop left behind — before the process exits anyway.
const BLOCKING_WORK_WAIT: Duration = Duration::from_secs(1);

fn main() {
    if let Err(error) = weft::observability::init_logging() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let outcome = runtime.block_on(weft::cli::Cli::parse().run());
    runtime.shutdown_timeout(BLOCKING_WORK_WAIT);
    if let Err(error) = outcome {
        // The reader of stdout went away (`weft plugin list | head -1`): nothing went wrong.
        if error.is::<weft::cli::OutputClosed>() {
            return;
        }
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
