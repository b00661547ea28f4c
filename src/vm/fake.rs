//! A fake VM for the engine's unit tests and the `http_api` fuzz target: no process, no
//! guest. [`FakeDriver::boot`] answers with a [`VmHandle`] over a [`FakeVm`] and a real
//! [`AgentClient`] whose other end is an in-process fake agent speaking the agent
//! protocol. The engine cannot tell it from a VM, so its state machine, restart policies, stops and pools run as they do in
//! production, on tokio's paused clock.
//!
//! A container's process does what its first argument says:
//! - `exit CODE`: exits at once with CODE;
//! - `echo TEXT`: writes TEXT to stdout, then exits 0;
//! - `ignore-term`: runs until SIGKILL (SIGTERM is ignored);
//! - anything else: runs until any signal, then exits 128 + the signal.
use super::agent::AgentClient;
use super::handle::{VmHandle, VmStatus};
use super::{RunningVm, VmConfig, VmError};
use hyperd_agent::protocol::{
    Event, Frame, FrameKind, Op, Request, Response, Stats, Status, HEADER_LEN, VERSION,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

/// One fake VM: its run state, and how it misbehaves.
pub struct FakeVm {
    status: Mutex<VmStatus>,
    ended: watch::Sender<bool>,
    /// The guest ignores the agent's `shutdown` (it never powers off by itself).
    pub hang_on_shutdown: AtomicBool,
    /// The monitor ignores `stop` too: only a kill ends the VM.
    pub hang_monitor: AtomicBool,
    /// How often the VM was killed.
    pub kills: AtomicUsize,
    /// When each process was started, by stream (tokio's clock).
    pub starts: Mutex<Vec<(u32, tokio::time::Instant)>>,
}

impl FakeVm {
    fn new() -> FakeVm {
        FakeVm {
            status: Mutex::new(VmStatus::Running),
            ended: watch::channel(false).0,
            hang_on_shutdown: AtomicBool::new(false),
            hang_monitor: AtomicBool::new(false),
            kills: AtomicUsize::new(0),
            starts: Mutex::new(Vec::new()),
        }
    }

    pub fn status(&self) -> VmStatus {
        *self.status.lock().unwrap()
    }

    pub(crate) fn set_paused(&self, paused: bool) -> Result<(), VmError> {
        let mut s = self.status.lock().unwrap();
        match *s {
            VmStatus::Stopped => Err(VmError::Control("the VM has stopped".into())),
            _ => {
                *s = if paused {
                    VmStatus::Paused
                } else {
                    VmStatus::Running
                };
                Ok(())
            }
        }
    }

    fn end(&self) {
        *self.status.lock().unwrap() = VmStatus::Stopped;
        self.ended.send_replace(true);
    }

    pub(crate) fn monitor_stop(&self) -> Result<(), VmError> {
        if !self.hang_monitor.load(Ordering::SeqCst) {
            self.end();
        }
        Ok(())
    }

    pub(crate) fn kill(&self) {
        self.kills.fetch_add(1, Ordering::SeqCst);
        self.end();
    }

    pub(crate) async fn wait(&self) -> String {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|e| *e).await;
        "fake VM ended".into()
    }
}

/// Boots fake VMs and keeps them for the test to look at and to misbehave.
#[derive(Clone, Default)]
pub struct FakeDriver {
    pub vms: Arc<Mutex<Vec<Arc<FakeVm>>>>,
    /// VMs booted from now on ignore the agent's `shutdown`.
    pub hang_on_shutdown: Arc<AtomicBool>,
    /// VMs booted from now on ignore their monitor's `stop` too.
    pub hang_monitor: Arc<AtomicBool>,
}

impl std::fmt::Debug for FakeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeDriver")
    }
}

impl FakeDriver {
    pub async fn boot(&self, cfg: &VmConfig) -> Result<RunningVm, VmError> {
        std::fs::create_dir_all(&cfg.dir)?;
        let vm = Arc::new(FakeVm::new());
        vm.hang_on_shutdown.store(
            self.hang_on_shutdown.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
        vm.hang_monitor
            .store(self.hang_monitor.load(Ordering::SeqCst), Ordering::SeqCst);
        self.vms.lock().unwrap().push(vm.clone());
        let (host, guest) = UnixStream::pair()?;
        tokio::spawn(fake_agent(guest, vm.clone()));
        let (agent, events) = AgentClient::new(host);
        agent.call(Op::Ping, cfg.boot_timeout).await?;
        Ok(RunningVm {
            handle: Arc::new(VmHandle::fake(&cfg.id, &cfg.dir, vm)),
            agent,
            events,
        })
    }
}

/// A process of the fake agent: how it reacts to signals.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    UntilSignal,
    IgnoreTerm,
}

struct Agent {
    out: tokio::sync::mpsc::UnboundedSender<Frame>,
    running: HashMap<u32, Behaviour>,
    exited: Vec<(u32, i32)>,
}

impl Agent {
    fn exit(&mut self, stream: u32, code: i32) {
        if self.running.remove(&stream).is_some() {
            self.exited.push((stream, code));
            let _ = self.out.send(Frame::json(
                FrameKind::Event,
                &Event::Exited { stream, code },
            ));
        }
    }

    fn handle(&mut self, op: Op, vm: &FakeVm) -> Result<Option<serde_json::Value>, String> {
        match op {
            Op::StartProcess {
                stream, process, ..
            } => {
                vm.starts
                    .lock()
                    .unwrap()
                    .push((stream, tokio::time::Instant::now()));
                let args: Vec<&str> = process.args.iter().map(String::as_str).collect();
                self.running.insert(stream, Behaviour::UntilSignal);
                match args.as_slice() {
                    ["exit", code, ..] => self.exit(stream, code.parse().unwrap_or(255)),
                    // A hostile agent: the same process "exits" three times, with
                    // three codes.
                    ["exit-thrice", code, ..] => {
                        let code: i32 = code.parse().unwrap_or(255);
                        self.exit(stream, code);
                        for extra in [code + 1, code + 2] {
                            let _ = self.out.send(Frame::json(
                                FrameKind::Event,
                                &Event::Exited {
                                    stream,
                                    code: extra,
                                },
                            ));
                        }
                    }
                    ["echo", rest @ ..] => {
                        let text = format!("{}\n", rest.join(" "));
                        let _ = self.out.send(Frame::data(
                            FrameKind::Stdout,
                            stream,
                            text.into_bytes(),
                        ));
                        self.exit(stream, 0);
                    }
                    ["ignore-term", ..] => {
                        self.running.insert(stream, Behaviour::IgnoreTerm);
                    }
                    _ => {}
                }
                Ok(None)
            }
            Op::Signal { stream, signal } => {
                match self.running.get(&stream) {
                    Some(Behaviour::IgnoreTerm) if signal != libc::SIGKILL => {}
                    Some(_) => self.exit(stream, 128 + signal),
                    None => return Err(format!("no process {stream}")),
                }
                Ok(None)
            }
            Op::Status => Ok(Some(
                serde_json::to_value(Status {
                    running: self.running.keys().copied().collect(),
                    exited: self.exited.clone(),
                })
                .unwrap_or_default(),
            )),
            Op::Stats => Ok(Some(
                serde_json::to_value(Stats::default()).unwrap_or_default(),
            )),
            Op::Shutdown => {
                if !vm.hang_on_shutdown.load(Ordering::SeqCst) {
                    vm.end();
                }
                Ok(None)
            }
            Op::ExportDiff { .. } => Err("the fake VM has no file systems".to_string()),
            Op::ConnectPort { .. } | Op::ClosePort { .. } => {
                Err("the fake VM has no network".to_string())
            }
            Op::Ping
            | Op::CreateContainer { .. }
            | Op::ResizeTty { .. }
            | Op::RemoveContainer { .. }
            | Op::WriteFile { .. }
            | Op::ConfigureNetwork { .. } => Ok(None),
        }
    }
}

/// Reads one frame (no resynchronization: the host never sends garbage here).
async fn read_frame(r: &mut tokio::net::unix::OwnedReadHalf) -> Option<Frame> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h).await.ok()?;
    let (kind, stream, len) = Frame::decode_header(&h).ok()?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind,
        stream,
        payload,
    })
}

async fn fake_agent(stream: UnixStream, vm: Arc<FakeVm>) {
    let (mut rd, mut wr) = stream.into_split();
    let (out, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Frame>();
    let mut ended = vm.ended.subscribe();
    tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if wr.write_all(&f.encode()).await.is_err() {
                break;
            }
        }
    });
    let mut agent = Agent {
        out,
        running: HashMap::new(),
        exited: Vec::new(),
    };
    let mut greeted = false;
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut rd) => match f {
                Some(f) => f,
                None => return,
            },
            // The VM ended: the channel goes with it.
            _ = ended.wait_for(|e| *e) => return,
        };
        if !greeted {
            greeted = true;
            let _ = agent.out.send(Frame::json(
                FrameKind::Event,
                &Event::Ready {
                    version: VERSION,
                    uptime_ms: 0,
                },
            ));
        }
        if frame.kind != FrameKind::Request {
            continue;
        }
        let Ok(req) = frame.parse::<Request>() else {
            continue;
        };
        let (value, error) = match agent.handle(req.op, &vm) {
            Ok(v) => (v, None),
            Err(e) => (None, Some(e)),
        };
        let _ = agent.out.send(Frame::json(
            FrameKind::Response,
            &Response {
                id: req.id,
                error,
                value,
            },
        ));
    }
}
