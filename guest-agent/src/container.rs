//! Container root filesystems: the image disk mounted read-only under a writable
//! tmpfs-backed overlay, at /run/hyper/c/<id>/rootfs.
use crate::sys::{mount, umount};
use std::io;
use std::path::{Path, PathBuf};

fn base(id: &str) -> PathBuf {
    PathBuf::from("/run/hyper/c").join(id)
}

fn valid_id(id: &str) -> io::Result<()> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad container id {id:?}"),
        ));
    }
    Ok(())
}

/// Finds the virtio-blk disk whose serial is `serial`.
pub(crate) fn find_disk(serial: &str) -> io::Result<String> {
    for _ in 0..200 {
        if let Ok(dir) = std::fs::read_dir("/sys/block") {
            for entry in dir.flatten() {
                let s = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
                if s.trim_end_matches(['\n', '\0']) == serial {
                    return Ok(format!("/dev/{}", entry.file_name().to_string_lossy()));
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no disk with serial {serial}"),
    ))
}

pub(crate) fn create(id: &str, serial: &str, fstype: &str) -> io::Result<PathBuf> {
    valid_id(id)?;
    if !matches!(fstype, "erofs" | "ext4") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsupported image fstype {fstype}"),
        ));
    }
    let disk = find_disk(serial)?;
    flush_buffers(&disk)?;
    let b = base(id);
    let (image, rw, root) = (b.join("image"), b.join("rw"), b.join("rootfs"));
    for d in [&image, &rw, &root] {
        std::fs::create_dir_all(d)?;
    }
    mount(&disk, s(&image), fstype, libc::MS_RDONLY, "")?;
    mount("tmpfs", s(&rw), "tmpfs", 0, "mode=0755")?;
    std::fs::create_dir_all(rw.join("upper"))?;
    std::fs::create_dir_all(rw.join("work"))?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s(&image),
        s(&rw.join("upper")),
        s(&rw.join("work"))
    );
    mount("overlay", s(&root), "overlay", 0, &opts)?;
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    mount(
        "devtmpfs",
        s(&root.join("dev")),
        "devtmpfs",
        libc::MS_NOSUID,
        "mode=0755",
    )?;
    std::fs::create_dir_all(root.join("dev/pts"))?;
    mount(
        "devpts",
        s(&root.join("dev/pts")),
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    let _ = std::fs::remove_file(root.join("dev/ptmx"));
    let _ = std::os::unix::fs::symlink("pts/ptmx", root.join("dev/ptmx"));
    mount(
        "sysfs",
        s(&root.join("sys")),
        "sysfs",
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    )?;
    Ok(root)
}

/// Drops the guest's cached blocks of a disk: the host may have written a new image into
/// it since the kernel last read it (a slot disk reused for another container).
fn flush_buffers(disk: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const BLKFLSBUF: libc::c_ulong = 0x1261; // _IO(0x12, 97)
    let f = std::fs::File::open(disk)?;
    // SAFETY: BLKFLSBUF takes no argument; the fd is an open block device.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes a file at `path` inside a container's root, never following a symlink: the
/// image must not be able to point the write outside the container.
pub(crate) fn write_file(root: &Path, path: &str, data: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let rel = Path::new(path.trim_start_matches('/'));
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    let Some((last, parents)) = comps.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    };
    for c in parents {
        match c {
            std::path::Component::Normal(p) => cur.push(p),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "path leaves the container",
                ))
            }
        }
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a parent directory is a symbolic link",
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a parent is not a directory",
                ))
            }
            Err(_) => std::fs::create_dir(&cur)?,
        }
    }
    let std::path::Component::Normal(name) = last else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path leaves the container",
        ));
    };
    cur.push(name);
    if std::fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&cur)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(&cur)?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

pub(crate) fn remove(id: &str) -> io::Result<()> {
    valid_id(id)?;
    let b = base(id);
    for m in [
        "rootfs/dev/pts",
        "rootfs/dev",
        "rootfs/sys",
        "rootfs/proc",
        "rootfs",
        "rw",
        "image",
    ] {
        let _ = umount(s(&b.join(m)));
    }
    let _ = std::fs::remove_dir_all(&b);
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or("/nonexistent")
}
