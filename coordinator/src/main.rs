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
    /// Print the operator's view of the cluster (counters, states, seq), asked from the internal
    /// listener with the cluster token this configuration names.
    Cluster {
        /// The internal listener to ask; default: this host, --internal-listen's port.
        #[arg(long)]
        url: Option<String>,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck) = cli.command {
        let url = format!(
            "http://127.0.0.1:{}{}",
            cli.config.listen.port(),
            storage::proto::paths::HEALTH
        );
        std::process::exit(coordinator::healthcheck(&url).await);
    }
    if let Some(Command::Cluster { url }) = &cli.command {
        let url = url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", cli.config.internal_listen.port()));
        if let Err(e) = coordinator::print_cluster(&cli.config, &url).await {
            eprintln!("cannot read the cluster view from {url}: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    init_tracing();
    if let Err(e) = coordinator::run(cli.config, shutdown_signal()).await {
        tracing::error!("coordinator failed: {e:#}");
        std::process::exit(1);
    }
}

fn init_tracing() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
