use clap::Parser;

/// Kata Containers node agent: probes this host and reports to the coordinator.
#[derive(Parser)]
#[command(name = "node-agent", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
