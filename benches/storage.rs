//! Storage benchmark, in one run, each figure with its ratio to the same work done
//! directly on the host (the limit):
//! - sequential write of 256 MiB (`dd`, flushed) and read back (the guest's cache
//!   dropped first; the host's is warm for both, so the read measures the path, not the
//!   disk);
//! - creating 5,000 small files (flushed) and reading them all;
//!
//! each in a host-directory volume (virtio-fs), a block volume (ext4 on virtio-blk) and
//! the container's own layer (the scratch disk), by the qemu driver (TCG on these
//! machines: the guest's shell loops are emulated too). Times are `hyperctl exec` less
//! an empty exec.
//!
//!     cargo build --release --workspace --bins && cargo bench --bench storage
//!     # HYPERD_BENCH_RUNS=n (default 3)
mod common;
use common::{busybox_tar, median, succeeded, Daemon};
use std::process::Command;
use std::time::Instant;

/// The workloads, as shell over `$D`.
const WORK: [(&str, &str); 4] = [
    (
        "write 256 MiB",
        "dd if=/dev/zero of=$D/big bs=1M count=256 conv=fsync 2>/dev/null",
    ),
    (
        "read 256 MiB",
        "dd if=$D/big of=/dev/null bs=1M 2>/dev/null",
    ),
    (
        "create 5000 files",
        "mkdir -p $D/small && cd $D/small && i=0; while [ $i -lt 5000 ]; do echo $i > f$i; i=$((i+1)); done; sync",
    ),
    ("read 5000 files", "cat $D/small/* > /dev/null"),
];

const CLEAN: &str = "rm -rf $D/big $D/small";

fn main() {
    let runs: usize = std::env::var("HYPERD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let work = tempfile::tempdir().unwrap();
    let d = Daemon::start(work.path(), "0");
    d.import_busybox(&busybox_tar(work.path()));
    let host_dir = work.path().join("vfs");
    std::fs::create_dir(&host_dir).unwrap();
    let created = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&d.socket)
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(r#"{"Name":"benchblk","Driver":"block","DriverOpts":{"size":"2G"}}"#)
        .arg("http://hyperd/volumes/create")
        .output()
        .unwrap();
    assert!(created.status.success());
    let spec = serde_json::json!({
        "id": "storagebench",
        "resource": {"vcpu": 1, "memory": 512},
        "volumes": [
            {"name": "vfs", "source": host_dir},
            {"name": "blk", "source": "benchblk", "driver": "block"},
        ],
        "containers": [{"image": "busybox", "command": ["sleep", "100000"],
            "volumes": [{"volume": "vfs", "path": "/vfs"}, {"volume": "blk", "path": "/blk"}]}],
    });
    let spec_file = work.path().join("pod.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    succeeded(d.hyperctl().args(["run", "-d", "-p"]).arg(&spec_file));
    let exec = |script: &str| {
        let t = Instant::now();
        succeeded(
            d.hyperctl()
                .args(["exec", "storagebench", "sh", "-c", script]),
        );
        t.elapsed().as_secs_f64()
    };
    let empty = median((0..runs).map(|_| exec("true")).collect());
    let host_scratch = work.path().join("host");
    std::fs::create_dir(&host_scratch).unwrap();
    let host = |script: &str| {
        let t = Instant::now();
        succeeded(
            Command::new("busybox")
                .args(["sh", "-c", script])
                .env("D", &host_scratch),
        );
        t.elapsed().as_secs_f64()
    };
    println!("storage benchmark, qemu driver ({runs} runs, median seconds; ratio = host / place)");
    println!(
        "{:<20} {:>9} {:>18} {:>18} {:>18}",
        "work", "host", "virtio-fs volume", "block volume", "scratch layer"
    );
    let places = ["/vfs", "/blk", "/scratch"];
    let mut host_times = Vec::new();
    let mut guest_times: Vec<Vec<Vec<f64>>> = vec![Vec::new(); places.len()];
    for _ in 0..runs {
        for (i, (_, script)) in WORK.iter().enumerate() {
            if host_times.len() <= i {
                host_times.push(Vec::new());
            }
            host_times[i].push(host(script));
        }
        host(CLEAN);
        for (p, place) in places.iter().enumerate() {
            let prefix = format!("mkdir -p {place}; D={place}; ");
            for (i, (_, script)) in WORK.iter().enumerate() {
                // Reads start cold in the guest.
                let drop = if i % 2 == 1 {
                    "sync; echo 3 > /proc/sys/vm/drop_caches; "
                } else {
                    ""
                };
                let t = (exec(&format!("{prefix}{drop}{script}")) - empty).max(1e-3);
                if guest_times[p].len() <= i {
                    guest_times[p].push(Vec::new());
                }
                guest_times[p][i].push(t);
            }
            exec(&format!("D={place}; {CLEAN}"));
        }
    }
    for (i, (name, _)) in WORK.iter().enumerate() {
        let h = median(host_times[i].clone());
        let cells: Vec<String> = (0..places.len())
            .map(|p| {
                let g = median(guest_times[p][i].clone());
                format!("{g:>8.2} ({:>5.3}x)", h / g)
            })
            .collect();
        println!(
            "{name:<20} {h:>9.2} {:>18} {:>18} {:>18}",
            cells[0], cells[1], cells[2]
        );
    }
    succeeded(d.hyperctl().args(["rm", "storagebench"]));
}
