//! The daemon is killed with SIGKILL and started again: running pods keep running and
//! can be attached to, finished pods keep their exit codes and logs, nothing is listed
//! twice, and a pod whose VM died meanwhile is exited with its resources freed. A service
//! stop as the systemd unit does it (SIGTERM to the daemon alone) keeps pods running too.
mod common;
use common::{out_ok, pid_alive, wait_gone, Daemon};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn pods_survive_a_daemon_kill() {
    let mut d = Daemon::start();
    d.import_busybox();
    out_ok(&d.hyperctl(&[
        "run",
        "-d",
        "--name",
        "runner",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done",
    ]));
    out_ok(&d.hyperctl(&["run", "-d", "--name", "victim", "busybox", "sleep", "1000"]));
    let done = d.hyperctl(&[
        "run",
        "--name",
        "done",
        "busybox",
        "sh",
        "-c",
        "echo finished-output; exit 4",
    ]);
    assert_eq!(done.status.code(), Some(4));
    let runner_pid = d.json("GET", "/pod/info?podName=runner", None)["vmPid"]
        .as_u64()
        .unwrap() as u32;
    let victim = d.json("GET", "/pod/info?podName=victim", None);
    let victim_pid = victim["vmPid"].as_u64().unwrap() as u32;
    let victim_dir = d.root.join("vm").join(victim["vm"].as_str().unwrap());

    d.kill9();
    assert!(pid_alive(runner_pid), "the VM outlives the daemon");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // The runner's record is rewritten as the first release wrote it (no record version,
    // no agent protocol): the new daemon adopts a VM started by the previous release.
    as_first_release(&d.root.join("state.redb"), "runner");
    d.restart();

    // Nothing twice, everything once.
    let pods = d.json("GET", "/list?item=pod", None);
    let names: Vec<String> = pods["podData"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().split(':').nth(1).unwrap().to_string())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["done", "runner", "victim"], "{pods}");
    assert_eq!(
        d.json("GET", "/list?item=container", None)["cData"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The running pod still runs, in the same VM, and can be attached to and exec'd in.
    let info = d.json("GET", "/pod/info?podName=runner", None);
    assert_eq!(info["status"]["phase"], "running", "{info}");
    assert_eq!(info["vmPid"].as_u64().unwrap() as u32, runner_pid);
    let mut attach = Command::new(common::workspace_binary("hyperctl"))
        .args(["-H", d.socket.to_str().unwrap(), "attach", "runner"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(attach.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = lines.next().expect("attach gives output").unwrap();
    assert!(first.starts_with("tick "), "{first}");
    assert!(Instant::now() < deadline);
    let _ = attach.kill();
    let _ = attach.wait();
    assert_eq!(
        out_ok(&d.hyperctl(&["exec", "runner", "echo", "still-here"])),
        "still-here"
    );
    let logs = out_ok(&d.hyperctl(&["logs", "runner"]));
    assert!(
        logs.starts_with("tick 0\n"),
        "logs from before the restart are kept"
    );

    // The finished pod kept its exit code and its logs.
    let info = d.json("GET", "/pod/info?podName=done", None);
    assert_eq!(info["status"]["phase"], "failed");
    let cid = info["status"]["containerStatus"][0]["containerID"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.json("GET", &format!("/exitcode?container={cid}"), None)["ExitCode"],
        4
    );
    assert_eq!(out_ok(&d.hyperctl(&["logs", "done"])), "finished-output");

    // The pod whose VM was killed is exited, and its VM's files are gone.
    let info = d.json("GET", "/pod/info?podName=victim", None);
    assert_eq!(info["status"]["phase"], "failed", "{info}");
    assert_eq!(
        info["status"]["containerStatus"][0]["terminated"]["exitCode"],
        137
    );
    assert!(!victim_dir.exists(), "{}", victim_dir.display());
    let vms = d.json("GET", "/list?item=vm", None);
    assert_eq!(vms["vmData"].as_array().unwrap().len(), 1, "{vms}");

    // A service stop as systemd's unit does it (contrib/hyperd.service, KillMode=process:
    // SIGTERM to the daemon alone) leaves the pod running; the next daemon adopts it.
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/hyperd.service"),
    )
    .unwrap();
    for line in ["KillMode=process", "Delegate=yes"] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "the unit lacks {line}"
        );
    }
    d.stop();
    assert!(pid_alive(runner_pid), "the VM outlives a service stop");
    d.restart();
    let info = d.json("GET", "/pod/info?podName=runner", None);
    assert_eq!(info["status"]["phase"], "running", "{info}");
    assert_eq!(
        out_ok(&d.hyperctl(&["exec", "runner", "echo", "after-sigterm"])),
        "after-sigterm"
    );

    // A stop after the restart still powers the adopted VM off.
    out_ok(&d.hyperctl(&["stop", "-t", "1", "runner"]));
    wait_gone(runner_pid, "the adopted VM after stop");
}

/// Rewrites the record of the pod named `name` as the first release wrote it: without
/// `version` and without the VM's `agent_protocol`.
fn as_first_release(db: &std::path::Path, name: &str) {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
    let db = redb::Database::open(db).unwrap();
    let (id, mut record) = {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(PODS).unwrap();
        t.iter()
            .unwrap()
            .map(|row| row.unwrap())
            .map(|(k, v)| {
                let r: serde_json::Value = serde_json::from_slice(v.value()).unwrap();
                (k.value().to_string(), r)
            })
            .find(|(_, r)| r["name"] == name)
            .expect("the pod's record")
    };
    assert_eq!(record["version"], 2, "written by this release");
    let o = record.as_object_mut().unwrap();
    o.remove("version");
    o["vm"].as_object_mut().unwrap().remove("agent_protocol");
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(PODS).unwrap();
        let bytes = serde_json::to_vec(&record).unwrap();
        t.insert(id.as_str(), bytes.as_slice()).unwrap();
    }
    tx.commit().unwrap();
}
