//! Images from containers (qemu driver): a running container that created, changed and
//! deleted files is committed by the docker CLI (`docker commit` with `--change`,
//! `-m`, `-a`), hyperd's API (`POST /container/commit`) and `hyperctl commit`; each new
//! image runs and shows the change, a deleted file stays deleted, the config changes
//! apply and the history records the commit; a commit pauses the container's processes
//! while it reads and continues them. A stopped container and a hostile change are
//! refused with the right status.
mod common;
use common::{out_ok, Daemon};
use std::time::{Duration, Instant};

#[test]
fn containers_become_images() {
    let d = Daemon::start();
    d.import_busybox();
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    // The container adds a file, changes one, deletes one and replaces a directory.
    out_ok(&d.docker(
        cfg,
        &[
            "run",
            "-d",
            "--name",
            "base",
            "busybox",
            "sh",
            "-c",
            "echo new > /new.txt; echo changed > /etc/hostname.orig; rm /etc/group; \
             rm -rf /home; mkdir -p /home/fresh; touch /ready; sleep 1000",
        ],
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d
        .docker(cfg, &["exec", "base", "test", "-e", "/ready"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the container never got ready");
        std::thread::sleep(Duration::from_millis(300));
    }

    // docker commit, with changes, a message and an author.
    let id = out_ok(&d.docker(
        cfg,
        &[
            "commit",
            "-a",
            "tester",
            "-m",
            "first commit",
            "-c",
            "ENV COMMITTED=yes",
            "-c",
            r#"CMD ["cat", "/new.txt"]"#,
            "base",
            "committed:1",
        ],
    ));
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(
        out_ok(&d.docker(cfg, &["run", "--rm", "committed:1"])),
        "new"
    );
    let o = out_ok(&d.docker(
        cfg,
        &[
            "run",
            "--rm",
            "committed:1",
            "sh",
            "-c",
            "test -e /etc/group && echo group-present || echo group-gone; \
             test -e /etc/passwd && echo passwd-kept; ls /home; echo $COMMITTED",
        ],
    ));
    assert_eq!(o, "group-gone\npasswd-kept\nfresh\nyes", "{o}");
    let inspect: serde_json::Value = serde_json::from_str(&out_ok(
        &d.docker(cfg, &["image", "inspect", "committed:1"]),
    ))
    .unwrap();
    let env = inspect[0]["Config"]["Env"].to_string();
    assert!(env.contains("COMMITTED=yes"), "{inspect}");

    // hyperd's API: POST /container/commit.
    let (code, body) = d.curl(
        "POST",
        "/container/commit?container=base&repo=viaapi:1&message=from%20the%20api",
        None,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["ID"].as_str().unwrap().starts_with("sha256:"), "{v}");
    let o = out_ok(&d.hyperctl(&["run", "--rm", "viaapi:1", "cat", "/new.txt"]));
    assert_eq!(o, "new");

    // hyperctl commit.
    out_ok(&d.hyperctl(&[
        "commit",
        "-c",
        r#"CMD ["echo", "from-hyperctl"]"#,
        "base",
        "viactl:1",
    ]));
    assert_eq!(
        out_ok(&d.hyperctl(&["run", "--rm", "viactl:1"])),
        "from-hyperctl"
    );

    // A commit pauses the container's processes while it reads (Docker's default) and
    // lets them go on after: a ticking loop still ticks; `pause=0` commits it running.
    out_ok(&d.docker(
        cfg,
        &[
            "run",
            "-d",
            "--name",
            "ticker",
            "busybox",
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /tick; sleep 0.05; done",
        ],
    ));
    std::thread::sleep(Duration::from_secs(1));
    out_ok(&d.docker(cfg, &["commit", "ticker", "ticked:1"]));
    let tick = |_: ()| -> u64 {
        out_ok(&d.docker(cfg, &["exec", "ticker", "cat", "/tick"]))
            .parse()
            .unwrap()
    };
    let before = tick(());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(tick(()) > before, "the paused container was not continued");
    let (code, body) = d.curl(
        "POST",
        "/container/commit?container=ticker&repo=ticked:2&pause=0",
        None,
    );
    assert_eq!(code, 200, "{body}");
    let committed: u64 = out_ok(&d.docker(cfg, &["run", "--rm", "ticked:1", "cat", "/tick"]))
        .parse()
        .unwrap();
    assert!(committed > 0 && committed <= before, "{committed} {before}");
    out_ok(&d.docker(cfg, &["rm", "-f", "ticker"]));

    // Refused: a change a commit cannot apply (400), no such container (404), a stopped
    // container (409).
    let (code, _) = d.curl(
        "POST",
        "/container/commit?container=base&change=RUN%20rm%20-rf%20/",
        None,
    );
    assert_eq!(code, 400);
    let (code, _) = d.curl("POST", "/container/commit?container=nope", None);
    assert_eq!(code, 404);
    out_ok(&d.docker(cfg, &["stop", "-t", "1", "base"]));
    let (code, body) = d.curl("POST", "/container/commit?container=base", None);
    assert_eq!(code, 409, "{body}");
    out_ok(&d.docker(cfg, &["rm", "base"]));
    common::assert_no_leftovers(&d);
    let tmp: Vec<_> = common::tree(&d.root.join("image/tmp"));
    assert!(tmp.is_empty(), "left in image/tmp: {tmp:?}");
}
