//! The `docker` CLI as the drills drive it (the chaos drill and the soak): one command on an engine,
//! and the containers of a compose project.

use anyhow::{bail, Context, Result};

/// `docker` on the local engine; its standard output.
pub async fn docker(args: &[&str]) -> Result<String> {
    docker_on(None, args).await
}

/// `docker` against the engine `host` (`docker -H`), or the local one; its standard output.
pub async fn docker_on(host: Option<&str>, args: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new("docker");
    if let Some(host) = host {
        cmd.args(["-H", host]);
    }
    let out = cmd.args(args).output().await.context("cannot run docker")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// The compose or stack service it is a replica of (`coordinator`, `counter`).
    pub service: String,
    /// The engine it runs on (`docker -H`), `None` for the local one.
    pub host: Option<String>,
}

/// Every container of the compose project, running or not, by name.
pub async fn compose_containers(project: &str) -> Result<Vec<Container>> {
    let filter = format!("label=com.docker.compose.project={project}");
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &filter,
        "--format",
        "{{.ID}} {{.Names}} {{.Label \"com.docker.compose.service\"}}",
    ])
    .await?;
    let mut list: Vec<Container> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(Container {
                id: f.next()?.to_owned(),
                name: f.next()?.to_owned(),
                service: f.next()?.to_owned(),
                host: None,
            })
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(list)
}
