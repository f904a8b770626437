//! The data directory: one node per directory.

use std::fs::{File, OpenOptions};
use std::path::Path;

/// An exclusive lock on a data directory, held while the value lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Creates `dir` if needed and locks it (`DATA_DIR/lock`), so that two
/// nodes never share a position or a log.
pub fn lock(dir: &Path) -> Result<DirLock, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    file.try_lock().map_err(|_| format!("{} is in use by another fresco process (`data_dir`)", dir.display()))?;
    Ok(DirLock { _file: file })
}

/// Writes `contents` to `dir/name` atomically: a crash leaves the old file
/// or the new one, never a mix. Blocks on fsync: call it off the runtime.
pub fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_directory_refuses_a_second_node() {
        let d = std::env::temp_dir().join(format!("fresco-dirlock-{}", std::process::id()));
        let first = lock(&d).unwrap();
        assert!(lock(&d).unwrap_err().contains("in use"));
        drop(first);
        assert!(lock(&d).is_ok(), "released with the lock value");
    }

    #[test]
    fn atomic_write_replaces_the_whole_file() {
        let d = std::env::temp_dir().join(format!("fresco-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        write_atomically(&d, "f", b"a long first version").unwrap();
        write_atomically(&d, "f", b"short").unwrap();
        assert_eq!(std::fs::read(d.join("f")).unwrap(), b"short");
        assert!(!d.join(".f.tmp").exists());
    }
}
