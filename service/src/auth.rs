//! The cluster token: a shared secret that every internal call carries and every internal route checks.
//!
//! Calls carry `Authorization: Bearer <token>`. A service accepts its current token and, during a
//! rotation, a second "next" one, so that a token can be replaced by rolling restarts with no outage
//! (the steps are in the README): restart everything accepting both, then sending the new one, then
//! accepting only the new one. The comparison runs in constant time, so timing tells nothing about how
//! much of a guess was right.
//!
//! A refused call gets `401` with a JSON error before its body is read, changes nothing, and is logged
//! with the peer's address, at most once every [`LOG_EVERY`] with the number of refusals since, so a
//! flood of bad calls cannot fill a disk with log lines.
//!
//! The token never appears in a log line, an error message or a `Debug` output ([`Secret`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use storage::proto::StatusBody;
use subtle::ConstantTimeEq;

/// Shortest accepted token: a guessable secret protects nothing.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Longest accepted token (it travels in a header).
pub const MAX_TOKEN_BYTES: usize = 512;
/// At most one log line about refused calls per this period.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

const SCHEME: &str = "Bearer ";

/// A token whose `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Secret(text)
    }
}

/// Where a service finds its token: flags with environment variables, the same for both services.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AuthArgs {
    /// The cluster token, shared by every service of the cluster. Prefer --cluster-token-file: a
    /// process's environment is easier to read than a file of mode 0600.
    #[arg(long, env = "CLUSTER_TOKEN", hide_env_values = true, value_parser = parse_secret,
        conflicts_with = "cluster_token_file")]
    pub cluster_token: Option<Secret>,

    /// A file holding the cluster token (a compose or Swarm secret); trailing whitespace is ignored.
    #[arg(long, env = "CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,

    /// During a token rotation: a second token this service accepts (it keeps sending the current one).
    #[arg(long, env = "CLUSTER_TOKEN_NEXT", hide_env_values = true, value_parser = parse_secret,
        conflicts_with = "cluster_token_next_file")]
    pub cluster_token_next: Option<Secret>,

    /// A file holding the next token (see --cluster-token-next).
    #[arg(long, env = "CLUSTER_TOKEN_NEXT_FILE")]
    pub cluster_token_next_file: Option<PathBuf>,

    /// Run with no authentication at all: anyone who reaches an internal port can join the cluster,
    /// read every tenant's data and forge counts. For a throwaway test on a machine of your own only.
    #[arg(long, env = "CLUSTER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

fn parse_secret(text: &str) -> Result<Secret, String> {
    Ok(Secret(text.to_owned()))
}

/// Why a service cannot load its token. Messages never contain a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no cluster token: set CLUSTER_TOKEN_FILE to a file holding the token shared by every service \
         of the cluster (or CLUSTER_TOKEN); `make run` and `make up` create one. To run without \
         authentication on a machine of your own, pass --insecure-no-auth"
    )]
    Missing,
    #[error("--insecure-no-auth was given together with a cluster token: choose one")]
    InsecureWithToken,
    #[error("a next token was given without a current one")]
    NextWithoutCurrent,
    #[error("cannot read the {which} token file {path}: {error}")]
    File {
        which: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error(
        "the {which} token is not acceptable: it must be {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} \
         printable ASCII characters without spaces (it is {len} bytes long)"
    )]
    Invalid { which: &'static str, len: usize },
}

impl AuthArgs {
    /// The authentication this service runs with, or why it must not start.
    pub fn load(&self) -> Result<Auth, AuthError> {
        let current = token("current", &self.cluster_token, &self.cluster_token_file)?;
        let next = token(
            "next",
            &self.cluster_token_next,
            &self.cluster_token_next_file,
        )?;
        match (current, next, self.insecure_no_auth) {
            (None, None, true) => Ok(Auth::insecure()),
            (Some(_), _, true) | (None, Some(_), true) => Err(AuthError::InsecureWithToken),
            (None, Some(_), false) => Err(AuthError::NextWithoutCurrent),
            (None, None, false) => Err(AuthError::Missing),
            (Some(current), next, false) => Ok(Auth::with_tokens(current, next)),
        }
    }
}

fn token(
    which: &'static str,
    value: &Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<Option<Secret>, AuthError> {
    let text = match (value, file) {
        (Some(Secret(text)), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|error| AuthError::File {
                which,
                path: path.display().to_string(),
                error,
            })?
            .trim_end()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    let printable = text.bytes().all(|b| b.is_ascii_graphic());
    if !printable || text.len() < MIN_TOKEN_BYTES || text.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Invalid {
            which,
            len: text.len(),
        });
    }
    Ok(Some(Secret(text)))
}

/// A service's authentication: what it sends on its own calls and what it accepts on its routes.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: insecure mode, nothing sent, everything accepted.
    tokens: Option<(Secret, Option<Secret>)>,
    refused: AtomicU64,
    log: Mutex<RefusalLog>,
}

/// Rate limit of the refusal log lines.
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mode())
    }
}

impl Auth {
    pub fn with_tokens(current: Secret, next: Option<Secret>) -> Self {
        Self::new(Some((current, next)))
    }

    /// No authentication: see [`AuthArgs::insecure_no_auth`].
    pub fn insecure() -> Self {
        Self::new(None)
    }

    fn new(tokens: Option<(Secret, Option<Secret>)>) -> Self {
        Auth {
            inner: Arc::new(Inner {
                tokens,
                refused: AtomicU64::new(0),
                log: Mutex::new(RefusalLog {
                    last: None,
                    unlogged: 0,
                }),
            }),
        }
    }

    /// How this service authenticates, for its start-up line (never the token itself).
    pub fn mode(&self) -> &'static str {
        match &self.inner.tokens {
            None => "INSECURE: no authentication",
            Some((_, None)) => "cluster token",
            Some((_, Some(_))) => "cluster token, accepting a next token (rotation)",
        }
    }

    /// Logs how this service authenticates; a warning on every start when it does not.
    pub fn announce(&self) {
        if self.inner.tokens.is_none() {
            tracing::warn!(
                "started with --insecure-no-auth: anyone who reaches an internal port can join the \
                 cluster, read every tenant's data and forge counts"
            );
        } else {
            tracing::info!(auth = self.mode(), "internal calls are authenticated");
        }
    }

    /// Headers for every outgoing internal call (the token marked sensitive, so no client logs it).
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some((Secret(current), _)) = &self.inner.tokens {
            let mut value = HeaderValue::from_str(&format!("{SCHEME}{current}"))
                .expect("a token is printable ASCII, checked when loaded");
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        headers
    }

    /// A client for internal calls: the token on every request, and no proxy (internal addresses are
    /// never reached through one).
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .no_proxy()
            .default_headers(self.headers())
    }

    /// Whether `headers` carry a token this service accepts.
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some((current, next)) = &self.inner.tokens else {
            return true;
        };
        let Some(given) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(SCHEME.as_bytes()))
        else {
            return false;
        };
        // Both comparisons always run: which token matched must not show in the timing either.
        let mut ok = given.ct_eq(current.0.as_bytes());
        if let Some(next) = next {
            ok |= given.ct_eq(next.0.as_bytes());
        }
        ok.into()
    }

    /// Internal calls refused since this process started.
    pub fn refused_calls(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    fn note_refusal(&self, peer: Option<SocketAddr>, path: &str) {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
        let mut log = self.inner.log.lock().unwrap_or_else(|p| p.into_inner());
        log.unlogged += 1;
        if log.last.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        log.last = Some(Instant::now());
        let refused = std::mem::take(&mut log.unlogged);
        drop(log);
        let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        tracing::warn!(%peer, path, refused_since_last_line = refused,
            "refused an internal call without a valid cluster token");
    }
}

/// Middleware for every internal route: `401` unless the call carries an accepted token. Runs before
/// any extractor, so a refused call's body is never read.
pub async fn require_token(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    if auth.accepts(request.headers()) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    auth.note_refusal(peer, request.uri().path());
    let body = StatusBody::failed("missing or wrong cluster token");
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbb";

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    fn args(current: Option<&str>, next: Option<&str>) -> AuthArgs {
        AuthArgs {
            cluster_token: current.map(|t| Secret(t.into())),
            cluster_token_next: next.map(|t| Secret(t.into())),
            ..AuthArgs::default()
        }
    }

    #[test]
    fn accepts_the_current_and_the_next_token_only() {
        let auth = args(Some(A), Some(B)).load().unwrap();
        assert!(auth.accepts(&bearer(A)));
        assert!(auth.accepts(&bearer(B)));
        assert!(!auth.accepts(&bearer(&A[1..])));
        assert!(!auth.accepts(&bearer(&format!("{A}a"))));
        assert!(!auth.accepts(&HeaderMap::new()));
        let mut basic = HeaderMap::new();
        basic.insert(AUTHORIZATION, HeaderValue::from_str(A).unwrap());
        assert!(!auth.accepts(&basic), "no scheme");

        let only_a = args(Some(A), None).load().unwrap();
        assert!(!only_a.accepts(&bearer(B)));
        assert!(only_a.accepts(&only_a.headers()), "sends what it accepts");
        assert!(auth.accepts(&only_a.headers()));
    }

    #[test]
    fn insecure_mode_sends_nothing_and_accepts_everything() {
        let auth = AuthArgs {
            insecure_no_auth: true,
            ..AuthArgs::default()
        }
        .load()
        .unwrap();
        assert!(auth.headers().is_empty());
        assert!(auth.accepts(&HeaderMap::new()));
    }

    #[test]
    fn refuses_to_start_without_a_usable_token_and_never_echoes_it() {
        assert!(matches!(args(None, None).load(), Err(AuthError::Missing)));
        assert!(matches!(
            args(None, Some(B)).load(),
            Err(AuthError::NextWithoutCurrent)
        ));
        let insecure_and_token = AuthArgs {
            insecure_no_auth: true,
            ..args(Some(A), None)
        };
        assert!(matches!(
            insecure_and_token.load(),
            Err(AuthError::InsecureWithToken)
        ));
        for bad in [
            "short-secret",
            "has a space in the middle of it",
            "tab\tinside-the-token-here",
        ] {
            let e = args(Some(bad), None).load().unwrap_err();
            assert!(matches!(e, AuthError::Invalid { .. }), "{bad}: {e}");
            assert!(!e.to_string().contains(bad), "{e}");
        }
        assert_eq!(format!("{:?}", args(Some(A), None)).matches(A).count(), 0);
    }

    #[test]
    fn reads_a_token_file_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{A}\n")).unwrap();
        let auth = AuthArgs {
            cluster_token_file: Some(path),
            ..AuthArgs::default()
        }
        .load()
        .unwrap();
        assert!(auth.accepts(&bearer(A)));
        let missing = AuthArgs {
            cluster_token_file: Some(dir.path().join("nope")),
            ..AuthArgs::default()
        };
        assert!(matches!(missing.load(), Err(AuthError::File { .. })));
    }

    #[test]
    fn refusals_are_counted_but_logged_at_most_once_per_period() {
        let auth = args(Some(A), None).load().unwrap();
        for _ in 0..1000 {
            auth.note_refusal(None, "/internal/prepare");
        }
        assert_eq!(auth.refused_calls(), 1000);
        let log = auth.inner.log.lock().unwrap();
        assert_eq!(
            log.unlogged, 999,
            "one line logged, the rest counted for the next"
        );
    }
}
