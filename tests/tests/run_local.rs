//! `make run` survives a crash: `scripts/run-local.sh` runs every service under a supervisor loop
//! that restarts it a second after it exits, while the other services keep running, and a SIGTERM to
//! the script stops every service and every loop, leaving no process behind.
//!
//! The test runs the real script on the workspace's binaries (`make test` builds them first), with a
//! temporary data directory and free ports, SIGKILLs one counter, and checks that writes and reads keep
//! succeeding on the public port, that the counter is started again and rejoins in sync, that counts
//! stay right, and that stopping the script's process group ends everything. Every wait polls for its
//! condition with a deadline; a guard kills the whole process group if the test fails halfway.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the cluster may take to start answering, and a restarted counter to rejoin in sync.
const START: Duration = Duration::from_secs(60);
/// How long the script may take to stop everything after SIGTERM (it kills a service that has not
/// stopped after STOP_TIMEOUT, 10 s).
const STOP: Duration = Duration::from_secs(20);
const COUNTERS: u16 = 3;
/// The counter that is killed: `$DATA/counter-2`, listening on `PORT + 102`.
const VICTIM: u16 = 2;
const TENANT: &str = "run-local-test";

/// The script's process group (the script leads it): killed with SIGKILL when dropped before the test
/// stopped it, so a failing test leaves no cluster behind.
struct ScriptGroup {
    child: Child,
    log: PathBuf,
}

impl ScriptGroup {
    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .status();
    }

    /// The script's exit status, waiting until `deadline`.
    fn wait_exit(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ScriptGroup {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal_group("-KILL");
            let _ = self.child.wait();
        }
    }
}

/// Pids of the processes whose command line matches the extended regex `pattern`.
fn pgrep(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", "--", pattern])
        .output()
        .expect("run pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|pid| pid.parse().expect("pgrep prints pids"))
        .collect()
}

/// `text` as an extended regex matching itself.
fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.[]{}()*+?^$|".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// A port such that it, the next one (the internal API) and the counters' `PORT + 100 + i` are all
/// free. Chosen below the kernel's ephemeral range (32768 and up by default), so that the other tests'
/// port-0 listeners cannot take them between this check and the services binding them.
fn free_ports() -> u16 {
    for _ in 0..200 {
        let port = 20_000 + rand::random::<u16>() % 10_000;
        let wanted: Vec<u16> = [port, port + 1]
            .into_iter()
            .chain((1..=COUNTERS).map(|i| port + 100 + i))
            .collect();
        let bound: Vec<_> = wanted
            .iter()
            .map_while(|p| TcpListener::bind(("127.0.0.1", *p)).ok())
            .collect();
        if bound.len() == wanted.len() {
            return port;
        }
    }
    panic!("no free ports found");
}

struct Api {
    http: reqwest::Client,
    base: String,
    internal: String,
    token: String,
}

impl Api {
    /// POSTs one item; the status and body.
    async fn post(&self, id: &str) -> Result<(u16, Value), String> {
        let body = serde_json::json!([{ "id": id, "tenant": TENANT }]).to_string();
        let resp = self
            .http
            .post(format!("{}/items", self.base))
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.map_err(|e| e.to_string())?))
    }

    async fn post_ok(&self, id: &str) {
        match self.post(id).await {
            Ok((200, body)) if body["status"] == "success" => {}
            other => panic!("POST of {id} failed: {other:?}"),
        }
    }

    async fn count(&self) -> Result<u64, String> {
        let url = format!("{}/items/{TENANT}/count", self.base);
        let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        match body["count"].as_u64() {
            Some(n) if status == 200 => Ok(n),
            _ => Err(format!("{status} {body}")),
        }
    }

    /// The counters' states in the coordinator's view, by the port of their URL.
    async fn states(&self) -> Result<Vec<(String, String)>, String> {
        let resp = self
            .http
            .get(format!("{}/internal/cluster", self.internal))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let view: Value = resp.json().await.map_err(|e| e.to_string())?;
        let counters = view["counters"].as_array().ok_or(format!("{view}"))?;
        Ok(counters
            .iter()
            .map(|c| {
                let url = c["url"].as_str().unwrap_or_default().to_owned();
                (url, c["state"].as_str().unwrap_or_default().to_owned())
            })
            .collect())
    }
}

#[tokio::test]
async fn run_local_restarts_a_killed_counter_and_stops_cleanly() {
    let bin_dir = dc_tests::bin("coordinator")
        .parent()
        .expect("binary directory")
        .to_owned();
    assert!(bin_dir.join("counter").is_file());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/run-local.sh");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("run-local.log");
    let port = free_ports();
    let internal_port = port + 1;

    let log_file = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new(&script)
        .env("BIN", &bin_dir)
        .env("DATA", &data)
        .env("PORT", port.to_string())
        .env("INTERNAL_PORT", internal_port.to_string())
        .env("COUNTERS", COUNTERS.to_string())
        .env("RUST_LOG", "info")
        .env_remove("DC_CRASH_AT")
        // The defaults: a restart 1 s after an exit.
        .env_remove("RESTART_DELAY")
        .env_remove("STOP_TIMEOUT")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        // Its own process group, so the guard (and the stop below) reach every process it started.
        .process_group(0)
        .spawn()
        .expect("start scripts/run-local.sh");
    let mut group = ScriptGroup { child, log };

    // The services' command lines hold `--data-dir $DATA/<name>`; nothing else holds $DATA.
    let data_pattern = regex_escape(&data.display().to_string());
    let victim_pattern = format!("--data-dir {data_pattern}/counter-{VICTIM}( |$)");

    // Up: a POST succeeds (the coordinator answers and a counter has registered).
    let mut api = Api {
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        base: format!("http://127.0.0.1:{port}"),
        internal: format!("http://127.0.0.1:{internal_port}"),
        token: String::new(),
    };
    let mut posted = 0u64;
    let deadline = Instant::now() + START;
    loop {
        if let Ok((200, _)) = api.post("item-0").await {
            posted += 1;
            break;
        }
        if let Some(status) = group.child.try_wait().unwrap() {
            panic!("run-local.sh exited with {status}:\n{}", group.log_tail());
        }
        assert!(
            Instant::now() < deadline,
            "no successful POST in {START:?}:\n{}",
            group.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.token = std::fs::read_to_string(data.join("cluster-token"))
        .unwrap()
        .trim()
        .to_owned();
    let victim_url = format!(":{}", port + 100 + VICTIM);

    // Every counter in sync, so that the victim is one of the replicas taking writes when it dies.
    let deadline = Instant::now() + START;
    loop {
        let states = api.states().await;
        let in_sync = states.as_ref().map_or(0, |s| {
            s.iter().filter(|(_, state)| state == "InSync").count()
        });
        if in_sync == COUNTERS as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters not in sync in {START:?}: {states:?}\n{}",
            group.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let victims = pgrep(&victim_pattern);
    assert_eq!(
        victims.len(),
        1,
        "one process for counter-{VICTIM}: {victims:?}"
    );
    let others: Vec<u32> = pgrep(&data_pattern)
        .into_iter()
        .filter(|pid| !victims.contains(pid))
        .collect();
    assert_eq!(
        others.len(),
        COUNTERS as usize,
        "the coordinator and the other counters: {others:?}"
    );
    let victim = victims[0];
    let killed = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // Writes and reads keep succeeding, with the right count, until the counter runs again (a new
    // process), is back in sync, and the count read through the public API is still right.
    let deadline = Instant::now() + START;
    let mut restarted = None;
    loop {
        api.post_ok(&format!("item-{posted}")).await;
        posted += 1;
        let count = api.count().await;
        assert_eq!(count, Ok(posted), "count after {posted} distinct items");

        let now = pgrep(&victim_pattern);
        if restarted.is_none() {
            restarted = now.iter().copied().find(|pid| *pid != victim);
        }
        if let Some(pid) = restarted {
            assert_eq!(now, vec![pid], "counter-{VICTIM} processes");
            let states = api.states().await.unwrap_or_default();
            let back = states
                .iter()
                .any(|(url, state)| url.ends_with(&victim_url) && state == "InSync");
            if back {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "counter-{VICTIM} not restarted and in sync in {START:?} (restarted as {restarted:?}; \
             cluster {:?}):\n{}",
            api.states().await,
            group.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other services were never restarted.
    for pid in &others {
        assert!(pgrep(&data_pattern).contains(pid), "pid {pid} is gone");
    }
    api.post_ok("item-0").await; // Already counted: still `posted` distinct items.
    assert_eq!(api.count().await, Ok(posted));

    // Stop: SIGTERM to the whole group, as Ctrl-C would send SIGINT to it.
    let stop = Instant::now();
    group.signal_group("-TERM");
    let status = group.wait_exit(stop + STOP);
    assert!(
        status.is_some_and(|s| s.success()),
        "run-local.sh: {status:?} {STOP:?} after SIGTERM:\n{}",
        group.log_tail()
    );
    let left = pgrep(&data_pattern);
    assert!(
        left.is_empty(),
        "processes left after the script exited: {left:?}"
    );
    eprintln!(
        "run-local.sh stopped in {:?} with {:?}",
        stop.elapsed(),
        status
    );

    // One log line for the restart, naming the service, its pid and its status; none for the others.
    let log = group.log_text();
    let restarts: Vec<&str> = log.lines().filter(|l| l.contains("exited with")).collect();
    assert_eq!(
        restarts,
        vec![format!(
            "run-local: counter-{VICTIM} (pid {victim}) exited with status 137 (SIGKILL); \
             restarting it in 1s"
        )],
        "restart lines in:\n{log}"
    );
}
