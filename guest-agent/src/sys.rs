//! Thin, checked wrappers over the system calls the agent needs.
use std::ffi::CString;
use std::io;

pub fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| CString::new("?").unwrap())
}

pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (cstr(src), cstr(target), cstr(fstype), cstr(data));
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr().cast()
            },
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("mount {fstype} {src} on {target}: {e}"),
        ))
    }
}

pub fn umount(target: &str) -> io::Result<()> {
    let t = cstr(target);
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What PID 1 mounts before anything else.
pub fn init_mounts() {
    let _ = std::fs::create_dir_all("/dev");
    let _ = mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    for (src, target, fstype, data) in [
        ("proc", "/proc", "proc", ""),
        ("sysfs", "/sys", "sysfs", ""),
        ("tmpfs", "/run", "tmpfs", "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", "mode=1777"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            "newinstance,ptmxmode=0666,mode=0620",
        ),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", ""),
    ] {
        let _ = std::fs::create_dir_all(target);
        // devpts holds the pty devices: it must allow device access.
        let nodev = if fstype == "devpts" {
            0
        } else {
            libc::MS_NODEV
        };
        if let Err(e) = mount(src, target, fstype, libc::MS_NOSUID | nodev, data) {
            crate::log(&e.to_string());
        }
    }
    let _ = mount("", "/", "", libc::MS_REC | libc::MS_PRIVATE, "");
}

/// Sync and power the VM off (a reset, which the VMM treats as the end of the VM).
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::process::exit(1)
}
