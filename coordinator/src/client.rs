//! Outgoing calls to counters. Each call has its own timeout; every failure (refused, reset, timeout,
//! non-2xx) is an error the caller treats as "this counter did not do it".

use std::time::Duration;

use bytes::Bytes;

use serde::de::DeserializeOwned;
use serde::Serialize;
use storage::proto::{
    paths, Applied, ApplyLogRequest, CommitRequest, CounterCount, CounterStatus,
    FinishSnapshotRequest, ImportRequest, LogPage, LogQuery, PrepareRequest, RollbackRequest,
    SnapshotPage, SnapshotQuery, Vote,
};
use storage::{Item, LogEntry, Seq, TxId};

#[derive(Clone)]
pub struct CounterClient {
    http: reqwest::Client,
    call_timeout: Duration,
    read_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("answered {status}: {body}")]
    Status { status: u16, body: String },
}

impl CounterClient {
    pub fn new(call_timeout: Duration, read_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(call_timeout)
            .build()
            .expect("a plain HTTP client always builds");
        CounterClient {
            http,
            call_timeout,
            read_timeout,
        }
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        url: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let resp = self
            .http
            .post(format!("{url}{path}"))
            .json(body)
            .timeout(timeout)
            .send()
            .await?;
        decode(resp).await
    }

    async fn get<Q: Serialize, R: DeserializeOwned>(
        &self,
        url: &str,
        path: &str,
        query: &Q,
    ) -> Result<R, CallError> {
        let resp = self
            .http
            .get(format!("{url}{path}"))
            .query(query)
            .timeout(self.read_timeout)
            .send()
            .await?;
        decode(resp).await
    }

    /// Encodes a PREPARE once for every participant of a round.
    pub fn prepare_body(txid: TxId, items: Vec<Item>) -> Bytes {
        let req = PrepareRequest { txid, items };
        Bytes::from(serde_json::to_vec(&req).expect("plain struct serializes"))
    }

    pub async fn prepare(&self, url: &str, body: Bytes) -> Result<Vote, CallError> {
        let resp = self
            .http
            .post(format!("{url}{}", paths::PREPARE))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(self.call_timeout)
            .send()
            .await?;
        decode(resp).await
    }

    pub async fn commit(&self, url: &str, txid: TxId, seq: Seq) -> Result<Applied, CallError> {
        self.post(
            url,
            paths::COMMIT,
            &CommitRequest { txid, seq },
            self.call_timeout,
        )
        .await
    }

    pub async fn rollback(&self, url: &str, txid: TxId) -> Result<(), CallError> {
        let _: serde_json::Value = self
            .post(
                url,
                paths::ROLLBACK,
                &RollbackRequest { txid },
                self.call_timeout,
            )
            .await?;
        Ok(())
    }

    pub async fn count(&self, url: &str, tenant: &str) -> Result<CounterCount, CallError> {
        let resp = self
            .http
            .get(format!("{url}{}/{}", paths::COUNT, percent_encode(tenant)))
            .timeout(self.read_timeout)
            .send()
            .await?;
        decode(resp).await
    }

    pub async fn status(&self, url: &str) -> Result<CounterStatus, CallError> {
        self.get(url, paths::STATUS, &()).await
    }

    pub async fn health(&self, url: &str) -> Result<CounterStatus, CallError> {
        self.get(url, paths::HEALTH, &()).await
    }

    pub async fn log_page(
        &self,
        url: &str,
        from: Seq,
        max_items: usize,
    ) -> Result<LogPage, CallError> {
        self.get(url, paths::LOG, &LogQuery { from, max_items })
            .await
    }

    pub async fn snapshot_page(
        &self,
        url: &str,
        after: Option<String>,
        max_items: usize,
    ) -> Result<SnapshotPage, CallError> {
        self.get(url, paths::SNAPSHOT, &SnapshotQuery { after, max_items })
            .await
    }

    pub async fn apply_log(&self, url: &str, entries: Vec<LogEntry>) -> Result<Applied, CallError> {
        self.post(
            url,
            paths::APPLY_LOG,
            &ApplyLogRequest { entries },
            self.read_timeout * 5,
        )
        .await
    }

    pub async fn import(&self, url: &str, items: Vec<Item>) -> Result<Applied, CallError> {
        self.post(
            url,
            paths::IMPORT,
            &ImportRequest { items },
            self.read_timeout * 5,
        )
        .await
    }

    pub async fn finish_snapshot(
        &self,
        url: &str,
        seq: Seq,
        txid: TxId,
    ) -> Result<Applied, CallError> {
        self.post(
            url,
            paths::FINISH_SNAPSHOT,
            &FinishSnapshotRequest { seq, txid },
            self.read_timeout,
        )
        .await
    }
}

async fn decode<R: DeserializeOwned>(resp: reqwest::Response) -> Result<R, CallError> {
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(CallError::Status {
            status: status.as_u16(),
            body,
        });
    }
    Ok(resp.json().await?)
}

/// Percent-encodes everything but unreserved characters, so any tenant is one path segment.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
