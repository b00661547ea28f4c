//! Container and process routes: `/container/info|logs|kill`, `/exec/create`,
//! `/tty/resize`, `/pod/kill|pause|unpause`.
use super::http::{
    flag, ok_json, param, query, read_body, stream_chunks, ApiError, ApiResult, MAX_JSON_BODY,
};
use crate::engine::exec::ExecRequest;
use crate::engine::io::{Chunk, LogEntry};
use crate::engine::Engine;
use hyper::body::Incoming;
use hyper::Request;
use hyperd_api::containers::{
    ContainerCreated, ContainerInfo, ContainerState, ExecCreate, Renamed,
};
use hyperd_api::pods::{PodReply, Running, Terminated};
use hyperd_api::IdReply;
use std::sync::Arc;

/// Every value of the query parameters `names` (repeatable ones, such as `change`).
fn all_values(req: &Request<Incoming>, names: &[&str]) -> Vec<String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| names.contains(&k.as_ref()))
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// A commit as hyperd's `/container/commit` and Docker's `/commit` ask for it: the
/// container, the new image's name (`repo`, with `tag` or a tag of its own), `author`,
/// the comment (`comment`/`message`), Dockerfile `changes`, and an optional body of
/// config fields. Returns the new image.
pub(crate) async fn commit(
    engine: &Arc<Engine>,
    req: Request<Incoming>,
    created_by: &str,
) -> Result<crate::image::ImageRecord, ApiError> {
    let q = query(&req);
    let key = param(&q, &["container"])?.to_string();
    let changes = all_values(&req, &["change", "changes"])
        .into_iter()
        .flat_map(|c| c.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let mut names = Vec::new();
    if let Some(repo) = q.get("repo").filter(|r| !r.is_empty()) {
        names.push(match q.get("tag").filter(|t| !t.is_empty()) {
            Some(tag) => format!("{repo}:{tag}"),
            None => repo.clone(),
        });
    }
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let config = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let c: hyperd_api::containers::CommitConfig = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid commit config: {e}")))?;
        Some(serde_json::to_value(c).expect("a config serializes"))
    };
    let info = crate::image::commit::CommitInfo {
        author: q.get("author").cloned().unwrap_or_default(),
        comment: q
            .get("comment")
            .or_else(|| q.get("message"))
            .cloned()
            .unwrap_or_default(),
        changes,
        created_by: created_by.to_string(),
        config,
    };
    // Docker's default: the container's processes are stopped while its changes are
    // read; `pause=0` reads them as they run.
    let pause = !matches!(
        q.get("pause").map(|p| p.to_ascii_lowercase()).as_deref(),
        Some("0" | "false" | "no")
    );
    Ok(engine.commit_container(&key, info, names, pause).await?)
}

/// `POST /container/commit?container=..&repo=..` → `{"ID": image id}`.
pub(crate) async fn container_commit(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let image = commit(engine, req, "hyperd commit").await?;
    id_reply(&image.id)
}

fn id_reply(id: &str) -> ApiResult {
    ok_json(IdReply { id: id.to_string() })
}

/// `POST /exec/create`: body `{"container": ID, "command": [..] | "cmd", "tty": bool,
/// "env": [..], "workdir": .., "user": ..}` → `{"ID": exec id}`.
pub(crate) async fn exec_create(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let v: ExecCreate = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid exec config: {e}")))?;
    if v.container.is_empty() {
        return Err(ApiError::bad_request("missing container"));
    }
    let request = ExecRequest {
        command: v.command.into_args(),
        tty: v.tty,
        env: v.env,
        workdir: v.workdir,
        user: v.user,
    };
    let (_, exec) = engine.create_exec(&v.container, request)?;
    ok_json(IdReply {
        id: exec.id.clone(),
    })
}

pub(crate) async fn container_kill(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let key = param(&q, &["container"])?;
    engine
        .kill_container(key, q.get("signal").map(String::as_str).unwrap_or("KILL"))
        .await?;
    id_reply(key)
}

pub(crate) async fn pod_kill(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let pod = engine
        .kill_pod(
            param(&q, &["podId", "podName"])?,
            q.get("signal").map(String::as_str).unwrap_or("KILL"),
        )
        .await?;
    ok_json(PodReply::ok(&pod.id))
}

pub(crate) async fn pod_pause(
    engine: &Arc<Engine>,
    req: &Request<Incoming>,
    pause: bool,
) -> ApiResult {
    let q = query(req);
    let pod = engine
        .pause_pod(param(&q, &["podId", "podName"])?, pause)
        .await?;
    ok_json(PodReply::ok(&pod.id))
}

/// `POST /tty/resize?container=ID[&exec=ID]&h=ROWS&w=COLS`.
pub(crate) async fn tty_resize(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let num = |k: &str| -> Result<u16, ApiError> {
        param(&q, &[k])?
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{k} must be a number from 0 to 65535")))
    };
    let (rows, cols) = (num("h")?, num("w")?);
    let container = q.get("container").map(String::as_str).unwrap_or_default();
    if container.is_empty() && q.get("exec").is_none_or(|e| e.is_empty()) {
        return Err(ApiError::bad_request("missing query parameter container"));
    }
    engine
        .resize(container, q.get("exec").map(String::as_str), rows, cols)
        .await?;
    ok_json(serde_json::Map::new())
}

/// `GET /container/info?container=ID`: hyperd's ContainerInfo.
pub(crate) fn container_info(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let (pod, c) = engine.container(param(&q, &["container"])?)?;
    let st = c.status.lock().unwrap().clone();
    ok_json(ContainerInfo {
        name: c.name().clone(),
        container_id: c.id.clone(),
        pod_id: pod.id.clone(),
        image: c.image_ref.clone(),
        image_id: c.image.id.clone(),
        commands: c.process.args.clone(),
        working_dir: c.process.workdir.clone(),
        env: c.process.env.clone(),
        user: c.process.user.clone(),
        tty: c.process.tty,
        restart_count: st.restart_count,
        status: ContainerState {
            phase: c.phase().to_string(),
            running: Running {
                started_at: st.started_at.clone(),
            },
            terminated: Terminated {
                exit_code: st.exit_code,
                started_at: st.started_at,
                finished_at: st.finished_at,
            },
        },
    })
}

fn since_secs(v: &str) -> Result<f64, ApiError> {
    if v.is_empty() {
        return Ok(0.0);
    }
    v.parse::<f64>()
        .ok()
        .or_else(|| crate::image::parse_rfc3339(v).map(|s| s as f64))
        .ok_or_else(|| {
            ApiError::bad_request(format!("since must be a Unix time or RFC 3339, not {v:?}"))
        })
}

/// `GET /container/logs?container=ID[&follow=1][&tail=N|all][&since=T][&timestamps=1]
/// [&stdout=1][&stderr=1]`: the log as stdcopy frames (raw for a tty), then, with
/// `follow`, what the container writes until it exits.
pub(crate) async fn container_logs(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let (_, c) = engine.container(param(&q, &["container"])?)?;
    logs_of(&c, &q).await
}

/// Frames of a log response waiting for its client.
const LOG_CHUNKS: usize = 64;
/// Bytes of a log file read per batch.
const LOG_BATCH: usize = 256 << 10;

/// A container's log as a response, for the query's `follow`, `tail`, `since`,
/// `timestamps`, `stdout`, `stderr` (shared with the Docker API).
pub(crate) async fn logs_of(
    c: &crate::engine::Container,
    q: &std::collections::HashMap<String, String>,
) -> ApiResult {
    let q = q.clone();
    let both = !q.contains_key("stdout") && !q.contains_key("stderr");
    let (want_out, want_err) = (both || flag(&q, "stdout"), both || flag(&q, "stderr"));
    let timestamps = flag(&q, "timestamps");
    let since = since_secs(q.get("since").map(String::as_str).unwrap_or(""))?;
    let tail: Option<usize> = match q.get("tail").map(String::as_str) {
        None | Some("") | Some("all") => None,
        Some(n) => Some(n.parse().map_err(|_| {
            ApiError::bad_request(format!("tail must be a number or all, not {n:?}"))
        })?),
    };
    let tty = c.process.tty;
    let frame = move |stderr: bool, data: &[u8], time: Option<&str>| -> Option<bytes::Bytes> {
        if (stderr && !want_err) || (!stderr && !want_out) {
            return None;
        }
        let mut payload = Vec::new();
        if let Some(t) = time.filter(|_| timestamps) {
            payload.extend_from_slice(t.as_bytes());
            payload.push(b' ');
        }
        payload.extend_from_slice(data);
        Some(bytes::Bytes::from(if tty {
            payload
        } else {
            hyperd_api::stdcopy::frame(if stderr { 2 } else { 1 }, &payload)
        }))
    };
    let (snapshot, follow) = c.io.log_and_follow(flag(&q, "follow")).await;
    let wanted = move |e: &LogEntry| {
        since <= 0.0
            || crate::image::parse_rfc3339(&e.time)
                .map(|t| t as f64 >= since)
                .unwrap_or(true)
    };
    // The log is read a batch at a time off the async workers and sent as the client
    // takes it: a log of tens of MiB is never in memory at once, and a client that does
    // not read holds only this task (then its follower is dropped past its cap).
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(LOG_CHUNKS);
    tokio::spawn(async move {
        let mut skip = match tail {
            None => 0,
            Some(n) => {
                let snapshot = snapshot.clone();
                let count = tokio::task::spawn_blocking(move || {
                    let mut r = snapshot.reader();
                    let mut count = 0usize;
                    while !r.done() {
                        count += r.next_batch(LOG_BATCH).iter().filter(|e| wanted(e)).count();
                    }
                    count
                });
                count.await.unwrap_or(0).saturating_sub(n)
            }
        };
        let mut reader = Some(snapshot.reader());
        while let Some(mut r) = reader.take() {
            if r.done() {
                break;
            }
            let Ok((r, batch)) = tokio::task::spawn_blocking(move || {
                let batch = r.next_batch(LOG_BATCH);
                (r, batch)
            })
            .await
            else {
                return;
            };
            for e in batch.iter().filter(|e| wanted(e)) {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                if let Some(b) = frame(e.stream == "stderr", e.log.as_bytes(), Some(&e.time)) {
                    if tx.send(b).await.is_err() {
                        return;
                    }
                }
            }
            reader = Some(r);
        }
        let Some(mut follow) = follow else { return };
        while let Some(chunk) = follow.recv().await {
            let now = crate::engine::io::chrono_now();
            let b = match &chunk {
                Chunk::Stdout(d) => frame(false, d, Some(&now)),
                Chunk::Stderr(d) => frame(true, d, Some(&now)),
            };
            if let Some(b) = b {
                if tx.send(b).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(stream_chunks(
        rx,
        if tty {
            "application/vnd.docker.raw-stream"
        } else {
            "application/vnd.docker.multiplexed-stream"
        },
    ))
}

/// `POST /container/create?podId=ID` with a container spec (hyperd's JSON) as the body.
pub(crate) async fn container_create(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let pod = param(&q, &["podId", "podName"])?.to_string();
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let spec: crate::spec::ContainerSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid container spec: {e}")))?;
    let (pod, c) = engine.create_container(&pod, spec).await?;
    ok_json(ContainerCreated {
        id: c.id.clone(),
        name: c.name().clone(),
        pod_id: pod.id.clone(),
    })
}

pub(crate) async fn container_start(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let c = engine.start_container(param(&q, &["container"])?).await?;
    id_reply(&c.id)
}

/// `POST /container/stop?container=ID[&time=SECONDS]`: SIGTERM, then SIGKILL after
/// `time` (default 10).
pub(crate) async fn container_stop(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let grace = grace_of(&q)?;
    let c = engine
        .stop_container(param(&q, &["container"])?, grace)
        .await?;
    id_reply(&c.id)
}

/// The longest grace a stop waits before SIGKILL.
pub(crate) const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The grace before SIGKILL a stop request asks for: `time` (or `t`) seconds, 10 when
/// absent (Docker's default), at most [`MAX_GRACE`].
pub(crate) fn grace_of(
    q: &std::collections::HashMap<String, String>,
) -> Result<std::time::Duration, ApiError> {
    let secs: u64 = match q.get("time").or(q.get("t")).filter(|t| !t.is_empty()) {
        Some(t) => t.parse().map_err(|_| {
            ApiError::bad_request(format!("time must be a number of seconds, not {t:?}"))
        })?,
        None => 10,
    };
    Ok(std::time::Duration::from_secs(secs).min(MAX_GRACE))
}

pub(crate) async fn container_remove(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let key = param(&q, &["container"])?;
    engine.remove_container(key).await?;
    id_reply(key)
}

/// `POST /container/rename?container=OLD&newName=NEW` (`oldName` also names it).
pub(crate) async fn container_rename(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let c = engine
        .rename_container(
            param(&q, &["container", "oldName"])?,
            param(&q, &["newName"])?,
        )
        .await?;
    ok_json(Renamed {
        id: c.id.clone(),
        name: c.name().clone(),
    })
}

/// `POST /vm/create[?cpu=N][&mem=MiB]`: a VM booted ahead of its pod.
pub(crate) async fn vm_create(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let num = |k: &str, d: u32| -> Result<u32, ApiError> {
        match q.get(k).filter(|v| !v.is_empty()) {
            Some(v) => v
                .parse()
                .map_err(|_| ApiError::bad_request(format!("{k} must be a number, not {v:?}"))),
            None => Ok(d),
        }
    };
    let id = engine.create_vm(num("cpu", 1)?, num("mem", 128)?).await?;
    id_reply(&id)
}

pub(crate) async fn vm_delete(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let id = param(&q, &["vm"])?;
    engine.delete_vm(id).await?;
    id_reply(id)
}
