//! The engine's logic over fake VMs (`vm::fake`): starts, exit codes, restart policies and
//! their backoff, stops of VMs that hang, and recovery after a restart, on tokio's paused
//! clock, so that backoffs and deadlines take no wall time.
use super::*;
use crate::config::Config;
use crate::spec::{ContainerSpec, PodSpec};
use crate::vm::fake::FakeDriver;
use crate::vm::VmStatus;
use std::sync::atomic::Ordering;

struct Harness {
    engine: Arc<Engine>,
    driver: FakeDriver,
    root: tempfile::TempDir,
}

/// A daemon configuration on `root` with the pool off (shared with the recovery tests).
pub(super) fn config(root: &std::path::Path) -> Config {
    Config {
        root: root.to_path_buf(),
        socket: root.join("hyper.sock"),
        kernel: root.join("vmlinux"),
        initrd: root.join("initrd.img"),
        driver: "fake".into(),
        accel: "tcg".into(),
        boot_timeout: Duration::from_secs(30),
        registry: Default::default(),
        max_layer_bytes: 1 << 20,
        pool_size: 0,
        pool_max_age: Duration::from_secs(60),
        log_limits: Default::default(),
        api_limits: Default::default(),
        build_vm_per_step: false,
        console_log_max: 1 << 20,
    }
}

/// A one-file image, `fake:1`.
fn import_image(engine: &Engine) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o755);
    h.set_cksum();
    tar.append_data(&mut h, "bin/true", &b"#!\n"[..]).unwrap();
    let data = tar.into_inner().unwrap();
    engine
        .images
        .import("fake:1", &data[..], crate::image::ImageConfig::default())
        .unwrap();
}

fn harness_on(root: tempfile::TempDir, driver: FakeDriver) -> Harness {
    let engine = Arc::new(Engine::new(config(root.path()), Driver::Fake(driver.clone())).unwrap());
    Harness {
        engine,
        driver,
        root,
    }
}

fn harness() -> Harness {
    let h = harness_on(tempfile::tempdir().unwrap(), FakeDriver::default());
    import_image(&h.engine);
    h
}

fn container(cmd: &[&str], restart: &str) -> ContainerSpec {
    ContainerSpec {
        image: "fake:1".into(),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        restart_policy: restart.into(),
        ..Default::default()
    }
}

fn pod_of(containers: Vec<ContainerSpec>) -> PodSpec {
    PodSpec {
        containers,
        ..Default::default()
    }
}

/// Waits (in tokio's time) until the container has exited; its exit code.
async fn exit_code(c: &Container) -> i32 {
    let mut state = c.io.state();
    tokio::time::timeout(
        Duration::from_secs(600),
        state.wait_for(|s| *s == IoState::Exited),
    )
    .await
    .expect("the container exits")
    .unwrap();
    c.status.lock().unwrap().exit_code.expect("an exit code")
}

/// Waits (in tokio's time) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_runs_its_containers_and_records_their_exit_codes() {
    let h = harness();
    let pod = h
        .engine
        .create_pod(pod_of(vec![
            container(&["echo", "hello"], ""),
            container(&["exit", "3"], ""),
        ]))
        .await
        .unwrap();
    assert_eq!(pod.phase(), PodPhase::Pending);
    h.engine.start_pod(&pod.id, None).await.unwrap();
    let cs = pod.containers();
    assert_eq!(exit_code(&cs[0]).await, 0);
    assert_eq!(exit_code(&cs[1]).await, 3);
    let (log, _) = cs[0].io.log_and_follow(false).await;
    assert_eq!(
        log.entries()
            .iter()
            .map(|e| e.log.as_str())
            .collect::<String>(),
        "hello\n"
    );
    // Every container exited: the VM powers off by itself (no kill), the pod failed.
    until("the VM is gone", || pod.vm().is_none()).await;
    assert_eq!(pod.phase(), PodPhase::Failed);
    let vm = h.driver.vms.lock().unwrap()[0].clone();
    assert_eq!(vm.status(), VmStatus::Stopped);
    assert_eq!(vm.kills.load(Ordering::SeqCst), 0);
    // A pod of exit codes 0 succeeds.
    let ok = h
        .engine
        .create_pod(pod_of(vec![container(&["exit", "0"], "")]))
        .await
        .unwrap();
    h.engine.start_pod(&ok.id, None).await.unwrap();
    assert_eq!(exit_code(&ok.containers()[0]).await, 0);
    until("the second VM is gone", || ok.vm().is_none()).await;
    assert_eq!(ok.phase(), PodPhase::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_process_exits_once_however_often_the_agent_says_so() {
    let h = harness();
    // The fake agent reports exits 3, 4 and 5 for one process.
    let pod = h
        .engine
        .create_pod(pod_of(vec![container(&["exit-thrice", "3"], "onFailure")]))
        .await
        .unwrap();
    h.engine.start_pod(&pod.id, None).await.unwrap();
    let vm = h.driver.vms.lock().unwrap()[0].clone();
    let c = pod.containers()[0].clone();
    until("the first restart", || vm.starts.lock().unwrap().len() >= 2).await;
    // One exit, one restart: the code is the first one, and the restarts go at the
    // backoff's pace, not three at a time.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(vm.starts.lock().unwrap().len(), 2);
    assert_eq!(c.status.lock().unwrap().restart_count, 1);
    let codes = c.status.lock().unwrap().exit_code;
    assert!(matches!(codes, Some(3) | None), "{codes:?}");
    h.engine.remove_pod(&pod.id).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn restart_policies_restart_with_a_doubling_backoff() {
    let wall = std::time::Instant::now();
    let h = harness();
    // onFailure and a failing process: restarted, 100 ms, 200 ms, 400 ms, ... apart.
    let failing = h
        .engine
        .create_pod(pod_of(vec![container(&["exit", "1"], "onFailure")]))
        .await
        .unwrap();
    h.engine.start_pod(&failing.id, None).await.unwrap();
    let vm = h.driver.vms.lock().unwrap()[0].clone();
    until("six starts", || vm.starts.lock().unwrap().len() >= 6).await;
    let starts: Vec<_> = vm.starts.lock().unwrap().iter().map(|(_, t)| *t).collect();
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    // It doubles up to its cap of 10 s.
    let cap = Duration::from_secs(10);
    for w in gaps.windows(2) {
        let want = (w[0] * 2).min(cap);
        assert!(
            w[1] + Duration::from_millis(20) >= want && w[1] <= cap + Duration::from_millis(50),
            "backoff doubles up to 10 s: {gaps:?}"
        );
    }
    let c = &failing.containers()[0];
    assert!(c.status.lock().unwrap().restart_count >= 5);
    // A stop ends the restarts: the pod stops and no start follows.
    h.engine
        .stop_pod_gracefully(&failing.id, Duration::from_secs(1))
        .await
        .unwrap();
    until("the VM is gone", || failing.vm().is_none()).await;
    let n = vm.starts.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        vm.starts.lock().unwrap().len(),
        n,
        "no restart after a stop"
    );

    // onFailure and success: not restarted; always and success: restarted.
    let done = h
        .engine
        .create_pod(pod_of(vec![container(&["exit", "0"], "onFailure")]))
        .await
        .unwrap();
    h.engine.start_pod(&done.id, None).await.unwrap();
    assert_eq!(exit_code(&done.containers()[0]).await, 0);
    until("the VM is gone", || done.vm().is_none()).await;
    assert_eq!(done.containers()[0].status.lock().unwrap().restart_count, 0);
    let always = h
        .engine
        .create_pod(pod_of(vec![container(&["exit", "0"], "always")]))
        .await
        .unwrap();
    h.engine.start_pod(&always.id, None).await.unwrap();
    let vm = h.driver.vms.lock().unwrap()[2].clone();
    until("always restarts", || vm.starts.lock().unwrap().len() >= 3).await;
    h.engine.stop_pod(&always.id).await.unwrap();
    // Minutes of backoff and deadlines ran on the paused clock.
    assert!(
        wall.elapsed() < Duration::from_secs(20),
        "{:?}",
        wall.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_pod_whose_vm_hangs_is_stopped_through_the_monitor_then_killed() {
    let wall = std::time::Instant::now();
    let h = harness();
    h.driver.hang_on_shutdown.store(true, Ordering::SeqCst);
    h.driver.hang_monitor.store(true, Ordering::SeqCst);
    let pod = h
        .engine
        .create_pod(pod_of(vec![container(&["ignore-term"], "")]))
        .await
        .unwrap();
    h.engine.start_pod(&pod.id, None).await.unwrap();
    let c = pod.containers()[0].clone();
    until("running", || *c.io.state().borrow() == IoState::Running).await;
    let began = tokio::time::Instant::now();
    h.engine
        .stop_pod_gracefully(&pod.id, Duration::from_secs(2))
        .await
        .unwrap();
    // SIGTERM was ignored: SIGKILL after the grace.
    assert_eq!(exit_code(&c).await, 137);
    until("the VM is gone", || pod.vm().is_none()).await;
    let vm = h.driver.vms.lock().unwrap()[0].clone();
    assert_eq!(vm.kills.load(Ordering::SeqCst), 1, "killed once");
    assert_eq!(vm.status(), VmStatus::Stopped);
    // The agent's power-off and the monitor's stop each had their deadline.
    assert!(began.elapsed() >= STOP_TIMEOUT * 2, "{:?}", began.elapsed());
    assert!(
        wall.elapsed() < Duration::from_secs(20),
        "{:?}",
        wall.elapsed()
    );
    assert_ne!(pod.phase(), PodPhase::Running);
}

#[tokio::test(start_paused = true)]
async fn pause_and_resume_go_through_the_vm_handle() {
    let h = harness();
    let pod = h
        .engine
        .create_pod(pod_of(vec![container(&["sleep"], "")]))
        .await
        .unwrap();
    h.engine.start_pod(&pod.id, None).await.unwrap();
    let vm = h.driver.vms.lock().unwrap()[0].clone();
    h.engine.pause_pod(&pod.id, true).await.unwrap();
    assert_eq!(
        (pod.phase(), vm.status()),
        (PodPhase::Paused, VmStatus::Paused)
    );
    assert!(
        h.engine.pause_pod(&pod.id, true).await.is_err(),
        "already paused"
    );
    h.engine.pause_pod(&pod.id, false).await.unwrap();
    assert_eq!(
        (pod.phase(), vm.status()),
        (PodPhase::Running, VmStatus::Running)
    );
    // A paused pod is resumed before it is stopped, so its guest can power off.
    h.engine.pause_pod(&pod.id, true).await.unwrap();
    h.engine
        .stop_pod_gracefully(&pod.id, Duration::from_secs(1))
        .await
        .unwrap();
    until("the VM is gone", || pod.vm().is_none()).await;
    assert_eq!(vm.kills.load(Ordering::SeqCst), 0);
}

/// A daemon restarts while its pod runs, and the pod's VM dies meanwhile: the new daemon
/// marks the containers exited (137), the pod finished, and frees the VM's directory.
#[tokio::test(start_paused = true)]
async fn recovery_marks_pods_whose_vm_died_while_the_daemon_was_down() {
    let root = tempfile::tempdir().unwrap();
    let driver = FakeDriver::default();
    // The first daemon, in a runtime of its own that ends as a killed daemon would.
    let (pod_id, vm_dir) = {
        let root = root.path().to_path_buf();
        let driver = driver.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let ids = rt.block_on(async {
                let engine = Arc::new(Engine::new(config(&root), Driver::Fake(driver)).unwrap());
                import_image(&engine);
                let pod = engine
                    .create_pod(pod_of(vec![container(&["sleep"], "")]))
                    .await
                    .unwrap();
                engine.start_pod(&pod.id, None).await.unwrap();
                let c = pod.containers()[0].clone();
                let mut state = c.io.state();
                let _ = state.wait_for(|s| *s == IoState::Running).await;
                (pod.id.clone(), pod.vm().unwrap().dir.clone())
            });
            rt.shutdown_background();
            ids
        })
        .join()
        .unwrap()
    };
    // The VM dies while no daemon runs.
    driver.vms.lock().unwrap()[0].kill();
    assert!(vm_dir.is_dir());
    let h = harness_on(root, FakeDriver::default());
    let pod = h.engine.pod(&pod_id).unwrap();
    assert_eq!(pod.phase(), PodPhase::Running, "as recorded");
    h.engine.recover().await;
    let c = pod.containers()[0].clone();
    assert_eq!(c.status.lock().unwrap().exit_code, Some(137));
    assert_eq!(pod.phase(), PodPhase::Failed);
    assert!(pod.vm().is_none());
    assert!(!vm_dir.exists(), "the dead VM's directory is freed");
    assert!(
        h.root.path().join("pods").join(&pod_id).is_dir(),
        "the pod stays"
    );
}

/// A VM whose agent speaks a protocol this daemon does not drive is not adopted: it is
/// stopped (its process killed) and its pod marked finished, with the reason logged.
#[tokio::test]
async fn a_vm_whose_agent_speaks_an_unknown_protocol_is_stopped_not_adopted() {
    let root = tempfile::tempdir().unwrap();
    let vm_dir = root.path().join("vm/vm-future");
    std::fs::create_dir_all(&vm_dir).unwrap();
    std::fs::create_dir_all(root.path().join("pods/pod-future")).unwrap();
    // A process that is "the VM of" the directory: its command line names it. It waits
    // in the shell's own `read` on a pipe nobody writes (no child process to leak).
    let mut vm = std::process::Command::new("sh")
        .arg("-c")
        .arg("read line")
        .arg(&vm_dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        let store = crate::store::Store::open(root.path()).unwrap();
        let record = serde_json::json!({
            "version": recovery::RECORD_VERSION,
            "id": "pod-future",
            "name": "future",
            "spec": {"id": "future", "containers": []},
            "created": "2026-11-29T00:00:00Z",
            "phase": "running",
            "vm": {
                "id": "vm-future",
                "pid": vm.id(),
                "dir": vm_dir,
                "agent_protocol": hyperd_agent::protocol::VERSION + 1,
            },
            "containers": [],
        });
        store.put_pod("pod-future", &record).unwrap();
    }
    let h = harness_on(root, FakeDriver::default());
    h.engine.recover().await;
    let pod = h.engine.pod("pod-future").unwrap();
    assert!(pod.vm().is_none(), "not adopted");
    assert_eq!(pod.phase(), PodPhase::Failed);
    assert!(pod.state().recorded_vm.is_none());
    let status = tokio::task::spawn_blocking(move || vm.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "the VM process was killed: {status:?}");
    assert!(!vm_dir.exists());
}

#[tokio::test(start_paused = true)]
async fn finished_execs_are_forgotten_past_the_bound() {
    let h = harness();
    let pod = h
        .engine
        .create_pod(pod_of(vec![container(&["run-until-killed"], "")]))
        .await
        .unwrap();
    h.engine.start_pod(&pod.id, None).await.unwrap();
    let key = pod.containers()[0].id.clone();
    let request = || super::exec::ExecRequest {
        command: vec!["exit".into(), "0".into()],
        ..Default::default()
    };
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (p, e) = h.engine.create_exec(&key, request()).unwrap();
        h.engine.start_exec(&p, &e).await.unwrap();
        until("the exec ended", || {
            *e.io.state().borrow() == IoState::Exited
        })
        .await;
        ids.push(e.id.clone());
    }
    // Past a bound of 3 (the next exec included), the oldest finished ones go.
    let gone = super::exec::prune_finished_execs(&pod, 3, Duration::from_secs(3600));
    assert_eq!(gone.len(), 3, "5 finished + 1 coming, room for 3");
    assert!(h.engine.exec(&ids[0]).is_err() && h.engine.exec(&ids[2]).is_err());
    assert!(h.engine.exec(&ids[3]).is_ok() && h.engine.exec(&ids[4]).is_ok());
    // And those finished longer ago than the keep time (a running exec stays).
    let (p, running) = h
        .engine
        .create_exec(
            &key,
            super::exec::ExecRequest {
                command: vec!["run-until-killed".into()],
                ..Default::default()
            },
        )
        .unwrap();
    h.engine.start_exec(&p, &running).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let gone = super::exec::prune_finished_execs(&pod, 100, Duration::from_millis(1));
    assert_eq!(gone.len(), 2);
    assert!(h.engine.exec(&running.id).is_ok());
}
