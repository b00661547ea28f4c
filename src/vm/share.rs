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
pub const TAG: &str = "hyper-share";
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

/// Starts the VM's virtiofsd over `share`; returns once its socket is listening (the
/// monitor may connect at once).
pub(crate) fn start_virtiofsd(dir: &Path, share: &VmShare) -> Result<(), VmError> {
    let share_dir = dir.join(SHARE_DIR);
    std::fs::create_dir_all(&share_dir)?;
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
    let mut cmd = std::process::Command::new(virtiofsd_binary());
    cmd.args(virtiofsd_args(&share_dir, listener.as_raw_fd()))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        let fd = listener.as_raw_fd();
        cmd.process_group(0);
        // SAFETY: the closure clears close-on-exec with fcntl and makes mounts with
        // strings built before the fork: system calls only, async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                super::net::inherit(fd)?;
                make_binds(&binds)
            });
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| VmError::Launch(format!("{}: {e}", virtiofsd_binary().display())))?;
    drop(listener);
    super::handle::record_helper(dir, PID_FILE, child.id())?;
    // Reaped when it quits (with its VM); after a daemon restart, init reaps it.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
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

    #[test]
    fn virtiofsd_is_sandboxed_on_the_share() {
        let a = virtiofsd_args(Path::new("/r/vm/x/share"), 5).join(" ");
        assert!(a.contains("--shared-dir /r/vm/x/share"), "{a}");
        assert!(a.contains("--fd 5"), "{a}");
        assert!(a.contains("--sandbox namespace"), "{a}");
        assert!(a.contains("--seccomp kill"), "{a}");
    }
}
