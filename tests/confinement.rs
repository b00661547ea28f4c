//! What a container may touch inside its VM (qemu driver, one daemon, the docker CLI):
//! Docker's minimal `/dev` (no virtio-blk disk, no console, no agent port), device
//! nodes it makes itself open nothing, Docker's default capability set, `--cap-add`,
//! `--cap-drop` and `--privileged`; a root the chroot escape cannot leave (pivot_root);
//! Docker's masked /proc paths and a read-only /sys; a container that writes 1 GiB with
//! clients that never read keeps the daemon's memory flat and its log within the pod's
//! cap; and a guest that floods its serial console keeps the console log under its cap.
mod common;
use common::{out_ok, Daemon};

/// Docker's default bounding set, as /proc/self/status prints it.
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

#[test]
fn containers_are_confined_in_their_vm() {
    let d = Daemon::start_with(&["--console-log-max", "65536"]);
    d.import_busybox();
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    let run = |args: &[&str], script: &str| -> std::process::Output {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["busybox", "sh", "-c", script]);
        d.docker(cfg, &all)
    };

    // The minimal /dev: these entries and nothing else.
    let dev = out_ok(&run(&[], "ls /dev | sort | tr '\\n' ' '"));
    assert_eq!(
        dev, "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero",
        "{dev}"
    );
    // The VM's disk and the agent's port exist (sysfs says so), but not for the
    // container: no node in /dev, none can be made there, and one made elsewhere opens
    // nothing.
    let probe = out_ok(&run(
        &[],
        "disk=$(cat /sys/block/vda/dev); port=$(cat /sys/class/virtio-ports/*/dev | head -1); \
         echo disk=${disk:+known} port=${port:+known}; \
         mknod /dev/vda b ${disk%:*} ${disk#*:} 2>/dev/null && echo dev-writable; \
         mknod /tmp/vda b ${disk%:*} ${disk#*:} && (head -c 1 /tmp/vda >/dev/null 2>&1 && echo disk-opened || echo disk-refused); \
         mknod /tmp/port c ${port%:*} ${port#*:} && (echo x > /tmp/port 2>/dev/null && echo port-opened || echo port-refused); \
         echo null: $(echo ok > /dev/null && echo works)",
    ));
    assert_eq!(
        probe, "disk=known port=known\ndisk-refused\nport-refused\nnull: works",
        "{probe}"
    );

    // Capabilities: Docker's default set for root; --cap-add and --cap-drop change it.
    let caps =
        |args: &[&str]| -> String { out_ok(&run(args, "grep CapBnd /proc/self/status | cut -f2")) };
    assert_eq!(caps(&[]), DOCKER_DEFAULT_CAPS);
    let eff = out_ok(&run(&[], "grep CapEff /proc/self/status | cut -f2"));
    assert_eq!(eff, DOCKER_DEFAULT_CAPS);
    // NET_ADMIN is bit 12; dropping MKNOD clears bit 27.
    assert_eq!(
        caps(&["--cap-add", "NET_ADMIN", "--cap-drop", "MKNOD"]),
        "00000000a00435fb"
    );
    assert_eq!(caps(&["--cap-drop", "ALL"]), "0000000000000000");
    // no-new-privileges on request only.
    let nnp = |args: &[&str]| out_ok(&run(args, "grep NoNewPrivs /proc/self/status | cut -f2"));
    assert_eq!(nnp(&[]), "0");
    assert_eq!(nnp(&["--security-opt", "no-new-privileges"]), "1");
    // Without NET_ADMIN a container cannot change the VM's network; with it, it can.
    let o = run(&[], "ip link set lo mtu 1400");
    assert!(!o.status.success(), "changed the network without NET_ADMIN");
    out_ok(&run(&["--cap-add", "NET_ADMIN"], "ip link set lo mtu 1400"));

    // The container's root is its namespace's root (pivot_root, the VM's root unmounted):
    // the classic chroot escape, which CAP_SYS_CHROOT (in Docker's default set) allows
    // out of a root entered by chroot alone, ends in the container, privileged or not.
    let esc = tempfile::tempdir().unwrap();
    std::fs::write(
        esc.path().join("escape.c"),
        r#"#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(void) {
    mkdir("/escape-x", 0755);
    if (chroot("/escape-x") != 0) { perror("chroot"); return 1; }
    for (int i = 0; i < 64; i++) chdir("..");
    chroot(".");
    puts(access("/run/hyper/c", F_OK) == 0 ? "escaped" : "confined");
    return 0;
}
"#,
    )
    .unwrap();
    let cc = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(esc.path().join("escape"))
        .arg(esc.path().join("escape.c"))
        .output()
        .expect("cc runs");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    std::fs::write(
        esc.path().join("Dockerfile"),
        "FROM busybox\nCOPY escape /escape\n",
    )
    .unwrap();
    out_ok(&d.hyperctl(&["build", "-q", "-t", "escape", esc.path().to_str().unwrap()]));
    let escape = |args: &[&str]| {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["escape", "/escape"]);
        out_ok(&d.docker(cfg, &all))
    };
    assert_eq!(escape(&[]), "confined");
    assert_eq!(escape(&["--privileged"]), "confined");
    // Docker's masked and read-only kernel paths; /sys read-only. Privileged: neither.
    let kernel_paths = "echo timer_list=$(wc -c < /proc/timer_list); \
         echo firmware=$(ls /sys/firmware | wc -l); \
         (echo 1 > /proc/sys/kernel/printk) 2>/dev/null && echo proc-sys-writable; \
         touch /sys/kernel/x 2>&1 | grep -q Read-only && echo sys-read-only; true";
    let masked = out_ok(&run(&[], kernel_paths));
    assert_eq!(
        masked, "timer_list=0\nfirmware=0\nsys-read-only",
        "{masked}"
    );
    let open = out_ok(&run(&["--privileged"], kernel_paths));
    assert!(
        !open.contains("timer_list=0") && open.contains("proc-sys-writable"),
        "{open}"
    );

    // Privileged: every capability and the VM's whole /dev.
    assert_eq!(caps(&["--privileged"]), "000001ffffffffff");
    assert_eq!(
        out_ok(&run(
            &["--privileged"],
            "test -b /dev/vda && echo disk-visible"
        )),
        "disk-visible"
    );
    // The inspect shows what was asked.
    out_ok(&d.docker(
        cfg,
        &[
            "create",
            "--name",
            "capped",
            "--cap-add",
            "SYS_TIME",
            "busybox",
            "true",
        ],
    ));
    let inspect: serde_json::Value =
        serde_json::from_str(&out_ok(&d.docker(cfg, &["inspect", "capped"]))).unwrap();
    let added = inspect[0]["HostConfig"]["CapAdd"][0].as_str().unwrap_or("");
    assert!(added.ends_with("SYS_TIME"), "{inspect}");
    let (code, body) = d.curl(
        "POST",
        "/pod/create",
        Some(r#"{"id":"bad","containers":[{"image":"busybox","capAdd":["SYS_WIZARD"]}]}"#),
    );
    assert_eq!(code, 400, "{body}");
    out_ok(&d.docker(cfg, &["rm", "capped"]));

    // A container that writes 1 GiB to stdout, with a log capped at 1 MiB × 2 files, a
    // `logs --follow` client and an attached client that never read: the daemon's
    // memory stays flat (the agent channel waits for the log writer, the slow clients
    // are dropped), and the log stays within its cap.
    const GIB: u64 = 1 << 30;
    let rss = |field: &str| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    out_ok(&d.docker(
        cfg,
        &[
            "run",
            "-d",
            "--name",
            "logflood",
            "--log-opt",
            "max-size=1m",
            "--log-opt",
            "max-file=2",
            "busybox",
            "sh",
            "-c",
            &format!(
                "sleep 2; yes \"$(head -c 4000 /dev/zero | tr '\\0' x)\" | head -c {GIB}; echo; echo flood-done"
            ),
        ],
    ));
    let before = rss("VmRSS:");
    let slow = |request: &str| {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s
    };
    let _follower =
        slow("GET /v1.41/containers/logflood/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: d\r\n\r\n");
    let _attached = slow(
        "POST /v1.41/containers/logflood/attach?stream=1&stdout=1 HTTP/1.1\r\nHost: d\r\n\
         Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n",
    );
    let started = std::time::Instant::now();
    let mut peak = before;
    loop {
        peak = peak.max(rss("VmRSS:"));
        let (_, state) = d.curl("GET", "/v1.41/containers/logflood/json", None);
        let state: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
        if state["State"]["Running"] == false {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(900),
            "the 1 GiB flood did not end in 15 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!(
        "1 GiB of output in {:?}: daemon RSS {before} -> peak {peak} bytes",
        started.elapsed()
    );
    assert!(
        peak < before + (64 << 20),
        "the daemon grew from {before} to {peak} bytes over a 1 GiB flood"
    );
    let kept: u64 = common::tree(&d.root.join("pods"))
        .iter()
        .filter(|p| p.to_string_lossy().contains(".log"))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    assert!(
        kept <= 2 * (1 << 20) + (256 << 10),
        "{kept} bytes of logs kept"
    );
    let tail = out_ok(&d.docker(cfg, &["logs", "--tail", "1", "logflood"]));
    assert_eq!(tail, "flood-done");
    let inspect: serde_json::Value =
        serde_json::from_str(&out_ok(&d.docker(cfg, &["inspect", "logflood"]))).unwrap();
    assert_eq!(
        inspect[0]["HostConfig"]["LogConfig"]["Config"]["max-size"],
        "1048576"
    );
    out_ok(&d.docker(cfg, &["rm", "-f", "logflood"]));
    let o = d.docker(
        cfg,
        &["run", "--rm", "--log-opt", "max-size=1x", "busybox", "true"],
    );
    assert!(!o.status.success());
    let o = d.docker(
        cfg,
        &["run", "--rm", "--log-driver", "syslog", "busybox", "true"],
    );
    assert!(!o.status.success());

    // A guest that writes to its serial console without end (a privileged container
    // can): the log is emptied past its cap (64 KiB here) and stays small.
    out_ok(&d.docker(
        cfg,
        &[
            "run",
            "-d",
            "--name",
            "flood",
            "--privileged",
            "busybox",
            "sh",
            "-c",
            "yes 0123456789abcdef > /dev/ttyS0",
        ],
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (mut largest, mut emptied) = (0u64, false);
    while std::time::Instant::now() < deadline && !(emptied && largest > 0) {
        for log in common::tree(&d.root.join("vm"))
            .into_iter()
            .filter(|p| p.ends_with("console.log"))
        {
            largest = largest.max(std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0));
            let head = std::fs::read(&log).unwrap_or_default();
            emptied |= head.starts_with(b"[hyperd: the console log passed 65536 bytes");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(4));
    for log in common::tree(&d.root.join("vm"))
        .into_iter()
        .filter(|p| p.ends_with("console.log"))
    {
        largest = largest.max(std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0));
    }
    assert!(emptied, "the console log was never emptied");
    // The cap and what a flood writes between two checks (2 s), with room for a slow
    // machine.
    assert!(largest < 1 << 20, "the console log grew to {largest} bytes");
    out_ok(&d.docker(cfg, &["rm", "-f", "flood"]));
}
