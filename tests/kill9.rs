//! The daemon killed with SIGKILL at random moments of an interleaved workload (pulls
//! from a loopback registry, imports, pod runs, execs, stops, removals, image removals
//! from three clients at once), and started again each time. After each restart:
//! - the store opens (`/info`, `/list`, the image list answer);
//! - nothing that was stored before the kill is lost: every image whose import or pull
//!   had answered, and every pod whose run had answered (and that no client was
//!   removing), is still there;
//! - every pod can be stopped and removed;
//! - a new pod runs;
//! - no VM process or helper, mount, cgroup, socket, pod or VM directory, or temporary
//!   file is left that no pod owns.
//!
//! `HYPERD_KILL_ROUNDS` kills (4 by default, CI's small run; `scripts/kill9.sh 100` for
//! a long one) and `HYPERD_KILL_SEED` to replay a run: the seed is printed.
mod common;
use common::{out_ok, Daemon, Registry};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A small xorshift generator: the run is replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the clients know was stored: answered before the kill, and not being removed.
#[derive(Default)]
struct Stored {
    images: BTreeSet<String>,
    pods: BTreeSet<String>,
}

struct Client {
    socket: PathBuf,
    hyperctl: PathBuf,
    busybox: PathBuf,
    registry: String,
}

impl Client {
    fn run(&self, args: &[&str]) -> bool {
        Command::new(&self.hyperctl)
            .arg("-H")
            .arg(&self.socket)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// One random operation; what it stored (or is removing) goes into `stored`.
    fn step(&self, rng: &mut Rng, n: u64, stored: &Mutex<Stored>) -> &'static str {
        let pick = |set: &BTreeSet<String>, rng: &mut Rng| -> Option<String> {
            let i = rng.below(set.len() as u64) as usize;
            set.iter().nth(i).cloned()
        };
        match rng.below(8) {
            0 => {
                let name = format!("keep-{n}");
                if self.run(&["import", self.busybox.to_str().unwrap(), &name]) {
                    stored.lock().unwrap().images.insert(name);
                }
                "import"
            }
            1 => {
                let name = format!("{}/busybox:latest", self.registry);
                if self.run(&["pull", "-q", &name]) {
                    stored.lock().unwrap().images.insert(name);
                }
                "pull"
            }
            2 | 3 => {
                let name = format!("p{n}");
                if self.run(&["run", "-d", "--name", &name, "busybox", "sleep", "1000"]) {
                    stored.lock().unwrap().pods.insert(name);
                }
                "run"
            }
            4 => {
                let pod = pick(&stored.lock().unwrap().pods, rng);
                if let Some(p) = pod {
                    self.run(&["exec", &p, "echo", "hi"]);
                }
                "exec"
            }
            5 => {
                let pod = pick(&stored.lock().unwrap().pods, rng);
                if let Some(p) = pod {
                    self.run(&["stop", "-t", "1", &p]);
                }
                "stop"
            }
            6 => {
                // Removing: from here on the pod may or may not exist after a kill.
                let pod = {
                    let mut s = stored.lock().unwrap();
                    let p = pick(&s.pods, rng);
                    if let Some(p) = &p {
                        s.pods.remove(p);
                    }
                    p
                };
                if let Some(p) = pod {
                    self.run(&["rm", &p]);
                }
                "rm"
            }
            _ => {
                let image = {
                    let mut s = stored.lock().unwrap();
                    let keep: BTreeSet<String> = s
                        .images
                        .iter()
                        .filter(|i| i.starts_with("keep-"))
                        .cloned()
                        .collect();
                    let i = pick(&keep, rng);
                    if let Some(i) = &i {
                        s.images.remove(i);
                    }
                    i
                };
                if let Some(i) = image {
                    self.run(&["rmi", &i]);
                }
                "rmi"
            }
        }
    }
}

fn rounds() -> usize {
    std::env::var("HYPERD_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

/// The names of hyperd's VM cgroups now.
fn cgroups() -> BTreeSet<String> {
    ["/sys/fs/cgroup/hyperd", "/sys/fs/cgroup/cpu/hyperd"]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Pod names and ids from `/list`.
fn pods(d: &Daemon) -> Vec<(String, String)> {
    let list = d.json("GET", "/list?item=pod", None);
    list["podData"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let mut f = p.as_str()?.split(':');
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

fn check_after_restart(d: &Daemon, stored: &Stored, cgroups_before: &BTreeSet<String>) {
    // The store opens.
    let (code, info) = d.curl("GET", "/info", None);
    assert_eq!(code, 200, "{info}");
    let images = out_ok(&d.hyperctl(&["images"]));
    for image in &stored.images {
        let (repo, tag) = match image.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (image.as_str(), "latest"),
        };
        let listed = images.lines().any(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some(repo) && f.next() == Some(tag)
        });
        assert!(listed, "image {image} was stored, and is gone:\n{images}");
    }
    let now = pods(d);
    for pod in &stored.pods {
        assert!(
            now.iter().any(|(_, name)| name == pod),
            "pod {pod} was created, and is gone: {now:?}"
        );
    }
    // Every pod stops and goes.
    for (id, name) in &now {
        let (code, body) = d.curl("POST", &format!("/pod/stop?podId={id}&time=1"), None);
        assert!(code < 500, "stop {name}: {code} {body}");
        let (code, body) = d.curl("DELETE", &format!("/pod?podId={id}"), None);
        assert_eq!(code, 200, "rm {name}: {body}");
    }
    assert!(pods(d).is_empty());
    // A new pod runs.
    assert_eq!(
        out_ok(&d.hyperctl(&["run", "--rm", "busybox", "echo", "alive"])),
        "alive"
    );
    // Nothing is left that no pod owns.
    common::assert_no_leftovers(d);
    let root = d.root.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours: Vec<&str> = mounts.lines().filter(|l| l.contains(&root)).collect();
    assert!(ours.is_empty(), "mounts left: {ours:?}");
    let left_cgroups: Vec<String> = cgroups().difference(cgroups_before).cloned().collect();
    assert!(left_cgroups.is_empty(), "cgroups left: {left_cgroups:?}");
    let temp: Vec<PathBuf> = common::tree(&d.root.join("image/tmp"));
    assert!(temp.is_empty(), "temporary files left: {temp:?}");
}

#[test]
fn kill9_at_random_moments_loses_nothing() {
    let seed = std::env::var("HYPERD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill9: seed {seed} (HYPERD_KILL_SEED={seed} replays this run)");
    let mut rng = Rng(seed);
    let cgroups_before = cgroups();
    let registry = Registry::start(None);
    let mut d = Daemon::start();
    d.import_busybox();
    out_ok(&d.hyperctl(&[
        "push",
        "--from",
        "busybox",
        &format!("{}/busybox:latest", registry.addr),
    ]));
    let busybox: PathBuf = common::busybox_tar(d.dir.path());
    let stored = Arc::new(Mutex::new(Stored::default()));
    stored.lock().unwrap().images.insert("busybox".into());
    let counter = Arc::new(AtomicU64::new(0));
    let (mut ops, start) = (0usize, Instant::now());
    for round in 0..rounds() {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let client = Client {
                    socket: d.socket.clone(),
                    hyperctl: common::workspace_binary("hyperctl"),
                    busybox: busybox.clone(),
                    registry: registry.addr.clone(),
                };
                let (stop, stored, counter, done) =
                    (stop.clone(), stored.clone(), counter.clone(), done.clone());
                let mut rng = Rng(seed ^ ((round as u64) << 8 | w) | 1);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let op = client.step(&mut rng, n, &stored);
                        done.lock().unwrap().push(op);
                    }
                })
            })
            .collect();
        let wait = Duration::from_millis(300 + rng.below(5000));
        std::thread::sleep(wait);
        d.kill9();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
        let done = done.lock().unwrap().clone();
        ops += done.len();
        eprintln!(
            "kill9: round {round}: killed after {wait:?}, {} operations ({done:?})",
            done.len()
        );
        d.restart();
        let s = stored.lock().unwrap();
        check_after_restart(&d, &s, &cgroups_before);
        drop(s);
        stored.lock().unwrap().pods.clear();
    }
    eprintln!(
        "kill9: {} kills, {ops} operations, {} images kept, in {:?}: nothing lost, nothing left",
        rounds(),
        stored.lock().unwrap().images.len(),
        start.elapsed()
    );
}
