//! End to end, with real micro-VMs: a busybox pod's output and exit code through hyperctl,
//! stop and delete of a running pod leaving nothing behind, and bad input refused.
mod common;
use common::{assert_no_leftovers, pid_alive, tree, wait_gone, Daemon};

#[test]
fn run_prints_output_and_returns_exit_code() {
    let d = Daemon::start();
    d.import_busybox();
    let out = d.hyperctl(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout={stdout:?} stderr={stderr:?}"
    );
    assert_eq!(stdout, "out\n");
    assert_eq!(stderr, "err\n");
    // --rm removed the pod; nothing of it is listed or left on disk.
    let list = d.json("GET", "/list?item=pod", None);
    assert_eq!(list["podData"].as_array().unwrap().len(), 0, "{list}");
    assert_no_leftovers(&d);

    // The container runs in its own PID namespace, as PID 1, with the pod's hostname,
    // and stdin reaches it.
    let out = d.hyperctl_with_stdin(
        &[
            "run",
            "-i",
            "--name",
            "ns-check",
            "busybox",
            "sh",
            "-c",
            "echo $$; hostname; cat",
        ],
        Some(b"from stdin\n"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\nns-check\nfrom stdin\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    let info = d.json("GET", "/pod/info?podName=ns-check", None);
    assert_eq!(info["status"]["phase"], "succeeded");
    assert_eq!(
        info["status"]["containerStatus"][0]["terminated"]["exitCode"],
        0
    );
    let cid = info["status"]["containerStatus"][0]["containerID"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.json("GET", &format!("/exitcode?container={cid}"), None)["ExitCode"],
        0
    );

    // The state is private: the root 0700, the store, specs and logs 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&d.root), 0o700);
    assert_eq!(mode(&d.root.join("state.redb")), 0o600);
    let files = tree(&d.root.join("pods"));
    let specs: Vec<_> = files.iter().filter(|p| p.ends_with("spec.json")).collect();
    let logs: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert!(!specs.is_empty() && !logs.is_empty(), "{files:?}");
    for f in specs.iter().chain(&logs) {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
}

#[test]
fn stop_and_delete_leave_nothing_behind() {
    let d = Daemon::start();
    d.import_busybox();
    let out = d.hyperctl(&["run", "-d", "--name", "sleeper", "busybox", "sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let info = d.json("GET", &format!("/pod/info?podName={pod_id}"), None);
    assert_eq!(info["status"]["phase"], "running");
    let vm = info["vm"].as_str().unwrap().to_string();
    let pid = info["vmPid"].as_u64().unwrap() as u32;
    assert!(pid_alive(pid));
    let vm_dir = d.root.join("vm").join(&vm);
    assert!(vm_dir.join("console.log").exists());
    let vms = d.json("GET", "/list?item=vm", None);
    assert!(vms["vmData"][0].as_str().unwrap().starts_with(&vm), "{vms}");

    let (code, body) = d.curl(
        "POST",
        &format!("/v1.24/pod/stop?podId={pod_id}&stopVM=yes&time=1"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    wait_gone(pid, "the VM process after stop");
    assert!(
        !vm_dir.exists(),
        "VM directory left behind: {:?}",
        tree(&vm_dir)
    );
    let info = d.json("GET", &format!("/pod/info?podName={pod_id}"), None);
    assert_eq!(info["status"]["phase"], "failed");
    assert_eq!(
        info["status"]["containerStatus"][0]["terminated"]["exitCode"],
        137
    );
    // Stopping again is a conflict, not a crash.
    assert_eq!(
        d.curl("POST", &format!("/pod/stop?podId={pod_id}"), None).0,
        409
    );

    // stopVM=no keeps the VM, idle, and the next start runs the containers in it again.
    let out = d.hyperctl(&["run", "-d", "busybox", "sleep", "1000"]);
    let kept = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let info = d.json("GET", &format!("/pod/info?podName={kept}"), None);
    let kept_pid = info["vmPid"].as_u64().unwrap() as u32;
    let (code, body) = d.curl(
        "POST",
        &format!("/pod/stop?podId={kept}&stopVM=no&time=1"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let info = d.json("GET", &format!("/pod/info?podName={kept}"), None);
    assert_eq!(info["status"]["phase"], "failed", "{info}");
    assert_eq!(
        info["status"]["containerStatus"][0]["terminated"]["exitCode"],
        137
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(pid_alive(kept_pid), "the kept VM went away");
    let (code, body) = d.curl("POST", &format!("/pod/start?podId={kept}"), None);
    assert_eq!(code, 200, "{body}");
    let info = d.json("GET", &format!("/pod/info?podName={kept}"), None);
    assert_eq!(info["status"]["phase"], "running", "{info}");
    assert_eq!(info["vmPid"].as_u64().unwrap() as u32, kept_pid, "a new VM");
    let (code, body) = d.curl("DELETE", &format!("/pod?podId={kept}"), None);
    assert_eq!(code, 200, "{body}");
    wait_gone(kept_pid, "the kept VM after removal");

    // A running pod deleted directly also goes with its VM.
    let out = d.hyperctl(&["run", "-d", "busybox", "sleep", "1000"]);
    let pod2 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let pid2 = d.json("GET", &format!("/pod/info?podName={pod2}"), None)["vmPid"]
        .as_u64()
        .unwrap() as u32;
    assert!(pid_alive(pid2));
    for p in [&pod_id, &pod2] {
        let (code, body) = d.curl("DELETE", &format!("/pod?podId={p}"), None);
        assert_eq!(code, 200, "{body}");
    }
    assert!(!pid_alive(pid2));
    assert_eq!(
        d.json("GET", "/list?item=pod", None)["podData"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        d.json("GET", "/list?item=vm", None)["vmData"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_no_leftovers(&d);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let d = Daemon::start();
    d.import_busybox();
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("POST", "/pod/create", Some("{\"containers\": [{"), 400),
        ("POST", "/pod/create", Some("{\"containers\": []}"), 400),
        (
            "POST",
            "/pod/create",
            Some(r#"{"containers":[{"image":"nosuchimage"}]}"#),
            404,
        ),
        (
            "POST",
            "/pod/create",
            Some(r#"{"containers":[{"image":"busybox"}]}"#),
            400,
        ), // no command anywhere
        (
            "POST",
            "/pod/create",
            Some(
                r#"{"containers":[{"image":"busybox","command":["true"]}],"resource":{"vcpu":0}}"#,
            ),
            400,
        ),
        ("POST", "/pod/start?podId=pod-doesnotexist", None, 404),
        ("POST", "/pod/stop?podId=pod-doesnotexist", None, 404),
        ("DELETE", "/pod?podId=pod-doesnotexist", None, 404),
        ("GET", "/pod/info?podName=pod-doesnotexist", None, 404),
        ("GET", "/exitcode?container=doesnotexist", None, 404),
        ("POST", "/attach?container=doesnotexist", None, 404),
        ("POST", "/pod/start", None, 400),
        ("GET", "/list?item=bogus", None, 400),
        ("GET", "/no/such/route", None, 404),
    ];
    for (method, path, body, want) in cases {
        let (code, text) = d.curl(method, path, *body);
        assert_eq!(code, *want, "{method} {path} {body:?} -> {text}");
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("error body is JSON: {text}"));
        assert!(
            !v["message"].as_str().unwrap_or_default().is_empty(),
            "{text}"
        );
    }
    assert_eq!(
        d.json("GET", "/list?item=pod", None)["podData"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_no_leftovers(&d);

    // hyperctl says what is wrong and fails.
    let out = d.hyperctl(&["run", "nosuchimage", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such image"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The socket is 0660 and the system routes answer, also under a version prefix.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777,
        0o660
    );
    assert_eq!(d.curl("GET", "/_ping", None), (200, "OK".to_string()));
    let info = d.json("GET", "/v1.24/info", None);
    assert!(
        info["Driver"].as_str().unwrap().starts_with("qemu-"),
        "{info}"
    );
    assert_eq!(info["Images"], 1);
    assert_eq!(
        d.json("GET", "/version", None)["Version"],
        env!("CARGO_PKG_VERSION")
    );
}
