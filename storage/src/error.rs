use crate::model::Seq;

/// Storage errors, split by what the caller has to do about them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory is locked by another live process (sled's file lock).
    #[error("data directory {0} is in use by another process")]
    Locked(String),
    /// sled failed: I/O error or corruption. Never answered by starting empty.
    #[error("storage failure: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record could not be decoded (unknown version or corrupt bytes).
    #[error("corrupt record in {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    /// A commit or log entry does not follow the last applied one: the replica must catch up first.
    #[error("out of order: expected seq {expected}, got {got}")]
    Gap { expected: Seq, got: Seq },
    /// A COMMIT for a seq this replica already applied with another, older transaction: the
    /// coordinator's history and this replica's differ (a coordinator restored from an older copy).
    #[error("seq {seq} was applied here with an older transaction than {txid}: this replica is ahead of the coordinator")]
    Diverged { seq: Seq, txid: u64 },
    /// COMMIT for a transaction this replica never prepared (or already forgot as aborted).
    #[error("transaction {0} is not prepared here")]
    NotPrepared(u64),
    /// A log page was asked for from a point the log no longer reaches back to.
    #[error("log starts after seq {floor}; a snapshot is needed")]
    LogTrimmed { floor: Seq },
    /// The replica belongs to another cluster than the coordinator that called or answered it.
    #[error("this counter belongs to cluster {mine}, not to cluster {theirs}")]
    OtherCluster { mine: String, theirs: String },
    /// A flush failed (a full disk, an I/O error): sled takes no more writes until the database is
    /// reopened, and nothing written since the last successful flush is durable (`flusher`).
    #[error("{}: {reason}", if *disk_full { "no space left on the data disk" } else { "the database cannot write to disk" })]
    Unwritable { reason: String, disk_full: bool },
    /// The flusher's state is gone (the process is shutting down).
    #[error("flusher stopped")]
    FlusherStopped,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether this is a full disk: the caller answers `507 Insufficient Storage`.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Unwritable { disk_full, .. } => *disk_full,
            Error::Sled(e) => is_disk_full(e),
            _ => false,
        }
    }

    pub(crate) fn corrupt(tree: &'static str, reason: impl ToString) -> Self {
        Error::Corrupt {
            tree,
            reason: reason.to_string(),
        }
    }
}

/// sled keeps the kind of the I/O error it failed with (also in the copy of its global error).
pub(crate) fn is_disk_full(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
}
