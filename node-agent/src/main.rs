use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kata_node_agent::check::EXIT_USAGE;
use kata_node_agent::{
    CheckReport, ExpectedConfig, HostRoot, ProbeRunner, RunnerOptions, StatusSource,
};

/// Kata Containers node agent: probes this host and reports to the coordinator.
#[derive(Parser)]
#[command(name = "node-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Probe this host once and print what can and cannot run Kata.
    ///
    /// Exit status: 0 runtime ready, 1 KVM-capable but not ready, 2 not
    /// KVM-capable, 64 usage error.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Where the host's filesystem is visible (`/host` in the DaemonSet).
    #[arg(long, env = "NODE_AGENT_HOST_ROOT", default_value = "/")]
    host_root: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Read `rpm-ostree status --json` from this file (a host path, under the
    /// host root) instead of running rpm-ostree.
    #[arg(long, value_name = "PATH")]
    rpm_ostree_status_file: Option<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print and succeed; real usage errors get their
        // own code so they cannot be mistaken for "not capable" (2).
        Err(err) if err.use_stderr() => {
            let _ = err.print();
            return ExitCode::from(EXIT_USAGE);
        }
        Err(err) => err.exit(),
    };
    match cli.command {
        Command::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> ExitCode {
    // One thread: the probes are mostly waiting on the blocking pool, and a
    // small runtime keeps the agent's memory low.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("node-agent: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let options = RunnerOptions {
        rpm_ostree_status: args
            .rpm_ostree_status_file
            .map_or(StatusSource::Command, StatusSource::File),
        ..RunnerOptions::default()
    };
    let root = HostRoot::new(&args.host_root);
    let mut runner = ProbeRunner::with_options(ExpectedConfig::default(), root, options);
    let outcomes = runtime.block_on(runner.run_cycle());
    let report = CheckReport::new(args.host_root.display().to_string(), outcomes);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    ExitCode::from(report.exit_code())
}
