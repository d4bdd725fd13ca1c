//! What the coordinator currently knows about each node's agent, shared
//! between the gRPC streams that write it and the labeller that reads it.
//! In memory only: after a restart it is rebuilt from agents reconnecting.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kata_proto::contract;
use kata_proto::health::v1::{HealthReport, Hello, RuntimeProfile};
use tokio::sync::{Notify, watch};

use crate::metrics::{REPORT_CHANGED, REPORT_HEARTBEAT};

/// Whether `report` tells anything new: the agent reports at once on a
/// change and otherwise as a heartbeat, but the wire does not say which, so
/// the coordinator compares what the agent compares (each probe's status and
/// reason, and the verdicts; not the messages, which carry live figures).
/// A first report (sequence 1: a stream's first, or an agent process's
/// first check-in) is new whatever it says. Answers
/// [`REPORT_CHANGED`] or [`REPORT_HEARTBEAT`]; a re-probe that found nothing
/// new counts as a heartbeat.
pub fn report_kind(previous: Option<&HealthReport>, report: &HealthReport) -> &'static str {
    let same_state = |previous: &HealthReport| {
        previous.verdicts == report.verdicts
            && previous.outcomes.len() == report.outcomes.len()
            && previous
                .outcomes
                .iter()
                .zip(&report.outcomes)
                .all(|(a, b)| {
                    (a.name.as_str(), a.status, a.reason.as_str())
                        == (b.name.as_str(), b.status, b.reason.as_str())
                })
    };
    match previous {
        Some(previous) if report.sequence > 1 && same_state(previous) => REPORT_HEARTBEAT,
        _ => REPORT_CHANGED,
    }
}

/// The longest probe reason kept: stable CamelCase words, like the
/// reasons of Kubernetes conditions.
pub const MAX_REASON_CHARS: usize = 64;
/// The longest probe message kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// The most probes one report may carry (the agent has nine).
pub const MAX_OUTCOMES: usize = 32;
/// What a reason that is not short CamelCase becomes.
pub const INVALID_REASON: &str = "InvalidAgentReason";

/// Cuts what an agent sent down to what the coordinator will carry into
/// Node conditions and the KataConfig status: at most [`MAX_OUTCOMES`]
/// probes, names and reasons short CamelCase (others replaced by
/// [`INVALID_REASON`]), messages at most [`MAX_MESSAGE_BYTES`]. One agent,
/// or thousands with long messages, must not push an object past etcd's
/// size limit. Pure.
pub fn bound_report(report: &mut HealthReport) {
    report.outcomes.truncate(MAX_OUTCOMES);
    if let Some(verdicts) = &mut report.verdicts {
        // Names only, checked again against the profiles in force before
        // any becomes a label.
        verdicts
            .ready_profiles
            .truncate(contract::MAX_RUNTIME_PROFILES);
        verdicts
            .ready_profiles
            .retain(|name| contract::is_runtime_profile_name(name));
    }
    for outcome in &mut report.outcomes {
        if !is_short_camel_case(&outcome.reason) {
            outcome.reason = INVALID_REASON.to_owned();
        }
        if outcome.name.len() > MAX_REASON_CHARS
            || !outcome
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            outcome.name = "invalid".to_owned();
        }
        truncate_message(&mut outcome.message);
    }
}

fn is_short_camel_case(reason: &str) -> bool {
    reason.len() <= MAX_REASON_CHARS
        && reason.starts_with(|c: char| c.is_ascii_uppercase())
        && reason.chars().all(|c| c.is_ascii_alphanumeric())
}

/// At most [`MAX_MESSAGE_BYTES`], cut at a character boundary and marked.
fn truncate_message(message: &mut String) {
    const MARK: &str = "…";
    if message.len() <= MAX_MESSAGE_BYTES {
        return;
    }
    let mut end = MAX_MESSAGE_BYTES - MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(MARK);
}

/// One node's agent as last heard from.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHealth {
    pub agent_version: String,
    pub boot_id: String,
    pub last_report: Option<HealthReport>,
    /// When the last Hello, report or check-in arrived: the labeller's
    /// silence clock.
    pub last_seen: Instant,
    /// A stream is open (older agents); an agent that checks in holds none.
    pub connected: bool,
    /// Which stream owns this entry. An agent that reconnects before its old
    /// stream is torn down gets a new session, so the old stream's end does
    /// not mark the live one disconnected.
    pub session: u64,
    /// The runtime profiles the agent had been told of when it probed for
    /// its last report (the reply to its check-in before): only those can
    /// its report say anything of. `None`: not known (a first check-in since
    /// this coordinator started, or a stream).
    pub told: Option<Arc<[RuntimeProfile]>>,
    /// What the reply to its last check-in told it.
    pub telling: Option<Arc<[RuntimeProfile]>>,
}

#[derive(Debug, Default)]
struct State {
    nodes: BTreeMap<String, NodeHealth>,
    next_session: u64,
    /// Where to leave requests for each node's agent: its live stream.
    mailboxes: BTreeMap<String, (u64, Arc<Mailbox>)>,
    /// Re-probe requests for agents that check in, given with the reply to
    /// their next check-in. At most one per known node.
    reprobes: BTreeMap<String, String>,
}

impl State {
    /// The entry of `node` as `hello` says, under a new session: a new boot
    /// id drops what was known of the previous boot (its report described a
    /// boot that no longer exists); the same boot id keeps it.
    fn greet(
        &mut self,
        node: &str,
        hello: &Hello,
        now: Instant,
        connected: bool,
    ) -> &mut NodeHealth {
        self.next_session += 1;
        let session = self.next_session;
        let entry = self
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeHealth {
                agent_version: String::new(),
                boot_id: hello.boot_id.clone(),
                last_report: None,
                last_seen: now,
                connected,
                session,
                told: None,
                telling: None,
            });
        if entry.boot_id != hello.boot_id {
            entry.boot_id.clone_from(&hello.boot_id);
            entry.last_report = None;
        }
        if entry.agent_version != hello.agent_version {
            entry.agent_version.clone_from(&hello.agent_version);
        }
        entry.last_seen = now;
        entry.connected = connected;
        entry.session = session;
        entry
    }
}

impl NodeHealth {
    /// Keeps `report`, heard at `now`, as the latest; says what kind it was
    /// against the one before ([`report_kind`]).
    fn record(&mut self, report: HealthReport, now: Instant) -> &'static str {
        let kind = report_kind(self.last_report.as_ref(), &report);
        self.last_report = Some(report);
        self.last_seen = now;
        kind
    }
}

/// `report` cut to what the registry keeps ([`bound_report`]) and held
/// tight: decoding grows the list by doubling, and the registry holds one
/// report per node of the cluster. Done before the lock, which every
/// agent's report passes through.
fn compact(mut report: HealthReport) -> HealthReport {
    bound_report(&mut report);
    report.outcomes.shrink_to_fit();
    report
}

/// What a check-in leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedIn {
    /// [`REPORT_CHANGED`] or [`REPORT_HEARTBEAT`], as [`report_kind`] says.
    pub kind: &'static str,
    /// A re-probe request waiting for this agent, now handed over.
    pub reprobe: Option<String>,
}

/// Requests waiting for one agent stream to carry them. A slot and a wake-up
/// rather than a channel: the coordinator holds one per connected agent, and
/// a channel's first block alone costs kilobytes. Requests coalesce: a
/// re-probe asked for twice before the stream sends it is sent once, with the
/// latest reason.
#[derive(Debug, Default)]
pub struct Mailbox {
    reprobe: Mutex<Option<String>>,
    wake: Notify,
}

impl Mailbox {
    fn request_reprobe(&self, reason: &str) {
        *self.reprobe.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.to_owned());
        // Stores a permit when the stream is not waiting, so nothing is lost.
        self.wake.notify_one();
    }

    /// Resolves once a request may be waiting.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// The pending re-probe request's reason, if any.
    pub fn take_reprobe(&self) -> Option<String> {
        self.reprobe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Cheap to clone; all clones share the same view.
#[derive(Debug, Clone)]
pub struct HealthRegistry {
    state: Arc<Mutex<State>>,
    /// Bumped on every change, so readers wait instead of polling.
    changes: Arc<watch::Sender<u64>>,
    /// The runtime profiles agents are told to check and may report ready.
    profiles: crate::profiles::InForce,
}

impl Default for HealthRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthRegistry {
    pub fn new() -> Self {
        Self::with_profiles(crate::profiles::InForce::default())
    }

    /// A registry whose agents check the runtime profiles `profiles` holds.
    pub fn with_profiles(profiles: crate::profiles::InForce) -> Self {
        Self {
            state: Arc::default(),
            changes: Arc::new(watch::Sender::new(0)),
            profiles,
        }
    }

    /// The runtime profiles in force.
    pub fn profiles(&self) -> &crate::profiles::InForce {
        &self.profiles
    }

    /// The data stays consistent even if a holder panicked (every update is a
    /// single assignment), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changes.send_modify(|version| *version += 1);
    }

    /// Records an authenticated Hello and returns the stream's session.
    /// A new boot id drops the previous report: it described a boot that no
    /// longer exists. The same boot id keeps it, so a coordinator or agent
    /// restart does not make the node look unknown until the next report.
    pub fn connect(&self, node: &str, hello: &Hello, now: Instant) -> u64 {
        let session = self.lock().greet(node, hello, now, true).session;
        self.changed();
        session
    }

    /// Stores a report from the stream that owns `node` and says what kind
    /// it was ([`report_kind`]); a report from a superseded stream is
    /// ignored and `None` returned.
    pub fn report(
        &self,
        node: &str,
        session: u64,
        report: HealthReport,
        now: Instant,
    ) -> Option<&'static str> {
        let report = compact(report);
        let accepted = match self.lock().nodes.get_mut(node) {
            Some(entry) if entry.session == session => Some(entry.record(report, now)),
            _ => None,
        };
        // A heartbeat changes nothing to act on but the silence clock, which
        // the labeller reads on its own tick.
        if accepted == Some(REPORT_CHANGED) {
            self.changed();
        }
        accepted
    }

    /// Records a check-in: an authenticated Hello and report in one call,
    /// with no stream left open. As with [`HealthRegistry::connect`], a new
    /// boot id drops what was known of the previous boot, and the report's
    /// kind is judged against the last one. A stream still open for the
    /// node (its agent was replaced meanwhile) no longer owns the entry, so
    /// its next report ends it.
    pub fn check_in(
        &self,
        node: &str,
        hello: &Hello,
        report: HealthReport,
        now: Instant,
    ) -> CheckedIn {
        let report = compact(report);
        // The reply tells the agent the profiles in force now.
        let telling = self.profiles.get();
        let checked = {
            let mut state = self.lock();
            let reprobe = state.reprobes.remove(node);
            state.mailboxes.remove(node);
            let health = state.greet(node, hello, now, false);
            health.told = std::mem::replace(&mut health.telling, telling);
            let kind = health.record(report, now);
            CheckedIn { kind, reprobe }
        };
        // As for a stream's reports: heartbeats only move the silence clock.
        if checked.kind == REPORT_CHANGED {
            self.changed();
        }
        checked
    }

    /// The mailbox through which the coordinator reaches the agent on
    /// `session`'s stream.
    pub fn attach(&self, node: &str, session: u64) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox::default());
        self.lock()
            .mailboxes
            .insert(node.to_owned(), (session, Arc::clone(&mailbox)));
        mailbox
    }

    /// Asks the node's agent to probe at once (after the node changed under
    /// it, say): through its open stream, or with the reply to its next
    /// check-in. False when no agent was ever heard from on the node: its
    /// first report will be fresh anyway.
    pub fn request_reprobe(&self, node: &str, reason: &str) -> bool {
        let mut state = self.lock();
        if let Some((_, mailbox)) = state.mailboxes.get(node) {
            mailbox.request_reprobe(reason);
            return true;
        }
        if !state.nodes.contains_key(node) {
            return false;
        }
        state.reprobes.insert(node.to_owned(), reason.to_owned());
        true
    }

    /// The stream `session` ended. The entry stays (the labeller needs its
    /// last report to judge the silence), only marked disconnected.
    pub fn disconnect(&self, node: &str, session: u64) {
        let changed = {
            let mut state = self.lock();
            if state
                .mailboxes
                .get(node)
                .is_some_and(|(s, _)| *s == session)
            {
                state.mailboxes.remove(node);
            }
            match state.nodes.get_mut(node) {
                Some(entry) if entry.session == session && entry.connected => {
                    entry.connected = false;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.changed();
        }
    }

    /// Forgets `nodes` (deleted from the cluster): their entries, mailboxes
    /// and waiting re-probes, so the registry holds only nodes that exist.
    /// A stream still open for one finds its entry gone at its next report
    /// and ends.
    pub fn forget<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) {
        let forgot = {
            let mut state = self.lock();
            let mut forgot = false;
            for node in nodes {
                state.mailboxes.remove(node);
                state.reprobes.remove(node);
                forgot |= state.nodes.remove(node).is_some();
            }
            forgot
        };
        if forgot {
            self.changed();
        }
    }

    pub fn get(&self, node: &str) -> Option<NodeHealth> {
        self.lock().nodes.get(node).cloned()
    }

    /// How many agents are reporting: with a stream open, or checked in
    /// within `window` before `now`.
    pub fn connected_count(&self, now: Instant, window: Duration) -> usize {
        self.lock()
            .nodes
            .values()
            .filter(|h| h.connected || now.saturating_duration_since(h.last_seen) <= window)
            .count()
    }

    pub fn snapshot(&self) -> BTreeMap<String, NodeHealth> {
        self.lock().nodes.clone()
    }

    /// A receiver whose value changes after every update but a heartbeat
    /// (which moves only `last_seen`: readers of the silence clock look at
    /// it on their own schedule).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests;
