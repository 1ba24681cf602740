//! [`Load`]: concurrent writers recording every POST in a shared history.

use std::time::{Duration, Instant};

use crate::client::{batch, ApiClient};
use crate::history;

/// Concurrent writers, each POSTing batches to fresh tenants in a loop until stopped. Every POST is
/// recorded in the shared history; the completion time of every acknowledged one is kept too.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    acked_at: SharedVec<Instant>,
    outcomes: SharedVec<(history::Outcome, Option<u16>)>,
}

type SharedVec<T> = std::sync::Arc<std::sync::Mutex<Vec<T>>>;

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadStats {
    /// Every POST's outcome and status, in completion order.
    pub outcomes: Vec<(history::Outcome, Option<u16>)>,
    /// Completion times of the acknowledged POSTs, sorted.
    pub acked_at: Vec<Instant>,
}

impl LoadStats {
    pub fn count(&self, outcome: history::Outcome) -> usize {
        self.outcomes.iter().filter(|(o, _)| *o == outcome).count()
    }
}

impl Load {
    /// `writers` tasks, each POSTing `batch_size` items to a fresh tenant `<prefix>-<writer>-<n>` and
    /// pausing `pause` between POSTs (so a dead coordinator is not hammered in a tight loop). With
    /// `read_back`, each acknowledged POST is followed by a GET of its tenant's count, recorded in the
    /// history (a fresh read must count the whole batch).
    pub fn start(
        client: ApiClient,
        history: std::sync::Arc<history::History>,
        prefix: &str,
        writers: usize,
        batch_size: usize,
        pause: Duration,
        read_back: bool,
    ) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked_at = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let outcomes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..writers)
            .map(|w| {
                let (client, history, stop) = (client.clone(), history.clone(), stop.clone());
                let (acked_at, outcomes) = (acked_at.clone(), outcomes.clone());
                let prefix = format!("{prefix}-{w}");
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let items = batch(&format!("{prefix}-{n}"), batch_size);
                        let (outcome, status) = client.post_recorded(&history, &items).await;
                        if outcome == history::Outcome::Ok {
                            acked_at.lock().unwrap().push(Instant::now());
                            if read_back {
                                client.get_count_recorded(&history, &items[0].1).await;
                            }
                        }
                        outcomes.lock().unwrap().push((outcome, status));
                        n += 1;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            acked_at,
            outcomes,
        }
    }

    /// Number of POSTs acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked_at.lock().unwrap().len()
    }

    /// Stops the writers (each finishes its POST in flight) and returns what they saw.
    pub async fn stop(self) -> LoadStats {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("writer task panicked");
        }
        let mut acked_at = std::mem::take(&mut *self.acked_at.lock().unwrap());
        acked_at.sort();
        let outcomes = std::mem::take(&mut *self.outcomes.lock().unwrap());
        LoadStats { outcomes, acked_at }
    }
}
