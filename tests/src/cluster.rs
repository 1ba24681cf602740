//! A test cluster ([`Cluster`]): a coordinator and counters as real processes on 127.0.0.1 with
//! ephemeral ports and temporary data directories; what the coordinator and each counter report on
//! their internal status endpoints; convergence.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use storage::proto::{
    paths, ClusterView, CounterStatus, Counts, CountsRequest, MemberState, MAX_COUNTS_TENANTS,
};

use crate::client::http_client;
use crate::history;
use crate::process::{Kind, Service};

/// Knobs of a test cluster. Defaults are tuned for fast tests, not production.
#[derive(Clone, Debug)]
pub struct Options {
    pub counters: usize,
    pub health_interval: &'static str,
    pub register_interval: &'static str,
    pub log_retention: u64,
    pub coordinator_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            counters: 3,
            health_interval: "300ms",
            register_interval: "300ms",
            log_retention: 100_000,
            coordinator_args: Vec::new(),
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub coordinator: Service,
    pub counters: Vec<Service>,
    pub options: Options,
    pub http: reqwest::Client,
    /// This cluster's token (every process gets it in `CLUSTER_TOKEN`).
    pub token: String,
}

/// A port of 127.0.0.1 that is free now (for a process that must know its port before it starts).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A fresh cluster token: 32 random hex digits.
pub fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Cluster {
    /// Starts a coordinator and `options.counters` counters and waits until all are in sync.
    pub async fn start(options: Options) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        // The coordinator keeps its ports across restarts, as clients and counters know it by URL.
        let (port, internal_port) = (free_port()?, free_port()?);
        let mut args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--internal-listen".to_owned(),
            format!("127.0.0.1:{internal_port}"),
            "--health-interval".to_owned(),
            options.health_interval.to_owned(),
        ];
        let token = random_token();
        args.extend(options.coordinator_args.iter().cloned());
        let coordinator = Service::new(Kind::Coordinator, "coordinator", dir.path(), args, &token);
        let http = http_client();
        let mut cluster = Cluster {
            dir,
            coordinator,
            counters: Vec::new(),
            options,
            http,
            token,
        };
        cluster.start_coordinator(&[]).await?;
        for _ in 0..cluster.options.counters {
            cluster.add_counter().await?;
        }
        cluster
            .wait_in_sync(cluster.options.counters, START_TIMEOUT)
            .await?;
        Ok(cluster)
    }

    pub fn url(&self) -> String {
        self.coordinator.url()
    }

    /// Starts (or restarts) the coordinator with extra environment, e.g. a crash point.
    pub async fn start_coordinator(&mut self, env: &[(&str, &str)]) -> Result<()> {
        // Pooled connections to a previous coordinator process would fail the next request.
        self.forget_connections();
        self.coordinator.spawn(env)?;
        self.coordinator.wait_listening(START_TIMEOUT)
    }

    pub async fn restart_coordinator(&mut self) -> Result<()> {
        self.coordinator.kill();
        self.start_coordinator(&[]).await
    }

    /// Adds a new counter with its own data directory and starts it; returns its index.
    pub async fn add_counter(&mut self) -> Result<usize> {
        let i = self.define_counter(&format!("counter-{}", self.counters.len()));
        self.start_counter(i, &[]).await?;
        Ok(i)
    }

    /// Adds a counter on the data directory `<cluster dir>/<name>` (which a test may fill first)
    /// without starting it; returns its index.
    pub fn define_counter(&mut self, name: &str) -> usize {
        let args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--coordinator-url".to_owned(),
            self.coordinator.internal_url(),
            "--register-interval".to_owned(),
            self.options.register_interval.to_owned(),
            "--log-retention".to_owned(),
            self.options.log_retention.to_string(),
        ];
        let counter = Service::new(Kind::Counter, name, self.dir.path(), args, &self.token);
        self.counters.push(counter);
        self.counters.len() - 1
    }

    /// Starts (or restarts) counter `i` on its data directory, with extra environment.
    pub async fn start_counter(&mut self, i: usize, env: &[(&str, &str)]) -> Result<()> {
        self.counters[i].spawn(env)?;
        self.counters[i].wait_listening(START_TIMEOUT)
    }

    pub async fn restart_counter(&mut self, i: usize) -> Result<()> {
        self.counters[i].kill();
        self.start_counter(i, &[]).await
    }

    /// An internal call, with this cluster's token.
    pub fn internal(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token)
    }

    async fn internal_json<T: serde::de::DeserializeOwned>(&self, url: String) -> Result<T> {
        let resp = self
            .internal(reqwest::Method::GET, url.clone())
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            bail!("GET {url} answered {status}: {}", resp.text().await?);
        }
        Ok(resp.json().await?)
    }

    /// The operator's view, from the coordinator's internal listener.
    pub async fn view(&self) -> Result<ClusterView> {
        let url = format!("{}/internal/cluster", self.coordinator.internal_url());
        self.internal_json(url).await
    }

    /// Waits until at least `n` counters are in sync.
    pub async fn wait_in_sync(&self, n: usize, timeout: Duration) -> Result<ClusterView> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(view) = self.view().await {
                if view
                    .counters
                    .iter()
                    .filter(|c| c.state == MemberState::InSync)
                    .count()
                    >= n
                {
                    return Ok(view);
                }
                if Instant::now() > deadline {
                    bail!("{n} counters not in sync in {timeout:?}: {view:?}");
                }
            } else if Instant::now() > deadline {
                bail!("coordinator not answering");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter's own view, bypassing the coordinator.
    pub async fn counter_status(&self, i: usize) -> Result<CounterStatus> {
        let url = format!("{}/internal/status", self.counters[i].url());
        self.internal_json(url).await
    }

    /// Counter `i`'s own counts of `tenants` (at most `MAX_COUNTS_TENANTS`), bypassing the coordinator.
    pub async fn counter_counts(&self, i: usize, tenants: &[String]) -> Result<Counts> {
        let url = format!("{}{}", self.counters[i].url(), paths::COUNTS);
        let resp = self
            .internal(reqwest::Method::POST, url.clone())
            .json(&CountsRequest {
                tenants: tenants.to_vec(),
            })
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            bail!("POST {url} answered {status}: {}", resp.text().await?);
        }
        Ok(resp.json().await?)
    }

    /// Counter `i`'s own count of `tenant`.
    pub async fn counter_count(&self, i: usize, tenant: &str) -> Result<u64> {
        let answer = self.counter_counts(i, &[tenant.to_owned()]).await?;
        answer
            .counts
            .first()
            .copied()
            .context("no count in the answer")
    }

    /// Waits until counter `i` reports every commit up to `seq` durable (a COMMIT is flushed after its
    /// acknowledgement, by the next flush), so that a kill loses none of them.
    pub async fn wait_durable(&self, i: usize, seq: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let durable = self.counter_status(i).await?.durable;
            if durable >= seq {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("counter {i} made {durable} of {seq} commits durable in {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running counter in the write set has applied the committed seq; returns that
    /// seq (a counter that does not answer is taken as not running).
    /// A client is answered at the decision, so a round's COMMITs may still be on their way after its
    /// POST returned: a member behind the committed seq is waited for, until `timeout`.
    pub async fn applied_everywhere(&self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.view().await?;
            let mut behind = None;
            for (i, counter) in self.counters.iter().enumerate() {
                let member = view.counters.iter().find(|m| m.url == counter.url());
                if member.is_none_or(|m| m.state != MemberState::InSync) {
                    continue;
                }
                let Ok(status) = self.counter_status(i).await else {
                    continue;
                };
                let applied = status.last_applied;
                if applied != view.committed_seq {
                    behind = Some(format!(
                        "counter {i} applied {applied} of {}",
                        view.committed_seq
                    ));
                }
            }
            match behind {
                None => return Ok(view.committed_seq),
                Some(why) if Instant::now() > deadline => bail!(why),
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until every running counter is in sync at the coordinator's committed seq and all agree
    /// on the counts of `tenants`; returns those counts.
    pub async fn converged(
        &mut self,
        tenants: &[String],
        timeout: Duration,
    ) -> Result<BTreeMap<String, u64>> {
        let deadline = Instant::now() + timeout;
        let running: Vec<usize> = (0..self.counters.len())
            .filter(|&i| self.counters[i].is_running())
            .collect();
        self.wait_in_sync(running.len(), timeout).await?;
        self.applied_everywhere(deadline.saturating_duration_since(Instant::now()))
            .await?;
        let mut expected: Option<BTreeMap<String, u64>> = None;
        for &i in &running {
            let mut counts = BTreeMap::new();
            for chunk in tenants.chunks(MAX_COUNTS_TENANTS) {
                let answer = self.counter_counts(i, chunk).await?;
                counts.extend(chunk.iter().cloned().zip(answer.counts));
            }
            match &expected {
                None => expected = Some(counts),
                Some(e) if *e == counts => {}
                Some(e) => bail!("counter {i} counts {counts:?} differ from {e:?}"),
            }
        }
        expected.context("no running counter")
    }

    /// Waits until every running counter is in sync and all agree at the committed seq, then checks
    /// `history` against the final counts (panicking on a violation). Returns the counts.
    pub async fn converge_and_check(
        &mut self,
        history: &history::History,
        timeout: Duration,
    ) -> BTreeMap<String, u64> {
        let tenants: Vec<String> = history.tenants().into_iter().collect();
        let counts = self
            .converged(&tenants, timeout)
            .await
            .expect("cluster did not converge");
        let report = history.check(&counts);
        eprintln!("{report}");
        assert!(report.ok(), "{report}");
        counts
    }

    /// Waits until counter `i`, as it runs now (at its current URL), is in sync at the coordinator;
    /// returns the coordinator's view of it. Unlike [`Cluster::wait_in_sync`], a stale entry left by
    /// an earlier process of the same counter does not count.
    pub async fn wait_counter_in_sync(
        &self,
        i: usize,
        timeout: Duration,
    ) -> Result<storage::proto::CounterView> {
        let url = self.counters[i].url();
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.view().await;
            if let Ok(view) = &view {
                if let Some(c) = view
                    .counters
                    .iter()
                    .find(|c| c.url == url && c.state == MemberState::InSync)
                {
                    return Ok(c.clone());
                }
            }
            if Instant::now() > deadline {
                bail!("counter {i} at {url} not in sync in {timeout:?}: {view:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drops the HTTP client's pooled connections. After the coordinator was killed and restarted on
    /// the same port, a pooled keep-alive connection to the dead process can be picked for the next
    /// request before the client noticed it closed ("connection closed before message completed").
    pub fn forget_connections(&mut self) {
        self.http = http_client();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in std::iter::once(&self.coordinator).chain(&self.counters) {
                eprintln!("----- {} log (tail) -----\n{}", s.name(), s.log_tail());
            }
        }
        self.coordinator.kill();
        for c in &mut self.counters {
            c.kill();
        }
    }
}
