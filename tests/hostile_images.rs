//! Hostile images and registries against a real hyperd, through every path an archive
//! reaches the unpacker by: `hyperctl import`, `/image/create?fromSrc=-`, `/image/load`,
//! a registry pull (hyperd's, Flask's and mCM's), mCM `base64Image` and mCM `url`.
//! The layer plants a symlink over a directory it declared with mode 06777, pointing at
//! a host file and at a host FIFO; afterwards both are exactly as before and the daemon
//! answers. Then registries that lie (a blob longer than its descriptor, an endless
//! manifest), and the private state directory after a restart.
mod common;
use common::{json_lines, out_ok, write_oci_layout, Compression, Daemon, Registry};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything a test can observe of a host file.
#[derive(Debug, PartialEq)]
struct Observed {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: i64,
    atime: i64,
    content: Option<Vec<u8>>,
}

fn observe(p: &Path) -> Observed {
    let m = std::fs::symlink_metadata(p).unwrap();
    Observed {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        atime: m.atime(),
        content: m.is_file().then(|| std::fs::read(p).unwrap()),
    }
}

/// The review's C1 layer: `x` (06777), then `x -> victim`; `p` (06777), then
/// `p -> fifo`; then a file.
fn evil_layer(victim: &Path, fifo: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, target) in [("x", victim), ("p", fifo)] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o6777);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, name, &[][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, name, target).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, "any", &b"hi"[..]).unwrap();
    b.into_inner().unwrap()
}

/// A tar of a directory's files (an OCI layout as `docker load` takes it).
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

/// Serves `body` over HTTP on a loopback port for every request, until dropped.
fn serve_bytes(body: Vec<u8>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            });
        }
    });
    addr
}

/// Checks that `path` made an image, then removes every image, so that the next path
/// unpacks the same layer again instead of finding it stored.
fn made_image_then_clear(d: &Daemon, path: &str) {
    let list = d.json("GET", "/images/get", None);
    let lines: Vec<String> = list["imagesList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(!lines.is_empty(), "{path} made no image");
    for l in lines {
        let id = l.rsplit(':').nth(2).unwrap().to_string();
        let _ = d.curl("DELETE", &format!("/image?imageId={id}&force=yes"), None);
    }
    assert_eq!(
        d.json("GET", "/images/get", None)["imagesList"],
        json!([]),
        "{path}"
    );
}

struct Host {
    _dir: tempfile::TempDir,
    victim: PathBuf,
    fifo: PathBuf,
    before: (Observed, Observed),
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"host data").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o640)).unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let before = (observe(&victim), observe(&fifo));
        Host {
            _dir: dir,
            victim,
            fifo,
            before,
        }
    }

    fn check(&self, d: &Daemon, path: &str) {
        assert_eq!(
            observe(&self.victim),
            self.before.0,
            "{path} touched the host file"
        );
        assert_eq!(
            observe(&self.fifo),
            self.before.1,
            "{path} touched the host FIFO"
        );
        assert_eq!(d.curl("GET", "/info", None).0, 200, "{path}: daemon gone");
        made_image_then_clear(d, path);
    }
}

#[test]
fn a_planted_symlink_never_reaches_the_host_on_any_path() {
    let d = Daemon::start();
    let host = Host::new();
    let layer = evil_layer(&host.victim, &host.fifo);
    let work = tempfile::tempdir().unwrap();
    let layer_file = work.path().join("layer.tar");
    std::fs::write(&layer_file, &layer).unwrap();

    // /image/create?fromSrc=- (Docker's import); first, with curl's deadline, so that an
    // unpacker that opens the FIFO fails here instead of hanging the test.
    let (code, body) = d.curl_with(
        "POST",
        "/image/create?fromSrc=-&imageName=evil&tag=fromsrc",
        None,
        &[
            "-m",
            "60",
            "--data-binary",
            &format!("@{}", layer_file.display()),
        ],
    );
    assert_eq!(code, 200, "{body}");
    host.check(&d, "fromSrc");

    // hyperctl import.
    let out = d.hyperctl(&["import", layer_file.to_str().unwrap(), "evil:import"]);
    out_ok(&out);
    host.check(&d, "import");

    // An OCI layout of the layer, as an archive for /image/load and mCM, and in a
    // registry for pulls.
    let layout = work.path().join("layout");
    write_oci_layout(
        &layout,
        "1",
        &[(layer.clone(), Compression::Gzip)],
        json!({ "Cmd": ["/any"] }),
        false,
    );
    let archive = work.path().join("evil-archive.tar");
    std::fs::write(&archive, tar_dir(&layout)).unwrap();
    let (code, body) = d.curl_with(
        "POST",
        "/image/load",
        None,
        &[
            "-m",
            "60",
            "--data-binary",
            &format!("@{}", archive.display()),
        ],
    );
    assert_eq!(code, 200, "{body}");
    host.check(&d, "load");

    let reg = Registry::start(None);
    common::skopeo_push(&layout, "1", &format!("{}/evil:1", reg.addr));
    let (code, body) = d.curl(
        "POST",
        &format!("/image/create?fromImage={}/evil&tag=1", reg.addr),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        !json_lines(&body).iter().any(|l| l.get("error").is_some()),
        "{body}"
    );
    host.check(&d, "registry pull");

    // The Flask pull and the mCM pull by reference.
    let remote = format!("{}/evil:1", reg.addr);
    let (code, body) = d.curl(
        "POST",
        "/image",
        Some(&json!({ "image_name": [remote] }).to_string()),
    );
    assert_eq!(code, 200, "{body}");
    host.check(&d, "Flask pull");
    let (code, body) = d.curl(
        "POST",
        "/images",
        Some(&json!({ "url": remote }).to_string()),
    );
    assert_eq!(code, 201, "{body}");
    host.check(&d, "mCM pull");

    // mCM base64Image: the archive in the request body.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&archive).unwrap());
    let body_file = work.path().join("b64.json");
    std::fs::write(&body_file, json!({ "base64Image": b64 }).to_string()).unwrap();
    let (code, body) = d.curl_with(
        "POST",
        "/images?mode=payload",
        None,
        &[
            "-m",
            "60",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", body_file.display()),
        ],
    );
    assert_eq!(code, 201, "{body}");
    host.check(&d, "mCM base64Image");

    // mCM url: the archive served from loopback.
    let addr = serve_bytes(std::fs::read(&archive).unwrap());
    let (code, body) = d.curl(
        "POST",
        "/images?mode=payload",
        Some(&json!({ "url": format!("http://{addr}/evil.tar") }).to_string()),
    );
    assert_eq!(code, 201, "{body}");
    host.check(&d, "mCM url");
}

#[test]
fn payload_urls_are_bounded() {
    let d = Daemon::start();
    for (url, want) in [
        ("file:///etc/passwd", 400),
        ("http://169.254.169.254/latest/meta-data/", 400),
        ("http://user:hunter2@[fe80::1]/x.tar", 400),
    ] {
        let (code, body) = d.curl(
            "POST",
            "/images?mode=payload",
            Some(&json!({ "url": url }).to_string()),
        );
        assert_eq!(code, want, "{url}: {body}");
        assert!(!body.contains("hunter2"), "{body}");
    }
    assert!(!d.log().contains("hunter2"));
    // A redirect to another host is not followed.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:9/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let (code, body) = d.curl(
        "POST",
        "/images?mode=payload",
        Some(&json!({ "url": format!("http://127.0.0.1:{port}/x") }).to_string()),
    );
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("another host"), "{body}");
}

/// A registry that lies: serves `/v2/`, then what `answer` says for each path.
fn lying_registry(answer: fn(&str, &mut std::net::TcpStream)) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    return;
                }
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                if path == "/v2/" {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                } else {
                    answer(&path, &mut s);
                }
            });
        }
    });
    addr
}

/// Writes chunks of zeros for up to 60 s or until the client hangs up.
fn endless(s: &mut std::net::TcpStream, head: &str) {
    let _ = s.write_all(head.as_bytes());
    let chunk = vec![b' '; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if write!(s, "{:x}\r\n", chunk.len()).is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            return;
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

#[test]
fn lying_registries_fail_the_pull_within_the_caps() {
    let d = Daemon::start();
    let rss_before = rss_kib(d.pid());

    // An endless manifest.
    let addr = lying_registry(|_, s| {
        endless(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
    });
    let (code, body) = d.curl(
        "POST",
        &format!("/image/create?fromImage={addr}/x&tag=1"),
        None,
    );
    assert!(code >= 400, "{code} {body}");
    assert!(body.contains("larger than"), "{body}");

    // A blob longer than its descriptor says.
    let addr = lying_registry(|path, s| {
        let config = CONFIG.as_bytes();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len() },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", "1".repeat(64)), "size": 1000 }],
        })
        .to_string();
        let send = |s: &mut std::net::TcpStream, ct: &str, b: &[u8]| {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len());
            let _ = s.write_all(b);
        };
        if path.contains("/manifests/") {
            send(
                s,
                "application/vnd.oci.image.manifest.v1+json",
                manifest.as_bytes(),
            );
        } else if path.ends_with(&sha256(config)) {
            send(s, "application/octet-stream", config);
        } else {
            endless(s, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
        }
    });
    let (code, body) = d.curl(
        "POST",
        &format!("/image/create?fromImage={addr}/x&tag=1"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let lines = json_lines(&body);
    let err = lines
        .iter()
        .find_map(|l| l["error"].as_str())
        .unwrap_or_else(|| panic!("no error in {body}"));
    assert!(err.contains("more than the 1000 bytes"), "{err}");

    // Neither attempt kept anything, and memory stayed well under what was sent.
    let blobs_tmp = common::tree(&d.root.join("image/blobs/tmp"));
    assert!(blobs_tmp.is_empty(), "{blobs_tmp:?}");
    assert_eq!(d.json("GET", "/images/get", None)["imagesList"], json!([]));
    let grown = rss_kib(d.pid()).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "daemon grew by {grown} KiB");
}

#[test]
fn an_open_state_directory_is_tightened_at_start() {
    let mut d = Daemon::start();
    d.stop();
    let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    set(&d.root, 0o755).unwrap();
    set(&d.root.join("state.redb"), 0o644).unwrap();
    std::fs::write(d.root.join("auth.json"), b"{}").unwrap();
    set(&d.root.join("auth.json"), 0o644).unwrap();
    d.restart();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&d.root), 0o700);
    assert_eq!(mode(&d.root.join("state.redb")), 0o600);
    assert_eq!(mode(&d.root.join("auth.json")), 0o600);
    assert!(d.log().contains("tightened"), "{}", d.log());
}
