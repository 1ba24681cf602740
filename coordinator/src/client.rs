//! Outgoing calls to counters. Each call has its own timeout; every failure (refused, reset, timeout,
//! non-2xx) is an error the caller treats as "this counter did not do it".
//!
//! Every call carries the cluster token (see `service::auth`) and this cluster's id
//! ([`CLUSTER_HEADER`]), and names the node it means in the [`NODE_HEADER`] header; a counter with
//! another identity refuses it: an address can change hands (a container restarted with another's IP,
//! two replicas behind one name), and a sync or a vote must never be taken from the wrong replica.

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use storage::proto::{
    paths, Applied, ApplyLogRequest, CommitRequest, CounterCount, CounterStatus,
    FinishSnapshotRequest, ImportRequest, LogPage, LogQuery, PrepareRequest, RollbackRequest,
    SnapshotPage, SnapshotQuery, Vote, CLUSTER_HEADER, NODE_HEADER,
};
use storage::{Item, LogEntry, Seq, TxId};

use crate::registry::Target;

/// Extra COMMIT time allowed per item of the round: applying costs a few µs per item, so a large
/// round must not look like a dead counter.
const COMMIT_TIME_PER_ITEM: Duration = Duration::from_micros(50);

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
    pub fn new(
        call_timeout: Duration,
        read_timeout: Duration,
        auth: &service::auth::Auth,
        cluster_id: &str,
    ) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            CLUSTER_HEADER,
            cluster_id
                .parse()
                .expect("a cluster id is hex, created by the store"),
        );
        let http = auth
            .client_builder()
            .default_headers(headers)
            .connect_timeout(call_timeout)
            .build()
            .expect("a plain HTTP client always builds");
        CounterClient {
            http,
            call_timeout,
            read_timeout,
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        to: &Target,
        path: &str,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", to.url))
            .header(NODE_HEADER, to.id.as_str())
            .timeout(timeout)
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        to: &Target,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, CallError> {
        decode(
            self.request(reqwest::Method::POST, to, path, timeout)
                .json(body)
                .send()
                .await?,
        )
        .await
    }

    async fn get<Q: Serialize, R: DeserializeOwned>(
        &self,
        to: &Target,
        path: &str,
        query: &Q,
    ) -> Result<R, CallError> {
        decode(
            self.request(reqwest::Method::GET, to, path, self.read_timeout)
                .query(query)
                .send()
                .await?,
        )
        .await
    }

    /// Encodes a PREPARE once for every participant of a round.
    pub fn prepare_body(txid: TxId, items: Vec<Item>) -> Bytes {
        let req = PrepareRequest { txid, items };
        Bytes::from(serde_json::to_vec(&req).expect("plain struct serializes"))
    }

    pub async fn prepare(&self, to: &Target, body: Bytes, items: usize) -> Result<Vote, CallError> {
        let resp = self
            .request(
                reqwest::Method::POST,
                to,
                paths::PREPARE,
                self.round_timeout(items),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        decode(resp).await
    }

    pub async fn commit(
        &self,
        to: &Target,
        txid: TxId,
        seq: Seq,
        items: usize,
    ) -> Result<Applied, CallError> {
        self.post(
            to,
            paths::COMMIT,
            &CommitRequest { txid, seq },
            self.round_timeout(items),
        )
        .await
    }

    /// A 2PC call's timeout: the base allowance plus the time to write `items`.
    fn round_timeout(&self, items: usize) -> Duration {
        with_items(self.call_timeout, items)
    }

    /// A catch-up write's timeout: the read allowance plus the time to write `items`.
    fn sync_timeout(&self, items: usize) -> Duration {
        with_items(self.read_timeout, items)
    }

    pub async fn rollback(&self, to: &Target, txid: TxId) -> Result<(), CallError> {
        let _: serde_json::Value = self
            .post(
                to,
                paths::ROLLBACK,
                &RollbackRequest { txid },
                self.call_timeout,
            )
            .await?;
        Ok(())
    }

    pub async fn count(&self, to: &Target, tenant: &str) -> Result<CounterCount, CallError> {
        let path = format!("{}/{}", paths::COUNT, percent_encode(tenant));
        decode(
            self.request(reqwest::Method::GET, to, &path, self.read_timeout)
                .send()
                .await?,
        )
        .await
    }

    pub async fn status(&self, to: &Target) -> Result<CounterStatus, CallError> {
        self.get(to, paths::STATUS, &()).await
    }

    pub async fn log_page(
        &self,
        to: &Target,
        from: Seq,
        max_items: usize,
    ) -> Result<LogPage, CallError> {
        self.get(to, paths::LOG, &LogQuery { from, max_items })
            .await
    }

    pub async fn snapshot_page(
        &self,
        to: &Target,
        after: Option<String>,
        max_items: usize,
    ) -> Result<SnapshotPage, CallError> {
        self.get(to, paths::SNAPSHOT, &SnapshotQuery { after, max_items })
            .await
    }

    pub async fn apply_log(
        &self,
        to: &Target,
        entries: Vec<LogEntry>,
    ) -> Result<Applied, CallError> {
        let items: usize = entries.iter().map(|e| e.items.len()).sum();
        self.post(
            to,
            paths::APPLY_LOG,
            &ApplyLogRequest { entries },
            self.sync_timeout(items),
        )
        .await
    }

    pub async fn import(&self, to: &Target, items: Vec<Item>) -> Result<Applied, CallError> {
        let timeout = self.sync_timeout(items.len());
        self.post(to, paths::IMPORT, &ImportRequest { items }, timeout)
            .await
    }

    pub async fn finish_snapshot(
        &self,
        to: &Target,
        seq: Seq,
        txid: TxId,
    ) -> Result<Applied, CallError> {
        self.post(
            to,
            paths::FINISH_SNAPSHOT,
            &FinishSnapshotRequest { seq, txid },
            self.read_timeout,
        )
        .await
    }
}

fn with_items(base: Duration, items: usize) -> Duration {
    base + COMMIT_TIME_PER_ITEM * items as u32
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
