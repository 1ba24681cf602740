//! `coordinator status`: the operator's view of the cluster as one table, asked from the internal
//! listener with the cluster token (`make status` runs it).

use storage::proto::{paths, ClusterView};

use crate::Config;

/// Fetches the view from the internal listener at `url` and prints it: a table, or the JSON as served.
pub async fn print(config: &Config, url: &str, json: bool) -> anyhow::Result<()> {
    let auth = config.auth.load()?;
    let response = auth
        .client_builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?
        .get(format!("{}{}", url.trim_end_matches('/'), paths::CLUSTER))
        .send()
        .await?;
    if !response.status().is_success() {
        anyhow::bail!(
            "{} answered {}: {}",
            url,
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    let view: ClusterView = response.json().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", table(&view));
    }
    Ok(())
}

/// The view as aligned text: a summary line, then one row per counter.
pub fn table(view: &ClusterView) -> String {
    let mut rows = vec![[
        "NODE".to_owned(),
        "STATE".to_owned(),
        "APPLIED".to_owned(),
        "LAG".to_owned(),
        "FAILED CHECKS".to_owned(),
        "ITEMS/S".to_owned(),
        "URL".to_owned(),
    ]];
    for c in &view.counters {
        rows.push([
            c.node_id.clone(),
            c.state.as_str().to_owned(),
            c.last_applied.to_string(),
            c.lag.to_string(),
            c.failed_checks.to_string(),
            format!("{:.0}", c.items_per_sec),
            c.url.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "cluster {}  committed seq {}  {} counters  {} refused internal calls\n",
        view.cluster_id,
        view.committed_seq,
        view.counters.len(),
        view.refused_calls
    );
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::proto::{CounterView, MemberState};

    #[test]
    fn one_row_per_counter_with_lag_and_rate() {
        let counter = |id: &str, state, applied| CounterView {
            node_id: id.into(),
            url: format!("http://{id}:9000"),
            state,
            last_applied: applied,
            lag: 10 - applied,
            items_per_sec: 1234.4,
            failed_checks: 1,
            synced_entries: 0,
            synced_snapshot_items: 0,
        };
        let view = ClusterView {
            cluster_id: "c0ffee".into(),
            committed_seq: 10,
            refused_calls: 2,
            decisions_kept: 4,
            counters: vec![
                counter("a", MemberState::InSync, 10),
                counter("bb", MemberState::Lagging, 7),
            ],
        };
        let text = table(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].contains("committed seq 10") && lines[0].contains("2 refused"));
        assert!(lines[1].starts_with("NODE  STATE"), "{text}");
        assert!(
            lines[3].starts_with("bb    Lagging  7        3    1              1234"),
            "{text}"
        );
    }
}
