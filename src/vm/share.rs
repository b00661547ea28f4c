//! A VM's shared directories: host directories and files its containers mount, over
//! virtio-fs.
//!
//! One `virtiofsd` per VM (the Rust virtiofsd from crates.io, as Kata runs it) serves one
//! directory, `<vm dir>/share`, whose entries are the VM's volumes. Each entry is a bind
//! mount of its host source made in a mount namespace of virtiofsd's own (unshared
//! between fork and exec): the host's mount table never sees them, they vanish with
//! virtiofsd, and removing a VM directory can never reach into a volume's source. Read-only
//! entries are read-only bind mounts, so virtiofsd cannot write them whatever the guest
//! asks. virtiofsd then runs with its own sandbox (namespaces, `pivot_root` into the
//! share, seccomp), so a symbolic link in a volume resolves inside the share, never to
//! the host's root.
//!
//! The monitor connects to virtiofsd over a Unix socket that hyperd binds and listens on
//! before either starts (virtiofsd's `--fd`): no race to connect. virtiofsd quits when
//! its VM's end closes; it is recorded as pid and start time like passt and killed with
//! the VM's other helpers.
use super::VmError;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The virtio-fs tag the guest mounts.
pub use hyperd_agent::protocol::SHARE_TAG as TAG;
const PID_FILE: &str = "virtiofsd.pid";
const LOG_FILE: &str = "virtiofsd.log";
const SOCKET: &str = "virtiofsd.sock";
const SHARE_DIR: &str = "share";

/// One shared host directory or file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShareEntry {
    /// The entry's name in the share (`[a-z0-9]+`), which the agent mounts.
    pub name: String,
    /// The host directory or file, canonical.
    pub source: PathBuf,
    pub read_only: bool,
}

/// What a VM shares with its guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmShare {
    pub entries: Vec<ShareEntry>,
    /// The guest's ids as the host sees them on the share; `None`: the host's own ids.
    #[serde(default)]
    pub id_map: Option<IdMap>,
}

/// Guest user and group ids `0..size` are host ids `host_uid..` and `host_gid..` on the
/// share: virtiofsd runs in a user namespace with this map, so the guest's root is an
/// unprivileged host user there, and every file it creates (set-uid bits included)
/// belongs to a host id of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMap {
    pub host_uid: u32,
    pub host_gid: u32,
    pub size: u32,
}

impl VmShare {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The virtiofsd binary: `$HYPERD_VIRTIOFSD`, else `virtiofsd` on the PATH, else where
/// `cargo install` and Debian put it.
pub fn virtiofsd_binary() -> PathBuf {
    if let Ok(p) = std::env::var("HYPERD_VIRTIOFSD") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| {
            [
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/virtiofsd")),
                Some(PathBuf::from("/usr/libexec/virtiofsd")),
                Some(PathBuf::from("/usr/lib/qemu/virtiofsd")),
            ]
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("virtiofsd"))
}

/// The socket the monitor connects to.
pub(crate) fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// virtiofsd's command line; the listening socket is descriptor `fd`.
pub(crate) fn virtiofsd_args(share_dir: &Path, fd: i32) -> Vec<String> {
    vec![
        "--shared-dir".into(),
        share_dir.display().to_string(),
        "--fd".into(),
        fd.to_string(),
        "--sandbox".into(),
        "namespace".into(),
        "--seccomp".into(),
        "kill".into(),
        // The host's file ids stay as they are: what a guest root creates is root's, as
        // with Docker's bind mounts (docs/security.md).
        "--cache".into(),
        "auto".into(),
        "--log-level".into(),
        "warn".into(),
        "--rlimit-nofile".into(),
        "0".into(),
    ]
}

/// A bind mount to make in virtiofsd's namespace, as C strings prepared before the fork.
struct Bind {
    source: CString,
    target: CString,
    read_only: bool,
}

fn cstring(p: &Path) -> std::io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("{} has a NUL byte", p.display())))
}

/// Where an id-mapped virtiofsd finds the share, in its own mount namespace: a path every
/// user can reach (the daemon's root is private, 0700), which nothing else in that
/// namespace uses.
const EXPOSED_SHARE: &str = "/tmp";

/// In the child, after [`make_binds`]: `source` (with its binds) bound over `at`.
fn bind_at(source: &CString, at: &CString) -> std::io::Result<()> {
    // SAFETY: mount with NUL-terminated strings built before the fork; a plain system
    // call, safe between fork and exec.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            at.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// In the child between fork and exec: a mount namespace of its own (mounts from the host
/// still arrive, none leave), then each entry bound onto its place in the share.
fn make_binds(binds: &[Bind]) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: unshare and mount take integer flags and NUL-terminated strings prepared
    // before the fork; both are plain system calls, safe between fork and exec.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        for b in binds {
            check(libc::mount(
                b.source.as_ptr(),
                b.target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            if b.read_only {
                check(libc::mount(
                    std::ptr::null(),
                    b.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV,
                    std::ptr::null(),
                ))?;
            }
        }
    }
    Ok(())
}

/// In the child between fork and exec, with an id map: a user namespace of its own, the
/// map written by the parent's helper (`ready` carries the child's pid to it, `go` its
/// answer), then the child becomes the namespace's root (an unprivileged host id).
fn enter_user_namespace(ready: i32, go: i32) -> std::io::Result<()> {
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: unshare, getpid, write, read, setresgid, setgroups and setresuid are plain
    // system calls on integers, pipe descriptors and buffers on this stack frame; safe
    // between fork and exec.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWUSER) as libc::c_long)?;
        let pid = libc::getpid().to_ne_bytes();
        check(libc::write(ready, pid.as_ptr().cast(), pid.len()) as libc::c_long)?;
        let mut answer = [0u8; 1];
        if libc::read(go, answer.as_mut_ptr().cast(), 1) != 1 || answer[0] != 1 {
            return Err(std::io::Error::other("the id map was not written"));
        }
        check(libc::setresgid(0, 0, 0) as libc::c_long)?;
        check(libc::setgroups(0, std::ptr::null()) as libc::c_long)?;
        check(libc::setresuid(0, 0, 0) as libc::c_long)?;
    }
    Ok(())
}

/// The parent's side of [`enter_user_namespace`]: waits for the child's pid, writes its
/// id maps, answers. Runs on a thread of its own while the spawn waits for the exec.
fn write_id_maps(map: IdMap, ready: OwnedFd, go: OwnedFd) {
    use std::io::{Read, Write};
    let mut ready = std::fs::File::from(ready);
    let mut go = std::fs::File::from(go);
    let mut pid = [0u8; 4];
    if ready.read_exact(&mut pid).is_err() {
        return; // the child never got there (the spawn failed)
    }
    let pid = i32::from_ne_bytes(pid);
    let written = std::fs::write(
        format!("/proc/{pid}/uid_map"),
        format!("0 {} {}\n", map.host_uid, map.size),
    )
    .and_then(|()| {
        std::fs::write(
            format!("/proc/{pid}/gid_map"),
            format!("0 {} {}\n", map.host_gid, map.size),
        )
    });
    if let Err(e) = &written {
        tracing::warn!("virtiofsd's id map: {e}");
    }
    let _ = go.write_all(&[u8::from(written.is_ok())]);
}

/// Starts the VM's virtiofsd over `share`; returns once its socket is listening (the
/// monitor may connect at once).
pub(crate) fn start_virtiofsd(dir: &Path, share: &VmShare) -> Result<(), VmError> {
    let share_dir = dir.join(SHARE_DIR);
    std::fs::create_dir_all(&share_dir)?;
    // Only empty mount points: an id-mapped virtiofsd (not the host's root) must enter it.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&share_dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut binds = Vec::new();
    for e in &share.entries {
        if e.name.is_empty() || !e.name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(VmError::Launch(format!(
                "bad share entry name {:?}",
                e.name
            )));
        }
        let target = share_dir.join(&e.name);
        // The mount point: what the source is (a file or a directory), empty.
        if std::fs::metadata(&e.source)?.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else {
            std::fs::File::create(&target)?;
        }
        binds.push(Bind {
            source: cstring(&e.source)?,
            target: cstring(&target)?,
            read_only: e.read_only,
        });
    }
    let sock = socket_path(dir);
    let _ = std::fs::remove_file(&sock);
    let listener = OwnedFd::from(std::os::unix::net::UnixListener::bind(&sock)?);
    let log = std::fs::File::create(dir.join(LOG_FILE))?;
    // With an id map virtiofsd runs as an unprivileged host user, who may not traverse
    // the daemon's private root (0700) or the directory of the binary: both are handed
    // over as descriptors opened here and named by their /proc/self/fd links.
    let opened = |p: &Path| -> std::io::Result<OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        Ok(OwnedFd::from(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(p)?,
        ))
    };
    let passed = match share.id_map {
        Some(_) => Some(opened(&virtiofsd_binary())?),
        None => None,
    };
    let (program, shared_dir, expose) = match &passed {
        Some(bin) => (
            PathBuf::from(format!("/proc/self/fd/{}", bin.as_raw_fd())),
            PathBuf::from(EXPOSED_SHARE),
            Some((cstring(&share_dir)?, CString::from(c"/tmp"))),
        ),
        None => (virtiofsd_binary(), share_dir.clone(), None),
    };
    let passed_fd = passed.as_ref().map(|bin| bin.as_raw_fd());
    let mut cmd = std::process::Command::new(&program);
    cmd.args(virtiofsd_args(&shared_dir, listener.as_raw_fd()))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // With an id map: two pipes to the helper thread that writes the child's maps.
    let pipes = match share.id_map {
        Some(map) => {
            let (ready_r, ready_w) = pipe()?;
            let (go_r, go_w) = pipe()?;
            let helper = std::thread::spawn(move || write_id_maps(map, ready_r, go_w));
            Some((ready_w, go_r, helper))
        }
        None => None,
    };
    let user_ns = pipes
        .as_ref()
        .map(|(ready_w, go_r, _)| (ready_w.as_raw_fd(), go_r.as_raw_fd()));
    {
        use std::os::unix::process::CommandExt;
        let fd = listener.as_raw_fd();
        cmd.process_group(0);
        // SAFETY: the closure clears close-on-exec with fcntl, enters a user namespace
        // over pipes opened before the fork and makes mounts with strings built before
        // the fork: system calls only, async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                super::net::inherit(fd)?;
                if let Some(bin) = passed_fd {
                    super::net::inherit(bin)?;
                }
                // The binds first, as the host's root (sources anywhere); then, with an
                // id map, the share where the mapped user can reach it, and the user
                // namespace.
                make_binds(&binds)?;
                if let Some((share, at)) = &expose {
                    bind_at(share, at)?;
                }
                if let Some((ready, go)) = user_ns {
                    enter_user_namespace(ready, go)?;
                }
                Ok(())
            });
        }
    }
    let spawned = cmd.spawn();
    if let Some((ready_w, go_r, helper)) = pipes {
        // The helper sees end of file if the child never wrote; it ends either way.
        drop((ready_w, go_r));
        let _ = helper.join();
    }
    let mut child =
        spawned.map_err(|e| VmError::Launch(format!("{}: {e}", virtiofsd_binary().display())))?;
    drop((listener, passed));
    super::handle::record_helper(dir, PID_FILE, child.id())?;
    // Reaped when it quits (with its VM); after a daemon restart, init reaps it.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`, owned below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Fails with virtiofsd's own words if it is no longer running.
pub(crate) fn check_running(dir: &Path) -> Result<(), VmError> {
    if super::handle::helper_alive(dir, PID_FILE) {
        return Ok(());
    }
    let log = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
    Err(VmError::Launch(format!("virtiofsd exited: {}", log.trim())))
}

/// Stops the VM's virtiofsd if it is still there.
pub(crate) fn stop(dir: &Path) {
    super::handle::kill_helper(dir, PID_FILE);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The virtiofsd processes recorded in `dir` (the helper and its sandboxed child).
    fn virtiofsd_uid_maps(dir: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(dir.join(PID_FILE)).unwrap();
        let pid: u32 = text.split_whitespace().next().unwrap().parse().unwrap();
        let mut maps = vec![std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap()];
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            for c in children.split_whitespace() {
                maps.push(
                    std::fs::read_to_string(format!("/proc/{c}/uid_map")).unwrap_or_default(),
                );
            }
        }
        maps
    }

    #[test]
    fn an_id_map_puts_virtiofsd_in_a_user_namespace() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let vm = t.path().join("vm");
        let share = VmShare {
            entries: vec![ShareEntry {
                name: "v0".into(),
                source: src.clone(),
                read_only: false,
            }],
            id_map: Some(IdMap {
                host_uid: 300000,
                host_gid: 300000,
                size: 65536,
            }),
        };
        start_virtiofsd(&vm, &share).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let log = std::fs::read_to_string(vm.join(LOG_FILE)).unwrap_or_default();
        assert!(check_running(&vm).is_ok(), "virtiofsd: {log}");
        let maps = virtiofsd_uid_maps(&vm);
        assert!(
            maps.iter()
                .all(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "300000", "65536"]),
            "{maps:?} {log}"
        );
        stop(&vm);
    }

    #[test]
    fn virtiofsd_is_sandboxed_on_the_share() {
        let a = virtiofsd_args(Path::new("/r/vm/x/share"), 5).join(" ");
        assert!(a.contains("--shared-dir /r/vm/x/share"), "{a}");
        assert!(a.contains("--fd 5"), "{a}");
        assert!(a.contains("--sandbox namespace"), "{a}");
        assert!(a.contains("--seccomp kill"), "{a}");
    }
}
