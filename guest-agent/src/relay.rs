//! Port relays: a host connection carried over the agent channel to a TCP port of the VM
//! (a port published while the pod runs; the path a port-forward takes too). The agent
//! connects to 127.0.0.1:PORT in the VM's one network namespace, which the pod's
//! containers share. The host's bytes arrive as `Stdin` frames of the relay's stream (an
//! empty one: the host closed its side), the port's bytes go back as `Stdout` frames, and
//! the stream ends with an `exited` event (code 0) once the port's side has closed.
use crate::channel::Channel;
use hyperd_agent::protocol::{Event, Frame, FrameKind};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Relays open at once.
const MAX_RELAYS: usize = 1024;

struct Relay {
    socket: TcpStream,
    /// Host bytes for the writer thread; an empty chunk half-closes.
    input: mpsc::Sender<Vec<u8>>,
}

#[derive(Default)]
pub(crate) struct Relays {
    open: Mutex<HashMap<u32, Relay>>,
}

impl Relays {
    /// Connects `stream` to 127.0.0.1:`port` and starts carrying bytes both ways.
    pub(crate) fn connect(
        self: &Arc<Self>,
        chan: Arc<Channel>,
        stream: u32,
        port: u16,
    ) -> Result<(), String> {
        {
            let open = self.open.lock().unwrap();
            if open.len() >= MAX_RELAYS {
                return Err(format!("{MAX_RELAYS} relays are open already"));
            }
            if open.contains_key(&stream) {
                return Err(format!("stream {stream} is in use"));
            }
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
        let reader = socket.try_clone().map_err(|e| e.to_string())?;
        let mut writer = socket.try_clone().map_err(|e| e.to_string())?;
        let (input, rx) = mpsc::channel::<Vec<u8>>();
        self.open
            .lock()
            .unwrap()
            .insert(stream, Relay { socket, input });
        std::thread::spawn(move || {
            for chunk in rx {
                if chunk.is_empty() {
                    let _ = writer.shutdown(Shutdown::Write);
                    return;
                }
                if writer.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        let relays = self.clone();
        std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => chan.send(&Frame::data(FrameKind::Stdout, stream, buf[..n].to_vec())),
                }
            }
            relays.open.lock().unwrap().remove(&stream);
            chan.send(&Frame::json(
                FrameKind::Event,
                &Event::Exited { stream, code: 0 },
            ));
        });
        Ok(())
    }

    /// Host bytes for `stream`; handed back if the stream is no relay's.
    pub(crate) fn write(&self, stream: u32, data: Vec<u8>) -> Result<(), Vec<u8>> {
        match self.open.lock().unwrap().get(&stream) {
            Some(r) => {
                let _ = r.input.send(data);
                Ok(())
            }
            None => Err(data),
        }
    }

    /// Closes `stream`'s connection both ways (the host gave up on it); its reader then
    /// reports the end.
    pub(crate) fn close(&self, stream: u32) -> Result<(), String> {
        match self.open.lock().unwrap().get(&stream) {
            Some(r) => {
                let _ = r.socket.shutdown(Shutdown::Both);
                Ok(())
            }
            None => Err(format!("no relay on stream {stream}")),
        }
    }
}
