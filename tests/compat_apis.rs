//! The Docker Flask API and the mimik mCM API through curl, against real pods and a real
//! registry: the seeds' response shapes field by field, their error shapes, and bad input
//! that changes nothing.
mod common;
use common::{out_ok, Daemon, Registry};
use serde_json::{json, Value};

fn curl_json(d: &Daemon, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (code, text) = d.curl(method, path, body);
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}")),
    )
}

fn setup() -> (Registry, Daemon, String) {
    let reg = Registry::start(None);
    let d = Daemon::start();
    let tar = common::busybox_tar(d.dir.path());
    out_ok(&d.hyperctl(&[
        "import",
        tar.to_str().unwrap(),
        "busybox",
        "-c",
        r#"CMD ["sh", "-c", "while true; do sleep 1; done"]"#,
    ]));
    let remote = format!("{}/flask/bb", reg.addr);
    out_ok(&d.hyperctl(&["push", "--from", "busybox", &format!("{remote}:latest")]));
    (reg, d, remote)
}

#[test]
fn docker_flask_api() {
    let (_reg, d, remote) = setup();
    // A free host port, published on every address as the Flask API does (nothing is
    // sent to it).
    let host_port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let create = json!({
        "image_name": "busybox", "mem_limit": "256m", "cpu_percent_limit": 50,
        "ports": {"80/tcp": host_port}, "environment": ["A=1"],
        "device_read_bps": [{"Path": "/dev/sda", "Rate": 10485760}],
        "device_write_iops": [{"Path": "/dev/sda", "Rate": 1000}],
    })
    .to_string();
    let (code, v) = curl_json(&d, "POST", "/container", Some(&create));
    assert_eq!(code, 201, "{v}");
    let (short, entry) = v
        .as_object()
        .unwrap()
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    assert_eq!(short.len(), 10);
    assert_eq!(entry["status"], "running");
    assert_eq!(entry["mem_limit"], 256.0);

    // The limits reached the VM: its memory, its disks' throttling.
    let pod = d.json("GET", "/list?item=pod", None)["podData"][0]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    // The port is published.
    let ports = d.json("GET", &format!("/pod/portmappings?podName={pod}"), None);
    assert_eq!(ports[0]["hostPort"], host_port, "{ports}");
    assert_eq!(ports[0]["containerPort"], 80, "{ports}");
    let pid = d.json("GET", &format!("/pod/info?podName={pod}"), None)["vmPid"]
        .as_u64()
        .unwrap();
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .replace('\0', " ");
    assert!(cmdline.contains("-m 256M"), "{cmdline}");
    assert!(
        cmdline.contains("throttling.bps-read=10485760")
            && cmdline.contains("throttling.iops-write=1000"),
        "{cmdline}"
    );
    // cpu_percent_limit: the VM process sits in a cgroup with half a CPU.
    let vm = d.json("GET", &format!("/pod/info?podName={pod}"), None)["vm"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = hyperd::vm::host::cpu_cgroup(&vm).expect("a cgroup cpu controller");
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|p| p == pid.to_string()), "{procs}");
    let quota = std::fs::read_to_string(dir.join("cpu.max"))
        .or_else(|_| std::fs::read_to_string(dir.join("cpu.cfs_quota_us")))
        .unwrap();
    assert!(quota.starts_with("50000"), "{quota}");

    // GET /container: the seed's fields, per short id.
    let (code, all) = curl_json(&d, "GET", "/container", None);
    assert_eq!(code, 200);
    let e = &all[&short];
    for field in ["cpu_percent", "mem_limit", "mem_max_usage", "mem_usage"] {
        assert!(e[field].is_number(), "{field}: {e}");
    }
    assert!(e["mem_usage"].as_f64().unwrap() > 0.0, "{e}");
    assert!(e["mem_max_usage"].as_f64().unwrap() >= e["mem_usage"].as_f64().unwrap());
    assert!(
        e["image_short_id"].as_str().unwrap().starts_with("sha256:")
            && e["image_short_id"].as_str().unwrap().len() == 17
    );
    assert!(
        e["image_tags"]
            .as_array()
            .unwrap()
            .contains(&json!("busybox:latest")),
        "{e}"
    );
    assert_eq!(e["short_id"], short.as_str());
    assert!(e["name"].is_string());
    assert_eq!(
        curl_json(&d, "GET", &format!("/container/{short}"), None).1[&short]["status"],
        "running"
    );

    // Bad input: the Flask error shape, and nothing created.
    for (body, want) in [
        (r#"{"mem_limit":"1g"}"#, "image_name"),
        (r#"{"image_name":"busybox","mem_limit":"2x"}"#, "mem_limit"),
        (
            r#"{"image_name":"busybox","cpu_percent_limit":500}"#,
            "cpu_percent_limit",
        ),
        ("{not json", "invalid JSON"),
    ] {
        let (code, v) = curl_json(&d, "POST", "/container", Some(body));
        assert_eq!(code, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{v}");
    }
    // A missing image is pulled first (from the loopback registry, which lacks it).
    let missing = json!({ "image_name": format!("{remote}-nosuch:1") }).to_string();
    let (code, v) = curl_json(&d, "POST", "/container", Some(&missing));
    assert_eq!(code, 404, "{v}");
    assert_eq!(
        curl_json(&d, "GET", "/container", None)
            .1
            .as_object()
            .unwrap()
            .len(),
        1
    );
    let (code, v) = curl_json(&d, "GET", "/container/nosuch", None);
    assert_eq!((code, v["error"].is_string()), (404, true));

    // Images: list, one, pull a list (default tag latest), update all, delete.
    let (_, images) = curl_json(&d, "GET", "/image", None);
    let (img_short, img) = images
        .as_object()
        .unwrap()
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    assert!(img_short.starts_with("sha256:") && img_short.len() == 17);
    assert!(img["created"].as_str().unwrap().ends_with('Z') && img["size"].as_u64().unwrap() > 0);
    assert!(
        img["tags"]
            .as_array()
            .unwrap()
            .contains(&json!("busybox:latest")),
        "{img}"
    );
    assert_eq!(
        curl_json(&d, "GET", &format!("/image/{img_short}"), None).0,
        200
    );
    assert_eq!(
        curl_json(&d, "DELETE", &format!("/image/{img_short}"), None).0,
        409,
        "in use"
    );
    let (code, pulled) = curl_json(
        &d,
        "POST",
        "/image",
        Some(&json!({ "image_name": [remote] }).to_string()),
    );
    assert_eq!(code, 200, "{pulled}");
    let tags = pulled.as_object().unwrap().values().next().unwrap()["tags"].clone();
    assert!(
        tags.as_array()
            .unwrap()
            .contains(&json!(format!("{remote}:latest"))),
        "{tags}"
    );
    let (code, up) = curl_json(&d, "GET", "/image/updateall", None);
    assert_eq!(code, 200);
    assert!(
        up["updated"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("{remote}:latest"))),
        "{up}"
    );
    assert_eq!(
        curl_json(&d, "POST", "/image", Some(r#"{"image_name":[]}"#)).0,
        400
    );

    // Stop, then remove.
    let (code, v) = curl_json(&d, "POST", &format!("/container/{short}/stop"), None);
    assert_eq!((code, v[&short]["status"].as_str()), (200, Some("exited")));
    assert_eq!(
        curl_json(&d, "DELETE", &format!("/container/{short}"), None).0,
        200
    );
    assert_eq!(curl_json(&d, "GET", "/container", None).1, json!({}));
    assert!(!dir.exists(), "the VM's cgroup goes with it");
    assert_eq!(curl_json(&d, "DELETE", "/image/nosuchimage", None).0, 404);
}

#[test]
fn mimik_mcm_api() {
    let (_reg, d, remote) = setup();
    // Images from a base64 archive and from a reference.
    let saved = d.dir.path().join("bb.tar");
    out_ok(&d.hyperctl(&["save", "-o", saved.to_str().unwrap(), "busybox"]));
    out_ok(&d.hyperctl(&["rmi", "busybox"]));
    out_ok(&d.hyperctl(&["rmi", &format!("{remote}:latest")]));
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&saved).unwrap());
    let body_file = d.dir.path().join("image.json");
    std::fs::write(&body_file, json!({ "base64Image": b64 }).to_string()).unwrap();
    let (code, text) = d.curl_with(
        "POST",
        "/images?mode=payload",
        None,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", body_file.display()),
        ],
    );
    let img: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(code, 201, "{img}");
    assert_eq!(img["name"], "busybox");
    assert!(img["id"].as_str().unwrap().starts_with("sha256:"));
    assert!(
        img["repoDigests"][0].is_array()
            && img["created"].is_u64()
            && img["size"].is_u64()
            && img["containers"] == 0,
        "{img}"
    );
    let (code, img2) = curl_json(
        &d,
        "POST",
        "/images",
        Some(&json!({ "url": format!("{remote}:latest") }).to_string()),
    );
    assert_eq!(code, 201, "{img2}");
    let (code, list) = curl_json(&d, "GET", "/images", None);
    assert_eq!(code, 200);
    assert!(!list["data"].as_array().unwrap().is_empty());
    for (body, path) in [
        (r#"{"base64Image":"!!"}"#, "/images"),
        ("{}", "/images"),
        (r#"{"url":"x"}"#, "/images?mode=bogus"),
    ] {
        let (code, v) = curl_json(&d, "POST", path, Some(body));
        assert_eq!(code, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], 400, "{v}");
    }

    // Containers: created, started, listed without env, stopped, removed.
    let (code, c) = curl_json(
        &d,
        "POST",
        "/containers",
        Some(r#"{"name":"m1","image":"busybox","env":["SECRET=s3cr3t","DROPPED"]}"#),
    );
    assert_eq!(code, 201, "{c}");
    assert_eq!(c["state"], "created");
    assert!(
        c.get("env").is_none() && !c.to_string().contains("s3cr3t"),
        "{c}"
    );
    let id = c["id"].as_str().unwrap().to_string();
    for key in ["id", "image", "imageId", "created", "state"] {
        assert!(c.get(key).is_some(), "{key}: {c}");
    }
    let (code, v) = curl_json(
        &d,
        "PUT",
        &format!("/containers/{id}"),
        Some(r#"{"action":"start"}"#),
    );
    assert_eq!(
        (code, v["data"]["state"].as_str()),
        (200, Some("running")),
        "{v}"
    );
    let env = out_ok(&d.hyperctl(&[
        "exec",
        "m1",
        "sh",
        "-c",
        "echo $SECRET; env | grep -c DROPPED || true",
    ]));
    assert_eq!(env, "s3cr3t\n0");
    let (_, list) = curl_json(&d, "GET", "/containers", None);
    assert_eq!(list["data"][0]["state"], "running");
    assert!(!list.to_string().contains("s3cr3t"));
    assert_eq!(
        curl_json(&d, "GET", "/images", None).1["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == img["id"])
            .unwrap()["containers"],
        1
    );
    let (code, v) = curl_json(
        &d,
        "PUT",
        &format!("/containers/{id}"),
        Some(r#"{"action":"jump"}"#),
    );
    assert_eq!((code, &v["error"]["code"]), (400, &json!(400)));
    let (code, v) = curl_json(
        &d,
        "PUT",
        &format!("/containers/{id}"),
        Some(r#"{"action":"stop"}"#),
    );
    assert_eq!(
        (code, v["data"]["state"].as_str()),
        (200, Some("created")),
        "{v}"
    );
    let (code, v) = curl_json(&d, "DELETE", &format!("/containers/{id}"), None);
    assert_eq!((code, v["state"].as_str()), (200, Some("removing")));
    assert_eq!(
        curl_json(&d, "DELETE", &format!("/containers/{id}"), None).0,
        404
    );
    assert_eq!(
        curl_json(
            &d,
            "PUT",
            "/containers/nosuch",
            Some(r#"{"action":"start"}"#)
        )
        .0,
        404
    );
    assert_eq!(
        curl_json(&d, "POST", "/containers", Some(r#"{"name":"x"}"#)).0,
        400
    );
    assert_eq!(
        curl_json(&d, "GET", "/containers", None).1,
        json!({ "data": [] })
    );
    let (code, v) = curl_json(&d, "DELETE", "/images/nosuch", None);
    assert_eq!((code, &v["error"]["code"]), (404, &json!(404)));
    let (code, v) = curl_json(
        &d,
        "DELETE",
        &format!("/images/{}", img["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["id"], img["id"]);
}
