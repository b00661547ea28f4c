//! `POST /attach?container=ID[&stdin=1&stdout=1&stderr=1]`: the connection is hijacked
//! (`Upgrade: tcp`, `101 Switching Protocols`) and then carries the container's output
//! in Docker's stdcopy framing (raw when the container has a tty) one way and its stdin
//! the other. The server closes the connection when the process exits.
use super::http::{flag, full, param, query, ApiError, ApiResult, Body};
use crate::engine::io::{Chunk, IoState};
use crate::engine::Engine;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Docker's stdcopy header: stream type, three zero bytes, big-endian length.
pub fn stdcopy_frame(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.push(stream);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

pub fn upgrade_response() -> Response<Body> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("Connection", "Upgrade")
        .header("Upgrade", "tcp")
        .header("Content-Type", "application/vnd.docker.raw-stream")
        .body(full(""))
        .expect("valid response")
}

pub fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"))
}

pub async fn attach(engine: &Arc<Engine>, mut req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let key = param(&q, &["container", "value"])?;
    let (pod, c) = engine.container(key)?;
    if !wants_upgrade(&req) {
        return Err(ApiError::bad_request(
            "attach needs a hijacked connection (Upgrade: tcp)",
        ));
    }
    let all = !q.contains_key("stdout") && !q.contains_key("stderr");
    let (want_out, want_err) = (all || flag(&q, "stdout"), all || flag(&q, "stderr"));
    let want_in = flag(&q, "stdin");
    let tty = c.process.tty;
    let output = c.io.attach(want_in);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("attach upgrade failed: {e}");
                return;
            }
        };
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
        let stdin_task = want_in.then(|| {
            let c = c.clone();
            let pod = pod.clone();
            tokio::spawn(async move {
                let mut state = c.io.state();
                if state.wait_for(|s| *s != IoState::NotStarted).await.is_err() {
                    return;
                }
                let Some(vm) = pod.vm() else { return };
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if vm.agent.stdin(c.stream, buf[..n].to_vec()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                // Closing stdin on a tty would end a shell's session; only pipes see EOF.
                if !tty {
                    let _ = vm.agent.stdin(c.stream, Vec::new()).await;
                }
            })
        });
        if let Some(mut output) = output {
            while let Some(chunk) = output.recv().await {
                let bytes = match (&chunk, tty) {
                    (Chunk::Stdout(d), true) | (Chunk::Stderr(d), true) => d.to_vec(),
                    (Chunk::Stdout(d), false) if want_out => stdcopy_frame(1, d),
                    (Chunk::Stderr(d), false) if want_err => stdcopy_frame(2, d),
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
    });
    Ok(upgrade_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stdcopy_header() {
        let f = super::stdcopy_frame(2, b"err");
        assert_eq!(f, vec![2, 0, 0, 0, 0, 0, 0, 3, b'e', b'r', b'r']);
    }
}
