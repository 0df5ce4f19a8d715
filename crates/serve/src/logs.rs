//! Reading a run's `logs.jsonl` for the API: the last lines from the end of the file, and new lines
//! as they are appended, without reading the whole file each time.
//!
//! Each line gets an id `STEP:K`: the step it belongs to ([`chatforge_train::line_step`]) and its
//! place among that step's lines. Steps never decrease down the log, and a resumed run trims what
//! it logs again, so an id names the same event before and after a crash: a client that reconnects
//! with `Last-Event-ID` gets what followed, once, even across a restart that rewrote the file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A line longer than this is not an event the trainer wrote; it is skipped.
const MAX_LINE: usize = 1 << 20;
/// Bytes read per system call, forward and backward.
const CHUNK: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventId {
    pub step: u64,
    pub k: u32,
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.step, self.k)
    }
}

impl std::str::FromStr for EventId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (step, k) = s.trim().split_once(':').ok_or(())?;
        Ok(EventId {
            step: step.parse().map_err(|_| ())?,
            k: k.parse().map_err(|_| ())?,
        })
    }
}

/// One whole line of the log and its id.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub id: EventId,
    pub text: String,
}

/// The step of one line: its event's, or (a line that is not an event) `prev`'s.
fn step_of(line: &[u8], prev: u64) -> u64 {
    chatforge_train::line_step(line).unwrap_or(prev)
}

/// The next id after `prev` for a line of `step`.
fn next_id(prev: Option<EventId>, step: u64) -> EventId {
    match prev {
        Some(p) if p.step == step => EventId { step, k: p.k + 1 },
        // A step lower than the last (a log not written by a run) continues the last one.
        Some(p) if step < p.step => EventId {
            step: p.step,
            k: p.k + 1,
        },
        _ => EventId { step, k: 0 },
    }
}

/// Whole lines of `file` that end at or before `end` (an offset just after a newline), newest
/// first, with their start offsets; lines over [`MAX_LINE`] are left out, as forward reading does.
fn lines_backward(file: &mut File, end: u64) -> impl Iterator<Item = std::io::Result<(u64, Vec<u8>)>> + '_ {
    let mut pos = end;
    // The start of the file's unread part ends with the beginning of a line whose start is not
    // read yet: its bytes so far (at most MAX_LINE + 1 kept) and its true length.
    let (mut carry, mut carry_len): (Vec<u8>, u64) = (Vec::new(), 0);
    let mut ready: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    std::iter::from_fn(move || {
        loop {
            if let Some(l) = ready.pop() {
                return Some(Ok(l));
            }
            if pos == 0 {
                let line = std::mem::take(&mut carry);
                let len = std::mem::take(&mut carry_len);
                return (len > 0 && len as usize <= MAX_LINE).then_some(Ok((0, line)));
            }
            let n = (CHUNK as u64).min(pos);
            pos -= n;
            let chunk = &mut buf[..n as usize];
            if let Err(e) = file
                .seek(SeekFrom::Start(pos))
                .and_then(|_| file.read_exact(chunk))
            {
                pos = 0;
                carry_len = 0;
                return Some(Err(e));
            }
            let newlines: Vec<usize> = chunk
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\n')
                .map(|(i, _)| i)
                .collect();
            let keep = |line: &mut Vec<u8>, bytes: &[u8]| {
                let room = (MAX_LINE + 1).saturating_sub(line.len());
                line.extend_from_slice(&bytes[..bytes.len().min(room)]);
            };
            let Some(&last) = newlines.last() else {
                let mut joined = Vec::new();
                keep(&mut joined, chunk);
                keep(&mut joined, &carry);
                (carry, carry_len) = (joined, carry_len + n);
                continue;
            };
            // Oldest first here; pop() hands out the newest.
            let mut lines = Vec::new();
            for w in newlines.windows(2) {
                let line = &chunk[w[0] + 1..=w[1]];
                if line.len() <= MAX_LINE {
                    lines.push((pos + w[0] as u64 + 1, line.to_vec()));
                }
            }
            // The line that began after the chunk's last newline and ran into the carry.
            let spanning_len = (n - last as u64 - 1) + carry_len;
            if spanning_len > 0 && spanning_len as usize <= MAX_LINE {
                let mut line = chunk[last + 1..].to_vec();
                line.extend_from_slice(&carry);
                lines.push((pos + last as u64 + 1, line));
            }
            ready = lines;
            let head = &chunk[..=newlines[0]];
            carry = Vec::new();
            keep(&mut carry, head);
            carry_len = head.len() as u64;
        }
    })
}

/// Where reading forward begins: the offset of the first line to deliver, and the id of the
/// line before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Start {
    offset: u64,
    prev: Option<EventId>,
}

/// The offset after the last whole line of a file of `len` bytes.
fn whole_end(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut pos = len;
    let mut buf = vec![0u8; CHUNK];
    while pos > 0 {
        let n = (CHUNK as u64).min(pos);
        file.seek(SeekFrom::Start(pos - n))?;
        file.read_exact(&mut buf[..n as usize])?;
        if let Some(i) = buf[..n as usize].iter().rposition(|&b| b == b'\n') {
            return Ok(pos - n + i as u64 + 1);
        }
        pos -= n;
    }
    Ok(0)
}

/// Scans back from the end of the whole lines until `stop` (given each line's step, newest first)
/// says enough, then computes ids forward: the start of the last lines scanned that `keep` wants.
/// Each line's place among its step's lines needs the lines before it of the same step, so the
/// scan goes on to the first line of a lower step (or the file's start).
fn scan_back(
    file: &mut File,
    end: u64,
    mut enough: impl FnMut(usize, u64) -> bool,
) -> std::io::Result<Vec<(u64, u64)>> {
    // (offset, step) of the lines read, newest first; steps of non-events are fixed up below.
    let mut seen: Vec<(u64, Option<u64>)> = Vec::new();
    let mut lowest: Option<u64> = None;
    for l in lines_backward(file, end) {
        let (off, line) = l?;
        let step = chatforge_train::line_step(&line);
        seen.push((off, step));
        if let Some(s) = step {
            if enough(seen.len(), s) && lowest.is_some_and(|low| s < low) {
                break;
            }
            lowest = Some(lowest.map_or(s, |low| low.min(s)));
        }
    }
    seen.reverse();
    let mut prev = 0;
    Ok(seen
        .into_iter()
        .map(|(off, s)| {
            prev = s.unwrap_or(prev);
            (off, prev)
        })
        .collect())
}

/// Ids for lines read oldest first from a known point (the first has no predecessor of its step).
fn ids(lines: &[(u64, u64)]) -> Vec<EventId> {
    let mut prev = None;
    lines
        .iter()
        .map(|&(_, step)| {
            let id = next_id(prev, step);
            prev = Some(id);
            id
        })
        .collect()
}

/// The start of the last `n` lines.
fn start_of_tail(file: &mut File, end: u64, n: usize) -> std::io::Result<Start> {
    let lines = scan_back(file, end, |count, _| count > n)?;
    Ok(start_in(&lines, &ids(&lines), lines.len().saturating_sub(n), end))
}

/// The start of the lines after `after`.
fn start_after(file: &mut File, end: u64, after: EventId) -> std::io::Result<Start> {
    let lines = scan_back(file, end, |_, step| step < after.step)?;
    let ids = ids(&lines);
    let first = ids.iter().position(|id| *id > after).unwrap_or(ids.len());
    Ok(start_in(&lines, &ids, first, end))
}

/// The start at line `i` of `lines` (offsets and steps, oldest first) whose ids are `ids`, `end`
/// past the last. The scan reached a line of a lower step (or the file start), so the ids are exact.
fn start_in(lines: &[(u64, u64)], ids: &[EventId], i: usize, end: u64) -> Start {
    Start {
        offset: lines.get(i).map_or(end, |l| l.0),
        prev: i.checked_sub(1).map(|j| ids[j]),
    }
}

/// Where to begin: after `last` (a client's Last-Event-ID), or the last `tail` lines.
pub enum From {
    After(EventId),
    Tail(usize),
}

/// A reader that follows `logs.jsonl` as it grows, and finds its place again when a resumed run
/// rewrites the file (trimmed, so a new file under the same name).
pub struct Follower {
    path: PathBuf,
    /// The file read so far (its inode, to notice a rewrite), the offset reached, and the id of
    /// the last line delivered.
    ino: Option<u64>,
    offset: u64,
    last: Option<EventId>,
    from: Option<From>,
}

impl Follower {
    pub fn new(path: &Path, from: From) -> Follower {
        Follower {
            path: path.to_path_buf(),
            ino: None,
            offset: 0,
            last: None,
            from: Some(from),
        }
    }

    /// The id of the last line delivered.
    pub fn last(&self) -> Option<EventId> {
        self.last
    }

    /// Up to `max` new whole lines (none while the file is missing). Blocking I/O: call it off
    /// the async threads.
    pub fn read(&mut self, max: usize) -> std::io::Result<Vec<LogLine>> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let ino = inode(&meta);
        let end = whole_end(&mut file, meta.len())?;
        if self.ino != ino || end < self.offset || self.from.is_some() {
            // First read, or the file was rewritten: find the place again by id.
            let start = match (self.from.take(), self.last) {
                (_, Some(last)) => start_after(&mut file, end, last)?,
                (Some(From::After(id)), None) => start_after(&mut file, end, id)?,
                (Some(From::Tail(n)), None) => start_of_tail(&mut file, end, n)?,
                (None, None) => start_of_tail(&mut file, end, usize::MAX)?,
            };
            self.ino = ino;
            self.offset = start.offset;
            if self.last.is_none() {
                self.last = start.prev;
            }
        }
        let mut out = Vec::new();
        file.seek(SeekFrom::Start(self.offset))?;
        let mut reader = std::io::BufReader::with_capacity(CHUNK, file.take(end - self.offset));
        let mut line = Vec::new();
        while out.len() < max {
            line.clear();
            let n = read_line_capped(&mut reader, &mut line)?;
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            if line.len() > MAX_LINE {
                continue;
            }
            let prev_step = self.last.map_or(0, |l| l.step);
            let id = next_id(self.last, step_of(&line, prev_step));
            self.last = Some(id);
            let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line)).into_owned();
            out.push(LogLine { id, text });
        }
        Ok(out)
    }
}

/// Reads one line (through its newline) keeping at most `MAX_LINE + 1` bytes of it; returns the
/// bytes consumed.
fn read_line_capped(r: &mut impl std::io::BufRead, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(consumed);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = (MAX_LINE + 1).saturating_sub(out.len());
        out.extend_from_slice(&buf[..take.min(room)]);
        r.consume(take);
        consumed += take;
        if done {
            return Ok(consumed);
        }
    }
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    Some(meta.ino())
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(s: u64) -> String {
        format!("{{\"event\":\"step\",\"step\":{s},\"loss\":1.0}}\n")
    }

    fn all(f: &mut Follower) -> Vec<(String, String)> {
        f.read(usize::MAX)
            .unwrap()
            .into_iter()
            .map(|l| (l.id.to_string(), l.text))
            .collect()
    }

    #[test]
    fn ids_survive_a_resume_that_rewrites_the_log() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("logs.jsonl");
        let start = |s: u64| format!("{{\"event\":\"start\",\"start_step\":{s}}}\n");
        let ckpt = |s: u64| format!("{{\"event\":\"checkpoint\",\"step\":{s}}}\n");
        let mut text = start(0);
        for s in 1..=5 {
            text += &step(s);
        }
        text += &ckpt(5);
        for s in 6..=8 {
            text += &step(s);
        }
        std::fs::write(&path, &text).unwrap();
        let mut live = Follower::new(&path, From::Tail(usize::MAX));
        let first = all(&mut live);
        assert_eq!(first.len(), 10);
        assert_eq!(first[0].0, "0:0");
        assert_eq!(first[5].0, "5:0");
        assert_eq!(first[6].0, "5:1");
        assert_eq!(first[9].0, "8:0");
        // A client saw up to step 7, then the run crashed and resumed from step 5: the log is
        // rewritten (a new file) with a new start line, and steps 6.. are logged again.
        let seen = first[8].0.parse::<EventId>().unwrap();
        let mut resumed = text[..text.find(&step(6)).unwrap()].to_string();
        resumed += &start(5);
        for s in 6..=9 {
            resumed += &step(s);
        }
        let tmp = d.path().join("new");
        std::fs::write(&tmp, &resumed).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let mut again = Follower::new(&path, From::After(seen));
        let rest = all(&mut again);
        assert_eq!(
            rest.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["8:0", "9:0"],
            "only what followed step 7, once"
        );
        // The follower that stayed connected finds its place in the new file too.
        assert_eq!(
            all(&mut live)
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>(),
            ["9:0"]
        );
        // A huge or absurd Last-Event-ID replays nothing.
        let mut far = Follower::new(&path, From::After("18446744073709551615:0".parse().unwrap()));
        assert!(all(&mut far).is_empty());
        assert!("18446744073709551615".parse::<EventId>().is_err());
    }

    #[test]
    fn tails_from_the_end_in_small_reads() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("logs.jsonl");
        // Long enough for several backward chunks; each step has three lines.
        let mut text = String::new();
        for s in 0..5000u64 {
            text += &step(s);
            text += &format!("{{\"event\":\"eval\",\"step\":{s},\"val_loss\":2.0}}\n");
            text += &format!(
                "{{\"event\":\"warning\",\"step\":{s},\"message\":\"{}\"}}\n",
                "x".repeat(40)
            );
        }
        text += "{\"event\":\"step\",\"step\":5000,\"lo"; // being written
        std::fs::write(&path, &text).unwrap();
        let mut f = Follower::new(&path, From::Tail(4));
        let got = all(&mut f);
        assert_eq!(
            got.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["4998:2", "4999:0", "4999:1", "4999:2"]
        );
        // The cut line is left until it is whole; appending finishes it.
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        w.write_all(b"ss\":1.0}\n").unwrap();
        let got = all(&mut f);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "5000:0");
        assert!(got[0].1.ends_with("\"loss\":1.0}"));
        // After an id in the middle: exactly what followed.
        let mut f = Follower::new(&path, From::After("2500:1".parse().unwrap()));
        let got = all(&mut f);
        assert_eq!(got.first().unwrap().0, "2500:2");
        assert_eq!(got.len(), 1 + 2499 * 3 + 1);
    }

    #[test]
    fn bad_bytes_and_giant_lines_are_bounded() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("logs.jsonl");
        let mut bytes = step(1).into_bytes();
        bytes.extend_from_slice(b"{\"event\":\"warning\",\"message\":\"\xE2\x82\"}\n");
        bytes.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        bytes.push(b'\n');
        bytes.extend_from_slice(step(2).as_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let got = all(&mut Follower::new(&path, From::Tail(10)));
        assert_eq!(
            got.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["1:0", "1:1", "2:0"]
        );
        assert!(got[1].1.contains('\u{FFFD}'));
    }
}
