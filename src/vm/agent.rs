//! The host's end of the agent channel: requests with replies matched by id, and a
//! stream of events (process output, exits) for the pod that owns the VM.
use bytes::Bytes;
use hyperd_agent::protocol::{Event, Frame, FrameKind, Op, Request, Response, HEADER_LEN};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent channel is closed")]
    Closed,
    #[error("the agent did not answer {op} within {timeout:?}")]
    Timeout { op: String, timeout: Duration },
    #[error("agent: {0}")]
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    Output {
        stream: u32,
        stderr: bool,
        data: Bytes,
    },
    Exited {
        stream: u32,
        code: i32,
    },
    /// The channel ended (the VM is gone or going).
    Closed,
}

/// Events read from the agent and not yet taken by the VM's monitor (each at most one
/// frame: 32 KiB of output).
pub(crate) const EVENT_QUEUE: usize = 64;

/// How long a write of stdin may wait for a guest that does not read its channel.
pub(crate) const STDIN_TIMEOUT: Duration = Duration::from_secs(30);

struct Inner {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// When the agent announced itself, and the guest's uptime it reported then.
    ready: Mutex<Option<(std::time::Instant, u64)>>,
    /// The protocol version the agent announced (0 before it did).
    protocol: std::sync::atomic::AtomicU32,
}

#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

impl AgentClient {
    /// Takes a connected channel; events flow into the returned receiver, which holds
    /// at most [`EVENT_QUEUE`] of them: past that the reader waits, the guest's channel
    /// fills and the guest waits (back-pressure), rather than the daemon's memory
    /// growing. Whoever calls the agent must not need an event to be consumed before the
    /// call's answer comes (an export's data may precede it: take both at once).
    pub fn new(stream: UnixStream) -> (AgentClient, mpsc::Receiver<AgentEvent>) {
        let (rd, wr) = stream.into_split();
        // Buffered: a frame costs no more than a read or two of the socket, and skipping
        // the bytes of a broken frame to the next header reads from memory, not one
        // system call per byte.
        let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(wr),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            ready: Mutex::new(None),
            protocol: std::sync::atomic::AtomicU32::new(0),
        });
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let reader_inner = inner.clone();
        tokio::spawn(async move {
            loop {
                let frame = match read_frame(&mut rd).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!("agent channel ended: {e}");
                        break;
                    }
                };
                match frame.kind {
                    FrameKind::Response => match frame.parse::<Response>() {
                        Ok(resp) => {
                            let waiter = reader_inner.pending.lock().unwrap().remove(&resp.id);
                            if let Some(w) = waiter {
                                let _ = w.send(resp);
                            }
                        }
                        Err(e) => tracing::warn!("bad response from agent: {e}"),
                    },
                    FrameKind::Event => match frame.parse::<Event>() {
                        Ok(Event::Exited { stream, code }) => {
                            if tx.send(AgentEvent::Exited { stream, code }).await.is_err() {
                                break;
                            }
                        }
                        Ok(Event::Ready { version, uptime_ms }) => {
                            tracing::debug!(
                                "agent ready, protocol {version}, guest up {uptime_ms} ms"
                            );
                            reader_inner.protocol.store(version, Ordering::SeqCst);
                            reader_inner
                                .ready
                                .lock()
                                .unwrap()
                                .get_or_insert((std::time::Instant::now(), uptime_ms));
                        }
                        Err(e) => tracing::warn!("bad event from agent: {e}"),
                    },
                    FrameKind::Stdout | FrameKind::Stderr => {
                        let ev = AgentEvent::Output {
                            stream: frame.stream,
                            stderr: frame.kind == FrameKind::Stderr,
                            data: Bytes::from(frame.payload),
                        };
                        if tx.send(ev).await.is_err() {
                            break;
                        }
                    }
                    other => tracing::warn!("unexpected {other:?} frame from agent"),
                }
            }
            reader_inner.closed.store(true, Ordering::SeqCst);
            reader_inner.pending.lock().unwrap().clear();
            let _ = tx.send(AgentEvent::Closed).await;
        });
        (AgentClient { inner }, rx)
    }

    /// Writes a frame by `deadline`. A guest that stops reading its channel makes the
    /// write wait; past the deadline the channel is broken (a frame may be half
    /// written) and every later call fails at once.
    async fn send_by(
        &self,
        frame: Frame,
        deadline: tokio::time::Instant,
        op: &str,
    ) -> Result<(), AgentError> {
        let bytes = frame.encode();
        let write = async {
            let mut w = self.inner.writer.lock().await;
            w.write_all(&bytes).await.map_err(|_| AgentError::Closed)
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(r) => r,
            Err(_) => {
                self.inner.closed.store(true, Ordering::SeqCst);
                Err(AgentError::Timeout {
                    op: format!("{op} (writing to the guest)"),
                    timeout: deadline.saturating_duration_since(tokio::time::Instant::now()),
                })
            }
        }
    }

    /// Sends a request and waits for its reply, both within `timeout`.
    pub async fn call(
        &self,
        op: Op,
        timeout: Duration,
    ) -> Result<Option<serde_json::Value>, AgentError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(AgentError::Closed);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let id = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let name = op_name(&op);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().unwrap().insert(id, tx);
        if let Err(e) = self
            .send_by(
                Frame::json(FrameKind::Request, &Request { id, op }),
                deadline,
                &name,
            )
            .await
        {
            self.inner.pending.lock().unwrap().remove(&id);
            return Err(match e {
                AgentError::Timeout { op, .. } => AgentError::Timeout { op, timeout },
                e => e,
            });
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Response { error: Some(e), .. })) => Err(AgentError::Failed(e)),
            Ok(Ok(resp)) => Ok(resp.value),
            Ok(Err(_)) => Err(AgentError::Closed),
            Err(_) => {
                self.inner.pending.lock().unwrap().remove(&id);
                Err(AgentError::Timeout { op: name, timeout })
            }
        }
    }

    /// Writes to a process's stdin (an empty chunk closes it), within
    /// [`STDIN_TIMEOUT`].
    pub async fn stdin(&self, stream: u32, data: Vec<u8>) -> Result<(), AgentError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(AgentError::Closed);
        }
        let deadline = tokio::time::Instant::now() + STDIN_TIMEOUT;
        self.send_by(
            Frame::data(FrameKind::Stdin, stream, data),
            deadline,
            "stdin",
        )
        .await
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// The protocol version the agent announced, once it did.
    pub fn protocol(&self) -> Option<u32> {
        match self.inner.protocol.load(Ordering::SeqCst) {
            0 => None,
            v => Some(v),
        }
    }

    /// When the guest kernel started and when the agent was ready, as host instants
    /// (from the agent's first announcement; `None` before it).
    pub fn boot_times(&self) -> Option<(std::time::Instant, std::time::Instant)> {
        let (ready, uptime_ms) = (*self.inner.ready.lock().unwrap())?;
        let kernel = ready
            .checked_sub(std::time::Duration::from_millis(uptime_ms))
            .unwrap_or(ready);
        Some((kernel, ready))
    }
}

fn op_name(op: &Op) -> String {
    serde_json::to_value(op)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_string))
        .unwrap_or_else(|| "request".into())
}

/// Reads the next frame, skipping bytes until a header decodes (see the protocol's
/// magic byte).
async fn read_frame(
    rd: &mut (impl AsyncReadExt + Unpin),
) -> Result<Frame, Box<dyn std::error::Error + Send + Sync>> {
    let mut h = [0u8; HEADER_LEN];
    rd.read_exact(&mut h).await?;
    let mut skipped = 0usize;
    loop {
        match Frame::decode_header(&h) {
            Ok((kind, stream, len)) => {
                if skipped > 0 {
                    tracing::warn!("agent channel: skipped {skipped} bytes to the next frame");
                }
                let mut payload = vec![0u8; len as usize];
                rd.read_exact(&mut payload).await?;
                return Ok(Frame {
                    kind,
                    stream,
                    payload,
                });
            }
            Err(_) => {
                h.copy_within(1.., 0);
                rd.read_exact(&mut h[HEADER_LEN - 1..]).await?;
                skipped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake agent on the other end of a socketpair answers one ping and reports output.
    #[tokio::test]
    async fn matches_replies_and_forwards_events() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let (client, mut events) = AgentClient::new(host);
        let guest_task = tokio::spawn(async move {
            let f = read_frame(&mut guest).await.unwrap();
            let req: Request = f.parse().unwrap();
            assert_eq!(req.op, Op::Ping);
            let out = Frame::data(FrameKind::Stderr, 5, b"oops".to_vec());
            guest.write_all(&out.encode()).await.unwrap();
            let resp = Frame::json(
                FrameKind::Response,
                &Response {
                    id: req.id,
                    error: None,
                    value: None,
                },
            );
            guest.write_all(&resp.encode()).await.unwrap();
            let ev = Frame::json(FrameKind::Event, &Event::Exited { stream: 5, code: 3 });
            guest.write_all(&ev.encode()).await.unwrap();
        });
        client.call(Op::Ping, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            events.recv().await.unwrap(),
            AgentEvent::Output {
                stream: 5,
                stderr: true,
                data: Bytes::from_static(b"oops")
            }
        );
        assert_eq!(
            events.recv().await.unwrap(),
            AgentEvent::Exited { stream: 5, code: 3 }
        );
        guest_task.await.unwrap();
        assert_eq!(events.recv().await.unwrap(), AgentEvent::Closed);
        assert!(matches!(
            client.call(Op::Ping, Duration::from_secs(1)).await,
            Err(AgentError::Closed)
        ));
    }

    /// Garbage from the guest (a hostile agent, or a frame cut short) is skipped to the
    /// next well-formed frame, through the buffered reader.
    #[tokio::test]
    async fn skips_garbage_to_the_next_frame() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let (_client, mut events) = AgentClient::new(host);
        let mut bytes = vec![0xffu8; 100_000];
        bytes.extend(Frame::data(FrameKind::Stdout, 7, b"after".to_vec()).encode());
        guest.write_all(&bytes).await.unwrap();
        drop(guest);
        assert_eq!(
            events.recv().await.unwrap(),
            AgentEvent::Output {
                stream: 7,
                stderr: false,
                data: Bytes::from_static(b"after")
            }
        );
        assert_eq!(events.recv().await.unwrap(), AgentEvent::Closed);
    }

    /// A guest that floods output while nobody takes the events: the queue holds
    /// EVENT_QUEUE of them, the reader stops reading, the guest's writes wait; once the
    /// events are taken every frame arrives, in order.
    #[tokio::test]
    async fn a_flood_waits_for_the_monitor() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let (_client, mut events) = AgentClient::new(host);
        const FRAMES: usize = 2000;
        let written = Arc::new(AtomicU64::new(0));
        let count = written.clone();
        let flood = tokio::spawn(async move {
            for i in 0..FRAMES {
                let mut data = vec![b'x'; 32 << 10];
                data[..8].copy_from_slice(&(i as u64).to_le_bytes());
                guest
                    .write_all(&Frame::data(FrameKind::Stdout, 1, data).encode())
                    .await
                    .unwrap();
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(events.len(), EVENT_QUEUE);
        // What the socket buffers hold besides: far from the 64 MiB written.
        let w = written.load(Ordering::SeqCst) as usize;
        assert!(w < FRAMES / 4, "{w} frames written while nobody read");
        for i in 0..FRAMES {
            match events.recv().await.unwrap() {
                AgentEvent::Output { data, .. } => {
                    assert_eq!(data[..8], (i as u64).to_le_bytes());
                }
                other => panic!("{other:?}"),
            }
        }
        flood.await.unwrap();
    }

    /// A guest that never reads its channel: a call fails at its deadline (the write
    /// included), and the channel is broken for the calls after it. (Paused clock: the
    /// stdin write's 30 s pass at once.)
    #[tokio::test(start_paused = true)]
    async fn a_guest_that_never_reads_times_out_the_call() {
        let (host, _guest) = UnixStream::pair().unwrap();
        let (client, _events) = AgentClient::new(host);
        let big = vec![b'y'; 8 << 20];
        let r = client.stdin(1, big.clone()).await;
        assert!(r.is_err() || client.stdin(1, big).await.is_err());
        let r = client.call(Op::Ping, Duration::from_millis(300)).await;
        assert!(r.is_err(), "{r:?}");
        assert!(client.is_closed());
    }
}
