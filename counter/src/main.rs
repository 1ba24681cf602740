use clap::{Parser, Subcommand};
use storage::proto::paths;

#[derive(Parser)]
#[command(name = "counter", about = "Counter replica of the distributed counter")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: counter::Config,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 if the counter listening on --listen's port answers its health check (for containers).
    Healthcheck {
        /// Check readiness instead (`/ready`): in sync with the coordinator since the start. Swarm
        /// holds a rolling update until the new task passes it (docker-stack.yml).
        #[arg(long)]
        ready: bool,
    },
}

// One runtime thread: a counter's request handlers do microseconds of work each (larger sled batches
// go to the blocking pool, the disk syncs to the flusher thread), and on a multi-threaded runtime the
// wake-ups of idle workers cost more CPU than that work (BENCHMARKS.md, "Fewer thread switches").
#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Before anything else: see `shutdown_signal`.
    let shutdown = service::observe::shutdown_signal();
    let cli: Cli = service::serve::parse_with_prefix("COUNTER");
    if let Some(Command::Healthcheck { ready }) = cli.command {
        let path = if ready { paths::READY } else { paths::HEALTH };
        std::process::exit(service::serve::healthcheck(cli.config.listen.port(), path).await);
    }
    service::observe::init_tracing(cli.config.log_format);
    tracing::info!(config = ?cli.config, "starting");
    if let Err(e) = counter::run(cli.config, shutdown).await {
        tracing::error!("counter failed: {e:#}");
        std::process::exit(1);
    }
}
