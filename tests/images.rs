//! Images end to end against a real registry (Debian's docker-registry on loopback):
//! push/pull round trips, progress streams, layer reuse, a multi-layer image pushed by
//! skopeo, auth with htpasswd, a tampered blob, load/save, hostile archives, and a pod
//! from a pulled image.
mod common;
use common::{
    json_lines, out_ok, skopeo_push, tar_of, tree, write_oci_layout, Compression, Daemon, Registry,
};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Three layers: busybox (gzip), a file (zstd), a whiteout (plain).
fn multi_layer_layout(dir: &Path, busybox_tar: &[u8]) -> String {
    let layers = vec![
        (busybox_tar.to_vec(), Compression::Gzip),
        (tar_of(&[("hello.txt", b"layer two\n")]), Compression::Zstd),
        (tar_of(&[("bin/.wh.vi", b"")]), Compression::None),
    ];
    write_oci_layout(
        dir,
        "multi",
        &layers,
        json!({ "Cmd": ["cat", "/hello.txt"], "Env": ["PATH=/bin", "LAYERS=3"] }),
        true,
    )
}

#[test]
fn push_pull_round_trip_reuse_and_a_pod_from_a_pulled_image() {
    let reg = Registry::start(None);
    let d = Daemon::start();
    d.import_busybox();
    let remote = format!("{}/test/busybox:1", reg.addr);
    let pushed = out_ok(&d.hyperctl(&["push", "--from", "busybox", &remote]));
    assert!(pushed.starts_with("sha256:"), "{pushed}");
    let local = d.json("GET", "/images/get", None);
    let ids = out_ok(&d.hyperctl(&["images", "-q"]));
    let id = ids.lines().next().unwrap().to_string();

    assert_eq!(id.len(), 12, "{local}");

    // Remove every local name: the next pull has to fetch everything.
    for name in ["busybox", &remote] {
        out_ok(&d.hyperctl(&["rmi", name]));
    }
    assert_eq!(
        tree(&d.root.join("image/blobs/sha256")).len(),
        0,
        "blobs pruned"
    );

    // Pull by tag: well-formed progress lines, ending with the image id.
    let (code, text) = d.curl(
        "POST",
        &format!("/image/create?imageName={}/test/busybox&tag=1", reg.addr),
        None,
    );
    assert_eq!(code, 200, "{text}");
    let lines = json_lines(&text);
    assert!(lines.iter().all(|l| l.get("error").is_none()), "{text}");
    assert!(
        lines.iter().any(|l| l["status"] == "Downloading"
            && l["progressDetail"]["total"].as_u64().unwrap_or(0) > 0),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l["status"] == "Pull complete"),
        "{text}"
    );
    let last = lines.last().unwrap();
    assert!(
        last["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("sha256:{id}")),
        "{last}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["status"] == format!("Digest: {pushed}")),
        "push and pull agree on the digest: {text}"
    );

    // The same pull on a hijacked connection (`Upgrade: tcp`, as hyperctl asks): 101,
    // then the same JSON lines on the raw stream, closed after the last.
    out_ok(&d.hyperctl(&["rmi", &remote]));
    let (head, text) = common::hijacked(
        &d.socket,
        "POST",
        &format!("/image/create?imageName={}/test/busybox&tag=1", reg.addr),
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lines = json_lines(&text);
    assert!(lines.iter().all(|l| l.get("error").is_none()), "{text}");
    assert!(
        lines.iter().any(|l| l["status"] == "Downloading"
            && l["progressDetail"]["total"].as_u64().unwrap_or(0) > 0),
        "{text}"
    );
    assert!(
        lines.last().unwrap()["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("sha256:{id}")),
        "{text}"
    );

    // Pull by digest reuses the layers and lands on the same image.
    let by_digest = format!("{}/test/busybox@{pushed}", reg.addr);
    let (code, text) = d.curl(
        "POST",
        &format!("/image/create?imageName={}", by_digest.replace('@', "%40")),
        None,
    );
    assert_eq!(code, 200, "{text}");
    let lines = json_lines(&text);
    assert!(
        lines.iter().any(|l| l["status"] == "Already exists"),
        "{text}"
    );
    assert!(
        !lines.iter().any(|l| l["status"] == "Downloading"),
        "{text}"
    );
    assert!(lines.last().unwrap()["id"].as_str().unwrap().contains(&id));

    // A pod runs from the pulled image.
    let out = d.hyperctl(&["run", "--rm", &remote, "sh", "-c", "echo from-the-registry"]);
    assert_eq!(out_ok(&out), "from-the-registry");

    // An image a pod uses is not removed unless forced.
    let spec = json!({ "id": "user", "containers": [{ "image": remote, "command": ["true"] }] })
        .to_string();
    d.json("POST", "/pod/create", Some(&spec));
    let (code, text) = d.curl("DELETE", &format!("/image?imageId={id}"), None);
    assert_eq!(code, 409, "{text}");
    assert_eq!(d.curl("DELETE", "/pod?podId=user", None).0, 200);

    // Unknown image and unknown tag: 404 before any stream; bad references: 400.
    assert_eq!(
        d.curl(
            "POST",
            &format!("/image/create?imageName={}/nope&tag=1", reg.addr),
            None
        )
        .0,
        404
    );
    assert_eq!(
        d.curl(
            "POST",
            &format!("/image/create?imageName={}/test/busybox&tag=nope", reg.addr),
            None
        )
        .0,
        404
    );
    assert_eq!(
        d.curl("POST", "/image/create?imageName=Not%20Valid", None)
            .0,
        400
    );
    assert_eq!(d.curl("POST", "/image/push?remote=nosuch:1", None).0, 404);
}

#[test]
fn multi_layer_image_pushed_by_skopeo() {
    let reg = Registry::start(None);
    let d = Daemon::start();
    let layout = tempfile::tempdir().unwrap();
    let bb = std::fs::read(common::busybox_tar(layout.path())).unwrap();
    let md = multi_layer_layout(&layout.path().join("oci"), &bb);
    skopeo_push(
        &layout.path().join("oci"),
        "multi",
        &format!("{}/multi:1", reg.addr),
    );
    let id = out_ok(&d.hyperctl(&["pull", "-q", &format!("{}/multi:1", reg.addr)]));
    assert!(id.starts_with("sha256:"), "{id}");
    let out = d.hyperctl(&["run", "--rm", &format!("{}/multi:1", reg.addr)]);
    assert_eq!(
        out_ok(&out),
        "layer two",
        "the image's Cmd from its config, the zstd layer's file"
    );
    let out = d.hyperctl(&[
        "run",
        "--rm",
        &format!("{}/multi:1", reg.addr),
        "sh",
        "-c",
        "test -e /bin/vi && echo vi-present || echo vi-whited-out; echo $LAYERS",
    ]);
    assert_eq!(out_ok(&out), "vi-whited-out\n3");
    // The tag points at a multi-platform index: hyperd took linux/amd64 from it, and a
    // pull by the index's digest lands on the same image.
    let again = out_ok(&d.hyperctl(&["pull", "-q", &format!("{}/multi@{md}", reg.addr)]));
    assert_eq!(again, id);
}

#[test]
fn auth_with_htpasswd() {
    let (user, pass) = ("alice", "s3cret-Pa55");
    let reg = Registry::start(Some((user, pass)));
    let d = Daemon::start();
    d.import_busybox();
    let remote = format!("{}/private/busybox:1", reg.addr);

    // Without credentials: refused with 401-style errors, nothing stored.
    let out = d.hyperctl(&["push", "--from", "busybox", &remote]);
    assert!(!out.status.success());
    assert_eq!(
        d.curl("POST", &format!("/image/create?imageName={remote}"), None)
            .0,
        401
    );
    let bad =
        json!({ "username": user, "password": "wrong", "serveraddress": reg.addr }).to_string();
    let (code, text) = d.curl("POST", "/auth", Some(&bad));
    assert_eq!(code, 401, "{text}");
    assert!(!d.root.join("auth.json").exists());

    // X-Registry-Auth on one request.
    use base64::Engine as _;
    let header = base64::engine::general_purpose::URL_SAFE.encode(
        json!({ "username": user, "password": pass, "serveraddress": reg.addr }).to_string(),
    );
    let (code, text) = d.curl_with(
        "POST",
        &format!(
            "/image/push?remote={}/private/busybox&tag=1&imageId=busybox",
            reg.addr
        ),
        None,
        &["-H", &format!("X-Registry-Auth: {header}")],
    );
    assert_eq!(code, 200, "{text}");
    assert!(
        json_lines(&text)
            .iter()
            .any(|l| l["aux"]["Digest"].is_string()),
        "{text}"
    );

    // Login: checked, stored 0600, used by later pulls; the password never logged.
    let out = d.hyperctl_with_stdin(
        &["login", "-u", user, "--password-stdin", &reg.addr],
        Some(format!("{pass}\n").as_bytes()),
    );
    assert_eq!(out_ok(&out), "Login Succeeded");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(d.root.join("auth.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    out_ok(&d.hyperctl(&["rmi", &remote]));
    let id = out_ok(&d.hyperctl(&["pull", "-q", &remote]));
    assert!(id.starts_with("sha256:"));
    assert!(!d.log().contains(pass), "password in the daemon log");

    // An undecodable X-Registry-Auth is anonymous: the registry's 401, not a 400.
    out_ok(&d.hyperctl(&["rmi", &remote]));
    let (code, text) = d.curl_with(
        "POST",
        &format!("/image/create?imageName={remote}"),
        None,
        &["-H", "X-Registry-Auth: !!!not-base64"],
    );
    assert_eq!(code, 401, "{text}");

    // Logout forgets the login: pulls are anonymous again.
    let out = out_ok(&d.hyperctl(&["logout", &reg.addr]));
    assert!(out.contains("Removing login credentials"), "{out}");
    assert_eq!(
        d.curl("POST", &format!("/image/create?imageName={remote}"), None)
            .0,
        401
    );
    assert!(!d.hyperctl(&["logout", &reg.addr]).status.success());
}

#[test]
fn tampered_blob_is_rejected_and_leaves_no_image() {
    let reg = Registry::start(None);
    let d = Daemon::start();
    d.import_busybox();
    let remote = format!("{}/tampered:1", reg.addr);
    out_ok(&d.hyperctl(&["push", "--from", "busybox", &remote]));
    let layer_digest = {
        let v = d.json("GET", "/images/get", None);
        assert!(!v["imagesList"].as_array().unwrap().is_empty());
        let manifest: Value = serde_json::from_str(&String::from_utf8_lossy(
            &Command::new("curl")
                .arg("-s")
                .arg("-H")
                .arg("Accept: application/vnd.oci.image.manifest.v1+json")
                .arg(format!("http://{}/v2/tampered/manifests/1", reg.addr))
                .output()
                .unwrap()
                .stdout,
        ))
        .unwrap();
        manifest["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for name in ["busybox", &remote] {
        out_ok(&d.hyperctl(&["rmi", name]));
    }
    // Same size, other bytes: only the digest tells.
    let f = reg.blob_file(&layer_digest);
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&f, bytes).unwrap();
    let (code, text) = d.curl("POST", &format!("/image/create?imageName={remote}"), None);
    assert_eq!(code, 200, "the stream starts before the layers");
    let lines = json_lines(&text);
    let err = lines.last().unwrap()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("digest"), "{text}");
    assert_eq!(
        d.json("GET", "/images/get", None)["imagesList"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert!(!d
        .root
        .join("image/blobs/sha256")
        .join(layer_digest.trim_start_matches("sha256:"))
        .exists());
    let out = d.hyperctl(&["pull", &remote]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("digest"));
}

#[test]
fn load_save_round_trip_and_hostile_archives() {
    let d = Daemon::start_with(&["--max-layer-bytes", "8000000"]);
    d.import_busybox();
    let before = d.json("GET", "/images/get", None)["imagesList"][0]
        .as_str()
        .unwrap()
        .to_string();
    let saved = d.dir.path().join("busybox.tar");
    out_ok(&d.hyperctl(&["save", "-o", saved.to_str().unwrap(), "busybox"]));
    out_ok(&d.hyperctl(&["rmi", "busybox"]));
    let out = out_ok(&d.hyperctl(&["load", "-i", saved.to_str().unwrap()]));
    assert_eq!(out, "Loaded image: busybox:latest");
    assert_eq!(
        d.json("GET", "/images/get", None)["imagesList"][0]
            .as_str()
            .unwrap(),
        before,
        "same id after the round trip"
    );
    assert_eq!(
        out_ok(&d.hyperctl(&["run", "--rm", "busybox", "echo", "loaded"])),
        "loaded"
    );

    // Hostile tarballs: clear 400s, nothing written outside the store, no image added.
    let write = |name: &str, data: &[u8]| {
        let p = d.dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    let mut symlink_escape = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    symlink_escape
        .append_link(&mut h, "etc", d.dir.path())
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    symlink_escape
        .append_data(&mut h, "etc/evil-symlink", &b"evil"[..])
        .unwrap();
    let bomb = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        let mut t = tar::Builder::new(&mut e);
        let mut h = tar::Header::new_gnu();
        h.set_size(64 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        struct Zeros(usize, Vec<u8>);
        impl std::io::Read for Zeros {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0).min(self.1.len());
                buf[..n].copy_from_slice(&self.1[..n]);
                self.0 -= n;
                Ok(n)
            }
        }
        t.append_data(&mut h, "bomb", Zeros(64 << 20, zeros))
            .unwrap();
        t.finish().unwrap();
        drop(t);
        e.finish().unwrap()
    };
    assert!(bomb.len() < 1 << 20);
    let cases = [
        (
            "escape.tar",
            tar_of(&[("../evil-dotdot", b"evil")]),
            "escapes",
        ),
        (
            "symlink.tar",
            symlink_escape.into_inner().unwrap(),
            "symbolic link",
        ),
        ("bomb.tar.gz", bomb, "larger than the limit"),
    ];
    for (name, data, why) in &cases {
        let p = write(name, data);
        let arg = format!("@{}", p.display());
        for path in ["/image/create?fromSrc=-&imageName=hostile", "/image/load"] {
            let (code, text) = d.curl_with(
                "POST",
                path,
                None,
                &[
                    "--data-binary",
                    &arg,
                    "-H",
                    "Content-Type: application/x-tar",
                ],
            );
            assert_eq!(code, 400, "{name} via {path}: {text}");
            assert!(text.contains(why), "{name} via {path}: {text}");
        }
    }
    for evil in ["evil-dotdot", "evil-symlink"] {
        let found: Vec<_> = tree(d.dir.path())
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|f| f == evil))
            .collect();
        assert!(found.is_empty(), "{found:?}");
    }
    assert!(!d.dir.path().join("root/image/evil-dotdot").exists());
    assert_eq!(
        d.json("GET", "/images/get", None)["imagesList"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        tree(&d.root.join("image/tmp")).is_empty(),
        "{:?}",
        tree(&d.root.join("image/tmp"))
    );
}
