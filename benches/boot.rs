//! Boot benchmark: the same kernel and initramfs booted to the agent's first answer
//! under hyperd's own VMM (`hyper-vmm`) and under `qemu-system-x86_64 -M microvm` with
//! KVM, in the same run; with qemu's TCG as a third line where KVM emulates guest ring 0
//! (there TCG is what `auto` picks). Prints median times, the ratio, and each monitor's
//! resident memory minus the guest's RAM.
//!
//!     cargo bench --bench boot            # HYPERD_BENCH_RUNS=n for more than 1 run
use hyperd::vm::hyper_vmm::VmmDriver;
use hyperd::vm::qemu::QemuDriver;
use hyperd::vm::{kill_process, DiskConfig, Driver, VmConfig};
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

async fn measure(driver: &Driver, runs: usize, work: &std::path::Path) -> (Duration, u64) {
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
        };
        let t = Instant::now();
        let vm = driver.boot(&cfg).await.expect("the VM boots");
        times.push(t.elapsed());
        rss = rss_minus_guest_kib(vm.pid);
        kill_process(vm.pid);
        let mut process = vm.process;
        process.wait().await;
    }
    (median(times), rss)
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
    let vmm = Driver::Vmm(VmmDriver::new().expect("hyper-vmm needs /dev/kvm"));
    let qemu = Driver::Qemu(QemuDriver::new("kvm").unwrap());
    let (t_vmm, rss_vmm) = measure(&vmm, runs, work.path()).await;
    let (t_qemu, rss_qemu) = measure(&qemu, runs, work.path()).await;
    println!("boot to the agent's first answer, median of {runs}, same kernel and initramfs:");
    println!(
        "  hyper-vmm      {:>8.3} s   RSS outside guest RAM {:>7} KiB",
        t_vmm.as_secs_f64(),
        rss_vmm
    );
    println!(
        "  qemu microvm   {:>8.3} s   RSS outside guest RAM {:>7} KiB   (KVM)",
        t_qemu.as_secs_f64(),
        rss_qemu
    );
    println!(
        "  ratio hyper-vmm / qemu: {:.2} (time), {:.2} (memory)",
        t_vmm.as_secs_f64() / t_qemu.as_secs_f64(),
        rss_vmm as f64 / rss_qemu.max(1) as f64
    );
    if hyperd::vm::host::kvm_emulates_ring0() {
        let tcg = Driver::Qemu(QemuDriver::new("tcg").unwrap());
        let (t_tcg, rss_tcg) = measure(&tcg, runs, work.path()).await;
        println!(
            "  qemu microvm   {:>8.3} s   RSS outside guest RAM {:>7} KiB   (TCG; this host's KVM emulates guest ring 0)",
            t_tcg.as_secs_f64(),
            rss_tcg
        );
    }
}
