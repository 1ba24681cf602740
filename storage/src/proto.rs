//! Messages between the coordinator and the counters, and the bodies of the public API.
//! Both sides use these types; JSON on the wire. The public bodies also describe themselves for the
//! coordinator's OpenAPI document (`utoipa::ToSchema`).

use serde::{Deserialize, Serialize};

use crate::model::{ClusterId, Item, LogEntry, NodeId, Seq, TxId};

/// Internal paths. Counters serve the first group, the coordinator's internal listener the second;
/// every one of them requires the cluster token. Only [`paths::HEALTH`] is open, on every listener.
pub mod paths {
    pub const PREPARE: &str = "/internal/prepare";
    pub const COMMIT: &str = "/internal/commit";
    pub const ROLLBACK: &str = "/internal/rollback";
    pub const COUNTS: &str = "/internal/counts";
    pub const STATUS: &str = "/internal/status";
    pub const LOG: &str = "/internal/sync/log";
    pub const SNAPSHOT: &str = "/internal/sync/snapshot";
    pub const APPLY_LOG: &str = "/internal/sync/apply-log";
    pub const IMPORT: &str = "/internal/sync/import";
    pub const FINISH_SNAPSHOT: &str = "/internal/sync/finish-snapshot";

    pub const REGISTER: &str = "/internal/register";
    pub const OUTCOME: &str = "/internal/outcome";
    pub const CLUSTER: &str = "/internal/cluster";

    /// Liveness, on both services (no token).
    pub const HEALTH: &str = "/health";
    /// Readiness of a counter (no token): 200 once the coordinator has counted it in sync since it
    /// started, 503 before. Swarm's rolling updates wait on it (docker-stack.yml).
    pub const READY: &str = "/ready";
    /// Prometheus metrics, on both services (no token: aggregates only, no tenant and no address).
    pub const METRICS: &str = "/metrics";
}

/// Header on every coordinator → counter call: the node id the coordinator means. A counter whose
/// identity differs refuses the call (409), so an address that changed hands is never trusted.
pub const NODE_HEADER: &str = "x-node-id";

/// Header on every coordinator → counter call: the coordinator's cluster id. A counter that joined
/// another cluster refuses the call (409).
pub const CLUSTER_HEADER: &str = "x-cluster-id";

/// Coordinator → counter, phase 1. The counter answers after the prepared record is on disk.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PrepareRequest {
    pub txid: TxId,
    pub items: Vec<Item>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    Yes,
    No { reason: String },
}

/// Coordinator → counter, phase 2 after a logged COMMIT decision. Answered after the commit is on disk.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CommitRequest {
    pub txid: TxId,
    pub seq: Seq,
}

/// Coordinator → counter, phase 2 of an aborted round. Best effort: presumed abort covers a lost one.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RollbackRequest {
    pub txid: TxId,
}

/// A counter's answer to commit and to sync writes: where it stands now.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Applied {
    pub last_applied: Seq,
    /// The last applied seq it has made durable. A COMMIT is acknowledged once applied, before its
    /// flush (its prepared record is on disk: a crash leaves it in doubt, and the coordinator's
    /// decision resolves it), so this may trail `last_applied`; catch-up writes are flushed first.
    /// Missing (an older counter): 0, which only delays pruning.
    #[serde(default)]
    pub durable: Seq,
}

/// Most tenants in one [`CountsRequest`]: the coordinator batches the reads waiting for a counter up
/// to this many, and a counter refuses a larger batch (413).
pub const MAX_COUNTS_TENANTS: usize = 256;

/// Longest tenant, in bytes, any part of the cluster accepts: the coordinator's `--max-tenant-bytes`
/// may not exceed it, so that a counter never refuses a tenant the public API let through.
pub const MAX_TENANT_BYTES: usize = 1024;

/// Largest [`CountsRequest`] body a counter reads: the most tenants of the longest kind, each
/// escaped at worst six bytes of JSON per byte (`\u0001`), with room for the punctuation.
pub const MAX_COUNTS_BODY_BYTES: usize = MAX_COUNTS_TENANTS * (MAX_TENANT_BYTES * 6 + 4) + 64;

/// A tenant as the public API accepts it: a non-empty string of at most `max_bytes` bytes of UTF-8.
/// Also how a counter checks the tenants of a [`CountsRequest`] (with [`MAX_TENANT_BYTES`]).
pub fn check_tenant(tenant: &str, max_bytes: usize) -> Result<(), String> {
    if tenant.is_empty() {
        return Err("tenant is empty".into());
    }
    if tenant.len() > max_bytes {
        return Err(format!(
            "tenant is {} bytes long, at most {max_bytes} allowed",
            tenant.len()
        ));
    }
    Ok(())
}

/// Coordinator → counter: the counts of up to [`MAX_COUNTS_TENANTS`] tenants, for the reads that
/// wait for this counter (see `coordinator/src/reads.rs`), each tenant once.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CountsRequest {
    pub tenants: Vec<String>,
}

/// A counter's answer to a [`CountsRequest`]: one count per tenant, in the request's order, all
/// read after `last_applied`. So every count includes at least every commit up to `last_applied`;
/// the coordinator uses it to refuse a stale answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub last_applied: Seq,
    pub counts: Vec<u64>,
}

/// A counter's state, for health checks and sync.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CounterStatus {
    pub node_id: NodeId,
    /// The cluster it joined; `None` before its first registration.
    pub cluster_id: Option<ClusterId>,
    pub last_applied: Seq,
    /// The last applied seq that a crash can no longer take back (see [`Applied::durable`]).
    #[serde(default)]
    pub durable: Seq,
    pub last_txid: TxId,
    pub log_floor: Seq,
    /// Transactions voted YES on and not yet decided here (in doubt after a crash).
    pub prepared: usize,
    /// Calls refused for a missing or wrong cluster token since the process started.
    pub refused_calls: u64,
}

/// Query of [`paths::LOG`]: committed transactions from seq `from` on.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LogQuery {
    pub from: Seq,
    pub max_items: usize,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum LogPage {
    Entries(Vec<LogEntry>),
    /// The log no longer reaches back to the requested seq: a snapshot is needed.
    Trimmed {
        floor: Seq,
    },
}

/// Query of [`paths::SNAPSHOT`]: items after the cursor (hex of an item key), from the start if absent.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SnapshotQuery {
    pub after: Option<String>,
    pub max_items: usize,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SnapshotPage {
    pub items: Vec<Item>,
    /// Cursor for the next page; `None` at the end.
    pub next: Option<String>,
}

/// Coordinator → catching-up counter: committed entries to apply in order.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ApplyLogRequest {
    pub entries: Vec<LogEntry>,
}

/// Coordinator → catching-up counter: snapshot items to add.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ImportRequest {
    pub items: Vec<Item>,
}

/// Coordinator → catching-up counter: all snapshot pages taken when the source stood at `seq` are in.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct FinishSnapshotRequest {
    pub seq: Seq,
    pub txid: TxId,
}

/// Counter → coordinator, on start and periodically: "I am here, at this URL, with this much".
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RegisterRequest {
    pub node_id: NodeId,
    pub url: String,
    pub last_applied: Seq,
    /// The cluster the counter joined before; `None` for a counter that never registered. A
    /// coordinator of another cluster refuses the registration (409).
    pub cluster_id: Option<ClusterId>,
}

/// Coordinator → counter, answer to a registration: the cluster it joined, which the counter records
/// (durably) and from then on requires, and whether the counter is in the write and read sets now.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RegisterReply {
    pub cluster_id: ClusterId,
    /// In sync as of this answer; a counter just registered is not, until its catch-up ends. Absent
    /// (false) from a coordinator older than the field.
    #[serde(default)]
    pub in_sync: bool,
}

/// Counter → coordinator after a restart, for each transaction it holds prepared: the outcome.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OutcomeQuery {
    pub txid: TxId,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed {
        seq: Seq,
    },
    /// No logged COMMIT and no running round: aborted (presumed abort).
    Aborted,
    /// The round is still running: ask again.
    Pending,
}

/// Public: answer of `GET /items/{tenant}/count`.
#[derive(Serialize, Deserialize, Debug, Clone, utoipa::ToSchema)]
pub struct CountBody {
    /// Distinct ids posted for the tenant (0 if never seen).
    pub count: u64,
}

/// Public: `{"status":"success"}` or `{"status":"failed","error":"..."}`, the original project's shape.
#[derive(Serialize, Deserialize, Debug, Clone, utoipa::ToSchema)]
pub struct StatusBody {
    /// `success` or `failed`.
    #[schema(pattern = "^(success|failed)$")]
    pub status: String,
    /// Why the request failed (absent on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Public: `GET /status`, the cluster at a glance, without node ids or addresses.
#[derive(Serialize, Deserialize, Debug, Clone, utoipa::ToSchema)]
pub struct PublicStatus {
    /// Seq of the last committed write round.
    pub committed_seq: Seq,
    /// Counters in the write and read sets.
    pub in_sync: usize,
    /// Counters catching up right now.
    pub syncing: usize,
    /// Counters out of the write and read sets, waiting for a catch-up.
    pub lagging: usize,
}

impl StatusBody {
    pub fn success() -> Self {
        StatusBody {
            status: "success".into(),
            error: None,
        }
    }

    pub fn failed(error: impl Into<String>) -> Self {
        StatusBody {
            status: "failed".into(),
            error: Some(error.into()),
        }
    }
}

/// Operator view of the cluster (`GET /internal/cluster` on the coordinator's internal listener).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ClusterView {
    pub cluster_id: ClusterId,
    pub committed_seq: Seq,
    /// Internal calls refused for a missing or wrong cluster token since the coordinator started.
    pub refused_calls: u64,
    /// COMMIT decisions kept; pruned once every counter made their rounds durable.
    pub decisions_kept: usize,
    pub counters: Vec<CounterView>,
}

/// A registered counter's state as the operator sees it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// In the write and read sets.
    InSync,
    /// Out of them, a catch-up running.
    Syncing,
    /// Out of them, waiting for a catch-up.
    Lagging,
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::InSync => "InSync",
            MemberState::Syncing => "Syncing",
            MemberState::Lagging => "Lagging",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CounterView {
    pub node_id: NodeId,
    pub url: String,
    pub state: MemberState,
    /// The last seq it is known to have applied (from its acknowledgements, status and catch-up).
    pub last_applied: Seq,
    /// Committed rounds it is known to lack: `committed_seq - last_applied`.
    pub lag: Seq,
    /// Items it applied per second over the last few seconds (commits and catch-up).
    pub items_per_sec: f64,
    pub failed_checks: u32,
    /// Log entries and snapshot items sent to this counter by catch-ups since the coordinator started.
    pub synced_entries: u64,
    pub synced_snapshot_items: u64,
}
