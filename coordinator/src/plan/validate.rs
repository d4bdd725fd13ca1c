//! What admission cannot refuse: pure.

use crate::api::{KataConfigSpec, SelectorOperator};

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
}

/// Why the spec cannot be acted on, for the cases admission cannot refuse
/// (an older CRD, or a KataConfig stored before validation existed).
pub fn validate(spec: &KataConfigSpec) -> Result<(), SpecError> {
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
    use super::*;
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
