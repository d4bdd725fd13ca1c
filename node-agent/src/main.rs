use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kata_node_agent::check::EXIT_USAGE;
use kata_node_agent::daemon::{AgentOptions, DaemonError, run_agent};
use kata_node_agent::metrics::DEFAULT_METRICS_ADDRESS;
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
    /// Probe this host continuously and report to the coordinator over its
    /// TLS health channel, until SIGTERM or SIGINT.
    ///
    /// Exit status: 0 after a signal, 64 for an unusable coordinator address.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The coordinator's health service, `https://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    coordinator: String,
    /// PEM CA bundle that the coordinator's certificate must chain to.
    #[arg(long, value_name = "PATH")]
    ca_file: PathBuf,
    /// The projected ServiceAccount token; re-read at every (re)connect.
    #[arg(long, value_name = "PATH")]
    token_file: PathBuf,
    /// This node's name (the Downward API's `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where the host's filesystem is visible.
    #[arg(long, env = "NODE_AGENT_HOST_ROOT", default_value = "/host")]
    host_root: PathBuf,
    /// Read `rpm-ostree status --json` from this file (a host path, under the
    /// host root) instead of running rpm-ostree.
    #[arg(long, value_name = "PATH")]
    rpm_ostree_status_file: Option<String>,
    /// The name to verify in the coordinator's certificate, when it is not
    /// the host in --coordinator.
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Seconds between probe cycles (fractions allowed).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    probe_interval: Duration,
    /// Serve plain-HTTP `GET /metrics` (Prometheus text format) on this
    /// `IP:PORT`; an empty value serves no metrics.
    #[arg(long, value_name = "IP:PORT", default_value = DEFAULT_METRICS_ADDRESS, value_parser = parse_metrics_address)]
    metrics_address: MetricsAddress,
    /// At most this many bytes of Kata's sandbox metrics on one `/metrics`
    /// page (sandboxes past it are left out and counted as scrape errors);
    /// 0 relays none.
    #[arg(long, value_name = "BYTES", default_value_t = kata_node_agent::sandbox_metrics::ScrapeLimits::default().max_total_bytes)]
    sandbox_metrics_max_bytes: usize,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// `--metrics-address`: where to listen, or nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MetricsAddress(Option<SocketAddr>);

fn parse_metrics_address(text: &str) -> Result<MetricsAddress, String> {
    if text.trim().is_empty() {
        return Ok(MetricsAddress(None));
    }
    text.parse()
        .map(|address| MetricsAddress(Some(address)))
        .map_err(|_| format!("{text:?} is not IP:PORT (or empty, for no metrics)"))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err("must be more than 0".to_owned());
    }
    Duration::try_from_secs_f64(seconds).map_err(|err| err.to_string())
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
        Command::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    init_logging(args.log_json);
    let runtime = match small_runtime() {
        Ok(runtime) => runtime,
        Err(()) => return ExitCode::FAILURE,
    };
    let mut options = AgentOptions::new(
        args.coordinator,
        args.ca_file,
        args.token_file,
        args.node_name,
        HostRoot::new(&args.host_root),
    );
    options.tls_server_name = args.tls_server_name;
    options.probe_interval = args.probe_interval;
    options.runner = runner_options(args.rpm_ostree_status_file);
    options.metrics_address = args.metrics_address.0;
    options.sandbox_metrics.max_total_bytes = args.sandbox_metrics_max_bytes;
    match runtime.block_on(run_agent(options, termination())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ DaemonError::InvalidCoordinator { .. }) => {
            tracing::error!(error = %err, "cannot run");
            ExitCode::from(EXIT_USAGE)
        }
        Err(err) => {
            tracing::error!(error = %err, "stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in Pod logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM (the kubelet stopping the Pod) or SIGINT.
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            // Without a SIGTERM handler the default action still ends the
            // process; only the clean stream close is lost.
            Err(error) => {
                tracing::warn!(%error, "cannot watch for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot watch for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM received"),
        () = interrupt => tracing::info!("SIGINT received"),
    }
}

/// The agent's runtime ([`kata_node_agent::runner::agent_runtime`]). The
/// error has been printed.
fn small_runtime() -> Result<tokio::runtime::Runtime, ()> {
    kata_node_agent::runner::agent_runtime()
        .map_err(|err| eprintln!("node-agent: cannot start the async runtime: {err}"))
}

/// rpm-ostree's status from a file under the host root when given, else
/// from running rpm-ostree.
fn runner_options(rpm_ostree_status_file: Option<String>) -> RunnerOptions {
    RunnerOptions {
        rpm_ostree_status: rpm_ostree_status_file.map_or(StatusSource::Command, StatusSource::File),
        ..RunnerOptions::default()
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let runtime = match small_runtime() {
        Ok(runtime) => runtime,
        Err(()) => return ExitCode::from(EXIT_USAGE),
    };
    let options = runner_options(args.rpm_ostree_status_file);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn run_takes_its_connection_settings_and_defaults_the_rest() {
        let cli = Cli::try_parse_from([
            "node-agent",
            "run",
            "--coordinator",
            "https://coordinator.kata-system.svc:8443",
            "--ca-file",
            "/ca.crt",
            "--token-file",
            "/token",
            "--node-name",
            "worker-0",
            "--probe-interval",
            "0.25",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(args.node_name, "worker-0");
        assert_eq!(args.host_root, PathBuf::from("/host"));
        assert_eq!(args.probe_interval, Duration::from_millis(250));
        assert_eq!(args.tls_server_name, None);
        assert_eq!(
            args.metrics_address,
            MetricsAddress(Some("0.0.0.0:8090".parse().unwrap()))
        );
    }

    #[test]
    fn the_metrics_address_is_an_ip_and_port_or_empty_for_none() {
        assert_eq!(
            parse_metrics_address("[::]:9100").unwrap(),
            MetricsAddress(Some("[::]:9100".parse().unwrap()))
        );
        assert_eq!(parse_metrics_address("").unwrap(), MetricsAddress(None));
        for bad in ["8090", "localhost:8090", "0.0.0.0", "0.0.0.0:http"] {
            assert!(parse_metrics_address(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn probe_interval_must_be_a_positive_number() {
        for bad in ["0", "-1", "NaN", "ten", "inf"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?} accepted");
        }
    }
}
