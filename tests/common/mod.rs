//! Test harness: a real hyperd on a temporary socket and state directory, the real
//! hyperctl and curl as clients, and a busybox image built from busybox-static.
#![allow(dead_code, unreachable_pub)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub root: PathBuf,
    child: Option<Child>,
    /// The options it was started with, kept for restarts (an operator restarts a daemon
    /// with its configuration).
    extra: Vec<String>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The guest kernel and initramfs must exist: the README's test command builds them.
fn check_guest_assets() {
    let cache = hyperd::config::default_cache_dir();
    for f in ["vmlinux", "initrd.img"] {
        let p = std::env::var_os(if f == "vmlinux" {
            "HYPERD_KERNEL"
        } else {
            "HYPERD_INITRD"
        })
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join(f));
        assert!(
            p.exists(),
            "{} is missing: run scripts/test.sh (or kernel-config/build.sh and guest-agent/build-initrd.sh) first",
            p.display()
        );
    }
}

/// A binary of another workspace crate (`hyper-vmm`, `hyperctl`), built next to the test's
/// own: `cargo test --workspace` (scripts/test.sh) builds every crate's binaries first.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --workspace --bins` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Starts hyperd on `socket` and `root`, logging (appending) to `log`. Tests run with the
/// warm pool off (the CI machine's two cores are for the tests' own VMs) unless `extra`
/// names `--pool`.
fn spawn_hyperd(socket: &Path, root: &Path, extra: &[String], log: &Path) -> Child {
    let pool_off: &[&str] = if extra.iter().any(|a| a == "--pool") {
        &[]
    } else {
        &["--pool", "0"]
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_hyperd"))
        .arg("--host")
        .arg(socket)
        .arg("--root")
        .arg(root)
        .args(pool_off)
        .args(extra)
        .env("HYPERD_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("hyperd starts")
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Daemon {
        check_guest_assets();
        let dir = tempfile::Builder::new()
            .prefix("hyperd-test-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("hyper.sock");
        let root = dir.path().join("root");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn_hyperd(&socket, &root, &extra, &dir.path().join("hyperd.log"));
        let d = Daemon {
            dir,
            socket,
            root,
            child: Some(child),
            extra,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "hyperd did not listen: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hyperd.log")).unwrap_or_default()
    }

    pub fn hyperctl(&self, args: &[&str]) -> Output {
        self.hyperctl_with_stdin(args, None)
    }

    pub fn hyperctl_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new(workspace_binary("hyperctl"))
            .arg("-H")
            .arg(&self.socket)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(data) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(data).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// The docker CLI against the daemon, with its own client config directory.
    #[allow(dead_code)]
    pub fn docker(&self, config: &Path, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", config)
            .env_remove("DOCKER_CONTEXT")
            .output()
            .unwrap()
    }

    /// `curl --unix-socket`: returns (HTTP status, body).
    pub fn curl(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.curl_with(method, path, body, &[])
    }

    /// curl with extra arguments (headers, `--data-binary @file`).
    pub fn curl_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        extra: &[&str],
    ) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(extra);
        cmd.args(["-sS", "--unix-socket"]).arg(&self.socket).args([
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        cmd.arg(format!("http://hyperd{path}"));
        let out = cmd.output().expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    pub fn json(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let (code, text) = self.curl(method, path, body);
        assert!((200..300).contains(&code), "{method} {path}: {code} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// Imports busybox (from busybox-static) as `busybox:latest`.
    pub fn import_busybox(&self) {
        let tar = busybox_tar(self.dir.path());
        let out = self.hyperctl(&["import", tar.to_str().unwrap(), "busybox"]);
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// kill -9 the daemon (its VMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a daemon again on the same socket and state directory.
    pub fn restart(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.socket);
        let child = spawn_hyperd(
            &self.socket,
            &self.root,
            &self.extra,
            &self.dir.path().join("hyperd.log"),
        );
        self.child = Some(child);
        // Recovery asks each adopted guest for its status before the daemon listens; a
        // slow guest (hyper-vmm on emulated ring 0) may take minutes to answer.
        let deadline = Instant::now() + Duration::from_secs(600);
        while !self.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "hyperd did not listen again: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills every VM process whose command line names `dir` (a test's state directory).
pub fn kill_vms_under(dir: &Path) {
    let needle = dir.to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle)
            && String::from_utf8_lossy(&cmdline).contains("qemu")
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Pods outlive the daemon by design: remove them, then make sure no VM is left.
        if self.child.is_some() {
            let (_, text) = self.curl("GET", "/list?item=pod", None);
            let pods: Vec<String> = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["podData"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|p| {
                    p.as_str()
                        .and_then(|s| s.split(':').next())
                        .map(str::to_string)
                })
                .collect();
            for p in pods {
                let _ = self.curl("DELETE", &format!("/pod?podId={p}"), None);
            }
        }
        self.stop();
        kill_vms_under(self.dir.path());
        if std::thread::panicking() {
            eprintln!("--- hyperd log ---\n{}", self.log());
        }
    }
}

pub fn busybox_tar(dir: &Path) -> PathBuf {
    let out = Command::new(repo().join("scripts/busybox-rootfs.sh"))
        .output()
        .expect("busybox-rootfs.sh runs");
    assert!(
        out.status.success(),
        "busybox-rootfs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("busybox.tar");
    std::fs::write(&path, out.stdout).unwrap();
    path
}

pub fn pid_alive(pid: u32) -> bool {
    hyperd::vm::process_alive(pid)
}

/// Files and directories under `dir`, recursively (for leak checks).
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(tree(&e.path()));
            }
        }
    }
    out
}

/// A real registry (Debian's docker-registry) on a loopback port, optionally behind
/// htpasswd basic auth.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub addr: String,
    child: Child,
}

impl Registry {
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("hyperd-registry-")
            .tempdir()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apache2-utils) runs");
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: hyperd-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry runs (apt-get install docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { dir, addr, child }
    }

    /// The file holding a blob in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses a stream of JSON lines, asserting each is a JSON object.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "not an object: {l}");
            v
        })
        .collect()
}

/// How a layer of [`write_oci_layout`] is compressed.
#[derive(Clone, Copy)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Writes an OCI image layout with one image, tagged `tag`, made of `layers`
/// (uncompressed tars and how to compress each) and the container `config`; with
/// `multi_platform`, behind an image index listing it for arm64 and amd64. Returns the
/// digest the tag points at (the manifest's, or the index's).
pub fn write_oci_layout(
    dir: &Path,
    tag: &str,
    layers: &[(Vec<u8>, Compression)],
    config: serde_json::Value,
    multi_platform: bool,
) -> String {
    use serde_json::json;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let d = sha256(b);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), b).unwrap();
        d
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, c) in layers {
        diff_ids.push(sha256(tar));
        let (blob, mt) = match c {
            Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut e, tar).unwrap();
                (
                    e.finish().unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        descs.push(json!({ "mediaType": mt, "digest": put(&blob), "size": blob.len() }));
    }
    let config = json!({
        "architecture": "amd64", "os": "linux", "created": "2026-01-02T03:04:05Z",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&config), "size": config.len() },
        "layers": descs,
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let md = put(&manifest);
    let image = json!({ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.clone(), "size": manifest.len() });

    let index = json!({ "schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
        "annotations": { "org.opencontainers.image.ref.name": tag } }] });
    if multi_platform {
        // A multi-platform index: another platform first, then linux/amd64.
        let mut arm = image.clone();
        arm["platform"] = json!({ "os": "linux", "architecture": "arm64" });
        let mut amd = image.clone();
        amd["platform"] = json!({ "os": "linux", "architecture": "amd64" });
        let nested = serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [arm, amd] })).unwrap();
        let nd = put(&nested);
        let index = json!({ "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": nd, "size": nested.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag } }] });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        return nd;
    }

    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
}

/// A tar holding regular files.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Written raw: set_path would refuse the hostile names some tests need.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A request that asks for a hijacked connection (`Upgrade: tcp`) on the daemon's
/// socket: the answer's head, and everything after it until the daemon closes.
#[allow(dead_code)]
pub fn hijacked(socket: &Path, method: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: hyperd\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

/// `skopeo copy` from an OCI layout to a plain-HTTP registry.
pub fn skopeo_push(layout: &Path, tag: &str, dest: &str) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
            "--all",
        ])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The trimmed stdout of a command that must have succeeded.
pub fn out_ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status={:?} stdout={} stderr={}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The recorded helper processes (`passt.pid`, `virtiofsd.pid`) of the daemon's VMs.
#[allow(dead_code)]
pub fn helper_pids(d: &Daemon, pid_file: &str) -> Vec<u32> {
    tree(&d.root.join("vm"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == pid_file))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Asserts that the daemon's root holds no pod files, no VM directories and no sockets.
pub fn assert_no_leftovers(d: &Daemon) {
    for dir in ["pods", "vm"] {
        let left = tree(&d.root.join(dir));
        assert!(left.is_empty(), "left in {dir}: {left:?}");
    }
    let socks: Vec<_> = tree(&d.root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sock"))
        .collect();
    assert!(socks.is_empty(), "sockets left: {socks:?}");
    // No VM monitor or helper of the daemon's is still running (they may take a moment
    // to exit after their VM's directory went).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = helper_processes(d);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Live (not zombie) VM monitors and helpers (qemu, hyper-vmm, passt, virtiofsd) that
/// belong to the daemon: its children, or processes whose command line names its root.
pub fn helper_processes(d: &Daemon) -> Vec<String> {
    let root = d.root.display().to_string();
    let daemon = d.child.as_ref().map(Child::id);
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm may hold spaces: the fields after it follow the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|x| x.1).unwrap_or("");
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if state == "Z" {
            continue;
        }
        let helper = ["qemu-system", "hyper-vmm", "passt", "virtiofsd"]
            .iter()
            .any(|h| comm.starts_with(&h[..h.len().min(15)]));
        if !helper {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if Some(ppid) == daemon || cmdline.contains(&root) {
            found.push(format!("{pid} {cmdline}"));
        }
    }
    found
}

/// Waits (up to 30 s) for a process to be gone; `what` names it in the failure.
pub fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) still alive");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asks qemu's QMP socket for the VM's run state (`running`, `paused`, ...).
#[allow(dead_code)]
pub fn qmp_status(sock: &Path) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("QMP socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut answer = |cmd: Option<&str>| -> serde_json::Value {
        if let Some(cmd) = cmd {
            writeln!(s, r#"{{"execute":"{cmd}"}}"#).unwrap();
        }
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v.get("event").is_none() {
                return v;
            }
        }
    };
    answer(None);
    answer(Some("qmp_capabilities"));
    answer(Some("query-status"))["return"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A free TCP port on 127.0.0.1 (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from 127.0.0.1:`port` until it answers 200 (up to 60 s); the body.
pub fn http_get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            use std::io::{Read, Write};
            write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })();
        match attempt {
            Ok(t) if t.starts_with("HTTP/1.") && t.contains(" 200 ") => {
                return t.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("").into()
            }
            Ok(t) => last = t,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("127.0.0.1:{port}{path} did not answer: {last}");
}
