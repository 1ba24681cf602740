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

/// Marks a data directory whose database was made durable at least once: a file next to sled's own,
/// and a key in sled's default tree.
const INITIALIZED: &str = "initialized";

/// Opens a sled database, telling a held lock apart from real failures: replicas claiming slot
/// directories move on from a locked one, but must stop on anything else.
///
/// sled opens a `db` file it cannot read as a new, empty database (unless a snapshot file points into
/// it). So a new database gets the [`INITIALIZED`] key, is flushed, and only then is the directory
/// marked by the [`INITIALIZED`] file; a marked directory whose database lacks the key is an error,
/// never a fresh start. The flush also makes sled's id generator skip ahead on every later recovery
/// (it only does once its counter was on disk), which keeps txids from being reused after an early crash.
pub(crate) fn open_db(path: &std::path::Path) -> Result<sled::Db> {
    let db = match sled::Config::new().path(path).open() {
        Ok(db) => db,
        Err(sled::Error::Io(e)) if is_lock_error(&e) => {
            return Err(Error::Locked(path.display().to_string()))
        }
        Err(e) => return Err(Error::Sled(e)),
    };
    // Checked under sled's lock, so no other process creates the marker meanwhile.
    let marker = path.join(INITIALIZED);
    let marked = marker.try_exists().map_err(sled::Error::from)?;
    if marked && !db.contains_key(INITIALIZED)? {
        return Err(Error::corrupt(
            "db",
            format!(
                "sled found no database in {}, which held one",
                path.display()
            ),
        ));
    }
    if !marked {
        db.insert(INITIALIZED, &[][..])?;
        db.flush()?;
        write_marker(path, &marker).map_err(sled::Error::from)?;
    }
    Ok(db)
}

fn write_marker(dir: &std::path::Path, marker: &std::path::Path) -> std::io::Result<()> {
    let mut file = std::fs::File::create(marker)?;
    std::io::Write::write_all(&mut file, b"sled database created and flushed\n")?;
    file.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// sled 0.34.7 does not pass the `WouldBlock` of its failed `try_lock_exclusive` through: it wraps it
/// in an `ErrorKind::Other` error whose message is all that is left of it.
fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || (e.kind() == std::io::ErrorKind::Other
            && e.to_string().starts_with("could not acquire lock on"))
}
