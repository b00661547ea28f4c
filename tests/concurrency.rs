//! Twenty pods created, started and deleted in parallel leave no processes, sockets,
//! mounts or files behind.
mod common;
use common::{assert_no_leftovers, Daemon};
use std::time::Duration;

const PODS: usize = 20;

/// Processes other than `except` whose command line mentions `needle`.
fn processes_mentioning(needle: &str, except: u32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .parse::<u32>()
                .is_ok_and(|p| p != except)
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[test]
fn twenty_pods_in_parallel_leave_nothing_behind() {
    let d = Daemon::start();
    d.import_busybox();
    let root = d.root.to_string_lossy().to_string();
    std::thread::scope(|s| {
        for i in 0..PODS {
            let d = &d;
            s.spawn(move || {
                let name = format!("p{i}");
                let spec = serde_json::json!({
                    "id": name,
                    "containers": [{ "image": "busybox", "command": ["sh", "-c", "echo up; sleep 1000"] }],
                    "resource": { "vcpu": 1, "memory": 64 },
                })
                .to_string();
                d.json("POST", "/pod/create", Some(&spec));
                d.json("POST", &format!("/pod/start?podId={name}"), None);
                let info = d.json("GET", &format!("/pod/info?podName={name}"), None);
                assert_eq!(info["status"]["phase"], "running", "{info}");
                // Half are stopped first, half deleted while running.
                if i % 2 == 0 {
                    d.json("POST", &format!("/pod/stop?podId={name}&time=1"), None);
                }
                let (code, text) = d.curl("DELETE", &format!("/pod?podId={name}"), None);
                assert_eq!(code, 200, "{name}: {text}");
            });
        }
    });
    std::thread::sleep(Duration::from_millis(500));
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
    let left = processes_mentioning(&root, d.pid());
    assert!(left.is_empty(), "processes left: {left:?}");
    assert_no_leftovers(&d);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&root), "mounts under the root: {mounts}");
    // The daemon holds no descriptors to deleted VM files.
    let pid = d.pid();
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().to_string())
        .filter(|p| p.contains("/vm/") || p.contains("/pods/"))
        .collect();
    assert!(fds.is_empty(), "{fds:?}");
}

/// The API socket is bounded: clients that never finish a request's head are
/// disconnected after the header timeout, at most `--api-max-connections` are served at
/// once, and a normal request still gets through while 200 such clients hang on.
#[test]
fn stalled_clients_cannot_hold_the_api() {
    use std::io::{Read, Write};
    let d = Daemon::start_with(&["--api-header-timeout", "2", "--api-max-connections", "32"]);
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        // Half a head, never finished.
        s.write_all(b"GET /info HTTP/1.1\r\nHost: x\r\n").unwrap();
        stalled.push(s);
    }
    let t = std::time::Instant::now();
    let (code, body) = d.curl_with("GET", "/info", None, &["--max-time", "90"]);
    assert_eq!(code, 200, "{body}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(60),
        "the request waited {:?}",
        t.elapsed()
    );
    // The daemon closed the first stalled connections (end of file, or a 408 answer
    // and then end of file).
    let first = &mut stalled[0];
    first
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    let read = first.read_to_end(&mut buf);
    assert!(
        read.is_ok(),
        "the stalled connection was not closed: {read:?}"
    );
}

/// A guest that stops answering (its VM process stopped with SIGSTOP) does not slow the
/// listings and figures of the other pods (the agent's deadline is 60 s; each answer
/// here must come within 10), and removing it ends with its VM process gone.
#[test]
fn a_wedged_guest_does_not_slow_the_others() {
    let d = Daemon::start();
    d.import_busybox();
    for name in ["wedged", "healthy"] {
        common::out_ok(&d.hyperctl(&["run", "-d", "--name", name, "busybox", "sleep", "1000"]));
    }
    let info = d.json("GET", "/pod/info?podName=wedged", None);
    let vm = info["vm"].as_str().unwrap().to_string();
    assert!(!vm.is_empty(), "{info}");
    let pids: Vec<i32> = common::helper_processes(&d)
        .iter()
        .filter(|p| p.contains(&vm) && p.contains("qemu"))
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "the wedged pod's qemu: {pids:?}");
    let qemu = nix::unistd::Pid::from_raw(pids[0]);
    nix::sys::signal::kill(qemu, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The wedged VM is asked first: Flask's listing asks every running pod.
    let (code, body) = d.curl("GET", "/pod/stats?podName=healthy", None);
    assert_eq!(code, 200, "{body}");
    for path in [
        "/container",
        "/list?item=pod",
        "/list?item=container",
        "/pod/info?podName=healthy",
        "/pod/stats?podName=healthy",
        "/v1.41/containers/json",
    ] {
        let start = std::time::Instant::now();
        let (code, body) = d.curl("GET", path, None);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{path} took {:?} with a wedged guest",
            start.elapsed()
        );
    }
    // Removing the wedged pod kills its VM (the agent cannot answer a shutdown).
    common::out_ok(&d.hyperctl(&["rm", "wedged", "healthy"]));
    common::wait_gone(pids[0] as u32, "the wedged VM's qemu");
    assert_no_leftovers(&d);
}
