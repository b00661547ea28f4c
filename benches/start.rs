//! Start benchmark: from asking for a busybox `echo` to its first output byte, in one run,
//! for four paths:
//! 1. hyperd booting the pod's VM cold (`--pool 0`);
//! 2. hyperd with the warm pool (`--pool 1`: the pod takes an idle VM);
//! 3. a bare `qemu-system-x86_64 -M microvm` boot of the same kernel and initramfs to the
//!    agent's first answer (the floor of a cold boot);
//! 4. `podman run --rm` with runc (the floor of any container start).
//!
//! hyperd's runs are `hyperctl run --name … busybox echo hi` (create, attach, start:
//! the API calls a client makes), timed from spawning hyperctl to the first byte on its
//! stdout. Prints medians, ratios, the phase records of paths 1 and 2 (median of each
//! phase) and the PSS of an idle pooled VM.
//!
//!     cargo bench --bench start          # HYPERD_BENCH_RUNS=n (default 10)
mod common;
use common::{median, pids_mentioning, succeeded, Daemon};
use hyperd::vm::qemu::QemuDriver;
use hyperd::vm::{DiskConfig, Driver, VmConfig};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command and returns the time to the first byte of its stdout; waits for it.
fn first_byte(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command runs");
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    let n = out.read(&mut b).unwrap();
    let elapsed = t.elapsed();
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let status = child.wait().unwrap();
    if n == 0 || !status.success() {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("{cmd:?} failed: {status:?} {err}");
    }
    elapsed
}

use hyperd_api::pods::START_PHASES as PHASES;

/// `runs` hyperd starts; before each, waits for the pool to hold an idle VM when
/// `pooled`. Returns the times and the median of each phase of the start records.
fn hyperd_runs(d: &Daemon, runs: usize, pooled: bool) -> (Vec<f64>, Vec<(String, f64)>, String) {
    let mut times = Vec::new();
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    let mut path = String::new();
    for i in 0..runs {
        if pooled {
            let deadline = Instant::now() + Duration::from_secs(60);
            while d.idle() < 1 {
                assert!(Instant::now() < deadline, "the pool did not refill");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let name = format!("bench-{i}");
        times.push(
            first_byte(
                d.hyperctl()
                    .args(["run", "--name", &name, "busybox", "echo", "hi"]),
            )
            .as_secs_f64(),
        );
        let rec = d.json(&format!("/pod/info?podName={name}"))["startRecord"].clone();
        path = rec["path"].as_str().unwrap_or("?").to_string();
        for (k, v) in PHASES.iter().zip(phases.iter_mut()) {
            if let Some(ms) = rec[*k].as_f64() {
                v.push(ms);
            }
        }
        let _ = d.hyperctl().args(["rm", &name]).output();
    }
    let phases = PHASES
        .iter()
        .zip(phases)
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), median(v)))
        .collect();
    (times, phases, path)
}

/// A bare qemu microvm boot of hyperd's kernel and initramfs to the agent's first answer.
async fn bare_qemu(runs: usize, work: &Path) -> Vec<f64> {
    let cache = hyperd::config::default_cache_dir();
    let driver = Driver::Qemu(QemuDriver::new("auto").unwrap());
    let mut times = Vec::new();
    for i in 0..runs {
        let cfg = VmConfig {
            id: format!("bare-{i}"),
            dir: work.join(format!("bare-{i}")),
            vcpus: 1,
            memory_mib: 128,
            kernel: cache.join("vmlinux"),
            initrd: cache.join("initrd.img"),
            disks: Vec::<DiskConfig>::new(),
            boot_timeout: Duration::from_secs(120),
            disk_limits: Default::default(),
            net: Default::default(),
            share: Default::default(),
        };
        let t = Instant::now();
        let vm = driver.boot(&cfg).await.expect("qemu boots");
        times.push(t.elapsed().as_secs_f64());
        vm.handle.kill();
        vm.handle.wait().await;
    }
    times
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    c
}

fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn print_phases(label: &str, phases: &[(String, f64)]) {
    let text: Vec<String> = phases.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
    println!(
        "  phases ({label}, median ms from the request): {}",
        text.join(", ")
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("start: bench");
        return;
    }
    let runs: usize = std::env::var("HYPERD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    assert!(
        Command::new("podman").arg("--version").output().is_ok(),
        "the peer needs podman and runc: apt-get install podman runc"
    );
    let work = tempfile::tempdir().unwrap();
    let rootfs = common::busybox_tar(work.path());

    // 1 and 2: hyperd, cold and warm.
    let cold = Daemon::start(work.path(), "0");
    let warm = Daemon::start(work.path(), "1");
    for d in [&cold, &warm] {
        d.import_busybox(&rootfs);
    }
    let (t_cold, p_cold, path_cold) = hyperd_runs(&cold, runs, false);
    drop(cold);
    let (t_warm, p_warm, path_warm) = hyperd_runs(&warm, runs, true);
    let deadline = Instant::now() + Duration::from_secs(60);
    while warm.idle() < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let idle_pss: Vec<u64> = pids_mentioning(&warm.root.join("vm").to_string_lossy())
        .into_iter()
        .map(pss_kib)
        .collect();
    drop(warm);

    // 3: bare qemu; 4: podman.
    let t_bare = bare_qemu(runs, work.path()).await;
    succeeded(podman().args([
        "import",
        rootfs.to_str().unwrap(),
        "localhost/busybox:latest",
    ]));
    let mut t_podman = Vec::new();
    for _ in 0..runs {
        t_podman.push(
            first_byte(podman().args([
                "run",
                "--rm",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
                "localhost/busybox",
                "echo",
                "hi",
            ]))
            .as_secs_f64(),
        );
    }

    let (c, w, b, p) = (
        median(t_cold),
        median(t_warm),
        median(t_bare),
        median(t_podman),
    );
    println!("start to the first output byte of busybox echo, median of {runs}:");
    println!("  hyperd cold ({path_cold})   {c:>7.3} s");
    print_phases("cold", &p_cold);
    println!("  hyperd warm ({path_warm})   {w:>7.3} s");
    print_phases("warm", &p_warm);
    println!("  bare qemu microvm boot to the agent {b:>7.3} s");
    println!("  podman run --rm (runc)      {p:>7.3} s");
    println!("  ratio warm / cold:   {:.2} (target <= 0.15)", w / c);
    println!("  ratio warm / podman: {:.2} (target <= 0.5)", w / p);
    println!("  ratio cold / bare qemu boot: {:.2}", c / b);
    println!(
        "  idle pooled VM PSS: {} KiB (VM processes: {})",
        idle_pss.iter().sum::<u64>(),
        idle_pss.len()
    );
}
