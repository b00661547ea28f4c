//! Turns an unpacked root filesystem into the read-only disk image a VM mounts.
//!
//! erofs, built by `mkfs.erofs` from erofs-utils: compact, read-only by design, and quick
//! for the guest to mount. Written to a temporary name and renamed when complete.
use std::path::Path;
use std::process::Command;

pub(super) fn make_erofs(dir: &Path, out: &Path) -> std::io::Result<()> {
    let tmp = out.with_extension("erofs.tmp");
    let output = Command::new("mkfs.erofs")
        .arg("-Enoinline_data")
        .arg(&tmp)
        .arg(dir)
        .output()
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("mkfs.erofs: {e} (install erofs-utils)"))
        })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(std::io::Error::other(format!(
            "mkfs.erofs failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, out)
}
