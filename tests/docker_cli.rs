//! The Docker Engine API, driven by the unmodified `docker` CLI against real pods: pull
//! from a real registry, images, run (attached, detached, --rm), ps, logs, exec, stop,
//! rm, rmi; and the API's shapes and errors through curl.
mod common;
use common::{out_ok, Daemon, Registry};
use std::process::{Command, Output};

struct Docker<'a> {
    d: &'a Daemon,
    config: tempfile::TempDir,
}

impl Docker<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.d.socket.display()))
            .env("DOCKER_CONFIG", self.config.path())
            .env_remove("DOCKER_CONTEXT")
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the docker CLI runs");
        if let Some(data) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(data).unwrap();
        }
        child.wait_with_output().unwrap()
    }
}

#[test]
fn the_docker_cli_works_against_hyperd() {
    let reg = Registry::start(None);
    let d = Daemon::start();
    d.import_busybox();
    let remote = format!("{}/library/busybox:1", reg.addr);
    out_ok(&d.hyperctl(&["push", "--from", "busybox", &remote]));
    out_ok(&d.hyperctl(&["rmi", "busybox"]));
    out_ok(&d.hyperctl(&["rmi", &remote]));
    let docker = Docker {
        d: &d,
        config: tempfile::tempdir().unwrap(),
    };

    let version = out_ok(&docker.run(&["version", "--format", "{{.Server.APIVersion}}"]));
    assert_eq!(version, hyperd::API_VERSION);
    let pulled = out_ok(&docker.run(&["pull", &remote]));
    assert!(
        pulled.contains("Pull complete") && pulled.ends_with(&remote),
        "{pulled}"
    );
    let images = out_ok(&docker.run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    assert_eq!(images, format!("{}/library/busybox:1", reg.addr));

    // run, attached: stdout and stderr apart, the exit code, and --rm removes it.
    let out = docker.run(&[
        "run",
        "--rm",
        &remote,
        "sh",
        "-c",
        "echo hi; echo oops >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(out_ok(&docker.run(&["ps", "-aq"])), "");
    let out = docker.run_with_stdin(
        &["run", "--rm", "-i", &remote, "tr", "a-z", "A-Z"],
        Some(b"piped\n"),
    );
    assert_eq!(out_ok(&out), "PIPED");

    // run -d, ps, logs, exec, stop, rm.
    let id = out_ok(&docker.run(&[
        "run",
        "-d",
        "--name",
        "web",
        &remote,
        "sh",
        "-c",
        "echo started; while true; do sleep 1; done",
    ]));
    assert_eq!(id.len(), 64, "{id}");
    let ps = out_ok(&docker.run(&["ps", "--format", "{{.Names}} {{.State}}"]));
    assert_eq!(ps, "web running");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !out_ok(&docker.run(&["logs", "web"])).contains("started") {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = docker.run(&["exec", "web", "sh", "-c", "echo in-exec; exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-exec\n");
    assert_eq!(
        out_ok(&docker.run_with_stdin(&["exec", "-i", "web", "cat"], Some(b"to-exec\n"))),
        "to-exec"
    );
    let out = docker.run(&["rm", "web"]);
    assert!(
        !out.status.success(),
        "a running container is not removed without -f"
    );
    // The shell is PID 1 of its namespace and ignores SIGTERM: SIGKILL after -t.
    out_ok(&docker.run(&["stop", "-t", "1", "web"]));
    let ps = out_ok(&docker.run(&["ps", "-a", "--format", "{{.Names}} {{.State}} {{.Status}}"]));
    assert!(ps.starts_with("web exited Exited (137) "), "{ps}");
    assert!(ps.ends_with(" ago"), "{ps}");
    assert_eq!(
        out_ok(&docker.run(&["inspect", "--format", "{{.State.ExitCode}}", "web"])),
        "137"
    );
    out_ok(&docker.run(&["rm", "web"]));
    assert_eq!(out_ok(&docker.run(&["ps", "-aq"])), "");

    // Errors as the CLI shows them, and nothing changed.
    let out = docker.run(&["rm", "nosuch"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No such container: nosuch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (A registry on loopback that is not there: nothing leaves the machine.)
    let out = docker.run(&["run", "--rm", "127.0.0.1:1/nosuchimage:1", "true"]);
    assert!(!out.status.success());
    out_ok(&docker.run(&["rmi", &remote]));
    assert_eq!(out_ok(&docker.run(&["images", "-q"])), "");

    // Shapes and statuses through curl.
    assert_eq!(
        d.curl("POST", "/v1.41/containers/create", Some("{not json"))
            .0,
        400
    );
    assert_eq!(
        d.curl("POST", "/v1.41/containers/create", Some("{}")).0,
        400
    );
    let (code, body) = d.curl("GET", "/v1.41/containers/nosuch/json", None);
    assert_eq!(code, 404);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["message"],
        "No such container: nosuch"
    );
    assert_eq!(
        d.curl(
            "POST",
            "/v1.41/containers/nosuch/wait?condition=bogus",
            None
        )
        .0,
        404
    );
    assert_eq!(
        d.curl("GET", "/v1.41/images/json?filters=%7Bbad", None).0,
        400
    );
    let list = d.json(
        "GET",
        "/v1.41/images/json?filters=%7B%22dangling%22%3A%5B%22true%22%5D%7D",
        None,
    );
    assert_eq!(list, serde_json::json!([]));
}

#[test]
fn the_docker_cli_everyday_commands() {
    let reg = Registry::start(None);
    let d = Daemon::start();
    d.import_busybox();
    let docker = Docker {
        d: &d,
        config: tempfile::tempdir().unwrap(),
    };

    // docker save | docker load: a real archive, and the image back under its name.
    let saved = docker.run(&["save", "busybox"]);
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let mut archive = tar::Archive::new(&saved.stdout[..]);
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n == "manifest.json"),
        "docker save wrote no docker save tar: {names:?}"
    );
    out_ok(&docker.run(&["rmi", "busybox"]));
    let loaded = out_ok(&docker.run_with_stdin(&["load"], Some(&saved.stdout)));
    assert!(loaded.contains("busybox"), "{loaded}");

    // tag and push to the loopback registry.
    let remote = format!("{}/everyday/bb:1", reg.addr);
    out_ok(&docker.run(&["tag", "busybox", &remote]));
    let pushed = out_ok(&docker.run(&["push", &remote]));
    assert!(pushed.contains("digest: sha256:"), "{pushed}");
    let catalog = std::process::Command::new("curl")
        .args([
            "-sS",
            &format!("http://{}/v2/everyday/bb/tags/list", reg.addr),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&catalog.stdout).contains("\"1\""));

    // An option hyperd cannot honour is not silently dropped: the CLI prints the warning.
    let out = docker.run(&[
        "create",
        "--name",
        "warned",
        "--device",
        "/dev/null",
        "busybox",
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("WARNING") && err.contains("Devices"), "{err}");
    out_ok(&docker.run(&["rm", "warned"]));

    // stop -t 5 of a process that traps SIGTERM: the trap's own exit code.
    out_ok(&docker.run(&[
        "run",
        "-d",
        "--name",
        "trap",
        "busybox",
        "sh",
        "-c",
        "trap 'exit 7' TERM; echo ready; while true; do sleep 1; done",
    ]));
    // The trap is set once "ready" is out (a signal before that would find none).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !out_ok(&docker.run(&["logs", "trap"])).contains("ready") {
        assert!(
            std::time::Instant::now() < deadline,
            "the trap never got set"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    out_ok(&docker.run(&["stop", "-t", "5", "trap"]));
    assert_eq!(
        out_ok(&docker.run(&["inspect", "--format", "{{.State.ExitCode}}", "trap"])),
        "7"
    );

    // restart, pause, unpause, top, stats.
    out_ok(&docker.run(&["restart", "-t", "1", "trap"]));
    let state = |docker: &Docker| {
        out_ok(&docker.run(&["inspect", "--format", "{{.State.Status}}", "trap"]))
    };
    assert_eq!(state(&docker), "running");
    out_ok(&docker.run(&["pause", "trap"]));
    assert_eq!(state(&docker), "paused");
    let ps = out_ok(&docker.run(&["ps", "--format", "{{.Status}}"]));
    assert!(ps.starts_with("Up ") && ps.ends_with("(Paused)"), "{ps}");
    out_ok(&docker.run(&["unpause", "trap"]));
    assert_eq!(state(&docker), "running");
    let top = out_ok(&docker.run(&["top", "trap"]));
    assert!(top.contains("PID") && top.contains("while true"), "{top}");
    let stats = out_ok(&docker.run(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}} {{.PIDs}}",
    ]));
    assert!(stats.starts_with("trap "), "{stats}");
    assert!(stats.contains("MiB"), "{stats}");
    out_ok(&docker.run(&["rm", "-f", "trap"]));
    assert_eq!(out_ok(&docker.run(&["ps", "-aq"])), "");
}
