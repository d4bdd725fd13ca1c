//! The reconcile decision: from an observed snapshot of the cluster to the
//! steps that move it toward the KataConfig, and the status that describes
//! it. Pure: no client, no clock.
//!
//! Every step is derived from what is observed, never from remembered
//! progress, so a coordinator that stops after any write and starts again
//! picks up where the cluster is.
//!
//! The pieces: [`validate`] (what admission could not refuse),
//! [`targeting`] (which nodes get Kata), a [`rollout::HostConfigRollout`]
//! (how the host configuration reaches them: on OpenShift the Machine Config
//! Operator, [`crate::mco`]), [`runtime_class`], [`nodes`] (the status's node
//! lists), [`conditions`] and [`events`] (the node transitions announced).

pub mod conditions;
pub mod events;
pub mod nodes;
pub mod ownership;
pub mod rollout;
pub mod runtime_class;
pub mod stuck;
pub mod targeting;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::api::{KataConfigSpec, KataNodesStatus};
use crate::kind::Kind;
use crate::names;
use crate::node::CachedNode;
use crate::objects;
use crate::profiles::KataRuntimeProfile;
use events::NodeTransition;
use rollout::{HostConfigRollout, NodePhase};

pub use targeting::{NodeTarget, is_target};
pub use validate::validate;

/// A node as the planner needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedNode {
    pub name: String,
    pub labels: NodeLabels,
    pub annotations: BTreeMap<String, String>,
    /// Whether the node carries our `KataRuntimeReady` condition.
    pub has_ready_condition: bool,
    /// `reason: message` of that condition when it is False.
    pub not_ready_reason: Option<String>,
    /// `status.nodeInfo.osImage`: which OS extension the node needs.
    pub os_image: Option<String>,
}

impl ObservedNode {
    pub fn has_label(&self, key: &str) -> bool {
        self.labels.contains_key(key)
    }

    /// Whether the node still carries a health label or condition of ours.
    fn carries_operator_marks(&self) -> bool {
        self.has_label(names::KATA_RUNTIME_LABEL)
            || self.has_label(names::KATA_CAPABLE_LABEL)
            || self.has_ready_condition
    }
}

/// A node's labels as the planner reads them: the node cache's copy of the
/// Node, shared rather than cloned. A reconcile observes every node of the
/// cluster, and an OpenShift worker carries some 40 labels: a copy of each
/// node's labels per reconcile came to tens of MiB at 5,000 nodes, allocated
/// and freed on every reconcile while nodes were being labelled. Changing a
/// label (only tests do) copies the Node first.
#[derive(Clone, Debug, Default)]
pub struct NodeLabels(Arc<CachedNode>);

/// The labels of a Node without any.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl From<Arc<CachedNode>> for NodeLabels {
    fn from(node: Arc<CachedNode>) -> Self {
        Self(node)
    }
}

impl FromIterator<(String, String)> for NodeLabels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(labels: I) -> Self {
        let mut node = CachedNode::default();
        node.metadata.labels = Some(labels.into_iter().collect());
        Self(Arc::new(node))
    }
}

impl std::ops::Deref for NodeLabels {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        self.0.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
    }
}

impl std::ops::DerefMut for NodeLabels {
    fn deref_mut(&mut self) -> &mut Self::Target {
        Arc::make_mut(&mut self.0)
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
    }
}

impl PartialEq for NodeLabels {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// A KataConfig of the cluster, as the one-per-cluster rule needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigId {
    pub name: String,
    pub created: Option<Timestamp>,
}

/// Everything the generic planner looks at, gathered by the reconciler; the
/// rollout's own snapshot travels with the [`HostConfigRollout`].
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The KataConfig being reconciled.
    pub name: String,
    /// Every KataConfig of the cluster, this one included.
    pub configs: Vec<ConfigId>,
    pub spec: KataConfigSpec,
    /// The runtime profiles, in name order, as last settled (see
    /// `controller::profile_settle`).
    pub profiles: Vec<KataRuntimeProfile>,
    /// While a change of the profiles settles, when to look again.
    pub profiles_settling: Option<Duration>,
    pub deleting: bool,
    pub has_finalizer: bool,
    pub nodes: Vec<ObservedNode>,
    /// The RuntimeClass, as the API server returns it (None: absent).
    pub runtime_class: Option<Value>,
    /// Every other RuntimeClass of the cluster: the runtime profiles' (ours)
    /// and any a profile's name would collide with.
    pub other_runtime_classes: Vec<Value>,
    /// `namespace/name` of pods using a RuntimeClass we own (only gathered
    /// while deleting).
    pub pods_using_kata: Vec<String>,
    /// The node lists of the KataConfig's status as last written (empty
    /// before the first), capped as the status holds them: what the
    /// transitions are measured against, unless `last_write` fills
    /// them in ([`events::Previous`]).
    pub recorded_nodes: KataNodesStatus,
    /// What this coordinator remembers of its last status write (the full
    /// node lists behind it), when it made one since it started.
    pub last_write: Option<events::LastWrite>,
    /// The objects we apply, as observed with their managedFields: whether
    /// another manager holds fields of ours ([`ownership`]).
    pub owned_objects: Vec<(Kind, Value)>,
    /// Nodes the MCO has kept updating longer than the threshold, and what
    /// holds their drain ([`stuck`]).
    pub stuck_nodes: Vec<stuck::StuckNode>,
    /// While the fleet-wide brake holds pool removals, what it says
    /// ([`crate::health::marks::brake`]).
    pub fleet_brake: Option<String>,
}

/// An object to apply with server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub enum Desired {
    /// A kind this crate has no Rust type for (the MCO's), as JSON with its
    /// `apiVersion`, `kind` and `metadata.name`.
    Untyped {
        kind: Kind,
        object: Value,
    },
    RuntimeClass(Box<RuntimeClass>),
}

impl Desired {
    pub fn kind(&self) -> Kind {
        match self {
            Desired::Untyped { kind, .. } => *kind,
            Desired::RuntimeClass(_) => crate::kind::RUNTIME_CLASS,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Desired::Untyped { object, .. } => {
                object["metadata"]["name"].as_str().unwrap_or_default()
            }
            Desired::RuntimeClass(rc) => rc.metadata.name.as_deref().unwrap_or_default(),
        }
    }
}

/// A write the reconciler performs, in order: each is one API request.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    AddFinalizer,
    Apply(Desired),
    /// Apply, taking over the fields the earlier operator wrote (a forced
    /// apply): they differ from ours and would otherwise be a conflict.
    TakeOver(Desired),
    Delete {
        kind: Kind,
        name: std::borrow::Cow<'static, str>,
    },
    /// Add or remove one label of ours on a node.
    SetNodeLabel {
        node: String,
        label: &'static str,
        present: bool,
    },
    /// Remove every label the health manager put on the node.
    ReleaseNodeLabels {
        node: String,
    },
    /// Remove the node's `KataRuntimeReady` condition.
    RemoveNodeCondition {
        node: String,
    },
    RemoveFinalizer,
    /// Take `finalizer` off an object we own, whichever manager wrote it;
    /// `seen` is the object's finalizers as observed.
    ReleaseFinalizer {
        kind: Kind,
        name: &'static str,
        finalizer: &'static str,
        seen: Vec<String>,
    },
    /// Take ownerReference `index` off an object we own, provided it is
    /// still `reference` (as observed): one an earlier operator set.
    ReleaseOwnerReference {
        kind: Kind,
        name: &'static str,
        index: usize,
        reference: serde_json::Value,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AddFinalizer => write!(f, "adding the finalizer"),
            Step::RemoveFinalizer => write!(f, "removing the finalizer"),
            Step::Apply(desired) => {
                write!(f, "applying {} {}", desired.kind().kind, desired.name())
            }
            Step::TakeOver(desired) => write!(
                f,
                "taking over {} {} from the earlier operator",
                desired.kind().kind,
                desired.name()
            ),
            Step::Delete { kind, name } => write!(f, "deleting {} {name}", kind.kind),
            Step::SetNodeLabel {
                node,
                label,
                present: true,
            } => write!(f, "labelling node {node} {label}"),
            Step::SetNodeLabel { node, label, .. } => {
                write!(f, "removing label {label} from node {node}")
            }
            Step::ReleaseNodeLabels { node } => {
                write!(f, "removing the Kata labels of node {node}")
            }
            Step::RemoveNodeCondition { node } => write!(
                f,
                "removing the {} condition of node {node}",
                names::NODE_CONDITION
            ),
            Step::ReleaseFinalizer { kind, name, .. } => {
                write!(f, "removing our finalizer of {} {name}", kind.kind)
            }
            Step::ReleaseOwnerReference {
                kind,
                name,
                reference,
                ..
            } => write!(
                f,
                "removing the ownerReference to {} {} from {} {name}",
                reference["kind"].as_str().unwrap_or_default(),
                reference["name"].as_str().unwrap_or_default(),
                kind.kind
            ),
        }
    }
}

/// Apply `desired` unless the observed object already has all of it.
pub fn apply_if_drifted(kind: Kind, desired: Value, observed: Option<&Value>) -> Option<Step> {
    (!observed.is_some_and(|o| objects::is_subset(&desired, o))).then_some(Step::Apply(
        Desired::Untyped {
            kind,
            object: desired,
        },
    ))
}

/// A condition before timestamps: type, status, reason, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionState {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// When to reconcile again without an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Something is moving that raises no event we watch (a pool rolling,
    /// pods blocking the uninstall).
    After(Duration),
    /// Nothing is moving: the periodic resync.
    Resync,
    /// Only a change of the KataConfig can change the outcome.
    OnChange,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Every node, in full: the status holds them capped
    /// ([`nodes::written`]).
    pub nodes: KataNodesStatus,
    pub runtime_classes: Vec<String>,
    pub conditions: Vec<ConditionState>,
    pub requeue: Requeue,
    /// Nodes whose phase changed since the status last written, to be
    /// announced as Events once the new status is written.
    pub transitions: Vec<NodeTransition>,
    /// The plan renders the observed runtime profiles into the host
    /// configuration (the active KataConfig installing, its spec and every
    /// profile valid): only then are they the profiles in force that the
    /// agents check and the labeller labels.
    pub renders_profiles: bool,
}

impl Plan {
    fn conditions_only(conditions: Vec<ConditionState>, requeue: Requeue) -> Plan {
        Plan {
            steps: Vec::new(),
            nodes: KataNodesStatus::default(),
            runtime_classes: Vec::new(),
            conditions,
            requeue,
            transitions: Vec::new(),
            renders_profiles: false,
        }
    }
}

const POLL_WHILE_ROLLING: Duration = Duration::from_secs(10);
const POLL_WHILE_BLOCKED: Duration = Duration::from_secs(15);

/// The KataConfig that acts: the oldest (then the first by name). Admission
/// refuses a second one; this settles a race between two creations.
pub fn active_config(configs: &[ConfigId]) -> Option<&str> {
    configs
        .iter()
        .min_by_key(|c| (c.created, &c.name))
        .map(|c| c.name.as_str())
}

pub fn plan(observed: &Observed, rollout: &(impl HostConfigRollout + ?Sized)) -> Plan {
    let mut plan =
        if let Some(active) = active_config(&observed.configs).filter(|a| *a != observed.name) {
            Plan::conditions_only(conditions::superseded(active), Requeue::OnChange)
        } else if observed.deleting {
            plan_uninstall(observed, rollout)
        } else {
            plan_install(observed, rollout)
        };
    hold_conflicting_writes(&mut plan, &observed.owned_objects);
    if let Some(settling) = observed.profiles_settling {
        plan.requeue = match plan.requeue {
            Requeue::After(after) => Requeue::After(after.min(settling)),
            Requeue::Resync | Requeue::OnChange => Requeue::After(settling),
        };
    }
    let previous = events::Previous::new(&observed.recorded_nodes, observed.last_write.as_ref());
    plan.transitions = events::node_transitions(previous, &plan.nodes);
    plan
}

/// Drops every apply to an object in which another field manager holds
/// fields of ours at other values (forcing would take them back, and it
/// would take them again), and says so in Degraded; the apply comes back
/// by itself once the other manager lets go. No node moves into or out of
/// the pool meanwhile either: it would be rebooted onto a configuration
/// that is not ours, and again once ours is back.
fn hold_conflicting_writes(plan: &mut Plan, owned: &[(Kind, Value)]) {
    let mut found = Vec::new();
    plan.steps.retain_mut(|step| {
        let Step::Apply(desired) = step else {
            return true;
        };
        let observed = owned
            .iter()
            .find(|(kind, object)| {
                *kind == desired.kind()
                    && object["metadata"]["name"].as_str() == Some(desired.name())
            })
            .map(|(_, object)| object);
        let wanted = match desired {
            Desired::Untyped { object, .. } => Some(object.clone()),
            Desired::RuntimeClass(rc) => serde_json::to_value(rc).ok(),
        };
        let Some((observed, wanted)) = observed.zip(wanted) else {
            return true;
        };
        let kind = desired.kind().kind;
        let conflicts = ownership::conflicts(kind, &wanted, observed);
        if !conflicts.is_empty() {
            found.extend(conflicts);
            return false;
        }
        if ownership::held_by_predecessor(kind, &wanted, observed) {
            *step = Step::TakeOver(desired.clone());
        }
        true
    });
    if found.is_empty() {
        return;
    }
    plan.steps
        .retain(|step| !matches!(step, Step::SetNodeLabel { .. }));
    let degraded = conditions::conflicting_manager(&found);
    match plan
        .conditions
        .iter_mut()
        .find(|c| c.type_ == crate::api::condition::DEGRADED)
    {
        Some(existing) => *existing = degraded,
        None => plan.conditions.push(degraded),
    }
}

/// What the conditions say of each stuck node.
fn stuck_messages(observed: &Observed) -> Vec<String> {
    observed
        .stuck_nodes
        .iter()
        .map(stuck::StuckNode::message)
        .collect()
}

/// The plan for a KataConfig that is not being deleted.
fn plan_install(observed: &Observed, rollout: &(impl HostConfigRollout + ?Sized)) -> Plan {
    let spec = &observed.spec;
    if let Err(invalid) = validate(spec) {
        return Plan::conditions_only(
            conditions::invalid_spec(&invalid.to_string()),
            Requeue::Resync,
        );
    }
    let collisions =
        runtime_class::profile_collisions(&observed.profiles, &observed.other_runtime_classes);
    if let Err(invalid) = crate::profiles::check_all(&observed.profiles).and(collisions) {
        return Plan::conditions_only(
            conditions::invalid_runtime_profile(&invalid),
            Requeue::Resync,
        );
    }
    let targets = targeting::targets(spec, &observed.nodes);
    let target_count = targets.iter().filter(|t| t.targeted).count();

    let mut steps = Vec::new();
    if !observed.has_finalizer {
        steps.push(Step::AddFinalizer);
    }
    steps.extend(rollout.install_steps(spec, &observed.profiles, &targets));

    let mut assessment = rollout.assess(spec, &observed.profiles, &targets);
    assessment.waiting_on.extend(stuck_messages(observed));
    let mut nodes = nodes::node_status(&assessment.phases, target_count);
    nodes.not_runtime_ready = nodes::not_runtime_ready(&targets);

    // A refused node will not be installed until the admin acts; the
    // RuntimeClass (which only schedules onto runtime-ready nodes) need not
    // wait for it.
    let refused = assessment
        .phases
        .iter()
        .filter(|p| matches!(p.phase, NodePhase::Refused(_)))
        .count();
    let installable = target_count - refused;
    let all_installed = installable > 0 && nodes.installed.len() == installable;
    let mut runtime_class = runtime_class::plan(all_installed, observed.runtime_class.as_ref());
    steps.extend(runtime_class.step);
    let profile_classes = runtime_class::profile_classes(
        &observed.profiles,
        &observed.other_runtime_classes,
        !runtime_class.names.is_empty(),
    );
    steps.extend(profile_classes.steps);
    runtime_class.names.extend(profile_classes.names);
    let mut degraded = conditions::degraded(&nodes, &assessment.failures);
    // Nodes kept in the pool against their own evidence outrank what the
    // rollout reports; a held RuntimeClass deletion and a conflicting
    // manager, which stop the operator's own writes, outrank it in turn.
    if let Some(brake) = &observed.fleet_brake {
        degraded = conditions::fleet_brake_engaged(brake);
    }
    // Pods are not watched: a held deletion looks again as a blocked
    // uninstall does.
    let mut held = false;
    match runtime_class::guard(observed.runtime_class.as_ref(), &observed.pods_using_kata) {
        runtime_class::Guard::Untouched => {}
        runtime_class::Guard::Held(condition) => (degraded, held) = (condition, true),
        runtime_class::Guard::Release(step) => steps.extend(step),
    }

    let [in_progress, ready] = conditions::install(
        &nodes,
        target_count,
        observed.runtime_class.is_some(),
        &assessment,
    );
    let rolling = in_progress.status;
    let mut conditions = vec![in_progress, ready, degraded];
    conditions.extend(conditions::adopted(&assessment.adopted));
    Plan {
        steps,
        runtime_classes: runtime_class.names,
        conditions,
        nodes,
        requeue: if rolling {
            Requeue::After(POLL_WHILE_ROLLING)
        } else if held {
            Requeue::After(POLL_WHILE_BLOCKED)
        } else {
            Requeue::Resync
        },
        transitions: Vec::new(),
        renders_profiles: true,
    }
}

/// The plan for a KataConfig being deleted: refuse while Kata pods exist, then
/// take everything back in an order that never leaves a half-state a pod
/// could land on.
pub(crate) fn plan_uninstall(
    observed: &Observed,
    rollout: &(impl HostConfigRollout + ?Sized),
) -> Plan {
    let untargeted = targeting::none_targeted(&observed.nodes);
    let assessment = rollout.assess(&observed.spec, &observed.profiles, &untargeted);
    let nodes = nodes::node_status(&assessment.phases, 0);
    let degraded = conditions::degraded(&nodes, &[]);

    if !observed.pods_using_kata.is_empty() {
        let [in_progress, ready] = conditions::uninstall_blocked(&observed.pods_using_kata);
        // Every class of ours still there stays listed: the status's list is
        // what the next reconcile looks for pods of.
        let mut runtime_classes = runtime_class::plan(false, observed.runtime_class.as_ref()).names;
        runtime_classes.extend(runtime_class::ours(&observed.other_runtime_classes));
        return Plan {
            steps: Vec::new(),
            nodes,
            runtime_classes,
            conditions: vec![in_progress, ready, degraded],
            requeue: Requeue::After(POLL_WHILE_BLOCKED),
            transitions: Vec::new(),
            renders_profiles: false,
        };
    }

    let mut steps = Vec::new();
    // No new Kata pod from here on: without the RuntimeClass the API server
    // refuses pods that name it. No pod uses it (the gate above), so our
    // finalizer goes first and the delete takes it at once.
    if let Some(rc) = &observed.runtime_class {
        steps.extend(runtime_class::release(rc));
        if !runtime_class::being_deleted(rc) {
            steps.push(runtime_class::delete());
        }
    }
    steps.extend(runtime_class::profile_classes(&[], &observed.other_runtime_classes, false).steps);
    let progress = rollout.uninstall(&observed.nodes);
    steps.extend(progress.steps);
    let mut requeue = Requeue::After(POLL_WHILE_ROLLING);
    if progress.rolled_back {
        steps.extend(progress.cleanup);
        for node in observed.nodes.iter().filter(|n| n.carries_operator_marks()) {
            steps.push(Step::ReleaseNodeLabels {
                node: node.name.clone(),
            });
            steps.push(Step::RemoveNodeCondition {
                node: node.name.clone(),
            });
        }
        requeue = Requeue::Resync;
        if observed.has_finalizer {
            steps.push(Step::RemoveFinalizer);
            requeue = Requeue::OnChange;
        }
    }
    let [in_progress, ready] = conditions::uninstalling(&nodes, &stuck_messages(observed));
    Plan {
        steps,
        nodes,
        runtime_classes: Vec::new(),
        conditions: vec![in_progress, ready, degraded],
        requeue,
        transitions: Vec::new(),
        renders_profiles: false,
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
