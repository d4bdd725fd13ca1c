//! Label selector matching: pure.

use std::collections::BTreeMap;

use crate::api::{PoolSelector, SelectorOperator};

/// Whether `labels` satisfy `selector`. An absent or empty selector matches
/// everything, as in Kubernetes.
pub fn matches(selector: Option<&PoolSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|req| {
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator {
            SelectorOperator::In => labels.get(&req.key).is_some_and(|v| values.contains(v)),
            SelectorOperator::NotIn => labels.get(&req.key).is_none_or(|v| !values.contains(v)),
            SelectorOperator::Exists => labels.contains_key(&req.key),
            SelectorOperator::DoesNotExist => !labels.contains_key(&req.key),
            // Selects nothing; the planner holds such a spec anyway.
            SelectorOperator::Unknown => false,
        }
    });
    labels_ok && expressions_ok
}

/// The label keys `selector` reads.
pub fn keys(selector: Option<&PoolSelector>) -> impl Iterator<Item = &str> {
    let selector = selector.into_iter();
    let labels = selector
        .clone()
        .flat_map(|s| s.match_labels.iter().flatten());
    let expressions = selector.flat_map(|s| s.match_expressions.iter().flatten());
    labels
        .map(|(key, _)| key.as_str())
        .chain(expressions.map(|req| req.key.as_str()))
}

/// Whether a MachineConfigPool's `nodeSelector` picks a node, as the MCO
/// reads it (`pkg/helpers/helpers.go`): an absent or empty selector selects
/// **no** node, unlike Kubernetes' usual reading.
pub fn pool_selects(selector: Option<&PoolSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_some_and(|s| {
        let empty = s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty());
        !empty && matches(Some(s), labels)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, operator: SelectorOperator, values: &[&str]) -> SelectorRequirement {
        SelectorRequirement {
            key: key.into(),
            operator,
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(matches(None, &labels(&[])));
        assert!(matches(
            Some(&PoolSelector::default()),
            &labels(&[("a", "b")])
        ));
    }

    #[test]
    fn an_empty_pool_selector_selects_nothing() {
        let node = labels(&[("node-role.kubernetes.io/master", "")]);
        assert!(!pool_selects(None, &node));
        assert!(!pool_selects(Some(&PoolSelector::default()), &node));
        let master = PoolSelector {
            match_labels: Some(labels(&[("node-role.kubernetes.io/master", "")])),
            ..Default::default()
        };
        assert!(pool_selects(Some(&master), &node));
        assert!(!pool_selects(Some(&master), &labels(&[])));
    }

    #[test]
    fn match_labels_and_expressions_all_apply() {
        let selector = PoolSelector {
            match_labels: Some(labels(&[("zone", "a")])),
            match_expressions: Some(vec![
                expr("tier", SelectorOperator::In, &["gold", "silver"]),
                expr("legacy", SelectorOperator::DoesNotExist, &[]),
                expr("gpu", SelectorOperator::NotIn, &["yes"]),
            ]),
        };
        assert!(matches(
            Some(&selector),
            &labels(&[("zone", "a"), ("tier", "gold")])
        ));
        assert!(!matches(
            Some(&selector),
            &labels(&[("zone", "b"), ("tier", "gold")])
        ));
        assert!(!matches(
            Some(&selector),
            &labels(&[("zone", "a"), ("tier", "bronze")])
        ));
        assert!(!matches(
            Some(&selector),
            &labels(&[("zone", "a"), ("tier", "gold"), ("legacy", "")])
        ));
        assert!(!matches(
            Some(&selector),
            &labels(&[("zone", "a"), ("tier", "gold"), ("gpu", "yes")])
        ));
        let exists = PoolSelector {
            match_expressions: Some(vec![expr("kata", SelectorOperator::Exists, &[])]),
            ..Default::default()
        };
        assert!(matches(Some(&exists), &labels(&[("kata", "")])));
        assert!(!matches(Some(&exists), &labels(&[])));
    }
}
