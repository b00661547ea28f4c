//! Ports published while a pod runs (`PUT /pod/{id}/portmappings/add`): hyperd listens on
//! the host port itself and carries each connection over the agent channel to the port
//! on the VM's loopback (agent protocol 5's `connect_port`), the path a port-forward
//! takes too. passt cannot change its forwards while it runs (Debian's 2023-03), and
//! qemu's `-netdev stream` does not reconnect to a new passt, so a running pod's passt
//! keeps the ports it started with and these go beside it (docs/decisions.md).
//!
//! Bounds: at most [`MAX_CONNECTIONS`] relayed connections per pod; the agent's bytes for
//! a connection wait in a queue of [`QUEUE_CHUNKS`] chunks, and a client that lets it
//! fill is dropped (as slow attach clients are), so a host client that never reads grows
//! nothing. The listeners go with the pod's VM; a restarted daemon listens again on the
//! ports its record names.
use super::{EngineError, Pod, VmRuntime};
use crate::vm::agent::AgentClient;
use crate::vm::net::{Forward, Proto};
use bytes::Bytes;
use hyperd_agent::protocol::Op;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Relayed connections open at once, per pod.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Chunks of the agent's output queued for one connection before its client is dropped.
pub(crate) const QUEUE_CHUNKS: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent sends for a relayed connection.
#[derive(Debug)]
pub(crate) enum RelayEvent {
    Data(Bytes),
    /// The port's side closed.
    Done,
}

/// A host port relayed into the pod, with its listener.
pub struct Relayed {
    pub forward: Forward,
    listener: tokio::task::AbortHandle,
}

impl Drop for Relayed {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Checks a port to add: TCP, and not published already.
pub(crate) fn check_new(vm: &VmRuntime, f: &Forward) -> Result<(), EngineError> {
    if f.proto != Proto::Tcp {
        return Err(EngineError::Invalid(
            "only TCP ports can be added to a running pod (UDP is published at start)".into(),
        ));
    }
    let taken = |g: &Forward| g.host_port == f.host_port && g.proto == f.proto;
    let at_start = match &vm.net {
        crate::vm::net::VmNet::User { forwards, .. } => forwards.iter().any(taken),
        _ => false,
    };
    if at_start || vm.relayed.lock().unwrap().iter().any(|r| taken(&r.forward)) {
        return Err(crate::vm::VmError::PortTaken(format!(
            "{}/tcp (published to this pod)",
            f.host_port
        ))
        .into());
    }
    if vm.agent_protocol < 5 {
        return Err(EngineError::Invalid(
            "the pod's VM runs an agent older than protocol 5, which cannot relay ports".into(),
        ));
    }
    Ok(())
}

/// Binds the host port and starts relaying its connections into `pod`'s VM.
pub(crate) async fn start(
    pod: &Arc<Pod>,
    vm: &Arc<VmRuntime>,
    forward: Forward,
) -> Result<(), EngineError> {
    let ip = forward.host_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    let listener = tokio::net::TcpListener::bind((ip, forward.host_port))
        .await
        .map_err(|e| {
            crate::vm::VmError::PortTaken(format!("{ip}:{}/tcp: {e}", forward.host_port))
        })?;
    let task = tokio::spawn(accept_loop(
        Arc::downgrade(pod),
        vm.agent.clone(),
        listener,
        forward.guest_port,
    ));
    vm.relayed.lock().unwrap().push(Relayed {
        forward,
        listener: task.abort_handle(),
    });
    Ok(())
}

/// Stops relaying `host_port` (its open connections end as their agent streams close).
pub(crate) fn stop(vm: &VmRuntime, proto: Proto, host_port: u16) -> bool {
    let mut relayed = vm.relayed.lock().unwrap();
    let before = relayed.len();
    relayed.retain(|r| !(r.forward.host_port == host_port && r.forward.proto == proto));
    relayed.len() != before
}

async fn accept_loop(
    pod: std::sync::Weak<Pod>,
    agent: AgentClient,
    listener: tokio::net::TcpListener,
    guest_port: u16,
) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(pod) = pod.upgrade() else {
            return;
        };
        if pod.state().relays.len() >= MAX_CONNECTIONS {
            tracing::warn!(pod = %pod.id, "{MAX_CONNECTIONS} relayed connections open: one refused");
            continue;
        }
        tokio::spawn(relay_one(pod, agent.clone(), socket, guest_port));
    }
}

/// Carries one connection both ways until either side is done.
async fn relay_one(
    pod: Arc<Pod>,
    agent: AgentClient,
    socket: tokio::net::TcpStream,
    guest_port: u16,
) {
    let stream = pod.next_stream.fetch_add(1, Ordering::SeqCst);
    let (tx, mut rx) = mpsc::channel(QUEUE_CHUNKS);
    pod.state().relays.insert(stream, tx);
    let connected = agent
        .call(
            Op::ConnectPort {
                stream,
                port: guest_port,
            },
            CONNECT_TIMEOUT,
        )
        .await;
    if let Err(e) = connected {
        tracing::debug!(pod = %pod.id, stream, "relay to port {guest_port}: {e}");
        pod.state().relays.remove(&stream);
        return;
    }
    let (mut from_client, mut to_client) = socket.into_split();
    let upstream = {
        let agent = agent.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from_client.read(&mut buf).await {
                    Ok(0) => {
                        // The client is done sending: the port sees end-of-file.
                        let _ = agent.stdin(stream, Vec::new()).await;
                        return false;
                    }
                    // The client is gone (a reset): nobody takes an answer.
                    Err(_) => return true,
                    Ok(n) => {
                        if agent.stdin(stream, buf[..n].to_vec()).await.is_err() {
                            return true;
                        }
                    }
                }
            }
        }
    };
    // Ends when the port closes, the client stops taking bytes, or the queue is
    // dropped (the client fell behind, or the VM went).
    let downstream = async move {
        while let Some(ev) = rx.recv().await {
            match ev {
                RelayEvent::Data(d) => {
                    if to_client.write_all(&d).await.is_err() {
                        return;
                    }
                }
                RelayEvent::Done => {
                    let _ = to_client.shutdown().await;
                    return;
                }
            }
        }
    };
    // The client half-closing does not end the exchange (the answer may still come); a
    // client that fails does, even while the port stays silent.
    let mut upstream = tokio::spawn(upstream);
    tokio::pin!(downstream);
    tokio::select! {
        _ = &mut downstream => {}
        gone = &mut upstream => {
            if !matches!(gone, Ok(true)) {
                downstream.await;
            }
        }
    }
    upstream.abort();
    // Whichever side ended, the other goes too.
    let _ = agent
        .call(Op::ClosePort { stream }, Duration::from_secs(5))
        .await;
    pod.state().relays.remove(&stream);
}

impl super::Engine {
    /// Publishes `ports` on the running pod `key` (`add`), or stops publishing them:
    /// host ports relayed by the daemon (TCP). Ports published at start stay as they are.
    /// Answers the pod's published ports after the change.
    pub async fn change_ports(
        &self,
        key: &str,
        ports: &[crate::spec::Port],
        add: bool,
    ) -> Result<Vec<hyperd_api::pods::PublishedPort>, EngineError> {
        if ports.is_empty() || ports.len() > 64 {
            return Err(EngineError::Invalid(
                "name 1 to 64 ports to add or delete".into(),
            ));
        }
        for p in ports {
            p.validate()?;
        }
        let pod = self.pod(key)?;
        let _op = pod.op.lock().await;
        let vm = pod
            .vm()
            .filter(|_| pod.phase() == super::PodPhase::Running)
            .ok_or_else(|| EngineError::WrongState(format!("pod {} is not running", pod.id)))?;
        match &vm.net {
            crate::vm::net::VmNet::User { .. } => {}
            crate::vm::net::VmNet::None => {
                return Err(EngineError::Invalid(format!(
                    "pod {} has no network",
                    pod.id
                )))
            }
            crate::vm::net::VmNet::Netns { .. } => {
                return Err(EngineError::Invalid(format!(
                    "pod {} is on a network namespace: its owner publishes its ports",
                    pod.id
                )))
            }
        }
        if add {
            let forwards = ports
                .iter()
                .map(|p| {
                    if p.host_port == 0 {
                        return Err(EngineError::Invalid(
                            "name the host port of a port added to a running pod".into(),
                        ));
                    }
                    super::pool::forward_of(p)
                })
                .collect::<Result<Vec<_>, _>>()?;
            for f in &forwards {
                check_new(&vm, f)?;
            }
            let mut started = Vec::new();
            for f in forwards {
                let port = f.host_port;
                if let Err(e) = start(&pod, &vm, f).await {
                    // All or nothing: the ones started for this request go again.
                    for p in started {
                        stop(&vm, Proto::Tcp, p);
                    }
                    return Err(e);
                }
                started.push(port);
            }
        } else {
            for p in ports {
                let proto = Proto::of(p.protocol());
                let relayed =
                    vm.relayed.lock().unwrap().iter().any(|r| {
                        r.forward.host_port == p.host_port as u16 && r.forward.proto == proto
                    });
                if !relayed {
                    return Err(EngineError::NoSuch(format!(
                        "host port {}/{} was not added to pod {} while it runs (ports published at start stay until it stops)",
                        p.host_port,
                        proto.as_str(),
                        pod.id
                    )));
                }
            }
            for p in ports {
                let proto = Proto::of(p.protocol());
                stop(&vm, proto, p.host_port as u16);
            }
        }
        self.persist_in_background(&pod);
        Ok(pod.network().map(|n| n.ports).unwrap_or_default())
    }
}

/// Routes the agent's output or end for a relayed stream; answers whether `stream` was
/// one. A connection whose queue is full is dropped.
pub(crate) fn route(pod: &Pod, stream: u32, ev: RelayEvent) -> bool {
    let mut state = pod.state();
    let Some(tx) = state.relays.get(&stream) else {
        return false;
    };
    if tx.try_send(ev).is_err() {
        tracing::debug!(pod = %pod.id, stream, "a relayed client fell behind: dropped");
        state.relays.remove(&stream);
    }
    true
}
