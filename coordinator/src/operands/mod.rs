//! The operands OLM cannot carry in a bundle, created and kept in shape by
//! the coordinator: the node-agent DaemonSet ([`node_agent`]), the
//! admission policies ([`policies`]), and where their APIs exist the
//! agents' PodMonitor and the console dashboard ([`monitoring`]). What they
//! are is decided in those modules, pure; this one reads the cluster,
//! writes through the [`Applier`] and says what it found.
//!
//! Runs on the leader only, after every change to the DaemonSet (a watch)
//! and every [`OperandSettings::resync`]: a policy, PodMonitor or dashboard
//! deleted by hand comes back within one resync.

pub mod monitoring;
pub mod node_agent;
pub mod policies;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use serde_json::Value;
use tracing::{error, info, warn};

use crate::applier::Applier;
pub use crate::kind::{DAEMON_SET, DEPLOYMENT};
use crate::kind::{Kind, NAMESPACE, POD_MONITOR};
use crate::names;
use node_agent::{AgentSettings, Owner};

/// The coordinator's Deployment's name in the shipped manifests and the
/// CSV (`--owner-deployment`'s default; the Role names it).
pub const OWNER_DEPLOYMENT: &str = "kata-coordinator";

/// The environment variable OLM fills from the CSV's `relatedImages`.
pub const NODE_AGENT_IMAGE_ENV: &str = "RELATED_IMAGE_NODE_AGENT";

/// What the operands are made from: the coordinator's own settings (its
/// Deployment's flags and env).
#[derive(Clone, Debug)]
pub struct OperandSettings {
    pub namespace: String,
    /// `None` when the Deployment does not set [`NODE_AGENT_IMAGE_ENV`]:
    /// the DaemonSet is then neither created nor changed, and that is said.
    pub node_agent_image: Option<String>,
    pub coordinator_url: String,
    pub host_root: String,
    /// The coordinator's Deployment, the DaemonSet's owner. `None`: no
    /// owner (a coordinator run outside a Deployment).
    pub owner_deployment: Option<String>,
    pub resync: Duration,
}

/// The last thing said about each object, so a state that lasts is said
/// once, not once a resync.
#[derive(Default)]
struct Said(BTreeMap<String, String>);

impl Said {
    /// Whether `message` about `object` is news.
    fn news(&mut self, object: &str, message: &str) -> bool {
        self.0
            .insert(object.to_owned(), message.to_owned())
            .as_deref()
            != Some(message)
    }

    fn forget(&mut self, object: &str) {
        self.0.remove(object);
    }
}

/// What an Event is about: the object of `kind` named `name` (in
/// `namespace` when namespaced), with its uid when it was read (`live`).
fn reference(
    kind: Kind,
    name: &str,
    namespace: Option<&str>,
    live: Option<&Value>,
) -> ObjectReference {
    ObjectReference {
        api_version: Some(kind.api_version()),
        kind: Some(kind.kind.into()),
        name: Some(name.into()),
        namespace: namespace.map(str::to_owned),
        uid: live
            .and_then(|live| live["metadata"]["uid"].as_str())
            .map(str::to_owned),
        ..ObjectReference::default()
    }
}

/// What [`Said`] keys a policy or binding under (the two share names).
fn said_key(desired: &policies::Desired) -> String {
    format!("{}/{}", desired.kind.kind, desired.name)
}

/// What [`Said`] keys a monitoring operand under (the PodMonitor shares
/// the DaemonSet's name).
fn monitoring_key(desired: &monitoring::Desired) -> String {
    format!(
        "{}/{}/{}",
        desired.kind.kind, desired.namespace, desired.name
    )
}

fn monitoring_problem(desired: &monitoring::Desired, e: &crate::applier::WriteError) -> String {
    format!(
        "{} {}/{}: {e}",
        desired.kind.kind, desired.namespace, desired.name
    )
}

struct Operands {
    client: Client,
    applier: Applier,
    settings: OperandSettings,
    said: Said,
}

/// Keeps the operands in shape until the future is dropped.
pub async fn run(client: Client, applier: Applier, settings: OperandSettings) {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), &settings.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", node_agent::NAME));
    let mut changes = watcher(api, config).boxed();
    let resync = settings.resync;
    let mut operands = Operands {
        client,
        applier,
        settings,
        said: Said::default(),
    };
    loop {
        operands.reconcile().await;
        tokio::select! {
            _ = changes.next() => {}
            () = tokio::time::sleep(resync) => {}
        }
    }
}

impl Operands {
    async fn reconcile(&mut self) {
        for desired in policies::desired(&self.settings.namespace) {
            if let Err(e) = self.create_policy(&desired).await {
                self.problem(
                    &said_key(&desired),
                    format!("{} {}: {e}", desired.kind.kind, desired.name),
                );
            }
        }
        if let Err(e) = self.keep_daemon_set().await {
            self.problem(
                node_agent::NAME,
                format!("DaemonSet {}: {e}", node_agent::NAME),
            );
        }
        self.keep_monitoring().await;
    }

    fn problem(&mut self, object: &str, message: String) {
        if self.said.news(object, &message) {
            error!(%message, "could not keep an operand in shape");
        }
    }

    /// Creates the policy when it is missing; reports one that differs.
    async fn create_policy(
        &mut self,
        desired: &policies::Desired,
    ) -> Result<(), crate::applier::WriteError> {
        let api: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &desired.kind.api_resource());
        let Some(live) = api.get_opt(&desired.name).await? else {
            if self
                .applier
                .create(desired.kind, names::MANAGER, &desired.body)
                .await?
            {
                info!(kind = desired.kind.kind, name = %desired.name, "created");
            }
            self.said.forget(&said_key(desired));
            return Ok(());
        };
        let live = serde_json::to_value(&live).unwrap_or_default();
        let drift = node_agent::drifted(&desired.body["spec"], &live["spec"]);
        if drift.is_empty() {
            self.said.forget(&said_key(desired));
            return Ok(());
        }
        let note = format!(
            "{} {} differs from what this version ships ({}: {}): kept as found, since the \
             operator only creates its admission policies; delete it to have it created again",
            desired.kind.kind,
            desired.name,
            desired.source,
            drift.join(", ")
        );
        if self.said.news(&said_key(desired), &note) {
            warn!(%note, "admission policy changed");
            let reference = reference(desired.kind, &desired.name, None, Some(&live));
            self.publish(EventType::Warning, "OperandDiffers", note, &reference)
                .await;
        }
        Ok(())
    }

    async fn publish(
        &self,
        type_: EventType,
        reason: &str,
        note: String,
        regarding: &ObjectReference,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        self.applier.publish(event, regarding).await;
    }

    fn owner_reference(&self) -> Option<ObjectReference> {
        let name = self.settings.owner_deployment.clone()?;
        Some(reference(
            DEPLOYMENT,
            &name,
            Some(&self.settings.namespace),
            None,
        ))
    }

    /// The owner to set on the DaemonSet: `Ok(None)` with no owner
    /// configured. `Err(message)` when the configured Deployment is gone or
    /// being deleted: the operator is being removed, and a DaemonSet made
    /// now would be one nothing ever removes.
    async fn owner(&mut self) -> Result<Result<Option<Owner>, String>, kube::Error> {
        let Some(name) = self.settings.owner_deployment.clone() else {
            return Ok(Ok(None));
        };
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.settings.namespace,
            &DEPLOYMENT.api_resource(),
        );
        let deployment = api.get_opt(&name).await?;
        let live = deployment.filter(|d| d.metadata.deletion_timestamp.is_none());
        Ok(match live.and_then(|d| d.metadata.uid) {
            Some(uid) => Ok(Some(Owner { name, uid })),
            None => Err(format!(
                "Deployment {}/{name} (--owner-deployment) is gone or being deleted: the \
                 node-agent DaemonSet and PodMonitor are not written, since nothing would \
                 remove them",
                self.settings.namespace
            )),
        })
    }

    async fn keep_daemon_set(&mut self) -> Result<(), crate::applier::WriteError> {
        let Some(image) = self.settings.node_agent_image.clone() else {
            let message = format!(
                "{NODE_AGENT_IMAGE_ENV} is not set on the coordinator's Deployment{}: the node-agent \
                 DaemonSet {}/{} is neither created nor updated (the CSV's install strategy must \
                 set it from relatedImages)",
                self.settings
                    .owner_deployment
                    .as_deref()
                    .map(|d| format!(" {}/{d}", self.settings.namespace))
                    .unwrap_or_default(),
                self.settings.namespace,
                node_agent::NAME,
            );
            if self.said.news(node_agent::NAME, &message) {
                error!(%message, "no node-agent image");
                if let Some(owner) = self.owner_reference() {
                    self.publish(EventType::Warning, "NodeAgentImageMissing", message, &owner)
                        .await;
                }
            }
            return Ok(());
        };
        let settings = AgentSettings {
            namespace: self.settings.namespace.clone(),
            image,
            coordinator_url: self.settings.coordinator_url.clone(),
            host_root: self.settings.host_root.clone(),
        };
        let owner = match self.owner().await? {
            Ok(owner) => owner,
            Err(message) => {
                if self.said.news(node_agent::NAME, &message) {
                    warn!(%message, "no owner for the DaemonSet");
                }
                return Ok(());
            }
        };
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &settings.namespace,
            &DAEMON_SET.api_resource(),
        );
        let live = api
            .get_opt(node_agent::NAME)
            .await?
            .map(|o| serde_json::to_value(o).unwrap_or_default());
        let desired = node_agent::daemon_set(&settings, owner.as_ref(), live.as_ref());
        if live
            .as_ref()
            .is_some_and(|live| node_agent::holds(&desired, live))
        {
            return Ok(());
        }
        self.applier
            .apply_in_namespace(
                &settings.namespace,
                DAEMON_SET,
                node_agent::NAME,
                names::MANAGER,
                &desired,
            )
            .await?;
        self.said.forget(node_agent::NAME);
        match &live {
            None => {
                info!(namespace = %settings.namespace, name = node_agent::NAME, image = %settings.image, "created the node-agent DaemonSet")
            }
            Some(live) => self.report_reasserted(&desired, live).await,
        }
        Ok(())
    }

    /// The PodMonitor and the dashboard, each where its API or namespace
    /// exists. Not written once the coordinator's Deployment is gone or
    /// being deleted: the operator is being removed.
    async fn keep_monitoring(&mut self) {
        let owner = match self.owner().await {
            Ok(Ok(owner)) => owner,
            Ok(Err(message)) => {
                if self.said.news(DEPLOYMENT.kind, &message) {
                    warn!(%message, "no owner for the operands");
                }
                return;
            }
            Err(e) => {
                let message = format!("the coordinator's Deployment: {e}");
                self.problem(DEPLOYMENT.kind, message);
                return;
            }
        };
        self.said.forget(DEPLOYMENT.kind);
        let monitor = monitoring::pod_monitor(&self.settings.namespace, owner.as_ref());
        if let Err(e) = self.keep_pod_monitor(&monitor).await {
            self.problem(&monitoring_key(&monitor), monitoring_problem(&monitor, &e));
        }
        let dashboard = monitoring::dashboard();
        if let Err(e) = self.keep_dashboard(&dashboard).await {
            self.problem(
                &monitoring_key(&dashboard),
                monitoring_problem(&dashboard, &e),
            );
        }
    }

    async fn keep_pod_monitor(
        &mut self,
        desired: &monitoring::Desired,
    ) -> Result<(), crate::applier::WriteError> {
        if !self.serves(POD_MONITOR).await? {
            let note = format!(
                "the API server serves no {} {} (the Prometheus Operator's CRDs are not \
                 installed): PodMonitor {}/{} is not created, and will be once they are",
                POD_MONITOR.api_version(),
                POD_MONITOR.plural,
                desired.namespace,
                desired.name
            );
            if self.said.news(&monitoring_key(desired), &note) {
                info!(%note, "skipping the PodMonitor");
            }
            return Ok(());
        }
        self.keep(desired).await
    }

    async fn keep_dashboard(
        &mut self,
        desired: &monitoring::Desired,
    ) -> Result<(), crate::applier::WriteError> {
        let namespaces: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &NAMESPACE.api_resource());
        if namespaces.get_opt(&desired.namespace).await?.is_none() {
            let note = format!(
                "there is no namespace {} (not OpenShift): the console dashboard, ConfigMap {}, \
                 is not created",
                desired.namespace, desired.name
            );
            if self.said.news(&monitoring_key(desired), &note) {
                info!(%note, "skipping the console dashboard");
            }
            return Ok(());
        }
        self.keep(desired).await
    }

    /// Whether the API server serves `kind` (discovery, which every
    /// authenticated user may read).
    async fn serves(&self, kind: Kind) -> Result<bool, kube::Error> {
        match self
            .client
            .list_api_group_resources(&kind.api_version())
            .await
        {
            Ok(list) => Ok(list.resources.iter().any(|r| r.name == kind.plural)),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Server-side applies `desired` unless the live object holds it
    /// already: created when missing, set back after a hand edit (a
    /// Warning Event naming the fields), and only a read at steady state.
    async fn keep(
        &mut self,
        desired: &monitoring::Desired,
    ) -> Result<(), crate::applier::WriteError> {
        let key = monitoring_key(desired);
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &desired.namespace,
            &desired.kind.api_resource(),
        );
        let live = api
            .get_opt(desired.name)
            .await?
            .map(|o| serde_json::to_value(o).unwrap_or_default());
        if live
            .as_ref()
            .is_some_and(|live| node_agent::holds(&desired.body, live))
        {
            self.said.forget(&key);
            return Ok(());
        }
        self.applier
            .apply_in_namespace(
                &desired.namespace,
                desired.kind,
                desired.name,
                names::MANAGER,
                &desired.body,
            )
            .await?;
        self.said.forget(&key);
        let Some(live) = live else {
            info!(kind = desired.kind.kind, namespace = %desired.namespace, name = desired.name, "created");
            return Ok(());
        };
        let note = format!(
            "set {} back to what the operator ships ({}); fields it does not name are left \
             to whoever sets them",
            node_agent::drifted(&desired.body, &live).join(", "),
            desired.source,
        );
        warn!(kind = desired.kind.kind, namespace = %desired.namespace, name = desired.name, %note, "operand written");
        let reference = reference(
            desired.kind,
            desired.name,
            Some(&desired.namespace),
            Some(&live),
        );
        self.publish(EventType::Warning, "OperandReasserted", note, &reference)
            .await;
        Ok(())
    }

    /// Says what changed: a roll to this version's agent, or fields an
    /// edit changed set back.
    async fn report_reasserted(&self, desired: &Value, live: &Value) {
        let drift = node_agent::drifted(desired, live);
        let (type_, reason, note) = if node_agent::written_by_another_version(live) {
            let image = &desired["spec"]["template"]["spec"]["containers"][0]["image"];
            let note = format!(
                "rolling the node-agents to operator version {}, image {} ({})",
                node_agent::VERSION,
                image.as_str().unwrap_or_default(),
                drift.join(", ")
            );
            (EventType::Normal, "NodeAgentUpdated", note)
        } else {
            let note = format!(
                "set {} back to what the operator runs: it keeps the agent's image, arguments, \
                 security context and mounts, and leaves nodeSelector, tolerations, \
                 priorityClassName and updateStrategy to whoever edits them",
                drift.join(", ")
            );
            (EventType::Warning, "NodeAgentReasserted", note)
        };
        warn!(namespace = %self.settings.namespace, name = node_agent::NAME, %note, "node-agent DaemonSet written");
        let reference = reference(
            DAEMON_SET,
            node_agent::NAME,
            Some(&self.settings.namespace),
            Some(live),
        );
        self.publish(type_, reason, note, &reference).await;
    }
}
