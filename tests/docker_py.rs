//! docker-py (PyPI `docker`, installed by scripts/setup.sh into a venv) against a real
//! hyperd and a real loopback registry: the everyday calls of the most used Engine API
//! client after the CLI.
mod common;
use common::{Daemon, Registry};
use std::process::Command;

const SCRIPT: &str = r#"
import io, sys, time
import docker

client = docker.DockerClient(base_url="unix://" + sys.argv[1], timeout=120)
registry = sys.argv[2]

# run, attached: the output comes back; a failing command raises ContainerError.
out = client.containers.run("busybox", ["sh", "-c", "echo hi"], remove=True)
assert out == b"hi\n", out
try:
    client.containers.run("busybox", ["sh", "-c", "echo bad >&2; exit 3"], remove=True)
    raise AssertionError("no ContainerError")
except docker.errors.ContainerError as e:
    assert e.exit_status == 3, e.exit_status

# run, detached: logs, exec_run with its exit code.
c = client.containers.run(
    "busybox",
    ["sh", "-c", "trap 'exit 7' TERM; echo ready; while true; do sleep 1; done"],
    detach=True,
    name="py1",
)
deadline = time.time() + 60
while b"ready" not in c.logs():
    assert time.time() < deadline, c.logs()
    time.sleep(0.2)
r = c.exec_run(["sh", "-c", "echo in-exec; exit 4"])
assert r.exit_code == 4 and r.output == b"in-exec\n", r

# top, stats, pause/unpause, rename.
top = c.top()
assert "PID" in top["Titles"], top
assert any("while true" in " ".join(p) for p in top["Processes"]), top
stats = c.stats(stream=False)
assert stats["memory_stats"]["limit"] > 0, stats
assert "cpu_usage" in stats["cpu_stats"] and "precpu_stats" in stats, stats
c.pause()
c.reload()
assert c.status == "paused", c.status
c.unpause()
c.reload()
assert c.status == "running", c.status
c.rename("py2")
c.reload()
assert c.name == "py2", c.name

# stop: the trap's exit code; restart: running again.
c.stop(timeout=5)
c.reload()
assert c.status == "exited" and c.attrs["State"]["ExitCode"] == 7, c.attrs["State"]
c.restart(timeout=1)
c.reload()
assert c.status == "running", c.status
names = sorted(x.name for x in client.containers.list(all=True))
assert names == ["py2"], names

# commit: the container's change is in the new image.
c.exec_run(["sh", "-c", "echo committed-by-py > /py.txt"])
image = c.commit(repository="pycommit", tag="1", changes=["ENV FROM_PY=1"])
out = client.containers.run("pycommit:1", ["sh", "-c", "cat /py.txt; echo $FROM_PY"], remove=True)
assert out == b"committed-by-py\n1\n", out
client.images.remove("pycommit:1")

# images.build with a tag: a Dockerfile in a context directory; the image runs, and a
# failing step raises BuildError with the step's output.
import os, tempfile
ctx = tempfile.mkdtemp()
with open(os.path.join(ctx, "Dockerfile"), "w") as f:
    f.write("FROM busybox\nARG WHO=nobody\nCOPY hello.txt /hello.txt\nRUN echo \"built for $WHO\" >> /hello.txt\nCMD [\"cat\", \"/hello.txt\"]\n")
with open(os.path.join(ctx, "hello.txt"), "w") as f:
    f.write("hello from the context\n")
built, logs = client.images.build(path=ctx, tag="pybuilt:1", buildargs={"WHO": "py"})
assert "pybuilt:1" in built.tags, built.tags
assert any("Step 4/5" in l.get("stream", "") for l in logs), logs
out = client.containers.run("pybuilt:1", remove=True)
assert out == b"hello from the context\nbuilt for py\n", out
with open(os.path.join(ctx, "Dockerfile"), "w") as f:
    f.write("FROM busybox\nRUN echo step-output; exit 5\n")
try:
    client.images.build(path=ctx, tag="pyfails:1")
    raise AssertionError("no BuildError")
except docker.errors.BuildError as e:
    assert "non-zero code: 5" in str(e), str(e)
    assert any("step-output" in l.get("stream", "") for l in e.build_log), e.build_log
client.images.remove("pybuilt:1")
c.remove(force=True)
assert client.containers.list(all=True) == []

# save, then load; tag; push to the registry.
image = client.images.get("busybox")
data = b"".join(image.save(named=True))
client.images.remove("busybox")
loaded = client.images.load(data)
assert any("busybox:latest" in i.tags for i in loaded), loaded
image = client.images.get("busybox")
remote = registry + "/py/bb"
assert image.tag(remote, tag="1")
lines = list(client.images.push(remote, tag="1", stream=True, decode=True))
assert not any("error" in l for l in lines), lines
assert any("digest" in l.get("aux", {}) or "Digest" in l.get("aux", {}) for l in lines), lines
print("OK")
"#;

#[test]
fn docker_py_everyday_calls() {
    let venv = hyperd::config::default_cache_dir().join("pyvenv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: scripts/setup.sh installs docker-py",
        venv.display()
    );
    let reg = Registry::start(None);
    let d = Daemon::start();
    d.import_busybox();
    let script = d.dir.path().join("everyday.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = Command::new(&venv)
        .arg(&script)
        .arg(&d.socket)
        .arg(&reg.addr)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "stdout={stdout}\nstderr={stderr}\ndaemon log tail={}",
        d.log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let tags = Command::new("curl")
        .args(["-sS", &format!("http://{}/v2/py/bb/tags/list", reg.addr)])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&tags.stdout).contains("\"1\""));
}
