//! Test harness: a real cluster of `coordinator` and `counter` processes on 127.0.0.1 with ephemeral
//! ports and temporary data directories, which tests kill (SIGKILL) and restart on the same data.
//!
//! The binaries are the workspace's own, built with the `crash-points` feature (`make test` builds
//! them first). A process started with `DC_CRASH_AT=<point>` aborts at that point; see `storage::crash`.
//!
//! Every cluster gets a fresh random cluster token, given to each process in `CLUSTER_TOKEN` (a test
//! may override it for one process); the harness's own internal calls carry it too.
//!
//! - [`process`]: one service process, started, killed, stopped and started again;
//! - [`cluster`]: the processes of one cluster, their status endpoints, convergence;
//! - [`client`]: the public API as clients call it; [`load`]: concurrent writers;
//! - [`history`]: what clients saw, checked against the final counts;
//! - [`data`]: data directories of stopped services;
//! - [`docker`]: the `docker` CLI, for the drills;
//! - [`sim`]: the in-process network of the deterministic simulation;
//! - [`tmpfs`]: a small filesystem on a data directory, to fill a service's disk.

pub mod client;
pub mod cluster;
pub mod data;
pub mod docker;
pub mod history;
pub mod load;
pub mod process;
pub mod sim;
pub mod tmpfs;

pub use client::{batch, encode, http_client, ApiClient};
pub use cluster::{free_port, random_token, Cluster, Options};
pub use data::{copy_dir, inspect};
pub use load::{Load, LoadStats};
pub use process::{bin, Service};
pub use tmpfs::Tmpfs;
