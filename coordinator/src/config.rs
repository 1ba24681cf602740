//! Coordinator configuration: flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use service::observe::LogFormat;
use service::serve::{positive_duration, ServeArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address of the public API: items, counts and health, nothing internal.
    #[arg(long, env = "COORDINATOR_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the internal API (registration, outcome queries, the operator's cluster view), every
    /// route of which requires the cluster token. Keep it on a private network: never publish it.
    #[arg(
        long,
        env = "COORDINATOR_INTERNAL_LISTEN",
        default_value = "0.0.0.0:8081"
    )]
    pub internal_listen: SocketAddr,

    #[command(flatten)]
    pub auth: service::auth::AuthArgs,

    /// Data directory (a sled database: registration table, decisions).
    #[arg(long, env = "COORDINATOR_DATA_DIR", default_value = "data/coordinator")]
    pub data_dir: PathBuf,

    /// Time between two health checks of a counter.
    #[arg(long, env = "COORDINATOR_HEALTH_INTERVAL", default_value = "10s", value_parser = positive_duration)]
    pub health_interval: Duration,

    /// Failed health checks in a row after which a counter is removed from the registration table.
    #[arg(long, env = "COORDINATOR_HEALTH_ATTEMPTS", default_value_t = 3)]
    pub health_attempts: u32,

    /// Timeout of each PREPARE, COMMIT and ROLLBACK call; a counter that misses it leaves the write set.
    #[arg(long, env = "COORDINATOR_CALL_TIMEOUT", default_value = "1s", value_parser = positive_duration)]
    pub call_timeout: Duration,

    /// Timeout of each read, health and sync call, and how long a read may wait for a counter to
    /// apply the last decided round.
    #[arg(long, env = "COORDINATOR_READ_TIMEOUT", default_value = "2s", value_parser = positive_duration)]
    pub read_timeout: Duration,

    /// Writes fail with 503 when fewer in-sync counters than this can take them.
    #[arg(long, env = "COORDINATOR_MIN_REPLICAS", default_value_t = 1)]
    pub min_replicas: usize,

    /// Largest accepted POST /items body.
    #[arg(long, env = "COORDINATOR_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,

    /// Longest accepted item id, in bytes.
    #[arg(long, env = "COORDINATOR_MAX_ID_BYTES", default_value_t = 256)]
    pub max_id_bytes: usize,

    /// Longest accepted tenant, in bytes: at most 1024, the longest a counter counts in a read batch
    /// (`storage::proto::MAX_TENANT_BYTES`), so that no tenant accepted here is refused there.
    #[arg(long, env = "COORDINATOR_MAX_TENANT_BYTES", default_value_t = 256, value_parser = tenant_limit)]
    pub max_tenant_bytes: usize,

    /// Most items accepted in one POST (413 beyond): one POST is one atomic round, and a round too
    /// large to apply within the call timeouts would push every counter out of the write set.
    #[arg(long, env = "COORDINATOR_MAX_ITEMS_PER_POST", default_value_t = 10_000)]
    pub max_items_per_post: usize,

    /// Concurrent POSTs are merged into one 2PC round up to about this many items.
    #[arg(long, env = "COORDINATOR_MAX_ROUND_ITEMS", default_value_t = 10_000)]
    pub max_round_items: usize,

    /// Items per page when a counter catches up.
    #[arg(long, env = "COORDINATOR_SYNC_PAGE_ITEMS", default_value_t = 5_000)]
    pub sync_page_items: usize,

    /// Once recovered and listening, write the bound public address, then on a second line the internal
    /// one, to this file (for scripts and tests using port 0).
    #[arg(long, env = "COORDINATOR_ADDR_FILE")]
    pub addr_file: Option<PathBuf>,

    /// On SIGTERM: how long the running round and open requests may take to finish before the
    /// coordinator flushes and exits. Shorter than compose's stop_grace_period (10 s).
    #[arg(long, env = "COORDINATOR_SHUTDOWN_TIMEOUT", default_value = "8s", value_parser = positive_duration)]
    pub shutdown_timeout: Duration,

    /// Log lines as text or as JSON objects.
    #[arg(long, env = "COORDINATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub serve: ServeArgs,
}

fn tenant_limit(text: &str) -> Result<usize, String> {
    let max = storage::proto::MAX_TENANT_BYTES;
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of bytes from 1 to {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_limit_stays_within_what_counters_accept() {
        assert_eq!(tenant_limit("256"), Ok(256));
        assert_eq!(tenant_limit("1024"), Ok(storage::proto::MAX_TENANT_BYTES));
        for refused in ["1025", "0", "-1", "many"] {
            let error = tenant_limit(refused).unwrap_err();
            assert!(error.contains("from 1 to 1024"), "{refused}: {error}");
        }
    }
}
