//! Pods keep and share data (qemu driver, one virtiofsd per VM): two containers share a
//! host directory and a pod-local volume; a host file keeps its checksum; a read-only
//! root refuses writes while a volume takes them; a named volume outlives its pod and a
//! daemon restart (docker CLI and a plain API client); pod files from `file://` and
//! base64 arrive with their checksum, owner and mode; hostile sources and targets are
//! refused with 400; a symbolic link in a volume never reaches the host's files; a pod
//! keeps its volume through a `kill -9` of the daemon; a 128 MiB VM writes 512 MiB into
//! its root (the scratch disk); a block volume is held read-write by one pod at a time
//! (409 for the second); an id-mapped share keeps the guest's root from owning host
//! files; nothing is left behind.
mod common;
use common::{out_ok, Daemon};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// sha256 of a file, as `sha256sum` prints it.
fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    out_ok(&o).split_whitespace().next().unwrap().to_string()
}

/// The virtiofsd processes of the daemon's VMs now.
fn virtiofsd_pids(d: &Daemon) -> Vec<u32> {
    common::helper_pids(d, "virtiofsd.pid")
        .into_iter()
        .filter(|pid| common::pid_alive(*pid))
        .collect()
}

/// Runs `run` until its standard output contains `needle` (up to 60 s).
fn wait_output(what: &str, needle: &str, run: impl Fn() -> std::process::Output) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&run().stdout).contains(needle) {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Host mounts whose mount point or source names `dir`.
fn host_mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Waits until `path` exists on the host (up to 60 s).
/// Waits until the file at `path` holds `want`: the guest's `echo` creates the file before
/// it writes, so its existence alone says nothing about its content.
fn wait_file_content(path: &Path, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = std::fs::read_to_string(path).unwrap_or_default();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never held {want:?} (last: {got:?})",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `hyperctl exec CONTAINER sh -c CMD`.
fn exec(d: &Daemon, container: &str, cmd: &str) -> std::process::Output {
    d.hyperctl(&["exec", container, "sh", "-c", cmd])
}

#[test]
fn pods_keep_and_share_data() {
    let mut d = Daemon::start();
    d.import_busybox();
    let host = tempfile::tempdir().unwrap();
    let data = host.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("from-host.txt"), "written by the host\n").unwrap();
    // A symbolic link to the host's /etc: in the guest it resolves in the container.
    std::os::unix::fs::symlink("/etc", data.join("escape")).unwrap();
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let file = host.path().join("blob.bin");
    std::fs::write(&file, &blob).unwrap();
    let cfg = host.path().join("app.conf");
    std::fs::write(&cfg, "port=8080\n").unwrap();

    // Two containers: `reader` reads what the host wrote and what `writer` writes to the
    // pod-local volume; `writer` writes into the host directory; the host file mapped
    // read-only keeps its checksum; the root of `reader` is read-only.
    let spec = serde_json::json!({
        "id": "shared",
        "volumes": [
            {"name": "host", "source": data, "driver": "vfs"},
            {"name": "scratch", "source": ""},
            {"name": "blob", "source": file, "readOnly": true},
        ],
        "files": [
            {"name": "conf", "uri": format!("file://{}", cfg.display())},
            {"name": "inline", "encoding": "base64", "content": "aGVsbG8gZmlsZXMK"},
        ],
        "containers": [
            {"name": "writer", "image": "busybox",
             "volumes": [{"volume": "host", "path": "/data"}, {"volume": "scratch", "path": "/scratch"}],
             "command": ["sh", "-c", "echo from-writer > /data/from-writer.txt; echo pod-local > /scratch/note; sleep 1000"]},
            {"name": "reader", "image": "busybox", "readonly": true,
             "files": [
                {"filename": "conf", "path": "/etc/app.conf", "perm": "0640", "user": "nobody", "group": "nogroup"},
                {"filename": "inline", "path": "/opt/inline.txt", "perm": "0755"},
             ],
             "volumes": [{"volume": "host", "path": "/data", "readOnly": true},
                         {"volume": "scratch", "path": "/scratch"},
                         {"volume": "blob", "path": "/srv/blob.bin"}],
             "command": ["sh", "-c", "sleep 1000"]},
        ],
    });
    let (code, body) = d.curl("POST", "/pod/create", Some(&spec.to_string()));
    assert_eq!(code, 200, "{body}");
    let (code, body) = d.curl("POST", "/pod/start?podId=shared", None);
    assert_eq!(code, 200, "{body}");

    // The writer's file reaches the host; the host's file reaches the reader.
    wait_file_content(&data.join("from-writer.txt"), "from-writer\n");
    assert_eq!(
        out_ok(&exec(&d, "reader", "cat /data/from-host.txt")),
        "written by the host"
    );
    // The pod-local volume is shared by both containers and lives on the host's disk.
    wait_output("reader never saw the pod-local file", "pod-local", || {
        exec(&d, "reader", "cat /scratch/note 2>/dev/null")
    });
    let local: Vec<_> = common::tree(&d.root.join("pods"))
        .into_iter()
        .filter(|p| p.ends_with("volumes/scratch/note"))
        .collect();
    assert_eq!(
        local.len(),
        1,
        "the pod-local volume is in the pod's directory"
    );
    // The host file, read-only, with the host's checksum.
    let sum = out_ok(&exec(&d, "reader", "sha256sum /srv/blob.bin"));
    assert_eq!(sum.split_whitespace().next().unwrap(), sha256(&file));
    let o = exec(&d, "reader", "echo x >> /srv/blob.bin");
    assert!(!o.status.success(), "a read-only file volume took a write");
    // Read-only root: writes refused; the writable volume takes them; the read-only
    // mount of the host directory refuses them.
    let o = exec(&d, "reader", "touch /root-write");
    assert!(!o.status.success(), "the read-only root took a write");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out_ok(&exec(&d, "reader", "echo ok > /scratch/from-reader"));
    assert!(!exec(&d, "reader", "touch /data/nope").status.success());
    assert!(!data.join("nope").exists());
    // Pod files: from the host (file://) with owner and mode, and base64.
    let o = out_ok(&exec(
        &d,
        "reader",
        "stat -c '%U %G %a' /etc/app.conf; cat /etc/app.conf",
    ));
    assert_eq!(o, "nobody nogroup 640\nport=8080");
    let o = out_ok(&exec(
        &d,
        "reader",
        "stat -c '%U %a' /opt/inline.txt; cat /opt/inline.txt",
    ));
    assert_eq!(o, "root 755\nhello files");
    // A symbolic link in the volume resolves inside the guest, never to the host's /etc.
    let o = exec(&d, "reader", "cat /data/escape/hostname");
    let host_hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert!(
        !o.status.success() || !String::from_utf8_lossy(&o.stdout).contains(host_hostname.trim()),
        "the link reached the host's /etc"
    );

    // A kill -9 of the daemon: the VM and its virtiofsd go on; the next daemon adopts the
    // pod, and its volume still carries writes both ways.
    let before = virtiofsd_pids(&d);
    assert_eq!(before.len(), 1, "one virtiofsd for the pod's VM");
    d.kill9();
    d.restart();
    assert_eq!(virtiofsd_pids(&d), before);
    out_ok(&exec(&d, "writer", "echo after-restart > /data/after.txt"));
    assert_eq!(
        std::fs::read_to_string(data.join("after.txt")).unwrap(),
        "after-restart\n"
    );
    // The host's mount table never saw a volume (the binds live in virtiofsd's namespace).
    assert!(
        host_mounts_under(host.path()).is_empty(),
        "{:?}",
        host_mounts_under(host.path())
    );

    out_ok(&d.hyperctl(&["rm", "shared"]));
    for pid in before {
        common::wait_gone(pid, "virtiofsd");
    }
    assert!(
        data.join("from-writer.txt").exists(),
        "removing the pod kept the host's files"
    );
    assert!(data.join("from-host.txt").exists());

    // Hostile sources and targets: 400, nothing created.
    let link_to_proc = host.path().join("to-proc");
    std::os::unix::fs::symlink("/proc/self", &link_to_proc).unwrap();
    let bad = |volume: serde_json::Value, path: &str| {
        serde_json::json!({
            "volumes": [volume],
            "containers": [{"image": "busybox", "volumes": [{"volume": "v", "path": path}]}],
        })
        .to_string()
    };
    for (spec, why) in [
        (
            bad(
                serde_json::json!({"name": "v", "source": "/tmp/../proc"}),
                "/d",
            ),
            "..",
        ),
        (
            bad(serde_json::json!({"name": "v", "source": data}), "/proc/x"),
            "over /proc",
        ),
        (
            bad(serde_json::json!({"name": "v", "source": data}), "/dev"),
            "over /dev",
        ),
        (
            bad(
                serde_json::json!({"name": "v", "source": link_to_proc}),
                "/d",
            ),
            "link to /proc",
        ),
        (
            bad(serde_json::json!({"name": "v", "source": d.root}), "/d"),
            "the daemon's root",
        ),
        (
            bad(serde_json::json!({"name": "v", "source": "/sys"}), "/d"),
            "/sys",
        ),
    ] {
        let (code, body) = d.curl("POST", "/pod/create", Some(&spec));
        let (code, body) = if code == 200 {
            // Sources are checked when the VM is built: the start is refused.
            let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["ID"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let r = d.curl("POST", &format!("/pod/start?podId={id}"), None);
            out_ok(&d.hyperctl(&["rm", &id]));
            r
        } else {
            (code, body)
        };
        assert_eq!(code, 400, "{why}: {body}");
    }

    // Named volumes: the docker CLI writes one, the pod goes, the daemon restarts, a plain
    // API client's pod reads it back.
    let config = tempfile::tempdir().unwrap();
    out_ok(&d.docker(config.path(), &["volume", "create", "keep"]));
    out_ok(&d.docker(
        config.path(),
        &[
            "run",
            "--rm",
            "--read-only",
            "-v",
            "keep:/keep",
            "busybox",
            "sh",
            "-c",
            "echo kept > /keep/value",
        ],
    ));
    let ls = out_ok(&d.docker(config.path(), &["volume", "ls", "-q"]));
    assert!(ls.lines().any(|l| l == "keep"), "{ls}");
    d.restart();
    let ls = out_ok(&d.docker(config.path(), &["volume", "ls", "-q"]));
    assert!(ls.lines().any(|l| l == "keep"), "after a restart: {ls}");
    let spec = serde_json::json!({
        "id": "reads-keep",
        "volumes": [{"name": "k", "source": "keep", "driver": "local"}],
        "containers": [{"image": "busybox", "volumes": [{"volume": "k", "path": "/k"}],
                        "command": ["cat", "/k/value"]}],
    });
    let (code, body) = d.curl("POST", "/pod/create", Some(&spec.to_string()));
    assert_eq!(code, 200, "{body}");
    out_ok(&d.hyperctl(&["start", "reads-keep"]));
    wait_output("the named volume's value never showed", "kept", || {
        d.hyperctl(&["logs", "reads-keep"])
    });
    // In use: removal refused with 409; once the pod is gone, removed.
    let (code, body) = d.curl("DELETE", "/volumes/keep", None);
    assert_eq!(code, 409, "{body}");
    out_ok(&d.hyperctl(&["rm", "reads-keep"]));
    out_ok(&d.docker(config.path(), &["volume", "rm", "keep"]));
    assert!(!out_ok(&d.docker(config.path(), &["volume", "ls", "-q"]))
        .lines()
        .any(|l| l == "keep"));

    // An id-mapped share: the guest's root is host uid 200000 there. What it creates
    // belongs to 200000 (a set-uid bit it sets is 200000's, never root's), and a host
    // file of root's stays out of its reach.
    let mapped = host.path().join("mapped");
    std::fs::create_dir(&mapped).unwrap();
    std::os::unix::fs::chown(&mapped, Some(200000), Some(200000)).unwrap();
    std::fs::write(mapped.join("roots"), "host root's\n").unwrap();
    let spec = serde_json::json!({
        "id": "mapped",
        "idMap": {"hostUid": 200000, "hostGid": 200000},
        "volumes": [{"name": "m", "source": mapped}],
        "containers": [{"image": "busybox", "volumes": [{"volume": "m", "path": "/m"}],
            "command": ["sh", "-c",
              "cp /bin/busybox /m/tool && chmod 4755 /m/tool && echo made; \
               chmod 4755 /m/roots 2>/dev/null || echo chmod-refused; \
               echo x >> /m/roots 2>/dev/null || echo write-refused; stat -c '%u %a' /m/tool"]}],
    });
    let (code, body) = d.curl("POST", "/pod/create", Some(&spec.to_string()));
    assert_eq!(code, 200, "{body}");
    out_ok(&d.hyperctl(&["start", "mapped"]));
    wait_output("the id-mapped pod never finished", "4755", || {
        d.hyperctl(&["logs", "mapped"])
    });
    let log = out_ok(&d.hyperctl(&["logs", "mapped"]));
    assert!(
        log.contains("made") && log.contains("chmod-refused") && log.contains("write-refused"),
        "{log}"
    );
    assert!(
        log.contains("0 4755"),
        "inside, the guest's root owns it: {log}"
    );
    use std::os::unix::fs::MetadataExt;
    let tool = std::fs::metadata(mapped.join("tool")).unwrap();
    assert_eq!(
        (tool.uid(), tool.gid()),
        (200000, 200000),
        "host ids of the guest's root"
    );
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    let roots = std::fs::metadata(mapped.join("roots")).unwrap();
    assert_eq!(
        (roots.uid(), roots.mode() & 0o7777),
        (0, 0o644),
        "root's file untouched"
    );
    assert_eq!(
        std::fs::read_to_string(mapped.join("roots")).unwrap(),
        "host root's\n"
    );
    out_ok(&d.hyperctl(&["rm", "mapped"]));

    // A block volume (an ext4 disk of its own): one pod holds it read-write, a second pod
    // that asks for it is refused with 409 and nothing starts; once the first is gone the
    // data is there for the next.
    let (code, body) = d.curl(
        "POST",
        "/volumes/create",
        Some(r#"{"Name":"blk","Driver":"block","DriverOpts":{"size":"256M"}}"#),
    );
    assert_eq!(code, 201, "{body}");
    out_ok(&d.docker(
        config.path(),
        &[
            "run",
            "-d",
            "--name",
            "b1",
            "-v",
            "blk:/b",
            // A directory volume too: both kinds in one VM (qemu's microvm has eight
            // virtio devices; hyperd fits the image slots around them).
            "-v",
            &format!("{}:/d", data.display()),
            "busybox",
            "sh",
            "-c",
            "echo on-the-block-volume > /b/f; sync; cat /d/from-host.txt; sleep 1000",
        ],
    ));
    let second = serde_json::json!({
        "id": "b2",
        "volumes": [{"name": "b", "source": "blk", "driver": "block"}],
        "containers": [{"image": "busybox", "volumes": [{"volume": "b", "path": "/b"}],
                        "command": ["cat", "/b/f"]}],
    });
    let (code, body) = d.curl("POST", "/pod/create", Some(&second.to_string()));
    assert_eq!(code, 200, "{body}");
    let vms_before = common::tree(&d.root.join("vm")).len();
    let (code, body) = d.curl("POST", "/pod/start?podId=b2", None);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("blk"), "{body}");
    assert_eq!(
        common::tree(&d.root.join("vm")).len(),
        vms_before,
        "nothing booted"
    );
    // b1 runs in the background: its write and sync are done once it has printed the
    // host file (which it reads after the sync); only then may it go.
    wait_output(
        "b1 never got past its write and sync",
        "written by the host",
        || d.docker(config.path(), &["logs", "b1"]),
    );
    out_ok(&d.docker(config.path(), &["rm", "-f", "b1"]));
    out_ok(&d.hyperctl(&["start", "b2"]));
    wait_output(
        "the block volume's data never showed",
        "on-the-block-volume",
        || d.hyperctl(&["logs", "b2"]),
    );
    out_ok(&d.hyperctl(&["rm", "b2"]));
    out_ok(&d.docker(config.path(), &["volume", "rm", "blk"]));

    // Docker's --tmpfs: memory of the guest's at that path.
    let o = out_ok(&d.docker(
        config.path(),
        &[
            "run",
            "--rm",
            "--read-only",
            "--tmpfs",
            "/mem",
            "busybox",
            "sh",
            "-c",
            "grep ' /mem ' /proc/mounts && echo x > /mem/f && cat /mem/f",
        ],
    ));
    assert!(o.contains("tmpfs /mem tmpfs") && o.ends_with("x"), "{o}");

    // A pod file from an http URL (a server on this machine's loopback).
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("motd"), "fetched over http\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
            "--directory",
        ])
        .arg(web.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the http server never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
    let spec = serde_json::json!({
        "id": "fetched",
        "files": [{"name": "motd", "uri": format!("http://127.0.0.1:{port}/motd")}],
        "containers": [{"image": "busybox", "command": ["cat", "/etc/motd"],
                        "files": [{"filename": "motd", "path": "/etc/motd"}]}],
    });
    let (code, body) = d.curl("POST", "/pod/create", Some(&spec.to_string()));
    assert_eq!(code, 200, "{body}");
    out_ok(&d.hyperctl(&["start", "fetched"]));
    wait_output("the fetched file never showed", "fetched over http", || {
        d.hyperctl(&["logs", "fetched"])
    });
    let _ = server.kill();
    let _ = server.wait();
    out_ok(&d.hyperctl(&["rm", "fetched"]));

    // hyperctl: -v with a host directory, --read-only.
    let o = d.hyperctl(&[
        "run",
        "--rm",
        "--read-only",
        "-v",
        &format!("{}:/d", data.display()),
        "busybox",
        "sh",
        "-c",
        "cat /d/from-host.txt; touch /x 2>/dev/null || echo read-only",
    ]);
    assert_eq!(out_ok(&o), "written by the host\nread-only");

    // The writable layer is on the pod's scratch disk, not in guest RAM: a 128 MiB VM
    // writes and reads back 512 MiB in its root.
    let o = d.hyperctl(&[
        "run", "--rm", "--memory", "128", "busybox", "sh", "-c",
        "dd if=/dev/zero of=/big bs=1M count=512 2>/dev/null && sync && wc -c < /big && md5sum /big",
    ]);
    let zeros = Command::new("sh")
        .args(["-c", "head -c 536870912 /dev/zero | md5sum"])
        .output()
        .unwrap();
    let zeros = out_ok(&zeros)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let o = out_ok(&o);
    assert!(o.starts_with("536870912\n"), "{o}");
    assert!(o.contains(&zeros), "{o} (want {zeros})");

    // Nothing left: no pod or VM files, no virtiofsd, no mounts.
    common::assert_no_leftovers(&d);
    assert!(virtiofsd_pids(&d).is_empty());
    assert!(host_mounts_under(&d.root).is_empty());
}
