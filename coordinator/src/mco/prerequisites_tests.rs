//! What the start-up check says on a cluster without the MCO's CRDs, or
//! without ours.

use super::SERVED_KINDS;
use super::names::CONTAINER_RUNTIME_CONFIG;
use crate::kind;
use crate::kind::Kind;
use crate::prerequisites::{Served, describe_missing, missing, required_kinds};

/// The kinds the coordinator waits for with the MCO backend.
fn required() -> Vec<Kind> {
    required_kinds(&SERVED_KINDS)
}

fn served(entries: &[(&str, Option<&[&str]>)]) -> Served {
    entries
        .iter()
        .map(|(version, resources)| {
            (
                version.to_string(),
                resources.map(|r| r.iter().map(|s| s.to_string()).collect()),
            )
        })
        .collect()
}

#[test]
fn a_bare_api_server_lacks_all_four() {
    let bare = served(&[
        ("machineconfiguration.openshift.io/v1", None),
        ("kataconfiguration.openshift.io/v1", None),
    ]);
    assert_eq!(missing(&required(), &bare), required());
    let message = describe_missing(&required());
    for crd in [
        "machineconfigs.machineconfiguration.openshift.io",
        "machineconfigpools.machineconfiguration.openshift.io",
        "containerruntimeconfigs.machineconfiguration.openshift.io",
        "kataconfigs.kataconfiguration.openshift.io",
    ] {
        assert!(message.contains(crd), "{crd} in: {message}");
    }
    assert!(message.contains("Machine Config Operator"), "{message}");
}

#[test]
fn only_what_is_not_served_is_missing() {
    let partial = served(&[
        (
            "machineconfiguration.openshift.io/v1",
            Some(&["machineconfigs", "machineconfigpools"]),
        ),
        ("kataconfiguration.openshift.io/v1", Some(&["kataconfigs"])),
    ]);
    assert_eq!(
        missing(&required(), &partial),
        [CONTAINER_RUNTIME_CONFIG],
        "a group served without one of its resources"
    );
    let only_ours_missing = served(&[
        (
            "machineconfiguration.openshift.io/v1",
            Some(&[
                "machineconfigs",
                "machineconfigpools",
                "containerruntimeconfigs",
            ]),
        ),
        ("kataconfiguration.openshift.io/v1", None),
    ]);
    let missing_ours = missing(&required(), &only_ours_missing);
    assert_eq!(missing_ours, [kind::KATA_CONFIG]);
    let message = describe_missing(&missing_ours);
    assert!(
        message.contains("kataconfig-crd.yaml") && !message.contains("Machine Config"),
        "{message}"
    );
    assert!(
        missing(&required(), &served(&[])).len() == 4,
        "nothing asked"
    );
}
