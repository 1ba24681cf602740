//! A history of client operations and a checker for the invariants of ARCHITECTURE.md, in the spirit of
//! Jepsen's set and counter checkers, adapted to what the API shows: per-tenant counts of distinct ids.
//!
//! Clients record each POST (its items, when it was invoked and completed, and whether it was
//! acknowledged, refused, or its outcome is unknown: timeout, connection reset, 5xx other than 503) and
//! each GET count (tenant, times, value). The checker then verifies, per tenant:
//!
//! - **no lost write**: the final count is at least the number of distinct acknowledged ids;
//! - **no phantom write**: it is at most the number of distinct ids of POSTs not refused;
//! - **atomic batches**: a tenant written by one batch only (re-sends of it included) counts all of the
//!   batch or none of it, and all of it if any POST of it was acknowledged;
//! - **fresh, bounded reads**: a read counts at least the distinct ids acknowledged before it began and
//!   at most the distinct ids of POSTs not refused that began before it ended;
//! - **linearizable reads** (real-time order): a read that began after another read of the same tenant
//!   ended returns at least what that one returned; a count is never seen to go down.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200 success: must be counted forever.
    Ok,
    /// Refused (4xx, 503, 507): must never be counted (unless another POST of the same id was not refused).
    Failed,
    /// Timeout, connection error, other 5xx: may or may not be counted.
    Unknown,
}

impl Outcome {
    /// Classifies an HTTP answer (`None` for no answer at all).
    pub fn from_status(status: Option<u16>) -> Outcome {
        match status {
            Some(200) => Outcome::Ok,
            Some(s) if (400..500).contains(&s) || s == 503 || s == 507 => Outcome::Failed,
            _ => Outcome::Unknown,
        }
    }
}

#[derive(Clone, Debug)]
struct Write {
    invoked: Duration,
    completed: Duration,
    tenant_ids: Vec<(String, String)>,
    outcome: Outcome,
}

#[derive(Clone, Debug)]
struct Read {
    invoked: Duration,
    completed: Duration,
    tenant: String,
    value: u64,
}

/// Thread-safe recorder shared by concurrent clients.
pub struct History {
    start: Instant,
    writes: Mutex<Vec<Write>>,
    reads: Mutex<Vec<Read>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            start: Instant::now(),
            writes: Mutex::default(),
            reads: Mutex::default(),
        }
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub writes: usize,
    pub acknowledged: usize,
    pub refused: usize,
    pub unknown: usize,
    pub reads: usize,
    /// Reads that returned less than a read of the same tenant that ended before they began.
    pub non_monotonic: usize,
    pub tenants: usize,
    pub violations: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} writes ({} acknowledged, {} refused, {} unknown), {} reads ({} non-monotonic), {} tenants, {} violations",
            self.writes,
            self.acknowledged,
            self.refused,
            self.unknown,
            self.reads,
            self.non_monotonic,
            self.tenants,
            self.violations.len()
        )?;
        for v in self.violations.iter().take(20) {
            write!(f, "\n  violation: {v}")?;
        }
        Ok(())
    }
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// The time to pass as `invoked` later: call it right before sending the request.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records a POST of `(id, tenant)` items invoked at `invoked` that just completed.
    pub fn write(&self, invoked: Duration, items: &[(String, String)], outcome: Outcome) {
        let tenant_ids = items
            .iter()
            .map(|(id, tenant)| (tenant.clone(), id.clone()))
            .collect();
        let w = Write {
            invoked,
            completed: self.now(),
            tenant_ids,
            outcome,
        };
        self.writes.lock().unwrap().push(w);
    }

    /// Records a successful GET count invoked at `invoked` that just completed. Failed reads carry no
    /// value and need no record.
    pub fn read(&self, invoked: Duration, tenant: &str, value: u64) {
        let r = Read {
            invoked,
            completed: self.now(),
            tenant: tenant.to_owned(),
            value,
        };
        self.reads.lock().unwrap().push(r);
    }

    /// Every tenant written to.
    pub fn tenants(&self) -> BTreeSet<String> {
        self.writes
            .lock()
            .unwrap()
            .iter()
            .flat_map(|w| w.tenant_ids.iter().map(|(t, _)| t.clone()))
            .collect()
    }

    /// Checks the history against the final counts (read after the cluster healed and converged).
    pub fn check(&self, final_counts: &BTreeMap<String, u64>) -> Report {
        let writes = self.writes.lock().unwrap().clone();
        let reads = self.reads.lock().unwrap().clone();
        let mut report = Report {
            writes: writes.len(),
            acknowledged: writes.iter().filter(|w| w.outcome == Outcome::Ok).count(),
            refused: writes
                .iter()
                .filter(|w| w.outcome == Outcome::Failed)
                .count(),
            unknown: writes
                .iter()
                .filter(|w| w.outcome == Outcome::Unknown)
                .count(),
            reads: reads.len(),
            ..Report::default()
        };

        // Per tenant: its writes, each with the distinct ids it carries for that tenant.
        let mut by_tenant: BTreeMap<&str, Vec<(&Write, BTreeSet<&str>)>> = BTreeMap::new();
        for w in &writes {
            let mut ids: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for (t, id) in &w.tenant_ids {
                ids.entry(t).or_default().insert(id);
            }
            for (t, set) in ids {
                by_tenant.entry(t).or_default().push((w, set));
            }
        }
        report.tenants = by_tenant.len();

        let distinct = |ws: &[(&Write, BTreeSet<&str>)], keep: &dyn Fn(&Write) -> bool| -> usize {
            ws.iter()
                .filter(|(w, _)| keep(w))
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect::<BTreeSet<_>>()
                .len()
        };

        for (tenant, ws) in &by_tenant {
            let Some(&count) = final_counts.get(*tenant) else {
                report
                    .violations
                    .push(format!("tenant {tenant:?}: no final count"));
                continue;
            };
            let acked = distinct(ws, &|w| w.outcome == Outcome::Ok) as u64;
            let possible = distinct(ws, &|w| w.outcome != Outcome::Failed) as u64;
            if count < acked {
                report.violations.push(format!(
                    "tenant {tenant:?}: lost write: counts {count}, {acked} ids acknowledged"
                ));
            }
            if count > possible {
                report.violations.push(format!(
                    "tenant {tenant:?}: phantom write: counts {count}, only {possible} ids sent in POSTs not refused"
                ));
            }
            let batches: BTreeSet<&BTreeSet<&str>> = ws.iter().map(|(_, ids)| ids).collect();
            if batches.len() == 1 {
                let size = batches.iter().next().map_or(0, |b| b.len()) as u64;
                let any_acked = ws.iter().any(|(w, _)| w.outcome == Outcome::Ok);
                if count != size && (count != 0 || any_acked) {
                    report.violations.push(format!(
                        "tenant {tenant:?}: torn batch: counts {count} of a batch of {size} (acknowledged: {any_acked})"
                    ));
                }
            }
        }

        // Read bounds, per tenant, by sweeping writes and reads in time order (a history has thousands
        // of both): `lower` grows with each acknowledged write completed before a read began,
        // `upper` with each write not refused that began before the read ended.
        let mut reads_by_tenant: BTreeMap<&str, Vec<&Read>> = BTreeMap::new();
        for r in &reads {
            reads_by_tenant
                .entry(r.tenant.as_str())
                .or_default()
                .push(r);
        }
        for (tenant, rs) in reads_by_tenant {
            let ws = by_tenant.get(tenant).map(Vec::as_slice).unwrap_or(&[]);
            // For each read (by index in `rs`): distinct ids of the events strictly before `at(read)`.
            let sweep = |mut events: Vec<(Duration, &BTreeSet<&str>)>,
                         at: &dyn Fn(&Read) -> Duration| {
                events.sort_by_key(|e| e.0);
                let mut order: Vec<usize> = (0..rs.len()).collect();
                order.sort_by_key(|&i| at(rs[i]));
                let mut out = vec![0u64; rs.len()];
                let mut seen: BTreeSet<&str> = BTreeSet::new();
                let mut next = 0;
                for i in order {
                    while next < events.len() && events[next].0 < at(rs[i]) {
                        seen.extend(events[next].1.iter().copied());
                        next += 1;
                    }
                    out[i] = seen.len() as u64;
                }
                out
            };
            let acked = ws
                .iter()
                .filter(|(w, _)| w.outcome == Outcome::Ok)
                .map(|(w, ids)| (w.completed, ids));
            let lower = sweep(acked.collect(), &|r| r.invoked);
            let attempted = ws
                .iter()
                .filter(|(w, _)| w.outcome != Outcome::Failed)
                .map(|(w, ids)| (w.invoked, ids));
            let upper = sweep(attempted.collect(), &|r| r.completed);
            for (i, r) in rs.iter().enumerate() {
                if r.value < lower[i] || r.value > upper[i] {
                    report.violations.push(format!(
                        "read of {:?} at {:?}..{:?} saw {}, expected {}..={}",
                        r.tenant, r.invoked, r.completed, r.value, lower[i], upper[i]
                    ));
                }
            }
            for (r, before) in non_monotonic(&rs) {
                report.non_monotonic += 1;
                report.violations.push(format!(
                    "non-monotonic read of {:?} at {:?}..{:?}: saw {} after a read that ended at {:?} saw {}",
                    r.tenant, r.invoked, r.completed, r.value, before.completed, before.value
                ));
            }
        }
        report
    }
}

/// Reads that returned less than an earlier read (of the same tenant) that ended before they began,
/// each with the highest such earlier read. One sweep over the reads by start, one by end.
fn non_monotonic<'a>(reads: &[&'a Read]) -> Vec<(&'a Read, &'a Read)> {
    let mut by_start = reads.to_vec();
    by_start.sort_by_key(|r| r.invoked);
    let mut by_end = reads.to_vec();
    by_end.sort_by_key(|r| r.completed);
    let mut ended = by_end.into_iter().peekable();
    let mut highest: Option<&Read> = None;
    let mut out = Vec::new();
    for r in by_start {
        while let Some(done) = ended.next_if(|d| d.completed < r.invoked) {
            if highest.is_none_or(|h| done.value > h.value) {
                highest = Some(done);
            }
        }
        if let Some(h) = highest.filter(|h| r.value < h.value) {
            out.push((r, h));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(tenant: &str, ids: &[&str]) -> Vec<(String, String)> {
        ids.iter()
            .map(|id| (id.to_string(), tenant.to_owned()))
            .collect()
    }

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn a_correct_history_passes() {
        let h = History::new();
        let t0 = h.now();
        h.write(t0, &items("a", &["1", "2"]), Outcome::Ok);
        h.write(h.now(), &items("a", &["2", "3"]), Outcome::Unknown);
        h.write(h.now(), &items("b", &["9"]), Outcome::Failed);
        h.read(h.now(), "a", 2);
        let report = h.check(&counts(&[("a", 3), ("b", 0)]));
        assert!(report.ok(), "{report}");
        assert_eq!(
            (
                report.writes,
                report.acknowledged,
                report.refused,
                report.unknown
            ),
            (3, 1, 1, 1)
        );
    }

    #[test]
    fn each_violation_is_caught() {
        let h = History::new();
        h.write(h.now(), &items("lost", &["1", "2"]), Outcome::Ok);
        h.write(h.now(), &items("phantom", &["1"]), Outcome::Failed);
        h.write(h.now(), &items("torn", &["1", "2", "3"]), Outcome::Unknown);
        h.write(h.now(), &items("fresh", &["1"]), Outcome::Ok);
        h.read(h.now(), "fresh", 0);
        h.read(h.now(), "phantom", 1);
        let report = h.check(&counts(&[
            ("lost", 1),
            ("phantom", 1),
            ("torn", 2),
            ("fresh", 1),
        ]));
        let all = report.violations.join("\n");
        assert!(all.contains("\"lost\": lost write"), "{all}");
        assert!(all.contains("\"phantom\": phantom write"), "{all}");
        assert!(all.contains("\"torn\": torn batch"), "{all}");
        assert!(all.contains("read of \"fresh\""), "{all}");
        assert!(all.contains("read of \"phantom\""), "{all}");
        assert_eq!(report.violations.len(), 6, "{all}"); // "lost" is also a torn acknowledged batch
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_it_or_not() {
        let h = History::new();
        let invoked = h.now();
        h.read(h.now(), "a", 0);
        h.write(invoked, &items("a", &["1"]), Outcome::Ok);
        h.read(h.now(), "a", 1);
        assert!(h.check(&counts(&[("a", 1)])).ok());
    }

    #[test]
    fn a_count_seen_to_go_down_is_caught_but_overlapping_reads_may_differ() {
        let h = History::new();
        // A write of two ids whose outcome is unknown: reads may see 0, 1 or 2 of them.
        let w = h.now();
        // Two overlapping reads may return either order.
        let (a, b) = (h.now(), h.now());
        h.read(a, "t", 2);
        h.read(b, "t", 1);
        // This one began after both ended: it must see at least 2.
        h.read(h.now(), "t", 1);
        h.read(h.now(), "t", 2);
        h.write(w, &items("t", &["1", "2"]), Outcome::Unknown);
        let report = h.check(&counts(&[("t", 2)]));
        assert_eq!(report.non_monotonic, 1, "{report}");
        assert_eq!(report.violations.len(), 1, "{report}");
        assert!(
            report.violations[0].contains("saw 1 after a read")
                && report.violations[0].contains("saw 2"),
            "{report}"
        );
    }

    #[test]
    fn a_stale_read_among_fresh_ones_is_caught() {
        let h = History::new();
        h.read(h.now(), "a", 0);
        h.write(h.now(), &items("a", &["1", "2"]), Outcome::Ok);
        h.read(h.now(), "a", 2);
        h.read(h.now(), "a", 1);
        h.write(h.now(), &items("a", &["3"]), Outcome::Failed);
        h.read(h.now(), "a", 3);
        let report = h.check(&counts(&[("a", 2)]));
        assert_eq!(report.violations.len(), 3, "{report}");
        assert!(
            report.violations[0].contains("saw 1, expected 2..=2"),
            "{report}"
        );
        assert!(
            report.violations[1].contains("saw 3, expected 2..=2"),
            "{report}"
        );
        // The stale read also went down from the read before it.
        assert_eq!(report.non_monotonic, 1, "{report}");
    }
}
