//! Unpacks image layers without trusting them.
//!
//! The `tar` crate reads the archive; the writing is ours, because a layer needs rules
//! the crate's `unpack` does not apply all of: every path is resolved lexically under the
//! root (`..` and absolute paths refused), and every file operation goes through
//! [`beneath::Dir`], relative to directory descriptors opened with `O_NOFOLLOW`, so no
//! parent and no target is ever a symlink (a link planted by one entry can't redirect
//! another, not even the final pass that sets directory modes). Hard links must point at
//! a regular file inside; FIFOs, sockets and device nodes are neither created nor opened;
//! overlay whiteouts remove only a plain name inside their own directory; size and entry
//! limits stop archive bombs.
use super::beneath::{self, Dir, Kind, Meta};
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {0:?} escapes the root")]
    Escape(String),
    #[error("entry {0:?} goes through a symbolic link")]
    ThroughSymlink(String),
    #[error("whiteout {0:?} names no entry of its directory")]
    BadWhiteout(String),
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

/// An archive path as plain components below the root, lexically (`..` refused).
fn components(name: &Path) -> Result<Vec<OsString>, UnpackError> {
    let mut out = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p.to_os_string()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Escape(name.display().to_string()))
            }
        }
    }
    Ok(out)
}

/// The tree being unpacked into, with the directory of the previous entry kept open
/// (archives list a directory's entries together).
struct Tree {
    root: Dir,
    last: Option<(Vec<OsString>, Dir)>,
}

/// Parents created because an entry needed them get Docker's default mode.
const IMPLICIT_DIR: Meta = Meta {
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtime: 0,
};

impl Tree {
    /// The directory `path` names, walked one component at a time without following
    /// anything: missing directories are made and non-directories replaced by
    /// directories; a symlink on the way is refused.
    fn dir(&mut self, path: &[OsString], name: &str) -> Result<&Dir, UnpackError> {
        if path.is_empty() {
            return Ok(&self.root);
        }
        if self.last.as_ref().map(|(p, _)| p.as_slice()) != Some(path) {
            self.last = None;
            let mut cur: Option<Dir> = None;
            for c in path {
                let parent = cur.as_ref().unwrap_or(&self.root);
                let next = match parent.kind(c)? {
                    Some(Kind::Dir) => parent.open_dir(c)?,
                    Some(Kind::Symlink) => return Err(UnpackError::ThroughSymlink(name.into())),
                    existing => {
                        if existing.is_some() {
                            parent.remove_all(c)?;
                        }
                        parent.mkdir(c)?;
                        let d = parent.open_dir(c)?;
                        if let Some(d) = &d {
                            d.set_meta(&IMPLICIT_DIR)?;
                        }
                        d
                    }
                };
                cur = Some(next.ok_or_else(|| UnpackError::ThroughSymlink(name.into()))?);
            }
            self.last = cur.map(|d| (path.to_vec(), d));
        }
        Ok(&self.last.as_ref().expect("just opened").1)
    }

    fn forget(&mut self) {
        self.last = None;
    }
}

/// Unpacks one layer over `root`; returns the bytes of file content written.
pub fn unpack_layer(reader: impl Read, root: &Path, limits: &Limits) -> Result<u64, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut tree = Tree {
        root: Dir::open(root)?,
        last: None,
    };
    let mut total: u64 = 0;
    let mut entries: u64 = 0;
    let mut dirs: Vec<(Vec<OsString>, Meta)> = Vec::new();
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
        let mut comps = components(&name_path)?;
        let Some(file_name) = comps.pop() else {
            continue; // the root itself
        };
        let header = entry.header().clone();
        let meta = Meta {
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            uid: header.uid().unwrap_or(0) as u32,
            gid: header.gid().unwrap_or(0) as u32,
            mtime: header.mtime().unwrap_or(0),
        };
        let kind = header.entry_type();
        // Overlay whiteouts: `.wh..wh..opq` empties the directory, `.wh.x` deletes x.
        // Both act only inside the directory they are in.
        let fname = file_name.as_bytes();
        if fname == b".wh..wh..opq" {
            if let Some(parent) = open_walk(&tree.root, &comps, Some(&name))? {
                for e in parent.entries()? {
                    parent.remove_all(&e)?;
                }
            }
            tree.forget();
            continue;
        }
        if let Some(victim) = fname.strip_prefix(b".wh.") {
            let victim = OsStr::from_bytes(victim);
            if !beneath::is_plain_name(victim) {
                return Err(UnpackError::BadWhiteout(name));
            }
            if let Some(parent) = open_walk(&tree.root, &comps, Some(&name))? {
                parent.remove_all(victim)?;
            }
            tree.forget();
            continue;
        }
        let parent = tree.dir(&comps, &name)?;
        let existing = parent.kind(&file_name)?;
        match kind {
            tar::EntryType::Directory => {
                if existing != Some(Kind::Dir) {
                    if existing.is_some() {
                        parent.remove_all(&file_name)?;
                    }
                    parent.mkdir(&file_name)?;
                }
                let mut path = comps;
                path.push(file_name);
                dirs.push((path, meta));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = header.size().unwrap_or(0);
                if total.saturating_add(size) > limits.max_bytes {
                    return Err(UnpackError::TooLarge(limits.max_bytes));
                }
                if existing.is_some() {
                    parent.remove_all(&file_name)?;
                }
                let mut f = parent.create_file(&file_name)?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut f)?;
                total += copied;
                beneath::set_meta(f.as_fd(), &meta)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| {
                        UnpackError::Corrupt(format!("symlink {name} without target"))
                    })?;
                if existing.is_some() {
                    parent.remove_all(&file_name)?;
                }
                // The target is only text inside the image; it is never followed here.
                parent.symlink(&target, &file_name)?;
                let _ = parent.lchown(&file_name, meta.uid, meta.gid);
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| {
                        UnpackError::Corrupt(format!("hard link {name} without target"))
                    })?
                    .into_owned();
                let mut tcomps = components(&target)?;
                let tname = tcomps
                    .pop()
                    .ok_or_else(|| UnpackError::Corrupt(format!("hard link {name} to the root")))?;
                if tcomps == comps && tname == file_name {
                    continue; // a link to itself changes nothing
                }
                let missing = || {
                    UnpackError::Corrupt(format!(
                        "hard link {name} to missing {}",
                        target.display()
                    ))
                };
                // Both directories open at once: the target's is opened apart from the cache.
                let tdir = open_walk(&tree.root, &tcomps, Some(&name))?.ok_or_else(missing)?;
                match tdir.kind(&tname)? {
                    Some(Kind::File) => {}
                    None => return Err(missing()),
                    Some(_) => {
                        return Err(UnpackError::Corrupt(format!(
                            "hard link {name} to a non-file"
                        )))
                    }
                }
                let parent = tree.dir(&comps, &name)?;
                if existing.is_some() {
                    parent.remove_all(&file_name)?;
                }
                parent.hard_link(&tdir, &tname, &file_name)?;
            }
            // Device nodes, FIFOs and anything else are not created from images.
            _ => {}
        }
    }
    // Directory modes and times last, so that read-only dirs did not block their content.
    // Each is reopened without following links: a directory a later entry replaced by a
    // symlink (or anything else) is skipped, not followed.
    tree.forget();
    for (path, meta) in dirs.into_iter().rev() {
        let (last, parents) = path.split_last().expect("non-empty");
        if let Some(parent) = open_walk(&tree.root, parents, None)? {
            if let Some(d) = parent.open_dir(last)? {
                d.set_meta(&meta)?;
            }
        }
    }
    Ok(total)
}

/// Opens the directory `path` under `root` without creating or following anything;
/// `None` when it does not lead to a directory. A symlink on the way is refused as
/// entry `name`'s error, or, without a name, taken as not leading anywhere.
fn open_walk(
    root: &Dir,
    path: &[OsString],
    name: Option<&str>,
) -> Result<Option<Dir>, UnpackError> {
    let mut cur: Option<Dir> = None;
    for c in path {
        let parent = cur.as_ref().unwrap_or(root);
        match parent.kind(c)? {
            Some(Kind::Dir) => match parent.open_dir(c)? {
                Some(d) => cur = Some(d),
                None => return Ok(None),
            },
            Some(Kind::Symlink) => {
                return match name {
                    Some(n) => Err(UnpackError::ThroughSymlink(n.into())),
                    None => Ok(None),
                }
            }
            _ => return Ok(None),
        }
    }
    match cur {
        Some(d) => Ok(Some(d)),
        None => Ok(Some(root.try_clone()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

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

    fn entry(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1);
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// The review's C1: a directory entry, then a symlink in its place, then anything.
    /// The final pass that sets directory modes must not follow the planted link.
    #[test]
    fn directory_replaced_by_a_symlink_leaves_its_target_alone() {
        use std::os::unix::fs::MetadataExt;
        let outer = tempfile::tempdir().unwrap();
        let victim = outer.path().join("victim");
        fs::write(&victim, b"host data").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o640)).unwrap();
        let before = fs::metadata(&victim).unwrap();
        let fifo = outer.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for target in [&victim, &fifo] {
            let root = tempfile::tempdir_in(outer.path()).unwrap();
            let t = tar_with(|b| {
                entry(b, tar::EntryType::Directory, "x", 0o6777);
                link(b, tar::EntryType::Symlink, "x", target.to_str().unwrap());
                file(b, "y", b"anything");
            });
            // Would block forever if the FIFO were opened.
            unpack_layer(&t[..], root.path(), &Limits::default()).unwrap();
            assert_eq!(fs::read_link(root.path().join("x")).unwrap(), *target);
        }
        let after = fs::metadata(&victim).unwrap();
        assert_eq!(after.mode(), before.mode());
        assert_eq!(after.mtime(), before.mtime());
        assert_eq!(after.uid(), before.uid());
        assert_eq!(fs::read(&victim).unwrap(), b"host data");
        assert_eq!(mode_of(&fifo), 0o600);
    }

    #[test]
    fn whiteouts_stay_in_their_directory() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(outer.path().join("sibling"), b"keep").unwrap();
        let base = tar_with(|b| {
            file(b, "a/b/f", b"x");
            file(b, "a/g", b"x");
        });
        unpack_layer(&base[..], &root, &Limits::default()).unwrap();
        for bad in [".wh..", ".wh...", "a/.wh..", "a/b/.wh...", ".wh."] {
            let t = tar_with(|b| file(b, bad, b""));
            let err = unpack_layer(&t[..], &root, &Limits::default()).unwrap_err();
            assert!(matches!(err, UnpackError::BadWhiteout(_)), "{bad}: {err}");
            assert!(root.join("a/b/f").exists(), "{bad} removed content");
            assert!(outer.path().join("sibling").exists(), "{bad} left the root");
        }
        // An opaque whiteout under a missing or symlinked parent removes nothing.
        let t = tar_with(|b| {
            file(b, "nope/.wh..wh..opq", b"");
            link(b, tar::EntryType::Symlink, "up", "..");
        });
        unpack_layer(&t[..], &root, &Limits::default()).unwrap();
        let t = tar_with(|b| file(b, "up/.wh..wh..opq", b""));
        assert!(unpack_layer(&t[..], &root, &Limits::default()).is_err());
        assert!(outer.path().join("sibling").exists());
        // The real thing empties only its own directory.
        let t = tar_with(|b| file(b, "a/b/.wh..wh..opq", b""));
        unpack_layer(&t[..], &root, &Limits::default()).unwrap();
        assert!(!root.join("a/b/f").exists());
        assert!(root.join("a/b").is_dir());
        assert!(root.join("a/g").exists());
    }

    #[test]
    fn setuid_bits_and_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o4755);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, "bin/su", &b"ELF"[..]).unwrap();
            entry(b, tar::EntryType::Char, "dev/null", 0o666);
            entry(b, tar::EntryType::Block, "dev/vda", 0o660);
            entry(b, tar::EntryType::Fifo, "run/pipe", 0o600);
            entry(b, tar::EntryType::Directory, "tmp", 0o1777);
        });
        unpack_layer(&t[..], dir.path(), &Limits::default()).unwrap();
        // The image's own setuid binary keeps its bit (hyperd's root is 0700, so no
        // other local user reaches it); nothing special is created.
        assert_eq!(mode_of(&dir.path().join("bin/su")), 0o4755);
        assert_eq!(mode_of(&dir.path().join("tmp")), 0o1777);
        for special in ["dev/null", "dev/vda", "run/pipe"] {
            assert!(
                fs::symlink_metadata(dir.path().join(special)).is_err(),
                "{special}"
            );
        }
    }

    #[test]
    fn hard_links_only_to_files_inside() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(outer.path().join("secret"), b"s").unwrap();
        let t = tar_with(|b| {
            link(b, tar::EntryType::Symlink, "s", "../secret");
            link(b, tar::EntryType::Link, "h", "s");
        });
        assert!(unpack_layer(&t[..], &root, &Limits::default()).is_err());
        assert!(fs::symlink_metadata(root.join("h")).is_err());
        let t = tar_with(|b| {
            link(b, tar::EntryType::Symlink, "d", "..");
            link(b, tar::EntryType::Link, "h2", "d/secret");
        });
        assert!(unpack_layer(&t[..], &root, &Limits::default()).is_err());
        assert!(fs::symlink_metadata(root.join("h2")).is_err());
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
