//! Image routes: `/image/create` (pull, or import with `fromSrc=-`), `/image/push`,
//! `/auth`, `/image/load`, `/images/save`, `/images/get`, `DELETE /image`.
use super::http::{
    flag, full, ok_json, param, query, read_body, ApiError, ApiResult, MAX_JSON_BODY,
};
use crate::engine::Engine;
use crate::image::auth::{decode_header, registry_key, AuthConfig};
use crate::image::registry::{self, Registry};
use crate::image::{progress, ImageConfig, ImageRef};
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyperd_api::images::{AuthReply, ImageNamed, ImagesList, Removed};
use std::sync::Arc;

/// Applies Docker `changes` lines (`CMD`, `ENTRYPOINT`, `ENV`, `WORKDIR`, `USER`).
pub(crate) fn apply_changes(cfg: &mut ImageConfig, changes: &[String]) -> Result<(), ApiError> {
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

/// Credentials for a registry: `X-Registry-Auth` when it carries any, else what
/// `POST /auth` stored, else anonymous.
fn credentials(
    engine: &Engine,
    req: &Request<Incoming>,
    registry: &str,
) -> Result<AuthConfig, ApiError> {
    if let Some(h) = req
        .headers()
        .get("X-Registry-Auth")
        .and_then(|v| v.to_str().ok())
    {
        // Undecodable is anonymous, as Docker and hyperd have it.
        match decode_header(h) {
            Ok(cfg) if cfg.credentials().is_some() || !cfg.registrytoken.is_empty() => {
                return Ok(cfg)
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("X-Registry-Auth ignored: {e}");
                return Ok(AuthConfig::default());
            }
        }
    }
    Ok(engine.credentials.get(registry).unwrap_or_default())
}

fn reference_from(
    q: &std::collections::HashMap<String, String>,
    names: &[&str],
) -> Result<String, ApiError> {
    let name = param(q, names)?.to_string();
    Ok(match q.get("tag").filter(|t| !t.is_empty()) {
        Some(tag) if tag.starts_with("sha256:") => format!("{name}@{tag}"),
        Some(tag) => format!("{name}:{tag}"),
        None => name,
    })
}

/// `POST /image/create?imageName=NAME[:TAG|@DIGEST][&tag=TAG]`: pulls, streaming
/// progress. With `fromSrc=-`, imports the body (a root filesystem tar) instead.
pub(crate) async fn create(engine: &Arc<Engine>, mut req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let reference = reference_from(&q, &["imageName", "fromImage", "repo"])?;
    if q.get("fromSrc").map(String::as_str) == Some("-") {
        return import(engine, req, reference).await;
    }
    if q.contains_key("fromSrc") {
        return Err(ApiError::bad_request(
            "fromSrc supports only '-' (the request body)",
        ));
    }
    let upgrade = super::attach::take_upgrade(&mut req);
    let image = ImageRef::parse(&reference)?;
    let auth = credentials(engine, &req, &image.registry)?;
    let r = Arc::new(
        Registry::connect(
            image,
            &auth,
            &engine.cfg.registry,
            oci_client::RegistryOperation::Pull,
        )
        .await?,
    );
    // Resolved before answering, so a wrong login or a missing image gets its status.
    let resolved = registry::resolve(&r).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let store = engine.images.clone();
    tokio::spawn(async move {
        if let Err(e) = registry::pull(store, r, resolved, tx.clone()).await {
            tracing::warn!("pull failed: {e}");
            let _ = tx.send(progress::error(&e.to_string()));
        }
    });
    Ok(super::attach::json_lines_or_hijacked(upgrade, rx))
}

async fn import(engine: &Arc<Engine>, req: Request<Incoming>, reference: String) -> ApiResult {
    let changes: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "changes")
        .map(|(_, v)| v.into_owned())
        .collect();
    let mut cfg = ImageConfig::default();
    apply_changes(&mut cfg, &changes)?;
    crate::image::normalize_reference(&reference)?;
    let reader = body_reader(req);
    let images = engine.images.clone();
    let rec = tokio::task::spawn_blocking(move || images.import(&reference, reader, cfg))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let mut body =
        serde_json::to_vec(&progress::about(&rec.id, rec.id.clone())).unwrap_or_default();
    body.extend_from_slice(b"\r\n");
    Ok(Response::builder()
        .header("Content-Type", "application/json")
        .body(full(body))
        .expect("valid response"))
}

/// The request body as a blocking reader (for a blocking thread).
pub(crate) fn body_reader(req: Request<Incoming>) -> impl std::io::Read + Send + 'static {
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream))
}

/// `POST /image/push?remote=NAME[&tag=TAG][&imageId=LOCAL]`: pushes the local image
/// named `remote` (or `imageId`, which is then also tagged as `remote`).
pub(crate) async fn push(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let reference = reference_from(&q, &["remote", "imageName"])?;
    let local = q.get("imageId").filter(|s| !s.is_empty()).cloned();
    push_reference(engine, req, &reference, local.as_deref()).await
}

/// Pushes `reference` (the local image of that name, or `local` tagged so) with the
/// request's `X-Registry-Auth` or the stored login, streaming progress.
pub(crate) async fn push_reference(
    engine: &Arc<Engine>,
    mut req: Request<Incoming>,
    reference: &str,
    local: Option<&str>,
) -> ApiResult {
    let upgrade = super::attach::take_upgrade(&mut req);
    let image = ImageRef::parse(reference)?;
    let rec = match local {
        Some(local) => {
            let rec = engine.images.resolve(local)?;
            engine.images.add_references(&rec.id, &[image.familiar()])?;
            rec
        }
        None => engine.images.resolve(&image.familiar())?,
    };
    let auth = credentials(engine, &req, &image.registry)?;
    let r = Registry::connect(
        image,
        &auth,
        &engine.cfg.registry,
        oci_client::RegistryOperation::Push,
    )
    .await?;
    r.client
        .auth(&r.image.oci(), &r.auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("authentication failed: {e}"),
            )
        })?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let store = engine.images.clone();
    tokio::spawn(async move {
        if let Err(e) = registry::push(store, &r, &rec, tx.clone()).await {
            tracing::warn!("push failed: {e}");
            let _ = tx.send(progress::error(&e.to_string()));
        }
    });
    Ok(super::attach::json_lines_or_hijacked(upgrade, rx))
}

/// `POST /auth`: checks a login against its registry and stores it for later pulls and
/// pushes.
pub(crate) async fn auth(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let cfg: AuthConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid auth config: {e}")))?;
    if cfg.credentials().is_none() {
        return Err(ApiError::bad_request("username and password are required"));
    }
    let registry = registry_key(&cfg.serveraddress);
    let policy = engine.cfg.registry.auth_policy(&registry);
    crate::image::auth::check_login(&registry, &cfg, &policy).await?;
    engine.credentials.save(&registry, &cfg)?;
    tracing::info!(registry = %registry, user = %cfg.username, "login stored");
    ok_json(AuthReply {
        status: "Login Succeeded".into(),
        identity_token: Some(String::new()),
    })
}

/// `DELETE /auth?serveraddress=REGISTRY`: forgets a stored login (`hyperctl logout`).
pub(crate) fn logout(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let registry = registry_key(param(&q, &["serveraddress"])?);
    if !engine.credentials.remove(&registry)? {
        return Err(ApiError::not_found(format!("not logged in to {registry}")));
    }
    tracing::info!(registry = %registry, "login removed");
    ok_json(AuthReply {
        status: format!("Removing login credentials for {registry}"),
        identity_token: None,
    })
}

/// Loads an image archive (docker save or OCI layout, maybe compressed) on a blocking
/// thread, in a work directory that goes away afterwards.
pub(crate) async fn load_archive(
    engine: &Arc<Engine>,
    archive: impl std::io::Read + Send + 'static,
) -> Result<Vec<crate::image::ImageRecord>, ApiError> {
    let images = engine.images.clone();
    let work = engine
        .cfg
        .root
        .join("image/tmp")
        .join(crate::ids::random_hex(8));
    let w2 = work.clone();
    let result = tokio::task::spawn_blocking(move || {
        let r = crate::image::archive::load(&images, archive, &w2);
        let _ = std::fs::remove_dir_all(&w2);
        r
    })
    .await;
    Ok(result.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??)
}

/// `POST /image/load`: a `docker save` archive or an OCI layout (tar) in the body.
pub(crate) async fn load(engine: &Arc<Engine>, mut req: Request<Incoming>) -> ApiResult {
    let upgrade = super::attach::take_upgrade(&mut req);
    // The archive is read whole before the answer, hijacked or not: a failed load gets
    // its status.
    let recs = load_archive(engine, body_reader(req)).await?;
    // One "Loaded image" line per name (the id for an unnamed image).
    let lines: Vec<_> = recs
        .iter()
        .flat_map(|rec| {
            if rec.repo_tags.is_empty() {
                vec![rec.id.clone()]
            } else {
                rec.repo_tags.clone()
            }
        })
        .map(|n| progress::stream(format!("Loaded image: {n}\n")))
        .collect();
    if upgrade.is_some() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for line in lines {
            let _ = tx.send(line);
        }
        return Ok(super::attach::json_lines_or_hijacked(upgrade, rx));
    }
    let mut body = String::new();
    for line in lines {
        body.push_str(&serde_json::to_string(&line).unwrap_or_default());
        body.push_str("\r\n");
    }
    Ok(Response::builder()
        .header("Content-Type", "application/json")
        .body(full(body))
        .expect("valid response"))
}

/// `GET /images/save?imageId=A[&imageId=B]` (also `names=`): a tar that is both a
/// `docker save` archive and an OCI layout.
pub(crate) async fn save(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let wanted: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "imageId" || k == "names")
        .map(|(_, v)| v.into_owned())
        .collect();
    if wanted.is_empty() {
        return Err(ApiError::bad_request("missing query parameter imageId"));
    }
    save_names(engine, &wanted).await
}

/// The images `wanted` names as one `docker save`/OCI archive, streamed.
pub(crate) async fn save_names(engine: &Arc<Engine>, wanted: &[String]) -> ApiResult {
    let mut images = Vec::new();
    for w in wanted {
        let rec = engine.images.resolve(w)?;
        let names = match crate::image::normalize_reference(w) {
            Ok(n) if rec.repo_tags.contains(&n) => vec![n],
            _ => rec.repo_tags.clone(),
        };
        images.push((rec, names));
    }
    let path = engine
        .cfg
        .root
        .join("image/tmp")
        .join(format!("save-{}.tar", crate::ids::random_hex(8)));
    let store = engine.images.clone();
    let p2 = path.clone();
    let result = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::create(&p2)?;
        crate::image::archive::save(&store, &images, std::io::BufWriter::new(f))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let file = tokio::fs::File::open(&path).await;
    let _ = std::fs::remove_file(&path);
    result?;
    let file = file.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let stream = tokio_util::io::ReaderStream::new(file).map_ok(hyper::body::Frame::data);
    Ok(Response::builder()
        .header("Content-Type", "application/x-tar")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
        .expect("valid response"))
}

/// `POST /image/tag?imageId=SOURCE&repo=NAME[&tag=TAG]`: another name for an image.
pub(crate) fn tag(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let rec = engine.images.resolve(param(&q, &["imageId", "image"])?)?;
    let name = ImageRef::parse(&reference_from(&q, &["repo"])?)?.familiar();
    engine
        .images
        .add_references(&rec.id, std::slice::from_ref(&name))?;
    ok_json(ImageNamed { id: rec.id, name })
}

/// `GET /images/get`: with Docker's `names` parameter (`docker save`), the images as
/// one archive; without it, hyperd's list.
pub(crate) async fn list_or_save(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    if query(req).contains_key("names") {
        save(engine, req).await
    } else {
        list(engine)
    }
}

/// `GET /images/get[?all=yes]`: hyperd's `repo:tag:id:created:size` lines.
pub(crate) fn list(engine: &Arc<Engine>) -> ApiResult {
    let mut lines = Vec::new();
    for rec in engine.images.list()? {
        if rec.repo_tags.is_empty() {
            lines.push(format!(
                "<none>:<none>:{}:{}:{}",
                rec.short_id(),
                rec.created,
                rec.size
            ));
        }
        for rt in &rec.repo_tags {
            let (repo, tag) = rt.rsplit_once(':').unwrap_or((rt, "latest"));
            lines.push(format!(
                "{repo}:{tag}:{}:{}:{}",
                rec.short_id(),
                rec.created,
                rec.size
            ));
        }
    }
    ok_json(ImagesList { images_list: lines })
}

/// `DELETE /image?imageId=ID|NAME[&force=yes][&noprune=yes]`.
pub(crate) fn remove(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let id = param(&q, &["imageId"])?;
    let force = flag(&q, "force");
    let removed = engine.images.remove(
        id,
        |img| !force && engine.image_in_use(img),
        flag(&q, "noprune"),
    )?;
    ok_json(removal_json(&removed))
}

/// `Untagged: x` / `Deleted: y` lines as Docker's `[{"Untagged": x}, {"Deleted": y}]`.
pub(crate) fn removal_json(removed: &[String]) -> Vec<Removed> {
    removed
        .iter()
        .map(|r| match r.split_once(": ") {
            Some(("Untagged", v)) => Removed::Untagged(v.to_string()),
            Some((_, v)) => Removed::Deleted(v.to_string()),
            None => Removed::Deleted(r.clone()),
        })
        .collect()
}
