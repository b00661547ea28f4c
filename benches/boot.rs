//! Boot benchmark: the same kernel and initramfs booted to the agent's first answer
//! under hyperd's own VMM (`hyper-vmm`) and under `qemu-system-x86_64 -M microvm`, in the
//! same run. qemu runs with KVM where the CPU runs guests natively; where KVM emulates
//! guest ring 0 it runs with TCG (what `auto` picks there) and its KVM mode is tried as
//! well. Prints median times, the ratio, and each monitor's resident memory outside the
//! guest's RAM.
//!
//!     cargo bench --bench boot            # HYPERD_BENCH_RUNS=n for more than 1 run
use hyperd::vm::hyper_vmm::VmmDriver;
use hyperd::vm::qemu::QemuDriver;
use hyperd::vm::{DiskConfig, Driver, VmConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MEM_MIB: u32 = 256;

/// Resident KiB of a process outside its guest-RAM mapping (the one mapping of the
/// guest's size, or the largest for qemu, which may round it).
fn rss_minus_guest_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut maps: Vec<(u64, u64)> = Vec::new(); // (size kB, rss kB)
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("Size:") => maps.push((f.next().unwrap().parse().unwrap(), 0)),
            Some("Rss:") => {
                if let Some(m) = maps.last_mut() {
                    m.1 = f.next().unwrap().parse().unwrap();
                }
            }
            _ => {}
        }
    }
    let guest = maps
        .iter()
        .enumerate()
        .filter(|(_, m)| m.0 >= u64::from(MEM_MIB) * 1024)
        .min_by_key(|(_, m)| m.0)
        .map(|(i, _)| i);
    maps.iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != guest)
        .map(|(_, m)| m.1)
        .sum()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn measure(
    driver: &Driver,
    runs: usize,
    work: &std::path::Path,
) -> Result<(Duration, u64), String> {
    let cache = hyperd::config::default_cache_dir();
    let mut times = Vec::new();
    let mut rss = 0;
    for i in 0..runs {
        let cfg = VmConfig {
            id: format!("bench-{i}"),
            dir: work.join(format!("{}-{i}", driver.describe())),
            vcpus: 1,
            memory_mib: MEM_MIB,
            kernel: std::env::var_os("HYPERD_KERNEL")
                .map(PathBuf::from)
                .unwrap_or_else(|| cache.join("vmlinux")),
            initrd: cache.join("initrd.img"),
            disks: Vec::<DiskConfig>::new(),
            boot_timeout: Duration::from_secs(900),
            disk_limits: Default::default(),
            net: Default::default(),
            share: Default::default(),
        };
        let t = Instant::now();
        let vm = match driver.boot(&cfg).await {
            Ok(vm) => vm,
            Err(e) => {
                let tail = |f: &str| {
                    let text = std::fs::read_to_string(cfg.dir.join(f)).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(15)..].join("\n")
                };
                return Err(format!(
                    "{} did not boot: {e}\n{}\n{}\n{}",
                    driver.describe(),
                    tail("console.log"),
                    tail("vmm.log"),
                    tail("qemu.log")
                ));
            }
        };
        times.push(t.elapsed());
        rss = rss_minus_guest_kib(vm.handle.pid());
        vm.handle.kill();
        vm.handle.wait().await;
    }
    Ok((median(times), rss))
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("boot: bench");
        return;
    }
    let runs: usize = std::env::var("HYPERD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let work = tempfile::tempdir().unwrap();
    let emulated = hyperd::vm::host::kvm_emulates_ring0();
    let vmm = Driver::Vmm(VmmDriver::new().expect("hyper-vmm needs /dev/kvm"));
    // The peer: qemu with KVM where the CPU runs guests natively; where KVM emulates
    // ring 0, qemu's TCG (what `auto` picks there; qemu's KVM mode is tried as well).
    let peer_accel = if emulated { "tcg" } else { "kvm" };
    let peer = Driver::Qemu(QemuDriver::new(peer_accel).unwrap());
    let (t_vmm, rss_vmm) = measure(&vmm, runs, work.path()).await.unwrap();
    let (t_qemu, rss_qemu) = measure(&peer, runs, work.path()).await.unwrap();
    println!("boot to the agent's first answer, median of {runs}, same kernel and initramfs:");
    println!(
        "  hyper-vmm      {:>8.3} s   RSS outside guest RAM {:>7} KiB   (KVM{})",
        t_vmm.as_secs_f64(),
        rss_vmm,
        if emulated { ", ring 0 emulated" } else { "" }
    );
    println!(
        "  qemu microvm   {:>8.3} s   RSS outside guest RAM {:>7} KiB   ({})",
        t_qemu.as_secs_f64(),
        rss_qemu,
        peer.describe()
    );
    println!(
        "  ratio hyper-vmm / {}: {:.2} (time), {:.2} (memory)",
        peer.describe(),
        t_vmm.as_secs_f64() / t_qemu.as_secs_f64(),
        rss_vmm as f64 / rss_qemu.max(1) as f64
    );
    if emulated {
        let kvm = Driver::Qemu(QemuDriver::new("kvm").unwrap());
        match measure(&kvm, 1, work.path()).await {
            Ok((t, rss)) => println!(
                "  qemu microvm   {:>8.3} s   RSS outside guest RAM {:>7} KiB   (qemu-kvm)",
                t.as_secs_f64(),
                rss
            ),
            Err(e) => println!(
                "  qemu microvm   does not boot with KVM here: {}",
                e.lines()
                    .filter(|l| l.contains("error"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
}
