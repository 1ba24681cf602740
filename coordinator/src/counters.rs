//! How the coordinator talks to counters: the [`Counters`] trait, one method per call of the 2PC
//! round, of catch-up and of the read path. The round ([`crate::txn`]), catch-up ([`crate::sync`]),
//! health checks and reads know counters only through it.
//!
//! [`crate::client::CounterClient`] implements it over HTTP for the services; a test can implement it
//! in process, around the counter crate's real participant over a temporary sled directory, and drive
//! rounds and catch-ups with injected faults without a socket.
//!
//! Every failure of a call (refused, reset, timed out, an error status) is a [`CallError`], which the
//! caller reads as "this counter did not do it".

use std::sync::Arc;

use futures_util::future::BoxFuture;
use storage::proto::{Applied, CounterStatus, Counts, LogPage, SnapshotPage, Vote};
use storage::{Item, LogEntry, Seq, TxId};

use crate::registry::Target;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No answer: refused, reset.
    #[error("{0}")]
    Unreachable(String),
    /// No answer within the call's timeout: a counter too slow (starved of CPU, frozen) or cut off.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// An answer that is an error.
    #[error("answered {status}: {body}")]
    Refused { status: u16, body: String },
    /// An answer that does not fit the call.
    #[error("bad answer: {0}")]
    Malformed(String),
}

impl CallError {
    /// The counter answered `507`: its disk is full.
    pub fn is_insufficient_storage(&self) -> bool {
        matches!(self, CallError::Refused { status: 507, .. })
    }
}

pub type CallResult<T> = Result<T, CallError>;

/// The counters, as the coordinator calls them. Each call names the counter it means ([`Target`]).
pub trait Counters: Send + Sync {
    /// Phase 1 to every target at once (the batch is encoded once), votes in the targets' order.
    fn prepare_all<'a>(
        &'a self,
        to: &'a [Target],
        txid: TxId,
        items: Vec<Item>,
    ) -> BoxFuture<'a, Vec<CallResult<Vote>>>;

    /// Phase 2 of a committed round of `items` items (which sizes the call's timeout).
    fn commit<'a>(
        &'a self,
        to: &'a Target,
        txid: TxId,
        seq: Seq,
        items: usize,
    ) -> BoxFuture<'a, CallResult<Applied>>;

    fn rollback<'a>(&'a self, to: &'a Target, txid: TxId) -> BoxFuture<'a, CallResult<()>>;

    /// The counts of `tenants` (each once, at most [`storage::proto::MAX_COUNTS_TENANTS`]), for the
    /// reads waiting for this counter ([`crate::reads`]).
    fn counts<'a>(
        &'a self,
        to: &'a Target,
        tenants: Vec<String>,
    ) -> BoxFuture<'a, CallResult<Counts>>;

    fn status<'a>(&'a self, to: &'a Target) -> BoxFuture<'a, CallResult<CounterStatus>>;

    /// Catch-up source: committed entries from seq `from` on, about `max_items` items.
    fn log_page<'a>(
        &'a self,
        to: &'a Target,
        from: Seq,
        max_items: usize,
    ) -> BoxFuture<'a, CallResult<LogPage>>;

    /// Catch-up source: up to `max_items` items after the cursor.
    fn snapshot_page<'a>(
        &'a self,
        to: &'a Target,
        after: Option<String>,
        max_items: usize,
    ) -> BoxFuture<'a, CallResult<SnapshotPage>>;

    /// Catch-up target: applies committed entries in order.
    fn apply_log<'a>(
        &'a self,
        to: &'a Target,
        entries: Vec<LogEntry>,
    ) -> BoxFuture<'a, CallResult<Applied>>;

    /// Catch-up target: adds snapshot items.
    fn import<'a>(&'a self, to: &'a Target, items: Vec<Item>)
        -> BoxFuture<'a, CallResult<Applied>>;

    /// Catch-up target: every snapshot page taken when the source stood at `seq` is in.
    fn finish_snapshot<'a>(
        &'a self,
        to: &'a Target,
        seq: Seq,
        txid: TxId,
    ) -> BoxFuture<'a, CallResult<Applied>>;
}

/// The counters as the coordinator's components share them.
pub type SharedCounters = Arc<dyn Counters>;
