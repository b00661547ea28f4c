//! Container root filesystems: the image disk mounted read-only under a writable
//! tmpfs-backed overlay, at /run/hyper/c/<id>/rootfs, with the VM's shared volumes
//! (virtio-fs) mounted into it.
use crate::sys::{cstr, mount, umount};
use hyperd_agent::protocol::{Mount, SCRATCH_SERIAL, SHARE_TAG};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where the VM's share is mounted, once, when a container first needs it.
const SHARE_DIR: &str = "/run/hyper/share";
static SHARE_MOUNTED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
/// Where the VM's scratch disk is mounted: the containers' writable layers.
const SCRATCH_DIR: &str = "/run/hyper/scratch";
/// Whether the scratch disk is mounted (`None`: not tried yet).
static SCRATCH: std::sync::Mutex<Option<bool>> = std::sync::Mutex::new(None);

/// Mounts the scratch disk once; whether there is one (a VM booted by an older host has
/// none: its containers write into RAM, as before).
fn scratch_mounted() -> io::Result<bool> {
    let mut state = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = *state {
        return Ok(m);
    }
    let Some(disk) = disk_now(SCRATCH_SERIAL) else {
        *state = Some(false);
        return Ok(false);
    };
    std::fs::create_dir_all(SCRATCH_DIR)?;
    // noinit_itable: no background zeroing of inode tables, which would allocate the
    // whole sparse file on the host.
    mount(&disk, SCRATCH_DIR, "ext4", libc::MS_NODEV, "noinit_itable")?;
    *state = Some(true);
    Ok(true)
}

/// The overlay upper directory of a container: its changes to the image.
pub(crate) fn upper_dir(id: &str) -> io::Result<PathBuf> {
    valid_id(id)?;
    Ok(
        if SCRATCH
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(false)
        {
            scratch_layer(id).join("upper")
        } else {
            base(id).join("rw/upper")
        },
    )
}

/// The writable layer's directory of a container on the scratch disk.
fn scratch_layer(id: &str) -> PathBuf {
    Path::new(SCRATCH_DIR).join("c").join(id)
}

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

/// The virtio-blk disk whose serial is `serial`, if the VM has it now.
fn disk_now(serial: &str) -> Option<String> {
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let s = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
            (s.trim_end_matches(['\n', '\0']) == serial)
                .then(|| format!("/dev/{}", entry.file_name().to_string_lossy()))
        })
}

/// Finds the virtio-blk disk whose serial is `serial`.
pub(crate) fn find_disk(serial: &str) -> io::Result<String> {
    for _ in 0..200 {
        if let Some(disk) = disk_now(serial) {
            return Ok(disk);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no disk with serial {serial}"),
    ))
}

pub(crate) fn create(
    id: &str,
    serial: &str,
    fstype: &str,
    mounts: &[Mount],
    privileged: bool,
) -> io::Result<PathBuf> {
    let root = create_root(id, serial, fstype, privileged)?;
    if let Err(e) = mount_volumes(&root, mounts) {
        let _ = remove(id);
        return Err(e);
    }
    Ok(root)
}

fn create_root(id: &str, serial: &str, fstype: &str, privileged: bool) -> io::Result<PathBuf> {
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
    // The writable layer: on the scratch disk, else (no scratch disk) in RAM.
    let rw = if scratch_mounted()? {
        let layer = scratch_layer(id);
        let _ = std::fs::remove_dir_all(&layer);
        std::fs::create_dir_all(&layer)?;
        layer
    } else {
        mount("tmpfs", s(&rw), "tmpfs", 0, "mode=0755")?;
        rw
    };
    std::fs::create_dir_all(rw.join("upper"))?;
    std::fs::create_dir_all(rw.join("work"))?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s(&image),
        s(&rw.join("upper")),
        s(&rw.join("work"))
    );
    // Device nodes work only in the container's /dev (unless it is privileged): one it
    // makes anywhere else (it holds CAP_MKNOD, as Docker's) opens nothing.
    let root_flags = if privileged { 0 } else { libc::MS_NODEV };
    mount("overlay", s(&root), "overlay", root_flags, &opts)?;
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let dev = root.join("dev");
    if privileged {
        mount(
            "devtmpfs",
            s(&dev),
            "devtmpfs",
            libc::MS_NOSUID,
            "mode=0755",
        )?;
    } else {
        minimal_dev(&dev)?;
    }
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
    if !privileged {
        std::fs::create_dir_all(dev.join("shm"))?;
        mount(
            "shm",
            s(&dev.join("shm")),
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "mode=1777,size=65536k",
        )?;
        // Nothing more can be made in /dev: no node of a disk or of the agent's port.
        mount(
            "",
            s(&dev),
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
            "",
        )?;
    }
    // Read-only, as Docker's (a privileged container's is writable).
    let sys_ro = if privileged { 0 } else { libc::MS_RDONLY };
    mount(
        "sysfs",
        s(&root.join("sys")),
        "sysfs",
        sys_ro | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    )?;
    Ok(root)
}

/// Docker's `/dev` for a container: a small tmpfs with null, zero, full, random,
/// urandom and tty, the `fd`/`stdin`/`stdout`/`stderr` links, and mount points for
/// `pts` and `shm`. None of the VM's disks, consoles or the agent's port.
fn minimal_dev(dev: &Path) -> io::Result<()> {
    mount(
        "tmpfs",
        s(dev),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0755,size=65536k",
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = std::ffi::CString::new(s(&dev.join(name))).map_err(io::Error::other)?;
        // SAFETY: mknod and chmod read the NUL-terminated path; the device number is a
        // plain integer.
        let rc = unsafe {
            libc::mknod(
                path.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // The umask took bits off the mode.
        std::fs::set_permissions(
            dev.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    Ok(())
}

/// Mounts the VM's share at [`SHARE_DIR`] if it is not yet.
fn ensure_share() -> io::Result<()> {
    let mut mounted = SHARE_MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
    if !*mounted {
        std::fs::create_dir_all(SHARE_DIR)?;
        mount(SHARE_TAG, SHARE_DIR, "virtiofs", libc::MS_NODEV, "")?;
        *mounted = true;
    }
    Ok(())
}

/// Where volume disks are mounted, by serial.
const DISKS_DIR: &str = "/run/hyper/disks";
static DISKS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Mounts a volume disk (ext4) once, read-write unless the host attached it read-only;
/// returns its mount point.
fn volume_disk(serial: &str) -> io::Result<PathBuf> {
    if serial.is_empty()
        || serial.len() > 20
        || !serial
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(invalid(format!("bad disk serial {serial:?}")));
    }
    let dir = Path::new(DISKS_DIR).join(serial);
    let mut mounted = DISKS.lock().unwrap_or_else(|e| e.into_inner());
    if !mounted.iter().any(|m| m == serial) {
        let disk = find_disk(serial)?;
        std::fs::create_dir_all(&dir)?;
        let opts = "noinit_itable";
        let rw = mount(&disk, s(&dir), "ext4", libc::MS_NODEV, opts);
        if let Err(e) = rw {
            // A disk the host attached read-only.
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) {
                mount(
                    &disk,
                    s(&dir),
                    "ext4",
                    libc::MS_NODEV | libc::MS_RDONLY,
                    opts,
                )?;
            } else {
                return Err(e);
            }
        }
        mounted.push(serial.to_string());
    }
    Ok(dir)
}

/// Binds each share entry onto its target in the container's root.
fn mount_volumes(root: &Path, mounts: &[Mount]) -> io::Result<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    for m in mounts {
        if m.tmpfs {
            let target = mount_target(root, &m.target, true)?;
            let flags =
                libc::MS_NOSUID | libc::MS_NODEV | if m.read_only { libc::MS_RDONLY } else { 0 };
            mount("tmpfs", s(&target), "tmpfs", flags, "mode=1777")?;
            continue;
        }
        let source = if m.disk.is_empty() {
            if m.share.is_empty() || !m.share.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(invalid(format!("bad share entry {:?}", m.share)));
            }
            ensure_share()?;
            Path::new(SHARE_DIR).join(&m.share)
        } else {
            volume_disk(&m.disk)?
        };
        let is_dir = std::fs::metadata(&source)?.is_dir();
        let target = mount_target(root, &m.target, is_dir)?;
        let target = s(&target);
        mount(s(&source), target, "", libc::MS_BIND | libc::MS_REC, "")?;
        if m.read_only {
            mount(
                "",
                target,
                "",
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                "",
            )?;
        }
    }
    Ok(())
}

/// Makes the container's root read-only (its volumes, /dev and /sys are their own
/// mounts and stay as they are).
pub(crate) fn seal(root: &Path) -> io::Result<()> {
    // A bind remount replaces the mount's flags: keep `nodev` where it was set.
    let path = std::ffi::CString::new(s(root)).map_err(io::Error::other)?;
    // SAFETY: statvfs reads the NUL-terminated path and fills the zeroed struct it is
    // given, which outlives the call.
    let nodev = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        libc::statvfs(path.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_NODEV != 0
    };
    let extra = if nodev { libc::MS_NODEV } else { 0 };
    mount(
        "",
        s(root),
        "",
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | extra,
        "",
    )
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// `openat2` beneath `dir`: symbolic links (absolute ones too) resolve as if `dir` were
/// the root, so an image cannot point a mount or a write outside the container.
fn open_in_root(dir: &OwnedFd, path: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    /// The kernel's `struct open_how` (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: u64::from(mode),
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    let p = cstr(path);
    // SAFETY: openat2 reads the NUL-terminated path and the open_how of the given size,
    // both alive for the call; the dirfd is open.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            p.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The mount point for `target` inside `root`, created (directories, and an empty file
/// for a file volume) where missing; resolved inside the root; returned as the path it
/// has in the agent's view.
pub(crate) fn mount_target(root: &Path, target: &str, is_dir: bool) -> io::Result<PathBuf> {
    let comps: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
    if comps.is_empty() || comps.iter().any(|c| *c == "." || *c == "..") {
        return Err(invalid(format!("bad mount target {target:?}")));
    }
    let root_fd = OwnedFd::from(std::fs::File::open(root)?);
    let mut prefix = String::new();
    for (i, comp) in comps.iter().enumerate() {
        let parent = if prefix.is_empty() {
            "/".to_string()
        } else {
            prefix.clone()
        };
        prefix.push('/');
        prefix.push_str(comp);
        match open_in_root(&root_fd, &prefix, libc::O_PATH, 0) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let parent_fd = open_in_root(&root_fd, &parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let name = cstr(comp);
        let last = i + 1 == comps.len();
        // SAFETY: *at calls on an open directory descriptor with a NUL-terminated name
        // (one component: no slash, no symlink to follow).
        let rc = unsafe {
            if last && !is_dir {
                let fd = libc::openat(
                    parent_fd.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                    0
                } else {
                    -1
                }
            } else {
                libc::mkdirat(parent_fd.as_raw_fd(), name.as_ptr(), 0o755)
            }
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let fd = open_in_root(&root_fd, &prefix, libc::O_PATH, 0)?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    if !real.starts_with(root) {
        return Err(invalid(format!(
            "mount target {target:?} leaves the container"
        )));
    }
    Ok(real)
}

/// Whether anything is mounted at or under `dir` (from /proc/self/mountinfo).
fn mounted_under(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .any(|m| Path::new(m).starts_with(dir))
        })
        // Unknown: assume something is, and keep the files.
        .unwrap_or(true)
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
pub(crate) fn write_file(
    root: &Path,
    path: &str,
    data: &[u8],
    mode: u32,
    (uid, gid): (u32, u32),
) -> io::Result<()> {
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
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    // After the owner: a change of owner clears the set-id bits.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

pub(crate) fn remove(id: &str) -> io::Result<()> {
    valid_id(id)?;
    let b = base(id);
    for m in [
        "rootfs/dev/pts",
        "rootfs/dev/shm",
        "rootfs/dev",
        "rootfs/sys",
        "rootfs/proc",
        "rootfs",
        "rw",
        "image",
    ] {
        let _ = umount(s(&b.join(m)));
    }
    // Never delete through a mount that is still there (a volume is host data).
    if mounted_under(&b) {
        return Err(io::Error::other(format!(
            "{} still has mounts; its files are kept",
            b.display()
        )));
    }
    let _ = std::fs::remove_dir_all(&b);
    if SCRATCH
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or(false)
    {
        let _ = std::fs::remove_dir_all(scratch_layer(id));
    }
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or("/nonexistent")
}
