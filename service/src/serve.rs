//! What every listener of both services gets: a cap on the requests it handles at once and a timeout
//! per request, so overload is answered quickly instead of piling up connections and memory.
//!
//! Past the cap a request is refused at once with `503` and `Retry-After` (nothing was done: retrying
//! later is safe). A request that runs past the timeout gets `504`: it may or may not have taken effect
//! (a POST whose round already committed stays committed), so a client re-sends it, which ids make
//! harmless. The timeout is longer than any call the services make to each other, so it only cuts
//! requests that are stuck.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::header::RETRY_AFTER;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json, Router};
use storage::proto::StatusBody;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// How long a refused client should wait before trying again, in seconds.
const RETRY_AFTER_SECS: &str = "1";

/// Both services take these; [`parse_with_prefix`] names their environment variables after the service.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Requests one listener handles at once; more are refused with 503 and Retry-After.
    #[arg(long, default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,

    /// Longest a request may run; past it the answer is 504 (a POST's outcome is then unknown:
    /// re-sending it is safe).
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub request_timeout: Duration,
}

/// Binds one listener per `(name, address)`, logs the bound addresses and, when `addr_file` is
/// given, writes them there one per line in order, so a script or test using port 0 learns them.
pub async fn bind<const N: usize>(
    listeners: [(&str, SocketAddr); N],
    addr_file: Option<&Path>,
) -> std::io::Result<[TcpListener; N]> {
    let context = |what: String| {
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let mut bound = Vec::with_capacity(N);
    let mut lines = String::new();
    for (name, addr) in listeners {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(context(format!("cannot bind the {name} listener {addr}")))?;
        let local = listener.local_addr()?;
        tracing::info!(listener = name, %local, "listening");
        lines.push_str(&format!("{local}\n"));
        bound.push(listener);
    }
    if let Some(path) = addr_file {
        // Renamed into place, so a reader never sees half of it.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, lines)
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(context(format!(
                "cannot write the address file {}",
                path.display()
            )))?;
    }
    Ok(bound
        .try_into()
        .unwrap_or_else(|_| unreachable!("one listener per address")))
}

/// Parses the command line of a service whose every setting reads the environment variable
/// `<prefix>_<SETTING>`: those of [`ServeArgs`], shared code, get theirs here. (The cluster token's
/// variables are the cluster's, `CLUSTER_*`, the same for every service.)
pub fn parse_with_prefix<P: clap::Parser>(prefix: &str) -> P {
    let shared = ["max_concurrent_requests", "request_timeout"];
    let command = shared.iter().fold(P::command(), |command, id| {
        // Named once per process start, and clap keeps names for the life of the command.
        let env: &'static str = format!("{prefix}_{}", id.to_uppercase()).leak();
        command.mut_arg(*id, |arg| arg.env(env))
    });
    let matches = command.get_matches();
    P::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// A duration like "10s" that is not zero.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Wraps every route of `router` (and its fallback) in the cap and the timeout; one cap for the
/// whole listener.
pub fn protect(router: Router, args: &ServeArgs) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(refusal))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                args.max_concurrent_requests as usize,
            ))
            .timeout(args.request_timeout),
    )
}

/// The `healthcheck` subcommand of both services (container health checks): 0 when `path` (`/health`,
/// or a counter's `/ready`) of the service on this host's `port` answers 2xx within 3 s, 1 otherwise.
pub async fn healthcheck(port: u16, path: &str) -> i32 {
    let url = format!("http://127.0.0.1:{port}{path}");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build();
    match client {
        Ok(c) => match c.get(url).send().await {
            Ok(r) if r.status().is_success() => 0,
            _ => 1,
        },
        Err(_) => 1,
    }
}

async fn refusal(error: BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        metrics::counter!("dc_http_refused_total", "why" => "overloaded").increment(1);
        let body = StatusBody::failed("too many requests in flight; retry later");
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        response.headers_mut().insert(
            RETRY_AFTER,
            axum::http::HeaderValue::from_static(RETRY_AFTER_SECS),
        );
        response
    } else if error.is::<tower::timeout::error::Elapsed>() {
        metrics::counter!("dc_http_refused_total", "why" => "timeout").increment(1);
        let body = StatusBody::failed(
            "the request took too long; its outcome is unknown, re-sending it is safe",
        );
        (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response()
    } else {
        tracing::error!(%error, "request failed in the service stack");
        let body = StatusBody::failed("internal error");
        (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app(cap: u32, timeout: Duration) -> Router {
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "done"
        };
        let router = Router::new()
            .route("/slow", get(slow))
            .route("/fast", get(|| async { "ok" }));
        protect(
            router,
            &ServeArgs {
                max_concurrent_requests: cap,
                request_timeout: timeout,
            },
        )
    }

    async fn get_status(app: &Router, path: &str) -> (StatusCode, Option<String>) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let retry = response
            .headers()
            .get(RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status(), retry)
    }

    #[tokio::test]
    async fn past_the_cap_a_request_is_refused_at_once_with_retry_after() {
        let app = app(1, Duration::from_secs(5));
        let busy = tokio::spawn({
            let app = app.clone();
            async move { get_status(&app, "/slow").await }
        });
        // Until the slow request holds the only slot.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let refused = loop {
            let answer = get_status(&app, "/fast").await;
            if answer.0 == StatusCode::SERVICE_UNAVAILABLE {
                break answer;
            }
            assert!(std::time::Instant::now() < deadline, "never refused");
            tokio::task::yield_now().await;
        };
        assert_eq!(refused.1.as_deref(), Some(RETRY_AFTER_SECS));
        assert_eq!(busy.await.unwrap().0, StatusCode::OK);
        assert_eq!(get_status(&app, "/fast").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_request_past_the_timeout_gets_504() {
        let app = app(8, Duration::from_millis(50));
        assert_eq!(
            get_status(&app, "/slow").await.0,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(get_status(&app, "/fast").await.0, StatusCode::OK);
    }
}
