//! The Prometheus metric families of the coordinator, and the label values
//! known in advance. They are served by [`crate::endpoints`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The categories of [`CategoryLabel`], as `controller::Error::category`
/// names them.
pub const RECONCILE_ERROR_CATEGORIES: [&str; 4] = ["observe", "apply", "status", "stopped"];

/// A failed reconcile's category: observe, apply, status or stopped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// A KataConfig condition type: InProgress, Ready, Degraded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabel {
    pub condition: String,
}

/// A node phase of the KataConfig status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

/// The Kubernetes kind of the object a write went to: MachineConfig, Node,
/// Event, ...
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// How a TokenReview ended: [`REVIEW_AUTHENTICATED`], [`REVIEW_REJECTED`] or
/// [`REVIEW_ERROR`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// The token is a live agent token for its node: the agent is admitted.
pub const REVIEW_AUTHENTICATED: &str = "authenticated";
/// The API server or our checks refused the token (forged, expired, wrong
/// audience or account, not bound to a pod on a node).
pub const REVIEW_REJECTED: &str = "rejected";
/// The review itself failed (API error or timeout): nothing is known about
/// the token.
pub const REVIEW_ERROR: &str = "error";
/// A bearer refused before any review: not shaped like a token for our
/// audience, expired, or not signed by the cluster's service-account issuer.
pub const TOKEN_REFUSED_UNREVIEWED: &str = "refused";
/// A token admitted by an earlier review of the same token.
pub const TOKEN_CACHED: &str = "cached";
/// A token turned away because too many reviews were already waiting.
pub const TOKEN_QUEUE_FULL: &str = "queue_full";
/// A token turned away by its Pod's or node's review limits.
pub const TOKEN_LIMITED: &str = "limited";

/// A report whose probe statuses, reasons or verdicts differ from the
/// node's previous report, or the node's first (a stream's first, or an
/// agent process's first check-in).
pub const REPORT_CHANGED: &str = "report";
/// A report that repeats the node's previous state.
pub const REPORT_HEARTBEAT: &str = "heartbeat";

/// A TLS handshake on the agents' port that sent the certificate.
pub const HANDSHAKE_FULL: &str = "full";
/// A TLS handshake resumed from a session ticket (no certificate).
pub const HANDSHAKE_RESUMED: &str = "resumed";
/// A TLS handshake refused, timed out or broken off.
pub const HANDSHAKE_FAILED: &str = "failed";

/// Why the agents' port turned a peer away, as
/// `kata_operator_health_refused_total{reason}` counts it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Every reason [`ReasonLabel`] takes; a series each from the first scrape.
pub const REFUSAL_REASONS: [&str; 12] = [
    REFUSED_CONNECTION_LIMIT,
    REFUSED_KNOWN_CONNECTION_LIMIT,
    REFUSED_PEER_LIMIT,
    REFUSED_EVICTED,
    REFUSED_IDLE,
    REFUSED_MAX_AGE,
    REFUSED_UNAUTHENTICATED,
    REFUSED_PERMISSION_DENIED,
    REFUSED_UNAVAILABLE,
    REFUSED_DEADLINE,
    REFUSED_REVIEW_RATE,
    REFUSED_REVIEW_IN_FLIGHT,
];
/// A connection closed at accept: the coordinator holds as many as it may
/// and none of them can give way (all authenticated, or many already ending).
pub const REFUSED_CONNECTION_LIMIT: &str = "connection_limit";
/// The same for a connection from a known address (one whose connection
/// authenticated lately, an agent's as a rule): agents are being turned
/// away, which a flood of strangers alone should never cause.
pub const REFUSED_KNOWN_CONNECTION_LIMIT: &str = "known_connection_limit";
/// A connection closed at accept: its address holds as many as one may.
pub const REFUSED_PEER_LIMIT: &str = "peer_connection_limit";
/// A connection that had not authenticated a call, closed to give its
/// place to a newer one when all places were taken.
pub const REFUSED_EVICTED: &str = "evicted";
/// A connection closed after carrying no call for the idle timeout.
pub const REFUSED_IDLE: &str = "idle";
/// A connection closed by force at its maximum age plus grace.
pub const REFUSED_MAX_AGE: &str = "max_age";
/// A call whose bearer was missing or not a live agent token.
pub const REFUSED_UNAUTHENTICATED: &str = "unauthenticated";
/// A call with a live token that may not speak for a node here.
pub const REFUSED_PERMISSION_DENIED: &str = "permission_denied";
/// A call whose token could not be checked now (review failed or queue full).
pub const REFUSED_UNAVAILABLE: &str = "unavailable";
/// A call not answered within the request deadline.
pub const REFUSED_DEADLINE: &str = "deadline";
/// A call whose token's node used up its TokenReview rate.
pub const REFUSED_REVIEW_RATE: &str = "review_rate";
/// A call whose token's Pod had another token under review.
pub const REFUSED_REVIEW_IN_FLIGHT: &str = "review_in_flight";

/// The node phases exported, in the status's words.
pub const NODE_PHASES: [&str; 7] = [
    "installed",
    "installing",
    "waiting_to_install",
    "failed_to_install",
    "uninstalling",
    "failed_to_uninstall",
    "not_runtime_ready",
];

/// Counts every mutating API request the coordinator makes, by the kind
/// of object written; exported as `kata_operator_api_writes_total{kind}`.
/// Clones count together.
#[derive(Clone, Debug, Default)]
pub struct WriteCounter {
    by_kind: Family<KindLabel, Counter>,
    /// The sum over kinds, kept beside the family because the write budget
    /// checks it on every write. Not exported: `sum()` of the family is it.
    total: Counter,
}

impl WriteCounter {
    /// Every write, whatever its kind.
    pub fn get(&self) -> u64 {
        self.total.get()
    }

    /// The writes to objects of `kind`.
    pub fn get_kind(&self, kind: &str) -> u64 {
        self.by_kind
            .get(&KindLabel { kind: kind.into() })
            .map_or(0, |counter| counter.get())
    }

    pub fn record(&self, kind: &str) {
        self.by_kind
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
        self.total.inc();
    }
}

/// A histogram of durations in seconds, with buckets from `smallest`
/// doubling `count` times.
#[derive(Clone, Debug)]
pub struct Durations {
    histogram: Histogram,
    /// The histogram's own count is readable only in its crate's tests;
    /// callers (tests waiting for a reconcile to finish) read this one.
    observed: Counter,
}

impl Durations {
    fn new(smallest: f64, count: u16) -> Self {
        Durations {
            histogram: Histogram::new(exponential_buckets(smallest, 2.0, count)),
            observed: Counter::default(),
        }
    }

    pub fn observe(&self, elapsed: std::time::Duration) {
        self.histogram.observe(elapsed.as_secs_f64());
        self.observed.inc();
    }

    /// How many durations were observed.
    pub fn count(&self) -> u64 {
        self.observed.get()
    }
}

/// Reconciles take milliseconds to tens of seconds (a slow API server,
/// the pods list of an uninstall): 5 ms to about 41 s.
#[derive(Clone, Debug)]
pub struct ReconcileDurations(pub Durations);

impl Default for ReconcileDurations {
    fn default() -> Self {
        ReconcileDurations(Durations::new(0.005, 14))
    }
}

/// A TokenReview is one API request: 1 ms to about 8 s (beyond that it
/// times out).
#[derive(Clone, Debug)]
pub struct ReviewDurations(pub Durations);

impl Default for ReviewDurations {
    fn default() -> Self {
        ReviewDurations(Durations::new(0.001, 14))
    }
}

/// A label another manager co-owned, taken off with a JSON patch.
pub const CONTEST_REMOVED: &str = "removed";
/// A label put back after repeated removals, left in place and reported.
pub const CONTEST_HELD: &str = "held";

/// Everything the coordinator counts. Cheap to clone: clones count together.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Family<CategoryLabel, Counter>,
    /// Every write, the reconciler's and the labeller's.
    pub api_writes: WriteCounter,
    pub label_writes: Counter,
    /// Kata node labels another field manager also owned, by what the
    /// labeller did: [`CONTEST_REMOVED`] or [`CONTEST_HELD`].
    pub label_contests: Family<OutcomeLabel, Counter>,
    pub connected_agents: Gauge,
    /// The coordinator's clock minus the API server's, as far as the
    /// times of the last agent token a review admitted tell.
    pub clock_skew: Gauge,
    pub nodes: Family<StateLabel, Gauge>,
    /// The fleet-wide brake on pool removals, as the labeller decided it.
    pub fleet_brake: crate::health::marks::brake::FleetBrake,
    /// 1 while the active KataConfig's condition is True.
    pub kataconfig_condition: Family<ConditionLabel, Gauge>,
    /// The active KataConfig's nodes, by phase.
    pub kataconfig_nodes: Family<PhaseLabel, Gauge>,
    /// 1 while this replica acts (holds the lease, or runs alone).
    pub leader: Gauge,
    /// Agents' health reports, [`REPORT_CHANGED`] or [`REPORT_HEARTBEAT`].
    pub reports_received: Family<KindLabel, Counter>,
    /// TLS handshakes on the agents' port: [`HANDSHAKE_FULL`],
    /// [`HANDSHAKE_RESUMED`] or [`HANDSHAKE_FAILED`].
    pub tls_handshakes: Family<KindLabel, Counter>,
    /// TokenReviews of agents' tokens, by outcome.
    pub token_reviews: Family<OutcomeLabel, Counter>,
    pub token_review_duration: ReviewDurations,
    /// Agents' tokens settled without a TokenReview, by outcome
    /// ([`TOKEN_REFUSED_UNREVIEWED`], [`TOKEN_CACHED`], [`TOKEN_QUEUE_FULL`],
    /// [`TOKEN_LIMITED`]).
    pub tokens_not_reviewed: Family<OutcomeLabel, Counter>,
    /// Connections and calls the agents' port turned away, by reason
    /// ([`REFUSAL_REASONS`]).
    pub health_refused: Family<ReasonLabel, Counter>,
    pub reconcile_duration: ReconcileDurations,
    /// Where the allocator's figures are read at each scrape, when the
    /// binary's allocator keeps them.
    pub heap: Option<HeapReader>,
}

/// The allocator's own figures of the process heap, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapFigures {
    /// Bytes the program holds in live allocations.
    pub allocated: u64,
    /// Bytes of the pages those allocations sit in: `active - allocated`
    /// is the room left between live objects.
    pub active: u64,
    /// Bytes of heap in physical memory, the allocator's metadata included.
    pub resident: u64,
    /// The allocator's own bookkeeping.
    pub metadata: u64,
}

/// Reads [`HeapFigures`] from the allocator, `None` when it cannot.
pub type HeapReader = fn() -> Option<HeapFigures>;

/// Serves [`HeapFigures`] as they are at each scrape.
#[derive(Debug)]
struct HeapCollector(HeapReader);

impl prometheus_client::collector::Collector for HeapCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some(heap) = (self.0)() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "coordinator_heap",
            "The coordinator's heap as its allocator counts it, by state: allocated (live \
             objects), active (the pages they sit in), resident (in physical memory), metadata \
             (the allocator's own)",
            Some(&Unit::Bytes),
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, bytes) in [
            ("allocated", heap.allocated),
            ("active", heap.active),
            ("resident", heap.resident),
            ("metadata", heap.metadata),
        ] {
            let label = StateLabel {
                state: state.into(),
            };
            ConstGauge::new(bytes).encode(family.encode_family(&label)?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Counts one health report of kind [`REPORT_CHANGED`] or
    /// [`REPORT_HEARTBEAT`].
    pub fn report_received(&self, kind: &str) {
        self.reports_received
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// Counts one agent token settled without a review, with `outcome`.
    pub fn token_not_reviewed(&self, outcome: &str) {
        self.tokens_not_reviewed
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts one TokenReview that ended with `outcome` after `elapsed`.
    pub fn token_reviewed(&self, outcome: &str, elapsed: std::time::Duration) {
        self.token_reviews
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
        self.token_review_duration.0.observe(elapsed);
    }

    /// Exports the active KataConfig's conditions and node counts.
    pub fn observe_kataconfig(
        &self,
        conditions: &[(&str, bool)],
        nodes: &crate::api::KataNodesStatus,
    ) {
        for (condition, status) in conditions {
            self.kataconfig_condition
                .get_or_create(&ConditionLabel {
                    condition: (*condition).into(),
                })
                .set(i64::from(*status));
        }
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let counts = [
            count(nodes.installed.len()),
            count(nodes.installing.len()),
            count(nodes.waiting_to_install.len()),
            count(nodes.failed_to_install.len()),
            count(nodes.uninstalling.len() + nodes.waiting_to_uninstall.len()),
            count(nodes.failed_to_uninstall.len()),
            count(nodes.not_runtime_ready.len()),
        ];
        for (phase, value) in NODE_PHASES.iter().zip(counts) {
            self.kataconfig_nodes
                .get_or_create(&PhaseLabel {
                    phase: (*phase).into(),
                })
                .set(value);
        }
    }

    /// No KataConfig is in force any more.
    pub fn clear_kataconfig(&self) {
        self.kataconfig_condition.clear();
        self.kataconfig_nodes.clear();
    }
}

impl Metrics {
    /// A registry holding every metric, once.
    pub fn registry(&self) -> Registry {
        self.create_known_series();
        let mut registry = Registry::default();
        self.register(&mut registry);
        registry
    }

    /// Writes to `kinds` are counted from the first scrape on, at 0 until
    /// the first: the wiring names the kinds its rollout backend writes.
    pub fn count_writes_to(&self, kinds: &[crate::kind::Kind]) {
        for kind in kinds {
            self.api_writes.by_kind.get_or_create_owned(&KindLabel {
                kind: kind.kind.into(),
            });
        }
    }

    /// The counters whose label values are known in advance exist from the
    /// first scrape at 0, so a rate or an alert over them has a series to
    /// work on before the first event (a missing series is not a zero).
    fn create_known_series(&self) {
        self.count_writes_to(&[
            crate::kind::KATA_CONFIG,
            crate::kind::NODE,
            crate::kind::RUNTIME_CLASS,
        ]);
        self.api_writes.by_kind.get_or_create_owned(&KindLabel {
            kind: crate::kind::EVENT_KIND.into(),
        });
        for category in RECONCILE_ERROR_CATEGORIES {
            self.reconcile_errors.get_or_create_owned(&CategoryLabel {
                category: category.into(),
            });
        }
        for kind in [REPORT_CHANGED, REPORT_HEARTBEAT] {
            self.reports_received
                .get_or_create_owned(&KindLabel { kind: kind.into() });
        }
        for kind in [HANDSHAKE_FULL, HANDSHAKE_RESUMED, HANDSHAKE_FAILED] {
            self.tls_handshakes
                .get_or_create_owned(&KindLabel { kind: kind.into() });
        }
        for outcome in [REVIEW_AUTHENTICATED, REVIEW_REJECTED, REVIEW_ERROR] {
            self.token_reviews.get_or_create_owned(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        for outcome in [
            TOKEN_REFUSED_UNREVIEWED,
            TOKEN_CACHED,
            TOKEN_QUEUE_FULL,
            TOKEN_LIMITED,
        ] {
            self.tokens_not_reviewed.get_or_create_owned(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        for outcome in [CONTEST_REMOVED, CONTEST_HELD] {
            self.label_contests.get_or_create_owned(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        for reason in REFUSAL_REASONS {
            self.health_refused.get_or_create_owned(&ReasonLabel {
                reason: reason.into(),
            });
        }
    }

    fn register(&self, registry: &mut Registry) {
        let prefix = registry.sub_registry_with_prefix("kata_operator");
        self.register_controller(prefix);
        self.register_health_channel(prefix);
        if let Some(read) = self.heap {
            prefix.register_collector(Box::new(HeapCollector(read)));
        }
    }

    /// The KataConfig controller's families, and the writes of every part.
    fn register_controller(&self, prefix: &mut Registry) {
        prefix.register(
            "reconciles",
            "KataConfig reconciles",
            self.reconciles.clone(),
        );
        prefix.register(
            "reconcile_errors",
            "Failed reconciles, by category",
            self.reconcile_errors.clone(),
        );
        prefix.register(
            "api_writes",
            "Mutating Kubernetes API requests (Events included), by the kind of object written",
            self.api_writes.by_kind.clone(),
        );
        prefix.register(
            "node_label_writes",
            "Writes of the Kata node labels and condition",
            self.label_writes.clone(),
        );
        prefix.register(
            "kataconfig_condition",
            "1 while the active KataConfig's condition (InProgress, Ready, Degraded) is True",
            self.kataconfig_condition.clone(),
        );
        prefix.register(
            "kataconfig_nodes",
            "The active KataConfig's nodes, by phase of the install or uninstall",
            self.kataconfig_nodes.clone(),
        );
        prefix.register(
            "leader",
            "1 while this coordinator replica acts (holds the leader lease or runs alone)",
            self.leader.clone(),
        );
        prefix.register_with_unit(
            "reconcile_duration",
            "Time of one KataConfig reconcile: observe, plan, apply, status",
            Unit::Seconds,
            self.reconcile_duration.0.histogram.clone(),
        );
    }

    /// The agents' health channel: connections, reports, token checks.
    fn register_health_channel(&self, prefix: &mut Registry) {
        prefix.register(
            "fleet_brake_engaged",
            "1 while the fleet-wide brake holds pool removals: more than the configured share \
             of the KVM-capable nodes would leave the Kata pool within the window",
            self.fleet_brake.engaged.clone(),
        );
        prefix.register(
            "fleet_brake_held_nodes",
            "nodes whose leave of the Kata pool the fleet-wide brake holds",
            self.fleet_brake.held_nodes.clone(),
        );
        prefix.register(
            "node_label_contests",
            "Kata node labels another field manager also owned, which an apply cannot remove: \
             removed with a JSON patch, or held (put back after repeated removals; reported)",
            self.label_contests.clone(),
        );
        prefix.register(
            "connected_agents",
            "node-agents reporting: a stream open, or a check-in within the grace period",
            self.connected_agents.clone(),
        );
        prefix.register_with_unit(
            "clock_skew",
            "the coordinator's clock minus the API server's, as far as the iat and exp of the last agent token a TokenReview admitted tell: negative when behind its iat, positive when past its exp, else 0",
            Unit::Seconds,
            self.clock_skew.clone(),
        );
        prefix.register(
            "tls_handshakes",
            "TLS handshakes on the agents' port; kind=full: the certificate sent, resumed: from a session ticket of an earlier check-in, failed: refused, timed out or broken off",
            self.tls_handshakes.clone(),
        );
        prefix.register("nodes", "Worker nodes by Kata state", self.nodes.clone());
        prefix.register(
            "reports_received",
            "node-agent health reports accepted; kind=report: the node's first (a stream's first, \
             or an agent process's first check-in), or one whose probe statuses, reasons or \
             verdicts changed; kind=heartbeat: the same state as the node's previous report (the \
             agent's periodic heartbeat, or a re-probe that found nothing new)",
            self.reports_received.clone(),
        );
        prefix.register(
            "token_reviews",
            "TokenReviews of node-agent tokens; outcome=authenticated: admitted, rejected: \
             refused token, error: the review failed (API error or timeout)",
            self.token_reviews.clone(),
        );
        prefix.register(
            "tokens_not_reviewed",
            "node-agent tokens settled without a TokenReview; outcome=refused: not a live \
             token for the agents' audience (shape, audience, expiry, issuer's signature), \
             cached: admitted by an earlier review of the same token, queue_full: too many \
             reviews waiting",
            self.tokens_not_reviewed.clone(),
        );
        prefix.register(
            "health_refused",
            "connections and calls the agents' port turned away; reason=connection_limit or \
             peer_connection_limit: closed at accept (all connections, or one address's, at \
             their cap), idle: no call for the idle timeout, max_age: still open at the \
             maximum age plus grace, unauthenticated or permission_denied: the bearer refused \
             before the body was read, unavailable: the token could not be checked now, \
             deadline: not answered within the request deadline",
            self.health_refused.clone(),
        );
        prefix.register_with_unit(
            "token_review_duration",
            "Time of the TokenReview API request for a node-agent's token",
            Unit::Seconds,
            self.token_review_duration.0.histogram.clone(),
        );
    }
}

/// The endpoints, where the integration tests and the benches look for them.
pub use crate::endpoints::{Readiness, serve, serve_admin};

#[cfg(test)]
mod tests;
