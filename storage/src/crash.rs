//! Named crash points and delay points for tests.
//!
//! With the `crash-points` feature, a process started with `DC_CRASH_AT=<name>` aborts the first time
//! it reaches [`point`]`(<name>)` (`DC_CRASH_AT=<name>:<n>` on the n-th time). `abort` runs no
//! destructors, so sled gets no chance to flush: what survives is exactly what was flushed before.
//! A process started with `DC_DELAY_AT=<name>:<ms>` sleeps that long every time it reaches
//! [`delay`]`(<name>)`: a slow replica, without starving a whole machine.
//! Without the feature, both compile to nothing.

#[cfg(feature = "crash-points")]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("DC_CRASH_AT").ok()?;
        match spec.split_once(':') {
            Some((name, n)) => Some((name.to_owned(), n.parse().unwrap_or(1))),
            None => Some((spec, 1)),
        }
    });
    if let Some((want, nth)) = target {
        if want == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            tracing::error!(point = name, "crash point reached, aborting");
            std::process::abort();
        }
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// Whether this process was started to die at `name`: lets a test arrange the one ordering the point
/// is about (e.g. one participant told COMMIT before the others) without changing normal runs.
#[cfg(feature = "crash-points")]
pub fn armed(name: &str) -> bool {
    std::env::var("DC_CRASH_AT").is_ok_and(|spec| spec.split(':').next() == Some(name))
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn armed(_name: &str) -> bool {
    false
}

/// Sleeps at `name` when the process was started with `DC_DELAY_AT=<name>:<ms>` (see the module doc).
#[cfg(feature = "crash-points")]
pub async fn delay(name: &str) {
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("DC_DELAY_AT").ok()?;
        let (name, ms) = spec.split_once(':')?;
        Some((name.to_owned(), ms.parse().ok()?))
    });
    if let Some((want, ms)) = target {
        if want == name {
            tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
        }
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub async fn delay(_name: &str) {}
