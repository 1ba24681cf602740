//! Test harness: a real cluster of `coordinator` and `counter` processes on 127.0.0.1 with ephemeral
//! ports and temporary data directories, which tests kill (SIGKILL) and restart on the same data.
//!
//! The binaries are the workspace's own, built with the `crash-points` feature (`make test` builds
//! them first). A process started with `DC_CRASH_AT=<point>` aborts at that point; see `storage::crash`.
//!
//! Every cluster gets a fresh random cluster token, given to each process in `CLUSTER_TOKEN` (a test
//! may override it for one process); the harness's own internal calls carry it too.

pub mod history;
pub mod sim;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use storage::proto::{ClusterView, CounterCount, CounterStatus, MemberState};

/// Where cargo put the binaries: next to this executable (a workspace binary such as `bench`), or one
/// level up (a test executable lives in `<target>/<profile>/deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [
        dir.join(name),
        dir.parent().map_or_else(PathBuf::new, |up| up.join(name)),
    ];
    let found = candidates.iter().find(|p| p.is_file()).cloned();
    found.unwrap_or_else(|| {
        panic!(
            "{name} is missing next to {}: run `make test`, or `cargo build --bins --features coordinator/crash-points,counter/crash-points` first",
            exe.display()
        )
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Coordinator,
    Counter,
}

/// One service process and everything needed to restart it on the same data.
pub struct Service {
    kind: Kind,
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
    addr_file: PathBuf,
    args: Vec<String>,
    /// Environment of every start, before a start's own (which may override it): `CLUSTER_TOKEN`
    /// and whatever a test sets for the rest of the process's life (a token rotation).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    pub addr: Option<SocketAddr>,
    /// The coordinator's internal listener (`None` for a counter).
    pub internal_addr: Option<SocketAddr>,
}

impl Service {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr.expect("service has been started"))
    }

    /// The coordinator's internal API.
    pub fn internal_url(&self) -> String {
        format!(
            "http://{}",
            self.internal_addr.expect("coordinator has been started")
        )
    }

    fn spawn(&mut self, env: &[(&str, &str)]) -> Result<()> {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let _ = std::fs::remove_file(&self.addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let binary = match self.kind {
            Kind::Coordinator => bin("coordinator"),
            Kind::Counter => bin("counter"),
        };
        let mut cmd = Command::new(binary);
        cmd.args(&self.args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--addr-file")
            .arg(&self.addr_file)
            .env("RUST_LOG", "info")
            .env_remove("DC_CRASH_AT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawn {}", self.name))?,
        );
        Ok(())
    }

    /// Waits until the service wrote its address (it is listening, and recovered).
    fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // Written whole once listening: the public address, then the coordinator's internal one.
            if let Ok(text) = std::fs::read_to_string(&self.addr_file) {
                let mut lines = text.lines().map(|l| l.trim().parse::<SocketAddr>());
                let want_internal = self.kind == Kind::Coordinator;
                match (lines.next(), lines.next()) {
                    (Some(Ok(addr)), Some(Ok(internal))) if want_internal => {
                        self.addr = Some(addr);
                        self.internal_addr = Some(internal);
                        return Ok(());
                    }
                    (Some(Ok(addr)), _) if !want_internal => {
                        self.addr = Some(addr);
                        return Ok(());
                    }
                    _ => {}
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited with {status} before listening:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not start listening:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no destructor, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: asks the process to stop gracefully; [`Service::wait_exit`] then waits for it.
    pub fn terminate(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits for the process to die on its own (a crash point); returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().context("not running")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit:\n{}", self.name, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

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
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let internal_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
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
        let coordinator = Service {
            kind: Kind::Coordinator,
            name: "coordinator".into(),
            data_dir: dir.path().join("coordinator"),
            log: dir.path().join("coordinator.log"),
            addr_file: dir.path().join("coordinator.addr"),
            args,
            env: vec![("CLUSTER_TOKEN".into(), token.clone())],
            child: None,
            addr: None,
            internal_addr: None,
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
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
        self.counters.push(Service {
            kind: Kind::Counter,
            name: name.to_owned(),
            data_dir: self.dir.path().join(name),
            log: self.dir.path().join(format!("{name}.log")),
            addr_file: self.dir.path().join(format!("{name}.addr")),
            args,
            env: vec![("CLUSTER_TOKEN".into(), self.token.clone())],
            child: None,
            addr: None,
            internal_addr: None,
        });
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

    /// POST /items; returns the status code and the JSON body.
    pub async fn post(&self, items: &[(&str, &str)]) -> Result<(u16, Value)> {
        let body: Vec<Value> = items
            .iter()
            .map(|(id, tenant)| serde_json::json!({"id": id, "tenant": tenant}))
            .collect();
        self.post_raw(&serde_json::to_string(&body)?).await
    }

    pub async fn post_raw(&self, body: &str) -> Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}/items", self.url()))
            .body(body.to_owned())
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
    }

    /// POST that must succeed.
    pub async fn post_ok(&self, items: &[(&str, &str)]) -> Result<()> {
        let (status, body) = self.post(items).await?;
        if status != 200 || body["status"] != "success" {
            bail!("POST answered {status} {body}");
        }
        Ok(())
    }

    /// GET /items/{tenant}/count with the tenant percent-encoded.
    pub async fn count(&self, tenant: &str) -> Result<u64> {
        let (status, body) = self
            .get(&format!("/items/{}/count", encode(tenant)))
            .await?;
        if status != 200 {
            bail!("count answered {status} {body}");
        }
        body["count"].as_u64().context("count is not a number")
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url()))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
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

    pub async fn counter_count(&self, i: usize, tenant: &str) -> Result<CounterCount> {
        let url = format!(
            "{}/internal/count/{}",
            self.counters[i].url(),
            encode(tenant)
        );
        self.internal_json(url).await
    }

    /// Waits until every running counter is in sync at the coordinator's committed seq and all agree
    /// on the counts of `tenants`; returns those counts.
    pub async fn converged(
        &mut self,
        tenants: &[String],
        timeout: Duration,
    ) -> Result<BTreeMap<String, u64>> {
        let running: Vec<usize> = (0..self.counters.len())
            .filter(|&i| self.counters[i].is_running())
            .collect();
        let view = self.wait_in_sync(running.len(), timeout).await?;
        let mut expected: Option<BTreeMap<String, u64>> = None;
        for &i in &running {
            let status = self.counter_status(i).await?;
            if status.last_applied != view.committed_seq {
                bail!(
                    "counter {i} applied {} of {}",
                    status.last_applied,
                    view.committed_seq
                );
            }
            let mut counts = BTreeMap::new();
            for t in tenants {
                counts.insert(t.clone(), self.counter_count(i, t).await?.count);
            }
            match &expected {
                None => expected = Some(counts),
                Some(e) if *e == counts => {}
                Some(e) => bail!("counter {i} counts {counts:?} differ from {e:?}"),
            }
        }
        expected.context("no running counter")
    }
}

impl Cluster {
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in std::iter::once(&self.coordinator).chain(&self.counters) {
                eprintln!("----- {} log (tail) -----\n{}", s.name, s.log_tail());
            }
        }
        self.coordinator.kill();
        for c in &mut self.counters {
            c.kill();
        }
    }
}

/// Percent-encodes a path segment.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Service {
    /// Sets (or replaces) a variable of the environment of every later start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Removes a variable from the environment of every later start.
    pub fn unset_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// The process id while it runs: lets a test tell a restart from the same process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The data directory the service is started on (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// A cloneable handle on the coordinator's public API, for client tasks running concurrently with a
/// test that holds the [`Cluster`] (the coordinator keeps its port across restarts).
#[derive(Clone)]
pub struct ApiClient {
    pub url: String,
    pub http: reqwest::Client,
}

impl ApiClient {
    /// POSTs `(id, tenant)` items, records the outcome in `history`, and returns it with the status
    /// (`None`: no answer; a refused connection is a failure, a reset or timeout an unknown outcome).
    pub async fn post_recorded(
        &self,
        history: &history::History,
        items: &[(String, String)],
    ) -> (history::Outcome, Option<u16>) {
        let body: Vec<Value> = items
            .iter()
            .map(|(id, tenant)| serde_json::json!({"id": id, "tenant": tenant}))
            .collect();
        let invoked = history.now();
        let status = match self
            .http
            .post(format!("{}/items", self.url))
            .json(&body)
            .send()
            .await
        {
            // The answer is only complete once its body arrived.
            Ok(resp) => {
                let status = resp.status().as_u16();
                resp.bytes().await.ok().map(|_| status)
            }
            // A refused connection never reached the coordinator: nothing was written.
            Err(e) if e.is_connect() => {
                history.write(invoked, items, history::Outcome::Failed);
                return (history::Outcome::Failed, None);
            }
            Err(_) => None,
        };
        let outcome = history::Outcome::from_status(status);
        history.write(invoked, items, outcome);
        (outcome, status)
    }

    /// `n` POSTs one after the other (so `n` rounds), each a batch of `size` items to a fresh tenant
    /// `<prefix>-<i>`; all must succeed.
    pub async fn write_acked(
        &self,
        history: &history::History,
        prefix: &str,
        n: usize,
        size: usize,
    ) {
        for i in 0..n {
            let (outcome, status) = self
                .post_recorded(history, &batch(&format!("{prefix}-{i}"), size))
                .await;
            assert_eq!(
                outcome,
                history::Outcome::Ok,
                "POST {prefix}-{i} answered {status:?}"
            );
        }
    }

    /// GET the count of `tenant`; an answered read is recorded in `history` and returned.
    pub async fn get_count_recorded(
        &self,
        history: &history::History,
        tenant: &str,
    ) -> Option<u64> {
        let invoked = history.now();
        let resp = self
            .http
            .get(format!("{}/items/{}/count", self.url, encode(tenant)))
            .send()
            .await
            .ok()?;
        if resp.status() != reqwest::StatusCode::OK {
            return None;
        }
        let body: Value = resp.json().await.ok()?;
        let count = body["count"].as_u64()?;
        history.read(invoked, tenant, count);
        Some(count)
    }
}

impl Cluster {
    /// A client with its own connection pool: take a new one after the coordinator restarted, since a
    /// pooled connection to the dead process can fail the next request (see
    /// [`Cluster::forget_connections`]).
    pub fn api_client(&self) -> ApiClient {
        ApiClient {
            url: self.url(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a plain HTTP client always builds"),
        }
    }
}

/// `n` items with distinct ids, all for `tenant`.
pub fn batch(tenant: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{tenant}/{i}"), tenant.to_owned()))
        .collect()
}

/// Concurrent writers, each POSTing batches to fresh tenants in a loop until stopped. Every POST is
/// recorded in the shared history; the completion time of every acknowledged one is kept too.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    acked_at: SharedVec<Instant>,
    outcomes: SharedVec<(history::Outcome, Option<u16>)>,
}

type SharedVec<T> = std::sync::Arc<std::sync::Mutex<Vec<T>>>;

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadStats {
    /// Every POST's outcome and status, in completion order.
    pub outcomes: Vec<(history::Outcome, Option<u16>)>,
    /// Completion times of the acknowledged POSTs, sorted.
    pub acked_at: Vec<Instant>,
}

impl LoadStats {
    pub fn count(&self, outcome: history::Outcome) -> usize {
        self.outcomes.iter().filter(|(o, _)| *o == outcome).count()
    }
}

impl Load {
    /// `writers` tasks, each POSTing `batch_size` items to a fresh tenant `<prefix>-<writer>-<n>` and
    /// pausing `pause` between POSTs (so a dead coordinator is not hammered in a tight loop). With
    /// `read_back`, each acknowledged POST is followed by a GET of its tenant's count, recorded in the
    /// history (a fresh read must count the whole batch).
    pub fn start(
        client: ApiClient,
        history: std::sync::Arc<history::History>,
        prefix: &str,
        writers: usize,
        batch_size: usize,
        pause: Duration,
        read_back: bool,
    ) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked_at = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let outcomes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..writers)
            .map(|w| {
                let (client, history, stop) = (client.clone(), history.clone(), stop.clone());
                let (acked_at, outcomes) = (acked_at.clone(), outcomes.clone());
                let prefix = format!("{prefix}-{w}");
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let items = batch(&format!("{prefix}-{n}"), batch_size);
                        let (outcome, status) = client.post_recorded(&history, &items).await;
                        if outcome == history::Outcome::Ok {
                            acked_at.lock().unwrap().push(Instant::now());
                            if read_back {
                                client.get_count_recorded(&history, &items[0].1).await;
                            }
                        }
                        outcomes.lock().unwrap().push((outcome, status));
                        n += 1;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            acked_at,
            outcomes,
        }
    }

    /// Number of POSTs acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked_at.lock().unwrap().len()
    }

    /// Stops the writers (each finishes its POST in flight) and returns what they saw.
    pub async fn stop(self) -> LoadStats {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("writer task panicked");
        }
        let mut acked_at = std::mem::take(&mut *self.acked_at.lock().unwrap());
        acked_at.sort();
        let outcomes = std::mem::take(&mut *self.outcomes.lock().unwrap());
        LoadStats { outcomes, acked_at }
    }
}

impl Cluster {
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
}

impl Cluster {
    /// Drops the HTTP client's pooled connections. After the coordinator was killed and restarted on
    /// the same port, a pooled keep-alive connection to the dead process can be picked for the next
    /// request before the client noticed it closed ("connection closed before message completed").
    pub fn forget_connections(&mut self) {
        self.http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client always builds");
    }
}

/// Copies a directory tree as it is now (a data directory, as a kill would leave it).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}
