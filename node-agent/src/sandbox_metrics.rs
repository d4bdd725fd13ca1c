//! Kata's own per-sandbox metrics, relayed on the agent's `/metrics`: what
//! `kata-monitor` serves, without running `kata-monitor`.
//!
//! Every Kata sandbox has a directory named after its id under
//! [`SANDBOX_DIRS`] (`/run/vc/sbs/<id>` for the Go runtime, `/run/kata/<id>`
//! for runtime-rs), and its shim serves plain HTTP on the unix socket
//! [`MONITOR_SOCKET`] in that directory; `GET /metrics` there answers the
//! shim's, the hypervisor's, virtiofsd's and (through the shim) the guest
//! agent's metrics in the classic text format. (Upstream:
//! `src/runtime/pkg/containerd-shim-v2/shim_management.go`, `SocketPath`,
//! `ClientSocketAddress`, `serveMetrics`; `src/runtime/pkg/kata-monitor/`.)
//!
//! For each scrape of the agent, [`SandboxScraper::scrape`] lists the
//! sandboxes, asks each shim with a short timeout under one overall
//! deadline, parses each page leniently but safely ([`parse_page`]: a
//! malformed line is dropped and counted, never trusted), adds the label
//! [`SANDBOX_LABEL`] to every sample, and merges the pages so each family's
//! `# HELP` and `# TYPE` appear once ([`Relay`]). Like `kata-monitor`, the
//! shim's Go runtime families `go_*` and `process_*` are renamed
//! `kata_shim_go_*` and `kata_shim_process_*`.
//!
//! Scraping at request time rather than once per probe cycle: the figures
//! are as fresh as the scrape, nothing is held in memory between scrapes,
//! and the shims are not asked at all while nobody scrapes (the agent probes
//! every 10 s; Prometheus scrapes it every 30 s).
//!
//! Every input is bounded: the sandboxes listed, the bytes read from each
//! socket, the text kept across sandboxes, and the time.
//!
//! What is relayed is bounded too, because part of each page comes from
//! the guest, which its workload controls: only Kata's own families pass
//! ([`KATA_PREFIXES`]), never the agent's own namespace; a series with more
//! labels than [`MAX_LABELS`] or a label name or value longer than
//! [`MAX_LABEL_NAME_LEN`] or [`MAX_LABEL_VALUE_LEN`] is dropped whole (cut
//! short, two series could collide); and a sandbox relays at most
//! [`MAX_SERIES_PER_SANDBOX`] series. What is dropped is counted by
//! [`DropReason`]. The PodMonitor's limits
//! (`deploy/monitoring/pod-monitor.yaml`) are sized from these.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::probe::HostRoot;

/// Where Kata keeps one directory per sandbox: the Go runtime's, then
/// runtime-rs's (`GetSandboxesStoragePath`, `GetSandboxesStoragePathRust`).
pub const SANDBOX_DIRS: [&str; 2] = ["/run/vc/sbs", "/run/kata"];

/// The shim's management socket in a sandbox directory.
pub const MONITOR_SOCKET: &str = "shim-monitor.sock";

/// The label added to every relayed sample, as `kata-monitor` names it.
pub const SANDBOX_LABEL: &str = "sandbox_id";

/// Relayed families may not use the agent's own namespace: a shim must not
/// be able to forge or collide with the agent's metrics.
const OWN_PREFIX: &str = "kata_node_agent_";

/// The namespaces of the families Kata documents in kata-containers
/// `docs/design/kata-2-0-metrics.md` (sections "Kata agent metrics",
/// "Firecracker metrics", "Kata guest OS metrics", "Hypervisor metrics",
/// "Kata monitor metrics", "Kata containerd shim v2 metrics"; the same
/// prefixes in `docs/design/data/metrics.yaml`), and `kata_virtiofsd_`,
/// which the Go shim serves beside the hypervisor's
/// (`src/runtime/virtcontainers/sandbox_metrics.go`, `namespaceVirtiofsd`)
/// though that document does not list it. Any other family on a shim's
/// page is not Kata's to relay.
pub const KATA_PREFIXES: [&str; 7] = [
    "kata_agent_",
    "kata_firecracker_",
    "kata_guest_",
    "kata_hypervisor_",
    "kata_monitor_",
    "kata_shim_",
    "kata_virtiofsd_",
];

/// Longest relayed metric name (Prometheus checks it as the value of
/// `__name__`). Kata's longest is 60 bytes
/// (`kata_shim_agent_rpc_durations_histogram_milliseconds_bucket`).
pub const MAX_NAME_LEN: usize = 128;

/// Labels a relayed series may carry besides `sandbox_id`. Kata's series
/// carry at most 3 (`mount`, `device`, `item` of `kata_guest_filesystem_*`;
/// a histogram bucket has `action` and `le`; the fixture page of a shim has
/// at most 2): twice that leaves room for a new Kata release.
pub const MAX_LABELS: usize = 6;

/// Longest label name. Kata's are at most 9 bytes (`interface`,
/// `quantile`).
pub const MAX_LABEL_NAME_LEN: usize = 32;

/// Longest label value, as written (escaped, so never shorter than the
/// value Prometheus stores). Kata's longest are the guest's mount points
/// in `kata_guest_filesystem_*` (a container's volume under
/// `/run/kata-containers/shared/containers/`, about 190 bytes at most);
/// RPC names are under 32 bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 256;

/// Series relayed from one sandbox; the rest of its page is dropped. From
/// the label values `kata-2-0-metrics.md` lists, a shim's page holds about
/// 1,100 series for a guest of 2 vCPUs, 2 disks and 2 interfaces (the
/// document measures 144 KB a sandbox), most of them the two RPC
/// histograms (585); about 1,900 for 32 vCPUs, 16 disks, 4 interfaces and
/// 16 filesystems, since `kata_guest_cpu_time` grows by 10 a vCPU and
/// `kata_guest_diskstat` by 17 a disk. Twice the large guest's.
pub const MAX_SERIES_PER_SANDBOX: usize = 4_000;

/// The docstring of a relayed family; Kata's longest is 91 bytes.
const MAX_HELP_LEN: usize = 1_024;

/// Why a well-formed series of a shim's page is not relayed: the values of
/// the label `reason` of `kata_node_agent_sandbox_series_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not one of Kata's families ([`KATA_PREFIXES`]), the agent's own
    /// namespace, or a name over [`MAX_NAME_LEN`].
    Family,
    /// Over [`MAX_LABELS`] labels, or a label name or value over its length.
    Labels,
    /// Past the sandbox's [`MAX_SERIES_PER_SANDBOX`].
    SeriesCap,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::Family,
        DropReason::Labels,
        DropReason::SeriesCap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Family => "family",
            DropReason::Labels => "labels",
            DropReason::SeriesCap => "series_cap",
        }
    }
}

/// Series dropped, by [`DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesDrops {
    pub family: u64,
    pub labels: u64,
    pub series_cap: u64,
}

impl SeriesDrops {
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Family => self.family,
            DropReason::Labels => self.labels,
            DropReason::SeriesCap => self.series_cap,
        }
    }

    fn count(&mut self, reason: DropReason) {
        let slot = match reason {
            DropReason::Family => &mut self.family,
            DropReason::Labels => &mut self.labels,
            DropReason::SeriesCap => &mut self.series_cap,
        };
        *slot += 1;
    }

    fn add(&mut self, other: SeriesDrops) {
        self.family += other.family;
        self.labels += other.labels;
        self.series_cap += other.series_cap;
    }
}

/// Whether a family (or a sample's name) is Kata's to relay.
pub fn is_kata_family(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && !name.starts_with(OWN_PREFIX)
        && KATA_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The most series one scrape can relay under `limits`: the per-sandbox cap
/// times the sandboxes, or what the text budget holds of the shortest line
/// a sandbox with a 64-digit id (CRI-O's and containerd's) can have,
/// `kata_shim_{sandbox_id="<id>"} 0.0` and its newline, whichever is less.
/// The PodMonitor's `sampleLimit` must stay above it, or hostile guests
/// could fail the scrape of their node's agent.
pub fn max_relayed_series(limits: &ScrapeLimits) -> usize {
    const SHORTEST_LINE: usize = "kata_shim_{sandbox_id=\"\"} 0.0\n".len() + 64;
    (limits.max_sandboxes.saturating_mul(MAX_SERIES_PER_SANDBOX))
        .min(limits.max_total_bytes / SHORTEST_LINE)
}

/// The shim's Go runtime families, renamed as `kata-monitor` renames them.
const RENAMED_PREFIXES: [&str; 2] = ["go_", "process_"];
const RENAME_TO: &str = "kata_shim_";

/// Bounds of one scrape of the sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeLimits {
    /// Sandboxes listed; more are ignored (a node runs at most a few
    /// hundred pods).
    pub max_sandboxes: usize,
    /// One shim's connect, request and answer (`kata-monitor` allows 3 s).
    pub per_sandbox: Duration,
    /// All the sandboxes together, under Prometheus's default 10 s scrape
    /// timeout.
    pub deadline: Duration,
    /// Bytes of one shim's answer.
    pub max_page_bytes: usize,
    /// Text relayed for all the sandboxes together; a sandbox that does not
    /// fit is left out and counted as a scrape error. 0 relays nothing
    /// (the sandboxes are still counted).
    pub max_total_bytes: usize,
    /// Shims asked at once.
    pub concurrency: usize,
}

impl Default for ScrapeLimits {
    fn default() -> Self {
        Self {
            max_sandboxes: 512,
            per_sandbox: Duration::from_secs(3),
            deadline: Duration::from_secs(5),
            max_page_bytes: 1 << 20,
            max_total_bytes: 4 << 20,
            concurrency: 4,
        }
    }
}

/// What one scrape of the sandboxes found.
#[derive(Debug, Default)]
pub struct SandboxScrape {
    /// Sandbox directories found (up to [`ScrapeLimits::max_sandboxes`]).
    pub sandboxes: usize,
    /// Sandboxes whose metrics could not be relayed.
    pub errors: u64,
    /// Lines of the shims' answers dropped as malformed or conflicting.
    pub dropped_lines: u64,
    /// Well-formed series of the relayed sandboxes left out, by reason.
    pub dropped_series: SeriesDrops,
    /// The merged families, ready to append to a classic text page.
    pub text: String,
}

/// Scrapes every sandbox's shim under a host root.
#[derive(Debug, Clone)]
pub struct SandboxScraper {
    root: HostRoot,
    limits: ScrapeLimits,
}

impl SandboxScraper {
    pub fn new(root: HostRoot, limits: ScrapeLimits) -> Self {
        Self { root, limits }
    }

    /// Lists the sandboxes and relays their metrics, within the limits.
    pub async fn scrape(&self) -> SandboxScrape {
        let limits = self.limits;
        let deadline = Instant::now() + limits.deadline;
        let root = self.root.clone();
        let listing = tokio::time::timeout_at(
            deadline,
            tokio::task::spawn_blocking(move || list_sandboxes(&root, limits.max_sandboxes)),
        )
        .await;
        let sandboxes = match listing {
            Ok(Ok(sandboxes)) => sandboxes,
            Ok(Err(error)) => {
                warn!(%error, "listing the Kata sandboxes stopped unexpectedly");
                return SandboxScrape::default();
            }
            Err(_) => {
                warn!("listing the Kata sandboxes timed out");
                return SandboxScrape::default();
            }
        };
        let mut scrape = SandboxScrape {
            sandboxes: sandboxes.len(),
            ..SandboxScrape::default()
        };
        if limits.max_total_bytes == 0 || sandboxes.is_empty() {
            return scrape;
        }
        let mut relay = Relay::new(limits.max_total_bytes);
        let mut pending = sandboxes.len();
        let mut pages = futures::stream::iter(sandboxes)
            .map(|sandbox| async move {
                let page = scrape_one(&sandbox, &limits).await;
                (sandbox.id, page)
            })
            .buffer_unordered(limits.concurrency.max(1));
        loop {
            let (id, page) = match tokio::time::timeout_at(deadline, pages.next()).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        unanswered = pending,
                        "Kata sandbox metrics: the scrape deadline passed"
                    );
                    break;
                }
            };
            pending -= 1;
            match page.and_then(|page| relay.add(&id, page)) {
                Ok(()) => {}
                Err(error) => {
                    debug!(sandbox_id = %id, %error, "Kata sandbox metrics not relayed");
                    scrape.errors += 1;
                }
            }
        }
        scrape.errors += pending as u64;
        scrape.dropped_lines = relay.dropped_lines;
        scrape.dropped_series = relay.dropped_series;
        scrape.text = relay.render();
        scrape
    }
}

/// Why one sandbox's metrics are not relayed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("{path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is a {kind}, not a socket")]
    NotSocket { path: String, kind: &'static str },
    #[error("the shim's HTTP exchange failed: {0}")]
    Http(String),
    #[error("the shim answered HTTP {0}")]
    Status(u16),
    #[error("the shim's answer is over {0} bytes")]
    TooLarge(usize),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("the relayed text would pass its budget of {0} bytes")]
    OverBudget(usize),
    #[error("parsing stopped unexpectedly")]
    Crashed,
}

/// A sandbox directory with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir {
    pub id: String,
    /// The directory, resolved inside the host root.
    pub dir: PathBuf,
}

/// Whether a directory name can be a sandbox id: CRI-O's and containerd's
/// are 64 hex digits; anything of container-id characters is accepted, and
/// nothing that would need escaping in a label value or could climb a path.
pub fn is_sandbox_id(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

/// The sandbox directories under the host root, sorted by id, at most
/// `limit`; an id present in both stores is listed once, from the first
/// (as `ClientSocketAddress` prefers the Go runtime's socket).
pub fn list_sandboxes(root: &HostRoot, limit: usize) -> Vec<SandboxDir> {
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    // Entries looked at, valid or not: bounds the work on a directory
    // stuffed with junk.
    let mut budget = limit.saturating_mul(4).max(64);
    for store in SANDBOX_DIRS {
        let Ok(dir) = root.resolve(store) else {
            continue;
        };
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            if budget == 0 || found.len() >= limit {
                break;
            }
            budget -= 1;
            let Ok(entry) = entry else { continue };
            // The entry itself, not what a symlink points to (as
            // kata-monitor's `entry.IsDir()`).
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let Ok(id) = entry.file_name().into_string() else {
                continue;
            };
            if is_sandbox_id(&id) && !found.contains_key(&id) {
                found.insert(id, entry.path());
            }
        }
    }
    if found.len() >= limit {
        warn!(
            limit,
            "more Kata sandboxes than the agent relays; the rest are left out"
        );
    }
    found
        .into_iter()
        .map(|(id, dir)| SandboxDir { id, dir })
        .collect()
}

/// One sandbox's page, fetched and parsed.
async fn scrape_one(sandbox: &SandboxDir, limits: &ScrapeLimits) -> Result<Page, ScrapeError> {
    let body = tokio::time::timeout(
        limits.per_sandbox,
        fetch_metrics(sandbox, limits.max_page_bytes),
    )
    .await
    .map_err(|_| ScrapeError::TimedOut(limits.per_sandbox))??;
    let id = sandbox.id.clone();
    let max_output = limits.max_total_bytes;
    // Parsing is pure CPU work on up to a MiB; off the async thread, which
    // also carries the health stream.
    tokio::task::spawn_blocking(move || parse_page(&id, &body, max_output))
        .await
        .map_err(|_| ScrapeError::Crashed)?
}

/// `GET /metrics` on the sandbox's monitor socket: the body, at most `limit`
/// bytes.
async fn fetch_metrics(sandbox: &SandboxDir, limit: usize) -> Result<Bytes, ScrapeError> {
    let socket_path = sandbox.dir.join(MONITOR_SOCKET);
    let shown = socket_path.display().to_string();
    let socket_error = |source| ScrapeError::Socket {
        path: shown.clone(),
        source,
    };
    // The directory is opened and the socket reached through
    // /proc/self/fd: a socket path is limited to 108 bytes, which a host
    // root plus a 64-digit id can pass, and the socket itself must not be a
    // symlink (that would be followed outside the host root).
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(&sandbox.dir)
        .map_err(socket_error)?;
    let short_path = format!("/proc/self/fd/{}/{MONITOR_SOCKET}", dir.as_raw_fd());
    let meta = fs::symlink_metadata(&short_path).map_err(socket_error)?;
    if !meta.file_type().is_socket() {
        return Err(ScrapeError::NotSocket {
            path: shown,
            kind: crate::probe::host::file_kind(&meta),
        });
    }
    let stream = UnixStream::connect(&short_path)
        .await
        .map_err(socket_error)?;
    drop(dir);
    http_get_metrics(stream, limit).await
}

/// One HTTP/1.1 `GET /metrics` on an open stream.
async fn http_get_metrics(stream: UnixStream, limit: usize) -> Result<Bytes, ScrapeError> {
    let http = |error: hyper::Error| ScrapeError::Http(error.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let request = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, "shim")
        .header(hyper::header::ACCEPT, "text/plain")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|error| ScrapeError::Http(error.to_string()))?;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        if status != hyper::StatusCode::OK {
            return Err(ScrapeError::Status(status.as_u16()));
        }
        Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .map_err(|error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    ScrapeError::TooLarge(limit)
                } else {
                    ScrapeError::Http(error.to_string())
                }
            })
    };
    tokio::pin!(exchange, connection);
    tokio::select! {
        biased;
        result = &mut exchange => result,
        ended = &mut connection => match ended {
            // The shim closed after answering: what it sent is still there.
            Ok(()) => exchange.await,
            Err(error) => Err(http(error)),
        },
    }
}

// ---- parsing: pure --------------------------------------------------------

/// A family's type in the text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" => Kind::Untyped,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }
}

/// One family of one shim's page, its samples already rendered with the
/// sandbox label.
#[derive(Debug, Clone, PartialEq)]
pub struct PageFamily {
    pub name: String,
    pub kind: Kind,
    /// The docstring as written (escapes checked, kept escaped).
    pub help: Option<String>,
    /// Whether a `# TYPE` line set `kind`.
    typed: bool,
    pub samples: usize,
    pub lines: String,
}

/// One shim's page, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    pub families: Vec<PageFamily>,
    pub dropped_lines: u64,
    pub dropped_series: SeriesDrops,
}

impl Page {
    /// What the page adds to the relayed text, its docstrings included.
    fn text_len(&self) -> usize {
        self.families
            .iter()
            .map(|family| family.lines.len() + family.help.as_ref().map_or(0, String::len))
            .sum()
    }
}

/// Parses a classic text-format page (Prometheus text format 0.0.4),
/// adding `sandbox_id="<sandbox_id>"` to every sample. Lines that are not
/// valid — bad names, escapes, numbers or labels, a second `# TYPE` or
/// `# HELP`, a `# TYPE` after its family's samples, histogram buckets
/// without `le`, a repeated series, a `# HELP` over [`MAX_HELP_LEN`] — are
/// dropped and counted; well-formed series that are not Kata's or exceed the
/// label or series bounds are dropped and counted by [`DropReason`]; the
/// `# HELP` and `# TYPE` of families not Kata's are ignored. Fails when the
/// rendered samples pass `max_output` bytes (the sandbox id on every sample
/// can make the output much longer than the input).
pub fn parse_page(sandbox_id: &str, text: &[u8], max_output: usize) -> Result<Page, ScrapeError> {
    let mut parser = PageParser {
        sandbox_id,
        page: Page::default(),
        index: HashMap::new(),
        series: HashSet::new(),
        kept: 0,
        output: 0,
    };
    for raw in text.split(|&byte| byte == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let accepted = match std::str::from_utf8(raw) {
            Ok(line) => parser.line(line),
            Err(_) => false,
        };
        if !accepted {
            parser.page.dropped_lines += 1;
        }
        if parser.output > max_output {
            return Err(ScrapeError::OverBudget(max_output));
        }
    }
    Ok(parser.page)
}

struct PageParser<'a> {
    sandbox_id: &'a str,
    page: Page,
    /// Family name → index in `page.families`.
    index: HashMap<String, usize>,
    /// Series seen, by name and sorted labels: a repeated one is dropped.
    series: HashSet<String>,
    /// Series kept, up to [`MAX_SERIES_PER_SANDBOX`].
    kept: usize,
    output: usize,
}

impl PageParser<'_> {
    /// Takes one line; false when it is dropped as malformed.
    fn line(&mut self, line: &str) -> bool {
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.trim_end_matches([' ', '\t']).is_empty() {
            return true;
        }
        match trimmed.strip_prefix('#') {
            Some(comment) => self.comment(comment),
            None => self.sample(trimmed),
        }
    }

    fn comment(&mut self, comment: &str) -> bool {
        let comment = comment.trim_start_matches([' ', '\t']);
        let (keyword, rest) = split_token(comment);
        match keyword {
            "HELP" => self.help(rest),
            "TYPE" => self.type_line(rest),
            // Any other comment is allowed and means nothing.
            _ => true,
        }
    }

    fn help(&mut self, rest: &str) -> bool {
        let (name, docstring) = split_token(rest);
        if !is_metric_name(name) || !valid_escapes(docstring, false) {
            return false;
        }
        let name = renamed(name);
        if !is_kata_family(&name) {
            return true;
        }
        if docstring.len() > MAX_HELP_LEN {
            return false;
        }
        let index = self.family(&name);
        let family = &mut self.page.families[index];
        if family.help.is_some() {
            return false;
        }
        family.help = Some(docstring.to_owned());
        true
    }

    fn type_line(&mut self, rest: &str) -> bool {
        let (name, rest) = split_token(rest);
        let (word, rest) = split_token(rest);
        let Some(kind) = Kind::parse(word) else {
            return false;
        };
        if !is_metric_name(name) || !rest.is_empty() {
            return false;
        }
        let name = renamed(name);
        if !is_kata_family(&name) {
            return true;
        }
        let index = self.family(&name);
        let family = &mut self.page.families[index];
        if family.typed || family.samples > 0 {
            return false;
        }
        family.kind = kind;
        family.typed = true;
        true
    }

    /// The index of the family `name`, created untyped when new.
    fn family(&mut self, name: &str) -> usize {
        if let Some(&index) = self.index.get(name) {
            return index;
        }
        let index = self.page.families.len();
        self.page.families.push(PageFamily {
            name: name.to_owned(),
            kind: Kind::Untyped,
            help: None,
            typed: false,
            samples: 0,
            lines: String::new(),
        });
        self.index.insert(name.to_owned(), index);
        index
    }

    /// Which family a sample belongs to, the way the text format's parser
    /// decides: its own name first, then a histogram's or summary's
    /// `_bucket`, `_sum`, `_count`; otherwise it starts an untyped family.
    fn family_of(&mut self, sample: &Sample<'_>, name: &str) -> Option<usize> {
        let label = |wanted: &str| sample.labels.iter().find(|(key, _)| *key == wanted);
        let number =
            |wanted: &str| label(wanted).is_some_and(|(_, value)| parse_value(value).is_some());
        if let Some(&index) = self.index.get(name) {
            return match self.page.families[index].kind {
                Kind::Histogram => None,
                Kind::Summary if !number("quantile") => None,
                _ => Some(index),
            };
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            let Some(base) = name.strip_suffix(suffix) else {
                continue;
            };
            let Some(&index) = self.index.get(base) else {
                continue;
            };
            return match (self.page.families[index].kind, suffix) {
                (Kind::Histogram, "_bucket") if number("le") => Some(index),
                (Kind::Histogram, "_bucket") => None,
                (Kind::Histogram | Kind::Summary, "_sum" | "_count") => Some(index),
                _ => break,
            };
        }
        Some(self.family(name))
    }

    fn sample(&mut self, line: &str) -> bool {
        let Some(sample) = Sample::parse(line) else {
            return false;
        };
        let name = renamed(sample.name);
        // Before `family_of`, which would start a family for it.
        if !is_kata_family(&name) {
            self.page.dropped_series.count(DropReason::Family);
            return true;
        }
        let mut labels: Vec<(&str, &str)> = sample
            .labels
            .iter()
            .copied()
            // Ours replaces any the shim sent.
            .filter(|(key, _)| *key != SANDBOX_LABEL)
            .collect();
        let oversized = labels.len() > MAX_LABELS
            || labels.iter().any(|(label, value)| {
                label.len() > MAX_LABEL_NAME_LEN || value.len() > MAX_LABEL_VALUE_LEN
            });
        if oversized {
            self.page.dropped_series.count(DropReason::Labels);
            return true;
        }
        // Past the cap nothing more is looked at, nor a family started.
        // Whole series in page order: a histogram cut here loses its last
        // buckets, which Prometheus reads as a histogram without them.
        if self.kept >= MAX_SERIES_PER_SANDBOX {
            self.page.dropped_series.count(DropReason::SeriesCap);
            return true;
        }
        let Some(index) = self.family_of(&sample, &name) else {
            return false;
        };
        let mut key = name.clone();
        labels.sort_unstable();
        for (label, value) in &labels {
            let _ = write!(key, "\u{0}{label}={value}");
        }
        if !self.series.insert(key) {
            return false;
        }
        self.kept += 1;
        let family = &mut self.page.families[index];
        let before = family.lines.len();
        let out = &mut family.lines;
        out.push_str(&name);
        out.push('{');
        for (label, value) in sample
            .labels
            .iter()
            .filter(|(key, _)| *key != SANDBOX_LABEL)
        {
            let _ = write!(out, "{label}=\"{value}\",");
        }
        let _ = write!(
            out,
            "{SANDBOX_LABEL}=\"{}\"}} {}",
            self.sandbox_id, sample.value
        );
        if let Some(timestamp) = sample.timestamp {
            let _ = write!(out, " {timestamp}");
        }
        out.push('\n');
        family.samples += 1;
        self.output += family.lines.len() - before;
        true
    }
}

/// A sample line, its label values still escaped (checked).
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    /// Canonical: what a Go `strconv.ParseFloat` reads back.
    value: String,
    timestamp: Option<i64>,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(line.len());
        let (name, mut rest) = line.split_at(name_end);
        if !is_metric_name(name) {
            return None;
        }
        let mut labels = Vec::new();
        if let Some(inner) = rest.trim_start_matches([' ', '\t']).strip_prefix('{') {
            rest = parse_labels(inner, &mut labels)?;
        }
        // The value must be separated from what precedes it.
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let (value, rest) = split_token(rest.trim_start_matches([' ', '\t']));
        let (timestamp, rest) = split_token(rest);
        if !rest.is_empty() {
            return None;
        }
        let value = parse_value(value)?;
        let timestamp = match timestamp {
            "" => None,
            text => Some(text.parse::<i64>().ok()?),
        };
        Some(Sample {
            name,
            labels,
            value: format_value(value),
            timestamp,
        })
    }
}

/// Parses `name="value",...}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut rest: &'a str, labels: &mut Vec<(&'a str, &'a str)>) -> Option<&'a str> {
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some(after);
        }
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let (label, after) = rest.split_at(name_end);
        if !is_label_name(label) || labels.iter().any(|(seen, _)| *seen == label) {
            return None;
        }
        let after = after.trim_start_matches([' ', '\t']).strip_prefix('=')?;
        let after = after.trim_start_matches([' ', '\t']).strip_prefix('"')?;
        let value_end = closing_quote(after)?;
        let value = &after[..value_end];
        labels.push((label, value));
        rest = after[value_end + 1..].trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return None;
        }
    }
}

/// The byte index of the `"` closing a label value, the value's escapes
/// (`\\`, `\"`, `\n`) checked.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (index, byte) in text.bytes().enumerate() {
        match (escaped, byte) {
            (true, b'\\' | b'"' | b'n') => escaped = false,
            (true, _) => return None,
            (false, b'\\') => escaped = true,
            (false, b'"') => return Some(index),
            (false, _) => {}
        }
    }
    None
}

/// Whether a docstring's escapes are the ones the format allows (`\\`,
/// `\n`; and `\"` where `quote_allowed`).
fn valid_escapes(text: &str, quote_allowed: bool) -> bool {
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'\\' {
            match bytes.next() {
                Some(b'\\' | b'n') => {}
                Some(b'"') if quote_allowed => {}
                _ => return false,
            }
        }
    }
    true
}

/// The first blank-separated token and the rest, blanks trimmed.
fn split_token(text: &str) -> (&str, &str) {
    let text = text.trim_start_matches([' ', '\t']);
    let end = text.find([' ', '\t']).unwrap_or(text.len());
    let (token, rest) = text.split_at(end);
    (token, rest.trim_matches([' ', '\t']))
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_' || first == b':')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':')
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name != "__name__"
        && bytes
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

/// A sample value or `le`/`quantile`: a decimal number, `NaN`, or `±Inf`.
/// Stricter than Rust's own float syntax, so whatever passes also reads
/// back in Prometheus's parser.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => return Some(f64::NAN),
        "+Inf" | "Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    if text.is_empty()
        || !text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || matches!(byte, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    text.parse::<f64>().ok()
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        // Rust's shortest round-trip form, in exponent notation when long.
        format!("{value:?}")
    }
}

fn renamed(name: &str) -> String {
    if RENAMED_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
    {
        format!("{RENAME_TO}{name}")
    } else {
        name.to_owned()
    }
}

// ---- merging: pure ----------------------------------------------------------

/// The families of many sandboxes, merged by name.
#[derive(Debug)]
pub struct Relay {
    families: BTreeMap<String, RelayFamily>,
    bytes: usize,
    max_bytes: usize,
    pub dropped_lines: u64,
    pub dropped_series: SeriesDrops,
}

#[derive(Debug)]
struct RelayFamily {
    kind: Kind,
    help: Option<String>,
    /// (sandbox id, its rendered samples).
    blocks: Vec<(String, String)>,
}

impl Relay {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            families: BTreeMap::new(),
            bytes: 0,
            max_bytes,
            dropped_lines: 0,
            dropped_series: SeriesDrops::default(),
        }
    }

    /// Adds one sandbox's page, whole or not at all (over the budget). A
    /// family of another type than the same family from an earlier sandbox
    /// (another Kata version) is dropped. ([`parse_page`] left out every
    /// family not Kata's.)
    pub fn add(&mut self, sandbox_id: &str, page: Page) -> Result<(), ScrapeError> {
        let size = page.text_len();
        if self.bytes.saturating_add(size) > self.max_bytes {
            return Err(ScrapeError::OverBudget(self.max_bytes));
        }
        self.bytes += size;
        self.dropped_lines += page.dropped_lines;
        self.dropped_series.add(page.dropped_series);
        for family in page.families {
            if family.samples == 0 {
                continue;
            }
            let merged = self
                .families
                .entry(family.name)
                .or_insert_with(|| RelayFamily {
                    kind: family.kind,
                    help: None,
                    blocks: Vec::new(),
                });
            if merged.kind != family.kind {
                self.dropped_lines += family.samples as u64;
                continue;
            }
            if merged.help.is_none() {
                merged.help = family.help;
            }
            merged.blocks.push((sandbox_id.to_owned(), family.lines));
        }
        Ok(())
    }

    /// The merged families in the classic text format, by name, each with
    /// its `# HELP` and `# TYPE` once, its samples by sandbox id.
    pub fn render(self) -> String {
        let headers: usize = self
            .families
            .iter()
            .map(|(name, family)| 2 * name.len() + 32 + family.help.as_ref().map_or(0, String::len))
            .sum();
        let mut out = String::with_capacity(self.bytes + headers);
        for (name, mut family) in self.families {
            if let Some(help) = &family.help {
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            family.blocks.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, lines) in family.blocks {
                out.push_str(&lines);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ID: &str = "4f2a0c9d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f";

    fn parse(text: &str) -> Page {
        parse_page(ID, text.as_bytes(), usize::MAX).unwrap()
    }

    fn lines(page: &Page) -> String {
        page.families
            .iter()
            .map(|family| family.lines.as_str())
            .collect()
    }

    #[test]
    fn samples_get_the_sandbox_label_and_keep_theirs() {
        let page = parse(
            "# HELP kata_hypervisor_netdev Net devices statistics.\n\
             # TYPE kata_hypervisor_netdev gauge\n\
             kata_hypervisor_netdev{interface=\"eth0\",item=\"recv_bytes\"} 1234\n\
             kata_shim_fds 12\n",
        );
        assert_eq!(page.dropped_lines, 0);
        assert_eq!(page.families.len(), 2);
        let netdev = &page.families[0];
        assert_eq!(netdev.kind, Kind::Gauge);
        assert_eq!(netdev.help.as_deref(), Some("Net devices statistics."));
        assert_eq!(
            netdev.lines,
            format!(
                "kata_hypervisor_netdev{{interface=\"eth0\",item=\"recv_bytes\",sandbox_id=\"{ID}\"}} 1234.0\n"
            )
        );
        assert_eq!(page.families[1].kind, Kind::Untyped, "no TYPE line");
    }

    #[test]
    fn label_values_keep_their_escapes_and_bad_escapes_are_dropped() {
        let page = parse(
            "# HELP kata_guest_m A \\\\ backslash\\nand a newline.\n\
             kata_guest_m{path=\"C:\\\\dir\",quote=\"say \\\"hi\\\"\",nl=\"a\\nb\",brace=\"}{,=\"} 1\n\
             kata_guest_m{tab=\"a\\tb\"} 2\n\
             kata_guest_m{open=\"never closed} 3\n\
             # HELP kata_guest_n Bad \\t escape.\n",
        );
        assert_eq!(page.dropped_lines, 3, "{page:#?}");
        assert_eq!(
            lines(&page),
            format!(
                "kata_guest_m{{path=\"C:\\\\dir\",quote=\"say \\\"hi\\\"\",nl=\"a\\nb\",brace=\"}}{{,=\",sandbox_id=\"{ID}\"}} 1.0\n"
            )
        );
        assert_eq!(
            page.families[0].help.as_deref(),
            Some("A \\\\ backslash\\nand a newline.")
        );
    }

    #[test]
    fn malformed_lines_are_dropped_and_counted() {
        let bad = [
            "9starts_with_a_digit 1",
            "kata_guest_no_value",
            "kata_guest_no_value{a=\"b\"}",
            "kata_guest_m{a=\"b\"}1",
            "kata_guest_m 1 2 3",
            "kata_guest_m one",
            "kata_guest_m 0x1p3",
            "kata_guest_m 1 notatime",
            "kata_guest_m{a=\"b\" c=\"d\"} 1",
            "kata_guest_m{a=\"b\",a=\"c\"} 1",
            "kata_guest_m{__name__=\"x\"} 1",
            "kata_guest_m{1a=\"b\"} 1",
            "kata_guest_m{a=b} 1",
            "# TYPE kata_guest_m nonsense",
            "# TYPE kata_guest_m gauge extra",
            "# HELP 1bad text",
        ];
        let mut text = bad.join("\n");
        text.push_str("\n\u{0}\u{1}binary\n\n   \n# just a comment\nkata_guest_good 1\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"bad\xff utf8 1\n");
        let page = parse_page(ID, &bytes, usize::MAX).unwrap();
        assert_eq!(page.dropped_lines, bad.len() as u64 + 2, "{page:#?}");
        assert_eq!(
            page.dropped_series,
            SeriesDrops::default(),
            "malformed, not foreign"
        );
        assert_eq!(
            lines(&page),
            format!("kata_guest_good{{sandbox_id=\"{ID}\"}} 1.0\n")
        );
    }

    #[test]
    fn values_and_timestamps_come_out_in_a_form_prometheus_reads() {
        let page = parse(
            "kata_guest_a NaN\nkata_guest_b +Inf\nkata_guest_c -Inf\nkata_guest_d 1e400\n\
             kata_guest_e 0.25 1700000000000\nkata_guest_f 3\nkata_guest_g 1.5e-7\n",
        );
        let text = lines(&page);
        let values: Vec<&str> = text
            .lines()
            .map(|line| line.split_once("} ").unwrap().1)
            .collect();
        assert_eq!(
            values,
            [
                "NaN",
                "+Inf",
                "-Inf",
                "+Inf",
                "0.25 1700000000000",
                "3.0",
                "1.5e-7"
            ]
        );
    }

    #[test]
    fn a_second_type_or_help_or_a_type_after_samples_is_dropped() {
        let page = parse(
            "# HELP kata_guest_a First.\n# HELP kata_guest_a Second.\n\
             # TYPE kata_guest_a gauge\n# TYPE kata_guest_a counter\nkata_guest_a 1\n\
             kata_guest_b 2\n# TYPE kata_guest_b gauge\n",
        );
        assert_eq!(page.dropped_lines, 3);
        assert_eq!(page.families[0].help.as_deref(), Some("First."));
        assert_eq!(page.families[0].kind, Kind::Gauge);
        assert_eq!(page.families[1].kind, Kind::Untyped);
    }

    #[test]
    fn histograms_and_summaries_keep_their_series_together() {
        let page = parse(
            "# HELP kata_shim_rpc_durations_histogram_milliseconds RPC latency distributions.\n\
             # TYPE kata_shim_rpc_durations_histogram_milliseconds histogram\n\
             kata_shim_rpc_durations_histogram_milliseconds_bucket{action=\"create\",le=\"1\"} 0\n\
             kata_shim_rpc_durations_histogram_milliseconds_bucket{action=\"create\",le=\"+Inf\"} 1\n\
             kata_shim_rpc_durations_histogram_milliseconds_bucket{action=\"create\"} 1\n\
             kata_shim_rpc_durations_histogram_milliseconds_sum{action=\"create\"} 312\n\
             kata_shim_rpc_durations_histogram_milliseconds_count{action=\"create\"} 1\n\
             kata_shim_rpc_durations_histogram_milliseconds{action=\"create\"} 1\n\
             # TYPE go_gc_duration_seconds summary\n\
             go_gc_duration_seconds{quantile=\"0.5\"} 0.0001\n\
             go_gc_duration_seconds 0.0001\n\
             go_gc_duration_seconds_sum 0.002\n\
             go_gc_duration_seconds_count 9\n",
        );
        assert_eq!(
            page.dropped_lines, 3,
            "a bucket without le, a bare histogram sample, a quantile-less summary sample"
        );
        assert_eq!(page.families.len(), 2, "{page:#?}");
        assert_eq!(page.families[0].samples, 4);
        let summary = &page.families[1];
        assert_eq!(
            summary.name, "kata_shim_go_gc_duration_seconds",
            "renamed as kata-monitor does"
        );
        assert_eq!(summary.kind, Kind::Summary);
        assert_eq!(summary.samples, 3);
        assert!(
            summary
                .lines
                .contains("kata_shim_go_gc_duration_seconds_count{")
        );
    }

    #[test]
    fn a_repeated_series_is_dropped_and_a_shims_own_sandbox_label_replaced() {
        let page = parse(
            "kata_guest_m{a=\"1\",b=\"2\"} 1\nkata_guest_m{b=\"2\",a=\"1\"} 2\n\
             kata_guest_m{sandbox_id=\"forged\",a=\"3\"} 3\n",
        );
        assert_eq!(page.dropped_lines, 1);
        assert_eq!(
            lines(&page),
            format!(
                "kata_guest_m{{a=\"1\",b=\"2\",sandbox_id=\"{ID}\"}} 1.0\n\
                 kata_guest_m{{a=\"3\",sandbox_id=\"{ID}\"}} 3.0\n"
            )
        );
    }

    #[test]
    fn a_huge_page_fails_past_its_output_budget_instead_of_growing() {
        // Short samples grow the most: each gains the 64-digit id.
        let text: String = (0..100_000)
            .map(|i| format!("kata_guest_x{i} 1\n"))
            .collect();
        // Under the series cap, which bounds the output too.
        let result = parse_page(ID, text.as_bytes(), 64 << 10);
        assert!(
            matches!(result, Err(ScrapeError::OverBudget(_))),
            "{result:?}"
        );
        // Long in its value, which comes out short: no bound on a name or
        // label refuses it.
        let one_line = format!("kata_guest_y {}1\n", "0".repeat(2 << 20));
        let page = parse_page(ID, one_line.as_bytes(), 8 << 20).unwrap();
        assert_eq!(page.families[0].samples, 1);
    }

    #[test]
    fn merged_pages_have_each_family_once_with_every_sandboxs_samples() {
        let page = |id: &str, value: u32| {
            parse_page(
                id,
                format!(
                    "# HELP kata_shim_threads Kata containerd shim v2 process threads.\n\
                     # TYPE kata_shim_threads gauge\nkata_shim_threads {value}\n"
                )
                .as_bytes(),
                usize::MAX,
            )
            .unwrap()
        };
        let mut relay = Relay::new(1 << 20);
        relay.add("bbb", page("bbb", 2)).unwrap();
        relay.add("aaa", page("aaa", 1)).unwrap();
        assert_eq!(
            relay.render(),
            "# HELP kata_shim_threads Kata containerd shim v2 process threads.\n\
             # TYPE kata_shim_threads gauge\n\
             kata_shim_threads{sandbox_id=\"aaa\"} 1.0\n\
             kata_shim_threads{sandbox_id=\"bbb\"} 2.0\n"
        );
    }

    #[test]
    fn conflicting_types_and_the_agents_namespace_are_not_relayed() {
        let mut relay = Relay::new(1 << 20);
        let first = parse_page(
            "a",
            b"# TYPE kata_guest_m gauge\nkata_guest_m 1\nkata_node_agent_connected 1\n",
            usize::MAX,
        )
        .unwrap();
        let second = parse_page(
            "b",
            b"# TYPE kata_guest_m counter\nkata_guest_m 2\n",
            usize::MAX,
        )
        .unwrap();
        relay.add("a", first).unwrap();
        relay.add("b", second).unwrap();
        assert_eq!(relay.dropped_lines, 1, "the conflicting type");
        assert_eq!(relay.dropped_series.family, 1, "the agent's namespace");
        assert_eq!(
            relay.render(),
            "# TYPE kata_guest_m gauge\nkata_guest_m{sandbox_id=\"a\"} 1.0\n"
        );
    }

    #[test]
    fn a_page_that_does_not_fit_the_budget_is_left_out_whole() {
        let page =
            |id: &str| parse_page(id, b"kata_guest_m 1\nkata_guest_n 2\n", usize::MAX).unwrap();
        let one = page("a").text_len();
        let mut relay = Relay::new(one + one / 2);
        relay.add("a", page("a")).unwrap();
        assert!(matches!(
            relay.add("b", page("b")),
            Err(ScrapeError::OverBudget(_))
        ));
        let text = relay.render();
        assert!(!text.contains("sandbox_id=\"b\""), "{text}");
    }

    fn names(page: &Page) -> Vec<&str> {
        page.families
            .iter()
            .map(|family| family.name.as_str())
            .collect()
    }

    #[test]
    fn only_kata_families_pass_and_never_the_agents_own() {
        let longest = format!("kata_guest_{}", "a".repeat(MAX_NAME_LEN - 11));
        let page = parse(&format!(
            "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n\
             # TYPE node_cpu_seconds_total counter\n\
             node_cpu_seconds_total{{cpu=\"0\",mode=\"idle\"}} 1\n\
             up 1\n\
             # TYPE kata_node_agent_connected gauge\n\
             kata_node_agent_connected 0\n\
             kata_node_agent_reports_sent_total 1e9\n\
             kata_agentx_threads 1\n\
             kata_ 1\n\
             {longest}a 1\n\
             {longest} 1\n\
             go_goroutines 38\n\
             kata_agent_threads 8\n\
             kata_firecracker_vcpu{{item=\"failures\"}} 0\n\
             kata_guest_load{{item=\"load1\"}} 0.02\n\
             kata_hypervisor_fds 127\n\
             kata_monitor_running_shim_count 1\n\
             kata_shim_fds 31\n\
             kata_virtiofsd_threads 3\n"
        ));
        assert_eq!(
            page.dropped_series,
            SeriesDrops {
                family: 7,
                ..SeriesDrops::default()
            }
        );
        assert_eq!(page.dropped_lines, 0);
        assert_eq!(
            names(&page),
            [
                longest.as_str(),
                "kata_shim_go_goroutines",
                "kata_agent_threads",
                "kata_firecracker_vcpu",
                "kata_guest_load",
                "kata_hypervisor_fds",
                "kata_monitor_running_shim_count",
                "kata_shim_fds",
                "kata_virtiofsd_threads",
            ],
            "the foreign families' HELP and TYPE start no family"
        );
    }

    #[test]
    fn series_over_the_label_bounds_are_dropped_whole() {
        let labels = |count: usize| -> String {
            (0..count)
                .map(|n| format!("l{n}=\"x\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        let name_of = |len: usize| "n".repeat(len);
        let value_of = |len: usize| "v".repeat(len);
        let kept = [
            format!("kata_guest_a{{{}}} 1", labels(MAX_LABELS)),
            format!(
                "kata_guest_b{{{},sandbox_id=\"forged\"}} 1",
                labels(MAX_LABELS)
            ),
            format!("kata_guest_c{{{}=\"x\"}} 1", name_of(MAX_LABEL_NAME_LEN)),
            format!(
                "kata_guest_d{{item=\"{}\"}} 1",
                value_of(MAX_LABEL_VALUE_LEN)
            ),
        ];
        let dropped = [
            format!("kata_guest_a{{{}}} 2", labels(MAX_LABELS + 1)),
            format!(
                "kata_guest_c{{{}=\"x\"}} 2",
                name_of(MAX_LABEL_NAME_LEN + 1)
            ),
            format!(
                "kata_guest_d{{item=\"{}\"}} 2",
                value_of(MAX_LABEL_VALUE_LEN + 1)
            ),
            // Its escapes count: written, it is one byte too long.
            format!(
                "kata_guest_d{{item=\"{}\\n\"}} 2",
                value_of(MAX_LABEL_VALUE_LEN - 1)
            ),
        ];
        let page = parse(&(kept.join("\n") + "\n" + &dropped.join("\n") + "\n"));
        assert_eq!(
            page.dropped_series,
            SeriesDrops {
                labels: 4,
                ..SeriesDrops::default()
            }
        );
        assert_eq!(page.dropped_lines, 0);
        let relayed: String = kept
            .iter()
            .map(|line| {
                let (series, _) = line.split_once("} ").unwrap();
                let series = series.replace(",sandbox_id=\"forged\"", "");
                format!("{series},sandbox_id=\"{ID}\"}} 1.0\n")
            })
            .collect();
        assert_eq!(lines(&page), relayed);
    }

    #[test]
    fn a_sandbox_relays_at_most_its_series_cap() {
        let series = |n: usize| format!("kata_guest_vm_stat{{item=\"i{n}\"}}");
        let mut text = String::from("# TYPE kata_guest_vm_stat gauge\n");
        for n in 0..MAX_SERIES_PER_SANDBOX + 10 {
            let _ = writeln!(text, "{} 1", series(n));
            if n == 5 {
                // A repeat is malformed and takes no room under the cap.
                let _ = writeln!(text, "{} 2", series(n));
            }
        }
        text.push_str("up 1\nkata_guest_load{item=\"load1\"} 1\n");
        let page = parse(&text);
        assert_eq!(
            page.dropped_series,
            SeriesDrops {
                family: 1,
                labels: 0,
                series_cap: 11,
            }
        );
        assert_eq!(page.dropped_lines, 1);
        assert_eq!(
            names(&page),
            ["kata_guest_vm_stat"],
            "no family past the cap"
        );
        let family = &page.families[0];
        assert_eq!(family.samples, MAX_SERIES_PER_SANDBOX);
        let item = |n: usize| format!("{{item=\"i{n}\",");
        assert!(family.lines.contains(&item(MAX_SERIES_PER_SANDBOX - 1)));
        assert!(!family.lines.contains(&item(MAX_SERIES_PER_SANDBOX)));
    }

    #[test]
    fn docstrings_are_bounded_and_count_against_the_relay_budget() {
        let help = |len: usize| format!("# HELP kata_guest_load {}\n", "h".repeat(len));
        let page = parse(&(help(MAX_HELP_LEN + 1) + "kata_guest_load 1\n"));
        assert_eq!(page.dropped_lines, 1);
        assert_eq!(page.families[0].help, None);
        let page = parse(&(help(MAX_HELP_LEN) + "kata_guest_load 1\n"));
        let samples = page.families[0].lines.len();
        assert_eq!(page.text_len(), samples + MAX_HELP_LEN);
        let mut relay = Relay::new(samples + MAX_HELP_LEN - 1);
        assert!(matches!(
            relay.add(ID, page),
            Err(ScrapeError::OverBudget(_))
        ));
    }

    #[test]
    fn the_most_series_a_scrape_relays_is_what_the_budget_holds_of_the_shortest_line() {
        let page = parse("kata_shim_ 0\n");
        let shortest = page.text_len();
        assert_eq!(shortest, 94);
        let limits = ScrapeLimits::default();
        assert_eq!(max_relayed_series(&limits), (4 << 20) / shortest);
        let few = ScrapeLimits {
            max_sandboxes: 2,
            ..limits
        };
        assert_eq!(max_relayed_series(&few), 2 * MAX_SERIES_PER_SANDBOX);
    }

    #[test]
    fn sandbox_ids_are_checked() {
        assert!(is_sandbox_id(ID));
        assert!(is_sandbox_id("pod-sandbox_1.2"));
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "a\"b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(!is_sandbox_id(bad), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod scrape_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fixtures::{
        FakeHost, HOSTILE_PAGE_OVER_CAP, SANDBOX_STORE, hostile_shim_page, sandbox_id,
        shim_metrics_page,
    };

    #[tokio::test]
    async fn every_live_shim_is_relayed_and_a_dead_one_counted() {
        let host = FakeHost::good()
            .dead_kata_sandbox(&sandbox_id(3))
            // Not a sandbox id: ignored, not an error.
            .mkdir(&format!("{SANDBOX_STORE}/not an id"))
            .write(
                &format!("{SANDBOX_STORE}/{}", sandbox_id(4)),
                "a file, not a dir",
            );
        let _one = host.kata_sandbox(&sandbox_id(1), shim_metrics_page(11));
        let _two = host.kata_sandbox(&sandbox_id(2), shim_metrics_page(12));
        let scraper = SandboxScraper::new(host.host_root(), ScrapeLimits::default());
        let scrape = scraper.scrape().await;
        assert_eq!(scrape.sandboxes, 3, "two live, one dead");
        assert_eq!(scrape.errors, 1, "the dead one");
        assert_eq!(scrape.dropped_lines, 0, "{}", scrape.text);
        assert_eq!(scrape.dropped_series, SeriesDrops::default(), "all Kata's");
        for (n, threads) in [(1, 11), (2, 12)] {
            let line = format!(
                "kata_shim_threads{{sandbox_id=\"{}\"}} {threads}.0",
                sandbox_id(n)
            );
            assert!(
                scrape.text.contains(&line),
                "{line} missing:\n{}",
                scrape.text
            );
        }
        assert_eq!(
            scrape
                .text
                .matches("# TYPE kata_shim_threads gauge")
                .count(),
            1
        );
        assert!(
            scrape
                .text
                .contains("# TYPE kata_shim_go_gc_duration_seconds summary")
        );
        assert!(!scrape.text.contains("\ngo_"), "go_* is renamed");
    }

    #[tokio::test]
    async fn a_hostile_shim_relays_only_kata_families_within_the_bounds() {
        let host = FakeHost::good();
        let _good = host.kata_sandbox(&sandbox_id(1), shim_metrics_page(11));
        let _hostile = host.kata_sandbox(&sandbox_id(2), hostile_shim_page(66));
        let scrape = SandboxScraper::new(host.host_root(), ScrapeLimits::default())
            .scrape()
            .await;
        assert_eq!((scrape.sandboxes, scrape.errors), (2, 0));
        assert_eq!(
            scrape.dropped_series,
            SeriesDrops {
                family: 6,
                labels: 3,
                series_cap: HOSTILE_PAGE_OVER_CAP as u64,
            }
        );
        assert_eq!(scrape.dropped_lines, 0);
        let hostile = format!("sandbox_id=\"{}\"", sandbox_id(2));
        let relayed: Vec<&str> = scrape
            .text
            .lines()
            .filter(|line| line.contains(&hostile))
            .collect();
        assert_eq!(relayed.len(), MAX_SERIES_PER_SANDBOX);
        assert_eq!(
            relayed[0],
            format!("kata_guest_vm_stat{{item=\"flood_0\",{hostile}}} 1.0")
        );
        assert_eq!(
            relayed.last().copied(),
            Some(format!("kata_shim_threads{{{hostile}}} 66.0").as_str())
        );
        let good_threads = format!("kata_shim_threads{{sandbox_id=\"{}\"}} 11.0", sandbox_id(1));
        assert!(
            scrape.text.contains(&good_threads),
            "the other sandbox is untouched"
        );
        for line in scrape.text.lines().filter(|line| !line.starts_with('#')) {
            assert!(
                KATA_PREFIXES.iter().any(|prefix| line.starts_with(prefix)),
                "not Kata's: {line}"
            );
        }
    }

    #[tokio::test]
    async fn a_shim_that_never_answers_costs_one_timeout() {
        let host = FakeHost::good();
        let id = sandbox_id(9);
        let dir = host.join(&format!("{SANDBOX_STORE}/{id}"));
        fs::create_dir_all(&dir).unwrap();
        // Listens, never accepts: the connect succeeds, no answer comes.
        let handle = fs::File::open(&dir).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(format!(
            "/proc/self/fd/{}/{MONITOR_SOCKET}",
            handle.as_raw_fd()
        ))
        .unwrap();
        let limits = ScrapeLimits {
            per_sandbox: Duration::from_millis(200),
            ..ScrapeLimits::default()
        };
        let scrape = SandboxScraper::new(host.host_root(), limits).scrape().await;
        assert_eq!((scrape.sandboxes, scrape.errors), (1, 1));
        assert!(scrape.text.is_empty());
    }

    #[tokio::test]
    async fn an_answer_over_the_page_limit_is_refused() {
        let host = FakeHost::good();
        let _shim = host.kata_sandbox(&sandbox_id(1), "kata_guest_m 1\n".repeat(1000));
        let limits = ScrapeLimits {
            max_page_bytes: 100,
            ..ScrapeLimits::default()
        };
        let sandbox = list_sandboxes(&host.host_root(), 10).remove(0);
        let result = scrape_one(&sandbox, &limits).await;
        assert!(
            matches!(result, Err(ScrapeError::TooLarge(100))),
            "{result:?}"
        );
    }
}
