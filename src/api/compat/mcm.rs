//! The mimik mCM container API (seed 000): `/images` and `/containers`, with `{"data": …}`
//! lists, states created|running|removing|paused, and `env` never echoed back. Errors are
//! `{"error": {"code": N, "message": "…"}}`.
use crate::api::base64_field;
use crate::api::http::{json_response, query, read_body, ApiError, ApiResult, MAX_JSON_BODY};
use crate::engine::io::IoState;
use crate::engine::{Container, Engine, Pod, PodPhase};
use crate::image::ImageRecord;
use crate::spec::{ContainerSpec, EnvVar, PodSpec};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use std::sync::Arc;

/// mCM's wire format: what its clients send and read.
mod models {
    use serde::{Deserialize, Serialize};

    /// `{"error": {"code": N, "message": "…"}}`.
    #[derive(Serialize)]
    pub(super) struct ErrorReply {
        pub error: ErrorDetail,
    }

    #[derive(Serialize)]
    pub(super) struct ErrorDetail {
        pub code: u16,
        pub message: String,
    }

    /// `{"data": …}`.
    #[derive(Serialize)]
    pub(super) struct Data<T> {
        pub data: T,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Image {
        pub id: String,
        pub name: String,
        pub repo_digests: Vec<Vec<String>>,
        pub created: u64,
        pub size: u64,
        pub containers: usize,
    }

    /// A container as mCM shows it: `env` is never sent back.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Container {
        pub id: String,
        pub name: String,
        pub image: String,
        pub image_id: String,
        pub created: u64,
        /// `created`, `running`, `paused` or `removing`.
        pub state: &'static str,
    }

    /// `POST /containers`.
    #[derive(Deserialize)]
    pub(super) struct CreateContainer {
        #[serde(default)]
        pub image: String,
        #[serde(default)]
        pub name: String,
        /// `KEY=VALUE`; a variable without `=` is removed from the environment.
        #[serde(default)]
        pub env: Vec<String>,
    }

    /// `PUT /containers/{id}`.
    #[derive(Deserialize)]
    pub(super) struct UpdateContainer {
        #[serde(default = "start")]
        pub action: String,
    }

    fn start() -> String {
        "start".into()
    }
}

/// Largest image a request may carry in base64 (or a payload URL may return).
const MAX_IMAGE_BYTES: usize = 1 << 30;
/// How long a payload URL may take to download.
const URL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Removes a temporary file when the request ends, however it ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn err(status: StatusCode, message: impl Into<String>) -> Response<crate::api::http::Body> {
    let message = message.into();
    json_response(
        status,
        &models::ErrorReply {
            error: models::ErrorDetail {
                code: status.as_u16(),
                message,
            },
        },
    )
}

fn from_api(e: ApiError) -> Response<crate::api::http::Body> {
    err(e.status, e.message)
}

/// mCM routes; `None` when the path is not mCM's.
pub(crate) async fn route(
    engine: &Arc<Engine>,
    method: &Method,
    path: &str,
    req: Request<Incoming>,
) -> Option<ApiResult> {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resp = match (method.as_str(), seg.as_slice()) {
        ("GET", ["images"]) => list_images(engine),
        ("POST", ["images"]) => create_image(engine, req).await,
        ("DELETE", ["images", rest @ ..]) if !rest.is_empty() => {
            delete_image(engine, &rest.join("/"))
        }
        ("GET", ["containers"]) => list_containers(engine),
        ("POST", ["containers"]) => create_container(engine, req).await,
        ("PUT", ["containers", id]) => update_container(engine, id, req).await,
        ("DELETE", ["containers", id]) => delete_container(engine, id).await,
        _ => return None,
    };
    Some(Ok(resp.unwrap_or_else(from_api)))
}

fn image_json(engine: &Engine, rec: &ImageRecord) -> models::Image {
    let containers = engine
        .pods()
        .iter()
        .flat_map(|p| p.containers())
        .filter(|c| c.image.id == rec.id)
        .count();
    let name = rec
        .repo_tags
        .first()
        .map(|t| t.rsplit_once(':').map(|(n, _)| n).unwrap_or(t).to_string())
        .unwrap_or_default();
    models::Image {
        id: format!("sha256:{}", rec.short_id()),
        name,
        repo_digests: vec![rec
            .layers
            .iter()
            .map(|l| {
                let hex = l.digest.trim_start_matches("sha256:");
                format!("sha256:{}", &hex[..12.min(hex.len())])
            })
            .collect()],
        created: rec.created,
        size: rec.size,
        containers,
    }
}

fn list_images(engine: &Arc<Engine>) -> Result<Response<crate::api::http::Body>, ApiError> {
    let data: Vec<models::Image> = engine
        .images
        .list()?
        .iter()
        .map(|r| image_json(engine, r))
        .collect();
    Ok(json_response(StatusCode::OK, &models::Data { data }))
}

/// `POST /images[?mode=reference|payload]` with `{"url": …}` or `{"base64Image": …}`:
/// `base64Image` is an image archive (docker save or OCI layout); `url` is, in `reference`
/// mode (the default), an image reference to pull, in `payload` mode, where to download
/// an image archive from.
async fn create_image(
    engine: &Arc<Engine>,
    req: Request<Incoming>,
) -> Result<Response<crate::api::http::Body>, ApiError> {
    let mode = query(&req)
        .get("mode")
        .cloned()
        .unwrap_or_else(|| "reference".into());
    if !matches!(mode.as_str(), "reference" | "payload") {
        return Err(ApiError::bad_request(format!(
            "mode must be payload or reference, not {mode:?}"
        )));
    }
    // The body streams to a temporary file: `base64Image` decoded on the way, the other
    // members parsed.
    let tmp = engine
        .cfg
        .root
        .join("image/tmp")
        .join(format!("upload-{}", crate::ids::random_hex(8)));
    let _cleanup = RemoveOnDrop(tmp.clone());
    let reader = crate::api::images::body_reader(req);
    let path = tmp.clone();
    let (members, found) = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::create(&path)?;
        let r = base64_field::read(
            reader,
            (MAX_IMAGE_BYTES * 4 / 3 + 1024) as u64,
            "base64Image",
            &mut file,
        );
        file.sync_all()?;
        r
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| match e {
        base64_field::FieldError::TooLarge(_) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        base64_field::FieldError::Io(e) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        e => ApiError::bad_request(e.to_string()),
    })?;
    let url = members
        .get("url")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    if !found {
        let Some(url) = url else {
            return Err(ApiError::bad_request("give url or base64Image"));
        };
        if mode == "reference" {
            let reference = url.trim_start_matches("docker://");
            let rec = engine.pull_image(reference).await?;
            return Ok(json_response(
                StatusCode::CREATED,
                &image_json(engine, &rec),
            ));
        }
        let limits = crate::image::remote_archive::DownloadLimits {
            max_bytes: MAX_IMAGE_BYTES as u64,
            timeout: URL_TIMEOUT,
        };
        crate::image::remote_archive::download(url, &tmp, &limits)
            .await
            .map_err(|e| match e {
                crate::image::ImageError::BadReference(m) => ApiError::bad_request(m),
                e => ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()),
            })?;
    }
    let archive = std::fs::File::open(&tmp)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let recs = crate::api::images::load_archive(engine, archive).await?;
    let rec = recs
        .first()
        .ok_or_else(|| ApiError::bad_request("the archive holds no image"))?;
    Ok(json_response(StatusCode::CREATED, &image_json(engine, rec)))
}

fn delete_image(
    engine: &Arc<Engine>,
    id: &str,
) -> Result<Response<crate::api::http::Body>, ApiError> {
    let rec = engine
        .images
        .resolve(id)
        .map_err(|_| ApiError::not_found(format!("image {id} cannot be found")))?;
    let body = image_json(engine, &rec);
    engine
        .images
        .remove(&rec.id, |img| engine.image_in_use(img), false)?;
    Ok(json_response(StatusCode::OK, &body))
}

fn state(pod: &Pod, c: &Container) -> &'static str {
    match (*c.io.state().borrow(), pod.phase()) {
        (IoState::Running, PodPhase::Paused) => "paused",
        (IoState::Running, _) => "running",
        _ => "created",
    }
}

fn container_json(pod: &Pod, c: &Container) -> models::Container {
    models::Container {
        id: c.id.clone(),
        name: c.name().clone(),
        image: c.image_ref.clone(),
        image_id: c.image.id.clone(),
        created: crate::image::parse_rfc3339(&pod.created).unwrap_or(0),
        state: state(pod, c),
    }
}

fn list_containers(engine: &Arc<Engine>) -> Result<Response<crate::api::http::Body>, ApiError> {
    let data: Vec<models::Container> = engine
        .pods()
        .iter()
        .flat_map(|p| {
            p.containers()
                .into_iter()
                .map(move |c| container_json(p, &c))
        })
        .collect();
    Ok(json_response(StatusCode::OK, &models::Data { data }))
}

async fn create_container(
    engine: &Arc<Engine>,
    req: Request<Incoming>,
) -> Result<Response<crate::api::http::Body>, ApiError> {
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let v: models::CreateContainer = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    if v.image.is_empty() {
        return Err(ApiError::bad_request("image is required"));
    }
    let (image, name) = (v.image.as_str(), v.name.clone());
    // "A variable without = is removed from the environment."
    let envs = v
        .env
        .iter()
        .filter_map(|s| s.split_once('='))
        .map(|(k, val)| EnvVar {
            env: k.to_string(),
            value: val.to_string(),
        })
        .collect();
    let spec = PodSpec {
        id: name.clone(),
        containers: vec![ContainerSpec {
            name,
            image: image.to_string(),
            envs,
            ..Default::default()
        }],
        ..Default::default()
    };
    engine.ensure_image(image).await?;
    let pod = engine.create_pod(spec).await?;
    let c = pod.containers().first().cloned().expect("one container");
    Ok(json_response(
        StatusCode::CREATED,
        &container_json(&pod, &c),
    ))
}

fn find(engine: &Engine, id: &str) -> Result<(Arc<Pod>, Arc<Container>), ApiError> {
    engine
        .container_or_pod(id)
        .map_err(|_| ApiError::not_found(format!("container {id} not found")))
}

/// `PUT /containers/{id}` with `{"action": "start"|"stop"}`.
async fn update_container(
    engine: &Arc<Engine>,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<crate::api::http::Body>, ApiError> {
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let v: models::UpdateContainer = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let action = v.action;
    if !matches!(action.as_str(), "start" | "stop") {
        return Err(ApiError::bad_request(format!(
            "action must be start or stop, not {action:?}"
        )));
    }
    let (pod, c) = find(engine, id)?;
    match (action.as_str(), pod.vm().is_some()) {
        ("start", false) => drop(engine.start_pod(&pod.id, None).await?),
        ("stop", true) => drop(engine.stop_pod(&pod.id).await?),
        _ => {}
    }
    Ok(json_response(
        StatusCode::OK,
        &models::Data {
            data: container_json(&pod, &c),
        },
    ))
}

async fn delete_container(
    engine: &Arc<Engine>,
    id: &str,
) -> Result<Response<crate::api::http::Body>, ApiError> {
    let (pod, c) = find(engine, id)?;
    let mut body = container_json(&pod, &c);
    body.state = "removing";
    engine.remove_pod(&pod.id).await?;
    Ok(json_response(StatusCode::OK, &body))
}
