//! `make chaos`: the docker kill drill against the cluster `make up` runs.
//!
//! Concurrent writers and readers use the public API on the published port while the drill
//! `docker kill`s a random counter container, sometimes two, sometimes the coordinator, sometimes
//! everything, and starts them again with `docker start` (a killed container counts as stopped by hand,
//! so restart policies do not bring it back). Sometimes it SIGKILLs a container's process from the host
//! instead, a crash as docker sees it, which the restart policy must repair alone. It also impairs
//! containers without killing them, for a few seconds or longer than the health-check window: pauses
//! a counter or the coordinator, disconnects one from its network and connects it again, throttles a
//! counter to 5 % of a CPU, and fills the disk of the counter whose slot it put on a small tmpfs
//! (`CHAOS_FAULTS` chooses the families). Then it heals (every impairment undone, every container
//! started), waits until every counter is in sync at the coordinator's committed seq, and
//! checks:
//!
//! - the history ([`History::check`]) against the final counts read through the coordinator: no lost
//!   write, no phantom write, atomic batches, every read within bounds;
//! - batches spanning two fresh tenants: both counted in full or both not at all;
//! - every counter, asked directly at its advertised URL, holds the same counts as the coordinator
//!   answered, and advertises an address of its own container;
//! - the containers' logs since the start of the drill hold no panic and no fatal start error, and no
//!   container was started more often than the drill caused (it stopped on its own);
//! - a container stopped with `docker stop` (SIGTERM) exited 0 without giving up on open requests, a
//!   running round or transactions in doubt (a counter stopped while the coordinator is down cannot
//!   learn the outcome of its YES votes, so for it the last is expected).
//!
//! It prints one summary line and exits non-zero on any violation. Writes go to tenants named after the
//! run, so the drill can run on a cluster holding other data.
//!
//! The drill reads the cluster's state from the coordinator's internal listener (port
//! [`COORDINATOR_INTERNAL_PORT`] of its container, never published) and from each counter, with the
//! cluster token from `--token-file`/`CHAOS_TOKEN_FILE` (`volumes/cluster-token`, where `make up`
//! keeps it); the clients use only the public port.
//!
//! On a Swarm stack (`--platform swarm`, `make stack-chaos`) the drill finds the stack's task
//! containers on every engine given, reaches their internal ports through each node's
//! `docker_gwbridge`, and injects Swarm's faults instead (the [`swarm`] module): `docker kill` and
//! `docker stop` of task containers, which Swarm replaces, and a drained and reactivated node when
//! there are two. `--during CMD` runs a command under the load instead of any fault (the rolling
//! upgrade drill). The checks and the summary line are the same.
//!
//! Settings: `chaos --help` (each flag has a `CHAOS_*` environment variable).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use dc_tests::docker::{compose_containers, docker, docker_on, Container};
use dc_tests::encode;
use dc_tests::history::{History, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::proto::{paths, ClusterView, CounterStatus, Counts, CountsRequest, MemberState};

/// A progress line on stderr, stamped with UTC wall-clock time to match the services' logs.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("chaos {}: {}", $crate::utc_now(), format!($($arg)*))
    };
}

// After `say!`, which it uses.
#[path = "chaos/swarm.rs"]
mod swarm;

fn utc_now() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let s = t.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        t.subsec_millis()
    )
}

/// The coordinator's internal port inside its container (docker-compose.yml).
const COORDINATOR_INTERNAL_PORT: u16 = 8081;
/// Per-request timeout of every HTTP call the drill makes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Tenants every writer spreads its ordinary batches over (some need percent-encoding).
const SHARED_TENANTS: usize = 16;
/// Batches a writer remembers for re-sends.
const REMEMBERED: usize = 200;

/// The drill's settings; each flag can also be given in its environment variable.
#[derive(clap::Parser)]
#[command(about = "The docker kill drill against the cluster `make up` runs")]
struct Settings {
    /// The coordinator's public URL.
    #[arg(long, env = "CHAOS_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The compose project whose containers the drill kills.
    #[arg(long, env = "CHAOS_PROJECT", default_value = "dcounter")]
    project: String,
    /// Where the cluster runs: `compose` (the project) or `swarm` (the stack).
    #[arg(long, env = "CHAOS_PLATFORM", default_value = "compose")]
    platform: String,
    /// The Swarm stack, with `--platform swarm`.
    #[arg(long, env = "CHAOS_STACK", default_value = "dcounter")]
    stack: String,
    /// With `--platform swarm`: the engines of the swarm's nodes, comma-separated `docker -H` hosts
    /// (the first a manager); empty for this machine's engine only.
    #[arg(long, env = "CHAOS_DOCKER_HOSTS", default_value = "")]
    docker_hosts: String,
    /// A shell command to run under the load instead of injecting faults (e.g. a rolling upgrade);
    /// its failure is a violation.
    #[arg(long, env = "CHAOS_DURING")]
    during: Option<String>,
    /// Every write must be acknowledged: for a `--during` command that keeps the coordinator up
    /// (a rolling upgrade of the counters), under which the cluster must keep taking writes.
    #[arg(long, env = "CHAOS_ALL_ACKNOWLEDGED")]
    all_acknowledged: bool,
    /// Length of the fault phase, in seconds.
    #[arg(long, env = "CHAOS_SECS", default_value_t = 120)]
    secs: u64,
    /// Seed of the fault schedule and of the operation mix (random when not given).
    #[arg(long, env = "CHAOS_SEED")]
    seed: Option<u64>,
    #[arg(long, env = "CHAOS_WRITERS", default_value_t = 4)]
    writers: usize,
    #[arg(long, env = "CHAOS_READERS", default_value_t = 6)]
    readers: usize,
    /// How long the cluster gets to converge, before and after the faults, in seconds.
    #[arg(long, env = "CHAOS_CONVERGE_SECS", default_value_t = 150)]
    converge_secs: u64,
    /// The cluster token, for the internal listeners.
    #[arg(
        long,
        env = "CHAOS_TOKEN_FILE",
        default_value = "volumes/cluster-token"
    )]
    token_file: String,
    /// The fault families to inject, comma-separated: kill (kills, crashes and stops), pause,
    /// disconnect, throttle, diskfull.
    #[arg(
        long,
        env = "CHAOS_FAULTS",
        default_value = "kill,pause,disconnect,throttle,diskfull",
        value_delimiter = ','
    )]
    faults: Vec<Family>,
    /// The counters' data directory on this host (the slots under it), for the diskfull faults.
    #[arg(long, env = "CHAOS_COUNTER_VOLUME", default_value = "volumes/counters")]
    counter_volume: std::path::PathBuf,
}

/// A family of faults, as `CHAOS_FAULTS` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Family {
    Kill,
    Pause,
    Disconnect,
    Throttle,
    Diskfull,
}

// ---------------------------------------------------------------------------------------------
// Docker

/// A `docker` command against the engine `c` runs on.
fn docker_command(c: &Container) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("docker");
    if let Some(host) = &c.host {
        cmd.args(["-H", host]);
    }
    cmd
}

/// Where the cluster runs: how the drill finds its containers and reaches their internal ports.
enum Platform {
    /// A compose project on the local engine.
    Compose(String),
    Swarm(swarm::Stack),
}

impl Platform {
    /// The cluster's containers: every one of the compose project, running or not; a stack's
    /// running task containers (Swarm replaces a task that stopped with a new container).
    async fn containers(&self) -> Result<Vec<Container>> {
        match self {
            Platform::Compose(project) => compose_containers(project).await,
            Platform::Swarm(stack) => stack.containers(false).await,
        }
    }

    /// Every container whose logs belong to the drill: a stack's stopped tasks too.
    async fn logged_containers(&self) -> Result<Vec<Container>> {
        match self {
            Platform::Compose(project) => compose_containers(project).await,
            Platform::Swarm(stack) => stack.containers(true).await,
        }
    }

    /// Each address a container has on the cluster's network (what a counter advertises), with the
    /// address the drill reaches it at from here: the same on a compose network; on a Swarm node
    /// its address on the node's `docker_gwbridge`, as the overlay is not routed to the host.
    async fn addresses(&self, c: &Container) -> Result<Vec<(String, String)>> {
        let ips = container_ips(c).await?;
        match self {
            Platform::Compose(_) => Ok(ips.into_iter().map(|ip| (ip.clone(), ip)).collect()),
            Platform::Swarm(stack) => {
                let reach = stack.gateway_ip(c).await?;
                Ok(ips
                    .into_iter()
                    .filter(|ip| *ip != reach)
                    .map(|ip| (ip, reach.clone()))
                    .collect())
            }
        }
    }

    /// How many counters should run: a stack's replicas; `None` on compose (every container).
    async fn wanted_counters(&self) -> Result<Option<usize>> {
        match self {
            Platform::Compose(_) => Ok(None),
            Platform::Swarm(stack) => stack.replicas("counter").await.map(Some),
        }
    }

    /// `docker events` filter and format naming what the start watch counts: a compose container by
    /// name; a Swarm service by name, as every restart of a task is a new container.
    fn start_events(&self) -> (Vec<Option<String>>, String, &'static str) {
        match self {
            Platform::Compose(project) => (
                vec![None],
                format!("label=com.docker.compose.project={project}"),
                "{{.Actor.Attributes.name}}",
            ),
            Platform::Swarm(stack) => (
                stack.hosts.clone(),
                format!("label=com.docker.stack.namespace={}", stack.name),
                "{{index .Actor.Attributes \"com.docker.swarm.service.name\"}}",
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            Platform::Compose(project) => format!("compose project {project:?}"),
            Platform::Swarm(stack) => format!("swarm stack {:?}", stack.name),
        }
    }
}

async fn is_running(c: &Container) -> bool {
    docker_on(
        c.host.as_deref(),
        &["inspect", "-f", "{{.State.Running}}", &c.id],
    )
    .await
    .is_ok_and(|s| s.trim() == "true")
}

/// The coordinator's internal API, at its container's current address.
async fn coordinator_internal_url(platform: &Platform) -> Result<String> {
    let coordinator = platform
        .containers()
        .await?
        .into_iter()
        .find(|c| c.service == "coordinator")
        .context("no coordinator container")?;
    let (_, ip) = platform
        .addresses(&coordinator)
        .await?
        .into_iter()
        .next()
        .context("the coordinator container has no address")?;
    Ok(format!("http://{ip}:{COORDINATOR_INTERNAL_PORT}"))
}

async fn container_ips(c: &Container) -> Result<Vec<String>> {
    let out = docker_on(
        c.host.as_deref(),
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            &c.id,
        ],
    )
    .await?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

// ---------------------------------------------------------------------------------------------
// Faults

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// One counter, back within seconds.
    Counter,
    /// One counter, down long enough for the health checks to remove it from the table.
    CounterLong,
    TwoCounters,
    Coordinator,
    CoordinatorAndCounter,
    /// Every container at once.
    All,
    /// SIGKILL to a container's process from the host, not through docker: its restart policy must
    /// bring it back on its own (only where the engine's processes are visible, i.e. a local engine).
    Crash,
    /// `docker stop` (SIGTERM) of a counter or the coordinator: it must exit 0 having finished what
    /// it started, leaving no transaction in doubt.
    Stop,
    /// A Swarm worker node drained (its tasks rescheduled elsewhere), made active again later.
    Drain,
    /// `docker pause` of a counter or the coordinator (frozen, not dead), unpaused after a few
    /// seconds or (`long`) after more than the health-check window (3 × 10 s).
    Pause {
        long: bool,
    },
    /// `docker network disconnect` of a counter or the coordinator, connected again after a few
    /// seconds or (`long`) after more than the health-check window; it may come back on another
    /// address.
    Disconnect {
        long: bool,
    },
    /// `docker update --cpus 0.05` of a counter (starved of CPU: a slow replica), unthrottled after a
    /// few seconds or (`long`) after more than the health-check window.
    Throttle {
        long: bool,
    },
    /// The disk of one counter's slot (a tmpfs, see [`DiskFull`]) is filled to a few hundred KiB
    /// and freed again after a few seconds or (`long`) after more than the health-check window.
    DiskFull {
        long: bool,
    },
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Counter => "counter",
            Fault::CounterLong => "counter-long",
            Fault::TwoCounters => "two-counters",
            Fault::Coordinator => "coordinator",
            Fault::CoordinatorAndCounter => "coordinator+counter",
            Fault::All => "all",
            Fault::Crash => "crash",
            Fault::Stop => "stop",
            Fault::Drain => "drain",
            Fault::Pause { long: false } => "pause",
            Fault::Pause { long: true } => "pause-long",
            Fault::Disconnect { long: false } => "disconnect",
            Fault::Disconnect { long: true } => "disconnect-long",
            Fault::Throttle { long: false } => "throttle",
            Fault::Throttle { long: true } => "throttle-long",
            Fault::DiskFull { long: false } => "diskfull",
            Fault::DiskFull { long: true } => "diskfull-long",
        }
    }

    /// How long an impairment lasts: a few seconds, or longer than the health-check window.
    fn duration(long: bool, rng: &mut StdRng) -> Duration {
        if long {
            Duration::from_millis(rng.random_range(35_000..45_000))
        } else {
            Duration::from_millis(rng.random_range(2_000..10_000))
        }
    }
}

/// A fault that leaves the container running, and what undoes it.
#[derive(Clone, Debug)]
enum Impairment {
    Paused,
    /// Disconnected from `network`; connected again with the compose service's name as an alias,
    /// as compose had it (counters reach the coordinator by that name).
    Disconnected {
        network: String,
    },
    Throttled,
    DiskFull,
}

impl Impairment {
    /// Injects it into `c`.
    async fn inject(&self, c: &Container, disk: Option<&DiskFull>) -> Result<()> {
        match self {
            Impairment::Paused => docker(&["pause", &c.id]).await.map(drop),
            Impairment::Disconnected { network } => {
                docker(&["network", "disconnect", network, &c.id])
                    .await
                    .map(drop)
            }
            Impairment::Throttled => docker(&["update", "--cpus", "0.05", &c.id]).await.map(drop),
            Impairment::DiskFull => disk.context("no tmpfs slot")?.fill(),
        }
    }

    /// Undoes it.
    async fn undo(&self, c: &Container, disk: Option<&DiskFull>) -> Result<()> {
        match self {
            Impairment::Paused => docker(&["unpause", &c.id]).await.map(drop),
            Impairment::Disconnected { network } => {
                docker(&["network", "connect", "--alias", &c.service, network, &c.id])
                    .await
                    .map(drop)
            }
            // 0: no limit.
            Impairment::Throttled => docker(&["update", "--cpus", "0", &c.id]).await.map(drop),
            Impairment::DiskFull => disk.context("no tmpfs slot")?.unfill(),
        }
    }
}

/// One counter slot's directory on a size-limited tmpfs, for the diskfull faults: set up before the
/// faults (the counter holding the slot is stopped, its data copied onto the tmpfs, and it is
/// started again, which is when its bind mount takes the tmpfs in), taken down after the checks
/// (stopped, copied back, unmounted, started).
struct DiskFull {
    slot: std::path::PathBuf,
    /// The container that held the slot at setup.
    container: Container,
}

/// Room the tmpfs has beyond the slot's data: a restart's probe (4 MiB), and what the replica grows by
/// during the drill, catch-up included, with sled's own overhead. A replica that lagged for most of
/// a drill and then caught up on thousands of rounds outgrew 32 MiB, and its disk was then full with
/// no fault applied, so it never came back (a genuinely full disk stays a failure: the drill must
/// not make one by accident). The tmpfs takes memory only for what is written, filler included.
const DISK_HEADROOM: u64 = 256 << 20;
/// What a fill leaves free: nothing (sled still writes into the log segments it has, until it needs
/// a new one).
const DISK_LEFT: u64 = 0;

impl DiskFull {
    async fn set_up(
        counter: &Container,
        volume: &std::path::Path,
        log: &mut FaultLog,
    ) -> Result<DiskFull> {
        // The slot the counter holds, from its own word.
        let out = tokio::process::Command::new("docker")
            .args(["logs", &counter.id])
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        let slot = text
            .lines()
            .filter_map(|l| l.split("claimed slot dir=/data/").nth(1))
            .next_back()
            .and_then(|rest| rest.split_whitespace().next())
            .context("no claimed slot in the counter's log")?
            .to_owned();
        let slot = volume.join(slot);
        docker(&["stop", "-t", "10", &counter.id]).await?;
        let bytes = du(&slot)?;
        let saved = slot.with_extension("saved");
        sh(&format!(
            "rm -rf {saved} && cp -a {slot} {saved} && mount -t tmpfs -o size={size} tmpfs {slot} && cp -a {saved}/. {slot}/ && chown --reference={saved} {slot} && chmod --reference={saved} {slot} && rm -rf {saved}",
            saved = saved.display(),
            slot = slot.display(),
            size = bytes + DISK_HEADROOM,
        ))
        .await?;
        say!(
            "{} holds its slot {} on a tmpfs of {} MiB",
            counter.name,
            slot.display(),
            (bytes + DISK_HEADROOM) >> 20
        );
        start(counter, log).await;
        Ok(DiskFull {
            slot,
            container: counter.clone(),
        })
    }

    fn fill(&self) -> Result<()> {
        let free = fs_free(&self.slot)?;
        let filler = std::fs::File::create(self.slot.join("chaos-filler"))?;
        let mut left = free.saturating_sub(DISK_LEFT);
        let chunk = vec![1u8; 1 << 20];
        let mut w = std::io::BufWriter::new(filler);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut w, &chunk[..n])?;
            left -= n as u64;
        }
        std::io::Write::flush(&mut w)?;
        Ok(())
    }

    fn unfill(&self) -> Result<()> {
        match std::fs::remove_file(self.slot.join("chaos-filler")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Puts the slot's data back on the host's disk. Whichever counter holds the slot now is
    /// stopped first (a counter restarted during the drill may have claimed another one).
    async fn take_down(self, project: &str) -> Result<()> {
        self.unfill()?;
        let holders = compose_containers(project).await?;
        let mut stopped = Vec::new();
        for c in holders.iter().filter(|c| c.service == "counter") {
            if is_running(c).await {
                docker(&["stop", "-t", "10", &c.id]).await?;
                stopped.push(c.clone());
            }
        }
        let saved = self.slot.with_extension("saved");
        let result = sh(&format!(
            "rm -rf {saved} && cp -a {slot} {saved} && umount {slot} && cp -a {saved}/. {slot}/ && rm -rf {saved}",
            saved = saved.display(),
            slot = self.slot.display(),
        ))
        .await;
        for c in &stopped {
            let _ = docker(&["start", &c.id]).await;
        }
        say!(
            "{} back on the host's disk (held by {} at setup)",
            self.slot.display(),
            self.container.name
        );
        result
    }
}

async fn sh(script: &str) -> Result<()> {
    let out = tokio::process::Command::new("sh")
        .args(["-c", script])
        .output()
        .await?;
    if !out.status.success() {
        bail!("{script}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Bytes used under `path` (`du`).
fn du(path: &std::path::Path) -> Result<u64> {
    let out = std::process::Command::new("du")
        .args(["-sb"])
        .arg(path)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du {}", path.display()))
}

/// Free bytes of the filesystem holding `path` (`df`).
fn fs_free(path: &std::path::Path) -> Result<u64> {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df {}", path.display()))
}

/// The network a container is on (compose puts it on one).
async fn network_of(c: &Container) -> Result<String> {
    let out = docker(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        &c.id,
    ])
    .await?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("{} is on no network", c.name))
}

#[derive(Default)]
struct FaultLog {
    by_kind: BTreeMap<Fault, u64>,
    kills: u64,
    starts: u64,
    docker_errors: u64,
    /// Starts the drill caused, by container name: its `docker start`s and the restarts after crashes.
    caused_starts: BTreeMap<String, u64>,
    /// Crashed containers their restart policy did not bring back.
    not_restarted: Vec<String>,
    /// Containers that did not stop cleanly on SIGTERM.
    unclean_stops: Vec<String>,
    /// When the drill last started each container.
    started_at: BTreeMap<String, Instant>,
    /// Why the `--during` command failed.
    during_failed: Option<String>,
}

/// Runs `command` with `sh -c` while the clients write (instead of faults); a failure is recorded.
async fn run_during(command: &str) -> Result<FaultLog> {
    say!("running under the load: {command}");
    let mut log = FaultLog::default();
    let status = tokio::process::Command::new("sh")
        .args(["-c", command])
        .status()
        .await
        .context("cannot run the --during command")?;
    say!("{command}: {status}");
    if !status.success() {
        log.during_failed = Some(format!("{command:?} failed: {status}"));
    }
    Ok(log)
}

/// Kills and restarts containers, and impairs them (of the `families` asked for), until `end`; then
/// undoes every impairment and starts every container of the project again.
async fn inject_faults(
    project: &str,
    seed: u64,
    end: Instant,
    families: &[Family],
    disk: Option<&DiskFull>,
) -> Result<FaultLog> {
    let mut rng = StdRng::seed_from_u64(seed);
    let all = compose_containers(project).await?;
    let coordinator = all
        .iter()
        .find(|c| c.service == "coordinator")
        .context("no coordinator container")?
        .clone();
    let counters: Vec<Container> = all
        .iter()
        .filter(|c| c.service == "counter")
        .cloned()
        .collect();
    let mut log = FaultLog::default();
    // Killed containers and when to start them again.
    let mut down: Vec<(Container, Instant)> = Vec::new();
    let mut can_crash = true;
    // Impaired containers (running, but paused, cut off, throttled or full), and when to undo it.
    let mut impaired: Vec<(Container, Impairment, Instant)> = Vec::new();
    let impairments: Vec<Family> = families
        .iter()
        .copied()
        .filter(|f| *f != Family::Kill && (*f != Family::Diskfull || disk.is_some()))
        .collect();
    let kills = families.contains(&Family::Kill);

    loop {
        let pause = Duration::from_millis(rng.random_range(2_000..6_000));
        let now = Instant::now();
        if now + pause >= end {
            break;
        }
        tokio::time::sleep(pause).await;

        // Start what is due.
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = down.into_iter().partition(|(_, at)| *at <= now);
        down = later;
        for (c, _) in due {
            start(&c, &mut log).await;
        }
        let (due, later): (Vec<_>, Vec<_>) =
            impaired.into_iter().partition(|(_, _, at)| *at <= now);
        impaired = later;
        for (c, what, _) in due {
            undo(&c, &what, disk, &mut log).await;
        }

        // An impaired container is left alone until it is whole again.
        let is_down = |c: &Container, down: &[(Container, Instant)]| {
            down.iter().any(|(d, _)| d.id == c.id) || impaired.iter().any(|(d, _, _)| d.id == c.id)
        };
        let up: Vec<&Container> = counters.iter().filter(|c| !is_down(c, &down)).collect();
        let coordinator_up = !is_down(&coordinator, &down);
        if !impairments.is_empty() && (!kills || rng.random_bool(0.4)) {
            let family = impairments[rng.random_range(0..impairments.len())];
            let long = rng.random_bool(0.3);
            // The coordinator, a quarter of the time, for the faults that may hit it.
            let on_coordinator = matches!(family, Family::Pause | Family::Disconnect)
                && coordinator_up
                && (up.is_empty() || rng.random_bool(0.25));
            let victim = match family {
                _ if on_coordinator => coordinator.clone(),
                // The counter on the tmpfs slot, if it is whole.
                Family::Diskfull => match disk.map(|d| &d.container) {
                    Some(c) if up.iter().any(|u| u.id == c.id) => c.clone(),
                    _ => continue,
                },
                _ if up.is_empty() => continue,
                _ => up[rng.random_range(0..up.len())].clone(),
            };
            let (fault, what) = match family {
                Family::Pause => (Fault::Pause { long }, Impairment::Paused),
                Family::Disconnect => match network_of(&victim).await {
                    Ok(network) => (
                        Fault::Disconnect { long },
                        Impairment::Disconnected { network },
                    ),
                    Err(e) => {
                        log.docker_errors += 1;
                        say!("{e:#}");
                        continue;
                    }
                },
                Family::Throttle => (Fault::Throttle { long }, Impairment::Throttled),
                Family::Diskfull | Family::Kill => (Fault::DiskFull { long }, Impairment::DiskFull),
            };
            let lasts = Fault::duration(long, &mut rng);
            say!(
                "fault {} on {} for {:.0}s",
                fault.name(),
                victim.name,
                lasts.as_secs_f64()
            );
            match what.inject(&victim, disk).await {
                Ok(()) => {
                    *log.by_kind.entry(fault).or_default() += 1;
                    impaired.push((victim, what, Instant::now() + lasts));
                }
                Err(e) => {
                    log.docker_errors += 1;
                    say!("{e:#}");
                }
            }
            continue;
        }
        if !kills {
            continue;
        }
        let roll = rng.random_range(0..100);
        let fault = match roll {
            0..=39 if !up.is_empty() => Fault::Counter,
            40..=47 if !up.is_empty() => Fault::Stop,
            48..=52 if !up.is_empty() => Fault::CounterLong,
            53..=64 if up.len() >= 2 => Fault::TwoCounters,
            65..=76 if coordinator_up => Fault::Coordinator,
            77..=82 if coordinator_up && !up.is_empty() => Fault::CoordinatorAndCounter,
            83..=94 if can_crash && coordinator_up && !up.is_empty() => Fault::Crash,
            95..=99 => Fault::All,
            _ => continue,
        };
        if fault == Fault::Crash {
            let victim = if rng.random_bool(0.25) {
                coordinator.clone()
            } else {
                up[rng.random_range(0..up.len())].clone()
            };
            say!("fault crash kills the process of {}", victim.name);
            match crash(&victim).await {
                Ok(Crashed::Restarted) => {
                    *log.by_kind.entry(fault).or_default() += 1;
                    *log.caused_starts.entry(victim.name.clone()).or_default() += 1;
                }
                Ok(Crashed::NotRestarted) => {
                    *log.by_kind.entry(fault).or_default() += 1;
                    log.not_restarted.push(format!(
                        "{} was not restarted by its restart policy within {CRASH_RESTART:?} of a crash",
                        victim.name
                    ));
                    start(&victim, &mut log).await;
                }
                Ok(Crashed::Invisible) => {
                    say!("cannot see the containers' processes: no crash faults");
                    can_crash = false;
                }
                Err(e) => {
                    log.docker_errors += 1;
                    say!("{e:#}");
                }
            }
            continue;
        }
        if fault == Fault::Stop {
            let victim = if coordinator_up && rng.random_bool(0.25) {
                coordinator.clone()
            } else {
                up[rng.random_range(0..up.len())].clone()
            };
            // The stop fault is about a running service's graceful path. A SIGTERM in the first
            // milliseconds of a process, before `main` installed its handlers, ends it by the
            // signal's default action: a kill, which the kill faults cover.
            if let Some(at) = log.started_at.get(&victim.name) {
                tokio::time::sleep(STARTUP.saturating_sub(at.elapsed())).await;
            }
            say!("fault stop sends SIGTERM to {}", victim.name);
            *log.by_kind.entry(fault).or_default() += 1;
            let since = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            // A counter holding a YES vote learns its outcome only from the coordinator: with the
            // coordinator down it waits out its shutdown timeout and leaves the vote in doubt, as
            // documented, for the coordinator to resolve after the restart.
            let coordinator_down = victim.name != coordinator.name && !coordinator_up;
            match docker(&["stop", "-t", "10", &victim.id]).await {
                Ok(_) => match unclean_stop(&victim, since, coordinator_down).await {
                    Ok(Some(why)) => log.unclean_stops.push(why),
                    Ok(None) => {}
                    Err(e) => {
                        log.docker_errors += 1;
                        say!("{e:#}");
                    }
                },
                Err(e) => {
                    log.docker_errors += 1;
                    say!("{e}");
                }
            }
            let back = Instant::now() + Duration::from_millis(rng.random_range(500..5_000));
            down.push((victim, back));
            continue;
        }
        let mut victims: Vec<(Container, Duration)> = Vec::new();
        let mut pick_counters = |n: usize, rng: &mut StdRng, long: bool| {
            let mut pool = up.clone();
            for _ in 0..n.min(pool.len()) {
                let c = pool.swap_remove(rng.random_range(0..pool.len()));
                let delay = if long {
                    Duration::from_millis(rng.random_range(35_000..45_000))
                } else {
                    Duration::from_millis(rng.random_range(500..10_000))
                };
                victims.push((c.clone(), delay));
            }
        };
        match fault {
            Fault::Counter => pick_counters(1, &mut rng, false),
            Fault::CounterLong => pick_counters(1, &mut rng, true),
            Fault::TwoCounters => pick_counters(2, &mut rng, false),
            Fault::CoordinatorAndCounter => pick_counters(1, &mut rng, false),
            Fault::Coordinator
            | Fault::Crash
            | Fault::Stop
            | Fault::Drain
            | Fault::Pause { .. }
            | Fault::Disconnect { .. }
            | Fault::Throttle { .. }
            | Fault::DiskFull { .. } => {}
            Fault::All => {
                let mut pool = up.clone();
                pool.sort_by_key(|c| c.name.clone());
                for c in pool {
                    victims.push((
                        c.clone(),
                        Duration::from_millis(rng.random_range(1_000..6_000)),
                    ));
                }
            }
        }
        if matches!(
            fault,
            Fault::Coordinator | Fault::CoordinatorAndCounter | Fault::All
        ) && coordinator_up
        {
            victims.push((
                coordinator.clone(),
                Duration::from_millis(rng.random_range(1_000..5_000)),
            ));
        }
        let names: Vec<&str> = victims.iter().map(|(c, _)| c.name.as_str()).collect();
        say!("fault {} kills {}", fault.name(), names.join(", "));
        *log.by_kind.entry(fault).or_default() += 1;
        // Kill them all first, so "all" and "coordinator+counter" are simultaneous.
        for (c, _) in &victims {
            match docker(&["kill", &c.id]).await {
                Ok(_) => log.kills += 1,
                Err(e) => {
                    log.docker_errors += 1;
                    say!("{e}");
                }
            }
        }
        let now = Instant::now();
        down.extend(victims.into_iter().map(|(c, d)| (c, now + d)));
    }

    // Heal: undo every impairment, start every container that is not running (whoever stopped it).
    for (c, what, _) in impaired {
        undo(&c, &what, disk, &mut log).await;
    }
    for c in compose_containers(project).await? {
        if !is_running(&c).await {
            start(&c, &mut log).await;
        }
    }
    Ok(log)
}

async fn undo(c: &Container, what: &Impairment, disk: Option<&DiskFull>, log: &mut FaultLog) {
    match what.undo(c, disk).await {
        Ok(()) => say!("undid {what:?} of {}", c.name),
        Err(e) => {
            log.docker_errors += 1;
            say!("{e:#}");
        }
    }
}

/// Why a container stopped by `docker stop` did not stop cleanly: an exit status other than 0, or its
/// own word that it gave up waiting (open requests, a running round, transactions in doubt; the last
/// is expected of a counter while the coordinator is down).
async fn unclean_stop(c: &Container, since: u64, coordinator_down: bool) -> Result<Option<String>> {
    let code = docker_on(
        c.host.as_deref(),
        &["inspect", "-f", "{{.State.ExitCode}}", &c.id],
    )
    .await?;
    if code.trim() != "0" {
        return Ok(Some(format!(
            "{} exited with status {} on SIGTERM",
            c.name,
            code.trim()
        )));
    }
    let out = docker_command(c)
        .args(["logs", "--since", &since.to_string(), &c.id])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stderr);
    let gave_up = text.lines().find(|l| l.contains("at the shutdown timeout"));
    if let Some(line) = gave_up {
        if coordinator_down && line.contains("in doubt") {
            say!("{} left votes in doubt: the coordinator is down", c.name);
            return Ok(None);
        }
    }
    Ok(gave_up.map(|l| format!("{} did not finish in time: {l}", c.name)))
}

/// The pid of the service's own process in a container whose first process is `init`: that one,
/// or its child running the service (compose starts the services under docker's init). `None` when
/// the engine's processes are not visible from here.
fn service_pid(init: &str, service: &str) -> Option<String> {
    let is_service = |pid: &str| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .is_some_and(|e| e.file_name() == Some(service.as_ref()))
    };
    if init == "0" {
        return None;
    }
    if is_service(init) {
        return Some(init.to_owned());
    }
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
    children
        .split_whitespace()
        .find(|child| is_service(child))
        .map(str::to_owned)
}

/// How long a just-started container gets before the stop fault may pick it.
const STARTUP: Duration = Duration::from_secs(1);

/// How long a crashed container's restart policy gets to bring it back.
const CRASH_RESTART: Duration = Duration::from_secs(15);

enum Crashed {
    Restarted,
    NotRestarted,
    /// The container's process is not visible from here (a remote engine, another pid namespace).
    Invisible,
}

/// Kills a container's process with SIGKILL from the host (a crash, as far as docker knows), then
/// waits for its restart policy to start it again.
async fn crash(c: &Container) -> Result<Crashed> {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &c.id]).await?;
    let Some(pid) = service_pid(pid.trim(), &c.service) else {
        return Ok(Crashed::Invisible);
    };
    let pid = pid.as_str();
    let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &c.id]).await?;
    let killed = tokio::process::Command::new("kill")
        .args(["-KILL", pid])
        .status()
        .await?;
    if !killed.success() {
        return Ok(Crashed::Invisible);
    }
    let deadline = Instant::now() + CRASH_RESTART;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = docker(&["inspect", "-f", "{{.State.StartedAt}}", &c.id]).await?;
        if now != started && is_running(c).await {
            return Ok(Crashed::Restarted);
        }
    }
    Ok(Crashed::NotRestarted)
}

/// Follows `docker events` for the starts of the project's containers while the drill runs (the
/// engine keeps only a short backlog of events, and health checks fill it quickly).
struct StartWatch {
    /// One `docker events` per engine.
    children: Vec<std::process::Child>,
    names: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Drop for StartWatch {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl StartWatch {
    fn spawn(platform: &Platform) -> Result<StartWatch> {
        let (hosts, filter, format) = platform.start_events();
        let mut watch = StartWatch {
            children: Vec::new(),
            names: Vec::new(),
        };
        for host in hosts {
            let mut cmd = std::process::Command::new("docker");
            if let Some(host) = &host {
                cmd.args(["-H", host]);
            }
            let mut child = cmd
                .args([
                    "events",
                    "--filter",
                    &filter,
                    "--filter",
                    "event=start",
                    "--format",
                    format,
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("cannot run docker events")?;
            let stdout = child.stdout.take().context("no stdout")?;
            watch.children.push(child);
            watch.names.push(std::thread::spawn(move || {
                use std::io::BufRead;
                std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(|l| l.ok())
                    .collect()
            }));
        }
        Ok(watch)
    }

    /// Containers started more often than the drill caused: they stopped on their own and their
    /// restart policy brought them back (a crash the logs may not show, e.g. an abort).
    fn unexpected(mut self, log: &FaultLog) -> Vec<String> {
        // Let the last events arrive, then end our own `docker events`.
        std::thread::sleep(Duration::from_secs(1));
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        for names in std::mem::take(&mut self.names) {
            for name in names.join().unwrap_or_default() {
                *seen.entry(name.trim().to_owned()).or_default() += 1;
            }
        }
        seen.into_iter()
            .filter_map(|(name, n)| {
                let caused = log.caused_starts.get(&name).copied().unwrap_or(0);
                (n > caused).then(|| {
                    format!(
                        "{name} started {n} times, {caused} by the drill: it stopped on its own"
                    )
                })
            })
            .collect()
    }
}

async fn start(c: &Container, log: &mut FaultLog) {
    match docker(&["start", &c.id]).await {
        Ok(_) => {
            log.started_at.insert(c.name.clone(), Instant::now());
            log.starts += 1;
            *log.caused_starts.entry(c.name.clone()).or_default() += 1;
            say!("started {}", c.name);
        }
        Err(e) => {
            log.docker_errors += 1;
            say!("{e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

type Items = Vec<(String, String)>;

/// What writers share with readers and the final checks.
#[derive(Default)]
struct Shared {
    /// Fresh tenants written so far (readers pick from them).
    fresh: Mutex<Vec<String>>,
    /// Batches over two fresh tenants: (tenant, ids in it) twice. Counted both in full or neither.
    pairs: Mutex<Vec<[(String, u64); 2]>>,
    read_failures: AtomicU64,
}

struct Client {
    http: reqwest::Client,
    base: String,
    /// Why POSTs were not acknowledged: answer or error, and how often.
    failures: Mutex<BTreeMap<String, u64>>,
    history: Arc<History>,
}

impl Client {
    async fn post(&self, items: &Items) -> Outcome {
        let body: Vec<serde_json::Value> = items
            .iter()
            .map(|(id, tenant)| serde_json::json!({"id": id, "tenant": tenant}))
            .collect();
        let invoked = self.history.now();
        let status = match self
            .http
            .post(format!("{}/items", self.base))
            .json(&body)
            .send()
            .await
        {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.bytes().await;
                if status != 200 {
                    let error = body
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v["error"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    self.note(format!("{status} {error}"));
                }
                Some(status)
            }
            Err(e) => {
                let kind = if e.is_connect() {
                    "connect"
                } else if e.is_timeout() {
                    "timeout"
                } else {
                    "no answer"
                };
                self.note(format!("{kind} error"));
                None
            }
        };
        let outcome = Outcome::from_status(status);
        self.history.write(invoked, items, outcome);
        outcome
    }

    /// Counts why a POST was not acknowledged (digits dropped, so similar errors group).
    fn note(&self, why: String) {
        let key: String = why
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(100)
            .collect();
        *self.failures.lock().unwrap().entry(key).or_default() += 1;
    }

    /// GET count through the coordinator; recorded in the history when answered.
    async fn read(&self, tenant: &str) -> Option<u64> {
        let invoked = self.history.now();
        let url = format!("{}/items/{}/count", self.base, encode(tenant));
        let resp = self.http.get(url).send().await.ok()?;
        if resp.status() != 200 {
            return None;
        }
        let count = resp.json::<serde_json::Value>().await.ok()?["count"].as_u64()?;
        self.history.read(invoked, tenant, count);
        Some(count)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BatchKind {
    Shared,
    Fresh,
}

struct Writer {
    client: Arc<Client>,
    shared: Arc<Shared>,
    rng: StdRng,
    w: usize,
    run: String,
    next: u64,
    acked: Vec<(BatchKind, Items)>,
    unknown: Vec<(BatchKind, Items)>,
}

fn shared_tenant(run: &str, k: usize) -> String {
    // A few names need percent-encoding in the count path.
    match k % 4 {
        0 => format!("{run}-shared-{k}"),
        1 => format!("{run} shared é {k}"),
        2 => format!("{run}/shared?{k}"),
        _ => format!("{run}-shared-\u{1F600}-{k}"),
    }
}

impl Writer {
    fn id(&mut self) -> String {
        self.next += 1;
        format!("{}-w{}-{}", self.run, self.w, self.next)
    }

    fn remember(list: &mut Vec<(BatchKind, Items)>, kind: BatchKind, items: &Items) {
        if list.len() >= REMEMBERED {
            list.remove(0);
        }
        list.push((kind, items.clone()));
    }

    async fn run(mut self, stop: Arc<AtomicBool>) {
        let mut fresh = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let roll = self.rng.random_range(0..100);
            let (kind, items): (BatchKind, Items) = if roll < 50 {
                // Unique ids over one to three shared tenants.
                let tenants: Vec<String> = (0..self.rng.random_range(1..=3))
                    .map(|_| shared_tenant(&self.run, self.rng.random_range(0..SHARED_TENANTS)))
                    .collect();
                let n = self.rng.random_range(1..=30);
                let items = (0..n)
                    .map(|_| {
                        let t = tenants[self.rng.random_range(0..tenants.len())].clone();
                        (self.id(), t)
                    })
                    .collect();
                (BatchKind::Shared, items)
            } else if roll < 60 && !self.acked.is_empty() {
                // Re-send an acknowledged batch as it was.
                let i = self.rng.random_range(0..self.acked.len());
                self.acked[i].clone()
            } else if roll < 66 && self.acked.iter().any(|(k, _)| *k == BatchKind::Shared) {
                // Acknowledged ids of a shared batch mixed with new ones.
                let old: Vec<&Items> = self
                    .acked
                    .iter()
                    .filter(|(k, _)| *k == BatchKind::Shared)
                    .map(|(_, b)| b)
                    .collect();
                let mut items: Items = old[self.rng.random_range(0..old.len())].clone();
                items.truncate(items.len().div_ceil(2));
                for _ in 0..self.rng.random_range(1..=10) {
                    let t = shared_tenant(&self.run, self.rng.random_range(0..SHARED_TENANTS));
                    items.push((self.id(), t));
                }
                (BatchKind::Shared, items)
            } else if roll < 72 && !self.unknown.is_empty() {
                // A client retrying a POST whose outcome it does not know.
                let i = self.rng.random_range(0..self.unknown.len());
                self.unknown.swap_remove(i)
            } else {
                // A batch to fresh tenants: the tenant's count shows whether it was applied whole.
                fresh += 1;
                let t1 = format!("{}-fresh-w{}-{fresh}", self.run, self.w);
                let mut items: Items = (0..self.rng.random_range(2..=25))
                    .map(|_| (self.id(), t1.clone()))
                    .collect();
                let mut tenants = vec![t1.clone()];
                if self.rng.random_bool(0.4) {
                    let t2 = format!("{t1}-b");
                    let n2 = self.rng.random_range(1..=15);
                    items.extend((0..n2).map(|_| (self.id(), t2.clone())));
                    let n1 = items.len() as u64 - n2;
                    self.shared
                        .pairs
                        .lock()
                        .unwrap()
                        .push([(t1, n1), (t2.clone(), n2)]);
                    tenants.push(t2);
                }
                self.shared.fresh.lock().unwrap().extend(tenants);
                (BatchKind::Fresh, items)
            };
            let pause = match self.client.post(&items).await {
                Outcome::Ok => {
                    Self::remember(&mut self.acked, kind, &items);
                    self.rng.random_range(5..40)
                }
                // Back off a little while the cluster cannot take writes.
                Outcome::Unknown => {
                    Self::remember(&mut self.unknown, kind, &items);
                    self.rng.random_range(100..300)
                }
                Outcome::Failed => self.rng.random_range(100..300),
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

async fn reader(
    client: Arc<Client>,
    shared: Arc<Shared>,
    run: String,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let fresh = {
            let list = shared.fresh.lock().unwrap();
            (!list.is_empty() && rng.random_bool(0.5))
                .then(|| list[rng.random_range(0..list.len())].clone())
        };
        let tenant =
            fresh.unwrap_or_else(|| shared_tenant(&run, rng.random_range(0..SHARED_TENANTS)));
        if client.read(&tenant).await.is_none() {
            shared.read_failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..40))).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Convergence and final state

async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T> {
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("GET {url} answered {status}");
    }
    resp.json()
        .await
        .with_context(|| format!("GET {url}: bad body"))
}

async fn post_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    body: &impl serde::Serialize,
) -> Result<T> {
    let resp = http
        .post(url)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("POST {url} answered {status}");
    }
    resp.json()
        .await
        .with_context(|| format!("POST {url}: bad body"))
}

/// A counter as the coordinator lists it, checked against its container.
struct Member {
    node_id: String,
    /// Where the drill reaches it (its advertised URL, on a compose network).
    url: String,
}

/// Waits until the coordinator lists exactly the counter containers (by address), all in sync, and
/// each counter reports the coordinator's committed seq itself. `internal` carries the cluster token.
async fn converge(
    platform: &Platform,
    internal: &reqwest::Client,
    timeout: Duration,
) -> Result<(ClusterView, Vec<Member>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let why = match converged_once(platform, internal).await {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(why)) => why,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("not converged after {timeout:?}: {why}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn converged_once(
    platform: &Platform,
    internal: &reqwest::Client,
) -> Result<Result<(ClusterView, Vec<Member>), String>> {
    // Advertised address -> (container name, address the drill reaches it at).
    let mut ips: BTreeMap<String, (String, String)> = BTreeMap::new();
    let counters: Vec<Container> = platform
        .containers()
        .await?
        .into_iter()
        .filter(|c| c.service == "counter")
        .collect();
    if let Some(wanted) = platform.wanted_counters().await? {
        if counters.len() != wanted {
            return Ok(Err(format!(
                "{} counter tasks run, {wanted} wanted",
                counters.len()
            )));
        }
    }
    for c in &counters {
        if !is_running(c).await {
            return Ok(Err(format!("{} is not running", c.name)));
        }
        for (ip, reach) in platform.addresses(c).await? {
            ips.insert(ip, (c.name.clone(), reach));
        }
    }
    let base = coordinator_internal_url(platform).await?;
    let view: ClusterView = get_json(internal, &format!("{base}/internal/cluster")).await?;
    if view.counters.len() != counters.len() {
        return Ok(Err(format!(
            "{} counters registered, {} containers: {view:?}",
            view.counters.len(),
            counters.len()
        )));
    }
    let mut members = Vec::new();
    let mut seen = BTreeSet::new();
    for c in &view.counters {
        if c.state != MemberState::InSync {
            return Ok(Err(format!("{} is {}: {view:?}", c.node_id, c.state)));
        }
        let host = c
            .url
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        let Some((name, reach)) = ips.get(&host) else {
            return Ok(Err(format!(
                "{} advertises {}, no counter container's address",
                c.node_id, c.url
            )));
        };
        if !seen.insert(name.clone()) {
            return Ok(Err(format!(
                "two counters advertise the address of {name}: {view:?}"
            )));
        }
        let url = c.url.replacen(&host, reach, 1);
        let status: CounterStatus = get_json(internal, &format!("{url}/internal/status")).await?;
        if status.node_id != c.node_id {
            return Ok(Err(format!(
                "{} answers at the address of {}",
                status.node_id, c.node_id
            )));
        }
        if status.last_applied != view.committed_seq {
            return Ok(Err(format!(
                "{} applied {} of {}",
                c.node_id, status.last_applied, view.committed_seq
            )));
        }
        members.push(Member {
            node_id: c.node_id.clone(),
            url,
        });
    }
    Ok(Ok((view, members)))
}

/// Final counts through the coordinator, then from every counter directly (with `internal`, which
/// carries the cluster token). Returns the coordinator's counts and the divergences found.
async fn final_counts(
    http: &reqwest::Client,
    internal: &reqwest::Client,
    base: &str,
    members: &[Member],
    committed_seq: u64,
    tenants: Vec<String>,
) -> (BTreeMap<String, u64>, Vec<String>) {
    const TASKS: usize = 8;
    let members: Arc<Vec<(String, String)>> = Arc::new(
        members
            .iter()
            .map(|m| (m.node_id.clone(), m.url.clone()))
            .collect(),
    );
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for part in 0..TASKS {
        let mine: Vec<String> = tenants.iter().skip(part).step_by(TASKS).cloned().collect();
        let (http, internal, base, members, failures) = (
            http.clone(),
            internal.clone(),
            base.to_owned(),
            members.clone(),
            failures.clone(),
        );
        tasks.spawn(async move {
            let mut counts = BTreeMap::new();
            let mut problems = Vec::new();
            for t in mine {
                let mut count = None;
                // Retries, until failures pile up: then the coordinator is not coming back soon.
                for _ in 0..5 {
                    let url = format!("{base}/items/{}/count", encode(&t));
                    match get_json::<serde_json::Value>(&http, &url).await {
                        Ok(v) if v["count"].is_u64() => {
                            count = v["count"].as_u64();
                            break;
                        }
                        _ if failures.fetch_add(1, Ordering::Relaxed) < 50 => {
                            tokio::time::sleep(Duration::from_millis(500)).await
                        }
                        _ => break,
                    }
                }
                // A missing count is reported by the history check.
                let Some(count) = count else { continue };
                for (node, url) in members.iter() {
                    let url = format!("{url}{}", paths::COUNTS);
                    let ask = CountsRequest { tenants: vec![t.clone()] };
                    match post_json::<Counts>(&internal, &url, &ask).await {
                        Ok(c) if c.counts == [count] && c.last_applied == committed_seq => {}
                        Ok(c) => problems.push(format!(
                            "divergence: counter {node} counts {:?} for {t:?} at seq {}, the coordinator answered {count} at seq {committed_seq}",
                            c.counts, c.last_applied
                        )),
                        Err(e) => problems.push(format!("divergence: counter {node} did not answer for {t:?}: {e:#}")),
                    }
                }
                counts.insert(t, count);
            }
            (counts, problems)
        });
    }
    let mut counts = BTreeMap::new();
    let mut problems = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (c, p) = done.expect("count task panicked");
        counts.extend(c);
        problems.extend(p);
    }
    (counts, problems)
}

struct LogScan {
    panics: Vec<String>,
    fatal: Vec<String>,
    errors: usize,
    /// Databases that failed a flush (a full disk), and services that restarted in place to reopen
    /// theirs once space was freed.
    disk_failures: usize,
    reopened: usize,
}

/// Panics and fatal start errors in the logs of every container of the cluster since `since`.
async fn scan_logs(platform: &Platform, since: u64) -> Result<LogScan> {
    let mut scan = LogScan {
        panics: Vec::new(),
        fatal: Vec::new(),
        errors: 0,
        disk_failures: 0,
        reopened: 0,
    };
    for c in platform.logged_containers().await? {
        let out = docker_command(&c)
            .args(["logs", "--since", &since.to_string(), &c.id])
            .output()
            .await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for line in text.lines() {
            if line.contains("panicked at") || line.contains("RUST_BACKTRACE") {
                scan.panics.push(format!("{}: {line}", c.name));
            } else if line.contains("counter failed:") || line.contains("coordinator failed:") {
                scan.fatal.push(format!("{}: {line}", c.name));
            } else if line.contains(" ERROR ") {
                scan.errors += 1;
            }
            scan.disk_failures += usize::from(line.contains("flush failed"));
            scan.reopened += usize::from(line.contains("restarting to reopen the database"));
        }
    }
    Ok(scan)
}

// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    match drill().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            println!("chaos FAILED: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn drill() -> Result<bool> {
    let mut s = <Settings as clap::Parser>::parse();
    s.url = s.url.trim_end_matches('/').to_owned();
    let seed = *s.seed.get_or_insert_with(|| rand::random::<u32>().into());
    let began = Instant::now();
    let began_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let since = (began_unix as u64).saturating_sub(1);
    let run = format!("chaos-{since}-{seed}");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let token = std::fs::read_to_string(&s.token_file)
        .with_context(|| format!("cannot read the cluster token file {}", s.token_file))?;
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .context("the cluster token is not a valid header value")?;
    auth.set_sensitive(true);
    let internal = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .default_headers(
            [(reqwest::header::AUTHORIZATION, auth)]
                .into_iter()
                .collect(),
        )
        .build()?;
    let phase = match &s.during {
        Some(command) => format!("{command:?} under the load"),
        None => format!("{} s of faults", s.secs),
    };
    say!("seed {seed} (replay with CHAOS_SEED={seed}), {phase}, tenants {run}-*");

    let platform = match s.platform.as_str() {
        "compose" => Platform::Compose(s.project.clone()),
        "swarm" => Platform::Swarm(swarm::Stack::new(&s.stack, &s.docker_hosts)),
        other => bail!("--platform is compose or swarm, not {other:?}"),
    };
    let all = platform.containers().await?;
    let n_counters = all.iter().filter(|c| c.service == "counter").count();
    if n_counters == 0 || !all.iter().any(|c| c.service == "coordinator") {
        bail!(
            "{} has no coordinator or no counter: run make up (or make stack-up)",
            platform.describe()
        );
    }
    let (before, _) = converge(&platform, &internal, Duration::from_secs(s.converge_secs))
        .await
        .context("the cluster is not ready before the drill")?;
    say!(
        "{n_counters} counters in sync at seq {}",
        before.committed_seq
    );

    let history = Arc::new(History::new());
    let shared = Arc::new(Shared::default());
    let client = Arc::new(Client {
        http: http.clone(),
        base: s.url.clone(),
        failures: Mutex::default(),
        history: history.clone(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..s.writers {
        let writer = Writer {
            client: client.clone(),
            shared: shared.clone(),
            rng: StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(w as u64 + 1)),
            w,
            run: run.clone(),
            next: 0,
            acked: Vec::new(),
            unknown: Vec::new(),
        };
        tasks.push(tokio::spawn(writer.run(stop.clone())));
    }
    for r in 0..s.readers {
        let seed = seed.wrapping_mul(77).wrapping_add(r as u64 + 1000);
        tasks.push(tokio::spawn(reader(
            client.clone(),
            shared.clone(),
            run.clone(),
            seed,
            stop.clone(),
        )));
    }

    let mut setup_log = FaultLog::default();
    // The full-disk fault moves a counter's compose slot onto a tmpfs: only on compose, with faults.
    let disk = match (&platform, &s.during) {
        (Platform::Compose(project), None) if s.faults.contains(&Family::Diskfull) => {
            let counter = all
                .iter()
                .find(|c| c.service == "counter")
                .context("no counter")?;
            let disk = DiskFull::set_up(counter, &s.counter_volume, &mut setup_log).await?;
            let ready = converge(&platform, &internal, Duration::from_secs(s.converge_secs)).await;
            if let Err(e) = ready {
                disk.take_down(project).await?;
                return Err(
                    e.context("the cluster did not converge after moving a slot onto a tmpfs")
                );
            }
            Some(disk)
        }
        _ => None,
    };
    let watch = StartWatch::spawn(&platform)?;
    let end = Instant::now() + Duration::from_secs(s.secs);
    let faults = match (&platform, &s.during) {
        (_, Some(command)) => run_during(command).await,
        (Platform::Compose(project), None) => {
            inject_faults(project, seed, end, &s.faults, disk.as_ref()).await
        }
        (Platform::Swarm(stack), None) => swarm::inject_faults(stack, seed, end).await,
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let faults = match faults {
        Ok(faults) => faults,
        Err(e) => {
            if let Some(disk) = disk {
                disk.take_down(&s.project).await?;
            }
            return Err(e);
        }
    };

    let healed = Instant::now();
    let converged = converge(&platform, &internal, Duration::from_secs(s.converge_secs)).await;
    let converge_secs = healed.elapsed().as_secs_f64();
    let mut violations: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let (seq, divergences, final_counts) = match &converged {
        Ok((view, members)) => {
            let tenants = history.tenants().into_iter().collect();
            let (counts, div) = final_counts(
                &http,
                &internal,
                &s.url,
                members,
                view.committed_seq,
                tenants,
            )
            .await;
            (view.committed_seq.to_string(), div, Some(counts))
        }
        Err(e) => {
            violations
                .entry("convergence")
                .or_default()
                .push(format!("{e:#}"));
            ("? (not converged)".to_owned(), Vec::new(), None)
        }
    };
    // Without convergence there are no final counts to check the history against: only its figures.
    let mut report = history.check(final_counts.as_ref().unwrap_or(&BTreeMap::new()));
    if final_counts.is_none() {
        report.violations.clear();
    }
    let final_counts = final_counts.unwrap_or_default();
    if s.all_acknowledged {
        let availability = violations.entry("availability").or_default();
        if report.acknowledged != report.writes {
            availability.push(format!(
                "{} of {} writes not acknowledged",
                report.writes - report.acknowledged,
                report.writes
            ));
        }
    }
    violations
        .entry("history")
        .or_default()
        .extend(report.violations.iter().cloned());
    violations
        .entry("divergence")
        .or_default()
        .extend(divergences);
    for [(t1, n1), (t2, n2)] in shared.pairs.lock().unwrap().iter() {
        let (c1, c2) = (final_counts.get(t1), final_counts.get(t2));
        if let (Some(&c1), Some(&c2)) = (c1, c2) {
            if (c1 == *n1) != (c2 == *n2) {
                violations.entry("cross-tenant").or_default().push(format!(
                    "torn batch over two tenants: {t1:?} counts {c1} of {n1}, {t2:?} counts {c2} of {n2}"
                ));
            }
        }
    }
    let logs = scan_logs(&platform, since).await;
    // A command run under the load (an upgrade) starts containers the drill does not count.
    let restarts = match s.during {
        Some(_) => Vec::new(),
        None => watch.unexpected(&faults),
    };
    // After the last look at the logs and the starts: putting the slot back stops and starts counters.
    if let Some(disk) = disk {
        if let Err(e) = disk.take_down(&s.project).await {
            violations
                .entry("cleanup")
                .or_default()
                .push(format!("{e:#}"));
        }
    }
    let logs = logs?;
    violations.entry("panics").or_default().extend(logs.panics);
    violations.entry("fatal").or_default().extend(logs.fatal);
    violations
        .entry("self-restarts")
        .or_default()
        .extend(restarts);
    violations
        .entry("restart-policy")
        .or_default()
        .extend(faults.not_restarted.iter().cloned());
    violations
        .entry("unclean-stop")
        .or_default()
        .extend(faults.unclean_stops.iter().cloned());
    if let Some(failed) = &faults.during_failed {
        violations.entry("during").or_default().push(failed.clone());
    }

    let mut why: Vec<(u64, String)> = client
        .failures
        .lock()
        .unwrap()
        .iter()
        .map(|(k, n)| (*n, k.clone()))
        .collect();
    why.sort_by(|a, b| b.cmp(a));
    for (n, k) in why.iter().take(8) {
        say!("{n:>6} POSTs not acknowledged: {k}");
    }

    let total: usize = violations.values().map(Vec::len).sum();
    for (kind, list) in &violations {
        for v in list.iter().take(20) {
            say!("violation ({kind}): {v}");
        }
        if list.len() > 20 {
            say!("... and {} more {kind} violations", list.len() - 20);
        }
    }
    let fault_figures: Vec<String> = faults
        .by_kind
        .iter()
        .map(|(k, n)| format!("{} {n}", k.name()))
        .collect();
    let violation_figures: Vec<String> = violations
        .iter()
        .map(|(k, v)| format!("{k} {}", v.len()))
        .collect();
    println!(
        "chaos {}: {:.0}s, seed {}, {n_counters} counters; {} operations: {} writes ({} acknowledged, {} refused, {} unknown), {} reads ({} failed, {} non-monotonic), {} tenants; {} faults ({}; {} kills, {} starts, {} docker errors); converged in {converge_secs:.1}s at seq {seq}; {} error log lines, {} disk failures, {} reopened; {total} violations ({})",
        if total == 0 { "PASS" } else { "FAIL" },
        began.elapsed().as_secs_f64(),
        seed,
        report.writes + report.reads + shared.read_failures.load(Ordering::Relaxed) as usize,
        report.writes,
        report.acknowledged,
        report.refused,
        report.unknown,
        report.reads + shared.read_failures.load(Ordering::Relaxed) as usize,
        shared.read_failures.load(Ordering::Relaxed),
        report.non_monotonic,
        report.tenants,
        faults.by_kind.values().sum::<u64>(),
        fault_figures.join(", "),
        faults.kills,
        faults.starts,
        faults.docker_errors,
        logs.errors,
        logs.disk_failures,
        logs.reopened,
        violation_figures.join(", "),
    );
    Ok(total == 0)
}
