//! `docs/api-reference.md` is generated from the CRD; this keeps the
//! checked-in file equal to what the code says. `make generate` regenerates
//! it (with every other generated artifact), by running this test with
//! `UPDATE_DOCS=1`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use kata_coordinator::api_reference::markdown;

fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/api-reference.md")
}

#[test]
fn docs_api_reference_matches_the_crd() {
    let generated = markdown();
    let path = reference_path();
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != generated {
        let first_difference = on_disk
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "one is a prefix of the other".to_owned(),
                |i| format!("first difference at line {}", i + 1),
            );
        panic!(
            "{} is out of date with the KataConfig CRD ({first_difference}).\n\
             Regenerate it with `make generate`.",
            path.display()
        );
    }
}

/// The reference carries what an admin needs to write a valid KataConfig:
/// every spec field, its default, the allowed values and the CEL messages.
#[test]
fn reference_documents_every_spec_field_with_its_constraints() {
    let md = markdown();
    for field in [
        "`spec.checkNodeEligibility`",
        "`spec.enablePeerPods`",
        "`spec.kataConfigPoolSelector`",
        "`spec.kataConfigPoolSelector.matchExpressions[].operator`",
        "`spec.kataConfigPoolSelector.matchLabels`",
        "`spec.logLevel`",
        "`status.conditions[].observedGeneration`",
        "`status.kataNodes.failureReasons[].error`",
        "`status.kataNodes.readyNodeCount`",
        "`status.runtimeClasses`",
    ] {
        assert!(md.contains(field), "missing {field}");
    }
    let log_level = md
        .lines()
        .find(|l| l.starts_with("| `spec.logLevel` |"))
        .unwrap();
    assert!(log_level.contains("`\"info\"`"), "{log_level}");
    assert!(
        log_level.contains("`fatal`, `panic`, `error`, `warn`, `info`, `debug`, `trace`"),
        "{log_level}"
    );
    assert!(md.contains("enablePeerPods is not supported yet by this operator"));
    assert!(md.contains("operators In and NotIn need at least one value"));
    assert!(md.contains("| `spec.kataConfigPoolSelector.matchLabels` | map of string |"));
    assert!(md.contains("scope | Cluster"));
    assert!(md.contains("| Ready | string |"));
}
