//! Coordinator of the distributed counter.
//!
//! It owns the public API ([`api`]), runs two-phase commit across the in-sync counters with group
//! commit ([`txn`]), keeps the registration table ([`registry`]) with health checks ([`health`]), and
//! brings lagging counters back by incremental catch-up ([`sync`]). Its decisions and table are in
//! sled ([`storage::CoordinatorStore`]): a restart recovers them and redoes unfinished phase 2 before
//! it serves, so counters never need to restart with it.
//!
//! It is a single process: while it is down, no write or read is served (counters keep their data and
//! re-register when it is back).

pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod health;
pub mod items;
pub mod registry;
pub mod sync;
pub mod txn;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;

pub use config::Config;

pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = storage::CoordinatorStore::open(&config.data_dir)
        .with_context(|| format!("cannot open data directory {}", config.data_dir.display()))?;
    let registry = Arc::new(registry::Registry::load(store.clone())?);
    let client = client::CounterClient::new(config.call_timeout, config.read_timeout);
    let txn = txn::TxnManager::start(
        store.clone(),
        registry.clone(),
        client.clone(),
        config.min_replicas,
        config.max_round_items,
    )?;
    txn.recover()
        .await
        .map_err(|e| anyhow::anyhow!("recovery failed: {e}"))?;
    tracing::info!(
        committed_seq = store.committed_seq()?,
        counters = registry.all().len(),
        "recovered"
    );

    let syncer = sync::Syncer {
        registry: registry.clone(),
        txn: txn.clone(),
        client: client.clone(),
        page_items: config.sync_page_items,
    };
    tokio::spawn(health::run(
        registry.clone(),
        client.clone(),
        syncer.clone(),
        config.health_interval,
        config.health_attempts,
    ));

    let app = api::App {
        txn,
        registry,
        client,
        syncer,
        limits: items::Limits {
            max_id_bytes: config.max_id_bytes,
            max_tenant_bytes: config.max_tenant_bytes,
            max_items: config.max_items_per_post,
        },
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .context("cannot bind")?;
    let local = listener.local_addr()?;
    if let Some(path) = &config.addr_file {
        std::fs::write(path, local.to_string()).context("cannot write addr file")?;
    }
    tracing::info!(%local, "listening");
    axum::serve(listener, api::router(app, config.max_body_bytes))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Exit status for the `healthcheck` subcommand: 0 when the service at `url` answers.
pub async fn healthcheck(url: &str) -> i32 {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(3))
        .build();
    let ok = match client {
        Ok(c) => matches!(c.get(url).send().await, Ok(r) if r.status().is_success()),
        Err(_) => false,
    };
    if ok {
        0
    } else {
        1
    }
}
