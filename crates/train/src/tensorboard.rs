//! TensorBoard event files beside `logs.jsonl`, so `tensorboard --logdir runs/` plots a run's
//! training loss, validation loss, learning rate, gradient norm and tokens/s.
//!
//! The format is TFRecord: each record is its length (u64 LE), the length's masked CRC-32C, the
//! bytes, and their masked CRC-32C. Each record is an `Event` protobuf (`wall_time` = 1, `step` = 2,
//! `file_version` = 3, `summary` = 5, `session_log` = 7) holding `Summary.Value`s (`tag` = 1,
//! `simple_value` = 2). The few messages needed are encoded by hand here.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Event;

/// One event file of a run: `tensorboard/events.out.tfevents.<seconds>.<microseconds>.chatforge.<pid>`
/// (TensorBoard reads a folder's files in name order, so a resumed attempt's sorts after the one
/// before it even within a second).
pub(crate) struct EventFile {
    file: File,
    path: PathBuf,
}

impl EventFile {
    /// A new event file in `dir`. A run resumed after `done_steps` says so with a
    /// `SessionLog.START` at the next step, so TensorBoard drops what a killed attempt logged past
    /// its checkpoint (as `logs.jsonl` is trimmed).
    pub fn create(dir: &Path, done_steps: u64) -> std::io::Result<EventFile> {
        std::fs::create_dir_all(dir)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let path = dir.join(format!(
            "events.out.tfevents.{}.{:06}.chatforge.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id()
        ));
        let mut f = EventFile {
            file: File::create(&path)?,
            path,
        };
        let mut version = event_head(0);
        field_bytes(&mut version, 3, b"brain.Event:2");
        f.record(&version)?;
        if done_steps > 0 {
            let mut start = event_head(done_steps + 1);
            let mut session = Vec::new();
            varint_field(&mut session, 1, 1); // status: START
            field_bytes(&mut start, 7, &session);
            f.record(&start)?;
        }
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes what `e` measures; events without numbers write nothing.
    pub fn write(&mut self, e: &Event) -> std::io::Result<()> {
        match e {
            Event::Step {
                step,
                loss,
                lr,
                grad_norm,
                tokens_per_s,
                metrics,
                ..
            } => {
                let mut values = vec![
                    ("train/loss".to_string(), *loss),
                    ("train/learning_rate".into(), *lr),
                    ("train/grad_norm".into(), *grad_norm),
                    ("train/tokens_per_s".into(), *tokens_per_s),
                ];
                values.extend(preference_scalars("train", metrics.as_ref()));
                self.scalars(*step, &values)
            }
            Event::Eval {
                step,
                val_loss,
                metrics,
                ..
            } => {
                let mut values = vec![("val/loss".to_string(), *val_loss)];
                values.extend(preference_scalars("val", metrics.as_ref()));
                self.scalars(*step, &values)
            }
            _ => Ok(()),
        }
    }

    fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> std::io::Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            field_bytes(&mut value, 1, tag.as_bytes());
            value.push(2 << 3 | 5); // simple_value: fixed32
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            field_bytes(&mut summary, 1, &value);
        }
        let mut event = event_head(step);
        field_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.file.write_all(&rec)?;
        self.file.flush()
    }
}

/// An `Event` with its wall time and step.
fn event_head(step: u64) -> Vec<u8> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut e = vec![1 << 3 | 1]; // wall_time: fixed64
    e.extend_from_slice(&now.as_secs_f64().to_le_bytes());
    varint_field(&mut e, 2, step);
    e
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

/// A length-delimited field (string, bytes or message).
fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli), masked as TFRecord does.
fn masked_crc32c(data: &[u8]) -> u32 {
    const POLY: u32 = 0x82F6_3B78;
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ POLY } else { crc >> 1 };
        }
    }
    let crc = !crc;
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// Preference tuning's metrics as TensorBoard tags under `prefix` (`train/rewards/chosen`, …).
fn preference_scalars(prefix: &str, m: Option<&crate::preference::PrefMetrics>) -> Vec<(String, f64)> {
    let Some(serde_json::Value::Object(fields)) = m.and_then(|m| serde_json::to_value(m).ok()) else {
        return Vec::new();
    };
    fields
        .into_iter()
        .filter_map(|(k, v)| Some((format!("{prefix}/{k}"), v.as_f64()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_known_value() {
        // CRC-32C("123456789") = 0xE3069283 (RFC 3720's check value), then masked.
        let crc: u32 = 0xE306_9283;
        assert_eq!(
            super::masked_crc32c(b"123456789"),
            crc.rotate_right(15).wrapping_add(0xA282_EAD8)
        );
    }
}
