//! Pods beyond the first run, with real micro-VMs: exec (output, exit code, stdin, a tty
//! through a pty), logs after exit, signals, pause/unpause, two containers in one VM.
mod common;
use common::{json_lines, out_ok, Daemon};
use std::process::Command;
use std::time::{Duration, Instant};

fn wait_phase(d: &Daemon, pod: &str, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = d.json("GET", &format!("/pod/info?podName={pod}"), None);
        if info["status"]["phase"] == phase {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pod {pod} never became {phase}: {info}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn exec_logs_signals_and_pause() {
    let d = Daemon::start();
    d.import_busybox();
    let script =
        "trap 'echo got-usr1' USR1; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done";
    out_ok(&d.hyperctl(&["run", "-d", "--name", "web", "busybox", "sh", "-c", script]));

    // exec joins the container: its PID namespace (PID 1 is the container's shell), its
    // hostname; its output, stdin and exit code are its own.
    let out = d.hyperctl(&[
        "exec",
        "web",
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; hostname; echo oops >&2; exit 5",
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("sh -c trap"), "{stdout}");
    assert!(stdout.ends_with("web\n"), "{stdout}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    let out = d.hyperctl_with_stdin(&["exec", "-i", "web", "tr", "a-z", "A-Z"], Some(b"shout\n"));
    assert_eq!(out_ok(&out), "SHOUT");

    // A tty through a real pty: the process sees a terminal, and output comes raw.
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} -H {} exec -t web sh -c 'tty; stty size'",
            common::workspace_binary("hyperctl").display(),
            d.socket.display()
        ))
        .arg("/dev/null")
        .env("COLUMNS", "100")
        .env("LINES", "40")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(out.status.success(), "{text}");

    // Through the API: exec create, exec start detached, exit code by exec id.
    let v = d.json(
        "POST",
        "/exec/create",
        Some(r#"{"container":"web","command":["sh","-c","exit 7"]}"#),
    );
    let exec = v["ID"].as_str().unwrap().to_string();
    d.json("POST", &format!("/exec/start?exec={exec}&detach=1"), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, text) = d.curl("GET", &format!("/exitcode?exec={exec}"), None);
        if code == 200 {
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&text).unwrap()["ExitCode"],
                7
            );
            break;
        }
        assert_eq!(code, 409, "{text}");
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        d.curl("POST", "/exec/start?exec=nosuch&detach=1", None).0,
        404
    );
    assert_eq!(
        d.curl(
            "POST",
            "/exec/create",
            Some(r#"{"container":"web","command":[]}"#)
        )
        .0,
        400
    );

    // Stats come from the guest; labels are set, guarded, overridden.
    let stats = d.json("GET", "/pod/stats?podId=web", None);
    assert!(
        stats["cpu"]["usage"]["total"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        stats["memory"]["limit"].as_u64().unwrap() > 32 << 20,
        "{stats}"
    );
    let v = d.json("POST", "/pod/labels?podId=web", Some(r#"{"tier":"front"}"#));
    assert_eq!(v["labels"]["tier"], "front");
    assert_eq!(
        d.curl("POST", "/pod/labels?podId=web", Some(r#"{"tier":"back"}"#))
            .0,
        409
    );
    d.json(
        "POST",
        "/pod/labels?podId=web&override=yes",
        Some(r#"{"tier":"back"}"#),
    );
    assert_eq!(
        d.json("GET", "/pod/info?podName=web", None)["labels"]["tier"],
        "back"
    );
    assert_eq!(d.curl("POST", "/pod/labels?podId=web", Some("[1]")).0, 400);

    // A signal the process handles.
    out_ok(&d.hyperctl(&["kill", "-s", "USR1", "web"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !out_ok(&d.hyperctl(&["logs", "web"])).contains("got-usr1") {
        assert!(Instant::now() < deadline, "USR1 not handled");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        d.curl(
            "POST",
            "/container/kill?container=web-busybox-0&signal=BOGUS",
            None
        )
        .0,
        400
    );

    // Pause freezes the VM: no ticks while paused, exec refused; unpause resumes.
    out_ok(&d.hyperctl(&["pause", "web"]));
    wait_phase(&d, "web", "paused");
    // Paused through the VM's monitor (QMP `stop`), not by stopping its process: the
    // process is not in the stopped state, and qemu itself says paused.
    let vm_pid = d.json("GET", "/pod/info?podName=web", None)["vmPid"]
        .as_u64()
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{vm_pid}/stat")).unwrap();
    let state = stat.rsplit_once(')').unwrap().1.trim_start().chars().next();
    assert_ne!(
        state,
        Some('T'),
        "the VM process was stopped by a signal: {stat}"
    );
    let vm_dir = d.root.join("vm").join(
        d.json("GET", "/pod/info?podName=web", None)["vm"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(common::qmp_status(&vm_dir.join("qmp.sock")), "paused");
    let before = out_ok(&d.hyperctl(&["logs", "web"])).lines().count();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        out_ok(&d.hyperctl(&["logs", "web"])).lines().count(),
        before
    );
    assert_eq!(
        d.curl(
            "POST",
            "/exec/create",
            Some(r#"{"container":"web","command":["true"]}"#)
        )
        .0,
        409
    );
    assert_eq!(d.curl("POST", "/pod/pause?podId=web", None).0, 409);
    out_ok(&d.hyperctl(&["unpause", "web"]));
    wait_phase(&d, "web", "running");
    let deadline = Instant::now() + Duration::from_secs(30);
    while out_ok(&d.hyperctl(&["logs", "web"])).lines().count() <= before {
        assert!(Instant::now() < deadline, "no output after unpause");
        std::thread::sleep(Duration::from_millis(200));
    }

    // KILL ends it; logs stay readable after the exit, with tail and timestamps.
    out_ok(&d.hyperctl(&["kill", "web"]));
    wait_phase(&d, "web", "failed");
    let info = d.json("GET", "/container/info?container=web-busybox-0", None);
    assert_eq!(info["status"]["terminated"]["exitCode"], 137, "{info}");
    let last = out_ok(&d.hyperctl(&["logs", "--tail", "1", "-t", "web"]));
    assert_eq!(last.lines().count(), 1);
    let (ts, rest) = last.split_once(' ').unwrap();
    assert!(hyperd::image::parse_rfc3339(ts).is_some(), "{last}");
    assert!(rest.starts_with("tick ") || rest == "got-usr1", "{last}");
    let (code, text) = d.curl(
        "GET",
        "/container/logs?container=web-busybox-0&stdout=1&tail=all",
        None,
    );
    assert_eq!(code, 200);
    assert!(text.contains("tick 0"), "{text}");
    assert_eq!(
        d.curl(
            "GET",
            "/container/logs?container=web-busybox-0&tail=x",
            None
        )
        .0,
        400
    );
    assert_eq!(
        d.curl("GET", "/container/logs?container=nosuch", None).0,
        404
    );
    let _ = json_lines;
}

#[test]
fn two_containers_share_one_vm() {
    let d = Daemon::start();
    d.import_busybox();
    let spec = serde_json::json!({
        "id": "duo",
        "containers": [
            { "name": "a", "image": "busybox", "command": ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; echo a > /tmp/mine; sleep 1; ls /tmp"] },
            { "name": "b", "image": "busybox", "command": ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; sleep 1; ls /tmp"] },
        ],
    })
    .to_string();
    d.json("POST", "/pod/create", Some(&spec));
    d.json("POST", "/pod/start?podId=duo", None);
    assert_eq!(
        d.json("GET", "/list?item=vm", None)["vmData"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    wait_phase(&d, "duo", "succeeded");
    let a = out_ok(&d.hyperctl(&["logs", "a"]));
    let b = out_ok(&d.hyperctl(&["logs", "b"]));
    let (boot_a, files_a) = a.split_once('\n').unwrap();
    let (boot_b, files_b) = b.split_once('\n').unwrap_or((&b, ""));
    assert_eq!(boot_a, boot_b, "one kernel, one VM");
    assert_eq!(files_a.trim(), "mine");
    assert_eq!(
        files_b.trim(),
        "",
        "each container has its own root filesystem"
    );
    let list = d.json("GET", "/list?item=container&pod=duo", None);
    assert_eq!(list["cData"].as_array().unwrap().len(), 2, "{list}");
}

#[test]
fn restart_policy_on_failure_restarts_until_success() {
    let d = Daemon::start();
    d.import_busybox();
    // Fails twice, succeeds the third time; /tmp survives restarts of the same container.
    let script = "n=$(cat /tmp/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /tmp/n; echo run $n; [ $n -ge 3 ]";
    out_ok(&d.hyperctl(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "onFailure",
        "busybox",
        "sh",
        "-c",
        script,
    ]));
    wait_phase(&d, "flaky", "succeeded");
    assert_eq!(
        out_ok(&d.hyperctl(&["logs", "flaky"])),
        "run 1\nrun 2\nrun 3"
    );
    let info = d.json("GET", "/container/info?container=flaky-busybox-0", None);
    assert_eq!(info["restartCount"], 2, "{info}");
    assert_eq!(info["status"]["terminated"]["exitCode"], 0);
    // never (the default) leaves a failure alone.
    out_ok(&d.hyperctl(&[
        "run",
        "-d",
        "--name",
        "once",
        "busybox",
        "sh",
        "-c",
        "echo once; exit 1",
    ]));
    wait_phase(&d, "once", "failed");
    assert_eq!(out_ok(&d.hyperctl(&["logs", "once"])), "once");
    let (code, _) = d.curl("POST", "/pod/create", Some(r#"{"containers":[{"image":"busybox","command":["true"],"restartPolicy":"sometimes"}]}"#));
    assert_eq!(code, 400);
}

fn wait_logs(d: &Daemon, container: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&d.hyperctl(&["logs", container]).stdout).contains(want) {
        assert!(
            Instant::now() < deadline,
            "{container} never printed {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn containers_come_and_go_and_vms_boot_ahead() {
    let d = Daemon::start();
    d.import_busybox();
    // A VM booted ahead is taken by the next pod of its size.
    let vm = d.json("POST", "/vm/create?cpu=1&mem=128", None)["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let vms = d.json("GET", "/list?item=vm", None);
    assert_eq!(vms["vmData"][0], format!("{vm}::idle"), "{vms}");
    out_ok(&d.hyperctl(&["run", "-d", "--name", "host", "busybox", "sleep", "1000"]));
    assert_eq!(
        d.json("GET", "/pod/info?podName=host", None)["vm"],
        vm.as_str()
    );

    // A container added to the running pod goes into a free disk slot of its VM.
    let spec = r#"{"name":"side","image":"busybox","command":["sh","-c","echo side-up; while true; do sleep 1; done"]}"#;
    d.json("POST", "/container/create?podId=host", Some(spec));
    assert_eq!(
        d.json("GET", "/container/info?container=side", None)["status"]["phase"],
        "pending"
    );
    assert_eq!(
        d.curl("POST", "/container/create?podId=host", Some(spec)).0,
        409,
        "names are unique"
    );
    d.json("POST", "/container/start?container=side", None);
    wait_logs(&d, "side", "side-up");
    let pid1 = out_ok(&d.hyperctl(&["exec", "side", "cat", "/proc/1/cmdline"]));
    assert!(pid1.contains("echo side-up"), "{pid1}");
    assert_eq!(
        d.curl("POST", "/container/start?container=side", None).0,
        409
    );

    d.json(
        "POST",
        "/container/rename?container=side&newName=side2",
        None,
    );
    assert_eq!(d.curl("GET", "/container/info?container=side", None).0, 404);
    assert_eq!(
        d.curl(
            "POST",
            "/container/rename?container=side2&newName=bad%20name",
            None
        )
        .0,
        400
    );
    assert_eq!(
        d.curl("POST", "/container/remove?container=side2", None).0,
        409,
        "running"
    );
    // PID 1 without a TERM handler ignores SIGTERM: SIGKILL follows after the grace time.
    d.json("POST", "/container/stop?container=side2&time=1", None);
    assert_eq!(
        d.json("GET", "/container/info?container=side2", None)["status"]["terminated"]["exitCode"],
        137
    );
    d.json("POST", "/container/remove?container=side2", None);
    assert_eq!(
        d.json("GET", "/list?item=container&pod=host", None)["cData"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        d.json("GET", "/pod/info?podName=host", None)["status"]["phase"],
        "running",
        "the pod's other container runs on"
    );

    // The freed slot takes the next container.
    for i in 0..4 {
        let spec =
            format!(r#"{{"name":"extra{i}","image":"busybox","command":["echo","extra{i}-ran"]}}"#);
        d.json("POST", "/container/create?podId=host", Some(&spec));
        d.json(
            "POST",
            &format!("/container/start?container=extra{i}"),
            None,
        );
        wait_logs(&d, &format!("extra{i}"), &format!("extra{i}-ran"));
        d.json(
            "POST",
            &format!("/container/remove?container=extra{i}"),
            None,
        );
    }

    // VMs booted ahead can be deleted; so can a pod's VM (stopping the pod).
    let idle = d.json("POST", "/vm/create", None)["ID"]
        .as_str()
        .unwrap()
        .to_string();
    d.json("DELETE", &format!("/vm?vm={idle}"), None);
    assert!(!d.root.join("vm").join(&idle).exists());
    d.json("DELETE", &format!("/vm?vm={vm}"), None);
    assert_eq!(
        d.json("GET", "/pod/info?podName=host", None)["status"]["phase"],
        "failed"
    );
    assert_eq!(
        d.json("GET", "/list?item=vm", None)["vmData"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(d.curl("DELETE", "/vm?vm=vm-nosuch", None).0, 404);
    assert_eq!(d.curl("POST", "/vm/create?cpu=0", None).0, 400);
}

#[test]
fn pod_files_dns_user_and_workdir_reach_the_container() {
    let d = Daemon::start();
    d.import_busybox();
    let spec = serde_json::json!({
        "id": "full",
        "hostname": "full-host",
        "dns": ["10.0.0.53"],
        "files": [
            { "name": "conf", "content": "key=value\n" },
            { "name": "bin", "encoding": "base64", "content": "IyEvYmluL3NoCmVjaG8gZnJvbS1zY3JpcHQK" },
        ],
        "containers": [{
            "image": "busybox",
            "user": "nobody",
            "workdir": "/tmp",
            "envs": [{ "env": "GREETING", "value": "hi" }],
            "files": [
                { "filename": "conf", "path": "/etc/app/app.conf" },
                { "filename": "bin", "path": "/usr/local/bin/hello", "perm": "0755" },
            ],
            "ports": [{ "containerPort": 80, "hostPort": 8080 }],
            "command": ["sh", "-c", "cat /etc/app/app.conf; hello; cat /etc/resolv.conf; id -u; pwd; hostname; echo $GREETING"],
        }],
    })
    .to_string();
    d.json("POST", "/pod/create", Some(&spec));
    d.json("POST", "/pod/start?podId=full", None);
    wait_phase(&d, "full", "succeeded");
    let logs = out_ok(&d.hyperctl(&["logs", "full"]));
    assert_eq!(
        logs,
        "key=value\nfrom-script\nnameserver 10.0.0.53\n65534\n/tmp\nfull-host\nhi"
    );
}
