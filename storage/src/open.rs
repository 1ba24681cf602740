//! Opening a sled database: one place for what sled does not do itself. It tells a directory held by
//! another live process apart from real failures, refuses to start empty on a directory that held a
//! database sled can no longer read, and turns sled's panics on a corrupt directory into errors.

use crate::error::{Error, Result};

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
///
/// sled has been seen to panic on a corrupt snapshot rather than return an error: that is reported
/// as a corrupt database too, never a crash of the process that opens it.
pub(crate) fn open_db(path: &std::path::Path) -> Result<sled::Db> {
    let opened = std::panic::catch_unwind(|| sled::Config::new().path(path).open())
        .map_err(|_| Error::corrupt("db", "sled panicked opening it"))?;
    let db = match opened {
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
