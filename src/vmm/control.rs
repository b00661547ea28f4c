//! The VMM's control socket: how the daemon drives one `hyper-vmm` process.
//!
//! One JSON request per line, one JSON answer per line:
//!
//! ```text
//! {"op":"create","config":{...MachineConfig...}}   -> {"ok":true,"state":"created"}
//! {"op":"start"}                                   -> {"ok":true,"state":"running"}
//! {"op":"pause"} / {"op":"resume"}                 -> {"ok":true,"state":"paused"|"running"}
//! {"op":"status"}                                  -> {"ok":true,"state":...,"pid":...}
//! {"op":"stop"}                                    -> {"ok":true,"state":"stopped"}, then exit
//! ```
//!
//! Errors answer `{"ok":false,"error":"..."}` and change nothing. The process exits when
//! the guest powers off or resets, or after `stop`.
use super::machine::{Ending, Machine, MachineConfig};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Create { config: Box<MachineConfig> },
    Start,
    Pause,
    Resume,
    Stop,
    Status,
}

#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl Response {
    fn state(s: &str) -> Response {
        Response {
            ok: true,
            state: Some(s.into()),
            pid: Some(std::process::id()),
            ..Default::default()
        }
    }
    fn error(e: impl std::fmt::Display) -> Response {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

/// The VM this process runs, through its life.
#[derive(Default)]
pub struct Controller {
    machine: Option<Machine>,
    started: bool,
}

impl Controller {
    fn state(&self) -> &'static str {
        match &self.machine {
            None => "empty",
            Some(m) if m.ended().is_some() => "stopped",
            Some(_) if !self.started => "created",
            Some(m) if m.is_paused() => "paused",
            Some(_) => "running",
        }
    }

    /// Handles one request; `Stop` asks the caller to end the process after answering.
    pub fn handle(&mut self, req: Request) -> (Response, bool) {
        let r = match req {
            Request::Create { config } => {
                if self.machine.is_some() {
                    return (Response::error("a VM was already created"), false);
                }
                match Machine::new(&config) {
                    Ok(m) => {
                        self.machine = Some(m);
                        Response::state("created")
                    }
                    Err(e) => Response::error(e),
                }
            }
            Request::Start => match &mut self.machine {
                None => Response::error("create a VM first"),
                Some(_) if self.started => Response::error("the VM is already started"),
                Some(m) => match m.start() {
                    Ok(()) => {
                        self.started = true;
                        Response::state("running")
                    }
                    Err(e) => Response::error(e),
                },
            },
            Request::Pause | Request::Resume if !self.started => {
                Response::error("the VM is not running")
            }
            Request::Pause => {
                let m = self.machine.as_ref().expect("started");
                m.pause();
                Response::state(self.state())
            }
            Request::Resume => {
                let m = self.machine.as_ref().expect("started");
                m.resume();
                Response::state(self.state())
            }
            Request::Status => Response::state(self.state()),
            Request::Stop => return (Response::state("stopped"), true),
        };
        (r, false)
    }

    pub fn machine(&self) -> Option<&Machine> {
        self.machine.as_ref()
    }
}

/// Serves the control socket at `path` until the VM ends or is stopped; answers how the
/// VM ended (`None` for a stop or a VM that never started).
pub fn serve(listener: UnixListener) -> Option<Ending> {
    let ctl = Arc::new(Mutex::new(Controller::default()));
    let done: Arc<(Mutex<Option<Option<Ending>>>, std::sync::Condvar)> = Arc::default();
    {
        let ctl = ctl.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if serve_connection(conn, &ctl) {
                    finish(&done, None);
                    return;
                }
            }
        });
    }
    // Watch for the guest's end once it runs.
    {
        let ctl = ctl.clone();
        let done = done.clone();
        std::thread::spawn(move || loop {
            let ending = ctl.lock().unwrap().machine().map(|m| m.ending.clone());
            if let Some(ending) = ending {
                let (lock, cv) = &*ending;
                let mut e = lock.lock().unwrap();
                while e.is_none() {
                    e = cv.wait(e).unwrap();
                }
                finish(&done, e.clone());
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        });
    }
    let (lock, cv) = &*done;
    let mut d = lock.lock().unwrap();
    loop {
        if let Some(end) = d.take() {
            return end;
        }
        d = cv.wait(d).unwrap();
    }
}

fn finish(done: &(Mutex<Option<Option<Ending>>>, std::sync::Condvar), end: Option<Ending>) {
    let mut d = done.0.lock().unwrap();
    d.get_or_insert(end);
    done.1.notify_all();
}

/// Answers the requests of one connection; `true` when one of them was `stop`.
fn serve_connection(conn: UnixStream, ctl: &Mutex<Controller>) -> bool {
    let Ok(mut w) = conn.try_clone() else {
        return false;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return false };
        if line.trim().is_empty() {
            continue;
        }
        let (resp, stop) = match serde_json::from_str::<Request>(&line) {
            Ok(req) => ctl.lock().unwrap().handle(req),
            Err(e) => (Response::error(format!("bad request: {e}")), false),
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        let _ = w.write_all(&out);
        if stop {
            return true;
        }
    }
    false
}
