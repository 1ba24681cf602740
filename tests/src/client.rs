//! The public API as clients use it: single calls on a [`Cluster`], and [`ApiClient`], a cloneable
//! handle whose calls record what they saw in a [`history::History`].

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::history;

/// A client that bypasses proxies, with a timeout far above any healthy answer.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a plain HTTP client always builds")
}

impl Cluster {
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
            http: http_client(),
        }
    }
}

/// `n` items with distinct ids, all for `tenant`.
pub fn batch(tenant: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{tenant}/{i}"), tenant.to_owned()))
        .collect()
}
