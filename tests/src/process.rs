//! One service process ([`Service`]): started from the workspace's binaries, killed or stopped, and
//! started again on the same data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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
pub(crate) enum Kind {
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
    /// A service named `name` whose data directory, log and address file are under `dir`.
    pub(crate) fn new(
        kind: Kind,
        name: &str,
        dir: &Path,
        args: Vec<String>,
        token: &str,
    ) -> Service {
        Service {
            kind,
            name: name.to_owned(),
            data_dir: dir.join(name),
            log: dir.join(format!("{name}.log")),
            addr_file: dir.join(format!("{name}.addr")),
            args,
            env: vec![("CLUSTER_TOKEN".into(), token.to_owned())],
            child: None,
            addr: None,
            internal_addr: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

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

    pub(crate) fn spawn(&mut self, env: &[(&str, &str)]) -> Result<()> {
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
    pub(crate) fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // Written whole (renamed into place) once listening: the public address, then the
            // coordinator's internal one.
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

    pub(crate) fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
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

    /// Waits until the process, still the same one (same pid), listens again at a new address: it
    /// restarted itself in place (see `service::reopen`). Updates the addresses.
    pub fn wait_restarted_in_place(&mut self, timeout: Duration) -> Result<()> {
        let (pid, old) = (self.pid(), self.addr);
        let deadline = Instant::now() + timeout;
        while self.addr == old {
            if Instant::now() > deadline {
                bail!(
                    "{} did not restart in place:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(text) = std::fs::read_to_string(&self.addr_file) {
                let mut lines = text.lines().map(|l| l.trim().parse::<SocketAddr>());
                if let Some(Ok(addr)) = lines.next() {
                    self.addr = Some(addr);
                    if let Some(Ok(internal)) = lines.next() {
                        self.internal_addr = Some(internal);
                    }
                }
            }
        }
        if self.pid() != pid || !self.is_running() {
            bail!("{} exited instead of restarting in place", self.name);
        }
        Ok(())
    }

    /// The data directory the service is started on (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}
