//! What the coordinator and the counters share to be members of one cluster.
//!
//! [`auth`]: every internal call, in both directions, carries the cluster token, and every internal
//! route refuses a call without it. The token is the only thing that makes a process a member: an
//! address or a node id can be claimed by anyone who reaches a port.

pub mod auth;
