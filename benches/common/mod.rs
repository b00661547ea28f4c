//! What the benches share: a daemon of their own, hyperctl and curl against it.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs a set-up command; it must succeed.
pub(crate) fn succeeded(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hyperd of the bench's own, in `dir`, with a warm pool of `pool` VMs.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) socket: PathBuf,
    pub(crate) root: PathBuf,
}

impl Daemon {
    pub(crate) fn start(dir: &Path, pool: &str) -> Daemon {
        Daemon::start_with(dir, pool, pool, &[])
    }

    /// A daemon named `name` (its socket, root and log in `dir`) with more arguments.
    pub(crate) fn start_with(dir: &Path, name: &str, pool: &str, extra: &[&str]) -> Daemon {
        let socket = dir.join(format!("hyper-{name}.sock"));
        let root = dir.join(format!("root-{name}"));
        let child = Command::new(env!("CARGO_BIN_EXE_hyperd"))
            .arg("--host")
            .arg(&socket)
            .arg("--root")
            .arg(&root)
            .args(["--pool", pool, "--log", "warn"])
            .args(extra)
            .stderr(std::fs::File::create(dir.join(format!("hyperd-{name}.log"))).unwrap())
            .spawn()
            .expect("hyperd starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "hyperd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon {
            child,
            socket,
            root,
        }
    }

    pub(crate) fn hyperctl(&self) -> Command {
        // hyperctl is another crate's binary, built next to hyperd (`cargo build
        // --workspace`, as scripts/setup.sh does).
        let hyperctl = Path::new(env!("CARGO_BIN_EXE_hyperd")).with_file_name("hyperctl");
        let mut c = Command::new(hyperctl);
        c.arg("-H").arg(&self.socket);
        c
    }

    pub(crate) fn json(&self, path: &str) -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "--unix-socket"])
            .arg(&self.socket)
            .arg(format!("http://hyperd{path}"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Imports a busybox root filesystem tar ([`busybox_tar`]) as `busybox`.
    pub(crate) fn import_busybox(&self, tar: &Path) {
        succeeded(
            self.hyperctl()
                .args(["import", tar.to_str().unwrap(), "busybox"]),
        );
    }

    /// Idle VMs of the pool's default size.
    pub(crate) fn idle(&self) -> u64 {
        self.json("/info")["Pool"]["Sizes"][0]["Idle"]
            .as_u64()
            .unwrap_or(0)
    }
}

/// A busybox root filesystem tar (scripts/busybox-rootfs.sh) in `work`.
pub(crate) fn busybox_tar(work: &Path) -> PathBuf {
    let tar = work.join("busybox.tar");
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/busybox-rootfs.sh"))
        .output()
        .expect("busybox-rootfs.sh runs");
    assert!(out.status.success(), "busybox-rootfs.sh failed");
    std::fs::write(&tar, out.stdout).unwrap();
    tar
}

/// The processes whose command line mentions `needle` (a daemon's root, a VM directory).
pub(crate) fn pids_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default())
                .contains(needle)
        })
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .collect()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Idle VMs outlive the daemon by design: kill what runs under its root.
        for pid in pids_mentioning(&self.root.to_string_lossy()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
