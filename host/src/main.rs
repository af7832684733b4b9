//! The `weft` binary: parses the command line, sets up logging, runs the command.

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(error) = weft::cli::Cli::parse().run().await {
        // The reader of stdout went away (`weft plugin list | head -1`): nothing went wrong.
        if error.is::<weft::cli::OutputClosed>() {
            return;
        }
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
