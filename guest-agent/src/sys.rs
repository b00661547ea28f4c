//! Thin, checked wrappers over the system calls the agent needs.
use std::ffi::CString;
use std::io;

pub(crate) fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| CString::new("?").unwrap())
}

pub(crate) fn mount(
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

pub(crate) fn umount(target: &str) -> io::Result<()> {
    let t = cstr(target);
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What PID 1 mounts before anything else.
pub(crate) fn init_mounts() {
    if let Err(e) = leave_initramfs() {
        crate::log(&format!(
            "staying on the initramfs (containers cannot pivot_root): {e}"
        ));
    }
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

/// Moves PID 1 from the initramfs to a tmpfs root, as `switch_root` does (mount the
/// tmpfs over `/`, chroot into it). `pivot_root(2)` refuses to move away from the initial
/// rootfs, and containers need it: a container root entered by `chroot` alone can be left
/// by any process holding CAP_SYS_CHROOT, which Docker's default set includes. The
/// agent's binary stays mapped from the initramfs; nothing else of it is needed.
fn leave_initramfs() -> io::Result<()> {
    const NEW_ROOT: &str = "/newroot";
    std::fs::create_dir_all(NEW_ROOT)?;
    mount("tmpfs", NEW_ROOT, "tmpfs", libc::MS_NOSUID, "mode=0755")?;
    for d in ["dev", "proc", "sys", "run", "tmp", "etc"] {
        std::fs::create_dir_all(std::path::Path::new(NEW_ROOT).join(d))?;
    }
    std::env::set_current_dir(NEW_ROOT)?;
    mount(".", "/", "", libc::MS_MOVE, "")?;
    // SAFETY: valid NUL-terminated paths.
    if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    std::env::set_current_dir("/")
}

/// Sync and power the VM off (a reset, which the VMM treats as the end of the VM).
pub(crate) fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::process::exit(1)
}

/// The guest's resource use, from /proc.
pub(crate) fn stats() -> hyperd_agent::protocol::Stats {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = |key: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // SAFETY: sysconf takes a constant and returns a number.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu_ticks: u64 = stat
        .lines()
        .next()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4) // idle, iowait
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let processes = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count() as u64
        })
        .unwrap_or(0);
    hyperd_agent::protocol::Stats {
        cpu_ns: cpu_ticks * 1_000_000_000 / hz,
        memory_total: mem("MemTotal:"),
        memory_available: mem("MemAvailable:"),
        load1: loadavg
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        processes,
    }
}

/// Milliseconds since the kernel started (CLOCK_BOOTTIME), for the host's start record.
pub(crate) fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}
