//! What a container may touch inside its VM (qemu driver, one daemon, the docker CLI):
//! Docker's minimal `/dev` (no virtio-blk disk, no console, no agent port), device
//! nodes it makes itself open nothing, Docker's default capability set, `--cap-add`,
//! `--cap-drop` and `--privileged`; and a guest that floods its serial console keeps
//! the console log under its cap.
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
