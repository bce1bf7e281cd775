//! Small file-system helpers for durability.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Fsyncs a directory so a rename or create inside it survives power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}

/// Fsyncs every regular file below `dir` (sled's own flush uses `sync_file_range`,
/// which does not make file metadata durable against power loss).
pub(crate) fn sync_tree(dir: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            match File::open(&path).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                // sled removes old snapshot files concurrently.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("fsync {}", path.display()), e)),
            }
        }
    }
    sync_dir(dir)
}
