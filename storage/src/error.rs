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
    /// COMMIT for a transaction this replica never prepared (or already forgot as aborted).
    #[error("transaction {0} is not prepared here")]
    NotPrepared(u64),
    /// A log page was asked for from a point the log no longer reaches back to.
    #[error("log starts after seq {floor}; a snapshot is needed")]
    LogTrimmed { floor: Seq },
    /// The flusher task is gone (the process is shutting down).
    #[error("flusher stopped")]
    FlusherStopped,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn corrupt(tree: &'static str, reason: impl ToString) -> Self {
        Error::Corrupt {
            tree,
            reason: reason.to_string(),
        }
    }
}

/// Opens a sled database, telling a held lock apart from real failures: replicas claiming slot
/// directories move on from a locked one, but must stop on anything else.
pub(crate) fn open_db(path: &std::path::Path) -> Result<sled::Db> {
    match sled::Config::new().path(path).open() {
        Ok(db) => Ok(db),
        Err(sled::Error::Io(e)) if is_lock_error(&e) => {
            Err(Error::Locked(path.display().to_string()))
        }
        Err(e) => Err(Error::Sled(e)),
    }
}

/// sled 0.34.7 does not pass the `WouldBlock` of its failed `try_lock_exclusive` through: it wraps it
/// in an `ErrorKind::Other` error whose message is all that is left of it.
fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || (e.kind() == std::io::ErrorKind::Other
            && e.to_string().starts_with("could not acquire lock on"))
}
