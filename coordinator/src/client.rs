//! The [`Counters`] the services use: calls to counters over HTTP. Each call has its own timeout;
//! every failure (refused, reset, timeout, non-2xx) is a [`CallError`].
//!
//! Every call carries the cluster token (see `service::auth`) and this cluster's id
//! ([`CLUSTER_HEADER`]), and names the node it means in the [`NODE_HEADER`] header; a counter with
//! another identity refuses it: an address can change hands (a container restarted with another's IP,
//! two replicas behind one name), and a sync or a vote must never be taken from the wrong replica.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture, FutureExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use storage::proto::{
    paths, Applied, ApplyLogRequest, CommitRequest, CounterStatus, Counts, CountsRequest,
    FinishSnapshotRequest, ImportRequest, LogPage, LogQuery, PrepareRequest, RollbackRequest,
    SnapshotPage, SnapshotQuery, Vote, CLUSTER_HEADER, NODE_HEADER,
};
use storage::{Item, LogEntry, Seq, TxId};

use crate::counters::{CallError, CallResult, Counters};
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

impl From<reqwest::Error> for CallError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            CallError::TimedOut(e.to_string())
        } else {
            CallError::Unreachable(e.to_string())
        }
    }
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
    fn prepare_body(txid: TxId, items: Vec<Item>) -> Bytes {
        let req = PrepareRequest { txid, items };
        Bytes::from(serde_json::to_vec(&req).expect("plain struct serializes"))
    }

    async fn prepare(&self, to: &Target, body: Bytes, items: usize) -> CallResult<Vote> {
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

    async fn http_commit(
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

    async fn http_rollback(&self, to: &Target, txid: TxId) -> Result<(), CallError> {
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

    async fn http_counts(&self, to: &Target, tenants: Vec<String>) -> Result<Counts, CallError> {
        self.post(
            to,
            paths::COUNTS,
            &CountsRequest { tenants },
            self.read_timeout,
        )
        .await
    }

    async fn http_status(&self, to: &Target) -> Result<CounterStatus, CallError> {
        self.get(to, paths::STATUS, &()).await
    }

    async fn http_log_page(
        &self,
        to: &Target,
        from: Seq,
        max_items: usize,
    ) -> Result<LogPage, CallError> {
        self.get(to, paths::LOG, &LogQuery { from, max_items })
            .await
    }

    async fn http_snapshot_page(
        &self,
        to: &Target,
        after: Option<String>,
        max_items: usize,
    ) -> Result<SnapshotPage, CallError> {
        self.get(to, paths::SNAPSHOT, &SnapshotQuery { after, max_items })
            .await
    }

    async fn http_apply_log(
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

    async fn http_import(&self, to: &Target, items: Vec<Item>) -> Result<Applied, CallError> {
        let timeout = self.sync_timeout(items.len());
        self.post(to, paths::IMPORT, &ImportRequest { items }, timeout)
            .await
    }

    async fn http_finish_snapshot(
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
        return Err(CallError::Refused {
            status: status.as_u16(),
            body,
        });
    }
    Ok(resp.json().await?)
}

impl Counters for CounterClient {
    fn prepare_all<'a>(
        &'a self,
        to: &'a [Target],
        txid: TxId,
        items: Vec<Item>,
    ) -> BoxFuture<'a, Vec<CallResult<Vote>>> {
        let n = items.len();
        let body = Self::prepare_body(txid, items);
        join_all(to.iter().map(move |t| self.prepare(t, body.clone(), n))).boxed()
    }

    fn commit<'a>(
        &'a self,
        to: &'a Target,
        txid: TxId,
        seq: Seq,
        items: usize,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        self.http_commit(to, txid, seq, items).boxed()
    }

    fn rollback<'a>(&'a self, to: &'a Target, txid: TxId) -> BoxFuture<'a, CallResult<()>> {
        self.http_rollback(to, txid).boxed()
    }

    fn counts<'a>(
        &'a self,
        to: &'a Target,
        tenants: Vec<String>,
    ) -> BoxFuture<'a, CallResult<Counts>> {
        self.http_counts(to, tenants).boxed()
    }

    fn status<'a>(&'a self, to: &'a Target) -> BoxFuture<'a, CallResult<CounterStatus>> {
        self.http_status(to).boxed()
    }

    fn log_page<'a>(
        &'a self,
        to: &'a Target,
        from: Seq,
        max_items: usize,
    ) -> BoxFuture<'a, CallResult<LogPage>> {
        self.http_log_page(to, from, max_items).boxed()
    }

    fn snapshot_page<'a>(
        &'a self,
        to: &'a Target,
        after: Option<String>,
        max_items: usize,
    ) -> BoxFuture<'a, CallResult<SnapshotPage>> {
        self.http_snapshot_page(to, after, max_items).boxed()
    }

    fn apply_log<'a>(
        &'a self,
        to: &'a Target,
        entries: Vec<LogEntry>,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        self.http_apply_log(to, entries).boxed()
    }

    fn import<'a>(
        &'a self,
        to: &'a Target,
        items: Vec<Item>,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        self.http_import(to, items).boxed()
    }

    fn finish_snapshot<'a>(
        &'a self,
        to: &'a Target,
        seq: Seq,
        txid: TxId,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        self.http_finish_snapshot(to, seq, txid).boxed()
    }
}
