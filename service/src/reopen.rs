//! Reopening a database that failed, by restarting the process in place.
//!
//! After a failed flush, sled 0.34 takes no more writes until the database is opened again, and its
//! memory may hold writes that never reached the disk (see `storage::flusher`). Reopening it inside
//! the process would need every handle dropped first; restarting does that by construction, and
//! recovery from what is on disk is the path every crash test already covers. So once the disk takes
//! writes again (a probe file of [`PROBE_BYTES`] is written, synced and removed; tried with backoff,
//! silently), the process replaces itself with a fresh copy of its own binary, same arguments and
//! environment ([`exec`](std::os::unix::process::CommandExt::exec)): the same pid, so a container,
//! a supervisor or a test harness sees no exit, and every file and socket (opened close-on-exec) is
//! closed, which releases sled's lock. The failure is logged once when it happens, once when the disk
//! is writable again.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Room the probe asks for: a few of sled's 512 KiB log segments, which reopening and the first
/// writes need.
pub const PROBE_BYTES: usize = 4 << 20;
const FIRST_PROBE: Duration = Duration::from_millis(500);
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(5);
const PROBE_FILE: &str = "write-probe";

/// Waits for `failed` (a database failure, as text), then until `dir` takes [`PROBE_BYTES`] again,
/// then restarts the process. Returns only if the restart itself failed, with why.
pub async fn when_writable(
    failed: impl std::future::Future<Output = String>,
    dir: PathBuf,
) -> std::io::Error {
    let reason = failed.await;
    tracing::error!(dir = %dir.display(), %reason,
        "the database failed: writes are refused until its disk takes writes again, then the process restarts to reopen it");
    let mut wait = FIRST_PROBE;
    loop {
        tokio::time::sleep(wait).await;
        let probe_dir = dir.clone();
        match tokio::task::spawn_blocking(move || probe(&probe_dir)).await {
            Ok(Ok(())) => break,
            Ok(Err(_)) | Err(_) => wait = (wait * 2).min(MAX_PROBE_INTERVAL),
        }
    }
    tracing::warn!(dir = %dir.display(), "the disk takes writes again: restarting to reopen the database");
    restart()
}

/// Writes, syncs and removes a file of [`PROBE_BYTES`] in `dir`.
pub fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        std::io::Write::write_all(&mut file, &vec![0u8; PROBE_BYTES])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Replaces this process with a fresh run of its own binary; returns only on failure.
fn restart() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec()
}
