//! The data model shared by every crate.

use serde::{Deserialize, Serialize};

/// Transaction id, allocated by the coordinator; strictly increasing, never reused across restarts.
pub type TxId = u64;

/// Position of a committed transaction in the global commit order (1, 2, 3, ... without gaps).
/// Seq 0 means "nothing applied yet".
pub type Seq = u64;

/// Stable identity of a counter replica, created once and stored inside its data directory.
pub type NodeId = String;

/// Identity of a cluster: created by the coordinator on its first start and kept in its data
/// directory; every counter records the one it first joined and never serves another.
pub type ClusterId = String;

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

/// A fresh random identity (node or cluster). std's `RandomState` is seeded from the OS, which is
/// enough for an identity that only has to differ from the others; it is no secret.
pub(crate) fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}
