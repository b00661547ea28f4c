//! A container's changes as an OCI layer: its overlay upper directory written as a tar,
//! with overlayfs' deletion markers turned into OCI whiteouts.
//!
//! - a character device 0:0 (overlayfs' whiteout) becomes an empty `.wh.<name>`;
//! - a directory with `trusted.overlay.opaque=y` (replaced, not merged) is followed by
//!   `.wh..wh..opq` inside it;
//! - files, directories and symbolic links keep their mode, owner and time; a second
//!   name of a file already written is a hard link to the first;
//! - other special files (devices, FIFOs, sockets) are left out.
//!
//! Nothing is followed: entries are read with `lstat`, links are stored as links.
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Whether a directory is marked opaque by overlayfs.
fn is_opaque(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut value = [0u8; 2];
    // SAFETY: lgetxattr reads the NUL-terminated path and attribute name and writes at
    // most `value.len()` bytes into `value`; all outlive the call.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

fn header(meta: &std::fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(size);
    h
}

/// The header of an empty marker file (a whiteout).
fn empty_file() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(0);
    h
}

/// Writes the upper directory `upper` as a tar layer to `out`.
pub(crate) fn write_diff<W: Write>(upper: &Path, out: W) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), std::path::PathBuf> = HashMap::new();
    walk(upper, Path::new(""), &mut tar, &mut links)?;
    tar.into_inner()?.flush()
}

/// Writes into frames of one stream of the host channel.
pub(crate) struct StreamWriter<'a> {
    pub chan: &'a crate::channel::Channel,
    pub stream: u32,
}

impl Write for StreamWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(32 * 1024);
        self.chan.send(&hyperd_agent::protocol::Frame::data(
            hyperd_agent::protocol::FrameKind::Stdout,
            self.stream,
            buf[..n].to_vec(),
        ));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn walk<W: Write>(
    dir: &Path,
    rel: &Path,
    tar: &mut tar::Builder<W>,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            let mut wh = std::ffi::OsString::from(".wh.");
            wh.push(e.file_name());
            let wh = rel.join(wh);
            tar.append_data(&mut empty_file(), &wh, io::empty())?;
        } else if ft.is_dir() {
            let mut h = header(&meta, tar::EntryType::Directory, 0);
            tar.append_data(&mut h, &name, io::empty())?;
            if is_opaque(&path) {
                let opq = name.join(".wh..wh..opq");
                tar.append_data(&mut empty_file(), &opq, io::empty())?;
            }
            walk(&path, &name, tar, links)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)?;
            let mut h = header(&meta, tar::EntryType::Symlink, 0);
            tar.append_link(&mut h, &name, &target)?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&key) {
                    let mut h = header(&meta, tar::EntryType::Link, 0);
                    tar.append_link(&mut h, &name, first)?;
                    continue;
                }
                links.insert(key, name.clone());
            }
            let f = std::fs::File::open(&path)?;
            let mut h = header(&meta, tar::EntryType::Regular, meta.len());
            tar.append_data(&mut h, &name, f)?;
        }
        // Devices, FIFOs and sockets are not part of a layer.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The entries of a tar: (path, kind, link target, content).
    fn entries(bytes: &[u8]) -> Vec<(String, tar::EntryType, String, String)> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let kind = e.header().entry_type();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
                let mut content = String::new();
                e.read_to_string(&mut content).unwrap();
                (path, kind, link, content)
            })
            .collect()
    }

    #[test]
    fn changes_deletions_and_opaque_directories() {
        let t = std::env::temp_dir().join(format!("diff-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(t.join("etc")).unwrap();
        std::fs::write(t.join("etc/changed.conf"), "new").unwrap();
        std::fs::hard_link(t.join("etc/changed.conf"), t.join("etc/again.conf")).unwrap();
        std::os::unix::fs::symlink("/etc/changed.conf", t.join("link")).unwrap();
        // overlayfs' whiteout for a deleted /etc/gone: a 0:0 character device.
        let wh = CString::new(t.join("etc/gone").as_os_str().as_bytes()).unwrap();
        // SAFETY: mknod with a valid NUL-terminated path.
        let made = unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR | 0o600, 0) } == 0;
        std::fs::create_dir(t.join("replaced")).unwrap();
        std::fs::write(t.join("replaced/only"), "x").unwrap();
        let dir = CString::new(t.join("replaced").as_os_str().as_bytes()).unwrap();
        // SAFETY: setxattr with valid NUL-terminated strings and a 1-byte value.
        let opaque = unsafe {
            libc::setxattr(
                dir.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        } == 0;
        // A FIFO is not part of a layer.
        let fifo = CString::new(t.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) };

        let mut out = Vec::new();
        write_diff(&t, &mut out).unwrap();
        let got = entries(&out);
        let find = |p: &str| got.iter().find(|e| e.0.trim_end_matches('/') == p);
        assert_eq!(find("etc").unwrap().1, tar::EntryType::Directory);
        // One name carries the content, the other is a hard link to it.
        let (a, b) = (
            find("etc/again.conf").unwrap(),
            find("etc/changed.conf").unwrap(),
        );
        let (file, link) = if a.1 == tar::EntryType::Regular {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(
            (file.1, file.3.as_str()),
            (tar::EntryType::Regular, "new"),
            "{got:?}"
        );
        assert_eq!(
            (link.1, link.2.as_str()),
            (tar::EntryType::Link, file.0.as_str())
        );
        assert_eq!(find("link").unwrap().2, "/etc/changed.conf");
        assert!(find("fifo").is_none(), "{got:?}");
        // Whiteouts need root (mknod, trusted xattrs), as the agent has; the tests run as
        // root (CI does), and there both markers must have been made.
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            assert!(made && opaque, "could not make overlayfs' markers as root");
        }
        if made {
            assert!(find("etc/.wh.gone").is_some(), "{got:?}");
            assert!(find("etc/gone").is_none(), "{got:?}");
        }
        if opaque {
            assert!(find("replaced/.wh..wh..opq").is_some(), "{got:?}");
            assert_eq!(find("replaced/only").unwrap().3, "x");
        }
        let _ = std::fs::remove_dir_all(&t);
    }
}
