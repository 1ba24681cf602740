//! Claiming a data directory among slots under one root.
//!
//! Scaled replicas share one mounted volume. Each takes the first `slot-NN` directory whose sled lock
//! it can get; the lock is held for the life of the process and released by the kernel when it dies,
//! so a restarted replica finds a free slot again. The replica's identity is inside the slot's data,
//! not in the container's name. Any failure other than a held lock stops the counter: a slot it cannot
//! read must not be skipped, or its data would silently be left behind.

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
            Err(e) => anyhow::bail!("cannot open slot {}: {e}", dir.display()),
        }
    }
    anyhow::bail!("all {MAX_SLOTS} slots under {} are in use", root.display())
}
