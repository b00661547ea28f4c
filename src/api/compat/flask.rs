//! The Docker Flask API (seed 001): `/container` and `/image`, keyed by short ids, with
//! per-container statistics. A container is a one-container pod; its memory limit sizes
//! the VM, `cpu_percent_limit` caps the VM's CPU time, and the `device_*` limits become
//! the VM's disk rate limits. Errors are `{"error": "…"}`.
use crate::api::http::{json_response, read_body, ApiError, ApiResult, MAX_JSON_BODY};
use crate::engine::io::IoState;
use crate::engine::{Container, Engine, Pod, PodPhase};
use crate::image::ImageRecord;
use crate::spec::{ContainerSpec, DiskLimits, EnvVar, PodSpec, Port, Resource};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use std::sync::Arc;

type Reply = Result<Response<crate::api::http::Body>, ApiError>;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Flask routes; `None` when the path is not Flask's.
pub async fn route(
    engine: &Arc<Engine>,
    method: &Method,
    path: &str,
    req: Request<Incoming>,
) -> Option<ApiResult> {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let reply = match (method.as_str(), seg.as_slice()) {
        ("GET", ["container"]) => list_containers(engine).await,
        ("POST", ["container"]) => create(engine, req).await,
        ("GET", ["container", id]) => one_container(engine, id).await,
        ("DELETE", ["container", id]) => remove(engine, id).await,
        ("POST", ["container", id, action @ ("start" | "stop")]) => {
            start_stop(engine, id, action).await
        }
        ("GET", ["image"]) => list_images(engine),
        ("POST", ["image"]) => pull(engine, req).await,
        ("GET", ["image", "updateall"]) => update_all(engine).await,
        ("GET", ["image", id]) => one_image(engine, id),
        ("DELETE", ["image", id]) => delete_image(engine, id),
        _ => return None,
    };
    Some(Ok(reply.unwrap_or_else(|e| {
        json_response(e.status, &json!({ "error": e.message }))
    })))
}

/// `100000b`, `1000k`, `128m`, `1g`, a plain number of bytes, or a JSON integer.
pub fn parse_mem_limit(v: &Value) -> Result<Option<u64>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("bad mem_limit {n}"))),
        Value::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            let (num, mult) = match s.chars().last() {
                Some('b') => (&s[..s.len() - 1], 1u64),
                Some('k') => (&s[..s.len() - 1], 1 << 10),
                Some('m') => (&s[..s.len() - 1], 1 << 20),
                Some('g') => (&s[..s.len() - 1], 1 << 30),
                _ => (s.as_str(), 1),
            };
            num.parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .map(Some)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "bad mem_limit {s:?} (a number with b, k, m or g)"
                    ))
                })
        }
        other => Err(ApiError::bad_request(format!("bad mem_limit {other}"))),
    }
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(10).collect()
}

fn status(pod: &Pod, c: &Container) -> &'static str {
    match (*c.io.state().borrow(), pod.phase()) {
        (IoState::Running, PodPhase::Paused) => "paused",
        (IoState::Running, _) => "running",
        (IoState::NotStarted, _) => "created",
        (IoState::Exited, _) => "exited",
    }
}

async fn container_entry(engine: &Engine, pod: &Arc<Pod>, c: &Container) -> Value {
    let (mut usage, mut cpu) = (0.0, 0.0);
    if status(pod, c) == "running" {
        if let Ok((_, s)) = engine.pod_stats(&pod.id).await {
            usage = mib(s.memory_total.saturating_sub(s.memory_available));
            cpu = pod.cpu_percent(s.cpu_ns);
        }
    }
    let max = pod.note_memory(usage);
    json!({
        "cpu_percent": cpu,
        "image_short_id": format!("sha256:{}", short(&c.image.id)),
        "image_tags": c.image.repo_tags,
        "mem_limit": mib(u64::from(pod.spec.resource.memory) << 20),
        "mem_max_usage": max,
        "mem_usage": usage,
        "name": c.name(),
        "short_id": short(&c.id),
        "status": status(pod, c),
    })
}

async fn list_containers(engine: &Arc<Engine>) -> Reply {
    let mut out = Map::new();
    for pod in engine.pods() {
        for c in pod.containers() {
            out.insert(short(&c.id), container_entry(engine, &pod, &c).await);
        }
    }
    Ok(json_response(StatusCode::OK, &Value::Object(out)))
}

fn find(engine: &Engine, id: &str) -> Result<(Arc<Pod>, Arc<Container>), ApiError> {
    engine
        .container_or_pod(id)
        .map_err(|_| ApiError::not_found(format!("container {id} not found")))
}

async fn one_container(engine: &Arc<Engine>, id: &str) -> Reply {
    let (pod, c) = find(engine, id)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ short(&c.id): container_entry(engine, &pod, &c).await }),
    ))
}

fn rate(v: &Value, field: &str) -> Result<u64, ApiError> {
    let mut total = 0u64;
    for item in v[field].as_array().into_iter().flatten() {
        let r = item["Rate"].as_u64().ok_or_else(|| {
            ApiError::bad_request(format!("{field}: every entry needs a numeric Rate"))
        })?;
        total = if total == 0 { r } else { total.min(r) };
    }
    Ok(total)
}

/// `POST /container`: creates and starts a container.
async fn create(engine: &Arc<Engine>, req: Request<Incoming>) -> Reply {
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let image = v["image_name"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("image_name is required"))?;
    let mem = parse_mem_limit(&v["mem_limit"])?;
    let memory = match mem {
        Some(b) => u32::try_from(b.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .max(crate::spec::MIN_MEMORY),
        None => 128,
    };
    let cpu_percent = match &v["cpu_percent_limit"] {
        Value::Null => 0,
        n => n
            .as_u64()
            .filter(|p| (1..=100).contains(p))
            .ok_or_else(|| ApiError::bad_request("cpu_percent_limit must be 1..100"))?
            as u32,
    };
    let envs = v["environment"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str())
        .filter_map(|kv| {
            kv.split_once('=').map(|(k, val)| EnvVar {
                env: k.into(),
                value: val.into(),
            })
        })
        .collect();
    let mut ports = Vec::new();
    for (k, host) in v["ports"].as_object().into_iter().flatten() {
        let (port, proto) = k.split_once('/').unwrap_or((k, "tcp"));
        ports.push(Port {
            container_port: port
                .parse()
                .map_err(|_| ApiError::bad_request(format!("bad port {k:?}")))?,
            host_port: host.as_u64().unwrap_or(0) as u32,
            protocol: proto.to_string(),
        });
    }
    let disk = DiskLimits {
        read_bps: rate(&v, "device_read_bps")?,
        read_iops: rate(&v, "device_read_iops")?,
        write_bps: rate(&v, "device_write_bps")?,
        write_iops: rate(&v, "device_write_iops")?,
    };
    let spec = PodSpec {
        containers: vec![ContainerSpec {
            image: image.to_string(),
            envs,
            ports,
            ..Default::default()
        }],
        resource: Resource {
            vcpu: 1,
            memory,
            cpu_percent,
            disk,
        },
        ..Default::default()
    };
    engine.ensure_image(image).await?;
    let pod = engine.create_pod(spec).await?;
    engine.start_pod(&pod.id, None).await?;
    let c = pod.containers().first().cloned().expect("one container");
    let mut entry = container_entry(engine, &pod, &c).await;
    // The device limits apply to the VM's disks, whatever the device path said.
    if !disk.is_none() {
        entry["notes"] = json!([
            "device_* limits apply to the VM's disks (all of them), not to a host device path"
        ]);
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ short(&c.id): entry }),
    ))
}

async fn start_stop(engine: &Arc<Engine>, id: &str, action: &str) -> Reply {
    let (pod, c) = find(engine, id)?;
    match (action, pod.vm().is_some()) {
        ("start", false) => drop(engine.start_pod(&pod.id, None).await?),
        ("stop", true) => drop(engine.stop_pod(&pod.id).await?),
        _ => {}
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ short(&c.id): container_entry(engine, &pod, &c).await }),
    ))
}

async fn remove(engine: &Arc<Engine>, id: &str) -> Reply {
    let (pod, c) = find(engine, id)?;
    engine.remove_pod(&pod.id).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "removed": short(&c.id) }),
    ))
}

fn image_entry(rec: &ImageRecord) -> Value {
    json!({ "created": crate::engine::io::rfc3339(rec.created as i64, 0), "size": rec.size, "tags": rec.repo_tags })
}

fn list_images(engine: &Arc<Engine>) -> Reply {
    let mut out = Map::new();
    for rec in engine.images.list()? {
        out.insert(format!("sha256:{}", short(&rec.id)), image_entry(&rec));
    }
    Ok(json_response(StatusCode::OK, &Value::Object(out)))
}

async fn pull_one(engine: &Arc<Engine>, name: &str) -> Result<ImageRecord, ApiError> {
    Ok(engine.pull_image(name).await?)
}

/// `POST /image` with `{"image_name": [..]}` (default tag latest).
async fn pull(engine: &Arc<Engine>, req: Request<Incoming>) -> Reply {
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let names: Vec<String> = match &v["image_name"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    };
    if names.is_empty() {
        return Err(ApiError::bad_request(
            "image_name is required (a list of images)",
        ));
    }
    let mut out = Map::new();
    for n in names {
        let rec = pull_one(engine, &n).await?;
        out.insert(format!("sha256:{}", short(&rec.id)), image_entry(&rec));
    }
    Ok(json_response(StatusCode::OK, &Value::Object(out)))
}

/// `GET /image/updateall`: pulls every tagged image again.
async fn update_all(engine: &Arc<Engine>) -> Reply {
    let mut updated = Vec::new();
    let mut failed = Map::new();
    for rec in engine.images.list()? {
        for tag in &rec.repo_tags {
            match pull_one(engine, tag).await {
                Ok(_) => updated.push(tag.clone()),
                Err(e) => drop(failed.insert(tag.clone(), json!(e.message))),
            }
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "updated": updated, "failed": failed }),
    ))
}

fn one_image(engine: &Arc<Engine>, id: &str) -> Reply {
    let rec = engine
        .images
        .resolve(id.trim_start_matches("sha256:"))
        .map_err(|_| ApiError::not_found(format!("image {id} not found")))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ format!("sha256:{}", short(&rec.id)): image_entry(&rec) }),
    ))
}

fn delete_image(engine: &Arc<Engine>, id: &str) -> Reply {
    let rec = engine
        .images
        .resolve(id.trim_start_matches("sha256:"))
        .map_err(|_| ApiError::not_found(format!("image {id} not found")))?;
    engine
        .images
        .remove(&rec.id, |img| engine.image_in_use(img), false)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "removed": format!("sha256:{}", short(&rec.id)) }),
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_mem_limit;
    use serde_json::json;

    #[test]
    fn parses_memory_limits() {
        assert_eq!(parse_mem_limit(&json!("2g")).unwrap(), Some(2 << 30));
        assert_eq!(parse_mem_limit(&json!("128m")).unwrap(), Some(128 << 20));
        assert_eq!(parse_mem_limit(&json!("1000k")).unwrap(), Some(1000 << 10));
        assert_eq!(parse_mem_limit(&json!("100000b")).unwrap(), Some(100000));
        assert_eq!(parse_mem_limit(&json!("4096")).unwrap(), Some(4096));
        assert_eq!(parse_mem_limit(&json!(1024)).unwrap(), Some(1024));
        assert_eq!(parse_mem_limit(&json!(null)).unwrap(), None);
        for bad in [json!("2x"), json!("g"), json!(""), json!(-1), json!([1])] {
            assert!(parse_mem_limit(&bad).is_err(), "{bad}");
        }
    }
}
