//! Claiming a data directory among slots under one root.
//!
//! Scaled replicas share one mounted volume. Each takes the first `slot-NN` directory whose sled lock
//! it can get; the lock is held for the life of the process and released by the kernel when it dies,
//! so a restarted replica finds a free slot again. The replica's identity is inside the slot's data,
//! not in the container's name.
//!
//! A slot that cannot be opened for any other reason (corrupt, or sled lost its database: see
//! `storage`'s initialized marker) stays refused and is reported at error level on every start; the
//! replica claims another slot. Stopping
//! instead would keep every replica of the volume down for one bad slot. The replica that owned it
//! then starts from another slot's data or an empty one, which the coordinator catches up before it
//! serves: nothing is silently served from an empty replica.

use std::path::Path;

use storage::{CounterStore, Error};

const MAX_SLOTS: usize = 256;

pub fn claim(root: &Path, log_retention: u64) -> anyhow::Result<CounterStore> {
    std::fs::create_dir_all(root)?;
    for n in 0..MAX_SLOTS {
        let dir = root.join(format!("slot-{n:02}"));
        match CounterStore::open(&dir, log_retention) {
            Ok(store) => {
                tracing::info!(dir = %dir.display(), "claimed slot");
                return Ok(store);
            }
            Err(Error::Locked(_)) => continue,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "slot cannot be opened; skipping it, its data needs an operator");
            }
        }
    }
    anyhow::bail!("all {MAX_SLOTS} slots under {} are in use", root.display())
}
