//! Image routes: `/image/create` (import a root filesystem tarball), `/images/get`,
//! `DELETE /image`.
use super::http::{flag, full, ok_json, param, query, ApiError, ApiResult};
use crate::engine::Engine;
use crate::image::ImageConfig;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use std::sync::Arc;

/// Applies Docker `changes` lines (`CMD`, `ENTRYPOINT`, `ENV`, `WORKDIR`, `USER`).
pub fn apply_changes(cfg: &mut ImageConfig, changes: &[String]) -> Result<(), ApiError> {
    for line in changes {
        let line = line.trim();
        let (instr, arg) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let arg = arg.trim();
        let words = || -> Result<Vec<String>, ApiError> {
            if arg.starts_with('[') {
                serde_json::from_str(arg)
                    .map_err(|e| ApiError::bad_request(format!("bad change {line:?}: {e}")))
            } else {
                Ok(vec!["/bin/sh".into(), "-c".into(), arg.to_string()])
            }
        };
        match instr.to_ascii_uppercase().as_str() {
            "CMD" => cfg.cmd = words()?,
            "ENTRYPOINT" => cfg.entrypoint = words()?,
            "ENV" => {
                let kv = match arg.split_once('=') {
                    Some(_) => arg.to_string(),
                    None => arg.replacen(char::is_whitespace, "=", 1),
                };
                let key = kv.split('=').next().unwrap_or_default().to_string();
                cfg.env
                    .retain(|e| e.split('=').next() != Some(key.as_str()));
                cfg.env.push(kv);
            }
            "WORKDIR" => cfg.working_dir = arg.to_string(),
            "USER" => cfg.user = arg.to_string(),
            "" => {}
            other => return Err(ApiError::bad_request(format!("unsupported change {other}"))),
        }
    }
    Ok(())
}

/// `POST /image/create?imageName=NAME[:TAG][&tag=TAG]&fromSrc=-`: imports the request
/// body (a root filesystem tar, optionally gzip-compressed) as an image.
pub async fn create(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let name = param(&q, &["imageName", "fromImage", "repo"])?.to_string();
    let reference = match q.get("tag").filter(|t| !t.is_empty()) {
        Some(tag) => format!("{name}:{tag}"),
        None => name.clone(),
    };
    if q.get("fromSrc").map(String::as_str) != Some("-") {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "pulling from a registry is not supported yet; import a root filesystem tarball with fromSrc=-",
        ));
    }
    let changes: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "changes")
        .map(|(_, v)| v.into_owned())
        .collect();
    let mut cfg = ImageConfig::default();
    apply_changes(&mut cfg, &changes)?;
    // Stream the body into the blocking import through a pipe of chunks.
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let images = engine.images.clone();
    let rec = tokio::task::spawn_blocking(move || images.import(&reference, reader, cfg))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let body = format!(
        "{}\n{}\n",
        json!({ "status": format!("Imported {}", name) }),
        json!({ "status": rec.id, "id": rec.id })
    );
    Ok(Response::builder()
        .header("Content-Type", "application/json")
        .body(full(body))
        .expect("valid response"))
}

/// `GET /images/get`: hyperd's `repo:tag:id:created:size` lines.
pub fn list(engine: &Arc<Engine>) -> ApiResult {
    let mut lines = Vec::new();
    for rec in engine.images.list()? {
        let id = &rec.id["sha256:".len()..];
        if rec.repo_tags.is_empty() {
            lines.push(format!(
                "<none>:<none>:{}:{}:{}",
                &id[..12],
                rec.created,
                rec.size
            ));
        }
        for rt in &rec.repo_tags {
            let (repo, tag) = rt.rsplit_once(':').unwrap_or((rt, "latest"));
            lines.push(format!(
                "{repo}:{tag}:{}:{}:{}",
                &id[..12],
                rec.created,
                rec.size
            ));
        }
    }
    ok_json(json!({ "imagesList": lines }))
}

/// `DELETE /image?imageId=ID|NAME[&force=yes]`.
pub fn remove(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let id = param(&q, &["imageId"])?;
    let force = flag(&q, "force");
    let removed = engine
        .images
        .remove(id, |img| !force && engine.image_in_use(img))?;
    ok_json(json!(removed
        .iter()
        .map(|r| {
            let (k, v) = r.split_once(": ").unwrap_or(("Deleted", r));
            json!({ k: v })
        })
        .collect::<Vec<_>>()))
}
