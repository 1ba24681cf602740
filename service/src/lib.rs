//! What the coordinator and the counters share.
//!
//! - [`auth`]: every internal call, in both directions, carries the cluster token, and every internal
//!   route refuses a call without it. The token is the only thing that makes a process a member: an
//!   address or a node id can be claimed by anyone who reaches a port.
//! - [`observe`]: logs (text or JSON), Prometheus metrics, the shutdown signal.
//! - [`reopen`]: a database whose flush failed (a full disk) is reopened by restarting the process in
//!   place once its disk takes writes again.
//! - [`serve`]: the protection every listener gets: a cap on requests in flight and a request timeout;
//!   binding and announcing the listeners.

pub mod auth;
pub mod observe;
pub mod reopen;
pub mod serve;

/// What both services do first, before anything else runs: install the metrics recorder (a metric
/// recorded without one is lost) and load the cluster token, saying how calls are authenticated.
pub fn start(auth: &auth::AuthArgs) -> Result<auth::Auth, auth::AuthError> {
    observe::recorder();
    let auth = auth.load()?;
    auth.announce();
    Ok(auth)
}
