//! Images from Dockerfiles (qemu driver, one daemon): the docker CLI's classic builder
//! (`DOCKER_BUILDKIT=0 docker build`) builds a multi-stage Dockerfile that uses `RUN`,
//! `COPY --from`, `ARG`, `ENV`, `USER`, `WORKDIR`, `ADD` (a local archive and a URL on
//! loopback) and `.dockerignore`, and the image runs and shows what the build put
//! there; an unchanged rebuild runs no `RUN`; `hyperctl build` with `-f` and
//! `--build-arg`; a failing `RUN` reports its code and output and leaves no pod, VM or
//! file behind; hostile contexts and Dockerfiles are refused.
mod common;
use common::{out_ok, Daemon};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Serves `body` to every request on a loopback port, in a thread.
fn serve_once_on_loopback(body: &'static [u8]) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body);
        }
    });
    format!("http://{addr}/files/fetched.txt")
}

fn docker_build(d: &Daemon, cfg: &Path, args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .arg("build")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", d.socket.display()))
        .env("DOCKER_CONFIG", cfg)
        .env("DOCKER_BUILDKIT", "0")
        .env_remove("DOCKER_CONTEXT")
        .output()
        .unwrap()
}

/// The build context as a tar with `files`.
fn context(files: &[(&str, &[u8])]) -> Vec<u8> {
    common::tar_of(files)
}

/// `POST /image/build` with a context; the JSON lines of the answer.
fn api_build(d: &Daemon, query: &str, ctx: &[u8]) -> Vec<serde_json::Value> {
    let file = d.dir.path().join(format!("ctx-{}.tar", ctx.len()));
    std::fs::write(&file, ctx).unwrap();
    let (code, body) = d.curl_with(
        "POST",
        &format!("/image/build{query}"),
        None,
        &[
            "-H",
            "Content-Type: application/x-tar",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
    );
    assert_eq!(code, 200, "{body}");
    common::json_lines(&body)
}

fn error_of(lines: &[serde_json::Value]) -> Option<&serde_json::Value> {
    lines.iter().find(|l| l.get("error").is_some())
}

#[test]
fn dockerfiles_become_images() {
    let d = Daemon::start();
    d.import_busybox();
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    let url = serve_once_on_loopback(b"fetched over http\n");

    // A multi-stage Dockerfile: the first stage builds with RUN in a micro-VM, the
    // second takes only its result.
    write(
        c,
        "Dockerfile",
        &format!(
            r#"# a comment
ARG BASE=busybox
FROM $BASE AS builder
ARG GREETING=hello
ENV OUT=/out \
    MODE=release
WORKDIR /src
COPY app/ ./
ADD bundle.tar.gz /opt/bundle/
ADD {url} /opt/fetched.txt
RUN mkdir -p $OUT && cat main.txt > $OUT/result \
 && echo "$GREETING $MODE" >> $OUT/result \
 && cat /opt/bundle/inner/data.txt /opt/fetched.txt >> $OUT/result \
 && (test -e secret.txt && echo secret-leaked || echo no-secret) >> $OUT/result \
 && echo "output of a RUN step"

FROM busybox
COPY --from=builder /out/result /srv/result
COPY --chown=65534:65534 app/main.txt /home/app/
RUN rm /bin/vi
WORKDIR /srv
USER nobody
ENV GREETING=runtime
LABEL org.example.stage=final
EXPOSE 8080
CMD ["sh", "-c", "cat result; id -u; pwd; echo $GREETING; test -e /bin/vi || echo vi-gone; stat -c %u /home/app/main.txt"]
"#
        ),
    );
    write(c, "app/main.txt", "main file\n");
    write(c, "app/secret.txt", "must not reach the image\n");
    write(c, ".dockerignore", "# keep secrets out\n**/secret.txt\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&common::tar_of(&[(
        "inner/data.txt",
        b"from the archive\n",
    )]))
    .unwrap();
    std::fs::write(c.join("bundle.tar.gz"), gz.finish().unwrap()).unwrap();

    let out = docker_build(
        &d,
        cfg,
        &[
            "-t",
            "built:1",
            "--build-arg",
            "GREETING=hi",
            c.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Step 1/18 : FROM $BASE AS builder"), "{text}");
    assert!(text.contains("output of a RUN step"), "{text}");
    assert!(text.contains("Successfully tagged built:1"), "{text}");
    assert_eq!(
        out_ok(&d.docker(cfg, &["run", "--rm", "built:1"])),
        "main file\nhi release\nfrom the archive\nfetched over http\nno-secret\n65534\n/srv\nruntime\nvi-gone\n65534"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&out_ok(&d.docker(cfg, &["image", "inspect", "built:1"]))).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "nobody");
    assert_eq!(config["WorkingDir"], "/srv");
    assert_eq!(config["Labels"]["org.example.stage"], "final");
    assert!(config["ExposedPorts"]["8080/tcp"].is_object(), "{config}");
    let history = out_ok(&d.docker(cfg, &["history", "--no-trunc", "built:1"]));
    assert!(history.contains("rm /bin/vi"), "{history}");

    // The same build again: every step from the cache, no RUN, the same image.
    let first_id = inspect[0]["Id"].as_str().unwrap().to_string();
    let again = docker_build(
        &d,
        cfg,
        &[
            "-t",
            "built:2",
            "--build-arg",
            "GREETING=hi",
            c.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(again.status.success(), "{text}");
    assert!(!text.contains("Running in"), "a RUN ran again:\n{text}");
    assert!(text.contains("Using cache"), "{text}");
    let second: serde_json::Value =
        serde_json::from_str(&out_ok(&d.docker(cfg, &["image", "inspect", "built:2"]))).unwrap();
    assert_eq!(second[0]["Id"], first_id.as_str());
    // A changed build argument runs the RUN that sees it; --no-cache runs them all.
    let changed = docker_build(
        &d,
        cfg,
        &[
            "-t",
            "built:3",
            "--build-arg",
            "GREETING=hey",
            c.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&changed.stdout).contains("Running in"));
    assert_eq!(
        out_ok(&d.docker(
            cfg,
            &["run", "--rm", "built:3", "head", "-2", "/srv/result"]
        )),
        "main file\nhey release"
    );

    // hyperctl build: another Dockerfile name, a build argument, a target stage.
    write(
        c,
        "other.Dockerfile",
        "FROM busybox AS first\nARG WHAT\nRUN echo \"made by hyperctl: $WHAT\" > /made.txt\nFROM scratch AS unused\nCOPY app/main.txt /\n",
    );
    let id = out_ok(&d.hyperctl(&[
        "build",
        "-t",
        "hbuilt:1",
        "-f",
        "other.Dockerfile",
        "--build-arg",
        "WHAT=cli",
        "--target",
        "first",
        c.to_str().unwrap(),
    ]));
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(
        out_ok(&d.docker(cfg, &["run", "--rm", "hbuilt:1", "cat", "/made.txt"])),
        "made by hyperctl: cli"
    );

    // A failing RUN: its code and output in the answer; no pod, VM or file left.
    let lines = api_build(
        &d,
        "?t=fails:1",
        &context(&[(
            "Dockerfile",
            b"FROM busybox\nRUN echo about to fail; echo on-stderr >&2; exit 3\n",
        )]),
    );
    let err = error_of(&lines).unwrap_or_else(|| panic!("no error in {lines:?}"));
    assert_eq!(err["errorDetail"]["code"], 3, "{err}");
    assert!(err["error"].as_str().unwrap().contains("non-zero code: 3"));
    let streamed: String = lines.iter().filter_map(|l| l["stream"].as_str()).collect();
    assert!(
        streamed.contains("about to fail") && streamed.contains("on-stderr"),
        "{streamed}"
    );
    assert!(d.json("GET", "/list?item=pod", None)["podData"]
        .as_array()
        .is_none_or(|a| a.is_empty()));
    common::assert_no_leftovers(&d);
    let tmp = common::tree(&d.root.join("image/tmp"));
    assert!(tmp.is_empty(), "left in image/tmp: {tmp:?}");
    let (code, _) = d.curl("GET", "/images/fails:1/json", None);
    assert_eq!(code, 404);

    // Hostile input: a context entry that climbs out, a COPY out of the context, a
    // broken Dockerfile, a missing Dockerfile: an error each, nothing stored.
    for (files, want) in [
        (
            vec![
                ("Dockerfile", &b"FROM busybox\n"[..]),
                ("../escape", &b"x"[..]),
            ],
            "",
        ),
        (
            vec![(
                "Dockerfile",
                &b"FROM busybox\nCOPY ../../etc/passwd /x\n"[..],
            )],
            "outside the build context",
        ),
        (
            vec![("Dockerfile", &b"FROM busybox\nBOGUS x\n"[..])],
            "unknown instruction",
        ),
        (vec![("other", &b"x"[..])], "Dockerfile"),
    ] {
        let lines = api_build(&d, "?t=hostile:1", &context(&files));
        let err = error_of(&lines).unwrap_or_else(|| panic!("no error for {files:?}: {lines:?}"));
        assert!(err["error"].as_str().unwrap().contains(want), "{err}");
    }
    let (code, _) = d.curl("GET", "/images/hostile:1/json", None);
    assert_eq!(code, 404);
    let (code, body) = d.curl(
        "POST",
        "/image/build?remote=https://example.invalid/x.git",
        None,
    );
    assert_eq!(code, 400, "{body}");

    // The intermediate images show with `-a` only; `docker image prune` removes them
    // and leaves the named images working.
    let count = |args: &[&str]| out_ok(&d.docker(cfg, args)).lines().count();
    let (plain, all) = (count(&["images", "-q"]), count(&["images", "-a", "-q"]));
    assert!(all > plain, "{all} {plain}");
    let pruned = out_ok(&d.docker(cfg, &["image", "prune", "-f"]));
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    assert!(count(&["images", "-a", "-q"]) < all);
    assert_eq!(count(&["images", "-q"]), plain);
    assert_eq!(
        out_ok(&d.docker(cfg, &["run", "--rm", "hbuilt:1", "cat", "/made.txt"])),
        "made by hyperctl: cli"
    );
}
