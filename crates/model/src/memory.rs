//! What a model will need in memory, against what the machine has: requests and files are checked
//! with these before anything large is allocated, so an absurd size is a clear error, not an abort.

/// The machine's physical memory in bytes (`MemTotal` of `/proc/meminfo`), `None` where unknown.
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `bytes` for people: `3.2 GB`, `512 MB`, `12 KB` (powers of 1000, as `free -h --si`).
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Refuses `needed` bytes when it exceeds the machine's memory: `what` names the work and the
/// message gives the estimate and the machine's size.
pub fn check_fits(what: &str, needed: u128) -> crate::Result<()> {
    match machine_memory() {
        Some(have) if needed > u128::from(have) => Err(crate::Error::Config(format!(
            "{what} needs about {} of memory, more than this machine's {}",
            human_bytes(needed),
            human_bytes(u128::from(have))
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_for_people() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(3_200_000_000), "3.2 GB");
        assert!(machine_memory().is_some_and(|m| m > 1 << 20));
        assert!(check_fits("a run", 1 << 20).is_ok());
        let err = check_fits("a run", 1 << 60).unwrap_err().to_string();
        assert!(err.contains("a run needs about 1.2 EB of memory"), "{err}");
    }
}
