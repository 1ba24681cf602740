//! The data model shared by every crate.

use serde::{Deserialize, Serialize};

/// Transaction id, allocated by the coordinator; strictly increasing, never reused across restarts.
pub type TxId = u64;

/// Position of a committed transaction in the global commit order (1, 2, 3, ... without gaps).
/// Seq 0 means "nothing applied yet".
pub type Seq = u64;

/// Stable identity of a counter replica, created once and stored inside its data directory.
pub type NodeId = String;

/// One counted thing: the count of a tenant is the number of distinct ids posted for it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Item {
    pub id: String,
    pub tenant: String,
}

/// A committed transaction as kept in a counter's log, the unit of incremental catch-up.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: Seq,
    pub txid: TxId,
    pub items: Vec<Item>,
}
