use clap::Parser;

/// Kata Containers operator coordinator.
#[derive(Parser)]
#[command(name = "coordinator", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
