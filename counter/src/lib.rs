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

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use anyhow::Context;

pub use config::Config;
use participant::Participant;
use registration::Registrar;

/// Runs the counter until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let auth = config.auth.load()?;
    auth.announce();
    let store = if config.slots {
        slots::claim(&config.data_dir, config.log_retention)?
    } else {
        storage::CounterStore::open(&config.data_dir, config.log_retention)
            .with_context(|| format!("cannot open data directory {}", config.data_dir.display()))?
    };
    let participant = Participant::new(store);
    let status = participant.status()?;
    tracing::info!(node_id = %status.node_id, cluster_id = status.cluster_id.as_deref().unwrap_or("none yet"),
        last_applied = status.last_applied,
        in_doubt = participant.store().prepared_txids()?.len(), "recovered");

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .context("cannot bind")?;
    let local = listener.local_addr()?;
    if let Some(path) = &config.addr_file {
        std::fs::write(path, local.to_string()).context("cannot write addr file")?;
    }
    tracing::info!(%local, "listening");

    // Finding the address to advertise may have to wait for the coordinator (see `advertised_addr`);
    // registration cannot happen before anyway, and the counter serves meanwhile.
    let registration = {
        let (participant, config, auth) = (participant.clone(), config.clone(), auth.clone());
        async move {
            let my_url = match &config.advertise_url {
                Some(url) => url.clone(),
                None => format!(
                    "http://{}",
                    advertised_addr(local, &config.coordinator_url).await
                ),
            };
            tracing::info!(url = %my_url, "advertising");
            Registrar::new(
                participant,
                &auth,
                config.coordinator_url.clone(),
                my_url,
                config.register_interval,
                config.call_timeout,
            )
            .run()
            .await
        }
    };
    tokio::spawn(registration);

    let app = http::router(participant, auth, config.max_body_bytes);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}

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
async fn route_to(unspecified: IpAddr, coordinator_url: &str) -> std::io::Result<IpAddr> {
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

/// Exit status for the `healthcheck` subcommand: 0 when the service at `addr` answers /health.
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
