//! File helpers: atomic writes (temp file + rename, so a crash never leaves a half-written file),
//! canonical JSONL reading and writing, and content hashes for manifests.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Conversation, Error, Pos, Result};

use chatforge_base::temp_sibling;

/// Writes `path` through `write` into a temporary sibling, syncs it and renames it into place.
/// On any failure the temporary file is removed and an existing `path` is left untouched.
pub fn atomic_write<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
{
    chatforge_base::atomic_write(path, write).map_err(|e| Error::io(path, e))
}

/// Fills a directory through `fill` under a temporary sibling name, then moves it into place,
/// replacing an existing `dir` only once the new one is complete.
pub fn atomic_dir<F, E>(dir: &Path, fill: F) -> std::result::Result<(), E>
where
    F: FnOnce(&Path) -> std::result::Result<(), E>,
    E: From<Error>,
{
    let tmp = temp_sibling(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let tmp = tmp.as_path();
    if let Err(e) = fill(tmp) {
        let _ = fs::remove_dir_all(tmp);
        return Err(e);
    }
    let old = dir.with_file_name(format!(
        ".{}.old-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let had_old = dir.exists();
    if had_old {
        fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    if let Err(e) = fs::rename(tmp, dir) {
        if had_old {
            let _ = fs::rename(&old, dir);
        }
        return Err(Error::io(dir, e).into());
    }
    if had_old {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Reads a data file whole, refusing anything but a regular file (a FIFO would block forever,
/// a device never end).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::file(path, "is a directory, not a data file"));
    }
    if !meta.is_file() {
        return Err(Error::file(path, "not a regular file (a pipe, socket or device)"));
    }
    fs::read(path).map_err(|e| Error::io(path, e))
}

/// Reads a small text file (a config, a manifest) whole, refusing one over `max` bytes instead
/// of reading whatever size it claims.
pub fn read_capped(path: &Path, max: u64) -> Result<String> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::new();
    let n = file
        .take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(path, e))?;
    if n as u64 > max {
        return Err(Error::file(
            path,
            format!("larger than the {max} bytes allowed for this file"),
        ));
    }
    Ok(text)
}

/// Clears what a crash in [`atomic_write`] or [`atomic_dir`] left in `dir`: temporary siblings
/// (`.NAME.tmp-PID`) are removed, and a replaced directory (`.NAME.old-PID`) is put back when the
/// crash came before its successor was renamed in (`NAME` missing), else removed. Only names whose
/// process is gone are touched, so a writer that is still running keeps its files. Returns the
/// names cleared.
pub fn clear_leftovers(dir: &Path) -> Result<Vec<String>> {
    let mut cleared = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(cleared);
    };
    let mut found: Vec<(String, String, bool)> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix('.') else {
            continue;
        };
        let parsed = [(".tmp-", false), (".old-", true)]
            .into_iter()
            .find_map(|(tag, old)| {
                let (base, pid) = rest.rsplit_once(tag)?;
                let pid: u32 = pid.parse().ok()?;
                Some((base.to_string(), pid, old))
            });
        let Some((base, pid, old)) = parsed else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        found.push((name, base, old));
    }
    // Put a replaced directory back first, so the temporary successor is what gets removed.
    found.sort_by_key(|(_, _, old)| !old);
    for (name, base, old) in found {
        let path = dir.join(&name);
        if old && !dir.join(&base).exists() {
            fs::rename(&path, dir.join(&base)).map_err(|e| Error::io(&path, e))?;
        } else if path.is_dir() {
            fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        } else {
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        cleared.push(name);
    }
    Ok(cleared)
}

/// Whether process `pid` exists (Linux: `/proc/PID`; elsewhere only this process is known).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    cfg!(target_os = "linux") && Path::new(&format!("/proc/{pid}")).exists()
}

/// Writes conversations as canonical JSONL, one per line, atomically.
pub fn write_jsonl(path: &Path, conversations: &[Conversation]) -> Result<()> {
    atomic_write(path, |w| {
        for c in conversations {
            serde_json::to_writer(&mut *w, c)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Parses one line of canonical JSONL: `None` for a blank line, an error naming the file and
/// line for anything that is not a valid conversation.
pub fn parse_jsonl_line(path: &Path, line_no: usize, line: &str) -> Result<Option<Conversation>> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let c: Conversation = serde_json::from_str(line).map_err(|e| {
        Error::record(
            path,
            Pos::Line(line_no),
            format!("not a canonical conversation ({e}); run `chatforge data import` first"),
        )
    })?;
    c.validate()
        .map_err(|msg| Error::record(path, Pos::Line(line_no), msg))?;
    Ok(Some(c))
}

/// Reads canonical JSONL (as written by `chatforge data import`). Blank lines are skipped;
/// a malformed line is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Conversation>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => Error::record(path, Pos::Line(i + 1), "not valid UTF-8"),
            _ => Error::io(path, e),
        })?;
        out.extend(parse_jsonl_line(path, i + 1, &line)?);
    }
    Ok(out)
}

/// Incremental SHA-256 for manifests, fed as data streams past.
#[derive(Default, Clone)]
pub struct ContentHash(Sha256);

impl ContentHash {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Lower-case hex digest.
    pub fn hex(self) -> String {
        self.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = ContentHash::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Role};

    #[test]
    fn sha256_known_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, "abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        fs::write(&path, "old\n").unwrap();
        let err = atomic_write(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "old\n");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
    }

    #[test]
    fn crash_leftovers_are_cleared_and_a_replaced_dir_restored() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path();
        // A dead writer (no process has pid 4194304 + 1: above the kernel's pid_max) left: a temp
        // file, a temp checkpoint dir, and best/ renamed aside just before its successor came in.
        let dead = 4_194_305;
        fs::write(d.join(format!(".logs.jsonl.tmp-{dead}")), "x").unwrap();
        fs::create_dir_all(d.join(format!(".step_000010.tmp-{dead}"))).unwrap();
        fs::create_dir_all(d.join(format!(".best.old-{dead}"))).unwrap();
        fs::write(d.join(format!(".best.old-{dead}/model")), "old best").unwrap();
        fs::create_dir_all(d.join(format!(".best.tmp-{dead}"))).unwrap();
        // A live writer's temporary (this process) and ordinary hidden files stay.
        let mine = format!(".x.tmp-{}", std::process::id());
        fs::write(d.join(&mine), "busy").unwrap();
        fs::write(d.join(".hidden"), "keep").unwrap();
        let mut cleared = clear_leftovers(d).unwrap();
        cleared.sort();
        assert_eq!(cleared.len(), 4, "{cleared:?}");
        assert_eq!(fs::read_to_string(d.join("best/model")).unwrap(), "old best");
        let mut left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".hidden".to_string(), mine, "best".to_string()]);
        // With best/ present, a leftover old copy is removed, not restored over it.
        fs::create_dir_all(d.join(format!(".best.old-{dead}"))).unwrap();
        clear_leftovers(d).unwrap();
        assert_eq!(fs::read_to_string(d.join("best/model")).unwrap(), "old best");
        assert!(!d.join(format!(".best.old-{dead}")).exists());
    }

    #[test]
    fn atomic_dir_replaces_only_when_complete() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("art");
        atomic_dir::<_, Error>(&dir, |d| fs::write(d.join("a"), "1").map_err(|e| Error::io(d, e))).unwrap();
        let failed: Result<()> = atomic_dir(&dir, |d| {
            fs::write(d.join("a"), "2").map_err(|e| Error::io(d, e))?;
            Err(Error::Invalid("boom".into()))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
        atomic_dir::<_, Error>(&dir, |d| fs::write(d.join("b"), "3").map_err(|e| Error::io(d, e))).unwrap();
        assert!(!dir.join("a").exists());
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            1,
            "temporaries left behind"
        );
    }

    #[test]
    fn jsonl_round_trip_and_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let convs = vec![Conversation::new(vec![
            Message::new(Role::User, "hi"),
            Message::new(Role::Assistant, "hello"),
        ])];
        write_jsonl(&path, &convs).unwrap();
        assert_eq!(read_jsonl(&path).unwrap(), convs);

        fs::write(
            &path,
            format!(
                "{}\n{{\"messages\": 3}}\n",
                serde_json::to_string(&convs[0]).unwrap()
            ),
        )
        .unwrap();
        let err = read_jsonl(&path).unwrap_err().to_string();
        assert!(err.contains("c.jsonl, line 2"), "{err}");
    }
}
