//! The node's data directory: one process at a time, and files in it
//! replaced atomically.
//!
//! Both logs (embedded and bus) keep state here, so both take the lock
//! before they read any of it: a second node replaying or appending beside a
//! running one would interleave versions or overwrite its position.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Held for the life of the node; dropping it releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Creates `dir` if needed and locks it (`DATA_DIR/lock`, an advisory
    /// `flock`, released by the kernel if the process dies). Fails with a
    /// message naming the directory when another process holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => {
                format!("{} is in use by another fresco process (`data_dir`)", dir.display())
            }
            std::fs::TryLockError::Error(e) => format!("cannot lock {}: {e}", path.display()),
        })?;
        Ok(DataDirLock { _file: file })
    }
}

/// Makes a rename or a truncation in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn parent(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the
/// new content, never a mix: temp file, fsync, rename, fsync the directory.
/// Returns the new file opened for appending. On error `path` is untouched
/// and the temp file removed.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<File> {
    let temp = temp_path(path);
    let written = (|| {
        match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new().create_new(true).append(true).open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        Ok(file)
    })();
    match written {
        Ok(file) => {
            sync_dir(parent(path))?;
            Ok(file)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fresco-datadir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_lock_on_one_directory_is_refused_until_the_first_is_dropped() {
        let d = dir("lock");
        let first = DataDirLock::acquire(&d).unwrap();
        let err = DataDirLock::acquire(&d).unwrap_err();
        assert!(err.contains("in use by another fresco process") && err.contains(&*d.to_string_lossy()), "{err}");
        drop(first);
        DataDirLock::acquire(&d).expect("released on drop");
    }

    #[test]
    fn replace_swaps_the_whole_content_and_leaves_no_temp_file() {
        let d = dir("replace");
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("state");
        std::fs::write(&path, "old content, longer than the new").unwrap();
        let mut file = replace(&path, b"new").unwrap();
        file.write_all(b"+appended").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new+appended", "the handle is the renamed file");
        assert!(!temp_path(&path).exists());
    }
}
