//! The host/guest agent protocol.
//!
//! One byte stream (a virtio-serial port or a vsock connection) carries frames:
//!
//! ```text
//! +-----------+-----------+--------+-------------+-------------------+
//! | 0xA5 (u8) | len: u32  | kind:u8| stream: u32 | payload: len bytes|
//! +-----------+-----------+--------+-------------+-------------------+
//! ```
//!
//! integers big-endian. The magic byte lets a reader find the next frame again when it
//! joins a stream in the middle (a daemon restarted while a frame was on its way): it
//! skips bytes until a header decodes. `Request`, `Response` and `Event` frames carry JSON
//! ([`Request`], [`Response`], [`Event`]); `Stdout`, `Stderr` and `Stdin` frames carry raw
//! bytes of the process whose stream number is in the header (an empty `Stdin` payload
//! closes the process's stdin). Stream numbers are chosen by the host, one per process, so
//! attach, exec, tty, signals and stats all address a process the same way.
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Largest payload a frame may carry; anything larger is a protocol error.
pub const MAX_PAYLOAD: u32 = 4 << 20;
/// Protocol version announced by the agent in [`Event::Ready`]. 2 added
/// [`Op::ConfigureNetwork`]; a daemon still adopts VMs whose agent speaks 1 (it sends
/// them no op they do not know).
pub const VERSION: u32 = 5;
/// Name of the virtio-serial port the agent listens on.
pub const SERIAL_PORT_NAME: &str = "hyper.agent";
/// vsock port the agent listens on when the VM has a vsock device.
pub const VSOCK_PORT: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Request = 1,
    Response = 2,
    Event = 3,
    Stdout = 4,
    Stderr = 5,
    Stdin = 6,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Event,
            4 => Self::Stdout,
            5 => Self::Stderr,
            6 => Self::Stdin,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub stream: u32,
    pub payload: Vec<u8>,
}

pub const HEADER_LEN: usize = 10;
/// First byte of every frame.
pub const MAGIC: u8 = 0xA5;

impl Frame {
    pub fn json<T: Serialize>(kind: FrameKind, value: &T) -> Self {
        Frame {
            kind,
            stream: 0,
            payload: serde_json::to_vec(value).expect("protocol types serialize"),
        }
    }

    pub fn data(kind: FrameKind, stream: u32, payload: Vec<u8>) -> Self {
        Frame {
            kind,
            stream,
            payload,
        }
    }

    /// The frame as bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.push(MAGIC);
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.stream.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses a header; returns (kind, stream, payload length).
    pub fn decode_header(h: &[u8; HEADER_LEN]) -> Result<(FrameKind, u32, u32), ProtocolError> {
        if h[0] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        let kind = FrameKind::from_u8(h[5]).ok_or(ProtocolError::BadKind(h[5]))?;
        let stream = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
        if len > MAX_PAYLOAD {
            return Err(ProtocolError::TooLarge(len));
        }
        Ok((kind, stream, len))
    }

    /// Reads one frame from a blocking reader, skipping bytes that do not start a valid
    /// header. `Ok(None)` at a clean end of stream.
    pub fn read_from<R: Read>(r: &mut R) -> Result<Option<Frame>, ProtocolError> {
        let mut h = [0u8; HEADER_LEN];
        let mut got = 0;
        loop {
            while got < HEADER_LEN {
                match r.read(&mut h[got..]) {
                    Ok(0) if got == 0 => return Ok(None),
                    Ok(0) => return Err(ProtocolError::Io(io::ErrorKind::UnexpectedEof.into())),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ProtocolError::Io(e)),
                }
            }
            match Self::decode_header(&h) {
                Ok((kind, stream, len)) => {
                    let mut payload = vec![0u8; len as usize];
                    r.read_exact(&mut payload).map_err(ProtocolError::Io)?;
                    return Ok(Some(Frame {
                        kind,
                        stream,
                        payload,
                    }));
                }
                Err(_) => {
                    // Resynchronize: drop one byte and look again.
                    h.copy_within(1.., 0);
                    got = HEADER_LEN - 1;
                }
            }
        }
    }

    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.encode())?;
        w.flush()
    }

    pub fn parse<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProtocolError> {
        serde_json::from_slice(&self.payload).map_err(|e| ProtocolError::Json(e.to_string()))
    }
}

#[derive(Debug)]
pub enum ProtocolError {
    Io(io::Error),
    BadMagic,
    BadKind(u8),
    TooLarge(u32),
    Json(String),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "agent channel: {e}"),
            Self::BadMagic => write!(f, "agent channel: not at a frame boundary"),
            Self::BadKind(k) => write!(f, "agent channel: unknown frame kind {k}"),
            Self::TooLarge(n) => write!(f, "agent channel: frame of {n} bytes is too large"),
            Self::Json(e) => write!(f, "agent channel: bad message: {e}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A request from the host; answered by exactly one [`Response`] with the same `id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Liveness check; the first one also tells the agent the host is there.
    Ping,
    /// Prepare a container's root filesystem: the read-only image disk (found by its
    /// virtio-blk serial) under a writable overlay.
    CreateContainer {
        container: String,
        image_disk_serial: String,
        fstype: String,
        #[serde(default)]
        hostname: Option<String>,
        /// Entries of the VM's share mounted into the container (since protocol 3).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mounts: Vec<Mount>,
        /// The root becomes read-only before the container's first process starts
        /// (after the host's files are written); since protocol 3.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        readonly: bool,
        /// The capabilities its processes keep, by number (`CAP_CHOWN` is 0); `None`:
        /// all of them. Since protocol 4.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capabilities: Option<Vec<u32>>,
        /// The VM's whole `/dev` instead of the minimal one. Since protocol 4.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        privileged: bool,
        /// Every process of the container runs with `PR_SET_NO_NEW_PRIVS`. Since
        /// protocol 4.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_new_privileges: bool,
    },
    /// Start a process in a container; its output arrives as frames of `stream`.
    StartProcess {
        container: String,
        stream: u32,
        process: ProcessSpec,
    },
    /// Send a signal to the process of `stream`.
    Signal { stream: u32, signal: i32 },
    /// Resize the terminal of the process of `stream`.
    ResizeTty { stream: u32, rows: u16, cols: u16 },
    /// Unmount and forget a container whose processes have exited.
    RemoveContainer { container: String },
    /// Sync file systems and power the VM off.
    Shutdown,
    /// What runs and what has exited: answered with a [`Status`] (used by a daemon that
    /// reconnects after a restart).
    Status,
    /// Resource use of the VM: answered with [`Stats`].
    Stats,
    /// Configures a network interface of the VM (shared by all its containers) and the
    /// default route; since protocol 2.
    ConfigureNetwork { network: NetworkConfig },
    /// Streams a container's changes (its writable layer) as an OCI tar layer with
    /// whiteouts: stdout frames of `stream`, then an `exited` event for the stream (0:
    /// complete; otherwise the error came on stderr). Since protocol 3.
    ExportDiff {
        container: String,
        stream: u32,
        /// Stop the container's processes (SIGSTOP) while the changes are read, and
        /// continue them after: a consistent snapshot, as Docker's `pause`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pause: bool,
    },
    /// Connects `stream` to TCP port `port` on the VM's loopback: the host's bytes go as
    /// `Stdin` frames of the stream (empty: the host closed its side), the port's come
    /// back as `Stdout` frames, and an `exited` event (code 0) ends it. Since protocol 5.
    ConnectPort { stream: u32, port: u16 },
    /// Closes a [`Op::ConnectPort`] stream both ways. Since protocol 5.
    ClosePort { stream: u32 },
    /// Writes a file into a created container's root filesystem (its writable layer).
    WriteFile {
        container: String,
        /// Absolute path inside the container.
        path: String,
        data: Vec<u8>,
        mode: u32,
        /// `user[:group]` (names of the container's files or ids) owning the file;
        /// empty for root (since protocol 3).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        owner: String,
    },
}

/// An entry of the VM's share (virtio-fs tag [`SHARE_TAG`]) or a volume disk mounted
/// into a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Mount {
    /// The entry's name in the share.
    #[serde(default)]
    pub share: String,
    /// Instead of a share entry: the virtio-blk serial of a volume disk (ext4), mounted
    /// once in the VM and bound into each container that asks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub disk: String,
    /// Instead of either: a new tmpfs (Docker's `--tmpfs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tmpfs: bool,
    /// Absolute path in the container; symbolic links in the image resolve inside the
    /// container's root.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// The virtio-blk serial of the VM's scratch disk (ext4, the containers' writable
/// layers); a VM without one keeps them in RAM.
pub const SCRATCH_SERIAL: &str = "hyper-scratch";

/// The virtio-fs tag of the VM's share.
pub const SHARE_TAG: &str = "hyper-share";

/// One interface's IPv4 configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NetworkConfig {
    pub interface: String,
    pub address: String,
    pub prefix: u8,
    /// Default gateway; empty for none.
    #[serde(default)]
    pub gateway: String,
    /// 0 leaves the driver's MTU.
    #[serde(default)]
    pub mtu: u32,
}

/// The answer to [`Op::Stats`], read from the guest's /proc.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// CPU time spent by the guest outside idle, in nanoseconds, since boot.
    pub cpu_ns: u64,
    pub memory_total: u64,
    pub memory_available: u64,
    pub load1: f64,
    pub processes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: String,
    /// `uid[:gid]` or a user name from the container's /etc/passwd.
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub tty: bool,
    /// Whether the host will send stdin; otherwise the process reads /dev/null.
    #[serde(default)]
    pub stdin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

/// The answer to [`Op::Status`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Streams of processes still running.
    pub running: Vec<u32>,
    /// Exit codes of processes that have exited, by stream.
    pub exited: Vec<(u32, i32)>,
}

/// Something the agent reports on its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The agent is up; sent in answer to the host's first frame. `uptime_ms` is the
    /// guest's time since its kernel started (0 from agents that predate it).
    Ready {
        version: u32,
        #[serde(default)]
        uptime_ms: u64,
    },
    /// The process of `stream` has exited, after all its output frames were sent.
    Exited { stream: u32, code: i32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        let f = Frame::data(FrameKind::Stdout, 7, b"hello".to_vec());
        let bytes = f.encode();
        let back = Frame::read_from(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn ops_round_trip_through_the_flattened_request() {
        for op in [
            Op::Ping,
            Op::CreateContainer {
                container: "c1".into(),
                image_disk_serial: "hyper-c1".into(),
                fstype: "erofs".into(),
                hostname: Some("h".into()),
                mounts: vec![Mount {
                    share: "v0".into(),
                    disk: String::new(),
                    tmpfs: false,
                    target: "/data".into(),
                    read_only: true,
                }],
                readonly: true,
                capabilities: Some(vec![0, 5]),
                privileged: false,
                no_new_privileges: true,
            },
            Op::RemoveContainer {
                container: "c1".into(),
            },
            Op::Shutdown,
        ] {
            let r = Request { id: 9, op };
            let bytes = serde_json::to_vec(&r).unwrap();
            assert_eq!(serde_json::from_slice::<Request>(&bytes).unwrap(), r);
        }
    }

    #[test]
    fn request_json_shape() {
        let r = Request {
            id: 3,
            op: Op::Signal {
                stream: 2,
                signal: 9,
            },
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["op"], "signal");
        assert_eq!(v["id"], 3);
        let back: Request = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn rejects_oversized_and_unknown_frames() {
        let mut h = [0u8; HEADER_LEN];
        h[0] = MAGIC;
        h[1..5].copy_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        h[5] = 4;
        assert!(matches!(
            Frame::decode_header(&h),
            Err(ProtocolError::TooLarge(_))
        ));
        h[1..5].copy_from_slice(&1u32.to_be_bytes());
        h[5] = 99;
        assert!(matches!(
            Frame::decode_header(&h),
            Err(ProtocolError::BadKind(99))
        ));
    }

    #[test]
    fn resynchronizes_after_a_partial_frame() {
        let a = Frame::data(FrameKind::Stdout, 1, b"first".to_vec()).encode();
        let b = Frame::data(FrameKind::Stderr, 2, b"second".to_vec()).encode();
        // A reader that joins in the middle of `a` finds `b`.
        let mut stream = a[3..].to_vec();
        stream.extend_from_slice(&b);
        let f = Frame::read_from(&mut &stream[..]).unwrap().unwrap();
        assert_eq!(f.payload, b"second");
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let bytes = Frame::data(FrameKind::Stdout, 1, b"abc".to_vec()).encode();
        assert!(Frame::read_from(&mut &bytes[..bytes.len() - 1]).is_err());
        assert!(Frame::read_from(&mut &bytes[..4]).is_err());
        assert!(Frame::read_from(&mut &b""[..]).unwrap().is_none());
    }
}
