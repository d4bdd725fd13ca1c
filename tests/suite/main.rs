//! The integration suite: every test against a real control plane, the MCO
//! simulator, a real CRI-O and the tools the project builds. One binary, run
//! by kata-test-harness (see tests/harness): each test in its own process,
//! several at a time, unmet prerequisites reported as skipped with their
//! reason. Run one module or test with a filter, e.g.
//! `cargo test -p kata-tests --test suite -- topologies::`.

mod agent_daemon;
mod agent_metrics;
mod alert_rules;
mod api_load;
mod containerfiles;
mod control_plane;
mod coordinator_fence;
mod coordinator_ha;
mod coordinator_lifecycle;
mod crio_differential;
mod dashboard;
mod demo_smoke;
mod deploy_manifests;
mod eligibility_dwell;
mod events;
mod field_manager_conflict;
mod foreign_runtime_configs;
mod health_after_handshake;
mod health_channel_auth;
mod health_channel_hardening;
mod health_end_to_end;
mod health_faults;
mod ignition_validate;
mod kataconfig_api;
mod label_contest;
mod leader_fencing;
mod log_level;
mod mco_simulator;
mod metrics_promtool;
mod must_gather;
mod network_policies;
mod newer_values;
mod node_agent_pod_policy;
mod olm_bundle;
mod olm_play;
mod operands;
mod osc_compat;
mod osc_takeover;
mod protocol_compat;
mod protocol_runtime;
mod real_node;
mod rollout_counts;
mod runtime_class_guard;
mod runtime_profiles;
mod status_size;
mod stuck_rollout;
mod topologies;
mod uninstall_order;
mod upgrade_from_release;

fn main() -> std::process::ExitCode {
    kata_test_harness::main()
}
