//! `make soak`: a long run of the cluster `make up` runs, checking that nothing grows without bound.
//!
//! Writers POST batches whose ids come from a bounded space (`SOAK_IDS` per tenant, over a few
//! tenants), so after a while the data stops growing and whatever still grows is a leak; readers GET
//! counts. Every `SOAK_FAULT_SECS` a random container is killed and started again. Every
//! `SOAK_SAMPLE_SECS` the soak samples, for every service: resident memory and open file descriptors
//! (from `/proc` of the container's process: a local engine, as root), bytes on disk (`dc_disk_bytes`
//! on its `/metrics`), and the size of its bounded trees: the coordinator's kept decisions, each
//! counter's log entries (last applied seq minus log floor) and prepared transactions.
//!
//! It writes every sample to `<SOAK_OUT>/soak.csv` (`elapsed_s,series,value`) as it goes, and fails
//! when a series, after the first fifth of the run (warm-up), is higher over the last half than
//! over the first half by more than its slack: for a bounded series the peak stops rising, for a
//! leak it does not. `scripts/soak-plot.py` draws the CSV.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dc_tests::docker::{compose_containers, docker, Container};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::proto::{ClusterView, CounterStatus};

/// The soak's settings; each flag can also be given in its environment variable.
#[derive(clap::Parser)]
#[command(about = "A long run that fails when memory, descriptors, disk or trees keep growing")]
struct Settings {
    #[arg(long, env = "SOAK_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "SOAK_PROJECT", default_value = "dcounter")]
    project: String,
    #[arg(long, env = "SOAK_MINUTES", default_value_t = 30)]
    minutes: u64,
    #[arg(long, env = "SOAK_SAMPLE_SECS", default_value_t = 60)]
    sample_secs: u64,
    /// Time between two faults (a container killed and started again); 0 for none.
    #[arg(long, env = "SOAK_FAULT_SECS", default_value_t = 300)]
    fault_secs: u64,
    /// Distinct ids per tenant the writers draw from.
    #[arg(long, env = "SOAK_IDS", default_value_t = 5_000)]
    ids: u64,
    #[arg(long, env = "SOAK_WRITERS", default_value_t = 4)]
    writers: usize,
    #[arg(long, env = "SOAK_READERS", default_value_t = 2)]
    readers: usize,
    #[arg(long, env = "SOAK_TOKEN_FILE", default_value = "volumes/cluster-token")]
    token_file: String,
    #[arg(long, env = "SOAK_OUT", default_value = "target/soak")]
    out: std::path::PathBuf,
}

const TENANTS: u64 = 8;
const BATCH: usize = 20;
/// The coordinator's internal port and a counter's port inside their containers (docker-compose.yml).
const COORDINATOR_INTERNAL_PORT: u16 = 8081;
const COUNTER_PORT: u16 = 9000;

/// The service's own process in the container (its first process, or that one's child under
/// docker's init).
async fn service_pid(c: &Container) -> Option<u32> {
    let init = docker(&["inspect", "-f", "{{.State.Pid}}", &c.id])
        .await
        .ok()?;
    let init = init.trim();
    let is_service = |pid: &str| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .is_some_and(|e| e.file_name() == Some(c.service.as_ref()))
    };
    if init == "0" {
        return None;
    }
    if is_service(init) {
        return init.parse().ok();
    }
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
    children
        .split_whitespace()
        .find(|child| is_service(child))
        .and_then(|p| p.parse().ok())
}

async fn ip(c: &Container) -> Option<String> {
    let out = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        &c.id,
    ])
    .await
    .ok()?;
    out.split_whitespace().next().map(str::to_owned)
}

/// `name value` of a Prometheus text exposition, for a metric without labels.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One sample of every series of one container.
async fn sample(
    c: &Container,
    http: &reqwest::Client,
    internal: &reqwest::Client,
    public: &str,
) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let name = |what: &str| format!("{} {what}", c.name);
    if let Some(pid) = service_pid(c).await {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        {
            out.push((name("rss_bytes"), kb * 1024.0));
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            out.push((name("open_fds"), fds.count() as f64));
        }
    }
    let Some(ip) = ip(c).await else { return out };
    let metrics_url = if c.service == "coordinator" {
        format!("{public}/metrics")
    } else {
        format!("http://{ip}:{COUNTER_PORT}/metrics")
    };
    if let Ok(text) = get_text(http, &metrics_url).await {
        if let Some(v) = metric(&text, "dc_disk_bytes") {
            out.push((name("disk_bytes"), v));
        }
        if let Some(v) = metric(&text, "dc_decisions_kept") {
            out.push((name("tree_decisions"), v));
        }
    }
    if c.service == "counter" {
        let url = format!("http://{ip}:{COUNTER_PORT}/internal/status");
        if let Ok(text) = get_text(internal, &url).await {
            if let Ok(s) = serde_json::from_str::<CounterStatus>(&text) {
                out.push((
                    name("tree_log_entries"),
                    s.last_applied.saturating_sub(s.log_floor) as f64,
                ));
                out.push((name("tree_prepared"), s.prepared as f64));
            }
        }
    }
    out
}

async fn get_text(http: &reqwest::Client, url: &str) -> Result<String> {
    let resp = http.get(url).send().await?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    Ok(resp.text().await?)
}

/// Slack of a series: how much its peak may rise from the first half to the last without counting
/// as growth: 10 %, and at least a noise floor (allocator arenas, a restart's replay, sled's segment
/// rollover; decisions pruned once per health interval). A series still filling up to its bound
/// (a log below its retention) counts as growing: the run was too short to show the bound.
fn slack(series: &str, first_peak: f64) -> f64 {
    let floor: f64 = if series.ends_with("rss_bytes") {
        16.0 * 1024.0 * 1024.0
    } else if series.ends_with("disk_bytes") {
        8.0 * 1024.0 * 1024.0
    } else if series.ends_with("open_fds") {
        8.0
    } else {
        200.0
    };
    floor.max(first_peak * 0.10)
}

/// The series whose peak rose past its slack from the first half of the run (after warm-up) to
/// the second.
fn growing(samples: &BTreeMap<String, Vec<(f64, f64)>>, total_secs: f64) -> Vec<String> {
    let warm = total_secs / 5.0;
    let mid = warm + (total_secs - warm) / 2.0;
    let mut out = Vec::new();
    for (series, points) in samples {
        let peak = |lo: f64, hi: f64| {
            points
                .iter()
                .filter(|(t, _)| *t >= lo && *t < hi)
                .map(|(_, v)| *v)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        };
        let (Some(a), Some(b)) = (peak(warm, mid), peak(mid, f64::MAX)) else {
            continue;
        };
        if b - a > slack(series, a) {
            out.push(format!(
                "{series}: peak {a:.0} in the first half, {b:.0} in the second"
            ));
        }
    }
    out
}

#[tokio::main]
async fn main() {
    match soak().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            println!("soak FAILED: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn soak() -> Result<bool> {
    let s = <Settings as clap::Parser>::parse();
    let url = s.url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let token = std::fs::read_to_string(&s.token_file)
        .with_context(|| format!("cannot read the cluster token file {}", s.token_file))?;
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))?;
    auth.set_sensitive(true);
    let internal = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .default_headers(
            [(reqwest::header::AUTHORIZATION, auth)]
                .into_iter()
                .collect(),
        )
        .build()?;
    std::fs::create_dir_all(&s.out)?;
    let csv_path = s.out.join("soak.csv");
    let mut csv = std::io::BufWriter::new(std::fs::File::create(&csv_path)?);
    writeln!(csv, "elapsed_s,series,value")?;
    let all = compose_containers(&s.project).await?;
    if all.is_empty() {
        bail!(
            "compose project {:?} has no containers: run make up",
            s.project
        );
    }
    let seed: u64 = rand::random();
    eprintln!(
        "soak: {} min, a sample every {} s, a fault every {} s, {} containers, seed {seed}",
        s.minutes,
        s.sample_secs,
        s.fault_secs,
        all.len()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (acked, refused, reads) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for w in 0..s.writers {
        let (http, url, stop, acked, refused) = (
            http.clone(),
            url.clone(),
            stop.clone(),
            acked.clone(),
            refused.clone(),
        );
        let ids = s.ids;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
            while !stop.load(Ordering::Relaxed) {
                let body: Vec<serde_json::Value> = (0..BATCH)
                    .map(|_| {
                        let tenant = format!("soak-{}", rng.random_range(0..TENANTS));
                        let id = rng.random_range(0..ids);
                        serde_json::json!({"id": format!("id-{id}"), "tenant": tenant})
                    })
                    .collect();
                let ok = http
                    .post(format!("{url}/items"))
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    for r in 0..s.readers {
        let (http, url, stop, reads) = (http.clone(), url.clone(), stop.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = r as u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let tenant = format!("soak-{}", k % TENANTS);
                if get_text(&http, &format!("{url}/items/{tenant}/count"))
                    .await
                    .is_ok()
                {
                    reads.fetch_add(1, Ordering::Relaxed);
                } else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }

    let began = Instant::now();
    let end = began + Duration::from_secs(s.minutes * 60);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_sample = began;
    let mut next_fault = (s.fault_secs > 0).then(|| began + Duration::from_secs(s.fault_secs));
    let mut samples: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut faults = 0;
    while Instant::now() < end {
        if Instant::now() >= next_sample {
            let t = began.elapsed().as_secs_f64();
            for c in compose_containers(&s.project).await? {
                for (series, v) in sample(&c, &http, &internal, &url).await {
                    writeln!(csv, "{t:.0},{series},{v}")?;
                    samples.entry(series).or_default().push((t, v));
                }
            }
            csv.flush()?;
            next_sample += Duration::from_secs(s.sample_secs);
        }
        if next_fault.is_some_and(|at| Instant::now() >= at) {
            let list = compose_containers(&s.project).await?;
            let victim = &list[rng.random_range(0..list.len())];
            eprintln!("soak: fault kills {} and starts it again", victim.name);
            docker(&["kill", &victim.id]).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            docker(&["start", &victim.id]).await?;
            faults += 1;
            next_fault = Some(Instant::now() + Duration::from_secs(s.fault_secs));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    csv.flush()?;

    // Where the cluster stands at the end (the growth check runs whatever it says).
    let view = async {
        let coordinator = all
            .iter()
            .find(|c| c.service == "coordinator")
            .context("no coordinator")?;
        let view_url = format!(
            "http://{}:{COORDINATOR_INTERNAL_PORT}/internal/cluster",
            ip(coordinator)
                .await
                .context("the coordinator has no address")?
        );
        anyhow::Ok(serde_json::from_str::<ClusterView>(
            &get_text(&internal, &view_url).await?,
        )?)
    }
    .await;
    let (committed, in_sync) = match &view {
        Ok(v) => (
            v.committed_seq.to_string(),
            v.counters
                .iter()
                .filter(|c| c.state == storage::proto::MemberState::InSync)
                .count(),
        ),
        Err(e) => {
            eprintln!("soak: no view of the cluster at the end: {e:#}");
            ("?".to_owned(), 0)
        }
    };
    let total = began.elapsed().as_secs_f64();
    let growth = growing(&samples, total);
    for g in &growth {
        eprintln!("soak: growing: {g}");
    }
    let peak = |suffix: &str| {
        samples
            .iter()
            .filter(|(k, _)| k.ends_with(suffix))
            .flat_map(|(_, v)| v.iter().map(|(_, v)| *v))
            .fold(0.0, f64::max)
    };
    let ok = growth.is_empty() && view.is_ok();
    println!(
        "soak {}: {:.0} min, {} series sampled {} times; {} writes acknowledged, {} refused, {} reads; {faults} faults; peak RSS {:.0} MiB, peak fds {:.0}, peak disk {:.0} MiB, peak kept decisions {:.0}, peak counter log {:.0} entries; committed seq {committed}, {in_sync} counters in sync; {} growing series; CSV {}",
        if ok { "PASS" } else { "FAIL" },
        total / 60.0,
        samples.len(),
        samples.values().map(Vec::len).max().unwrap_or(0),
        acked.load(Ordering::Relaxed) * BATCH as u64,
        refused.load(Ordering::Relaxed) * BATCH as u64,
        reads.load(Ordering::Relaxed),
        peak("rss_bytes") / 1048576.0,
        peak("open_fds"),
        peak("disk_bytes") / 1048576.0,
        peak("tree_decisions"),
        peak("tree_log_entries"),
        growth.len(),
        csv_path.display(),
    );
    Ok(ok)
}
