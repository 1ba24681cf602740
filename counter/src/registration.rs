//! The counter's calls to the coordinator: registration and in-doubt resolution.
//!
//! A counter registers when it starts and then every `register_interval`, retrying until the
//! coordinator answers, so a restarted or removed counter finds its way back without a restart of its
//! own; it looks its own address up again each time, so one that came back on another address (a
//! container disconnected from its network and connected again) is called there. Before each registration it asks the coordinator for the outcome of every transaction it still
//! holds prepared: after a crash those are in doubt, and only the coordinator may decide them.
//!
//! The answer says whether the coordinator counts the counter in sync; the first time it does, the
//! counter becomes ready ([`Participant::mark_ready`], `GET /ready`), and until then it registers
//! every half second.
//!
//! Every call carries the cluster token. The first registration that succeeds records the
//! coordinator's cluster id in the replica; from then on the counter names it when it registers and
//! refuses to serve a coordinator of another cluster (which refuses it too).

use std::net::SocketAddr;
use std::time::Duration;

use storage::proto::{paths, Outcome, OutcomeQuery, RegisterReply, RegisterRequest};

use crate::participant::Participant;

pub struct Registrar {
    participant: Participant,
    client: reqwest::Client,
    coordinator: String,
    advertised: Advertised,
    interval: Duration,
}

/// The address this counter registers, the URL the coordinator calls it at.
pub enum Advertised {
    /// Given (`--advertise-url`), or a listen address that is not unspecified.
    Fixed(String),
    /// This host's address on the route to the coordinator, with the port listened on: looked up again
    /// before every registration, since a container cut off its network and connected again may
    /// come back with another address.
    Route { local: SocketAddr, at: SocketAddr },
}

impl Advertised {
    pub fn url(&self) -> String {
        match self {
            Advertised::Fixed(url) => url.trim_end_matches('/').to_owned(),
            Advertised::Route { at, .. } => format!("http://{at}"),
        }
    }

    /// Looks the route up again; says when the address changed.
    async fn refresh(&mut self, coordinator: &str) {
        if let Advertised::Route { local, at } = self {
            if let Ok(ip) = crate::route_to(local.ip(), coordinator).await {
                let now = SocketAddr::new(ip, local.port());
                if now != *at {
                    tracing::info!(was = %at, now = %now, "this host's address changed; advertising the new one");
                    *at = now;
                }
            }
        }
    }
}

impl Registrar {
    pub fn new(
        participant: Participant,
        auth: &service::auth::Auth,
        coordinator: String,
        advertised: Advertised,
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        let client = auth
            .client_builder()
            .timeout(timeout)
            .build()
            .expect("a plain HTTP client always builds");
        Registrar {
            participant,
            client,
            coordinator: coordinator.trim_end_matches('/').to_owned(),
            advertised,
            interval,
        }
    }

    pub async fn run(mut self) {
        let mut registered = false;
        // The last failure logged: the same failure again is not logged again.
        let mut failing: Option<String> = None;
        loop {
            if self.participant.store().failure().is_some() {
                // Nothing to register while the database is unwritable: the process restarts once it
                // is writable again (see `service::reopen`), and registers then.
                tokio::time::sleep(self.interval).await;
                continue;
            }
            match self.round().await {
                Ok(()) if !registered => {
                    tracing::info!(coordinator = %self.coordinator, url = %self.advertised.url(), "registered");
                    registered = true;
                    failing = None;
                }
                Ok(()) => {}
                // The database failed meanwhile: said once, by the flusher.
                Err(_) if self.participant.store().failure().is_some() => {}
                Err(e) => {
                    let why = e.to_string();
                    if failing.as_ref() != Some(&why) {
                        tracing::warn!(error = %why, coordinator = %self.coordinator, "registration failed; will retry");
                    } else {
                        tracing::debug!(error = %why, "registration failed again");
                    }
                    failing = Some(why);
                    registered = false;
                }
            }
            // Retry sooner while the coordinator is unreachable, ask again soon while catching up,
            // so readiness follows the end of the catch-up closely, and while stopping, so that the
            // in-doubt records the stop waits for are resolved before its timeout, not one full
            // interval later.
            let wait = if registered && self.participant.ready() && !self.participant.stopping() {
                self.interval
            } else {
                self.interval.min(Duration::from_millis(500))
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn round(&mut self) -> anyhow::Result<()> {
        // Registration must not depend on it: an unregistered counter is never caught up.
        if let Err(e) = self.resolve_in_doubt().await {
            tracing::warn!(error = %e, "cannot resolve in-doubt transactions yet");
        }
        if self.participant.stopping() {
            // On its way out: the coordinator would only catch it up and put it back in the write set.
            return Ok(());
        }
        let status = self.participant.status()?;
        self.advertised.refresh(&self.coordinator).await;
        let req = RegisterRequest {
            node_id: status.node_id,
            url: self.advertised.url(),
            last_applied: status.last_applied,
            cluster_id: status.cluster_id,
        };
        let resp = self
            .client
            .post(format!("{}{}", self.coordinator, paths::REGISTER))
            .json(&req)
            .send()
            .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            // The coordinator's JSON error says why (a wrong token, another cluster).
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!("the coordinator answered {status}: {body}");
        }
        let reply: RegisterReply = resp.json().await?;
        // A coordinator of another cluster that accepted us anyway (it checks too) is still refused.
        self.participant.store().join_cluster(&reply.cluster_id)?;
        self.participant.store().durable().await?;
        if reply.in_sync && self.participant.mark_ready() {
            tracing::info!("in sync: ready");
        }
        Ok(())
    }

    async fn resolve_in_doubt(&self) -> anyhow::Result<()> {
        for txid in self.participant.store().prepared_txids()? {
            let outcome: Outcome = self
                .client
                .post(format!("{}{}", self.coordinator, paths::OUTCOME))
                .json(&OutcomeQuery { txid })
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            match outcome {
                Outcome::Committed { seq } => {
                    tracing::info!(txid, seq, "in-doubt transaction committed");
                    self.participant.resolve_committed(txid, seq).await?;
                }
                Outcome::Aborted => {
                    tracing::info!(txid, "in-doubt transaction aborted");
                    self.participant.rollback(txid).await?;
                }
                Outcome::Pending => {}
            }
        }
        Ok(())
    }
}
