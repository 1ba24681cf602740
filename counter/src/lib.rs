//! Counter service: one full replica of the counts and a participant in the coordinator's 2PC.
//!
//! On start it recovers its sled state from its own data directory ([`slots`] claims one under a shared
//! root), serves the internal API ([`http`]) whose logic is in [`participant`], and registers with the
//! coordinator ([`registration`]), resolving transactions left in doubt by a crash. It decides no
//! transaction on its own and serves reads only because the coordinator sends it reads when it holds
//! every committed transaction.

pub mod config;
pub mod http;
pub mod participant;
pub mod registration;
pub mod slots;

use std::future::{Future, IntoFuture};
use std::net::{IpAddr, SocketAddr};

use anyhow::Context;

pub use config::Config;
use participant::Participant;
use registration::{Advertised, Registrar};

/// Runs the counter until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let auth = service::start(&config.auth)?;
    let store = if config.slots {
        slots::claim(&config.data_dir, config.log_retention)?
    } else {
        storage::CounterStore::open(&config.data_dir, config.log_retention)
            .with_context(|| format!("cannot open data directory {}", config.data_dir.display()))?
    };
    let participant = Participant::new(store);
    let status = participant.status()?;
    tracing::info!(node_id = %status.node_id, cluster_id = status.cluster_id.as_deref().unwrap_or("none yet"),
        last_applied = status.last_applied, in_doubt = status.prepared, "recovered");

    let [listener] =
        service::serve::bind([("internal", config.listen)], config.addr_file.as_deref()).await?;
    let local = listener.local_addr()?;

    // Finding the address to advertise may have to wait for the coordinator (see `advertised_addr`);
    // registration cannot happen before anyway, and the counter serves meanwhile.
    let registration = {
        let (participant, config, auth) = (participant.clone(), config.clone(), auth.clone());
        async move {
            let advertised = match &config.advertise_url {
                Some(url) => Advertised::Fixed(url.clone()),
                None if !local.ip().is_unspecified() => {
                    Advertised::Fixed(format!("http://{local}"))
                }
                None => Advertised::Route {
                    local,
                    at: advertised_addr(local, &config.coordinator_url).await,
                },
            };
            tracing::info!(url = %advertised.url(), "advertising");
            Registrar::new(
                participant,
                &auth,
                config.coordinator_url.clone(),
                advertised,
                config.register_interval,
                config.call_timeout,
            )
            .run()
            .await
        }
    };
    tokio::spawn(registration);

    // On the signal: stop voting YES, finish what was voted YES on (COMMIT and ROLLBACK are still
    // served), then stop serving, flush and exit.
    let settled = {
        let (participant, timeout) = (participant.clone(), config.shutdown_timeout);
        async move {
            shutdown.await;
            participant.stop_voting();
            tracing::info!("shutting down: voting NO from now on, finishing prepared transactions");
            let deadline = tokio::time::Instant::now() + timeout;
            while !participant.settled().unwrap_or(true) {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(?timeout, "transactions still in doubt at the shutdown timeout; the coordinator resolves them after a restart");
                    break;
                }
                tokio::time::sleep(SETTLE_POLL).await;
            }
        }
    };
    let app = service::serve::protect(
        http::router(participant.clone(), auth, config.max_body_bytes),
        &config.serve,
    )
    .layer(axum::middleware::from_fn(service::observe::track_http));
    let serving = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(settled);
    // A failed flush: every vote and catch-up call fails and the status answers the failure, so the
    // coordinator takes this replica out of the write and read sets; once the disk takes writes again
    // the process restarts in place, recovers what is on disk, registers and is caught up.
    let reopen = {
        let store = participant.store().clone();
        let dir = store.dir().to_path_buf();
        service::reopen::when_writable(async move { store.failed().await.reason }, dir)
    };
    tokio::select! {
        served = serving.into_future() => served?,
        e = reopen => anyhow::bail!("cannot restart to reopen the database: {e}"),
    }
    participant.store().durable().await?;
    tracing::info!("stopped");
    Ok(())
}

/// How often a stopping counter checks whether its prepared transactions are decided.
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// The address others reach us at: the listen address, or when it is unspecified (0.0.0.0), this
/// host's address on the route to the coordinator (a UDP "connect" sends nothing, it only routes).
///
/// The route needs the coordinator's name to resolve, which under docker compose it does not while
/// the coordinator's container is down. Falling back to some address would register a URL nobody
/// else can reach (127.0.0.1 is the coordinator itself), so this waits until the route is known.
async fn advertised_addr(local: SocketAddr, coordinator_url: &str) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    let mut warned = false;
    loop {
        match route_to(local.ip(), coordinator_url).await {
            Ok(ip) => return SocketAddr::new(ip, local.port()),
            Err(e) if !warned => {
                tracing::warn!(error = %e, coordinator = coordinator_url,
                    "no route to the coordinator yet; will advertise this host's address on it");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// This host's address on the route to the coordinator, from a socket of the family of `unspecified`.
pub(crate) async fn route_to(
    unspecified: IpAddr,
    coordinator_url: &str,
) -> std::io::Result<IpAddr> {
    let host = coordinator_host(coordinator_url).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no host in the coordinator URL",
        )
    })?;
    let socket = tokio::net::UdpSocket::bind((unspecified, 0)).await?;
    socket.connect(host).await?;
    Ok(socket.local_addr()?.ip())
}

fn coordinator_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    Some(if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    })
}
