//! The service's log lines, on stderr: text for people, or one JSON object per line for log
//! collectors (`--log-format json`: `{"ts", "level", "msg", …fields}`, with the worker, job and
//! run ids as fields where a line concerns them).

use std::fmt::Display;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);
/// A file every line is also appended to (`log_dir`'s `chatforge.log`).
static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Also appends every line to `dir/chatforge.log` (created with the folder).
pub fn also_to(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("chatforge.log"))?;
    if let Ok(mut slot) = FILE.lock() {
        *slot = Some(f);
    }
    Ok(())
}

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(crate::Error::Invalid(format!(
                "log format '{other}': expected text or json"
            ))),
        }
    }
}

/// Chooses the format for the rest of the process (and for the job processes it starts, which
/// inherit `CHATFORGE_LOG_FORMAT`).
pub fn set_format(f: LogFormat) {
    JSON.store(f == LogFormat::Json, Ordering::Relaxed);
}

/// The format a job process was started with (its parent's).
pub fn format_from_env() -> LogFormat {
    match std::env::var("CHATFORGE_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

pub fn format() -> LogFormat {
    if JSON.load(Ordering::Relaxed) {
        LogFormat::Json
    } else {
        LogFormat::Text
    }
}

pub fn info(msg: &str, fields: &[(&str, &dyn Display)]) {
    line("info", msg, fields);
}

pub fn warn(msg: &str, fields: &[(&str, &dyn Display)]) {
    line("warn", msg, fields);
}

pub fn error(msg: &str, fields: &[(&str, &dyn Display)]) {
    line("error", msg, fields);
}

fn line(level: &str, msg: &str, fields: &[(&str, &dyn Display)]) {
    let text = if JSON.load(Ordering::Relaxed) {
        let mut o = serde_json::Map::new();
        o.insert("ts".into(), rfc3339(crate::now()).into());
        o.insert("level".into(), level.into());
        o.insert("msg".into(), msg.into());
        for (k, v) in fields {
            o.insert((*k).into(), v.to_string().into());
        }
        serde_json::Value::Object(o).to_string()
    } else {
        let mut t = if level == "info" {
            msg.to_string()
        } else {
            format!("{level}: {msg}")
        };
        for (k, v) in fields {
            t.push_str(&format!(" {k}={v}"));
        }
        t
    };
    let _ = writeln!(std::io::stderr().lock(), "{text}");
    if let Ok(mut slot) = FILE.lock()
        && let Some(f) = slot.as_mut()
    {
        let _ = writeln!(f, "{text}");
    }
}

/// `2026-11-30T12:00:00.123Z` for seconds since the epoch.
pub fn rfc3339(t: f64) -> String {
    let ms = (t * 1000.0).round() as i64;
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = chatforge_base::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        assert_eq!(super::rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400.5), "2000-02-29T00:00:00.500Z");
        assert_eq!(super::rfc3339(1_796_040_000.0), "2026-11-30T12:00:00.000Z");
    }
}
