//! The listener and the router.
use super::http::{error_response, ApiError, ApiResult, Body};
use super::{attach, containers, images, pods, system};
use crate::engine::Engine;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::net::UnixListener;

/// Binds the API socket with mode 0660, replacing a stale socket file.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another daemon is listening on {}", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    engine: Arc<Engine>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let engine = engine.clone();
                async move { Ok::<_, Infallible>(handle(engine, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await
            {
                tracing::debug!("connection: {e}");
            }
        });
    }
}

/// Strips a `/v{version}` prefix: `/v1.24/info` is `/info`.
pub fn route_path(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some(i) = rest.find('/') {
            let version = &rest[..i];
            if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.') {
                return &rest[i..];
            }
        }
    }
    path
}

async fn handle(engine: Arc<Engine>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = route_path(req.uri().path())
        .trim_end_matches('/')
        .to_string();
    tracing::debug!("{method} {path}");
    match route(&engine, &method, &path, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!("{method} {path}: {}", e.message);
            }
            error_response(&e)
        }
    }
}

async fn route(
    engine: &Arc<Engine>,
    method: &Method,
    path: &str,
    req: Request<Incoming>,
) -> ApiResult {
    match (method, path) {
        (&Method::GET | &Method::HEAD, "/_ping") => system::ping(),
        (&Method::GET, "/version") => system::version(),
        (&Method::GET, "/info") => system::info(engine),
        (&Method::POST, "/pod/create") => pods::create(engine, req).await,
        (&Method::POST, "/pod/start") => pods::start(engine, req).await,
        (&Method::POST, "/pod/stop") => pods::stop(engine, req).await,
        (&Method::DELETE, "/pod") => pods::remove(engine, req).await,
        (&Method::GET, "/pod/info") => pods::info(engine, &req),
        (&Method::GET, "/list") => pods::list(engine, &req),
        (&Method::GET, "/exitcode") => pods::exitcode(engine, &req),
        (&Method::POST, "/attach") => attach::attach(engine, req).await,
        (&Method::POST, "/exec/create") => containers::exec_create(engine, req).await,
        (&Method::POST, "/exec/start") => attach::exec_start(engine, req).await,
        (&Method::POST, "/tty/resize") => containers::tty_resize(engine, &req).await,
        (&Method::POST, "/container/kill") => containers::container_kill(engine, &req).await,
        (&Method::GET, "/container/info") => containers::container_info(engine, &req),
        (&Method::GET, "/container/logs") => containers::container_logs(engine, &req),
        (&Method::POST, "/pod/labels") => pods::labels(engine, req).await,
        (&Method::GET, "/pod/stats") => pods::stats(engine, &req).await,
        (&Method::POST, "/pod/kill") => containers::pod_kill(engine, &req).await,
        (&Method::POST, "/pod/pause") => containers::pod_pause(engine, &req, true).await,
        (&Method::POST, "/pod/unpause") => containers::pod_pause(engine, &req, false).await,

        (&Method::POST, "/image/create") => images::create(engine, req).await,
        (&Method::POST, "/image/tag") => images::tag(engine, &req),
        (&Method::POST, "/image/push") => images::push(engine, req).await,
        (&Method::POST, "/image/load") => images::load(engine, req).await,
        (&Method::GET, "/images/save") => images::save(engine, &req).await,
        (&Method::POST, "/auth") => images::auth(engine, req).await,
        (&Method::GET, "/images/get") => images::list(engine),
        (&Method::DELETE, "/image") => images::remove(engine, &req),
        _ => Err(not_found(method, path)),
    }
}

fn not_found(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {path}"),
    )
}

#[cfg(test)]
mod tests {
    use super::route_path;

    #[test]
    fn strips_version_prefixes() {
        assert_eq!(route_path("/v1.24/info"), "/info");
        assert_eq!(route_path("/v2/pod/create"), "/pod/create");
        assert_eq!(route_path("/vm/create"), "/vm/create");
        assert_eq!(route_path("/info"), "/info");
    }
}
