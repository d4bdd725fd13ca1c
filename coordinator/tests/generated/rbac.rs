//! The checked-in RBAC must be exactly what the permission table generates.

#[test]
fn checked_in_rbac_matches_the_permission_table() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/base/rbac-coordinator.yaml"
    );
    let checked_in =
        std::fs::read_to_string(path).expect("deploy/base/rbac-coordinator.yaml is readable");
    assert!(
        checked_in == kata_coordinator::app::rbac_yaml(),
        "deploy/base/rbac-coordinator.yaml is stale: run `make generate`"
    );
}
