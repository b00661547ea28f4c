//! The serial console log a VM's monitor writes (`<vm dir>/console.log`), kept under a
//! size cap: a guest that writes to its console without end must not fill the host's
//! disk. Both monitors append (qemu's `append=on`, hyper-vmm's append mode), so the
//! daemon can empty the file under them and they carry on at its new end.
use std::io::Write;
use std::path::Path;

/// Empties the log at `path` once it is larger than `max` bytes, leaving a line that
/// says so; whether it did.
pub fn cap_console_log(path: &Path, max: u64) -> std::io::Result<bool> {
    let len = std::fs::metadata(path)?.len();
    if len <= max {
        return Ok(false);
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.set_len(0)?;
    writeln!(
        f,
        "[hyperd: the console log passed {max} bytes; {len} bytes were dropped]"
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_cap_is_emptied_and_marked() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("console.log");
        // A writer that appends, as the monitors do.
        let mut w = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        w.write_all(&[b'x'; 100]).unwrap();
        assert!(!cap_console_log(&p, 100).unwrap());
        w.write_all(&[b'y'; 10]).unwrap();
        assert!(cap_console_log(&p, 100).unwrap());
        w.write_all(b"after\n").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("[hyperd: the console log passed 100 bytes; 110"),
            "{text}"
        );
        assert!(text.ends_with("]\nafter\n"), "{text}");
        assert!(std::fs::metadata(&p).unwrap().len() < 100);
    }
}
