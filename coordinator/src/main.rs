use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use kata_coordinator::{manifests, reconciler};
use tracing_subscriber::EnvFilter;

/// Kata Containers operator coordinator: reconciles the KataConfig into
/// MachineConfigs, a MachineConfigPool, node labels and the `kata` RuntimeClass.
#[derive(Parser)]
#[command(name = "coordinator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the KataConfig CustomResourceDefinition (YAML).
    Crd,
    /// Run the controller against the cluster of the current kubeconfig or
    /// the in-cluster service account.
    Run {
        /// Log format.
        #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Log filter, in `tracing` EnvFilter syntax (for example `info,kata_coordinator=debug`).
        #[arg(long, env = "LOG_LEVEL", default_value = "info")]
        log_level: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", manifests::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run {
            log_format,
            log_level,
        } => {
            let filter = match EnvFilter::try_new(&log_level) {
                Ok(filter) => filter,
                Err(e) => {
                    eprintln!("coordinator: invalid --log-level {log_level:?}: {e}");
                    return ExitCode::from(2);
                }
            };
            let builder = tracing_subscriber::fmt().with_env_filter(filter);
            match log_format {
                LogFormat::Json => builder.json().init(),
                LogFormat::Text => builder.init(),
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("coordinator: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async {
                let client = match kube::Client::try_default().await {
                    Ok(client) => client,
                    Err(e) => {
                        eprintln!("coordinator: cannot build a Kubernetes client (kubeconfig or in-cluster config): {e}");
                        return ExitCode::FAILURE;
                    }
                };
                reconciler::run(client, reconciler::Options::default(), Arc::default()).await;
                ExitCode::SUCCESS
            })
        }
    }
}
