//! Unpacks image layers without trusting them.
//!
//! The `tar` crate reads the archive; the writing is ours, because a layer needs rules
//! the crate's `unpack` does not apply all of: every path is resolved lexically under the
//! root (`..` and absolute paths refused), no parent directory may be a symlink (so a
//! link planted by an earlier entry can't redirect a later one), hard links must point
//! inside, device nodes are skipped, overlay whiteouts are applied, and size and entry
//! limits stop archive bombs.
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {0:?} escapes the root")]
    Escape(String),
    #[error("entry {0:?} goes through a symbolic link")]
    ThroughSymlink(String),
    #[error("layer is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("layer has more than {0} entries")]
    TooManyEntries(u64),
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Wraps a layer in the decoder its first bytes call for: gzip, zstd, or none.
pub fn decompress<R: Read + 'static>(r: R) -> io::Result<Box<dyn Read>> {
    let mut br = BufReader::new(r);
    let head = br.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(br)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(br)?))
    } else {
        Ok(Box::new(br))
    }
}

/// Resolves an archive path to a path under `root`, lexically.
fn safe_join(root: &Path, name: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Escape(name.display().to_string()))
            }
        }
    }
    Ok(root.join(out))
}

/// Refuses a path whose parents (below `root`) include a symlink or a non-directory;
/// creates missing parents as directories.
fn prepare_parents(root: &Path, path: &Path, name: &str) -> Result<(), UnpackError> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| UnpackError::Escape(name.into()))?;
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::ThroughSymlink(name.into()))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&cur)?;
                fs::create_dir(&cur)?;
            }
            Err(_) => fs::create_dir(&cur)?,
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Unpacks one layer over `root`; returns the bytes of file content written.
pub fn unpack_layer(reader: impl Read, root: &Path, limits: &Limits) -> Result<u64, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut total: u64 = 0;
    let mut entries: u64 = 0;
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    for entry in archive
        .entries()
        .map_err(|e| UnpackError::Corrupt(e.to_string()))?
    {
        let mut entry = entry.map_err(|e| UnpackError::Corrupt(e.to_string()))?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries(limits.max_entries));
        }
        let name_path = entry
            .path()
            .map_err(|e| UnpackError::Corrupt(e.to_string()))?
            .into_owned();
        let name = name_path.display().to_string();
        let path = safe_join(root, &name_path)?;
        if path == root {
            continue;
        }
        prepare_parents(root, &path, &name)?;
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        // Overlay whiteouts: `.wh..wh..opq` empties the directory, `.wh.x` deletes x.
        if file_name == ".wh..wh..opq" {
            if let Some(dir) = path.parent() {
                for e in fs::read_dir(dir)?.flatten() {
                    remove_any(&e.path())?;
                }
            }
            continue;
        }
        if let Some(victim) = file_name.strip_prefix(".wh.") {
            remove_any(&path.with_file_name(victim))?;
            continue;
        }
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        let (uid, gid) = (
            header.uid().unwrap_or(0) as u32,
            header.gid().unwrap_or(0) as u32,
        );
        let kind = header.entry_type();
        if !kind.is_dir() {
            remove_any(&path)?;
        }
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&path)?;
                        fs::create_dir(&path)?;
                    }
                    Err(_) => fs::create_dir(&path)?,
                }
                dirs.push((path.clone(), mode, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = header.size().unwrap_or(0);
                if total.saturating_add(size) > limits.max_bytes {
                    return Err(UnpackError::TooLarge(limits.max_bytes));
                }
                let mut f = fs::File::create(&path)?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut f)?;
                total += copied;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| {
                        UnpackError::Corrupt(format!("symlink {name} without target"))
                    })?;
                // The target is only text inside the image; it is never followed here.
                symlink(&target, &path)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| {
                        UnpackError::Corrupt(format!("hard link {name} without target"))
                    })?;
                let target_path = safe_join(root, &target)?;
                prepare_parents(root, &target_path, &name)?;
                let meta = fs::symlink_metadata(&target_path).map_err(|_| {
                    UnpackError::Corrupt(format!(
                        "hard link {name} to missing {}",
                        target.display()
                    ))
                })?;
                if !meta.is_file() {
                    return Err(UnpackError::Corrupt(format!(
                        "hard link {name} to a non-file"
                    )));
                }
                fs::hard_link(&target_path, &path)?;
                continue;
            }
            // Device nodes, FIFOs and anything else are not created from images.
            _ => continue,
        }
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
        // SAFETY: lchown gets a valid NUL-terminated path and never follows a symlink.
        unsafe {
            libc::lchown(c.as_ptr(), uid, gid);
        }
        if !kind.is_symlink() && !kind.is_dir() {
            set_mtime(&path, mtime);
        }
    }
    // Directory modes and times last, so that read-only dirs did not block their content.
    for (path, mode, mtime) in dirs.into_iter().rev() {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        set_mtime(&path, mtime);
    }
    Ok(total)
}

fn set_mtime(path: &Path, mtime: u64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    if let Ok(f) = fs::File::open(path) {
        let _ = f.set_modified(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name so hostile archives can be built.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(kind);
        h.set_mode(0o777);
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        let raw = &mut h.as_old_mut().linkname;
        raw[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    #[test]
    fn unpacks_files_links_and_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(|b| {
            file(b, "bin/busybox", b"ELF");
            link(b, tar::EntryType::Symlink, "bin/sh", "/bin/busybox");
            link(b, tar::EntryType::Link, "bin/ls", "bin/busybox");
            file(b, "etc/gone", b"x");
            file(b, "etc/.wh.gone", b"");
        });
        let n = unpack_layer(&t[..], dir.path(), &Limits::default()).unwrap();
        assert_eq!(n, 4);
        assert_eq!(fs::read(dir.path().join("bin/ls")).unwrap(), b"ELF");
        assert_eq!(
            fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert!(!dir.path().join("etc/gone").exists());
    }

    #[test]
    fn refuses_escapes() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            tar_with(|b| file(b, "../evil", b"x")),
            tar_with(|b| file(b, "a/../../evil", b"x")),
            tar_with(|b| {
                link(b, tar::EntryType::Symlink, "escape", "..");
                file(b, "escape/evil", b"x");
            }),
            tar_with(|b| {
                link(b, tar::EntryType::Symlink, "etc", "/");
                file(b, "etc/evil", b"x");
            }),
            tar_with(|b| link(b, tar::EntryType::Link, "passwd", "../../etc/passwd")),
        ];
        for (i, t) in cases.iter().enumerate() {
            assert!(
                unpack_layer(&t[..], &root, &Limits::default()).is_err(),
                "case {i} accepted"
            );
            assert!(
                !outer.path().join("evil").exists(),
                "case {i} wrote outside"
            );
        }
    }

    #[test]
    fn absolute_paths_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(|b| file(b, "/etc/hostname", b"x"));
        unpack_layer(&t[..], dir.path(), &Limits::default()).unwrap();
        assert!(dir.path().join("etc/hostname").exists());
    }

    #[test]
    fn stops_bombs() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![0u8; 1 << 20];
        let t = tar_with(|b| {
            for i in 0..4 {
                file(b, &format!("f{i}"), &big);
            }
        });
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            io::Write::write_all(&mut e, &t).unwrap();
            e.finish().unwrap()
        };
        assert!(gz.len() < 64 * 1024);
        let limits = Limits {
            max_bytes: 2 << 20,
            max_entries: 100,
        };
        let r = decompress(io::Cursor::new(gz)).unwrap();
        assert!(matches!(
            unpack_layer(r, dir.path(), &limits),
            Err(UnpackError::TooLarge(_))
        ));
        let limits = Limits {
            max_bytes: 1 << 30,
            max_entries: 2,
        };
        assert!(matches!(
            unpack_layer(&t[..], dir.path(), &limits),
            Err(UnpackError::TooManyEntries(_))
        ));
    }
}
