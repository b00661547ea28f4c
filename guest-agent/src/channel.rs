//! The agent's end of the host channel: the virtio-serial port named `hyper.agent`.
//!
//! A virtio-serial port reads end-of-file while no host is connected, so reads retry until
//! the host is there; writes go out whole under one lock so frames never interleave.
use hyperd_agent::protocol::{Frame, SERIAL_PORT_NAME};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::sync::Mutex;
use std::time::Duration;

pub(crate) struct Channel {
    reader: Mutex<File>,
    writer: Mutex<File>,
}

impl Channel {
    pub(crate) fn open() -> io::Result<Channel> {
        let dev = find_port()?;
        let f = OpenOptions::new().read(true).write(true).open(&dev)?;
        let w = f.try_clone()?;
        Ok(Channel {
            reader: Mutex::new(f),
            writer: Mutex::new(w),
        })
    }

    /// Blocks until a whole frame arrived. Protocol errors are logged and skipped.
    pub(crate) fn read_frame(&self) -> Frame {
        let mut r = self.reader.lock().unwrap();
        loop {
            match Frame::read_from(&mut RetryReader(&mut r)) {
                Ok(Some(f)) => return f,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => crate::log(&format!("{e}")),
            }
        }
    }

    pub(crate) fn send(&self, frame: &Frame) {
        let mut w = self.writer.lock().unwrap();
        if let Err(e) = frame.write_to(&mut *w) {
            crate::log(&format!("write to host: {e}"));
        }
    }
}

/// Retries end-of-file in the middle of a frame (host reconnecting), but reports it at
/// a frame boundary so the caller can wait.
struct RetryReader<'a>(&'a mut File);

impl Read for RetryReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.0.read(buf) {
                Ok(0) => std::thread::sleep(Duration::from_millis(10)),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn find_port() -> io::Result<String> {
    for _ in 0..500 {
        if let Ok(dir) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in dir.flatten() {
                let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if name.trim() == SERIAL_PORT_NAME {
                    return Ok(format!("/dev/{}", entry.file_name().to_string_lossy()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("virtio-serial port {SERIAL_PORT_NAME} not found"),
    ))
}
