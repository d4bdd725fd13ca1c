//! The checked-in CRD must be exactly what the types generate.

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/base/kataconfig-crd.yaml"
    );
    let checked_in =
        std::fs::read_to_string(path).expect("deploy/base/kataconfig-crd.yaml is readable");
    assert!(
        checked_in == kata_coordinator::manifests::crd_yaml(),
        "deploy/base/kataconfig-crd.yaml is stale: run `make generate`"
    );
}
