//! Pull benchmark: the same multi-layer image from a local registry (Debian's
//! docker-registry), pulled by hyperd (`hyperctl pull`) and copied by `skopeo copy` to a
//! directory, in the same run. Prints the median times and their ratio.
//!
//!     cargo bench --bench pull
//!
//! hyperd does more than skopeo here: besides fetching and verifying the blobs it
//! unpacks the layers and builds the erofs root filesystem a VM boots from.
#[path = "../tests/common/mod.rs"]
mod common;
use common::{skopeo_push, tar_of, write_oci_layout, Compression, Daemon, Registry};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 5;
const LAYERS: usize = 4;
const LAYER_BYTES: usize = 16 << 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("pull: bench");
        return;
    }
    let reg = Registry::start(None);
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    // Busybox plus layers of incompressible data, gzip-compressed as registries hold them.
    let mut layers = vec![(
        std::fs::read(common::busybox_tar(work.path())).unwrap(),
        Compression::Gzip,
    )];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..LAYERS {
        let data: Vec<u8> = (0..LAYER_BYTES)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        layers.push((
            tar_of(&[(&format!("data/blob{i}"), &data)]),
            Compression::Gzip,
        ));
    }
    let layout = work.path().join("oci");
    write_oci_layout(
        &layout,
        "bench",
        &layers,
        serde_json::json!({ "Cmd": ["sh"] }),
        false,
    );
    let image = format!("{}/bench:1", reg.addr);
    skopeo_push(&layout, "bench", &image);
    let total: u64 = walk_size(&layout.join("blobs"));
    println!(
        "image: {} layers, {:.1} MB compressed",
        layers.len(),
        total as f64 / 1e6
    );

    let mut hyperd_times = Vec::new();
    let mut skopeo_times = Vec::new();
    for _ in 0..RUNS {
        let _ = d.hyperctl(&["rmi", &image]);
        let t = Instant::now();
        let out = d.hyperctl(&["pull", "-q", &image]);
        hyperd_times.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let dest = work.path().join("skopeo");
        let _ = std::fs::remove_dir_all(&dest);
        let t = Instant::now();
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{image}"))
            .arg(format!("dir:{}", dest.display()))
            .output()
            .unwrap();
        skopeo_times.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (h, s) = (median(hyperd_times), median(skopeo_times));
    println!(
        "hyperd pull (fetch, verify, unpack, mkfs.erofs): {:>8.3} s (median of {RUNS})",
        h.as_secs_f64()
    );
    println!(
        "skopeo copy (fetch, verify, write blobs):        {:>8.3} s (median of {RUNS})",
        s.as_secs_f64()
    );
    println!(
        "ratio hyperd/skopeo: {:.2}",
        h.as_secs_f64() / s.as_secs_f64()
    );
}

fn walk_size(dir: &std::path::Path) -> u64 {
    common::tree(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
