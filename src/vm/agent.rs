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
    /// Takes a connected channel; events flow into the returned receiver.
    pub fn new(stream: UnixStream) -> (AgentClient, mpsc::UnboundedReceiver<AgentEvent>) {
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
        let (tx, rx) = mpsc::unbounded_channel();
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
                            let _ = tx.send(AgentEvent::Exited { stream, code });
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
                        let _ = tx.send(AgentEvent::Output {
                            stream: frame.stream,
                            stderr: frame.kind == FrameKind::Stderr,
                            data: Bytes::from(frame.payload),
                        });
                    }
                    other => tracing::warn!("unexpected {other:?} frame from agent"),
                }
            }
            reader_inner.closed.store(true, Ordering::SeqCst);
            reader_inner.pending.lock().unwrap().clear();
            let _ = tx.send(AgentEvent::Closed);
        });
        (AgentClient { inner }, rx)
    }

    async fn send(&self, frame: Frame) -> Result<(), AgentError> {
        let bytes = frame.encode();
        let mut w = self.inner.writer.lock().await;
        w.write_all(&bytes).await.map_err(|_| AgentError::Closed)
    }

    /// Sends a request and waits for its reply.
    pub async fn call(
        &self,
        op: Op,
        timeout: Duration,
    ) -> Result<Option<serde_json::Value>, AgentError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(AgentError::Closed);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let name = op_name(&op);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().unwrap().insert(id, tx);
        self.send(Frame::json(FrameKind::Request, &Request { id, op }))
            .await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Response { error: Some(e), .. })) => Err(AgentError::Failed(e)),
            Ok(Ok(resp)) => Ok(resp.value),
            Ok(Err(_)) => Err(AgentError::Closed),
            Err(_) => {
                self.inner.pending.lock().unwrap().remove(&id);
                Err(AgentError::Timeout { op: name, timeout })
            }
        }
    }

    /// Writes to a process's stdin; an empty chunk closes it.
    pub async fn stdin(&self, stream: u32, data: Vec<u8>) -> Result<(), AgentError> {
        self.send(Frame::data(FrameKind::Stdin, stream, data)).await
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
}
