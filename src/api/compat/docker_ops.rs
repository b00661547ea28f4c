//! Docker container operations beyond the lifecycle: graceful stop and restart, pause,
//! rename, stats in Docker's JSON shape, and top (`ps` inside the container).
use super::docker::{find, no_content, not_modified, state};
use super::docker_models as m;
use crate::api::containers::{grace_of, MAX_GRACE};
use crate::api::http::{flag, query, ApiError, ApiResult};
use crate::engine::Engine;
use hyper::body::Incoming;
use hyper::Request;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// hyperd's grace parameter, plus Docker's `t=-1` ("wait forever"), which waits as long
/// as hyperd ever waits.
fn grace(req: &Request<Incoming>) -> Result<Duration, ApiError> {
    let q = query(req);
    let negative = q
        .get("t")
        .or(q.get("time"))
        .and_then(|t| t.parse::<i64>().ok())
        .is_some_and(|n| n < 0);
    if negative {
        return Ok(MAX_GRACE);
    }
    grace_of(&q)
}

/// `POST /containers/{id}/stop[?t=SECONDS]`: the stop signal, SIGKILL after `t`.
pub(crate) async fn stop(engine: &Arc<Engine>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let (pod, _) = find(engine, id)?;
    let grace = grace(req)?;
    if pod.vm().is_none() {
        return not_modified();
    }
    engine.stop_pod_gracefully(&pod.id, grace).await?;
    no_content()
}

/// `POST /containers/{id}/restart[?t=SECONDS]`.
pub(crate) async fn restart(engine: &Arc<Engine>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let (pod, _) = find(engine, id)?;
    let grace = grace(req)?;
    if pod.vm().is_some() {
        engine.stop_pod_gracefully(&pod.id, grace).await?;
    }
    engine.start_pod(&pod.id, None).await?;
    no_content()
}

/// `POST /containers/{id}/pause` and `/unpause`: the VM is frozen or thawed.
pub(crate) async fn pause(engine: &Arc<Engine>, id: &str, pause: bool) -> ApiResult {
    let (pod, c) = find(engine, id)?;
    let st = state(&pod, &c);
    if pause && st != "running" {
        return Err(ApiError::new(
            hyper::StatusCode::CONFLICT,
            format!("Container {} is not running", c.id),
        ));
    }
    if !pause && st != "paused" {
        return Err(ApiError::new(
            hyper::StatusCode::CONFLICT,
            format!("Container {} is not paused", c.id),
        ));
    }
    engine.pause_pod(&pod.id, pause).await?;
    no_content()
}

/// `POST /containers/{id}/rename?name=NEW`.
pub(crate) async fn rename(engine: &Arc<Engine>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let (_, c) = find(engine, id)?;
    let q = query(req);
    let name = q
        .get("name")
        .map(|n| n.trim_start_matches('/'))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    engine.rename_container(&c.id, name).await?;
    no_content()
}

/// One sample of a container's VM, as Docker's stats JSON. `system_cpu_usage` is the
/// wall clock times the VM's CPUs (in ns), so the docker CLI's formula
/// (cpu delta / system delta × CPUs) gives the VM's CPU use in percent of one CPU.
struct Sample {
    at: Instant,
    read: String,
    cpu_ns: u64,
    system_ns: u64,
}

async fn sample(
    engine: &Engine,
    pod_id: &str,
    vcpus: u64,
    epoch: Instant,
) -> Result<(Sample, hyperd_agent::protocol::Stats), ApiError> {
    let (_, s) = engine.pod_stats(pod_id).await?;
    let at = Instant::now();
    Ok((
        Sample {
            at,
            read: crate::engine::io::chrono_now(),
            cpu_ns: s.cpu_ns,
            system_ns: (at - epoch).as_nanos() as u64 * vcpus,
        },
        s,
    ))
}

/// One JSON object and a newline, as a streamed stats line.
fn json_line(v: &impl serde::Serialize) -> String {
    let mut line = serde_json::to_string(v).unwrap_or_default();
    line.push('\n');
    line
}

fn stats_json(
    id: &str,
    name: &str,
    vcpus: u64,
    now: &Sample,
    pre: Option<&Sample>,
    s: &hyperd_agent::protocol::Stats,
) -> m::Stats {
    let cpu = |x: Option<&Sample>| m::CpuStats {
        cpu_usage: m::CpuUsage {
            total_usage: x.map_or(0, |x| x.cpu_ns),
            usage_in_kernelmode: 0,
            usage_in_usermode: 0,
        },
        system_cpu_usage: x.map(|x| x.system_ns),
        online_cpus: x.map(|_| vcpus),
        throttling_data: m::ThrottlingData::default(),
    };
    m::Stats {
        id: id.to_string(),
        name: format!("/{name}"),
        read: now.read.clone(),
        preread: pre
            .map(|p| p.read.clone())
            .unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
        num_procs: 0,
        pids_stats: m::PidsStats {
            current: s.processes,
        },
        cpu_stats: cpu(Some(now)),
        precpu_stats: cpu(pre),
        memory_stats: m::MemoryStats {
            usage: s.memory_total.saturating_sub(s.memory_available),
            limit: s.memory_total,
            stats: m::Empty::new(),
        },
        blkio_stats: m::BlkioStats::default(),
        storage_stats: m::Empty::new(),
    }
}

/// `GET /containers/{id}/stats[?stream=false][&one-shot=true]`: a sample a second, or
/// one (with the previous second's sample as `precpu_stats`, unless `one-shot`).
pub(crate) async fn stats(engine: &Arc<Engine>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let (pod, c) = find(engine, id)?;
    let q = query(req);
    // Clients send `false`, `False` (docker-py through requests) or `0`.
    let stream = q
        .get("stream")
        .is_none_or(|v| !matches!(v.to_ascii_lowercase().as_str(), "false" | "0" | "no"));
    let one_shot = flag(&q, "one-shot");
    let vcpus = u64::from(pod.spec.resource.vcpu.max(1));
    let epoch = Instant::now();
    let (id, name) = (c.id.clone(), c.name());
    if !stream {
        let (first, s) = sample(engine, &pod.id, vcpus, epoch).await?;
        if one_shot {
            return crate::api::http::ok_json(stats_json(&id, &name, vcpus, &first, None, &s));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (now, s) = sample(engine, &pod.id, vcpus, epoch).await?;
        return crate::api::http::ok_json(stats_json(&id, &name, vcpus, &now, Some(&first), &s));
    }
    let (first, s) = sample(engine, &pod.id, vcpus, epoch).await?;
    // A sample a second; a client that stops reading stops the sampling, not memory.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _ = tx.try_send(bytes::Bytes::from(json_line(&stats_json(
        &id, &name, vcpus, &first, None, &s,
    ))));
    let engine = engine.clone();
    let pod_id = pod.id.clone();
    tokio::spawn(async move {
        let mut pre = first;
        loop {
            let next = pre.at + Duration::from_secs(1);
            tokio::time::sleep_until(next.into()).await;
            if tx.is_closed() {
                return;
            }
            let Ok((now, s)) = sample(&engine, &pod_id, vcpus, epoch).await else {
                return;
            };
            let line = json_line(&stats_json(&id, &name, vcpus, &now, Some(&pre), &s));
            if tx.send(bytes::Bytes::from(line)).await.is_err() {
                return;
            }
            pre = now;
        }
    });
    Ok(crate::api::http::stream_chunks(rx, "application/json"))
}

/// `ps` output as Docker's top: the first line's words are the titles, each later line
/// has as many fields, the last taking the rest of the line (the command).
pub(crate) fn parse_ps(text: &str) -> m::Top {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let titles: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let n = titles.len().max(1);
    let processes: Vec<Vec<String>> = lines
        .map(|l| {
            let mut fields = Vec::with_capacity(n);
            let mut rest = l.trim_start();
            while fields.len() + 1 < n {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                fields.push(rest[..end].to_string());
                rest = rest[end..].trim_start();
            }
            fields.push(rest.to_string());
            fields
        })
        .collect();
    m::Top {
        titles: titles.iter().map(|t| t.to_string()).collect(),
        processes,
    }
}

/// `GET /containers/{id}/top[?ps_args=-ef]`: `ps` run inside the container.
pub(crate) async fn top(engine: &Arc<Engine>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let (pod, c) = find(engine, id)?;
    if state(&pod, &c) != "running" {
        return Err(ApiError::new(
            hyper::StatusCode::CONFLICT,
            format!("Container {} is not running", c.id),
        ));
    }
    let q = query(req);
    let mut args = vec!["ps".to_string()];
    args.extend(
        q.get("ps_args")
            .map(String::as_str)
            .unwrap_or("-ef")
            .split_whitespace()
            .map(str::to_string),
    );
    let (code, out) = engine
        .run_to_end(&c.id, args, Duration::from_secs(10))
        .await?;
    if code != 0 {
        return Err(ApiError::new(
            hyper::StatusCode::INTERNAL_SERVER_ERROR,
            format!("ps in the container exited with {code}"),
        ));
    }
    crate::api::http::ok_json(parse_ps(&String::from_utf8_lossy(&out)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_ps_output() {
        let v =
            super::parse_ps("PID   USER     COMMAND\n    1 root     sleep 100\n   7 root ps -ef\n");
        assert_eq!(v.titles, ["PID", "USER", "COMMAND"]);
        assert_eq!(
            v.processes,
            [["1", "root", "sleep 100"], ["7", "root", "ps -ef"]]
        );
        assert!(super::parse_ps("").processes.is_empty());
        let json = serde_json::to_value(&v).unwrap();
        assert!(json["Titles"].is_array() && json["Processes"].is_array());
    }
}
