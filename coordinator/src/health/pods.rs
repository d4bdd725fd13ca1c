//! Streams end when the Pod their token is bound to is gone: a deleted
//! agent Pod's token is dead (TokenReview refuses it from then on), so the
//! stream it opened must not speak for the node any longer.
//!
//! One watch of the agents' Pods (their namespace, their ServiceAccount by
//! field selector, metadata only) rather than a GET of each stream's Pod now
//! and then: at 5,000 agents a GET every 30 s is ~170 requests a second
//! forever, and a Pod deleted just after its check goes unnoticed for up to
//! the period; the watch costs one LIST when it starts and one event per
//! change of an agent Pod (a DaemonSet's Pods rarely change), and ends the
//! stream within the event's latency. What it keeps: the uids of the open
//! streams' Pods and a bounded set of uids seen deleted.
//!
//! Fail open: while the watch cannot reach the API server no stream is
//! ended for it (the token's expiry still ends them); the list it makes when
//! it is back ends the streams whose Pods went meanwhile, and every (re)list
//! makes the authenticator forget the cached admissions of Pods it did not
//! find, so a deletion missed meanwhile does not stay admitted for the
//! cache's hour.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_objects};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Deleted uids remembered, so a stream that opens after its Pod's deletion
/// (admitted by a cached review) is refused: more than the agents' Pods of
/// a large cluster replaced in one rollout.
const TOMBSTONES: usize = 16_384;

#[derive(Default)]
struct State {
    /// The agents' Pods' uids, filled while the watch (re)lists.
    listing: HashSet<String>,
    /// Uids seen deleted, oldest first.
    tombstones: VecDeque<String>,
    deleted: HashSet<String>,
    /// The Pods of open streams, each with the flag that ends them.
    watched: HashMap<String, watch::Sender<bool>>,
}

impl State {
    /// Follows one event of the watch; after a (re)list, the uids of the
    /// Pods it listed.
    fn apply(&mut self, event: Event<PartialObjectMeta<Pod>>) -> Option<HashSet<String>> {
        match event {
            Event::Init => self.listing.clear(),
            Event::InitApply(pod) => {
                if let Some(uid) = uid(&pod) {
                    self.listing.insert(uid);
                }
            }
            Event::InitDone => {
                let listed = std::mem::take(&mut self.listing);
                // Pods deleted while the watch was down end their streams
                // too. Not remembered as deleted: a Pod created after the
                // list's snapshot is missing from it as well, and its agent
                // must be let back in.
                let missing: Vec<String> = self
                    .watched
                    .keys()
                    .filter(|uid| !listed.contains(*uid))
                    .cloned()
                    .collect();
                debug!(pods = listed.len(), "listed the agents' pods");
                for uid in missing {
                    self.gone(&uid, false);
                }
                return Some(listed);
            }
            Event::Apply(_) => {}
            Event::Delete(pod) => {
                if let Some(uid) = uid(&pod) {
                    self.gone(&uid, true);
                }
            }
        }
        None
    }

    /// Ends the streams of the Pod `uid`; with `deleted`, refuses it from
    /// now on too.
    fn gone(&mut self, uid: &str, deleted: bool) {
        if deleted && self.deleted.insert(uid.to_owned()) {
            self.tombstones.push_back(uid.to_owned());
            if self.tombstones.len() > TOMBSTONES
                && let Some(oldest) = self.tombstones.pop_front()
            {
                self.deleted.remove(&oldest);
            }
        }
        if let Some(flag) = self.watched.get(uid) {
            info!(pod_uid = %uid, "the agent pod of an open stream was deleted; ending the stream");
            flag.send_replace(true);
        }
    }
}

/// The agents' Pods, watched for as long as this lives.
pub struct BoundPods {
    state: Arc<Mutex<State>>,
    task: tokio::task::AbortHandle,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update leaves the state whole: a panic elsewhere cannot break it.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn uid(pod: &PartialObjectMeta<Pod>) -> Option<String> {
    pod.metadata.uid.clone()
}

impl BoundPods {
    /// Starts watching the Pods of `service_account` in `namespace`,
    /// telling `on_relist` the uids of the Pods every (re)list finds: what
    /// was admitted for any other Pod must go, its deletion may have been
    /// missed while the watch was down.
    pub fn start(
        client: kube::Client,
        namespace: &str,
        service_account: &str,
        on_relist: impl Fn(&HashSet<String>) + Send + 'static,
    ) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        // Metadata only: the uid is all we read.
        let api: Api<PartialObjectMeta<Pod>> = Api::namespaced(client, namespace);
        let config = watcher::Config::default()
            .fields(&format!("spec.serviceAccountName={service_account}"));
        let writer = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut events = watch_objects(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        warn!(%error, "cannot watch the agents' pods; streams end at their token's expiry only, until it works again");
                        continue;
                    }
                };
                let listed = lock(&writer).apply(event);
                if let Some(listed) = listed {
                    on_relist(&listed);
                }
            }
        })
        .abort_handle();
        BoundPods { state, task }
    }

    /// Whether the Pod `uid` is known to be deleted: a check-in with its
    /// token (admitted by a cached review) is then refused.
    pub fn is_deleted(&self, uid: &str) -> bool {
        lock(&self.state).deleted.contains(uid)
    }

    /// Follows the Pod `uid` for a stream: `None` when it is known to be
    /// gone already. A Pod not seen yet counts as live: its TokenReview just
    /// found it, and the watch's event may still be on its way.
    pub fn follow(&self, uid: &str) -> Option<PodFollower> {
        let mut state = lock(&self.state);
        if state.deleted.contains(uid) {
            return None;
        }
        let gone = state
            .watched
            .entry(uid.to_owned())
            .or_insert_with(|| watch::Sender::new(false))
            .subscribe();
        Some(PodFollower {
            state: Arc::clone(&self.state),
            uid: uid.to_owned(),
            gone,
        })
    }
}

impl Drop for BoundPods {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One stream's view of its Pod.
pub struct PodFollower {
    state: Arc<Mutex<State>>,
    uid: String,
    gone: watch::Receiver<bool>,
}

impl PodFollower {
    /// Completes once the Pod is deleted.
    pub async fn deleted(&mut self) {
        if self.gone.wait_for(|gone| *gone).await.is_err() {
            // The flag outlives every follower of its Pod: not reached.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for PodFollower {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        // Our own receiver is still counted here: the last follower of a
        // Pod takes its flag away.
        if state
            .watched
            .get(&self.uid)
            .is_some_and(|flag| flag.receiver_count() <= 1)
        {
            state.watched.remove(&self.uid);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pods() -> BoundPods {
        // A task that never runs: the tests drive the state by hand.
        let task = tokio::spawn(std::future::pending::<()>()).abort_handle();
        BoundPods {
            state: Arc::default(),
            task,
        }
    }

    #[tokio::test]
    async fn a_deleted_pod_ends_its_streams_and_refuses_new_ones() {
        let pods = pods();
        let mut first = pods.follow("u1").unwrap();
        let mut second = pods.follow("u1").unwrap();
        let other = pods.follow("u2").unwrap();
        lock(&pods.state).gone("u1", true);
        first.deleted().await;
        second.deleted().await;
        assert!(pods.follow("u1").is_none(), "a deleted pod's token is dead");
        assert!(!*other.gone.borrow());
        drop((first, second, other));
        assert!(lock(&pods.state).watched.is_empty(), "followers clean up");
    }

    #[tokio::test]
    async fn tombstones_are_bounded() {
        let pods = pods();
        for n in 0..=TOMBSTONES {
            lock(&pods.state).gone(&n.to_string(), true);
        }
        let state = lock(&pods.state);
        assert_eq!(state.deleted.len(), TOMBSTONES);
        assert!(!state.deleted.contains("0"), "the oldest is forgotten");
    }

    fn pod(uid: &str) -> PartialObjectMeta<Pod> {
        let mut pod = PartialObjectMeta::<Pod>::default();
        pod.metadata.uid = Some(uid.to_owned());
        pod
    }

    #[tokio::test]
    async fn a_relist_tells_the_pods_it_found_and_ends_the_others_streams() {
        let pods = pods();
        let mut gone = pods.follow("gone").unwrap();
        let kept = pods.follow("kept").unwrap();
        {
            let mut state = lock(&pods.state);
            assert_eq!(state.apply(Event::Init), None);
            assert_eq!(state.apply(Event::InitApply(pod("kept"))), None);
            assert_eq!(state.apply(Event::InitApply(pod("new"))), None);
            let listed = state.apply(Event::InitDone).unwrap();
            assert_eq!(listed, HashSet::from(["kept".to_owned(), "new".to_owned()]));
            assert_eq!(state.apply(Event::Delete(pod("new"))), None);
        }
        gone.deleted().await;
        assert!(!*kept.gone.borrow());
    }

    #[tokio::test]
    async fn a_pod_missing_from_a_relist_ends_its_streams_but_may_come_back() {
        let pods = pods();
        let mut stream = pods.follow("u1").unwrap();
        lock(&pods.state).gone("u1", false);
        stream.deleted().await;
        assert!(pods.follow("u1").is_some());
    }
}
