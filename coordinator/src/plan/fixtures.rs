//! Observed nodes and selectors for the planner's unit tests.

use crate::api::{PoolSelector, SelectorOperator, SelectorRequirement};
use crate::names;
use crate::plan::ObservedNode;

pub(crate) fn node(
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> ObservedNode {
    ObservedNode {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        has_ready_condition: false,
        not_ready_reason: None,
        os_image: None,
    }
}

pub(crate) fn worker(name: &str, extra: &[(&str, &str)]) -> ObservedNode {
    let mut labels = vec![(names::WORKER_ROLE_LABEL, "")];
    labels.extend_from_slice(extra);
    node(name, &labels, &[])
}

/// A selector with one expression.
pub(crate) fn expression_selector(
    key: &str,
    operator: SelectorOperator,
    values: &[&str],
) -> PoolSelector {
    PoolSelector {
        match_expressions: Some(vec![SelectorRequirement {
            key: key.into(),
            operator,
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }]),
        ..Default::default()
    }
}
