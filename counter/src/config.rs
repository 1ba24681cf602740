//! Counter configuration: flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use service::observe::LogFormat;
use service::serve::{positive_duration, ServeArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "COUNTER_LISTEN", default_value = "0.0.0.0:9000")]
    pub listen: SocketAddr,

    /// URL the coordinator uses to reach this counter. Default: http://<listen ip>:<port>, where an
    /// unspecified listen ip is replaced by this host's address on the route to the coordinator.
    #[arg(long, env = "COUNTER_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// Base URL of the coordinator's internal listener (not its public API).
    #[arg(
        long,
        env = "COUNTER_COORDINATOR_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub coordinator_url: String,

    #[command(flatten)]
    pub auth: service::auth::AuthArgs,

    /// Data directory (a sled database).
    #[arg(long, env = "COUNTER_DATA_DIR", default_value = "data/counter")]
    pub data_dir: PathBuf,

    /// Treat --data-dir as a root of slot directories and claim the first one no live process holds,
    /// so scaled replicas sharing one volume each keep their own data across restarts.
    #[arg(long, env = "COUNTER_SLOTS")]
    pub slots: bool,

    /// Committed transactions kept in the log for incremental catch-up (0 keeps all).
    #[arg(long, env = "COUNTER_LOG_RETENTION", default_value_t = 100_000)]
    pub log_retention: u64,

    /// How often the counter re-registers (and resolves in-doubt transactions).
    #[arg(long, env = "COUNTER_REGISTER_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub register_interval: Duration,

    /// Timeout of each call to the coordinator.
    #[arg(long, env = "COUNTER_CALL_TIMEOUT", default_value = "2s", value_parser = positive_duration)]
    pub call_timeout: Duration,

    /// Largest request body accepted from the coordinator.
    #[arg(long, env = "COUNTER_MAX_BODY_BYTES", default_value_t = 256 << 20)]
    pub max_body_bytes: usize,

    /// Write the bound address here once listening (for scripts and tests using port 0).
    #[arg(long, env = "COUNTER_ADDR_FILE")]
    pub addr_file: Option<PathBuf>,

    /// On SIGTERM: how long the counter keeps serving COMMITs for the transactions it voted YES on
    /// (voting NO to new ones) before it flushes and exits. Shorter than compose's
    /// stop_grace_period (10 s).
    #[arg(long, env = "COUNTER_SHUTDOWN_TIMEOUT", default_value = "8s", value_parser = positive_duration)]
    pub shutdown_timeout: Duration,

    /// Log lines as text or as JSON objects.
    #[arg(long, env = "COUNTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub serve: ServeArgs,
}
