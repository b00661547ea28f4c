//! Container processes: spawning into namespaces, stdio streaming, exit reporting, and the
//! PID 1 duty of reaping every child.
use crate::channel::Channel;
use crate::sys::cstr;
use hyperd_agent::protocol::{Event, Frame, FrameKind, ProcessSpec};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// A child just spawned: the process, its pty master (with a tty), and where its exit
/// code will arrive.
type Spawned = (std::process::Child, Option<Arc<File>>, mpsc::Receiver<i32>);

struct ContainerState {
    root: PathBuf,
    hostname: Option<String>,
    /// The container's first process (stream, pid): later processes join its namespaces.
    init: Option<(u32, i32)>,
    /// The root is to become read-only before the first process starts.
    seal_pending: bool,
    /// Capabilities (numbers) every process of the container keeps; `None`: all.
    keep_caps: Option<Vec<u32>>,
    /// Its processes run with `PR_SET_NO_NEW_PRIVS`.
    no_new_privs: bool,
    /// Privileged: /proc and /sys unmasked.
    privileged: bool,
}

/// A container just created, as its processes will need it.
pub(crate) struct NewContainer {
    pub(crate) root: PathBuf,
    pub(crate) hostname: Option<String>,
    /// The root becomes read-only before the first process.
    pub(crate) readonly: bool,
    /// Capabilities kept (`None`: all).
    pub(crate) keep_caps: Option<Vec<u32>>,
    pub(crate) no_new_privs: bool,
    pub(crate) privileged: bool,
}

/// The highest capability number the guest kernel (6.1) knows.
const CAP_LAST: u32 = 40;

/// The capability numbers a container keeps, checked; `None` stays `None` (all).
pub(crate) fn capability_numbers(keep: Option<&[u32]>) -> Result<Option<Vec<u32>>, String> {
    match keep {
        Some(k) if k.iter().any(|c| *c > CAP_LAST) => {
            Err(format!("capability numbers go up to {CAP_LAST}"))
        }
        other => Ok(other.map(<[u32]>::to_vec)),
    }
}

/// Namespaces of a running container, opened before the fork, for an exec to join.
struct JoinNs {
    pid: OwnedFd,
    mnt: OwnedFd,
    uts: OwnedFd,
    ipc: OwnedFd,
}

fn setns(fd: &OwnedFd, kind: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns takes an open namespace fd and a flag; no pointers.
    if unsafe { libc::setns(fd.as_raw_fd(), kind) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl JoinNs {
    fn open(pid: i32) -> std::io::Result<JoinNs> {
        let ns = |n: &str| -> std::io::Result<OwnedFd> {
            Ok(File::open(format!("/proc/{pid}/ns/{n}"))?.into())
        };
        Ok(JoinNs {
            pid: ns("pid")?,
            mnt: ns("mnt")?,
            uts: ns("uts")?,
            ipc: ns("ipc")?,
        })
    }
}

struct Proc {
    pid: i32,
    stdin: Option<mpsc::Sender<Vec<u8>>>,
    pty: Option<Arc<File>>,
}

#[derive(Default)]
struct PidTable {
    waiting: HashMap<i32, mpsc::Sender<i32>>,
    unclaimed: HashMap<i32, i32>,
}

pub(crate) struct Agent {
    chan: Arc<Channel>,
    containers: Mutex<HashMap<String, ContainerState>>,
    procs: Mutex<HashMap<u32, Proc>>,
    pids: Mutex<PidTable>,
    /// Exit codes by stream, for a host that missed the `exited` events.
    exited: Mutex<HashMap<u32, i32>>,
    /// Input for streams whose process has not started yet.
    early_stdin: Mutex<HashMap<u32, Vec<Vec<u8>>>>,
}

/// Bytes of input kept for processes not started yet.
const EARLY_STDIN_LIMIT: usize = 1 << 20;

impl Agent {
    pub(crate) fn new(chan: Arc<Channel>) -> Self {
        Agent {
            chan,
            containers: Mutex::new(HashMap::new()),
            procs: Mutex::new(HashMap::new()),
            pids: Mutex::new(PidTable::default()),
            exited: Mutex::new(HashMap::new()),
            early_stdin: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn add_container(&self, id: String, c: NewContainer) {
        self.containers.lock().unwrap().insert(
            id,
            ContainerState {
                root: c.root,
                hostname: c.hostname,
                init: None,
                seal_pending: c.readonly,
                keep_caps: c.keep_caps,
                no_new_privs: c.no_new_privs,
                privileged: c.privileged,
            },
        );
    }

    pub(crate) fn container_root(&self, id: &str) -> Result<PathBuf, String> {
        self.containers
            .lock()
            .unwrap()
            .get(id)
            .map(|c| c.root.clone())
            .ok_or_else(|| format!("no container {id}"))
    }

    pub(crate) fn remove_container(&self, id: &str) {
        self.containers.lock().unwrap().remove(id);
    }

    pub(crate) fn start_process(
        self: &Arc<Self>,
        container: &str,
        stream: u32,
        spec: ProcessSpec,
    ) -> Result<i32, String> {
        if spec.args.is_empty() {
            return Err("no command given".into());
        }
        if self.procs.lock().unwrap().contains_key(&stream) {
            return Err(format!("stream {stream} is in use"));
        }
        let (root, hostname, init, keep_caps, no_new_privs, privileged) = {
            let mut cs = self.containers.lock().unwrap();
            let c = cs
                .get_mut(container)
                .ok_or_else(|| format!("no container {container}"))?;
            if c.seal_pending {
                crate::container::seal(&c.root)
                    .map_err(|e| format!("container {container}: read-only root: {e}"))?;
                c.seal_pending = false;
            }
            (
                c.root.clone(),
                c.hostname.clone(),
                c.init,
                c.keep_caps.clone(),
                c.no_new_privs,
                c.privileged,
            )
        };
        // The bounding set loses what the container does not keep: an exec'd program
        // (root's included) can hold no more.
        let drop_caps: Vec<u32> = match keep_caps {
            Some(keep) => (0..=CAP_LAST).filter(|c| !keep.contains(c)).collect(),
            None => Vec::new(),
        };
        // A container whose first process still runs: join its namespaces (an exec).
        // Otherwise this process starts the container (again, after a restart) in new
        // namespaces.
        let join = match init {
            Some((init_stream, pid)) if self.procs.lock().unwrap().contains_key(&init_stream) => {
                Some(JoinNs::open(pid).map_err(|e| format!("container {container}: {e}"))?)
            }
            _ => None,
        };
        let (uid, gid) = resolve_user(&root, &spec.user)?;
        // A working directory the image lacks is made, as Docker's runtimes do (a
        // Dockerfile's WORKDIR relies on it); resolved inside the root. A read-only root
        // cannot get it: the chdir below then reports it missing.
        if join.is_none() && !spec.workdir.is_empty() && spec.workdir != "/" {
            let _ = crate::container::mount_target(&root, &spec.workdir, true);
        }
        let setup = ChildSetup {
            root: cstr(root.to_str().unwrap_or("/")),
            proc_dir: cstr(root.join("proc").to_str().unwrap_or("/proc")),
            workdir: cstr(if spec.workdir.is_empty() {
                "/"
            } else {
                &spec.workdir
            }),
            hostname: hostname.map(|h| cstr(&h)),
            uid,
            gid,
            tty: spec.tty,
            join,
            mask_paths: !privileged,
            drop_caps,
            no_new_privs,
        };
        let first = setup.join.is_none();
        // A fresh thread enters the PID namespace (a new one, or the container's) for its
        // children only; that thread can then create no threads, so it only spawns.
        let me = self.clone();
        let (child, pty_master, exit_rx) =
            std::thread::spawn(move || me.spawn_in_pidns(spec, setup))
                .join()
                .map_err(|_| "spawn thread panicked".to_string())??;
        let pid = child.id() as i32;
        if first {
            if let Some(c) = self.containers.lock().unwrap().get_mut(container) {
                c.init = Some((stream, pid));
            }
        }
        Ok(self.follow(stream, child, pty_master, exit_rx))
    }

    fn spawn_in_pidns(&self, spec: ProcessSpec, setup: ChildSetup) -> Result<Spawned, String> {
        match &setup.join {
            Some(ns) => setns(&ns.pid, libc::CLONE_NEWPID)
                .map_err(|e| format!("join pid namespace: {e}"))?,
            None => {
                // SAFETY: unshare takes no pointers; CLONE_NEWPID only changes this
                // thread's pid_for_children, and the thread ends after this spawn.
                if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                    return Err(format!(
                        "unshare pid namespace: {}",
                        std::io::Error::last_os_error()
                    ));
                }
            }
        }
        let mut cmd = Command::new(&spec.args[0]);
        cmd.args(&spec.args[1..]).env_clear();
        let mut has_path = false;
        for kv in &spec.env {
            if let Some((k, v)) = kv.split_once('=') {
                has_path |= k == "PATH";
                cmd.env(k, v);
            }
        }
        if !has_path {
            cmd.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        let mut pty_master = None;
        if spec.tty {
            let root = Path::new(std::ffi::OsStr::from_bytes(setup.root.as_bytes()));
            let (master, slave) = open_pty(root).map_err(|e| format!("openpty: {e}"))?;
            let slave = File::from(slave);
            cmd.stdin(slave.try_clone().map_err(|e| e.to_string())?);
            cmd.stdout(slave.try_clone().map_err(|e| e.to_string())?);
            cmd.stderr(slave);
            pty_master = Some(Arc::new(File::from(master)));
        } else {
            cmd.stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        // SAFETY: the closure only makes async-signal-safe system calls on data prepared
        // before the fork (see ChildSetup::apply).
        unsafe {
            cmd.pre_exec(move || setup.apply());
        }
        let (exit_tx, exit_rx) = mpsc::channel();
        let mut pids = self.pids.lock().unwrap();
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", spec.args[0]))?;
        let pid = child.id() as i32;
        if let Some(code) = pids.unclaimed.remove(&pid) {
            let _ = exit_tx.send(code);
        } else {
            pids.waiting.insert(pid, exit_tx);
        }
        drop(pids);
        drop(cmd); // closes the parent's copies of the pty slave
        Ok((child, pty_master, exit_rx))
    }

    /// Streams a started process's stdio and reports its exit after its last output.
    fn follow(
        self: &Arc<Self>,
        stream: u32,
        mut child: std::process::Child,
        pty_master: Option<Arc<File>>,
        exit_rx: mpsc::Receiver<i32>,
    ) -> i32 {
        let pid = child.id() as i32;
        let mut readers = Vec::new();
        let stdin_tx;
        if let Some(master) = &pty_master {
            let m = master.clone();
            readers.push(self.pump(stream, FrameKind::Stdout, move |buf| (&*m).read(buf)));
            let m = master.clone();
            stdin_tx = Some(stdin_writer(move |data| (&*m).write_all(data), || {}));
        } else {
            let mut out = child.stdout.take().expect("piped");
            let mut err = child.stderr.take().expect("piped");
            readers.push(self.pump(stream, FrameKind::Stdout, move |buf| out.read(buf)));
            readers.push(self.pump(stream, FrameKind::Stderr, move |buf| err.read(buf)));
            stdin_tx = child.stdin.take().map(|stdin| {
                let stdin = Arc::new(Mutex::new(Some(stdin)));
                let s2 = stdin.clone();
                stdin_writer(
                    move |data| match stdin.lock().unwrap().as_mut() {
                        Some(w) => w.write_all(data),
                        None => Ok(()),
                    },
                    move || drop(s2.lock().unwrap().take()),
                )
            });
        }
        self.exited.lock().unwrap().remove(&stream);
        {
            let mut procs = self.procs.lock().unwrap();
            // Input the host sent before the process existed goes first, in order.
            for data in self
                .early_stdin
                .lock()
                .unwrap()
                .remove(&stream)
                .unwrap_or_default()
            {
                if let Some(tx) = &stdin_tx {
                    let _ = tx.send(data);
                }
            }
            procs.insert(
                stream,
                Proc {
                    pid,
                    stdin: stdin_tx,
                    pty: pty_master,
                },
            );
        }
        let me = self.clone();
        std::thread::spawn(move || {
            let code = exit_rx.recv().unwrap_or(255);
            for r in readers {
                let _ = r.join();
            }
            // Recorded before the process leaves the running set: a status query never
            // sees it in neither.
            me.exited.lock().unwrap().insert(stream, code);
            me.procs.lock().unwrap().remove(&stream);
            me.chan.send(&Frame::json(
                FrameKind::Event,
                &Event::Exited { stream, code },
            ));
        });
        pid
    }

    /// Streams a container's changes as a tar layer on `stream` (see `Op::ExportDiff`).
    pub(crate) fn export_diff(
        &self,
        container: &str,
        stream: u32,
        pause: bool,
    ) -> Result<(), String> {
        self.container_root(container)?;
        if self.procs.lock().unwrap().contains_key(&stream) {
            return Err(format!("stream {stream} is in use"));
        }
        let upper = crate::container::upper_dir(container).map_err(|e| e.to_string())?;
        let init = self
            .containers
            .lock()
            .unwrap()
            .get(container)
            .and_then(|c| c.init)
            .map(|(_, pid)| pid);
        let chan = self.chan.clone();
        std::thread::spawn(move || {
            let stopped = match init.filter(|_| pause) {
                Some(pid) => stop_namespace(pid),
                None => Vec::new(),
            };
            let out = crate::diff::StreamWriter {
                chan: &chan,
                stream,
            };
            let code = match crate::diff::write_diff(
                &upper,
                std::io::BufWriter::with_capacity(32 * 1024, out),
            ) {
                Ok(()) => 0,
                Err(e) => {
                    chan.send(&Frame::data(
                        FrameKind::Stderr,
                        stream,
                        format!("the container's changes: {e}").into_bytes(),
                    ));
                    1
                }
            };
            for pid in stopped {
                // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
            chan.send(&Frame::json(
                FrameKind::Event,
                &Event::Exited { stream, code },
            ));
        });
        Ok(())
    }

    /// Copies a process's output into frames until end of file (or EIO on a pty).
    fn pump<F>(&self, stream: u32, kind: FrameKind, mut read: F) -> std::thread::JoinHandle<()>
    where
        F: FnMut(&mut [u8]) -> std::io::Result<usize> + Send + 'static,
    {
        let chan = self.chan.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => chan.send(&Frame::data(kind, stream, buf[..n].to_vec())),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
    }

    pub(crate) fn status(&self) -> hyperd_agent::protocol::Status {
        hyperd_agent::protocol::Status {
            running: self.procs.lock().unwrap().keys().copied().collect(),
            exited: self
                .exited
                .lock()
                .unwrap()
                .iter()
                .map(|(s, c)| (*s, *c))
                .collect(),
        }
    }

    pub(crate) fn write_stdin(&self, stream: u32, data: Vec<u8>) {
        let mut procs = self.procs.lock().unwrap();
        if let Some(p) = procs.get_mut(&stream) {
            if let Some(tx) = &p.stdin {
                let _ = tx.send(data.clone());
            }
            if data.is_empty() && p.pty.is_none() {
                p.stdin = None;
            }
            return;
        }
        // The process is about to start: keep its input (bounded) until it does.
        let mut early = self.early_stdin.lock().unwrap();
        let queued: usize = early.values().flatten().map(Vec::len).sum();
        if queued + data.len() <= EARLY_STDIN_LIMIT {
            early.entry(stream).or_default().push(data);
        }
    }

    pub(crate) fn signal(&self, stream: u32, signal: i32) -> Result<(), String> {
        let pid = self
            .procs
            .lock()
            .unwrap()
            .get(&stream)
            .map(|p| p.pid)
            .ok_or_else(|| format!("no process on stream {stream}"))?;
        // SAFETY: kill takes no pointers.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(format!("kill: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    pub(crate) fn resize(&self, stream: u32, rows: u16, cols: u16) -> Result<(), String> {
        let procs = self.procs.lock().unwrap();
        let p = procs
            .get(&stream)
            .ok_or_else(|| format!("no process on stream {stream}"))?;
        let pty = p.pty.as_ref().ok_or("process has no tty")?;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        use std::os::fd::AsRawFd;
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives for the call.
        if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(format!("resize: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// A thread that feeds stdin in order; an empty chunk closes it.
fn stdin_writer<W, C>(mut write: W, close: C) -> mpsc::Sender<Vec<u8>>
where
    W: FnMut(&[u8]) -> std::io::Result<()> + Send + 'static,
    C: FnOnce() + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for data in rx {
            if data.is_empty() || write(&data).is_err() {
                break;
            }
        }
        close();
    });
    tx
}

/// PID 1 reaps every child; exit codes of the processes it started go to their waiters.
pub(crate) fn start_reaper(agent: Arc<Agent>) {
    std::thread::spawn(move || loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local integer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            continue;
        };
        let mut pids = agent.pids.lock().unwrap();
        match pids.waiting.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(code);
            }
            None => {
                // An orphan reparented to PID 1, or a child whose spawn has not registered
                // yet: keep a bounded record for the latter.
                if pids.unclaimed.len() > 1024 {
                    pids.unclaimed.clear();
                }
                pids.unclaimed.insert(pid, code);
            }
        }
    });
}

/// Everything the child needs between fork and exec, prepared before the fork so that
/// the child allocates nothing.
struct ChildSetup {
    root: CString,
    proc_dir: CString,
    workdir: CString,
    hostname: Option<CString>,
    uid: u32,
    gid: u32,
    tty: bool,
    /// Set for a process joining a running container.
    join: Option<JoinNs>,
    /// Capabilities taken out of the bounding set before the exec.
    drop_caps: Vec<u32>,
    /// `PR_SET_NO_NEW_PRIVS` before the exec.
    no_new_privs: bool,
    /// Docker's masked and read-only paths of /proc and /sys (not for privileged
    /// containers).
    mask_paths: bool,
}

/// What Docker hides from a container: an empty read-only tmpfs over these directories,
/// /dev/null over these files.
const MASKED_PATHS: &[&std::ffi::CStr] = &[
    c"/proc/asound",
    c"/proc/acpi",
    c"/proc/kcore",
    c"/proc/keys",
    c"/proc/latency_stats",
    c"/proc/timer_list",
    c"/proc/timer_stats",
    c"/proc/sched_debug",
    c"/proc/scsi",
    c"/sys/firmware",
    c"/sys/devices/virtual/powercap",
];

/// What Docker leaves readable but not writable in a container.
const READONLY_PATHS: &[&std::ffi::CStr] = &[
    c"/proc/bus",
    c"/proc/fs",
    c"/proc/irq",
    c"/proc/sys",
    c"/proc/sysrq-trigger",
];

/// Masks [`MASKED_PATHS`] and binds [`READONLY_PATHS`] read-only, in the calling
/// process's (new) root; paths the kernel lacks are skipped. Runs between fork and exec:
/// no allocation.
fn mask_kernel_paths() -> std::io::Result<()> {
    let missing = |rc: libc::c_int| -> std::io::Result<bool> {
        if rc == 0 {
            return Ok(false);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(true),
            _ => Err(e),
        }
    };
    // SAFETY: static NUL-terminated paths; `st` is a plain struct on this stack.
    unsafe {
        for path in MASKED_PATHS {
            let mut st: libc::stat = std::mem::zeroed();
            if missing(libc::stat(path.as_ptr(), &mut st))? {
                continue;
            }
            let rc = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    path.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
            } else {
                libc::mount(
                    c"/dev/null".as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for path in READONLY_PATHS {
            if missing(libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))? {
                continue;
            }
            if libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

impl ChildSetup {
    fn apply(&self) -> std::io::Result<()> {
        fn check(rc: libc::c_int) -> std::io::Result<()> {
            if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        // SAFETY: each call gets valid NUL-terminated strings owned by `self`, which lives
        // until exec; none of these calls allocates.
        unsafe {
            if let Some(ns) = &self.join {
                // The container's mount namespace already has its /proc and hostname.
                setns(&ns.mnt, libc::CLONE_NEWNS)?;
                setns(&ns.uts, libc::CLONE_NEWUTS)?;
                setns(&ns.ipc, libc::CLONE_NEWIPC)?;
            } else {
                check(libc::unshare(
                    libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC,
                ))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    c"proc".as_ptr(),
                    self.proc_dir.as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ))?;
                if let Some(h) = &self.hostname {
                    check(libc::sethostname(h.as_ptr(), h.as_bytes().len()))?;
                }
                // The container's root becomes its namespace's root and the VM's is
                // unmounted from under it (runc's pivot_root(".", ".")): nothing of the
                // agent's tree stays reachable, with or without CAP_SYS_CHROOT. (A joined
                // namespace's root is the container's already.)
                check(libc::chdir(self.root.as_ptr()))?;
                check(
                    libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr())
                        as libc::c_int,
                )?;
                check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
                check(libc::chdir(c"/".as_ptr()))?;
                if self.mask_paths {
                    mask_kernel_paths()?;
                }
            }

            check(libc::chdir(self.workdir.as_ptr()))?;
            if self.tty {
                check(libc::setsid())?;
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
            for cap in &self.drop_caps {
                check(libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    libc::c_ulong::from(*cap),
                    0,
                    0,
                    0,
                ))?;
            }
            if self.no_new_privs {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
        }
        Ok(())
    }
}

/// A pty pair from the container's own devpts instance (`<root>/dev/pts`), so the
/// process finds its terminal under its own /dev/pts.
fn open_pty(root: &Path) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::AsRawFd;
    let pts = root.join("dev/pts");
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(pts.join("ptmx"))?;
    let fd = master.as_raw_fd();
    let mut n: libc::c_uint = 0;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int and TIOCGPTN writes an unsigned int; both live for
    // the calls, and fd is the open ptmx.
    unsafe {
        if libc::ioctl(fd, libc::TIOCSPTLCK, &unlock) != 0
            || libc::ioctl(fd, libc::TIOCGPTN, &mut n) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(pts.join(n.to_string()))?;
    Ok((master.into(), slave.into()))
}

/// `uid[:gid]`, or a name from the container's /etc/passwd (no NSS in a static agent).
pub(crate) fn resolve_user(root: &Path, user: &str) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    let lookup = |file: &str, name: &str, field: usize| -> Option<u32> {
        file.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(field).and_then(|v| v.parse().ok()))
    };
    let uid = u
        .parse()
        .ok()
        .or_else(|| lookup(&passwd, u, 2))
        .ok_or_else(|| format!("unknown user {u:?}"))?;
    let gid = match g {
        Some(g) => g
            .parse()
            .ok()
            .or_else(|| lookup(&group, g, 2))
            .ok_or_else(|| format!("unknown group {g:?}"))?,
        None => passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.get(2).and_then(|v| v.parse::<u32>().ok()) == Some(uid))
            .and_then(|f| f.get(3).and_then(|v| v.parse().ok()))
            .unwrap_or(0),
    };
    Ok((uid, gid))
}

/// Stops (SIGSTOP) every process in the PID namespace whose init is `init` (a
/// container's), scanning until no new one appears (a fork may race the first scans);
/// the pids stopped, for SIGCONT.
fn stop_namespace(init: i32) -> Vec<i32> {
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(target) = ns(init) else {
        return Vec::new();
    };
    let mut stopped: Vec<i32> = Vec::new();
    for _ in 0..8 {
        let mut new = 0;
        for pid in std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            if stopped.contains(&pid) || ns(pid).as_ref() != Some(&target) {
                continue;
            }
            // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
            if unsafe { libc::kill(pid, libc::SIGSTOP) } == 0 {
                stopped.push(pid);
                new += 1;
            }
        }
        if new == 0 {
            break;
        }
    }
    stopped
}
