//! The node-agent's integration tests: the probes against fake host roots
//! and this machine, and `node-agent check` end to end. One binary, run by
//! kata-test-harness (see tests/harness): each test in its own process,
//! unmet prerequisites reported as skipped with their reason.

mod agent_probes;
mod check_cli;
mod cri_status_shapes;

fn main() -> std::process::ExitCode {
    kata_test_harness::main()
}
