use clap::{Parser, Subcommand};

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
    Healthcheck,
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
        std::process::exit(counter::healthcheck(&url).await);
    }
    init_tracing();
    if let Err(e) = counter::run(cli.config, shutdown_signal()).await {
        tracing::error!("counter failed: {e:#}");
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
