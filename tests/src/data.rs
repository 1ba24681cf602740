//! Data directories of stopped services: copied as a kill leaves them, or opened in-process.

use std::path::Path;
use std::time::{Duration, Instant};

/// Copies a directory tree as it is now (a data directory, as a kill would leave it).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// Opens a stopped service's data, reads it with `read`, and closes it again: dropping the store
/// ends its flusher thread, which releases the data directory's lock.
pub fn inspect<S, T>(open: impl Fn() -> storage::Result<S>, read: impl FnOnce(&S) -> T) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = loop {
        match open() {
            Ok(store) => break store,
            // The lock of the process that just exited may take a moment to go.
            Err(storage::Error::Locked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("cannot open the data: {e}"),
        }
    };
    read(&store)
}
