//! Coordinator of the distributed counter.
//!
//! It serves the public API and, on a listener of its own, the internal API that requires the cluster
//! token ([`api`]), runs two-phase commit across the in-sync counters with group
//! commit ([`txn`]), serves linearizable reads ([`reads`]), keeps the registration table ([`registry`]) with health checks ([`health`]), and
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
pub mod reads;
pub mod registry;
pub mod sync;
pub mod txn;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

pub use config::Config;

pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let auth = config.auth.load()?;
    auth.announce();
    let store = storage::CoordinatorStore::open(&config.data_dir)
        .with_context(|| format!("cannot open data directory {}", config.data_dir.display()))?;
    let cluster_id = store.cluster_id()?;
    let registry = Arc::new(registry::Registry::load(store.clone())?);
    let client =
        client::CounterClient::new(config.call_timeout, config.read_timeout, &auth, &cluster_id);
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
        %cluster_id,
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

    let reader = reads::Reader {
        registry: registry.clone(),
        txn: txn.clone(),
        client: client.clone(),
        wait: config.read_timeout,
    };
    let app = api::App {
        txn,
        registry,
        client,
        syncer,
        reader,
        limits: items::Limits {
            max_id_bytes: config.max_id_bytes,
            max_tenant_bytes: config.max_tenant_bytes,
            max_items: config.max_items_per_post,
        },
        auth,
    };
    let public = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot bind the public listener {}", config.listen))?;
    let internal = tokio::net::TcpListener::bind(config.internal_listen)
        .await
        .with_context(|| {
            format!(
                "cannot bind the internal listener {}",
                config.internal_listen
            )
        })?;
    let (public_addr, internal_addr) = (public.local_addr()?, internal.local_addr()?);
    if let Some(path) = &config.addr_file {
        std::fs::write(path, format!("{public_addr}\n{internal_addr}\n"))
            .context("cannot write addr file")?;
    }
    tracing::info!(public = %public_addr, internal = %internal_addr, "listening");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|&s| s).await;
    };
    let public = axum::serve(
        public,
        api::public_router(app.clone(), config.max_body_bytes)
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(until_stopped(stopped.clone()));
    let internal = axum::serve(
        internal,
        api::internal_router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(until_stopped(stopped));
    tokio::try_join!(public.into_future(), internal.into_future())?;
    Ok(())
}

/// The `cluster` subcommand: prints the operator's view from the internal listener of the
/// coordinator at `url`, authenticated with the configured token. Exit status 0 on success.
pub async fn print_cluster(config: &Config, url: &str) -> anyhow::Result<()> {
    let auth = config.auth.load()?;
    let view: serde_json::Value = auth
        .client_builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?
        .get(format!(
            "{}{}",
            url.trim_end_matches('/'),
            storage::proto::paths::CLUSTER
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    println!("{}", serde_json::to_string_pretty(&view)?);
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
