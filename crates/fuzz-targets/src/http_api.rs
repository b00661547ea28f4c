//! The whole API on any bytes: the input is one client connection's bytes (request
//! heads, bodies, pipelined requests), served by the daemon's own connection handler and
//! router (hyperd's routes, Docker's, Flask's and mCM's, with their JSON bodies) over an
//! engine whose VMs are fake (`hyperd::vm::fake`). No input may panic the daemon or keep
//! its handler from answering; the engine answers a `/_ping` on a fresh connection after
//! every input.
//!
//! What a request names is not a sandbox's: a Docker bind creates its host directory, a
//! pull names any registry. So the engine runs on a thread of its own that first moves to
//! a network namespace with no interfaces up (every registry and URL is unreachable) and a
//! mount namespace where everything but `/tmp` is read-only. Needs root (as the daemon).
use hyperd::config::Config;
use hyperd::engine::Engine;
use hyperd::vm::{fake::FakeDriver, Driver};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one input's connection is served before it is dropped (a follow, a wait or
/// an attach that nobody ends).
const CONNECTION_TIME: Duration = Duration::from_millis(500);
/// Most bytes of an answer read back.
const ANSWER_CAP: usize = 1 << 20;

type Job = (Vec<u8>, mpsc::SyncSender<Result<(), String>>);

/// The sandbox thread's queue: each input goes there and its outcome comes back.
fn sandbox() -> &'static Mutex<mpsc::SyncSender<Job>> {
    static SANDBOX: OnceLock<Mutex<mpsc::SyncSender<Job>>> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<Job>(0);
        let (ready_tx, ready_rx) = mpsc::sync_channel(0);
        std::thread::spawn(move || {
            let engine_root = tempfile::tempdir().expect("a temporary directory");
            if let Err(e) = confine() {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let engine = rt.block_on(async {
                Engine::new(
                    config(engine_root.path()),
                    Driver::Fake(FakeDriver::default()),
                )
                .map(std::sync::Arc::new)
            });
            let engine = match engine {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("engine: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            for (input, done) in rx {
                let outcome = rt.block_on(serve_one(&engine, input));
                let _ = done.send(outcome);
            }
        });
        ready_rx
            .recv()
            .expect("the sandbox thread answers")
            .unwrap_or_else(|e| panic!("the http_api sandbox: {e}"));
        Mutex::new(tx)
    })
}

/// Moves the calling thread into a network namespace of its own (loopback down, no
/// other interface) and a mount namespace whose mounts are all read-only but `/tmp`.
fn confine() -> Result<(), String> {
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: unshare changes only this thread's namespaces; no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET) } != 0 {
        return Err(err("unshare (run as root)"));
    }
    let path = |p: &str| std::ffi::CString::new(p).expect("no NUL");
    let (root, tmp) = (path("/"), path("/tmp"));
    // SAFETY: valid NUL-terminated paths; null fs type and data are allowed for these
    // flags.
    unsafe {
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(err("making mounts private"));
        }
        if libc::mount(
            tmp.as_ptr(),
            tmp.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(err("binding /tmp"));
        }
    }
    set_read_only(&root, true, true).map_err(|e| format!("read-only /: {e}"))?;
    set_read_only(&tmp, false, false).map_err(|e| format!("writable /tmp: {e}"))?;
    Ok(())
}

/// `mount_setattr(2)`: sets or clears MOUNT_ATTR_RDONLY on the mount at `path` (and
/// those beneath it when `recursive`).
fn set_read_only(path: &std::ffi::CStr, on: bool, recursive: bool) -> std::io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 1;
    let attr = MountAttr {
        attr_set: if on { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if on { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: a valid path and a mount_attr of the size passed, both outliving the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn config(root: &std::path::Path) -> Config {
    Config {
        root: root.to_path_buf(),
        socket: root.join("hyper.sock"),
        kernel: root.join("vmlinux"),
        initrd: root.join("initrd.img"),
        driver: "fake".into(),
        accel: "tcg".into(),
        boot_timeout: Duration::from_secs(1),
        registry: Default::default(),
        max_layer_bytes: 1 << 20,
        pool_size: 0,
        pool_max_age: Duration::from_secs(60),
        log_limits: Default::default(),
        api_limits: hyperd::config::ApiLimits {
            header_timeout: CONNECTION_TIME,
            max_connections: 4,
        },
        build_vm_per_step: false,
        console_log_max: 1 << 20,
    }
}

/// Serves `input` as one connection, then checks that a fresh connection still gets an
/// answer to `GET /_ping`.
async fn serve_one(engine: &std::sync::Arc<Engine>, input: Vec<u8>) -> Result<(), String> {
    let (mut client, server) = tokio::io::duplex(64 << 10);
    let conn = tokio::spawn(hyperd::api::server::serve_connection(
        engine.clone(),
        server,
    ));
    let exchange = async {
        client.write_all(&input).await?;
        client.shutdown().await?;
        let mut answer = Vec::new();
        (&mut client)
            .take(ANSWER_CAP as u64)
            .read_to_end(&mut answer)
            .await?;
        std::io::Result::Ok(answer)
    };
    let _ = tokio::time::timeout(CONNECTION_TIME, exchange).await;
    drop(client);
    conn.abort();
    let _ = conn.await.map_err(|e| {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic())
        }
    });
    let (mut client, server) = tokio::io::duplex(64 << 10);
    let conn = tokio::spawn(hyperd::api::server::serve_connection(
        engine.clone(),
        server,
    ));
    let ping = async {
        client
            .write_all(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await?;
        std::io::Result::Ok(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), ping)
        .await
        .map_err(|_| "the daemon no longer answers /_ping".to_string())?
        .map_err(|e| format!("/_ping: {e}"))?;
    conn.abort();
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "/_ping answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        ));
    }
    Ok(())
}

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    sandbox()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((data.to_vec(), done_tx))
        .expect("the sandbox thread runs");
    match done_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("the sandbox thread ended (a panic in the daemon)"),
    }
}
