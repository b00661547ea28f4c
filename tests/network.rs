//! Pods on the network (qemu driver, passt backend): published ports answer on the
//! host's loopback through `hyperctl run --publish`, a plain `POST /pod/create` with
//! `portmappings` and the docker CLI (`-p`, `-P`); a port added to a running pod
//! (`PUT /pod/{id}/portmappings/add`) answers, also after a daemon `kill -9`, and stops
//! answering once deleted; a pod reaches a server on the host's
//! loopback at the gateway (`host.docker.internal:host-gateway`); two containers of a pod
//! talk over localhost; UDP is published and answered; a published port survives a
//! `kill -9` of the daemon; a taken host port is refused; `--net none` has no eth0; a pod
//! on a network namespace the test made (the netns backend) answers ping and HTTP from a
//! peer namespace, hostile namespace paths are refused; nothing is left behind. All
//! traffic stays on this machine's loopback or inside the test's own namespaces.
mod common;
use common::{free_port, http_get, out_ok, Daemon};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits until a container's log contains `needle` (up to 60 s).
fn wait_log(d: &Daemon, container: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = d.hyperctl(&["logs", container]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{container}'s log lacks {needle:?}: {text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The passt processes of the daemon's VMs now.
fn passt_pids(d: &Daemon) -> Vec<u32> {
    common::helper_pids(d, "passt.pid")
}

/// A static UDP echo server (`udp-echo PORT`: answers `echo:<datagram>` and logs
/// `got <datagram>`), compiled here and imported as the image `udpecho`: busybox has no
/// UDP server.
fn import_udp_echo(d: &Daemon) {
    const SOURCE: &str = r#"
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        char buf[1500], out[1600];
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n < 0) continue;
        int m = snprintf(out, sizeof out, "echo:%.*s", (int)n, buf);
        sendto(s, out, m, 0, (struct sockaddr *)&peer, len);
        printf("got %.*s\n", (int)n, buf);
        fflush(stdout);
    }
}
"#;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("udp-echo.c");
    std::fs::write(&src, SOURCE).unwrap();
    let bin = dir.path().join("udp-echo");
    let cc = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let mut tar = tar::Builder::new(Vec::new());
    let data = std::fs::read(&bin).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    tar.append_data(&mut h, "udp-echo", &data[..]).unwrap();
    let path = dir.path().join("udpecho.tar");
    std::fs::write(&path, tar.into_inner().unwrap()).unwrap();
    out_ok(&d.hyperctl(&["import", path.to_str().unwrap(), "udpecho"]));
}

/// Sends `msg` to 127.0.0.1:`port` over UDP until an answer comes (up to 60 s).
fn udp_exchange(port: u16, msg: &[u8]) -> Vec<u8> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 1600];
    while Instant::now() < deadline {
        s.send_to(msg, (Ipv4Addr::LOCALHOST, port)).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return buf[..n].to_vec();
        }
    }
    panic!("no UDP answer from 127.0.0.1:{port}");
}

/// Two network namespaces this test makes and removes, joined by a veth pair:
/// 10.231.0.2/24 in A (default route via B), 10.231.0.1/24 in B. The addresses exist only
/// inside them.
struct TestNamespaces {
    a: String,
    b: String,
}

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().unwrap();
    out_ok(&o)
}

impl TestNamespaces {
    fn new() -> TestNamespaces {
        let id = std::process::id();
        let t = TestNamespaces {
            a: format!("hyperd-t{id}-a"),
            b: format!("hyperd-t{id}-b"),
        };
        let (va, vb) = (format!("hyt{id}a"), format!("hyt{id}b"));
        ip(&["netns", "add", &t.a]);
        ip(&["netns", "add", &t.b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &t.a, "name", "eth0"]);
        ip(&["link", "set", &vb, "netns", &t.b, "name", "eth0"]);
        ip(&["-n", &t.a, "addr", "add", "10.231.0.2/24", "dev", "eth0"]);
        ip(&["-n", &t.b, "addr", "add", "10.231.0.1/24", "dev", "eth0"]);
        for ns in [&t.a, &t.b] {
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &t.a, "route", "add", "default", "via", "10.231.0.1"]);
        t
    }

    fn path_a(&self) -> String {
        format!("/run/netns/{}", self.a)
    }

    fn mac_a(&self) -> String {
        let link = ip(&["-n", &self.a, "-o", "link", "show", "eth0"]);
        let mac = link.split("link/ether ").nth(1).unwrap_or_default();
        mac.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    fn in_b(&self, cmd: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.b])
            .args(cmd)
            .output()
            .unwrap()
    }

    fn tc_a(&self) -> String {
        let o = Command::new("tc")
            .args(["-n", &self.a, "qdisc", "show", "dev", "eth0"])
            .output()
            .unwrap();
        out_ok(&o)
    }

    fn links_a(&self) -> String {
        ip(&["-n", &self.a, "-o", "link"])
    }
}

impl Drop for TestNamespaces {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

const HTTPD: &str =
    "mkdir -p /www && echo \"$GREETING\" > /www/index.html && exec httpd -f -p 80 -h /www";

#[test]
fn pods_serve_reach_out_and_clean_up() {
    // No pool: every passt seen belongs to a pod of this test.
    let mut d = Daemon::start_with(&["--pool", "0"]);
    d.import_busybox();
    let mut seen_passt = Vec::new();

    // hyperctl run --publish: the pod serves a file on the host's loopback.
    let p1 = free_port();
    out_ok(&d.hyperctl(&[
        "run",
        "-d",
        "--name",
        "web1",
        "-e",
        "GREETING=hello-from-hyperctl",
        "--publish",
        &format!("127.0.0.1:{p1}:80"),
        "busybox",
        "sh",
        "-c",
        HTTPD,
    ]));
    assert_eq!(http_get(p1, "/index.html"), "hello-from-hyperctl\n");
    let ports = out_ok(&d.hyperctl(&["ports", "web1"]));
    assert_eq!(ports.trim(), format!("80/tcp -> 127.0.0.1:{p1}"));
    let info = d.json("GET", "/pod/info?podName=web1", None);
    assert_eq!(info["network"]["ipAddress"], "10.0.2.15", "{info}");
    assert_eq!(info["network"]["gateway"], "10.0.2.2", "{info}");
    assert_eq!(info["network"]["ports"][0]["hostPort"], p1, "{info}");
    seen_passt.extend(passt_pids(&d));
    assert!(!seen_passt.is_empty(), "no passt for a pod with ports");

    // A port added while the pod runs answers (relayed over the agent channel), and one
    // more is added and removed again.
    let live = free_port();
    let add = |port: u16| {
        serde_json::json!([{"containerPort": 80, "hostPort": port, "hostIP": "127.0.0.1"}])
            .to_string()
    };
    let (status, body) = d.curl("PUT", "/pod/web1/portmappings/add", Some(&add(live)));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("\"hostPort\":{live}")), "{body}");
    assert_eq!(http_get(live, "/index.html"), "hello-from-hyperctl\n");
    let gone = free_port();
    let (status, body) = d.curl("PUT", "/pod/web1/portmappings/add", Some(&add(gone)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(gone, "/index.html"), "hello-from-hyperctl\n");
    let (status, body) = d.curl("PUT", "/pod/web1/portmappings/delete", Some(&add(gone)));
    assert_eq!(status, 200, "{body}");
    assert!(
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, gone)).is_err(),
        "a deleted port still answers"
    );
    // Refused: a port published already (409), UDP (400), a start-time port's removal
    // (404), a bad list (400); nothing changes.
    let (status, body) = d.curl("PUT", "/pod/web1/portmappings/add", Some(&add(live)));
    assert_eq!(status, 409, "{body}");
    let udp =
        serde_json::json!([{"containerPort": 53, "hostPort": free_port(), "protocol": "udp"}]);
    let (status, body) = d.curl("PUT", "/pod/web1/portmappings/add", Some(&udp.to_string()));
    assert_eq!(status, 400, "{body}");
    let (status, body) = d.curl("PUT", "/pod/web1/portmappings/delete", Some(&add(p1)));
    assert_eq!(status, 404, "{body}");
    let (status, body) = d.curl(
        "PUT",
        "/pod/web1/portmappings/add",
        Some("{\"not\": \"a list\"}"),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = d.curl("GET", "/pod/web1/portmappings", None);
    assert_eq!(status, 200, "{body}");
    let mapped: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(mapped.len(), 2, "{body}");
    // hyperctl: add and delete with `ports --add/--delete`.
    let viactl = free_port();
    out_ok(&d.hyperctl(&["ports", "web1", "--add", &format!("127.0.0.1:{viactl}:80")]));
    assert_eq!(http_get(viactl, "/index.html"), "hello-from-hyperctl\n");
    let listed = out_ok(&d.hyperctl(&[
        "ports",
        "web1",
        "--delete",
        &format!("127.0.0.1:{viactl}:80"),
    ]));
    assert!(!listed.contains(&viactl.to_string()), "{listed}");

    // kill -9 of the daemon: the port still answers; the next daemon shows it, and
    // listens on the port added while the pod ran again.
    d.kill9();
    assert_eq!(http_get(p1, "/index.html"), "hello-from-hyperctl\n");
    d.restart();
    let ports = out_ok(&d.hyperctl(&["ports", "web1"]));
    assert!(
        ports.contains(&format!("80/tcp -> 127.0.0.1:{p1}")),
        "{ports}"
    );
    assert!(
        ports.contains(&format!("80/tcp -> 127.0.0.1:{live}")),
        "{ports}"
    );
    assert_eq!(http_get(p1, "/index.html"), "hello-from-hyperctl\n");
    assert_eq!(http_get(live, "/index.html"), "hello-from-hyperctl\n");

    // UDP, published and answered.
    import_udp_echo(&d);
    let pu = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    out_ok(&d.hyperctl(&[
        "run",
        "-d",
        "--name",
        "udp",
        "--publish",
        &format!("127.0.0.1:{pu}:5353/udp"),
        "udpecho",
        "/udp-echo",
        "5353",
    ]));
    assert_eq!(udp_exchange(pu, b"ping-over-udp"), b"echo:ping-over-udp");
    wait_log(&d, "udp", "got ping-over-udp");

    // A taken host port: refused with a clear error, and no backend is left running.
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let tp = taken.local_addr().unwrap().port();
    let before = passt_pids(&d).len();
    let o = d.hyperctl(&[
        "run",
        "-d",
        "--name",
        "clash",
        "--publish",
        &format!("127.0.0.1:{tp}:80"),
        "busybox",
        "true",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already in use"), "{err}");
    assert_eq!(
        passt_pids(&d).len(),
        before,
        "a backend was left for the refused pod"
    );
    let (status, body) = d.curl("POST", "/pod/start?podId=clash", None);
    assert_eq!(status, 409, "{body}");
    drop(taken);

    // POST /pod/create with portmappings; two containers talk over localhost.
    let p2 = free_port();
    let spec = serde_json::json!({
        "id": "pair",
        "containers": [
            {"name": "server", "image": "busybox", "command": ["sh", "-c", HTTPD],
             "envs": [{"env": "GREETING", "value": "hello-from-the-pair"}]},
            {"name": "client", "image": "busybox", "command": ["sh", "-c",
             "until wget -qO- http://localhost/index.html; do sleep 0.3; done; exec sleep 600"]}
        ],
        "portmappings": [
            {"containerPort": 80, "hostPort": p2, "protocol": "tcp", "hostIP": "127.0.0.1"}
        ]
    });
    let (status, body) = d.curl("POST", "/pod/create", Some(&spec.to_string()));
    assert_eq!(status, 200, "{body}");
    let (status, body) = d.curl("POST", "/pod/start?podId=pair", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(p2, "/index.html"), "hello-from-the-pair\n");
    wait_log(&d, "client", "hello-from-the-pair");
    seen_passt.extend(passt_pids(&d));

    // The host's loopback at the gateway, by the name Docker gives it.
    let host_server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let hp = host_server.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = host_server.accept().unwrap();
        c.write_all(b"hello-from-the-host\n").unwrap();
    });
    out_ok(&d.hyperctl(&[
        "run",
        "-d",
        "--name",
        "caller",
        "--add-host",
        "host.docker.internal:host-gateway",
        "busybox",
        "sh",
        "-c",
        &format!(
            "grep host.docker.internal /etc/hosts; nc host.docker.internal {hp}; exec sleep 600"
        ),
    ]));
    let log = wait_log(&d, "caller", "hello-from-the-host");
    assert!(log.contains("10.0.2.2\thost.docker.internal"), "{log}");
    server.join().unwrap();

    // No network: loopback only.
    let o = out_ok(&d.hyperctl(&[
        "run",
        "--rm",
        "--net",
        "none",
        "busybox",
        "cat",
        "/proc/net/dev",
    ]));
    assert!(o.contains("lo:") && !o.contains("eth0"), "{o}");

    // The docker CLI: -p, -P with an exposed port, docker port and ps.
    let config = tempfile::tempdir().unwrap();
    let docker = |args: &[&str]| {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", d.socket.display()))
            .env("DOCKER_CONFIG", config.path())
            .env_remove("DOCKER_CONTEXT")
            .output()
            .unwrap()
    };
    let p3 = free_port();
    out_ok(&docker(&[
        "run",
        "-d",
        "--name",
        "dweb",
        "-e",
        "GREETING=hello-from-docker",
        "-p",
        &format!("127.0.0.1:{p3}:80"),
        "busybox",
        "sh",
        "-c",
        HTTPD,
    ]));
    assert_eq!(http_get(p3, "/index.html"), "hello-from-docker\n");
    let port = out_ok(&docker(&["port", "dweb"]));
    assert_eq!(port.trim(), format!("80/tcp -> 127.0.0.1:{p3}"));
    let ps = out_ok(&docker(&["ps", "--format", "{{.Names}} {{.Ports}}"]));
    assert!(ps.contains(&format!("dweb 127.0.0.1:{p3}->80/tcp")), "{ps}");
    out_ok(&docker(&[
        "run",
        "-d",
        "--name",
        "dany",
        "-e",
        "GREETING=hello-from-a-free-port",
        "--expose",
        "80",
        "-P",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    ]));
    let port = out_ok(&docker(&["port", "dany", "80/tcp"]));
    let any: u16 = port
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("docker port: {port}"));
    assert!(any > 0);
    assert_eq!(http_get(any, "/index.html"), "hello-from-a-free-port\n");
    seen_passt.extend(passt_pids(&d));

    // The netns backend (the CNI way): a pod on a namespace this test made, wired by veth
    // to a peer namespace, answers a ping and HTTP from the peer.
    let ns = TestNamespaces::new();
    out_ok(&d.hyperctl(&[
        "run",
        "-d",
        "--name",
        "onns",
        "-e",
        "GREETING=hello-from-the-namespace",
        "--net",
        &ns.path_a(),
        "busybox",
        "sh",
        "-c",
        HTTPD,
    ]));
    let info = d.json("GET", "/pod/info?podName=onns", None);
    assert_eq!(info["network"]["mode"], "netns", "{info}");
    assert_eq!(info["network"]["ipAddress"], "10.231.0.2", "{info}");
    assert_eq!(info["network"]["gateway"], "10.231.0.1", "{info}");
    assert_eq!(info["network"]["macAddress"], ns.mac_a(), "{info}");
    let ping = ns.in_b(&["busybox", "ping", "-c", "3", "-W", "5", "10.231.0.2"]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = ns.in_b(&["curl", "-s", "-m", "5", "http://10.231.0.2/index.html"]);
        if String::from_utf8_lossy(&o.stdout) == "hello-from-the-namespace\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no HTTP answer from the pod: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(ns.tc_a().contains("ingress"), "{}", ns.tc_a());
    // A second pod on the same namespace is refused, and the first keeps its wiring.
    let o = d.hyperctl(&[
        "run",
        "-d",
        "--name",
        "onns2",
        "--net",
        &ns.path_a(),
        "busybox",
        "true",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ingress qdisc"), "{err}");
    let again = ns.in_b(&["curl", "-s", "-m", "10", "http://10.231.0.2/index.html"]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "hello-from-the-namespace\n"
    );
    // Hostile namespace paths: the host's own, one that is not there; nothing changes.
    for bad in ["/proc/1/ns/net", "/run/netns/../../proc/1/ns/net"] {
        let spec = serde_json::json!({"containers": [{"image": "busybox", "command": ["true"]}],
                                      "networkNamespace": bad});
        let (status, body) = d.curl("POST", "/pod/create", Some(&spec.to_string()));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("network namespace"), "{body}");
    }
    let missing = serde_json::json!({"id": "nons",
                                     "containers": [{"image": "busybox", "command": ["true"]}],
                                     "networkNamespace": "/run/netns/hyperd-absent-ns"});
    let (status, body) = d.curl("POST", "/pod/create", Some(&missing.to_string()));
    assert_eq!(status, 200, "{body}");
    let (status, body) = d.curl("POST", "/pod/start?podId=nons", None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("hyperd-absent-ns"), "{body}");
    out_ok(&d.hyperctl(&["rm", "onns", "onns2", "nons"]));
    assert!(!ns.tc_a().contains("ingress"), "qdisc left: {}", ns.tc_a());
    assert!(!ns.links_a().contains("hyt"), "tap left: {}", ns.links_a());

    // Removal leaves no backend and no listening port (the leftover scan sees the
    // running pods' monitors and backends first).
    let running = common::helper_processes(&d);
    assert!(
        running.iter().any(|p| p.contains("qemu-system")),
        "{running:?}"
    );
    for name in ["web1", "udp", "clash", "pair", "caller", "dweb", "dany"] {
        let o = d.hyperctl(&["rm", name]);
        assert!(o.status.success(), "rm {name}: {:?}", o);
    }
    for pid in seen_passt {
        common::wait_gone(pid, "passt");
    }
    for p in [p1, p2, p3, any, live] {
        assert!(
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok(),
            "port {p} still taken"
        );
    }
    common::assert_no_leftovers(&d);
}
