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
use std::collections::BTreeMap;
use std::sync::Arc;

/// The Flask API's wire format.
mod models {
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    /// `{"error": "…"}`.
    #[derive(Serialize)]
    pub(super) struct ErrorReply {
        pub error: String,
    }

    /// A container with its statistics, keyed by its short id in every answer.
    #[derive(Serialize)]
    pub(super) struct Container {
        pub cpu_percent: f64,
        pub image_short_id: String,
        pub image_tags: Vec<String>,
        pub mem_limit: f64,
        pub mem_max_usage: f64,
        pub mem_usage: f64,
        pub name: String,
        pub short_id: String,
        /// `created`, `running`, `paused` or `exited`.
        pub status: &'static str,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub notes: Vec<&'static str>,
    }

    #[derive(Serialize)]
    pub(super) struct Image {
        pub created: String,
        pub size: u64,
        pub tags: Vec<String>,
    }

    #[derive(Serialize)]
    pub(super) struct Removed {
        pub removed: String,
    }

    /// `GET /image/updateall`.
    #[derive(Serialize)]
    pub(super) struct Updated {
        pub updated: Vec<String>,
        pub failed: BTreeMap<String, String>,
    }

    /// A memory limit: bytes, or text with a unit (`128m`).
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum MemLimit {
        Bytes(u64),
        Text(String),
    }

    /// One `device_*` entry; only the rate is used (it applies to every VM disk).
    #[derive(Deserialize)]
    pub(super) struct DeviceRate {
        #[serde(rename = "Rate")]
        pub rate: u64,
    }

    /// `POST /container`.
    #[derive(Deserialize)]
    pub(super) struct CreateContainer {
        #[serde(default)]
        pub image_name: String,
        #[serde(default)]
        pub mem_limit: Option<MemLimit>,
        #[serde(default)]
        pub cpu_percent_limit: Option<u64>,
        /// `KEY=VALUE` entries.
        #[serde(default)]
        pub environment: Vec<String>,
        /// `"PORT[/PROTO]": HOST_PORT`.
        #[serde(default)]
        pub ports: BTreeMap<String, Option<u32>>,
        #[serde(default)]
        pub device_read_bps: Vec<DeviceRate>,
        #[serde(default)]
        pub device_read_iops: Vec<DeviceRate>,
        #[serde(default)]
        pub device_write_bps: Vec<DeviceRate>,
        #[serde(default)]
        pub device_write_iops: Vec<DeviceRate>,
    }

    /// `POST /image`: one name or a list.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Names {
        One(String),
        Many(Vec<String>),
    }

    #[derive(Deserialize)]
    pub(super) struct Pull {
        pub image_name: Option<Names>,
    }
}

type Reply = Result<Response<crate::api::http::Body>, ApiError>;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Flask routes; `None` when the path is not Flask's.
pub(crate) async fn route(
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
        json_response(e.status, &models::ErrorReply { error: e.message })
    })))
}

/// `100000b`, `1000k`, `128m`, `1g`, a plain number of bytes, or a JSON integer.
fn parse_mem_limit(v: Option<&models::MemLimit>) -> Result<Option<u64>, ApiError> {
    match v {
        None => Ok(None),
        Some(models::MemLimit::Bytes(n)) => Ok(Some(*n)),
        Some(models::MemLimit::Text(s)) => {
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

/// How long a container's entry waits for its VM's figures: a guest that does not answer
/// in time shows zeros.
const STATS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn container_entry(engine: &Engine, pod: &Arc<Pod>, c: &Container) -> models::Container {
    let (mut usage, mut cpu) = (0.0, 0.0);
    if status(pod, c) == "running" {
        if let Ok((_, s)) = engine.pod_stats_within(&pod.id, STATS_WAIT).await {
            usage = mib(s.memory_total.saturating_sub(s.memory_available));
            cpu = pod.cpu_percent(s.cpu_ns);
        }
    }
    let max = pod.note_memory(usage);
    models::Container {
        cpu_percent: cpu,
        image_short_id: format!("sha256:{}", short(&c.image.id)),
        image_tags: c.image.repo_tags.clone(),
        mem_limit: mib(u64::from(pod.spec.resource.memory) << 20),
        mem_max_usage: max,
        mem_usage: usage,
        name: c.name().clone(),
        short_id: short(&c.id),
        status: status(pod, c),
        notes: Vec::new(),
    }
}

/// Every container, their VMs asked for figures all at once (each within
/// [`STATS_WAIT`]).
async fn list_containers(engine: &Arc<Engine>) -> Reply {
    let entries = engine.pods().into_iter().flat_map(|pod| {
        pod.containers().into_iter().map(move |c| {
            let pod = pod.clone();
            async move { (short(&c.id), container_entry(engine, &pod, &c).await) }
        })
    });
    let out: BTreeMap<String, models::Container> = futures_util::future::join_all(entries)
        .await
        .into_iter()
        .collect();
    Ok(json_response(StatusCode::OK, &out))
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
        &BTreeMap::from([(short(&c.id), container_entry(engine, &pod, &c).await)]),
    ))
}

/// The smallest rate of a `device_*` list (0: none).
fn rate(entries: &[models::DeviceRate]) -> u64 {
    entries.iter().map(|e| e.rate).min().unwrap_or(0)
}

/// `POST /container`: creates and starts a container.
async fn create(engine: &Arc<Engine>, req: Request<Incoming>) -> Reply {
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let v: models::CreateContainer = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    if v.image_name.is_empty() {
        return Err(ApiError::bad_request("image_name is required"));
    }
    let image = v.image_name.as_str();
    let mem = parse_mem_limit(v.mem_limit.as_ref())?;
    let memory = match mem {
        Some(b) => u32::try_from(b.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .max(crate::spec::MIN_MEMORY),
        None => 128,
    };
    let cpu_percent = match v.cpu_percent_limit {
        None => 0,
        Some(p) if (1..=100).contains(&p) => p as u32,
        Some(_) => return Err(ApiError::bad_request("cpu_percent_limit must be 1..100")),
    };
    let envs = v
        .environment
        .iter()
        .filter_map(|kv| {
            kv.split_once('=').map(|(k, val)| EnvVar {
                env: k.into(),
                value: val.into(),
            })
        })
        .collect();
    let mut ports = Vec::new();
    for (k, host) in &v.ports {
        let (port, proto) = k.split_once('/').unwrap_or((k, "tcp"));
        ports.push(Port {
            container_port: port
                .parse()
                .map_err(|_| ApiError::bad_request(format!("bad port {k:?}")))?,
            host_port: host.unwrap_or(0),
            protocol: proto.to_string(),
            // No host port: a free one, as Docker picks.
            publish_all: host.is_none_or(|h| h == 0),
            ..Default::default()
        });
    }
    let disk = DiskLimits {
        read_bps: rate(&v.device_read_bps),
        read_iops: rate(&v.device_read_iops),
        write_bps: rate(&v.device_write_bps),
        write_iops: rate(&v.device_write_iops),
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
            ..Default::default()
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
        entry.notes = vec![
            "device_* limits apply to the VM's disks (all of them), not to a host device path",
        ];
    }
    Ok(json_response(
        StatusCode::CREATED,
        &BTreeMap::from([(short(&c.id), entry)]),
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
        &BTreeMap::from([(short(&c.id), container_entry(engine, &pod, &c).await)]),
    ))
}

async fn remove(engine: &Arc<Engine>, id: &str) -> Reply {
    let (pod, c) = find(engine, id)?;
    engine.remove_pod(&pod.id).await?;
    Ok(json_response(
        StatusCode::OK,
        &models::Removed {
            removed: short(&c.id),
        },
    ))
}

fn image_entry(rec: &ImageRecord) -> models::Image {
    models::Image {
        created: crate::engine::io::rfc3339(rec.created as i64, 0),
        size: rec.size,
        tags: rec.repo_tags.clone(),
    }
}

fn list_images(engine: &Arc<Engine>) -> Reply {
    let out: BTreeMap<String, models::Image> = engine
        .images
        .list()?
        .iter()
        .map(|rec| (format!("sha256:{}", short(&rec.id)), image_entry(rec)))
        .collect();
    Ok(json_response(StatusCode::OK, &out))
}

async fn pull_one(engine: &Arc<Engine>, name: &str) -> Result<ImageRecord, ApiError> {
    Ok(engine.pull_image(name).await?)
}

/// `POST /image` with `{"image_name": [..]}` (default tag latest).
async fn pull(engine: &Arc<Engine>, req: Request<Incoming>) -> Reply {
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let v: models::Pull = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let names: Vec<String> = match v.image_name {
        Some(models::Names::Many(a)) => a,
        Some(models::Names::One(s)) => vec![s],
        None => vec![],
    };
    if names.is_empty() {
        return Err(ApiError::bad_request(
            "image_name is required (a list of images)",
        ));
    }
    let mut out = BTreeMap::new();
    for n in names {
        let rec = pull_one(engine, &n).await?;
        out.insert(format!("sha256:{}", short(&rec.id)), image_entry(&rec));
    }
    Ok(json_response(StatusCode::OK, &out))
}

/// `GET /image/updateall`: pulls every tagged image again.
async fn update_all(engine: &Arc<Engine>) -> Reply {
    let mut updated = Vec::new();
    let mut failed = BTreeMap::new();
    for rec in engine.images.list()? {
        for tag in &rec.repo_tags {
            match pull_one(engine, tag).await {
                Ok(_) => updated.push(tag.clone()),
                Err(e) => drop(failed.insert(tag.clone(), e.message)),
            }
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &models::Updated { updated, failed },
    ))
}

fn one_image(engine: &Arc<Engine>, id: &str) -> Reply {
    let rec = engine
        .images
        .resolve(id.trim_start_matches("sha256:"))
        .map_err(|_| ApiError::not_found(format!("image {id} not found")))?;
    Ok(json_response(
        StatusCode::OK,
        &BTreeMap::from([(format!("sha256:{}", short(&rec.id)), image_entry(&rec))]),
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
        &models::Removed {
            removed: format!("sha256:{}", short(&rec.id)),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::{models::MemLimit, parse_mem_limit};

    fn parse(json: &str) -> Result<Option<u64>, ()> {
        let v: Option<MemLimit> = serde_json::from_str(json).map_err(|_| ())?;
        parse_mem_limit(v.as_ref()).map_err(|_| ())
    }

    #[test]
    fn parses_memory_limits() {
        assert_eq!(parse(r#""2g""#), Ok(Some(2 << 30)));
        assert_eq!(parse(r#""128m""#), Ok(Some(128 << 20)));
        assert_eq!(parse(r#""1000k""#), Ok(Some(1000 << 10)));
        assert_eq!(parse(r#""100000b""#), Ok(Some(100000)));
        assert_eq!(parse(r#""4096""#), Ok(Some(4096)));
        assert_eq!(parse("1024"), Ok(Some(1024)));
        assert_eq!(parse("null"), Ok(None));
        for bad in [r#""2x""#, r#""g""#, r#""""#, "-1", "[1]"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
