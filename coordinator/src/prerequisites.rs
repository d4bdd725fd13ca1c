//! The APIs the coordinator cannot work without: the Machine Config
//! Operator's MachineConfig, MachineConfigPool and ContainerRuntimeConfig, and
//! our own KataConfig. On a cluster without them (not OpenShift, or the CRD
//! not applied yet) every watch would fail its initial list forever; instead
//! the coordinator names what is missing, once, in its log and in `/readyz`,
//! and asks discovery again every few seconds until everything is served.
//!
//! What is missing and when to ask again are decided here without a client
//! ([`missing`], [`describe_missing`], [`retry_delay`]);
//! [`wait_until_served`] asks discovery.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::Client;
use tracing::{info, warn};

use crate::endpoints::Readiness;
use crate::kind::{self, Kind};

/// Every kind the coordinator watches or writes that a CRD provides: the
/// host-configuration backend's (`backend`), then our KataConfig.
pub fn required_kinds(backend: &[Kind]) -> Vec<Kind> {
    backend.iter().copied().chain([kind::KATA_CONFIG]).collect()
}

/// The name of the CRD that serves `kind`: `<plural>.<group>`.
pub fn crd_name(kind: &Kind) -> String {
    format!("{}.{}", kind.plural, kind.group)
}

/// What discovery answered: for each group/version asked, the resources it
/// serves, or `None` when the group/version is not served at all.
pub type Served = BTreeMap<String, Option<BTreeSet<String>>>;

/// The kinds of `required` that `served` does not serve. A group/version
/// discovery was not asked about counts as not served.
pub fn missing(required: &[Kind], served: &Served) -> Vec<Kind> {
    required
        .iter()
        .filter(|kind| {
            !served
                .get(&kind.api_version())
                .and_then(Option::as_ref)
                .is_some_and(|resources| resources.contains(kind.plural))
        })
        .copied()
        .collect()
}

/// The one sentence the log and `/readyz` carry while `missing` is not empty.
pub fn describe_missing(missing: &[Kind]) -> String {
    let names: Vec<String> = missing.iter().map(crd_name).collect();
    let needs_mco = missing.iter().any(|k| k.group != kind::KATA_CONFIG.group);
    let needs_ours = missing.contains(&kind::KATA_CONFIG);
    let remedy = match (needs_mco, needs_ours) {
        (true, true) => {
            "this cluster has no Machine Config Operator (OpenShift) and the KataConfig CRD \
             (deploy/base/kataconfig-crd.yaml) is not applied"
        }
        (true, false) => "this cluster has no Machine Config Operator (OpenShift)",
        _ => "apply the KataConfig CRD (deploy/base/kataconfig-crd.yaml)",
    };
    format!(
        "waiting for the API server to serve {}: {remedy}",
        names.join(", ")
    )
}

/// How long to wait before asking discovery again after `attempt` answers
/// that lacked something (1-based): 1 s, 2 s, 4 s, then every 5 s. Never a
/// tight loop, and a CRD applied later is picked up within seconds.
pub fn retry_delay(attempt: u32) -> Duration {
    let doubled = 1u64
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u64::MAX);
    Duration::from_secs(doubled.min(5))
}

/// Asks discovery about each group/version of `required`. A group/version
/// that is not served answers 404; any other failure is an error.
async fn discover(client: &Client, required: &[Kind]) -> Result<Served, kube::Error> {
    let versions: BTreeSet<String> = required.iter().map(Kind::api_version).collect();
    let mut served = Served::new();
    for version in versions {
        let resources = match client.list_api_group_resources(&version).await {
            Ok(list) => Some(list.resources.into_iter().map(|r| r.name).collect()),
            // A group nobody serves answers a plain "404 page not found",
            // not a Status with reason NotFound: the code is what tells.
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(error) => return Err(error),
        };
        served.insert(version, resources);
    }
    Ok(served)
}

/// Returns once the API server serves every `required` kind
/// ([`required_kinds`]). Until then
/// `readiness` says what is missing; the log says it when it first finds
/// something missing and again only when the missing set (or the error
/// discovery answers with) changes.
pub async fn wait_until_served(client: &Client, readiness: &Readiness, required: &[Kind]) {
    let mut reported: Option<Vec<Kind>> = None;
    let mut reported_error = None;
    let mut attempt = 0;
    loop {
        match discover(client, required).await {
            Ok(served) => {
                let missing = missing(required, &served);
                if missing.is_empty() {
                    if reported.is_some() {
                        info!("every required API is served now; starting");
                    }
                    return;
                }
                let message = describe_missing(&missing);
                if reported.as_ref() != Some(&missing) {
                    let crds: Vec<String> = missing.iter().map(crd_name).collect();
                    warn!(missing = %crds.join(","), "{message}");
                    reported = Some(missing);
                }
                readiness.not_ready(message);
            }
            Err(error) => {
                let message = format!("cannot ask the API server which APIs it serves: {error}");
                if reported_error.as_ref() != Some(&message) {
                    warn!("{message}");
                }
                readiness.not_ready(message.clone());
                reported_error = Some(message);
            }
        }
        attempt += 1;
        tokio::time::sleep(retry_delay(attempt)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_is_asked_again_within_seconds_but_never_in_a_tight_loop() {
        let delays: Vec<u64> = (1..=6).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5, 5]);
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(5));
        assert_eq!(retry_delay(0), Duration::from_secs(1));
    }
}
