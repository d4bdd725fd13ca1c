//! What admission cannot refuse: pure.

use crate::api::{
    AdoptedMachineConfig, ExtensionChoice, KataConfigSpec, LogLevel, SelectorOperator,
};

/// Why the spec cannot be acted on; the message goes into the status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("enablePeerPods is not supported yet by this operator; set it to false")]
    PeerPods,
    #[error(
        "kataConfigPoolSelector: operator {operator:?} on key {key:?} needs at least one value"
    )]
    ValuesMissing {
        operator: SelectorOperator,
        key: String,
    },
    #[error("kataConfigPoolSelector: operator {operator:?} on key {key:?} takes no values")]
    ValuesRefused {
        operator: SelectorOperator,
        key: String,
    },
    #[error(
        "{field} holds a value this operator version ({}) does not know, written by a newer \
         version or by hand: nothing is changed until it holds a known value (see the API \
         reference) or this operator is upgraded",
        env!("CARGO_PKG_VERSION")
    )]
    UnknownValue { field: &'static str },
}

/// The first field holding a value this version does not know.
fn unknown_field(spec: &KataConfigSpec) -> Option<&'static str> {
    let operators = spec
        .kata_config_pool_selector
        .iter()
        .flat_map(|s| s.match_expressions.iter().flatten())
        .map(|req| req.operator);
    [
        (spec.log_level == LogLevel::Unknown, "logLevel"),
        (spec.extension == ExtensionChoice::Unknown, "extension"),
        (
            spec.adopted_machine_config == AdoptedMachineConfig::Unknown,
            "adoptedMachineConfig",
        ),
        (
            operators
                .into_iter()
                .any(|o| o == SelectorOperator::Unknown),
            "kataConfigPoolSelector.matchExpressions[].operator",
        ),
    ]
    .into_iter()
    .find_map(|(unknown, field)| unknown.then_some(field))
}

/// Why the spec cannot be acted on, for the cases admission cannot refuse
/// (an older CRD, or a KataConfig stored before validation existed).
pub fn validate(spec: &KataConfigSpec) -> Result<(), SpecError> {
    if let Some(field) = unknown_field(spec) {
        return Err(SpecError::UnknownValue { field });
    }
    if spec.enable_peer_pods {
        return Err(SpecError::PeerPods);
    }
    for req in spec
        .kata_config_pool_selector
        .iter()
        .flat_map(|s| s.match_expressions.iter().flatten())
    {
        let has_values = req.values.as_ref().is_some_and(|v| !v.is_empty());
        match req.operator {
            SelectorOperator::In | SelectorOperator::NotIn if !has_values => {
                return Err(SpecError::ValuesMissing {
                    operator: req.operator,
                    key: req.key.clone(),
                });
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if has_values => {
                return Err(SpecError::ValuesRefused {
                    operator: req.operator,
                    key: req.key.clone(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_value_from_a_newer_version_is_read_and_held_naming_its_field() {
        let spec: KataConfigSpec = serde_json::from_value(serde_json::json!({
            "logLevel": "verbose",
            "kataConfigPoolSelector": {"matchExpressions": [
                {"key": "k", "operator": "Gt", "values": ["1"]}
            ]},
        }))
        .unwrap();
        assert_eq!(spec.log_level, LogLevel::Unknown);
        let error = validate(&spec).unwrap_err();
        assert_eq!(error, SpecError::UnknownValue { field: "logLevel" });
        assert!(error.to_string().contains("does not know"), "{error}");
        let spec = KataConfigSpec {
            log_level: LogLevel::Debug,
            ..spec
        };
        assert!(
            validate(&spec)
                .unwrap_err()
                .to_string()
                .contains("matchExpressions[].operator"),
        );
        for (field, value) in [
            ("extension", "gpu-containers"),
            ("adoptedMachineConfig", "merge"),
        ] {
            let spec: KataConfigSpec =
                serde_json::from_value(serde_json::json!({ field: value })).unwrap();
            assert_eq!(validate(&spec), Err(SpecError::UnknownValue { field }));
        }
    }
    use crate::api::{PoolSelector, SelectorRequirement};

    fn with_expression(operator: SelectorOperator, values: Option<Vec<String>>) -> KataConfigSpec {
        KataConfigSpec {
            kata_config_pool_selector: Some(PoolSelector {
                match_expressions: Some(vec![SelectorRequirement {
                    key: "k".into(),
                    operator,
                    values,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn selector_rules_and_peer_pods_are_judged() {
        assert!(validate(&KataConfigSpec::default()).is_ok());
        assert!(
            validate(&with_expression(SelectorOperator::In, None))
                .is_err_and(|e| e.to_string().contains("needs at least one value"))
        );
        assert!(
            validate(&with_expression(
                SelectorOperator::Exists,
                Some(vec!["v".into()])
            ))
            .is_err_and(|e| e.to_string().contains("takes no values"))
        );
        assert!(
            validate(&with_expression(
                SelectorOperator::NotIn,
                Some(vec!["v".into()])
            ))
            .is_ok()
        );
        assert!(
            validate(&KataConfigSpec {
                enable_peer_pods: true,
                ..Default::default()
            })
            .is_err()
        );
    }
}
