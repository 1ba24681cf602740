//! What the coordinator and the counters share.
//!
//! - [`auth`]: every internal call, in both directions, carries the cluster token, and every internal
//!   route refuses a call without it. The token is the only thing that makes a process a member: an
//!   address or a node id can be claimed by anyone who reaches a port.
//! - [`observe`]: logs (text or JSON), Prometheus metrics, the shutdown signal.
//! - [`serve`]: the protection every listener gets: a cap on requests in flight and a request timeout.

pub mod auth;
pub mod observe;
pub mod serve;
