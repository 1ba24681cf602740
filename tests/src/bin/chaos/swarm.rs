//! The drill on a Swarm stack (`--platform swarm`): finding the stack's task containers on every
//! node's engine, reaching them, and Swarm's faults.
//!
//! Swarm replaces a task whose container stopped with a new container (restart policy `any`), so the
//! faults only kill or stop: `docker kill` of one or more task containers (a counter, two, the
//! coordinator, the coordinator and a counter, everything), `docker stop` checked for a clean exit as
//! on compose, and, when the swarm has a worker node, draining it (its counters are rescheduled on
//! the other node, with empty volumes there, and caught up) and making it active again. Starts are
//! counted per service, as every restart is a new container with a new name.
//!
//! The overlay network is not routed to the host: the drill reaches a task at its address on its
//! node's `docker_gwbridge`, where the services' listeners (0.0.0.0) answer too.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{docker_on, unclean_stop, Container, Fault, FaultLog};

pub struct Stack {
    pub name: String,
    /// `docker -H` of every node's engine, the first a manager; `None` is the local engine.
    pub hosts: Vec<Option<String>>,
}

impl Stack {
    pub fn new(name: &str, hosts: &str) -> Stack {
        let mut list: Vec<Option<String>> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| Some(h.to_owned()))
            .collect();
        if list.is_empty() {
            list.push(None);
        }
        Stack {
            name: name.to_owned(),
            hosts: list,
        }
    }

    fn manager(&self) -> Option<&str> {
        self.hosts[0].as_deref()
    }

    /// The stack's task containers on every engine: running ones, or all (stopped tasks too).
    pub async fn containers(&self, all: bool) -> Result<Vec<Container>> {
        let filter = format!("label=com.docker.stack.namespace={}", self.name);
        let prefix = format!("{}_", self.name);
        let mut list = Vec::new();
        for host in &self.hosts {
            let mut args = vec!["ps", "--filter", &filter];
            if all {
                args.push("-a");
            }
            args.extend([
                "--format",
                "{{.ID}} {{.Names}} {{.Label \"com.docker.swarm.service.name\"}}",
            ]);
            let out = docker_on(host.as_deref(), &args).await?;
            list.extend(out.lines().filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(Container {
                    id: f.next()?.to_owned(),
                    name: f.next()?.to_owned(),
                    service: f.next()?.strip_prefix(&prefix)?.to_owned(),
                    host: host.clone(),
                })
            }));
        }
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// The container's address on its node's `docker_gwbridge`.
    pub async fn gateway_ip(&self, c: &Container) -> Result<String> {
        let out = docker_on(
            c.host.as_deref(),
            &[
                "network",
                "inspect",
                "docker_gwbridge",
                "-f",
                "{{range $id, $e := .Containers}}{{$id}} {{$e.IPv4Address}}\n{{end}}",
            ],
        )
        .await?;
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(id, _)| id.starts_with(&c.id))
            .and_then(|(_, ip)| ip.split('/').next())
            .map(str::to_owned)
            .with_context(|| format!("{} has no address on docker_gwbridge", c.name))
    }

    /// The replicas the service of the stack should run.
    pub async fn replicas(&self, service: &str) -> Result<usize> {
        let out = docker_on(
            self.manager(),
            &[
                "service",
                "inspect",
                "-f",
                "{{.Spec.Mode.Replicated.Replicas}}",
                &format!("{}_{service}", self.name),
            ],
        )
        .await?;
        out.trim()
            .parse()
            .with_context(|| format!("replicas of {service}: {out:?}"))
    }

    async fn workers(&self) -> Result<Vec<String>> {
        let out = docker_on(
            self.manager(),
            &["node", "ls", "-q", "--filter", "role=worker"],
        )
        .await?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }

    /// Running tasks of the stack's service on `node`.
    async fn tasks_on(&self, node: &str, service: &str) -> Result<u64> {
        let out = docker_on(
            self.manager(),
            &[
                "node",
                "ps",
                "-q",
                "--filter",
                "desired-state=running",
                "--filter",
                &format!("name={}_{service}", self.name),
                node,
            ],
        )
        .await?;
        Ok(out.split_whitespace().count() as u64)
    }

    async fn set_availability(&self, node: &str, availability: &str) -> Result<()> {
        docker_on(
            self.manager(),
            &["node", "update", "--availability", availability, node],
        )
        .await?;
        Ok(())
    }

    /// What the start watch counts a restart of `service` under.
    fn started(&self, log: &mut FaultLog, service: &str, n: u64) {
        *log.caused_starts
            .entry(format!("{}_{service}", self.name))
            .or_default() += n;
        log.starts += n;
    }
}

/// Kills and stops task containers (and drains a worker) until `end`; Swarm restarts them. A drained
/// node is made active again before this returns.
pub async fn inject_faults(stack: &Stack, seed: u64, end: Instant) -> Result<FaultLog> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = FaultLog::default();
    let workers = stack.workers().await?;
    let mut drained: Option<(String, Instant)> = None;
    loop {
        let pause = Duration::from_millis(rng.random_range(2_000..6_000));
        if Instant::now() + pause >= end {
            break;
        }
        tokio::time::sleep(pause).await;
        if let Some((node, _)) = drained.as_ref().filter(|(_, at)| *at <= Instant::now()) {
            say!("node {node} active again");
            stack.set_availability(node, "active").await?;
            drained = None;
        }

        let running = stack.containers(false).await?;
        let counters: Vec<&Container> = running.iter().filter(|c| c.service == "counter").collect();
        let coordinator = running.iter().find(|c| c.service == "coordinator");
        let fault = match rng.random_range(0..100) {
            0..=44 if !counters.is_empty() => Fault::Counter,
            45..=54 if !counters.is_empty() => Fault::Stop,
            55..=66 if counters.len() >= 2 => Fault::TwoCounters,
            67..=78 if coordinator.is_some() => Fault::Coordinator,
            79..=84 if coordinator.is_some() && !counters.is_empty() => {
                Fault::CoordinatorAndCounter
            }
            85..=89 if coordinator.is_some() => Fault::All,
            90..=99 if drained.is_none() && !workers.is_empty() => Fault::Drain,
            _ => continue,
        };
        *log.by_kind.entry(fault).or_default() += 1;
        match fault {
            Fault::Drain => {
                let node = workers[rng.random_range(0..workers.len())].clone();
                let moved = stack.tasks_on(&node, "counter").await?;
                say!("fault drain of node {node}, running {moved} counters");
                stack.set_availability(&node, "drain").await?;
                stack.started(&mut log, "counter", moved);
                let back = Instant::now() + Duration::from_millis(rng.random_range(10_000..20_000));
                drained = Some((node, back));
            }
            Fault::Stop => {
                let victim = match coordinator {
                    Some(c) if rng.random_bool(0.25) => c,
                    _ => counters[rng.random_range(0..counters.len())],
                };
                say!("fault stop sends SIGTERM to {}", victim.name);
                let since = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
                let coordinator_down = victim.service != "coordinator" && coordinator.is_none();
                match docker_on(victim.host.as_deref(), &["stop", "-t", "10", &victim.id]).await {
                    Ok(_) => {
                        stack.started(&mut log, &victim.service, 1);
                        match unclean_stop(victim, since, coordinator_down).await {
                            Ok(Some(why)) => log.unclean_stops.push(why),
                            Ok(None) => {}
                            Err(e) => {
                                log.docker_errors += 1;
                                say!("{e:#}");
                            }
                        }
                    }
                    Err(e) => {
                        log.docker_errors += 1;
                        say!("{e}");
                    }
                }
            }
            _ => {
                let mut victims: Vec<&Container> = Vec::new();
                let mut pool = counters.clone();
                let n = match fault {
                    Fault::TwoCounters => 2,
                    Fault::All => pool.len(),
                    Fault::Coordinator => 0,
                    _ => 1,
                };
                for _ in 0..n.min(pool.len()) {
                    victims.push(pool.swap_remove(rng.random_range(0..pool.len())));
                }
                if matches!(
                    fault,
                    Fault::Coordinator | Fault::CoordinatorAndCounter | Fault::All
                ) {
                    victims.extend(coordinator);
                }
                let names: Vec<&str> = victims.iter().map(|c| c.name.as_str()).collect();
                say!("fault {} kills {}", fault.name(), names.join(", "));
                for c in victims {
                    match docker_on(c.host.as_deref(), &["kill", &c.id]).await {
                        Ok(_) => {
                            log.kills += 1;
                            stack.started(&mut log, &c.service, 1);
                        }
                        Err(e) => {
                            log.docker_errors += 1;
                            say!("{e}");
                        }
                    }
                }
            }
        }
    }
    if let Some((node, _)) = drained {
        say!("node {node} active again");
        stack.set_availability(&node, "active").await?;
    }
    Ok(log)
}
