//! The coordinator's one write path: every mutating request, the
//! reconciler's and the labeller's, goes through an [`Applier`] (`apply` to
//! an object or its status, `delete`, `label`, the node marks, `publish`),
//! which counts it exactly once, under the kind of object written, against
//! the [`WriteCounter`] and the optional write budget. Node request bodies
//! are built here and nowhere else ([`node_body`]).
//!
//! Writes are server-side apply with our field managers; a delete that finds
//! nothing has done its job.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{NodeCondition, ObjectReference};
use kube::Client;
use kube::Resource;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, Recorder, Reporter};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tracing::warn;

use crate::kind::{self, Kind};
use crate::metrics::WriteCounter;
use crate::names;

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("stopped after {0} writes, as configured")]
    BudgetSpent(u64),
}

/// Which part of an object a server-side apply writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    Main,
    /// The status subresource (`patch_status`).
    Status,
}

pub use crate::kind::EVENT_KIND;

/// The Event recorder of this coordinator replica (its pod, when it runs in
/// one).
pub fn event_recorder(client: Client) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: names::EVENT_REPORTER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    )
}

pub struct Applier {
    client: Client,
    writes: WriteCounter,
    /// Stop (as if the process died) once this many writes were made: the
    /// restart tests interrupt install and uninstall at every write.
    budget: Option<u64>,
    /// Told when the budget is spent, so the controller stops.
    stopped: Arc<Notify>,
    recorder: Recorder,
    /// Also counts the writes of the node marks (labels and condition)
    /// made with [`Self::apply_node_labels`] and
    /// [`Self::apply_node_conditions`]: the labeller's own metric.
    mark_writes: Option<Counter>,
}

/// The body of a server-side apply to the Node `node` that claims only its
/// name: the fields a manager held and this body omits are released.
pub fn node_body(node: &str) -> Value {
    json!({
        "apiVersion": kind::NODE.api_version(),
        "kind": kind::NODE.kind,
        "metadata": { "name": node },
    })
}

/// The longest Event note published, in characters. The API server refuses
/// an Event whose note is over 1 kB (events.k8s.io/v1); our notes (node
/// names, reasons, probe output) are ASCII in practice, and their start says
/// what happened, so the rest is what goes.
pub const EVENT_NOTE_CHARS: usize = 1000;

fn event_note(note: &str) -> String {
    note.chars().take(EVENT_NOTE_CHARS).collect()
}

impl Applier {
    pub fn new(
        client: Client,
        writes: WriteCounter,
        budget: Option<u64>,
        stopped: Arc<Notify>,
        recorder: Recorder,
    ) -> Self {
        Self {
            client,
            writes,
            budget,
            stopped,
            recorder,
            mark_writes: None,
        }
    }

    /// Counts the node-mark writes in `counter` as well.
    #[must_use]
    pub fn counting_mark_writes(mut self, counter: Counter) -> Self {
        self.mark_writes = Some(counter);
        self
    }

    /// An applier without a write budget, for the parts of the coordinator
    /// that only publish Events (the labeller).
    pub fn unbudgeted(client: Client, writes: WriteCounter) -> Self {
        let recorder = event_recorder(client.clone());
        Self::new(client, writes, None, Arc::new(Notify::new()), recorder)
    }

    /// Accounts for one write to an object of `kind`, or refuses it when
    /// the budget is spent.
    fn spend(&self, kind: &str) -> Result<(), WriteError> {
        if let Some(limit) = self.budget
            && self.writes.get() >= limit
        {
            self.stopped.notify_one();
            return Err(WriteError::BudgetSpent(limit));
        }
        self.writes.record(kind);
        Ok(())
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &kind.api_resource())
    }

    /// Server-side apply of `body` (which names its apiVersion and kind) to
    /// the object or its status, as `manager`, taking over fields another
    /// manager set.
    pub async fn apply(
        &self,
        kind: Kind,
        name: &str,
        manager: &str,
        body: &(impl Serialize + std::fmt::Debug),
        subresource: Subresource,
    ) -> Result<(), WriteError> {
        let params = PatchParams::apply(manager).force();
        self.apply_with(kind, name, &params, body, subresource)
            .await
    }

    /// Server-side apply of an object others may write too (the MCO's
    /// objects and the RuntimeClass), as `manager`, *without* taking over
    /// fields another manager set: the API server refuses the write with a
    /// conflict instead. The planner holds such writes when it sees the
    /// other manager; this covers the moment its cache has not yet seen it.
    pub async fn apply_unforced(
        &self,
        kind: Kind,
        name: &str,
        manager: &str,
        body: &(impl Serialize + std::fmt::Debug),
    ) -> Result<(), WriteError> {
        let params = PatchParams::apply(manager);
        self.apply_with(kind, name, &params, body, Subresource::Main)
            .await
    }

    /// Creates the object `body` (a POST, as `manager`) unless it exists:
    /// for objects the coordinator may create and never change, which RBAC
    /// cannot grant by name (a POST carries none) and a server-side apply
    /// cannot do without `patch`. `Ok(false)`: it already existed.
    pub async fn create(
        &self,
        kind: Kind,
        manager: &str,
        body: &Value,
    ) -> Result<bool, WriteError> {
        self.spend(kind.kind)?;
        let object: DynamicObject = serde_json::from_value(body.clone())
            .map_err(|e| WriteError::Api(kube::Error::SerdeError(e)))?;
        let params = kube::api::PostParams {
            field_manager: Some(manager.into()),
            ..Default::default()
        };
        match self.api(kind).create(&params, &object).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Server-side apply of `body` to the namespaced object `name` in
    /// `namespace`, as `manager`, taking over fields another manager set:
    /// the operands the coordinator keeps in its own namespace.
    pub async fn apply_in_namespace(
        &self,
        namespace: &str,
        kind: Kind,
        name: &str,
        manager: &str,
        body: &(impl Serialize + std::fmt::Debug),
    ) -> Result<(), WriteError> {
        self.spend(kind.kind)?;
        let request = Self::request(kind, Some(namespace)).patch(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(body),
        );
        Ok(self.send(request).await?)
    }

    async fn apply_with(
        &self,
        kind: Kind,
        name: &str,
        params: &PatchParams,
        body: &(impl Serialize + std::fmt::Debug),
        subresource: Subresource,
    ) -> Result<(), WriteError> {
        self.spend(kind.kind)?;
        let request = Self::request(kind, None);
        let patch = Patch::Apply(body);
        let request = match subresource {
            Subresource::Main => request.patch(name, params, &patch),
            Subresource::Status => request.patch_subresource("status", name, params, &patch),
        };
        Ok(self.send(request).await?)
    }

    /// Requests to objects of `kind` (in `namespace`, when namespaced).
    fn request(kind: Kind, namespace: Option<&str>) -> kube::core::Request {
        kube::core::Request::new(DynamicObject::url_path(&kind.api_resource(), namespace))
    }

    /// Sends a write and drops the object the API server answers with
    /// unread: the coordinator never reads it, and decoding it would cost a
    /// whole object's worth of small allocations per write (a Node of an
    /// OpenShift worker, some 19 KiB of JSON, in every label and condition
    /// write). An answer that is an error is still read and returned.
    async fn send(
        &self,
        request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<(), kube::Error> {
        let request = request.map_err(kube::Error::BuildRequest)?;
        self.client
            .request::<serde::de::IgnoredAny>(request)
            .await
            .map(|_| ())
    }

    /// Takes `finalizer` off the object, whichever field manager wrote it: a
    /// JSON patch that tests the entry is still `finalizer` where it was seen
    /// (`seen`) and removes it, so no other finalizer is touched. A
    /// server-side apply without it would release only what our manager
    /// owns, and one an earlier operator wrote would keep the object forever.
    pub async fn remove_finalizer(
        &self,
        kind: Kind,
        name: &str,
        finalizer: &str,
        seen: &[String],
    ) -> Result<(), WriteError> {
        let Some(index) = seen.iter().position(|f| f == finalizer) else {
            return Ok(());
        };
        self.remove_list_entry(kind, name, "finalizers", index, finalizer.into())
            .await
    }

    /// Takes entry `index` of the list `metadata.<list>` off the object,
    /// provided it is still `entry` (a JSON patch test, then remove):
    /// whichever field manager wrote it, and nothing else of the list.
    pub async fn remove_list_entry(
        &self,
        kind: Kind,
        name: &str,
        list: &str,
        index: usize,
        entry: Value,
    ) -> Result<(), WriteError> {
        let index = index.to_string();
        self.json_patch_remove(kind, name, &["metadata", list, &index], entry)
            .await
    }

    /// JSON patch: test that `path` holds `value`, then remove it. A 404 (the
    /// object is gone) has done the job; a failed test is an error (the
    /// value changed since it was seen).
    async fn json_patch_remove(
        &self,
        kind: Kind,
        name: &str,
        path: &[&str],
        value: Value,
    ) -> Result<(), WriteError> {
        self.spend(kind.kind)?;
        // The pointer escapes `/` and `~` in a token (`~1`, `~0`).
        let path = || json_patch::jsonptr::PointerBuf::from_tokens(path.iter().copied());
        let patch = json_patch::Patch(vec![
            json_patch::PatchOperation::Test(json_patch::TestOperation {
                path: path(),
                value,
            }),
            json_patch::PatchOperation::Remove(json_patch::RemoveOperation { path: path() }),
        ]);
        let request = Self::request(kind, None).patch(
            name,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        );
        match self.send(request).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the label `label` off the node, provided it is still `value`
    /// (a JSON patch test, then remove): whichever field managers own it,
    /// where an apply without it only releases our share. A node-mark write.
    pub async fn remove_node_label(
        &self,
        node: &str,
        label: &str,
        value: &str,
    ) -> Result<(), WriteError> {
        self.count_mark_write();
        self.json_patch_remove(
            kind::NODE,
            node,
            &["metadata", "labels", label],
            value.into(),
        )
        .await
    }

    pub async fn delete(&self, kind: Kind, name: &str) -> Result<(), WriteError> {
        self.spend(kind.kind)?;
        match self.api(kind).delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets one label under the targeting manager, or removes it whoever
    /// set it: the planner decides who carries it.
    pub async fn label(&self, node: &str, label: &str, present: bool) -> Result<(), WriteError> {
        if present {
            let mut body = node_body(node);
            body["metadata"]["labels"] = json!({ label: "" });
            return self
                .apply(
                    kind::NODE,
                    node,
                    names::MANAGER_TARGETING,
                    &body,
                    Subresource::Main,
                )
                .await;
        }
        self.spend(kind::NODE.kind)?;
        let patch = json!({ "metadata": { "labels": { label: null } } });
        let request = Self::request(kind::NODE, None).patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        );
        Ok(self.send(request).await?)
    }

    /// Server-side apply of exactly `labels` to the node as `manager`;
    /// `None` claims no label at all, which releases every label only
    /// `manager` set.
    pub async fn apply_node_labels(
        &self,
        node: &str,
        manager: &str,
        labels: Option<Map<String, Value>>,
    ) -> Result<(), WriteError> {
        let mut body = node_body(node);
        if let Some(labels) = labels {
            body["metadata"]["labels"] = Value::Object(labels);
        }
        self.count_mark_write();
        self.apply(kind::NODE, node, manager, &body, Subresource::Main)
            .await
    }

    /// Server-side apply of exactly `conditions` to the node's status as
    /// `manager`; none releases every condition only `manager` set.
    pub async fn apply_node_conditions(
        &self,
        node: &str,
        manager: &str,
        conditions: &[NodeCondition],
    ) -> Result<(), WriteError> {
        let mut body = node_body(node);
        body["status"] = if conditions.is_empty() {
            json!({})
        } else {
            json!({ "conditions": conditions })
        };
        self.count_mark_write();
        self.apply(kind::NODE, node, manager, &body, Subresource::Status)
            .await
    }

    fn count_mark_write(&self) {
        if let Some(counter) = &self.mark_writes {
            counter.inc();
        }
    }

    /// Publishes an Event (a write too), its note cut to
    /// [`EVENT_NOTE_CHARS`]; a failure is logged, not returned: an Event
    /// lost is no reason to redo the reconcile.
    pub async fn publish(&self, mut event: Event, regarding: &ObjectReference) {
        if self.spend(EVENT_KIND).is_err() {
            return;
        }
        event.note = event.note.as_deref().map(event_note);
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            warn!(error = %e, "could not publish an Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_to_whole_characters() {
        let long = "é".repeat(EVENT_NOTE_CHARS + 5);
        assert_eq!(event_note(&long).chars().count(), EVENT_NOTE_CHARS);
        assert_eq!(event_note("short"), "short");
    }
}
