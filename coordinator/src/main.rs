use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "coordinator", about = "Coordinator of the distributed counter")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: coordinator::Config,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 if the coordinator listening on --listen's port answers its health check (for containers).
    Healthcheck,
    /// Print the operator's view of the cluster as a table (each counter's state, last applied seq,
    /// lag, failed health checks, items/s), asked from the internal listener with the cluster token
    /// this configuration names.
    Status {
        /// The internal listener to ask; default: this host, --internal-listen's port.
        #[arg(long)]
        url: Option<String>,
        /// Print the view as JSON instead.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() {
    // Before anything else: see `shutdown_signal`.
    let shutdown = service::observe::shutdown_signal();
    let cli: Cli = service::serve::parse_with_prefix("COORDINATOR");
    match &cli.command {
        Some(Command::Healthcheck) => std::process::exit(
            service::serve::healthcheck(cli.config.listen.port(), storage::proto::paths::HEALTH)
                .await,
        ),
        Some(Command::Status { url, json }) => {
            let url = url.clone().unwrap_or_else(|| {
                format!("http://127.0.0.1:{}", cli.config.internal_listen.port())
            });
            if let Err(e) = coordinator::status::print(&cli.config, &url, *json).await {
                eprintln!("cannot read the cluster view from {url}: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        None => {}
    }
    service::observe::init_tracing(cli.config.log_format);
    tracing::info!(config = ?cli.config, "starting");
    if let Err(e) = coordinator::run(cli.config, shutdown).await {
        tracing::error!("coordinator failed: {e:#}");
        std::process::exit(1);
    }
}
