//! Network benchmark, in one run, each figure as a ratio to its peer on the host:
//! - into a pod: TCP throughput (GET of a 32 MiB file) and request rate (GETs of a small
//!   file, a connection each) from the host through a published port on 127.0.0.1,
//!   against the same server (busybox httpd) run directly on the host's loopback;
//! - out of a pod: the same 32 MiB GET from inside the pod (busybox wget) to a server on
//!   the host's loopback, reached at the gateway address, against the same wget run on the
//!   host.
//!
//! All traffic stays on this machine's loopback.
//!
//!     cargo bench --bench net          # HYPERD_BENCH_RUNS=n (default 5)
mod common;
use common::{median, succeeded, Daemon};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const BIG_MIB: usize = 32;

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from 127.0.0.1:`port`; the body's length.
fn get(port: u16, path: &str) -> std::io::Result<usize> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    Ok(buf.len() - head - 4)
}

/// Waits until `path` answers on `port` (up to 60 s).
fn wait_ready(port: u16, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, path).map(|n| n == 0).unwrap_or(true) {
        assert!(
            Instant::now() < deadline,
            "127.0.0.1:{port}{path} never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// MiB/s of `runs` GETs of the big file, and requests/s of `requests` small GETs.
fn inbound(port: u16, runs: usize, requests: usize) -> (f64, f64) {
    let mut mibs = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let n = get(port, "/big").unwrap();
        assert_eq!(n, BIG_MIB << 20);
        mibs.push(BIG_MIB as f64 / t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    for _ in 0..requests {
        assert!(get(port, "/small").unwrap() > 0);
    }
    (median(mibs), requests as f64 / t.elapsed().as_secs_f64())
}

fn busybox_httpd(port: u16, dir: &std::path::Path) -> Child {
    Command::new("busybox")
        .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(dir)
        .spawn()
        .expect("busybox httpd runs on the host")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("net: bench");
        return;
    }
    let runs: usize = std::env::var("HYPERD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let requests = 50 * runs;
    let work = tempfile::tempdir().unwrap();
    let www = work.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("big"), vec![0u8; BIG_MIB << 20]).unwrap();
    std::fs::write(www.join("small"), b"hello\n").unwrap();
    let rootfs = common::busybox_tar(work.path());
    let d = Daemon::start(work.path(), "0");
    d.import_busybox(&rootfs);

    // The server on the host: the peer inbound, the target outbound.
    let host_port = free_port();
    let mut host_httpd = busybox_httpd(host_port, &www);
    wait_ready(host_port, "/small");

    // The same server in a pod, published on the host's loopback.
    let pod_port = free_port();
    let setup = format!(
        "mkdir -p /www && dd if=/dev/zero of=/www/big bs=1M count={BIG_MIB} 2>/dev/null \
         && echo hello > /www/small && exec httpd -f -p 80 -h /www"
    );
    succeeded(d.hyperctl().args([
        "run",
        "-d",
        "--name",
        "netbench",
        "--memory",
        "256",
        "--publish",
        &format!("127.0.0.1:{pod_port}:80"),
        "busybox",
        "sh",
        "-c",
        &setup,
    ]));
    wait_ready(pod_port, "/small");
    wait_ready(pod_port, "/big");

    let (host_mibs, host_rps) = inbound(host_port, runs, requests);
    let (pod_mibs, pod_rps) = inbound(pod_port, runs, requests);

    // Outbound: wget of the host's big file, from the pod (timed on the host around
    // `hyperctl exec`, less the median of an empty exec) and on the host.
    let exec = |args: &[&str]| {
        let t = Instant::now();
        succeeded(d.hyperctl().args(["exec", "netbench"]).args(args));
        t.elapsed().as_secs_f64()
    };
    let empty: Vec<f64> = (0..runs).map(|_| exec(&["true"])).collect();
    let empty = median(empty);
    let url_pod = format!("http://10.0.2.2:{host_port}/big");
    let url_host = format!("http://127.0.0.1:{host_port}/big");
    let pod_out: Vec<f64> = (0..runs)
        .map(|_| {
            let s = (exec(&["wget", "-q", "-O", "/dev/null", &url_pod]) - empty).max(1e-3);
            BIG_MIB as f64 / s
        })
        .collect();
    let host_out: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            succeeded(Command::new("busybox").args(["wget", "-q", "-O", "/dev/null", &url_host]));
            BIG_MIB as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    let (pod_out, host_out) = (median(pod_out), median(host_out));

    let driver = d.json("/info")["Driver"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    println!("network through passt, driver {driver}, median of {runs} ({requests} requests):");
    println!(
        "  into a pod, {BIG_MIB} MiB GET:  {pod_mibs:8.1} MiB/s   host loopback {host_mibs:8.1} MiB/s   ratio {:.3}",
        pod_mibs / host_mibs
    );
    println!(
        "  into a pod, small GETs:     {pod_rps:8.1} req/s   host loopback {host_rps:8.1} req/s   ratio {:.3}",
        pod_rps / host_rps
    );
    println!(
        "  out of a pod, {BIG_MIB} MiB GET: {pod_out:8.1} MiB/s   host loopback {host_out:8.1} MiB/s   ratio {:.3}",
        pod_out / host_out
    );
    succeeded(d.hyperctl().args(["rm", "netbench"]));
    let _ = host_httpd.kill();
    let _ = host_httpd.wait();
}
