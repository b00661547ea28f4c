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
    let limits = engine.cfg.api_limits;
    // One permit per connection served: past the cap, connections wait in the listen
    // queue, not in the daemon's memory.
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
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
            let _permit = permit;
            if let Err(e) = serve_connection(engine, stream).await {
                tracing::debug!("connection: {e}");
            }
        });
    }
}

/// Serves one client connection until it ends (upgrades to hijacked streams included):
/// what [`serve`] runs for each client of the socket, and what the `http_api` fuzz target
/// drives over an in-memory pipe.
pub async fn serve_connection<S>(engine: Arc<Engine>, stream: S) -> Result<(), hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = engine.cfg.api_limits.header_timeout;
    let svc = service_fn(move |req| {
        let engine = engine.clone();
        async move { Ok::<_, Infallible>(handle(engine, req).await) }
    });
    http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await
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
    let mut resp = match route(&engine, &method, &path, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!("{method} {path}: {}", e.message);
            }
            error_response(&e)
        }
    };
    // What Docker clients read to negotiate their API version.
    let h = resp.headers_mut();
    h.insert(
        "Api-Version",
        hyper::header::HeaderValue::from_static(crate::API_VERSION),
    );
    h.insert(
        "Docker-Experimental",
        hyper::header::HeaderValue::from_static("false"),
    );
    h.insert("Ostype", hyper::header::HeaderValue::from_static("linux"));
    h.insert(
        hyper::header::SERVER,
        hyper::header::HeaderValue::from_static(concat!("hyperd/", env!("CARGO_PKG_VERSION"))),
    );
    resp
}

type HandlerFuture = std::pin::Pin<Box<dyn Future<Output = ApiResult> + Send>>;

/// One route of the API: every route hyperd serves is in [`ROUTES`], which the router
/// and the OpenAPI check (docs/openapi.json) both read.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    handler: fn(Arc<Engine>, Request<Incoming>) -> HandlerFuture,
}

macro_rules! route {
    ($method:ident $path:literal => |$e:ident, $r:ident| $body:expr) => {
        Route {
            method: stringify!($method),
            path: $path,
            handler: |$e: Arc<Engine>, $r: Request<Incoming>| -> HandlerFuture {
                Box::pin(async move {
                    let (_e, _r) = (&$e, &$r);
                    $body
                })
            },
        }
    };
}

pub static ROUTES: &[Route] = &[
    route!(GET "/_ping" => |e, r| system::ping()),
    route!(GET "/version" => |e, r| system::version()),
    route!(GET "/info" => |e, r| system::info(&e)),
    route!(POST "/pod/create" => |e, r| pods::create(&e, r).await),
    route!(POST "/pod/start" => |e, r| pods::start(&e, r).await),
    route!(POST "/pod/stop" => |e, r| pods::stop(&e, r).await),
    route!(POST "/pod/kill" => |e, r| containers::pod_kill(&e, &r).await),
    route!(POST "/pod/pause" => |e, r| containers::pod_pause(&e, &r, true).await),
    route!(POST "/pod/unpause" => |e, r| containers::pod_pause(&e, &r, false).await),
    route!(POST "/pod/labels" => |e, r| pods::labels(&e, r).await),
    route!(DELETE "/pod" => |e, r| pods::remove(&e, r).await),
    route!(GET "/pod/info" => |e, r| pods::info(&e, &r)),
    route!(GET "/pod/stats" => |e, r| pods::stats(&e, &r).await),
    route!(GET "/pod/portmappings" => |e, r| pods::portmappings(&e, &r)),
    route!(GET "/list" => |e, r| pods::list(&e, &r)),
    route!(GET "/container/info" => |e, r| containers::container_info(&e, &r)),
    route!(GET "/container/logs" => |e, r| containers::container_logs(&e, &r).await),
    route!(POST "/container/kill" => |e, r| containers::container_kill(&e, &r).await),
    route!(POST "/container/create" => |e, r| containers::container_create(&e, r).await),
    route!(POST "/container/start" => |e, r| containers::container_start(&e, &r).await),
    route!(POST "/container/stop" => |e, r| containers::container_stop(&e, &r).await),
    route!(POST "/container/remove" => |e, r| containers::container_remove(&e, &r).await),
    route!(POST "/container/rename" => |e, r| containers::container_rename(&e, &r).await),
    route!(POST "/container/commit" => |e, r| containers::container_commit(&e, r).await),
    route!(POST "/vm/create" => |e, r| containers::vm_create(&e, &r).await),
    route!(DELETE "/vm" => |e, r| containers::vm_delete(&e, &r).await),
    route!(POST "/attach" => |e, r| attach::attach(&e, r).await),
    route!(POST "/exec/create" => |e, r| containers::exec_create(&e, r).await),
    route!(POST "/exec/start" => |e, r| attach::exec_start(&e, r).await),
    route!(GET "/exitcode" => |e, r| pods::exitcode(&e, &r)),
    route!(POST "/tty/resize" => |e, r| containers::tty_resize(&e, &r).await),
    route!(POST "/image/create" => |e, r| images::create(&e, r).await),
    route!(POST "/image/build" => |e, r| super::build::build(&e, r).await),
    route!(POST "/image/tag" => |e, r| images::tag(&e, &r)),
    route!(POST "/image/push" => |e, r| images::push(&e, r).await),
    route!(POST "/image/load" => |e, r| images::load(&e, r).await),
    route!(GET "/images/save" => |e, r| images::save(&e, &r).await),
    route!(GET "/images/get" => |e, r| images::list_or_save(&e, &r).await),
    route!(DELETE "/image" => |e, r| images::remove(&e, &r)),
    route!(POST "/auth" => |e, r| images::auth(&e, r).await),
    route!(DELETE "/auth" => |e, r| images::logout(&e, &r)),
];

/// hyperd's routes with a path parameter (`{id}`: a pod id or name), matched by [`route`]
/// before the table above.
pub static PATH_ROUTES: &[(&str, &str)] = &[
    ("GET", "/pod/{id}/portmappings"),
    ("PUT", "/pod/{id}/portmappings/add"),
    ("PUT", "/pod/{id}/portmappings/delete"),
];

async fn route(
    engine: &Arc<Engine>,
    method: &Method,
    path: &str,
    req: Request<Incoming>,
) -> ApiResult {
    let method_name = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    // hyperd's path-parameter routes: `/pod/{id}/portmappings[/add|/delete]`.
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["pod", id, "portmappings", rest @ ..] = segments.as_slice() {
        match (method_name, rest) {
            ("GET", []) => return pods::portmappings_of(engine, id),
            ("PUT", [action @ ("add" | "delete")]) => {
                return pods::change_portmappings(engine, id, *action == "add", req).await
            }
            _ => {}
        }
    }
    match ROUTES
        .iter()
        .find(|r| r.path == path && r.method == method_name)
    {
        Some(r) => (r.handler)(engine.clone(), req).await,
        None => route_compat(engine, method, path, req).await,
    }
}

/// The seed APIs. A versioned path (`/v1.41/...`, as the docker CLI sends) is Docker's;
/// an unversioned one is mCM's where mCM has it (`/images`, `/containers`, and their
/// `/{id}`), else Docker's remote API (`/images/json`, `/containers/{id}/json`, ...).
async fn route_compat(
    engine: &Arc<Engine>,
    method: &Method,
    path: &str,
    req: Request<Incoming>,
) -> ApiResult {
    let versioned = route_path(req.uri().path()) != req.uri().path();
    let is_mcm = !versioned
        && matches!(
            (
                method.as_str(),
                path.trim_start_matches('/')
                    .split('/')
                    .collect::<Vec<_>>()
                    .as_slice()
            ),
            ("GET" | "POST", ["images"] | ["containers"])
                | ("DELETE", ["images", ..])
                | ("PUT" | "DELETE", ["containers", _])
        );
    let is_flask = !versioned
        && matches!(
            path.trim_start_matches('/').split('/').next(),
            Some("container" | "image")
        );
    let routed = if is_flask {
        super::compat::flask::route(engine, method, path, req).await
    } else if is_mcm {
        super::compat::mcm::route(engine, method, path, req).await
    } else {
        super::compat::docker::route(engine, method, path, req).await
    };
    routed.unwrap_or_else(|| Err(not_found(method, path)))
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

    /// docs/openapi.json documents exactly the routes the router serves.
    #[test]
    fn openapi_matches_the_router() {
        let doc: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/openapi.json"
        )))
        .unwrap();
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.to_ascii_uppercase(), path.clone()))
            })
            .collect();
        let mut served: Vec<(String, String)> = super::ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .chain(
                super::PATH_ROUTES
                    .iter()
                    .map(|(m, p)| (m.to_string(), p.to_string())),
            )
            .collect();
        documented.sort();
        served.sort();
        let missing: Vec<_> = served.iter().filter(|r| !documented.contains(r)).collect();
        let extra: Vec<_> = documented.iter().filter(|r| !served.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "routes not in docs/openapi.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "documented routes the router does not serve: {extra:?}"
        );
        let mut dedup = served.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), served.len(), "a route is listed twice");
    }

    #[test]
    fn strips_version_prefixes() {
        assert_eq!(route_path("/v1.24/info"), "/info");
        assert_eq!(route_path("/v2/pod/create"), "/pod/create");
        assert_eq!(route_path("/vm/create"), "/vm/create");
        assert_eq!(route_path("/info"), "/info");
    }
}
