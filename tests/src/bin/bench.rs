//! `make bench`: throughput, latency and cost of a fresh local release cluster of 3 and of 5
//! counters (everything durable, data on disk), next to a durable Redis where `redis-server` is
//! installed; then the write outage when a counter is SIGKILLed under load. Prints one table, a few
//! summary lines, and exits non-zero when a request failed on the healthy cluster or a final count
//! differs from what was acknowledged. BENCHMARKS.md describes every row and the targets.
//!
//! - `BENCH_SECS` (default 10): seconds per run of a cell;
//! - `BENCH_RUNS` (default 3): runs per cell, of which the median is reported;
//! - `BENCH_BIG_TENANT` (default 1,000,000): items of the big tenant read by the last row (a smoke
//!   run may shrink it).
//!
//! The services' data and Redis's go under the system's temporary directory (`TMPDIR`; `make bench`
//! points it at `target/bench-tmp`, on the disk the workspace is on).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dc_tests::{Cluster, Options};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Cluster sizes measured, one group of rows each.
const CLUSTER_SIZES: [usize; 2] = [3, 5];
/// Items of the small tenant read by the first GET row.
const SMALL_TENANT: u64 = 1_000;
/// Items per POST (or SADD) and connections of the bulk load of the two read tenants.
const LOAD_BATCH: usize = 5_000;
const LOAD_CONNS: usize = 4;
/// The tenants each run of a write cell spreads its writes over (connection `c` writes to `c % 8`).
const WRITE_TENANTS: usize = 8;
/// Members per SADD in the Redis counterpart of the 100-item POST row.
const REDIS_BATCH: usize = 10;
/// The kill-outage section: 3 counters, this many connections, items per POST.
const OUTAGE_CONNS: usize = 8;
const OUTAGE_BATCH: usize = 10;
/// Issue #10's targets for the resources (informational).
const COUNTER_RSS_TARGET_MB: f64 = 200.0;
const DISK_TARGET_BYTES_PER_ITEM: f64 = 100.0;
const COORDINATOR_CPU_GROWTH_TARGET: f64 = 0.20;
const BIG_VS_SMALL_TARGET: f64 = 0.10;

// ---------------------------------------------------------------------------------------------
// What is measured

#[derive(Clone, Copy)]
enum Op {
    /// POST `items` fresh ids per request; Redis: SADD of `redis_items` fresh members.
    Write { items: usize, redis_items: usize },
    /// GET the count of the big (1M) or the small (1k) tenant; Redis: SCARD.
    Count { big: bool },
}

/// One row of the table: an operation at a number of connections, and the issue's targets for it.
struct Cell {
    op: Op,
    conns: usize,
    goals: &'static [Goal],
}

const READ_GOALS: &[Goal] = &[Goal::ReqPerSec(30_000.0), Goal::P99Ms(5.0)];

const CELLS: [Cell; 6] = [
    Cell {
        op: Op::Write {
            items: 1,
            redis_items: 1,
        },
        conns: 1,
        goals: &[Goal::P50Ms(1.5)],
    },
    Cell {
        op: Op::Write {
            items: 1,
            redis_items: 1,
        },
        conns: 16,
        goals: &[],
    },
    Cell {
        op: Op::Write {
            items: 1,
            redis_items: 1,
        },
        conns: 64,
        goals: &[Goal::ReqPerSec(15_000.0), Goal::P99Ms(20.0)],
    },
    Cell {
        op: Op::Write {
            items: 100,
            redis_items: REDIS_BATCH,
        },
        conns: 16,
        goals: &[Goal::ItemsPerSec(80_000.0)],
    },
    Cell {
        op: Op::Count { big: false },
        conns: 64,
        goals: READ_GOALS,
    },
    Cell {
        op: Op::Count { big: true },
        conns: 64,
        goals: READ_GOALS,
    },
];

impl Cell {
    fn label(&self, big: u64) -> String {
        match self.op {
            Op::Write { items, .. } => {
                let s = if items == 1 { "" } else { "s" };
                format!("POST {items} item{s} x {}", self.conns)
            }
            Op::Count { big: is_big } => {
                let size = if is_big { big } else { SMALL_TENANT };
                format!("GET {}-item tenant x {}", short(size as f64), self.conns)
            }
        }
    }
}

/// A target of issue #10 for one row: printed next to it, never asserted.
#[derive(Clone, Copy)]
enum Goal {
    ReqPerSec(f64),
    ItemsPerSec(f64),
    P50Ms(f64),
    P99Ms(f64),
}

impl Goal {
    fn describe(&self) -> String {
        match *self {
            Goal::ReqPerSec(v) => format!(">={}/s", short(v)),
            Goal::ItemsPerSec(v) => format!(">={} items/s", short(v)),
            Goal::P50Ms(v) => format!("p50<={v}ms"),
            Goal::P99Ms(v) => format!("p99<={v}ms"),
        }
    }

    fn met(&self, f: &Figures) -> bool {
        match *self {
            Goal::ReqPerSec(v) => f.req_s >= v,
            Goal::ItemsPerSec(v) => f.items_s >= v,
            Goal::P50Ms(v) => f.p50_ms <= v,
            Goal::P99Ms(v) => f.p99_ms <= v,
        }
    }
}

struct Settings {
    secs: u64,
    runs: usize,
    big: u64,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Clients: one keep-alive connection each, to the coordinator or to Redis

/// What a connection talks to.
#[derive(Clone)]
enum Backend {
    /// The coordinator's public API at this base URL.
    Http(String),
    Redis(SocketAddr),
}

enum Conn {
    /// A client of its own, so one connection: its pool holds the single keep-alive connection.
    Http {
        client: reqwest::Client,
        url: String,
    },
    Redis(Resp),
}

impl Backend {
    /// A connection, opened before any clock starts.
    async fn connect(&self) -> Result<Conn> {
        match self {
            Backend::Http(url) => {
                let client = dc_tests::http_client();
                client
                    .get(format!("{url}/health"))
                    .send()
                    .await?
                    .bytes()
                    .await?;
                Ok(Conn::Http {
                    client,
                    url: url.clone(),
                })
            }
            Backend::Redis(addr) => {
                let mut resp = Resp {
                    addr: *addr,
                    stream: None,
                };
                resp.call(&["PING"]).await?;
                Ok(Conn::Redis(resp))
            }
        }
    }
}

impl Conn {
    /// Adds the fresh `ids` to `tenant`; `Ok` once acknowledged.
    async fn write(&mut self, tenant: &str, ids: &[String]) -> Result<()> {
        match self {
            Conn::Http { client, url } => {
                // Ids and tenants are plain ASCII: no JSON escaping needed.
                let mut body = String::with_capacity(ids.len() * (tenant.len() + 32) + 2);
                body.push('[');
                for (i, id) in ids.iter().enumerate() {
                    let comma = if i == 0 { "" } else { "," };
                    let _ = write!(body, r#"{comma}{{"id":"{id}","tenant":"{tenant}"}}"#);
                }
                body.push(']');
                let resp = client
                    .post(format!("{url}/items"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status();
                let text = resp.bytes().await?;
                if status != reqwest::StatusCode::OK {
                    bail!("POST answered {status}: {}", String::from_utf8_lossy(&text));
                }
                Ok(())
            }
            Conn::Redis(resp) => {
                let mut args = vec!["SADD", tenant];
                args.extend(ids.iter().map(String::as_str));
                let added: usize = resp.call(&args).await?.parse()?;
                if added != ids.len() {
                    bail!("SADD added {added} of {} fresh members", ids.len());
                }
                Ok(())
            }
        }
    }

    /// The number of distinct items of `tenant`.
    async fn count(&mut self, tenant: &str) -> Result<u64> {
        match self {
            Conn::Http { client, url } => {
                let resp = client
                    .get(format!("{url}/items/{}/count", dc_tests::encode(tenant)))
                    .send()
                    .await?;
                let status = resp.status();
                let body: serde_json::Value = resp.json().await?;
                if status != reqwest::StatusCode::OK {
                    bail!("GET count answered {status}: {body}");
                }
                body["count"].as_u64().context("count is not a number")
            }
            Conn::Redis(resp) => Ok(resp.call(&["SCARD", tenant]).await?.parse()?),
        }
    }
}

/// A minimal RESP client: one request at a time, integer and status replies only.
struct Resp {
    addr: SocketAddr,
    /// `None` after an error: the next call reconnects.
    stream: Option<BufStream<TcpStream>>,
}

impl Resp {
    async fn call(&mut self, args: &[&str]) -> Result<String> {
        let reply = self.try_call(args).await;
        if reply.is_err() {
            self.stream = None;
        }
        reply
    }

    async fn try_call(&mut self, args: &[&str]) -> Result<String> {
        if self.stream.is_none() {
            let tcp = TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            self.stream = Some(BufStream::new(tcp));
        }
        let stream = self.stream.as_mut().expect("connected above");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            let _ = write!(request, "${}\r\n{arg}\r\n", arg.len());
        }
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            bail!("redis closed the connection");
        }
        let line = line.trim_end();
        if let Some(value) = line.strip_prefix(':').or_else(|| line.strip_prefix('+')) {
            Ok(value.to_owned())
        } else {
            bail!("redis answered {line:?}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator

/// What every connection of a load does, request after request.
#[derive(Clone)]
enum Work {
    /// Requests of `items` fresh ids each; connection `c` writes to tenant `<prefix>-<c % tenants>`.
    /// With a budget, the connections stop once that many items were sent (a bulk load).
    Write {
        prefix: String,
        items: usize,
        tenants: usize,
        budget: Option<Arc<AtomicU64>>,
    },
    /// Reads of `tenant`'s count, each of which must answer `expect`.
    Count { tenant: String, expect: u64 },
}

/// Items written per tenant: acknowledged, and sent without an answer either way.
#[derive(Clone, Copy, Default, Debug)]
struct Written {
    acked: u64,
    unknown: u64,
}

type Ledger = BTreeMap<String, Written>;

fn merge_ledger(into: &mut Ledger, from: Ledger) {
    for (tenant, w) in from {
        let e = into.entry(tenant).or_default();
        e.acked += w.acked;
        e.unknown += w.unknown;
    }
}

/// What connections saw: latencies of acknowledged requests (µs), counts, written items.
struct Tally {
    latency_us: Histogram<u64>,
    requests: u64,
    items: u64,
    failures: u64,
    first_error: Option<String>,
    ledger: Ledger,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            requests: 0,
            items: 0,
            failures: 0,
            first_error: None,
            ledger: Ledger::new(),
        }
    }

    fn record(
        &mut self,
        result: Result<()>,
        latency: Duration,
        items: u64,
        tenant: Option<String>,
    ) {
        let ok = result.is_ok();
        if let Err(e) = result {
            self.failures += 1;
            self.first_error.get_or_insert_with(|| format!("{e:#}"));
        } else {
            self.latency_us
                .saturating_record(latency.as_micros() as u64);
            self.requests += 1;
            self.items += items;
        }
        if let Some(tenant) = tenant {
            let w = self.ledger.entry(tenant).or_default();
            if ok {
                w.acked += items;
            } else {
                w.unknown += items;
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.requests += other.requests;
        self.items += other.items;
        self.failures += other.failures;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        merge_ledger(&mut self.ledger, other.ledger);
    }
}

/// The longest time between two consecutive acknowledgements, from any connection.
struct Gaps {
    start: Instant,
    /// Nanoseconds since `start` of the latest acknowledgement (0: none yet).
    last: AtomicU64,
    max: AtomicU64,
}

impl Gaps {
    fn ack(&self) {
        let now = self.start.elapsed().as_nanos() as u64;
        let prev = self.last.fetch_max(now, Ordering::Relaxed);
        if prev != 0 && now > prev {
            self.max.fetch_max(now - prev, Ordering::Relaxed);
        }
    }
}

/// Takes up to `want` items from a bulk load's budget.
fn take(budget: &AtomicU64, want: usize) -> usize {
    let prev = budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            Some(left.saturating_sub(want as u64))
        })
        .expect("the closure always returns Some");
    prev.min(want as u64) as usize
}

/// One connection's loop: requests one after the other until `until` (or the load's budget).
async fn drive(
    mut conn: Conn,
    work: Work,
    c: usize,
    until: Option<Instant>,
    gaps: Arc<Gaps>,
) -> Tally {
    let mut tally = Tally::new();
    for n in 0u64.. {
        if until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        let start = Instant::now();
        let (result, items, tenant) = match &work {
            Work::Write {
                prefix,
                items,
                tenants,
                budget,
            } => {
                let items = budget.as_ref().map_or(*items, |b| take(b, *items));
                if items == 0 {
                    break;
                }
                let tenant = format!("{prefix}-{}", c % tenants);
                let ids: Vec<String> = (0..items).map(|k| format!("{c}-{n}-{k}")).collect();
                let result = conn.write(&tenant, &ids).await;
                (result, items as u64, Some(tenant))
            }
            Work::Count { tenant, expect } => {
                let result = conn
                    .count(tenant)
                    .await
                    .and_then(|got| match got == *expect {
                        true => Ok(()),
                        false => Err(anyhow!("count of {tenant} is {got}, expected {expect}")),
                    });
                (result, 1, None)
            }
        };
        if result.is_ok() {
            gaps.ack();
        }
        tally.record(result, start.elapsed(), items, tenant);
    }
    tally
}

/// A load whose connections are running.
struct Running {
    gaps: Arc<Gaps>,
    tasks: Vec<JoinHandle<Tally>>,
}

/// What one load did.
struct Sample {
    elapsed: Duration,
    tally: Tally,
    max_gap: Duration,
}

impl Running {
    /// Opens `conns` connections, then starts them all at once, for `secs` (or until the budget of
    /// a bulk load is spent).
    async fn start(
        backend: &Backend,
        work: &Work,
        conns: usize,
        secs: Option<u64>,
    ) -> Result<Running> {
        let opened =
            futures_util::future::try_join_all((0..conns).map(|_| backend.connect())).await?;
        let start = Instant::now();
        let until = secs.map(|s| start + Duration::from_secs(s));
        let gaps = Arc::new(Gaps {
            start,
            last: AtomicU64::new(0),
            max: AtomicU64::new(0),
        });
        let tasks = opened
            .into_iter()
            .enumerate()
            .map(|(c, conn)| tokio::spawn(drive(conn, work.clone(), c, until, gaps.clone())))
            .collect();
        Ok(Running { gaps, tasks })
    }

    /// Waits until every connection finished its last request.
    async fn finish(self) -> Sample {
        let mut tally = Tally::new();
        for task in self.tasks {
            tally.merge(task.await.expect("load task panicked"));
        }
        Sample {
            elapsed: self.gaps.start.elapsed(),
            tally,
            max_gap: Duration::from_nanos(self.gaps.max.load(Ordering::Relaxed)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: CPU time, peak RSS, bytes on disk

/// The processes serving a system under test: the coordinator (or Redis) and the counters.
struct Procs {
    main: u32,
    replicas: Vec<u32>,
}

/// CPU seconds (user + system) a process used so far.
fn cpu_secs(pid: u32, ticks_per_sec: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) in parentheses; utime and stime are the
    // 14th and 15th fields, so the 12th and 13th after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / ticks_per_sec
}

/// Peak resident set size (VmHWM) of a running process, in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Bytes a directory tree takes on disk (allocated blocks, as `du`).
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children = std::fs::read_dir(path).into_iter().flatten().flatten();
    own + children.map(|e| disk_bytes(&e.path())).sum::<u64>()
}

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------------
// Figures of one row

/// One row's figures (for one run, or the medians of several).
#[derive(Clone, Copy, Default)]
struct Figures {
    req_s: f64,
    items_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// CPU µs per acknowledged request of the coordinator (or Redis), and of each counter on average.
    main_cpu_us: f64,
    replica_cpu_us: f64,
}

impl Figures {
    fn of(sample: &Sample, main_cpu: f64, replica_cpu: f64) -> Figures {
        let secs = sample.elapsed.as_secs_f64();
        let t = &sample.tally;
        let q = |q: f64| t.latency_us.value_at_quantile(q) as f64 / 1e3;
        let per_request = |cpu: f64| cpu * 1e6 / t.requests.max(1) as f64;
        Figures {
            req_s: t.requests as f64 / secs,
            items_s: t.items as f64 / secs,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            main_cpu_us: per_request(main_cpu),
            replica_cpu_us: per_request(replica_cpu),
        }
    }

    /// Each figure's median over the runs.
    fn median(runs: &[Figures]) -> Figures {
        let m = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
        Figures {
            req_s: m(|f| f.req_s),
            items_s: m(|f| f.items_s),
            p50_ms: m(|f| f.p50_ms),
            p99_ms: m(|f| f.p99_ms),
            p999_ms: m(|f| f.p999_ms),
            main_cpu_us: m(|f| f.main_cpu_us),
            replica_cpu_us: m(|f| f.replica_cpu_us),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// A system under test: a cluster or Redis, with what was written to it

struct Sut {
    name: String,
    backend: Backend,
    procs: Procs,
    /// Every item written, per tenant, for the final check.
    ledger: Ledger,
    /// Failed requests and wrong answers; any makes the bench exit non-zero.
    problems: Vec<String>,
    /// The two read tenants and their counts.
    small: (String, u64),
    big: (String, u64),
    ticks: f64,
}

/// A bulk load's figures.
struct LoadFigures {
    items: u64,
    secs: f64,
}

/// The resources a system under test held after its rows.
struct Resources {
    items: u64,
    main_rss_mb: f64,
    main_disk: u64,
    replica_rss_mb: Vec<f64>,
    replica_disk: Vec<u64>,
}

/// Everything measured on one system under test.
struct Report {
    name: String,
    /// Counters of the cluster; 0 for Redis.
    counters: usize,
    rows: Vec<Figures>,
    loads: Vec<LoadFigures>,
    resources: Resources,
}

impl Sut {
    fn new(name: String, backend: Backend, procs: Procs, ticks: f64) -> Sut {
        Sut {
            name,
            backend,
            procs,
            ledger: Ledger::new(),
            problems: Vec::new(),
            small: Default::default(),
            big: Default::default(),
            ticks,
        }
    }

    /// Runs a load to the end and books what it wrote; a failed request is a problem.
    async fn run(
        &mut self,
        what: &str,
        work: &Work,
        conns: usize,
        secs: Option<u64>,
    ) -> Result<Sample> {
        let running = Running::start(&self.backend, work, conns, secs).await?;
        let mut sample = running.finish().await;
        self.book(what, &mut sample, true);
        Ok(sample)
    }

    /// Adds what a load wrote to the ledger; its failures are problems when the cluster was healthy.
    fn book(&mut self, what: &str, sample: &mut Sample, healthy: bool) {
        let t = &mut sample.tally;
        merge_ledger(&mut self.ledger, std::mem::take(&mut t.ledger));
        if healthy && t.failures > 0 {
            self.problems.push(format!(
                "{}: {what}: {} failed request(s), first: {}",
                self.name,
                t.failures,
                t.first_error.as_deref().unwrap_or("?")
            ));
        }
    }

    /// Writes `items` fresh items to one tenant in big batches; returns the tenant and its count.
    async fn load_tenant(&mut self, prefix: &str, items: u64) -> Result<(String, LoadFigures)> {
        let work = Work::Write {
            prefix: prefix.to_owned(),
            items: LOAD_BATCH,
            tenants: 1,
            budget: Some(Arc::new(AtomicU64::new(items))),
        };
        let sample = self
            .run(&format!("load of {prefix}"), &work, LOAD_CONNS, None)
            .await?;
        let figures = LoadFigures {
            items: sample.tally.items,
            secs: sample.elapsed.as_secs_f64(),
        };
        Ok((format!("{prefix}-0"), figures))
    }

    /// Fills the small and the big read tenants.
    async fn load_read_tenants(&mut self, big: u64) -> Result<Vec<LoadFigures>> {
        let mut loads = Vec::new();
        for (prefix, items) in [("small", SMALL_TENANT), ("big", big)] {
            progress(&format!(
                "{}: loading {} items",
                self.name,
                thousands(items as f64)
            ));
            let (tenant, load) = self.load_tenant(prefix, items).await?;
            let count = self.ledger[&tenant].acked;
            *(if prefix == "big" {
                &mut self.big
            } else {
                &mut self.small
            }) = (tenant, count);
            loads.push(load);
        }
        Ok(loads)
    }

    /// One row: `runs` runs of `secs` each, with the services' CPU time; the median figures.
    async fn measure(&mut self, index: usize, cell: &Cell, s: &Settings) -> Result<Figures> {
        let is_redis = matches!(self.backend, Backend::Redis(_));
        let mut runs = Vec::new();
        for run in 0..s.runs {
            let work = match cell.op {
                Op::Write { items, redis_items } => Work::Write {
                    prefix: format!("w{index}r{run}"),
                    items: if is_redis { redis_items } else { items },
                    tenants: WRITE_TENANTS,
                    budget: None,
                },
                Op::Count { big } => {
                    let (tenant, expect) = if big { &self.big } else { &self.small };
                    Work::Count {
                        tenant: tenant.clone(),
                        expect: *expect,
                    }
                }
            };
            let before = self.cpu();
            let sample = self
                .run(&cell.label(s.big), &work, cell.conns, Some(s.secs))
                .await?;
            let after = self.cpu();
            runs.push(Figures::of(&sample, after.0 - before.0, after.1 - before.1));
        }
        Ok(Figures::median(&runs))
    }

    /// CPU seconds so far of the main process and, on average, of the replicas.
    fn cpu(&self) -> (f64, f64) {
        let main = cpu_secs(self.procs.main, self.ticks);
        let replicas: Vec<f64> = self
            .procs
            .replicas
            .iter()
            .map(|&pid| cpu_secs(pid, self.ticks))
            .collect();
        let mean = replicas.iter().sum::<f64>() / replicas.len() as f64;
        (main, mean)
    }

    /// Peak RSS and disk of the processes, with their data directories.
    fn resources(&self, main_dir: &Path, replica_dirs: &[&Path]) -> Resources {
        Resources {
            items: self.ledger.values().map(|w| w.acked).sum(),
            main_rss_mb: peak_rss_mb(self.procs.main),
            main_disk: disk_bytes(main_dir),
            replica_rss_mb: self
                .procs
                .replicas
                .iter()
                .map(|&p| peak_rss_mb(p))
                .collect(),
            replica_disk: replica_dirs.iter().map(|d| disk_bytes(d)).collect(),
        }
    }

    /// Every tenant written: the count read back must equal the acknowledged items (or lie between
    /// them and those sent without an answer). Returns the counts read.
    async fn check_counts(&mut self) -> Result<BTreeMap<String, u64>> {
        let mut conn = self.backend.connect().await?;
        let mut counts = BTreeMap::new();
        for (tenant, w) in &self.ledger {
            let count = conn.count(tenant).await?;
            if count < w.acked || count > w.acked + w.unknown {
                self.problems.push(format!(
                    "{}: tenant {tenant} counts {count}, acknowledged {} (+{} unanswered)",
                    self.name, w.acked, w.unknown
                ));
            }
            counts.insert(tenant.clone(), count);
        }
        Ok(counts)
    }

    /// Loads, every row, and the resources held at the end.
    async fn measure_all(&mut self, s: &Settings, dirs: (&Path, &[&Path])) -> Result<Report> {
        let loads = self.load_read_tenants(s.big).await?;
        let mut rows = Vec::new();
        for (i, cell) in CELLS.iter().enumerate() {
            progress(&format!("{}: {}", self.name, cell.label(s.big)));
            rows.push(self.measure(i, cell, s).await?);
        }
        progress(&format!("{}: resources", self.name));
        Ok(Report {
            name: self.name.clone(),
            counters: self.procs.replicas.len(),
            rows,
            loads,
            resources: self.resources(dirs.0, dirs.1),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster, and Redis

/// Production intervals, not the harness's fast test ones.
fn cluster_options(counters: usize) -> Options {
    Options {
        counters,
        health_interval: "10s",
        register_interval: "5s",
        ..Options::default()
    }
}

/// Every row on a fresh cluster of `counters` counters; with `outage`, then the kill-outage
/// section. Finally the count check, and every counter must agree.
async fn bench_cluster(
    counters: usize,
    s: &Settings,
    ticks: f64,
    outage: bool,
    problems: &mut Vec<String>,
) -> Result<(Report, Option<Vec<OutageCase>>)> {
    let mut cluster = Cluster::start(cluster_options(counters))
        .await
        .context("starting the cluster")?;
    let procs = Procs {
        main: cluster.coordinator.pid().context("coordinator pid")?,
        replicas: cluster.counters.iter().filter_map(|c| c.pid()).collect(),
    };
    let name = format!("{counters} counters");
    let mut sut = Sut::new(name, Backend::Http(cluster.url()), procs, ticks);
    let coordinator_dir = cluster.coordinator.data_dir().to_owned();
    let counter_dirs: Vec<PathBuf> = cluster
        .counters
        .iter()
        .map(|c| c.data_dir().to_owned())
        .collect();
    let dirs: Vec<&Path> = counter_dirs.iter().map(PathBuf::as_path).collect();
    let report = sut.measure_all(s, (&coordinator_dir, &dirs)).await?;
    let outage = match outage {
        true => Some(kill_outage(&mut cluster, &mut sut, s).await?),
        false => None,
    };
    let counts = sut.check_counts().await?;
    // Every counter holds the same counts, at the coordinator's last committed round.
    let tenants: Vec<String> = counts.keys().cloned().collect();
    match cluster.converged(&tenants, Duration::from_secs(60)).await {
        Ok(replicas) if replicas == counts => {}
        Ok(_) => sut.problems.push(format!(
            "{}: counters' counts differ from the coordinator's",
            sut.name
        )),
        Err(e) => sut.problems.push(format!("{}: {e:#}", sut.name)),
    }
    problems.append(&mut sut.problems);
    Ok((report, outage))
}

/// One case of the kill-outage section: the longest gap between acknowledged writes of each run,
/// and the failed writes of all runs.
struct OutageCase {
    label: &'static str,
    gaps_ms: Vec<f64>,
    failed: u64,
}

/// Writes from `OUTAGE_CONNS` connections for `secs`, without a fault and with counter 0 SIGKILLed
/// halfway (then restarted and waited for); failed writes here are reported, not problems.
async fn kill_outage(
    cluster: &mut Cluster,
    sut: &mut Sut,
    s: &Settings,
) -> Result<Vec<OutageCase>> {
    progress(&format!("{}: kill outage", sut.name));
    let mut cases = Vec::new();
    for (kill, label) in [(false, "no fault (baseline)"), (true, "counter SIGKILLed")] {
        let mut case = OutageCase {
            label,
            gaps_ms: Vec::new(),
            failed: 0,
        };
        for run in 0..s.runs {
            let work = Work::Write {
                prefix: format!("o{}r{run}", kill as u8),
                items: OUTAGE_BATCH,
                tenants: WRITE_TENANTS,
                budget: None,
            };
            let running = Running::start(&sut.backend, &work, OUTAGE_CONNS, Some(s.secs)).await?;
            if kill {
                tokio::time::sleep(Duration::from_millis(s.secs * 500)).await;
                cluster.counters[0].kill();
            }
            let mut sample = running.finish().await;
            if kill {
                cluster.start_counter(0, &[]).await?;
                cluster
                    .wait_counter_in_sync(0, Duration::from_secs(120))
                    .await?;
            }
            sut.book(label, &mut sample, false);
            case.gaps_ms.push(sample.max_gap.as_secs_f64() * 1e3);
            case.failed += sample.tally.failures;
        }
        cases.push(case);
    }
    Ok(cases)
}

/// A durable Redis (AOF, fsync on every write) on a free port, data in a temporary directory.
struct RedisServer {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl RedisServer {
    async fn start(exe: &Path) -> Result<RedisServer> {
        let dir = tempfile::Builder::new().prefix("bench-redis").tempdir()?;
        let port = dc_tests::free_port()?;
        let child = Command::new(exe)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir.path())
            .args(["--daemonize", "no", "--logfile", "redis.log"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn redis-server")?;
        let server = RedisServer {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Backend::Redis(server.addr).connect().await {
                Ok(_) => return Ok(server),
                Err(e) if Instant::now() > deadline => return Err(e.context("redis-server")),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every row against Redis, then the count check.
async fn bench_redis(
    exe: &Path,
    s: &Settings,
    ticks: f64,
    problems: &mut Vec<String>,
) -> Result<Report> {
    let server = RedisServer::start(exe).await?;
    let procs = Procs {
        main: server.child.id(),
        replicas: Vec::new(),
    };
    let mut sut = Sut::new("redis".into(), Backend::Redis(server.addr), procs, ticks);
    let report = sut.measure_all(s, (server.dir.path(), &[])).await?;
    sut.check_counts().await?;
    problems.append(&mut sut.problems);
    Ok(report)
}

/// What the bench is doing, on stderr (the report is stdout).
fn progress(what: &str) {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("[{:>5.0} s] {what}", start.elapsed().as_secs_f64());
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// The report

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The commit, with a mark when tracked files differ from it.
fn git_commit() -> String {
    let Some(commit) = command_output("git", &["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    match command_output("git", &["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{commit} + uncommitted changes"),
        _ => commit,
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    format!(
        "{nproc} CPUs ({model}), {:.0} GiB, Linux {}",
        mem_kb / (1 << 20) as f64,
        kernel.trim()
    )
}

/// The file system a path is on, from /proc/mounts (the longest mount point above it).
fn file_system(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && path.starts_with(f[1])).then(|| (f[1].len(), f[2].to_owned()))
        })
        .max()
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}

/// 1234567 -> "1,234,567".
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// 1000000 -> "1M", 15000 -> "15k".
fn short(v: f64) -> String {
    match v {
        v if v >= 1e6 && v % 1e5 == 0.0 => format!("{}M", v / 1e6),
        v if v >= 1e3 && v % 1e2 == 0.0 => format!("{}k", v / 1e3),
        v => thousands(v),
    }
}

fn ms(v: f64) -> String {
    match v {
        v if !v.is_finite() => "-".into(),
        v if v < 10.0 => format!("{v:.2}"),
        v => format!("{v:.1}"),
    }
}

fn us(v: f64) -> String {
    match v.is_finite() {
        true => format!("{v:.0}"),
        false => "-".into(),
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// Width of the table's first column, and of the columns after it: ours, then Redis's.
const LABEL_WIDTH: usize = 24;
const OUR_COLUMNS: [usize; 8] = [4, 9, 10, 7, 7, 7, 7, 7];
const REDIS_COLUMNS: [usize; 5] = [9, 10, 7, 7, 6];

fn columns<S: AsRef<str>>(widths: &[usize], values: &[S]) -> String {
    let cells: Vec<String> = widths
        .iter()
        .zip(values)
        .map(|(w, v)| format!("{:>w$}", v.as_ref()))
        .collect();
    cells.join(" ")
}

/// The table: one line per row and cluster size, Redis's figures and our ratio to them, the targets.
fn print_table(reports: &[Report], redis: Option<&Report>, s: &Settings) {
    let ours = [
        "ctrs", "req/s", "items/s", "p50 ms", "p99 ms", "p999 ms", "coord", "counter",
    ];
    let theirs = ["redis/s", "r items/s", "r p50", "r p99", "ratio"];
    println!(
        "{:<LABEL_WIDTH$} {} | {} | targets (issue #10)",
        "row",
        columns(&OUR_COLUMNS, &ours),
        columns(&REDIS_COLUMNS, &theirs)
    );
    let units = ["", "", "", "", "", "", "µs/req", "µs/req"];
    println!("{:<LABEL_WIDTH$} {} |", "", columns(&OUR_COLUMNS, &units));
    for (i, cell) in CELLS.iter().enumerate() {
        for report in reports {
            let f = &report.rows[i];
            let ours = [
                report.counters.to_string(),
                thousands(f.req_s),
                thousands(f.items_s),
                ms(f.p50_ms),
                ms(f.p99_ms),
                ms(f.p999_ms),
                us(f.main_cpu_us),
                us(f.replica_cpu_us),
            ];
            let theirs = match redis.map(|r| &r.rows[i]) {
                Some(r) => [
                    thousands(r.req_s),
                    thousands(r.items_s),
                    ms(r.p50_ms),
                    ms(r.p99_ms),
                    format!("{:.2}", f.items_s / r.items_s),
                ],
                None => std::array::from_fn(|_| "n/a".to_owned()),
            };
            let goals: Vec<String> = cell
                .goals
                .iter()
                .map(|g| format!("{} {}", g.describe(), met(g.met(f))))
                .collect();
            let line = format!(
                "{:<LABEL_WIDTH$} {} | {} | {}",
                cell.label(s.big),
                columns(&OUR_COLUMNS, &ours),
                columns(&REDIS_COLUMNS, &theirs),
                goals.join(", ")
            );
            println!("{}", line.trim_end());
        }
    }
}

/// How fast the read tenants were written.
fn print_loads(all: &[&Report]) {
    println!();
    println!(
        "bulk loads of the read tenants ({LOAD_BATCH}-item requests, {LOAD_CONNS} connections):"
    );
    for r in all {
        let loads: Vec<String> = r
            .loads
            .iter()
            .map(|l| {
                format!(
                    "{} items in {:.2} s ({} items/s)",
                    thousands(l.items as f64),
                    l.secs,
                    thousands(l.items as f64 / l.secs)
                )
            })
            .collect();
        println!("  {:<11} {}", r.name, loads.join("; "));
    }
}

/// Peak RSS and bytes on disk per item of every service.
fn print_resources(all: &[&Report]) {
    println!();
    println!("resources after the rows (peak RSS = VmHWM; disk = allocated blocks of the data directory):");
    for r in all {
        let res = &r.resources;
        let per_item = |bytes: u64| bytes as f64 / res.items.max(1) as f64;
        let main = if r.counters == 0 {
            "redis"
        } else {
            "coordinator"
        };
        println!(
            "  {:<11} {} items held; {main}: peak RSS {:.0} MB, disk {:.1} MB ({:.1} bytes/item)",
            r.name,
            thousands(res.items as f64),
            res.main_rss_mb,
            res.main_disk as f64 / 1e6,
            per_item(res.main_disk),
        );
        if r.counters == 0 {
            continue;
        }
        let rss: Vec<String> = res
            .replica_rss_mb
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect();
        let max_rss = res.replica_rss_mb.iter().copied().fold(0.0, f64::max);
        // The RSS target is for 1M items held: below that, no verdict.
        let rss_verdict = match res.items >= 1_000_000 {
            true => met(max_rss <= COUNTER_RSS_TARGET_MB),
            false => "n/a below 1M items",
        };
        let max_disk = res.replica_disk.iter().copied().max().unwrap_or(0);
        println!(
            "  {:<11} counters: peak RSS {} MB (target <={COUNTER_RSS_TARGET_MB:.0} MB at 1M items: \
             {rss_verdict}), disk up to {:.1} MB = {:.0} bytes/item (target <={DISK_TARGET_BYTES_PER_ITEM:.0}: {})",
            "",
            rss.join("/"),
            max_disk as f64 / 1e6,
            per_item(max_disk),
            met(per_item(max_disk) <= DISK_TARGET_BYTES_PER_ITEM),
        );
    }
}

/// The coordinator's CPU per request on the smallest vs the largest cluster, row by row.
fn print_cpu_scaling(reports: &[Report], s: &Settings) {
    let [first, .., last] = reports else {
        return;
    };
    println!();
    println!(
        "coordinator CPU per request, {} -> {} (target: grows <={:.0}%):",
        first.name,
        last.name,
        COORDINATOR_CPU_GROWTH_TARGET * 100.0
    );
    for (i, cell) in CELLS.iter().enumerate() {
        let (a, b) = (first.rows[i].main_cpu_us, last.rows[i].main_cpu_us);
        let growth = b / a - 1.0;
        println!(
            "  {:<LABEL_WIDTH$} {:>6} -> {:>6} µs ({:+.0}%) {}",
            cell.label(s.big),
            us(a),
            us(b),
            growth * 100.0,
            met(growth <= COORDINATOR_CPU_GROWTH_TARGET)
        );
    }
}

/// Reads of the big tenant vs the small one: a count must not cost more for a bigger tenant.
fn print_big_vs_small(all: &[&Report], s: &Settings) {
    println!();
    println!(
        "GET of the {}-item vs the {}-item tenant at 64 connections (target: within {:.0}%):",
        short(s.big as f64),
        short(SMALL_TENANT as f64),
        BIG_VS_SMALL_TARGET * 100.0
    );
    let row = |big: bool| {
        CELLS
            .iter()
            .position(|c| matches!(c.op, Op::Count { big: b } if b == big))
    };
    let (Some(big_row), Some(small_row)) = (row(true), row(false)) else {
        return;
    };
    for r in all {
        let (big, small) = (r.rows[big_row].req_s, r.rows[small_row].req_s);
        let diff = big / small - 1.0;
        // The target is ours; Redis's figures are for comparison.
        let verdict = match r.counters {
            0 => "",
            _ => met(diff.abs() <= BIG_VS_SMALL_TARGET),
        };
        let line = format!(
            "  {:<11} {} vs {} req/s ({:+.1}%) {verdict}",
            r.name,
            thousands(big),
            thousands(small),
            diff * 100.0,
        );
        println!("{}", line.trim_end());
    }
}

fn print_outage(cases: &[OutageCase], s: &Settings) {
    println!();
    println!(
        "write outage when a counter is SIGKILLed halfway (3 counters, {OUTAGE_CONNS} connections, \
         {OUTAGE_BATCH}-item POSTs, {} run(s) of {} s):",
        s.runs, s.secs
    );
    for case in cases {
        let runs: Vec<String> = case.gaps_ms.iter().map(|g| format!("{g:.1}")).collect();
        println!(
            "  {:<20} longest gap between acknowledged writes: median {:.1} ms (runs: {}), \
             failed writes {}",
            case.label,
            median(case.gaps_ms.clone()),
            runs.join(", "),
            case.failed
        );
    }
}

/// The machine, the commit and the settings.
fn print_header(s: &Settings, redis_exe: Option<&Path>) {
    let redis_version = redis_exe.map(|exe| {
        command_output(&exe.to_string_lossy(), &["--version"])
            .and_then(|v| {
                v.split_whitespace()
                    .find_map(|w| w.strip_prefix("v="))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "?".into())
    });
    let tmp = std::env::temp_dir();
    let fs = file_system(&tmp);
    println!(
        "distributed counter benchmark (issue #10), commit {}",
        git_commit()
    );
    println!("machine: {}", machine());
    println!(
        "data: {} ({fs}); every service durable (sled, flushed before each acknowledgement)",
        tmp.display(),
    );
    println!(
        "each row: median of {} run(s) of {} s; tenants of {} and {} items; Redis: {}",
        s.runs,
        s.secs,
        short(SMALL_TENANT as f64),
        short(s.big as f64),
        redis_version.map_or_else(
            || "n/a (no redis-server on the PATH)".to_owned(),
            |v| format!("{v}, appendfsync always, SADD of 1 or {REDIS_BATCH} members, SCARD")
        )
    );
    if fs == "tmpfs" {
        println!("WARNING: the data is on tmpfs, not on a disk: point TMPDIR at a disk directory");
    }
    println!();
}

#[tokio::main]
async fn main() -> ExitCode {
    let s = Settings {
        secs: env("BENCH_SECS", 10).max(1),
        runs: env("BENCH_RUNS", 3).max(1) as usize,
        big: env("BENCH_BIG_TENANT", 1_000_000).max(1),
    };
    let ticks = clock_ticks();
    let redis_exe = find_on_path("redis-server");
    print_header(&s, redis_exe.as_deref());

    let started = Instant::now();
    progress("starting");
    let mut problems = Vec::new();
    let mut reports = Vec::new();
    let mut outage = None;
    for counters in CLUSTER_SIZES {
        match bench_cluster(counters, &s, ticks, counters == 3, &mut problems).await {
            Ok((report, o)) => {
                reports.push(report);
                outage = outage.or(o);
            }
            Err(e) => {
                eprintln!("{counters} counters: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    let redis = match &redis_exe {
        Some(exe) => match bench_redis(exe, &s, ticks, &mut problems).await {
            Ok(report) => Some(report),
            Err(e) => {
                problems.push(format!("redis: {e:#}"));
                None
            }
        },
        None => None,
    };

    let all: Vec<&Report> = reports.iter().chain(redis.as_ref()).collect();
    print_table(&reports, redis.as_ref(), &s);
    print_loads(&all);
    print_resources(&all);
    print_cpu_scaling(&reports, &s);
    print_big_vs_small(&all, &s);
    if let Some(outage) = &outage {
        print_outage(outage, &s);
    }
    println!();
    if problems.is_empty() {
        println!(
            "check: every count read back equals the items acknowledged{}; no request failed. \
             Took {:.0} s.",
            if redis.is_some() {
                " (clusters and redis)"
            } else {
                ""
            },
            started.elapsed().as_secs_f64()
        );
        ExitCode::SUCCESS
    } else {
        println!("FAILED ({} problem(s)):", problems.len());
        for p in &problems {
            println!("  {p}");
        }
        ExitCode::FAILURE
    }
}
