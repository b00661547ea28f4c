//! `POST /attach?container=ID[&stdin=1&stdout=1&stderr=1]`: the connection is hijacked
//! (`Upgrade: tcp`, `101 Switching Protocols`) and then carries the container's output
//! in Docker's stdcopy framing (raw when the container has a tty) one way and its stdin
//! the other. The server closes the connection when the process exits.
use super::http::{flag, full, param, query, read_body, ApiError, ApiResult, Body, MAX_JSON_BODY};
use crate::engine::io::{Chunk, ContainerIo, IoState};
use crate::engine::{Engine, Pod};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) fn upgrade_response() -> Response<Body> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("Connection", "Upgrade")
        .header("Upgrade", "tcp")
        .header("Content-Type", "application/vnd.docker.raw-stream")
        .body(full(""))
        .expect("valid response")
}

pub(crate) fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"))
}

/// The upgrade of a request that asked for a hijacked connection; taken before the
/// request's body is read.
pub(crate) fn take_upgrade(req: &mut Request<Incoming>) -> Option<hyper::upgrade::OnUpgrade> {
    wants_upgrade(req).then(|| hyper::upgrade::on(req))
}

/// A streamed answer of JSON lines (pull, push, load, build progress): chunked, or —
/// when the client asked for `Upgrade: tcp` — `101` and the same lines on the raw
/// stream, closed after the last one.
pub(crate) fn json_lines_or_hijacked<T: serde::Serialize + Send + 'static>(
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> Response<Body> {
    let Some(on_upgrade) = upgrade else {
        return super::http::json_lines(rx);
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("upgrade failed: {e}");
                return;
            }
        };
        let mut io = TokioIo::new(upgraded);
        while let Some(v) = rx.recv().await {
            let mut line = serde_json::to_vec(&v).unwrap_or_default();
            line.extend_from_slice(b"\r\n");
            if io.write_all(&line).await.is_err() {
                return; // the client went away; the work goes on without it
            }
        }
        let _ = io.shutdown().await;
    });
    upgrade_response()
}

/// Starts the process once the connection is hijacked.
pub(crate) type StartAfterUpgrade = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), crate::engine::EngineError>> + Send>,
>;

/// Starts `exec` on `engine` when a hijacked connection is ready for its output.
pub(crate) fn start_exec_later(
    engine: &Arc<Engine>,
    pod: &Arc<Pod>,
    exec: &Arc<crate::engine::exec::Exec>,
) -> StartAfterUpgrade {
    let (engine, pod, exec) = (engine.clone(), pod.clone(), exec.clone());
    Box::pin(async move { engine.start_exec(&pod, &exec).await })
}

/// One side of a hijacked connection: whose output it carries and where its input goes.
pub(crate) struct Session {
    pub pod: Arc<Pod>,
    pub io: Arc<ContainerIo>,
    pub stream: u32,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Session {
    /// Which streams the query asks for (`stdin`, `stdout`, `stderr`; all output if
    /// neither output is named).
    pub(crate) fn from_query(
        q: &HashMap<String, String>,
        pod: Arc<Pod>,
        io: Arc<ContainerIo>,
        stream: u32,
        tty: bool,
    ) -> Session {
        let all = !q.contains_key("stdout") && !q.contains_key("stderr");
        Session {
            pod,
            io,
            stream,
            tty,
            stdin: flag(q, "stdin"),
            stdout: all || flag(q, "stdout"),
            stderr: all || flag(q, "stderr"),
        }
    }

    /// Registers the output listener now (before the process starts, nothing is
    /// missed) and returns the task that serves the connection once it is upgraded.
    pub(crate) fn begin(
        self,
        on_upgrade: hyper::upgrade::OnUpgrade,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.begin_then(on_upgrade, None)
    }

    /// As `begin`, and once the connection is upgraded (the `101` answer written) runs
    /// `start`, as Docker starts an exec only after it hijacked the connection. Clients
    /// such as docker-py read the answer's head through a buffer and then read the bare
    /// socket, so output that arrived with the head would be lost to them.
    pub(crate) fn begin_then(
        self,
        on_upgrade: hyper::upgrade::OnUpgrade,
        start: Option<StartAfterUpgrade>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let output = self.io.attach(self.stdin);
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!("upgrade failed: {e}");
                    return;
                }
            };
            let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
            if let Some(start) = start {
                if let Err(e) = start.await {
                    // As Docker does: the answer is already sent, so the error goes
                    // down the stream.
                    let _ = wr.write_all(format!("{e}\r\n").as_bytes()).await;
                    let _ = wr.shutdown().await;
                    return;
                }
            }
            let Session {
                pod,
                io,
                stream,
                tty,
                stdin,
                stdout,
                stderr,
            } = self;
            let stdin_task = stdin.then(|| {
                tokio::spawn(async move {
                    let mut state = io.state();
                    if state.wait_for(|s| *s != IoState::NotStarted).await.is_err() {
                        return;
                    }
                    let Some(vm) = pod.vm() else { return };
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if vm.agent.stdin(stream, buf[..n].to_vec()).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    // Closing stdin on a tty would end a shell's session; only pipes see EOF.
                    if !tty {
                        let _ = vm.agent.stdin(stream, Vec::new()).await;
                    }
                })
            });
            if let Some(mut output) = output {
                while let Some(chunk) = output.recv().await {
                    let bytes = match (&chunk, tty) {
                        (Chunk::Stdout(d), true) | (Chunk::Stderr(d), true) => d.to_vec(),
                        (Chunk::Stdout(d), false) if stdout => hyperd_api::stdcopy::frame(1, d),
                        (Chunk::Stderr(d), false) if stderr => hyperd_api::stdcopy::frame(2, d),
                        _ => continue,
                    };
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            }
            let _ = wr.shutdown().await;
            if let Some(t) = stdin_task {
                t.abort();
            }
        }
    }
}

fn need_upgrade(req: &Request<Incoming>) -> Result<(), ApiError> {
    if wants_upgrade(req) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "this route needs a hijacked connection (Upgrade: tcp)",
        ))
    }
}

pub(crate) async fn attach(engine: &Arc<Engine>, mut req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let key = param(&q, &["container", "value"])?;
    let (pod, c) = engine.container(key)?;
    need_upgrade(&req)?;
    let session = Session::from_query(&q, pod, c.io.clone(), c.stream, c.process.tty);
    tokio::spawn(session.begin(hyper::upgrade::on(&mut req)));
    Ok(upgrade_response())
}

/// `POST /exec/start?exec=ID[&detach=1][&stdin=1]` (or those as a JSON body): starts the
/// exec; without `detach`, on a hijacked connection carrying its stdio.
pub(crate) async fn exec_start(engine: &Arc<Engine>, mut req: Request<Incoming>) -> ApiResult {
    let mut q = query(&req);
    let upgrade = wants_upgrade(&req);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        for (k, key) in [
            ("exec", "exec"),
            ("exec", "execId"),
            ("detach", "detach"),
            ("detach", "Detach"),
            ("stdin", "stdin"),
        ] {
            match &v[key] {
                serde_json::Value::String(s) => drop(q.insert(k.to_string(), s.clone())),
                serde_json::Value::Bool(b) => drop(q.insert(k.to_string(), b.to_string())),
                _ => {}
            }
        }
    }
    let (pod, exec) = engine.exec(param(&q, &["exec"])?)?;
    if flag(&q, "detach") {
        engine.start_exec(&pod, &exec).await?;
        return super::http::ok_json(hyperd_api::IdReply {
            id: exec.id.clone(),
        });
    }
    if !upgrade {
        return Err(ApiError::bad_request(
            "exec start needs a hijacked connection (Upgrade: tcp) or detach",
        ));
    }
    let session = Session::from_query(
        &q,
        pod.clone(),
        exec.io.clone(),
        exec.stream,
        exec.process.tty,
    );
    engine.exec_startable(&pod, &exec)?;
    let start = start_exec_later(engine, &pod, &exec);
    tokio::spawn(session.begin_then(on_upgrade, Some(start)));
    Ok(upgrade_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stdcopy_header() {
        let f = hyperd_api::stdcopy::frame(2, b"err");
        assert_eq!(f, vec![2, 0, 0, 0, 0, 0, 0, 3, b'e', b'r', b'r']);
    }
}
