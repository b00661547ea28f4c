//! The VMM's side of the control socket (the protocol is `hyper_vmm_api::control`): a
//! [`Controller`] holds the machine through its life, [`serve`] answers the socket.
use crate::machine::{Ending, Machine};
pub use hyper_vmm_api::control::{Request, Response, VmState, MAX_REQUEST_BYTES};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

/// The VM this process runs, through its life.
#[derive(Default)]
pub struct Controller {
    machine: Option<Machine>,
    started: bool,
}

impl Controller {
    fn state(&self) -> VmState {
        match &self.machine {
            None => VmState::Empty,
            Some(m) if m.ended().is_some() => VmState::Stopped,
            Some(_) if !self.started => VmState::Created,
            Some(m) if m.is_paused() => VmState::Paused,
            Some(_) => VmState::Running,
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
                        Response::state(VmState::Created, std::process::id())
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
                        Response::state(VmState::Running, std::process::id())
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
                Response::state(self.state(), std::process::id())
            }
            Request::Resume => {
                let m = self.machine.as_ref().expect("started");
                m.resume();
                Response::state(self.state(), std::process::id())
            }
            Request::Status => Response::state(self.state(), std::process::id()),
            Request::Stop => return (Response::state(VmState::Stopped, std::process::id()), true),
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
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if line.len() > MAX_REQUEST_BYTES {
            let mut out =
                serde_json::to_vec(&Response::error("request line too long")).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out);
            return false;
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let (resp, stop) = match serde_json::from_slice::<Request>(&line) {
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
}
