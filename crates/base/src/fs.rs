//! Atomic writes: a temporary sibling, synced and renamed into place, so a crash never leaves a
//! half-written file.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// The temporary sibling `path` is written through (`.name.tmp-<pid>`): hidden, and recognisable
/// as a crash's leftover.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `path` through `write` into a temporary sibling, syncs it and renames it into place
/// (creating the parent folder). On any failure the temporary file is removed and an existing
/// `path` is left untouched. Errors carry no path: callers name the file.
pub fn atomic_write<F>(path: &Path, write: F) -> std::io::Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
{
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
