//! The warm pool with real micro-VMs: pods take an idle VM (the phase record says
//! `pool`), the pool refills, a used VM never returns to it, a daemon killed with -9
//! neither leaks nor loses idle VMs, one stopped for good powers them off, and `--pool 0`
//! boots cold.
mod common;
use common::{out_ok, pid_alive, wait_gone, Daemon};
use std::path::Path;
use std::time::{Duration, Instant};

/// Pids of the VM processes (qemu) whose command line names `root`.
fn vm_pids_under(root: &Path) -> Vec<u32> {
    let needle = root.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default())
                .to_string();
        if cmdline.contains(&needle) && (cmdline.contains("qemu") || cmdline.contains("hyper-vmm"))
        {
            out.push(pid);
        }
    }
    out
}

/// Ids of the idle VMs, from `/list?item=vm`.
fn idle_vms(d: &Daemon) -> Vec<String> {
    d.json("GET", "/list?item=vm", None)["vmData"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str()?.strip_suffix("::idle").map(str::to_string))
        .collect()
}

/// Waits (up to 60 s) for the pool to hold one idle VM other than `not`; returns it.
fn wait_idle(d: &Daemon, not: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let idle = idle_vms(d);
        if let [one] = idle.as_slice() {
            if !not.contains(one) {
                let info = d.json("GET", "/info", None);
                assert_eq!(info["Pool"]["Sizes"][0]["Idle"], 1, "{info}");
                assert_eq!(info["Pool"]["IdleMemoryMiB"], 128, "{info}");
                return one.clone();
            }
        }
        assert!(Instant::now() < deadline, "the pool did not fill: {idle:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn record(d: &Daemon, pod: &str) -> serde_json::Value {
    d.json("GET", &format!("/pod/info?podName={pod}"), None)["startRecord"].clone()
}

#[test]
fn pods_take_pooled_vms_and_the_pool_refills_and_survives_restarts() {
    let mut d = Daemon::start_with(&["--pool", "1"]);
    d.import_busybox();
    let first = wait_idle(&d, &[]);

    // A pod takes the idle VM: the pool path, with no extra command.
    let out = d.hyperctl(&["run", "--rm", "busybox", "echo", "hi"]);
    assert_eq!(out_ok(&out), "hi");
    let second = wait_idle(&d, std::slice::from_ref(&first));
    let pod = out_ok(&d.hyperctl(&["run", "-d", "--name", "warm", "busybox", "sleep", "1000"]));
    let info = d.json("GET", &format!("/pod/info?podName={pod}"), None);
    assert_eq!(info["vm"], second.as_str(), "{info}");
    let rec = &info["startRecord"];
    assert_eq!(rec["path"], "pool", "{rec}");
    // The pooled VM booted before the request: its kernel and agent phases are negative.
    assert!(rec["agentReadyMs"].as_f64().unwrap() < 0.0, "{rec}");
    assert!(rec["processStartedMs"].as_f64().unwrap() >= rec["vmReadyMs"].as_f64().unwrap());

    // The pool refills, and the VM the pod used never returns to it.
    let third = wait_idle(&d, &[first.clone(), second.clone()]);
    let used_pid = info["vmPid"].as_u64().unwrap() as u32;
    out_ok(&d.hyperctl(&["stop", "-t", "1", "warm"]));
    wait_gone(used_pid, "the used VM after stop");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(idle_vms(&d), vec![third.clone()]);

    // kill -9 and a new daemon: the old idle VM is not leaked, a new one replaces it.
    out_ok(&d.hyperctl(&["rm", "warm"]));
    let before = vm_pids_under(&d.root);
    assert_eq!(before.len(), 1, "one idle VM: {before:?}");
    d.kill9();
    d.restart();
    let fourth = wait_idle(&d, std::slice::from_ref(&third));
    wait_gone(before[0], "the idle VM of the killed daemon");
    let after = vm_pids_under(&d.root);
    assert_eq!(after.len(), 1, "exactly the new idle VM: {after:?}");
    assert!(pid_alive(after[0]));
    assert_eq!(idle_vms(&d), vec![fourth]);

    // A daemon that stops for good (SIGTERM) powers its idle VMs off.
    d.stop();
    wait_gone(after[0], "the idle VM after the daemon stopped");
    assert!(vm_pids_under(&d.root).is_empty());
}

#[test]
fn without_a_pool_pods_boot_cold_and_record_every_phase() {
    let d = Daemon::start_with(&["--pool", "0"]);
    d.import_busybox();
    let pod = out_ok(&d.hyperctl(&["run", "-d", "--name", "cold", "busybox", "sleep", "1000"]));
    let rec = record(&d, &pod);
    assert_eq!(rec["path"], "cold", "{rec}");
    let ms = |k: &str| {
        rec[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {rec}"))
    };
    let phases = hyperd_api::pods::START_PHASES;
    for w in phases.windows(2) {
        assert!(ms(w[0]) <= ms(w[1]) + 1.0, "{} after {}: {rec}", w[0], w[1]);
    }
    assert!(ms("vmSpawnedMs") >= 0.0, "{rec}");
    let info = d.json("GET", "/info", None);
    assert_eq!(info["Pool"]["Target"], 0, "{info}");
    assert!(idle_vms(&d).is_empty());
    out_ok(&d.hyperctl(&["rm", "cold"]));
}
