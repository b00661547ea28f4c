//! File operations confined beneath a directory, that never follow a symbolic link.
//!
//! Everything an image archive asks for is done relative to a directory file descriptor
//! this module opened itself with `O_NOFOLLOW`: names are single path components, links
//! are created but never resolved, and metadata is set with `fchmod`/`fchown`/`futimens`
//! on a descriptor of the object itself (or `AT_SYMLINK_NOFOLLOW` for the link), so a
//! symlink planted by one archive entry can never redirect what another entry does. Only
//! directories and regular files are ever opened: no FIFO, socket or device node is.
//!
//! Reading a file back out of an unpacked tree ([`open_file`]) goes through `openat2`
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, which the kernel enforces for every
//! component.
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// Deepest directory nesting [`Dir::remove_all`] descends into.
const MAX_DEPTH: usize = 4096;

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// What a name beneath a [`Dir`] is, read without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    /// FIFOs, sockets, device nodes: never opened.
    Other,
}

fn kind_of(st: &FileStat) -> Kind {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// A single, plain path component: not empty, not `.` or `..`, no `/`, no NUL.
pub(crate) fn is_plain_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
}

fn check_name(name: &OsStr) -> io::Result<()> {
    if is_plain_name(name) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ))
    }
}

/// An open directory; every operation names one entry directly inside it.
pub(crate) struct Dir {
    fd: OwnedFd,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Dir {
    /// Opens the root of a tree. The path itself is the caller's, trusted.
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        Ok(Dir { fd })
    }

    /// A second descriptor of the same directory.
    pub(crate) fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
        })
    }

    /// What `name` is, without following it; `None` when it does not exist.
    pub(crate) fn kind(&self, name: &OsStr) -> io::Result<Option<Kind>> {
        check_name(name)?;
        match fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(kind_of(&st))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Opens the directory `name`; `None` when it is missing, a symlink or not a
    /// directory (never followed).
    pub(crate) fn open_dir(&self, name: &OsStr) -> io::Result<Option<Dir>> {
        check_name(name)?;
        match openat(
            &self.fd,
            name,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(Dir { fd })),
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Creates the directory `name` (mode 0700 until the caller sets its own).
    pub(crate) fn mkdir(&self, name: &OsStr) -> io::Result<()> {
        check_name(name)?;
        mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)).map_err(io_err)
    }

    /// Creates the regular file `name`, which must not exist, for writing (0600 until the
    /// caller sets its mode).
    pub(crate) fn create_file(&self, name: &OsStr) -> io::Result<File> {
        check_name(name)?;
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io_err)?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `name` for reading; refuses links and special files.
    #[cfg(test)]
    pub(crate) fn open_file(&self, name: &OsStr) -> io::Result<File> {
        check_name(name)?;
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        regular(fd, name)
    }

    /// Creates the symbolic link `name` holding `target` (text, never resolved here).
    pub(crate) fn symlink(&self, target: &Path, name: &OsStr) -> io::Result<()> {
        check_name(name)?;
        symlinkat(target, &self.fd, name).map_err(io_err)
    }

    /// Hard-links the regular file `from_name` of `from` as `name` here.
    pub(crate) fn hard_link(&self, from: &Dir, from_name: &OsStr, name: &OsStr) -> io::Result<()> {
        check_name(name)?;
        check_name(from_name)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink would link the symlink itself, and
        // the caller has checked that `from_name` is a regular file.
        linkat(
            &from.fd,
            from_name,
            &self.fd,
            name,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(io_err)
    }

    /// Sets the owner of the link `name` itself.
    pub(crate) fn lchown(&self, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        check_name(name)?;
        fchownat(
            &self.fd,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_err)
    }

    /// Removes `name` whatever it is, directories with their content; nothing outside
    /// this directory is touched, and links inside are removed, never followed.
    pub(crate) fn remove_all(&self, name: &OsStr) -> io::Result<()> {
        self.remove_all_depth(name, 0)
    }

    fn remove_all_depth(&self, name: &OsStr, depth: usize) -> io::Result<()> {
        match self.kind(name)? {
            None => Ok(()),
            Some(Kind::Dir) => {
                if depth > MAX_DEPTH {
                    return Err(io::Error::other("directory tree too deep to remove"));
                }
                if let Some(sub) = self.open_dir(name)? {
                    for child in sub.entries()? {
                        sub.remove_all_depth(&child, depth + 1)?;
                    }
                }
                unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir).map_err(io_err)
            }
            Some(_) => unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir).map_err(io_err),
        }
    }

    /// Names directly inside this directory.
    pub(crate) fn entries(&self) -> io::Result<Vec<OsString>> {
        let dup = self.fd.try_clone()?;
        let mut d = nix::dir::Dir::from_fd(dup).map_err(io_err)?;
        let mut out = Vec::new();
        for e in d.iter() {
            let e = e.map_err(io_err)?;
            let n = OsStr::from_bytes(e.file_name().to_bytes());
            if n != "." && n != ".." {
                out.push(n.to_os_string());
            }
        }
        Ok(out)
    }

    /// Mode, owner and modification time of the directory itself.
    pub(crate) fn set_meta(&self, meta: &Meta) -> io::Result<()> {
        set_meta(self.fd.as_fd(), meta)
    }
}

/// Metadata an archive entry asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: u64,
}

/// Owner first (chown clears setuid bits), then mode, then times, all on the descriptor.
pub(crate) fn set_meta(fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    // Ownership may fail when not run as root (unit tests): the object stays the
    // caller's, which is never more than it asked for.
    let _ = fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    );
    fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777)).map_err(io_err)?;
    let t = TimeSpec::new(meta.mtime.min(i64::MAX as u64) as i64, 0);
    futimens(fd, &t, &t).map_err(io_err)
}

fn regular(fd: OwnedFd, what: &OsStr) -> io::Result<File> {
    let f = File::from(fd);
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what:?} is not a regular file"),
        ));
    }
    Ok(f)
}

/// Opens the regular file `rel` beneath `root` for reading. The kernel refuses any
/// symlink on the way (`RESOLVE_NO_SYMLINKS`) and any escape (`RESOLVE_BENEATH`);
/// `..` and absolute paths are refused before asking.
pub(crate) fn open_file(root: &Path, rel: &Path) -> io::Result<File> {
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} leaves the tree", rel.display()),
        ));
    }
    let dir = Dir::open(root)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = openat2(&dir.fd, rel, how).map_err(io_err)?;
    regular(fd, rel.as_os_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn names_are_single_components() {
        for bad in ["", ".", "..", "a/b", "/a"] {
            assert!(!is_plain_name(OsStr::new(bad)), "{bad:?}");
        }
        for good in ["a", "...", ".wh.x"] {
            assert!(is_plain_name(OsStr::new(good)), "{good:?}");
        }
    }

    #[test]
    fn never_follows_links() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(outer.path().join("secret"), b"s").unwrap();
        symlink(outer.path(), root.join("up")).unwrap();
        symlink(outer.path().join("secret"), root.join("file")).unwrap();
        let d = Dir::open(&root).unwrap();
        assert_eq!(d.kind(OsStr::new("up")).unwrap(), Some(Kind::Symlink));
        assert!(d.open_dir(OsStr::new("up")).unwrap().is_none());
        assert!(d.open_file(OsStr::new("file")).is_err());
        assert!(open_file(&root, Path::new("up/secret")).is_err());
        assert!(open_file(&root, Path::new("file")).is_err());
        assert!(open_file(&root, Path::new("../secret")).is_err());
        d.remove_all(OsStr::new("up")).unwrap();
        assert!(outer.path().join("secret").exists());
    }

    #[test]
    fn never_opens_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("p"), Mode::from_bits_truncate(0o600)).unwrap();
        // O_NONBLOCK keeps the open from waiting for a writer; the type check refuses it.
        assert!(open_file(dir.path(), Path::new("p")).is_err());
        let d = Dir::open(dir.path()).unwrap();
        assert_eq!(d.kind(OsStr::new("p")).unwrap(), Some(Kind::Other));
        assert!(d.open_file(OsStr::new("p")).is_err());
    }
}
