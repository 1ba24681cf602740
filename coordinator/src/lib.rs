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
pub mod counters;
pub mod error;
pub mod health;
pub mod items;
pub mod openapi;
pub mod reads;
pub mod registry;
pub mod status;
pub mod sync;
pub mod txn;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

pub use config::Config;

/// Decisions pruned at most per health interval: a long backlog (a counter that held the
/// watermark back) goes over a few intervals instead of holding a thread for long.
const PRUNE_BATCH: usize = 20_000;

pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let auth = service::start(&config.auth)?;
    let store = storage::CoordinatorStore::open(&config.data_dir)
        .with_context(|| format!("cannot open data directory {}", config.data_dir.display()))?;
    let cluster_id = store.cluster_id()?;
    let registry = Arc::new(registry::Registry::load(store.clone())?);
    let client: counters::SharedCounters = Arc::new(client::CounterClient::new(
        config.call_timeout,
        config.read_timeout,
        &auth,
        &cluster_id,
    ));
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
        lock_budget: config.call_timeout,
    };
    // The decision log stays bounded: every health interval, what every counter made durable goes.
    {
        let (txn, interval) = (txn.clone(), config.health_interval);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                if txn.store().failure().is_some() {
                    // Unwritable until the restart that reopens it (see `service::reopen`).
                    continue;
                }
                let txn = txn.clone();
                match tokio::task::spawn_blocking(move || txn.prune_decisions(PRUNE_BATCH)).await {
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot prune decisions"),
                    Err(e) => tracing::error!(error = %e, "the pruning task failed"),
                    Ok(Ok(_)) => {}
                }
            }
        });
    }
    tokio::spawn(health::run(
        registry.clone(),
        client.clone(),
        syncer.clone(),
        config.health_interval,
        config.health_attempts,
    ));

    let reader = reads::Reader::new(
        registry.clone(),
        txn.clone(),
        client.clone(),
        config.read_timeout,
    );
    let app = api::App {
        txn,
        registry,
        syncer,
        reader,
        limits: items::Limits {
            max_id_bytes: config.max_id_bytes,
            max_tenant_bytes: config.max_tenant_bytes,
            max_items: config.max_items_per_post,
        },
        auth,
    };
    let [public, internal] = service::serve::bind(
        [
            ("public", config.listen),
            ("internal", config.internal_listen),
        ],
        config.addr_file.as_deref(),
    )
    .await?;

    // Set on the signal: the one deadline for the whole shutdown (open requests, the running round,
    // the final flush), so that it ends within the container's grace period.
    let (stop, stopped) = tokio::sync::watch::channel(None::<tokio::time::Instant>);
    let timeout = config.shutdown_timeout;
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!(
            "shutting down: no new connections; finishing open requests and the running round"
        );
        let _ = stop.send(Some(tokio::time::Instant::now() + timeout));
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>| async move {
        match rx.wait_for(Option::is_some).await {
            Ok(deadline) => *deadline,
            Err(_) => None,
        }
    };
    let public_app = service::serve::protect(
        api::public_router(app.clone(), config.max_body_bytes),
        &config.serve,
    )
    .layer(axum::middleware::from_fn(service::observe::track_http));
    let internal_app = service::serve::protect(api::internal_router(app.clone()), &config.serve)
        .layer(axum::middleware::from_fn(service::observe::track_http));
    let (stopped_public, stopped_internal) = (stopped.clone(), stopped.clone());
    let public = axum::serve(
        public,
        public_app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        until_stopped(stopped_public).await;
    });
    let internal = axum::serve(
        internal,
        internal_app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        until_stopped(stopped_internal).await;
    });

    // Once stopped, open requests get `shutdown_timeout` to finish; then the connections are dropped.
    let serving = async { tokio::try_join!(public.into_future(), internal.into_future()) };
    let overdue = async {
        if let Some(deadline) = until_stopped(stopped.clone()).await {
            tokio::time::sleep_until(deadline).await;
        }
    };
    // A failed flush ends in a restart in place once the disk takes writes again; reads go on
    // meanwhile (they need no disk here), writes are refused.
    let reopen = {
        let store = app.txn.store().clone();
        let failed = async move { store.failed().await.reason };
        service::reopen::when_writable(failed, config.data_dir.clone())
    };
    tokio::select! {
        served = serving => { served?; }
        () = overdue => tracing::warn!(?timeout,
            "requests still open at the shutdown timeout; closing them"),
        e = reopen => anyhow::bail!("cannot restart to reopen the database: {e}"),
    }
    let deadline = stopped
        .borrow()
        .unwrap_or_else(|| tokio::time::Instant::now() + timeout);
    // No round is left half-done by the exit, and everything decided is on disk.
    app.txn.quiesce(deadline).await;
    tokio::time::timeout_at(deadline, app.txn.store().durable())
        .await
        .map_err(|_| {
            anyhow::anyhow!("the store could not be flushed before the shutdown timeout")
        })??;
    tracing::info!("stopped");
    Ok(())
}
