//! hyperd's own VMM (`hyper-vmm`) on this machine's /dev/kvm, end to end.
//!
//! - The VMM, driven over its control socket, boots hyperd's kernel with no initramfs on
//!   two vCPUs: the kernel mounts an erofs root from the virtio-blk disk and runs its
//!   /init, which reports what the guest sees (a marker file read from the disk, the
//!   agent's virtio-console port by name, the CPUs online) on the serial console, then
//!   reboots, which ends the VMM.
//! - A pod runs through the hyper-vmm driver as through qemu in the first-pod test, and
//!   `/info` and `hyperctl info` name the driver. A second pod keeps its volumes, layer
//!   and published port (virtio-net on passt) through a `kill -9` of the daemon.
//!
//! On hosts whose KVM emulates guest ring 0 (these machines) every boot takes minutes:
//! the tests allow for that. Where /dev/kvm cannot be opened at all they fail, except
//! outside CI where they say why and skip.
mod common;
use common::{out_ok, Daemon};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn kvm_or_skip() -> bool {
    if hyperd::vm::host::kvm_usable() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "/dev/kvm is not usable, and CI must run the VMM tests"
    );
    eprintln!("skipped: /dev/kvm is not usable here");
    false
}

/// One control-socket request, one answer.
fn call(conn: &mut UnixStream, req: &str) -> serde_json::Value {
    conn.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(conn.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// An erofs image whose /init (busybox sh) reports the marker and the virtio ports.
fn root_disk(dir: &Path, marker: &str) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("marker"), marker).unwrap();
    std::fs::write(
        root.join("init"),
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         echo \"marker: $(/bin/busybox cat /marker)\"\n\
         echo \"cpus: $(/bin/busybox nproc)\"\n\
         for f in /sys/class/virtio-ports/*/name; do echo \"port: $(/bin/busybox cat $f)\"; done\n\
         /bin/busybox reboot -f\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = dir.join("root.erofs");
    let out = Command::new("mkfs.erofs")
        .arg(&img)
        .arg(&root)
        .output()
        .expect("mkfs.erofs runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

#[test]
fn hyper_vmm_boots_the_kernel_from_a_virtio_disk_with_the_agent_port() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("hyperd-{}", std::process::id());
    let disk = root_disk(dir.path(), &marker);
    let agent_sock = dir.path().join("agent.sock");
    let _agent = UnixListener::bind(&agent_sock).unwrap();
    let api = dir.path().join("vmm.sock");
    let console = dir.path().join("console.log");
    let mut vmm = Command::new(common::workspace_binary("hyper-vmm"))
        .arg("--api-sock")
        .arg(&api)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match UnixStream::connect(&api) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "control socket: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&api).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Bad requests are refused and change nothing.
    let r = call(&mut conn, "{not json");
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("bad request"), "{r}");
    let r = call(&mut conn, r#"{"op":"start"}"#);
    assert_eq!(r["ok"], false, "{r}");
    let kernel = hyperd::config::default_cache_dir().join("vmlinux");
    let bad = serde_json::json!({"op": "create", "config": {
        "vcpus": 1, "mem_mib": 4, "kernel": kernel, "cmdline": ""}});
    let r = call(&mut conn, &bad.to_string());
    assert!(r["error"].as_str().unwrap().contains("memory"), "{r}");
    assert_eq!(call(&mut conn, r#"{"op":"status"}"#)["state"], "empty");

    let create = serde_json::json!({"op": "create", "config": {
        "vcpus": 2,
        "mem_mib": 128,
        "kernel": kernel,
        "cmdline": "console=ttyS0 reboot=k panic=-1 root=/dev/vda rootfstype=erofs ro init=/init",
        "disks": [{"path": disk, "read_only": true, "serial": "root"}],
        "agent_socket": agent_sock,
        "console_log": console,
    }});
    let r = call(&mut conn, &create.to_string());
    assert_eq!(r["state"], "created", "{r}");
    assert_eq!(call(&mut conn, r#"{"op":"start"}"#)["state"], "running");
    assert_eq!(call(&mut conn, r#"{"op":"pause"}"#)["state"], "paused");
    assert_eq!(call(&mut conn, r#"{"op":"status"}"#)["state"], "paused");
    assert_eq!(call(&mut conn, r#"{"op":"resume"}"#)["state"], "running");
    // The VMM runs with no capabilities, cannot gain any, and makes only the system
    // calls its seccomp filter allows.
    let status = std::fs::read_to_string(format!("/proc/{}/status", vmm.id())).unwrap();
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("CapPrm:\t0000000000000000"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "a seccomp filter: {status}");

    // The guest reboots when its /init is done, which ends the VMM.
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(s) = vmm.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = vmm.kill();
            panic!(
                "the guest did not finish: {}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(&console).unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("Mounted root (erofs filesystem) readonly"),
        "{log}"
    );
    assert!(log.contains(&format!("marker: {marker}")), "{log}");
    assert!(log.contains("port: hyper.agent"), "{log}");
    assert!(
        log.contains("cpus: 2"),
        "both vCPUs came up (MP table): {log}"
    );
    assert!(!api.exists(), "the control socket is removed on exit");
}

#[test]
fn a_pod_runs_through_the_hyper_vmm_driver() {
    if !kvm_or_skip() {
        return;
    }
    let mut d = Daemon::start_with(&["--driver", "hyper-vmm", "--boot-timeout", "900"]);
    let info = d.json("GET", "/info", None);
    assert_eq!(info["Driver"], "hyper-vmm", "{info}");
    let out = out_ok(&d.hyperctl(&["info"]));
    assert!(out.contains("Driver: hyper-vmm"), "{out}");
    d.import_busybox();
    let out = d.hyperctl(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo hello from $(cat /proc/sys/kernel/ostype); exit 4",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(4),
        "stdout={stdout:?} stderr={:?}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    assert_eq!(stdout, "hello from Linux\n");
    common::assert_no_leftovers(&d);

    // The VMM outlives a daemon killed with SIGKILL; the new daemon re-attaches through
    // the same agent socket (the VMM reconnects) and the pod answers. The pod has a
    // host-directory volume (hyper-vmm's virtio-fs device on virtiofsd) and a block volume,
    // and writes its layer to the scratch disk (hyper-vmm's virtio-blk).
    let (code, body) = d.curl(
        "POST",
        "/volumes/create",
        Some(r#"{"Name":"vmmblk","Driver":"block","DriverOpts":{"size":"64M"}}"#),
    );
    assert_eq!(code, 201, "{body}");
    let host_dir = d.dir.path().join("shared");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("from-host"), "host to guest\n").unwrap();
    // It also serves the host directory on a published port (hyper-vmm's virtio-net on
    // passt), which answers through the daemon's kill -9.
    let web_port = common::free_port();
    let keep = serde_json::json!({
        "id": "keep",
        "volumes": [{"name": "b", "source": "vmmblk", "driver": "block"},
                    {"name": "h", "source": host_dir}],
        "containers": [{"image": "busybox",
                        "volumes": [{"volume": "b", "path": "/b"}, {"volume": "h", "path": "/h"}],
                        "command": ["sleep", "1000"]},
                       {"name": "web", "image": "busybox",
                        "volumes": [{"volume": "h", "path": "/h"}],
                        "command": ["httpd", "-f", "-p", "80", "-h", "/h"]}],
        "portmappings": [{"containerPort": 80, "hostPort": web_port, "hostIP": "127.0.0.1"}],
    });
    let (code, body) = d.curl("POST", "/pod/create", Some(&keep.to_string()));
    assert_eq!(code, 200, "{body}");
    out_ok(&d.hyperctl(&["start", "keep"]));
    let vm_pid = d.json("GET", "/pod/info?podName=keep", None)["vmPid"]
        .as_u64()
        .unwrap() as u32;
    d.kill9();
    assert!(common::pid_alive(vm_pid), "the VM outlives the daemon");
    assert_eq!(common::http_get(web_port, "/from-host"), "host to guest\n");
    d.restart();
    assert_eq!(
        out_ok(&d.hyperctl(&["exec", "keep", "echo", "still-here"])),
        "still-here"
    );
    let ports = out_ok(&d.hyperctl(&["ports", "keep"]));
    assert!(ports.contains(&format!("127.0.0.1:{web_port}")), "{ports}");
    assert_eq!(
        out_ok(&d.hyperctl(&[
            "exec",
            "keep",
            "sh",
            "-c",
            "echo on-disk > /b/f && sync && cat /b/f && echo layer > /l && cat /l \
             && cat /h/from-host && echo guest to host > /h/from-guest",
        ])),
        "on-disk\nlayer\nhost to guest"
    );
    assert_eq!(
        std::fs::read_to_string(host_dir.join("from-guest")).unwrap(),
        "guest to host\n"
    );
    // Pause and unpause go through the adopted VMM's control socket.
    out_ok(&d.hyperctl(&["pause", "keep"]));
    assert_eq!(
        d.json("GET", "/pod/info?podName=keep", None)["status"]["phase"],
        "paused"
    );
    let stat = std::fs::read_to_string(format!("/proc/{vm_pid}/stat")).unwrap();
    let state = stat.rsplit_once(')').unwrap().1.trim_start().chars().next();
    assert_ne!(state, Some('T'), "the VMM was stopped by a signal: {stat}");
    out_ok(&d.hyperctl(&["unpause", "keep"]));
    assert_eq!(
        out_ok(&d.hyperctl(&["exec", "keep", "echo", "thawed"])),
        "thawed"
    );
    out_ok(&d.hyperctl(&["stop", "-t", "1", "keep"]));
    common::wait_gone(vm_pid, "the adopted hyper-vmm after stop");
    // An unknown driver is refused at start.
    let bad = Command::new(env!("CARGO_BIN_EXE_hyperd"))
        .args(["--driver", "bochs", "--host"])
        .arg(d.dir.path().join("other.sock"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown VM driver"));
}
