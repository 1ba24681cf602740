//! Durable state of the distributed counter.
//!
//! Everything that must survive a crash lives here: the data model ([`model`]), the versioned record
//! encoding ([`codec`]), the key layout ([`keys`]), the counter's replica ([`CounterStore`]) and the
//! coordinator's registry and 2PC decisions ([`CoordinatorStore`]). Each durable state transition is one
//! method whose doc comment names its crash invariant.
//!
//! sled writes are **not** durable until a flush returns. Callers never flush directly: each store owns
//! one [`Flusher`] thread that flushes once for every writer waiting since the previous flush (group commit),
//! which also keeps sled away from sled 0.34's hang under many concurrent `flush_async` calls.
//! A flush uses `sync_file_range`, so it survives a process or container kill, not a power loss.
//!
//! The wire messages exchanged by coordinator and counters live in [`proto`], defined once for both sides.

pub mod codec;
pub mod coordinator_store;
pub mod counter_store;
pub mod crash;
pub mod error;
pub mod flusher;
pub mod keys;
pub mod model;
mod open;
pub mod proto;

pub use coordinator_store::{CoordinatorStore, CounterRecord, CounterState, Decision};
pub use counter_store::{ApplyOutcome, CounterStore, PrepareOutcome};
pub use error::{Error, Result};
pub use flusher::{Failure, Flusher};
pub use model::{ClusterId, Item, LogEntry, NodeId, Seq, TxId};
