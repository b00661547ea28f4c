//! hyper-agent: PID 1 of every hyperd micro-VM.
//!
//! Mounts what the guest needs, finds the host channel (the virtio-serial port named
//! `hyper.agent`), then serves the frames of [`hyperd_agent::protocol`]: containers are
//! overlays of a read-only image disk, processes run in their own mount, PID, UTS and IPC
//! namespaces with their stdio streamed back to the host.
mod channel;
mod container;
mod diff;
mod net;
mod process;
mod relay;
mod sys;

use hyperd_agent::protocol::{Event, Frame, FrameKind, Op, Request, Response, VERSION};
use std::sync::Arc;

fn main() {
    if std::process::id() == 1 {
        sys::init_mounts();
    }
    log("hyper-agent starting");
    if let Err(e) = net::loopback_up() {
        log(&format!("loopback: {e}"));
    }
    let chan = match channel::Channel::open() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            log(&format!("no host channel: {e}"));
            sys::power_off();
        }
    };
    let agent = Arc::new(process::Agent::new(chan.clone()));
    let relays = Arc::new(relay::Relays::default());
    process::start_reaper(agent.clone());
    let mut announced = false;
    loop {
        let frame = chan.read_frame();
        if !announced {
            chan.send(&Frame::json(
                FrameKind::Event,
                &Event::Ready {
                    version: VERSION,
                    uptime_ms: sys::uptime_ms(),
                },
            ));
            announced = true;
        }
        match frame.kind {
            FrameKind::Request => match frame.parse::<Request>() {
                Ok(req) => handle(&agent, &relays, &chan, req),
                Err(e) => log(&format!("bad request: {e}")),
            },
            FrameKind::Stdin => {
                if let Err(payload) = relays.write(frame.stream, frame.payload) {
                    agent.write_stdin(frame.stream, payload);
                }
            }
            other => log(&format!("unexpected frame {other:?} from host")),
        }
    }
}

fn handle(
    agent: &Arc<process::Agent>,
    relays: &Arc<relay::Relays>,
    chan: &Arc<channel::Channel>,
    req: Request,
) {
    let id = req.id;
    let result: Result<Option<serde_json::Value>, String> = match req.op {
        Op::Ping => Ok(None),
        Op::CreateContainer {
            container,
            image_disk_serial,
            fstype,
            hostname,
            mounts,
            readonly,
            capabilities,
            privileged,
            no_new_privileges,
        } => process::capability_numbers(capabilities.as_deref())
            .and_then(|keep| {
                container::create(&container, &image_disk_serial, &fstype, &mounts, privileged)
                    .map_err(|e| e.to_string())
                    .map(|root| (root, keep))
            })
            .map(|(root, keep)| {
                agent.add_container(
                    container,
                    process::NewContainer {
                        root,
                        hostname,
                        readonly,
                        keep_caps: keep,
                        no_new_privs: no_new_privileges,
                        privileged,
                    },
                );
                None
            }),
        Op::StartProcess {
            container,
            stream,
            process,
        } => agent
            .start_process(&container, stream, process)
            .map(|pid| Some(serde_json::json!({ "pid": pid }))),
        Op::Signal { stream, signal } => agent.signal(stream, signal).map(|_| None),
        Op::ConnectPort { stream, port } => {
            relays.connect(chan.clone(), stream, port).map(|_| None)
        }
        Op::ClosePort { stream } => relays.close(stream).map(|_| None),
        Op::ExportDiff {
            container,
            stream,
            pause,
        } => agent.export_diff(&container, stream, pause).map(|_| None),
        Op::WriteFile {
            container,
            path,
            data,
            mode,
            owner,
        } => agent
            .container_root(&container)
            .and_then(|root| {
                let (uid, gid) = process::resolve_user(&root, &owner)?;
                container::write_file(&root, &path, &data, mode, (uid, gid))
                    .map_err(|e| format!("{path}: {e}"))
            })
            .map(|_| None),
        Op::ConfigureNetwork { network } => net::configure(&network).map(|_| None),
        Op::Stats => Ok(Some(
            serde_json::to_value(sys::stats()).expect("stats serialize"),
        )),
        Op::Status => Ok(Some(
            serde_json::to_value(agent.status()).expect("status serializes"),
        )),
        Op::ResizeTty { stream, rows, cols } => agent.resize(stream, rows, cols).map(|_| None),
        Op::RemoveContainer { container } => {
            agent.remove_container(&container);
            container::remove(&container)
                .map(|_| None)
                .map_err(|e| e.to_string())
        }
        Op::Shutdown => {
            chan.send(&Frame::json(
                FrameKind::Response,
                &Response {
                    id,
                    error: None,
                    value: None,
                },
            ));
            sys::power_off();
        }
    };
    let resp = match result {
        Ok(value) => Response {
            id,
            error: None,
            value,
        },
        Err(e) => Response {
            id,
            error: Some(e),
            value: None,
        },
    };
    chan.send(&Frame::json(FrameKind::Response, &resp));
}

/// Writes a line to the VM console (the host's console.log).
pub fn log(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "hyper-agent: {msg}");
}
