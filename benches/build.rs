//! Build benchmark: a Dockerfile of one stage with `RUN` steps, built with `--no-cache`,
//! three ways in one run:
//! 1. hyperd, one micro-VM for all the stage's `RUN` steps (the default);
//! 2. hyperd with `--build-vm-per-step` (a VM booted for each `RUN`);
//! 3. `podman build` with runc (the peer: containers, no VMs).
//!
//! Prints the median time of a whole build for each, and the ratios.
//!
//!     cargo bench --bench build          # HYPERD_BENCH_RUNS=n (default 3), HYPERD_BENCH_STEPS=n (default 5)
mod common;
use common::{median, succeeded, Daemon};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    c
}

/// The context: a Dockerfile `FROM base` with `steps` RUNs, each writing a file.
fn context(dir: &Path, base: &str, steps: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut df = format!("FROM {base}\n");
    for i in 0..steps {
        df.push_str(&format!("RUN echo step {i} > /step-{i}.txt\n"));
    }
    df.push_str("CMD [\"ls\", \"/\"]\n");
    std::fs::write(dir.join("Dockerfile"), df).unwrap();
}

fn timed(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    succeeded(cmd);
    t.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("build: bench");
        return;
    }
    let env_num = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = env_num("HYPERD_BENCH_RUNS", 3);
    let steps = env_num("HYPERD_BENCH_STEPS", 5);
    assert!(
        Command::new("podman").arg("--version").output().is_ok(),
        "the peer needs podman and runc: apt-get install podman runc"
    );
    let work = tempfile::tempdir().unwrap();
    let rootfs = common::busybox_tar(work.path());
    let ctx = work.path().join("ctx");
    context(&ctx, "busybox", steps);

    let mut hyperd_times = Vec::new();
    for (name, extra) in [
        ("per-stage", &[][..]),
        ("per-step", &["--build-vm-per-step"][..]),
    ] {
        let d = Daemon::start_with(work.path(), name, "0", extra);
        d.import_busybox(&rootfs);
        let mut t = Vec::new();
        for _ in 0..runs {
            t.push(timed(d.hyperctl().args([
                "build",
                "-q",
                "--no-cache",
                "-t",
                "bench:1",
                ctx.to_str().unwrap(),
            ])));
        }
        hyperd_times.push(median(t));
    }

    succeeded(podman().args([
        "import",
        rootfs.to_str().unwrap(),
        "localhost/busybox:latest",
    ]));
    let pctx = work.path().join("pctx");
    context(&pctx, "localhost/busybox", steps);
    let mut t = Vec::new();
    for _ in 0..runs {
        t.push(timed(podman().args([
            "build",
            "-q",
            "--no-cache",
            "-t",
            "localhost/bench:1",
            pctx.to_str().unwrap(),
        ])));
    }
    let peer = median(t);
    let (stage, step) = (hyperd_times[0], hyperd_times[1]);
    println!("build of {steps} RUN steps, --no-cache, median of {runs}:");
    println!(
        "  hyperd, one VM per stage   {stage:7.2} s  ({:.2} s a step)",
        stage / steps as f64
    );
    println!(
        "  hyperd, one VM per step    {step:7.2} s  ({:.2} s a step)",
        step / steps as f64
    );
    println!(
        "  podman build (runc)        {peer:7.2} s  ({:.2} s a step)",
        peer / steps as f64
    );
    println!("ratio per-step / per-stage   {:.2}x", step / stage);
    println!("ratio per-stage / podman     {:.2}x", stage / peer);
}
