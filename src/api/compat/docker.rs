//! The Docker Engine API subset the `docker` CLI needs for images, ps, run, exec, logs,
//! stop, rm (and the remote API of seed 002). A Docker container is a one-container pod;
//! its id is the container's id, its name the container's (and the pod's) name.
use super::docker_models as m;
use super::docker_ops;
use crate::api::attach::{start_exec_later, upgrade_response, wants_upgrade, Session};
use crate::api::http::{flag, ok_json, query, read_body, ApiError, ApiResult, MAX_JSON_BODY};
use crate::engine::io::IoState;
use crate::engine::{Container, Engine, Pod, PodPhase};
use crate::spec::{ContainerSpec, EnvVar, PodSpec, Resource};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::sync::Arc;

fn no_such_container(id: &str) -> ApiError {
    ApiError::not_found(format!("No such container: {id}"))
}

/// Routes with path parameters; `None` when the path is not Docker's.
pub(crate) async fn route(
    engine: &Arc<Engine>,
    method: &Method,
    path: &str,
    req: Request<Incoming>,
) -> Option<ApiResult> {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if seg.first() == Some(&"volumes") {
        return super::docker_volumes::route(engine, method.as_str(), &seg, req).await;
    }
    Some(match (method.as_str(), seg.as_slice()) {
        ("GET", ["images", "json"]) => images_json(engine, &req),
        ("POST", ["images", "create"]) => crate::api::images::create(engine, req).await,
        ("POST", ["images", "prune"]) => images_prune(engine, &req).await,
        ("GET", ["images", rest @ .., "history"]) if !rest.is_empty() => {
            image_history(engine, &rest.join("/"))
        }
        ("GET", ["images", rest @ .., "json"]) if !rest.is_empty() => {
            image_inspect(engine, &rest.join("/"))
        }
        ("DELETE", ["images", rest @ ..]) if !rest.is_empty() && is_versioned(&req) => {
            image_delete(engine, &rest.join("/"), &req)
        }
        ("POST", ["containers", "create"]) => create(engine, req).await,
        ("POST", ["commit"]) => commit(engine, req).await,
        ("POST", ["build"]) => crate::api::build::build(engine, req).await,
        ("GET", ["containers", "json"]) => list(engine, &req),
        ("GET", ["containers", id, "json"]) => inspect(engine, id),
        ("POST", ["containers", id, "start"]) => start(engine, id).await,
        ("POST", ["containers", id, "stop"]) => docker_ops::stop(engine, id, &req).await,
        ("POST", ["containers", id, "restart"]) => docker_ops::restart(engine, id, &req).await,
        ("POST", ["containers", id, "pause"]) => docker_ops::pause(engine, id, true).await,
        ("POST", ["containers", id, "unpause"]) => docker_ops::pause(engine, id, false).await,
        ("POST", ["containers", id, "rename"]) => docker_ops::rename(engine, id, &req).await,
        ("GET", ["containers", id, "stats"]) => docker_ops::stats(engine, id, &req).await,
        ("GET", ["containers", id, "top"]) => docker_ops::top(engine, id, &req).await,
        ("POST", ["images", "load"]) => crate::api::images::load(engine, req).await,
        ("GET", ["images", rest @ .., "get"]) if !rest.is_empty() => {
            let name = rest.join("/");
            image_save(engine, &name).await
        }
        ("POST", ["images", rest @ .., "tag"]) if !rest.is_empty() => {
            image_tag(engine, &rest.join("/"), &req)
        }
        ("POST", ["images", rest @ .., "push"]) if !rest.is_empty() => {
            let name = rest.join("/");
            let tag = query(&req).get("tag").cloned().unwrap_or_default();
            let reference = if tag.is_empty() {
                name
            } else {
                format!("{name}:{tag}")
            };
            crate::api::images::push_reference(engine, req, &reference, None).await
        }
        ("POST", ["containers", id, "kill"]) => kill(engine, id, &req).await,
        ("POST", ["containers", id, "wait"]) => wait(engine, id, &req).await,
        ("GET", ["containers", id, "logs"]) => logs(engine, id, &req).await,
        ("POST", ["containers", id, "attach"]) => attach(engine, id, req).await,
        ("POST", ["containers", id, "resize"]) => resize(engine, id, None, &req).await,
        ("DELETE", ["containers", id]) => remove(engine, id, &req).await,
        ("POST", ["containers", id, "exec"]) => exec_create(engine, id, req).await,
        ("POST", ["exec", id, "start"]) => exec_start(engine, id, req).await,
        ("POST", ["exec", id, "resize"]) => {
            let (_, e) = match engine.exec(id) {
                Ok(x) => x,
                Err(e) => return Some(Err(e.into())),
            };
            resize(engine, &e.container.id.clone(), Some(id), &req).await
        }
        ("GET", ["exec", id, "json"]) => exec_inspect(engine, id),
        ("GET", ["networks"]) => ok_json(networks()),
        ("GET", ["networks", id]) => match networks()
            .into_iter()
            .find(|n| n.id == *id || n.name == *id)
        {
            Some(n) => ok_json(n),
            None => Err(ApiError::not_found(format!("network {id} not found"))),
        },
        _ => return None,
    })
}

/// The networks that exist: hyperd's user network (under Docker's default name, so that
/// clients that look up `bridge` find it) and `none`.
fn networks() -> Vec<m::Network> {
    use crate::vm::net;
    let net = |name: &str, driver: &str, subnet: Option<String>, gateway: &str| m::Network {
        name: name.into(),
        id: name.into(),
        created: "0001-01-01T00:00:00Z".into(),
        scope: "local".into(),
        driver: driver.into(),
        enable_ipv6: false,
        ipam: m::Ipam {
            driver: "default".into(),
            config: subnet
                .map(|s| {
                    vec![m::IpamConfig {
                        subnet: s,
                        gateway: gateway.into(),
                    }]
                })
                .unwrap_or_default(),
        },
        internal: false,
        attachable: false,
        containers: m::Empty::new(),
        options: m::Empty::new(),
        labels: m::Empty::new(),
    };
    vec![
        net(
            USER_NETWORK,
            "passt",
            Some(format!("10.0.2.0/{}", net::PREFIX)),
            net::GATEWAY,
        ),
        net("none", "null", None, ""),
    ]
}

/// Whether the request came with a `/v{version}` prefix (the Docker CLI always sends one).
fn is_versioned(req: &Request<Incoming>) -> bool {
    crate::api::server::route_path(req.uri().path()) != req.uri().path()
}

/// A Docker container: the pod and its (only or named) container.
pub(super) fn find(engine: &Engine, id: &str) -> Result<(Arc<Pod>, Arc<Container>), ApiError> {
    let id = id.trim_start_matches('/');
    engine
        .container_or_pod(id)
        .map_err(|_| no_such_container(id))
}

fn rfc3339_of(secs: u64) -> String {
    crate::engine::io::rfc3339(secs as i64, 0)
}

fn image_json(engine: &Engine, rec: &crate::image::ImageRecord) -> m::ImageSummary {
    let containers = engine
        .pods()
        .iter()
        .flat_map(|p| p.containers())
        .filter(|c| c.image.id == rec.id)
        .count();
    m::ImageSummary {
        id: rec.id.clone(),
        parent_id: String::new(),
        repo_tags: rec.repo_tags.clone(),
        repo_digests: rec.repo_digests.clone(),
        created: rec.created,
        size: rec.size,
        virtual_size: rec.size,
        shared_size: -1,
        labels: m::Empty::new(),
        containers,
    }
}

/// `GET /images/json[?all=][&filters={"dangling":["true"],"reference":["busybox"]}]`.
fn images_json(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let filters: m::Filters = match q.get("filters").filter(|f| !f.is_empty()) {
        Some(f) => serde_json::from_str(f)
            .map_err(|e| ApiError::bad_request(format!("invalid filters: {e}")))?,
        None => m::Filters::new(),
    };
    let values = |k: &str| {
        filters
            .get(k)
            .map(m::FilterValues::values)
            .unwrap_or_default()
    };
    let dangling = values("dangling").first().map(|v| v == "true" || v == "1");
    let reference = values("reference");
    // A build's intermediate images (untagged, in the build cache) show with `all`
    // only, as Docker's.
    let intermediate = if flag(&q, "all") {
        Default::default()
    } else {
        crate::build::cached_image_ids(&engine.cfg.root)
    };
    let list: Vec<m::ImageSummary> = engine
        .images
        .list()?
        .iter()
        .filter(|r| !(r.repo_tags.is_empty() && intermediate.contains(&r.id)))
        .filter(|r| dangling.is_none_or(|d| d == r.repo_tags.is_empty()))
        .filter(|r| {
            reference.is_empty()
                || r.repo_tags.iter().any(|t| {
                    reference
                        .iter()
                        .any(|want| t == want || t.split(':').next() == Some(want.as_str()))
                })
        })
        .map(|r| image_json(engine, r))
        .collect();
    ok_json(list)
}

fn image_inspect(engine: &Arc<Engine>, name: &str) -> ApiResult {
    let rec = engine
        .images
        .resolve(name)
        .map_err(|_| ApiError::not_found(format!("No such image: {name}")))?;
    let c = &rec.config;
    // Labels, ports and volumes are in the config blob, not in the record.
    let full = engine.images.config_json(&rec).unwrap_or_default();
    let keys = |field: &str| -> BTreeMap<String, m::Empty> {
        full["config"][field]
            .as_object()
            .map(|o| o.keys().map(|k| (k.clone(), m::Empty::new())).collect())
            .unwrap_or_default()
    };
    let labels: m::Empty = full["config"]["Labels"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    ok_json(m::ImageInspect {
        id: rec.id.clone(),
        repo_tags: rec.repo_tags.clone(),
        repo_digests: rec.repo_digests.clone(),
        parent: String::new(),
        created: rfc3339_of(rec.created),
        size: rec.size,
        virtual_size: rec.size,
        os: "linux".into(),
        architecture: "amd64".into(),
        config: m::ImageConfig {
            cmd: c.cmd.clone(),
            entrypoint: c.entrypoint.clone(),
            env: c.env.clone(),
            working_dir: c.working_dir.clone(),
            user: c.user.clone(),
            labels,
            exposed_ports: keys("ExposedPorts"),
            volumes: keys("Volumes"),
            stop_signal: c.stop_signal.clone(),
        },
        root_fs: m::RootFs {
            kind: "layers".into(),
            layers: rec.layers.iter().map(|l| l.diff_id.clone()).collect(),
        },
        metadata: m::ImageMetadata {
            // Docker's zero time: the CLI parses the field and refuses an empty one.
            last_tag_time: "0001-01-01T00:00:00Z".into(),
        },
    })
}

/// `GET /images/{name}/history`: the config's history, newest first, each entry that
/// made a layer with that layer's size.
fn image_history(engine: &Arc<Engine>, name: &str) -> ApiResult {
    let rec = engine
        .images
        .resolve(name)
        .map_err(|_| ApiError::not_found(format!("No such image: {name}")))?;
    let full = engine.images.config_json(&rec)?;
    let mut layers = rec.layers.iter();
    let mut items: Vec<m::HistoryItem> = full["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let empty = h["empty_layer"].as_bool().unwrap_or(false);
            let size = if empty {
                0
            } else {
                layers.next().map_or(0, |l| l.size)
            };
            m::HistoryItem {
                id: "<missing>".into(),
                created: h["created"]
                    .as_str()
                    .and_then(crate::image::parse_rfc3339)
                    .unwrap_or(0),
                created_by: h["created_by"].as_str().unwrap_or("").to_string(),
                tags: Vec::new(),
                size,
                comment: h["comment"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect();
    items.reverse();
    if let Some(top) = items.first_mut() {
        top.id = rec.id.clone();
        top.tags = rec.repo_tags.clone();
    }
    ok_json(items)
}

fn image_delete(engine: &Arc<Engine>, name: &str, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let force = flag(&q, "force");
    let removed = engine
        .images
        .remove(
            name,
            |img| !force && engine.image_in_use(img),
            flag(&q, "noprune"),
        )
        .map_err(|e| match e {
            crate::image::ImageError::NotFound(_) => {
                ApiError::not_found(format!("No such image: {name}"))
            }
            other => other.into(),
        })?;
    ok_json(crate::api::images::removal_json(&removed))
}

/// `POST /images/prune[?filters={"dangling":["false"]}]`: removes the images no
/// container uses that have no name (build intermediates included), or with
/// `dangling=false` every unused image.
async fn images_prune(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let filters: m::Filters = match q.get("filters").filter(|f| !f.is_empty()) {
        Some(f) => serde_json::from_str(f)
            .map_err(|e| ApiError::bad_request(format!("invalid filters: {e}")))?,
        None => m::Filters::new(),
    };
    let only_dangling = filters
        .get("dangling")
        .map(m::FilterValues::values)
        .unwrap_or_default()
        .first()
        .is_none_or(|v| v != "false" && v != "0");
    let engine = engine.clone();
    let report = tokio::task::spawn_blocking(move || -> Result<m::ImagesPruned, ApiError> {
        let mut report = m::ImagesPruned::default();
        for rec in engine.images.list()? {
            if (only_dangling && !rec.repo_tags.is_empty()) || engine.image_in_use(&rec.id) {
                continue;
            }
            // Every name goes with it: pruning removes the image, not one tag.
            match engine
                .images
                .remove(&rec.id, |id| engine.image_in_use(id), true)
            {
                Ok(removed) => {
                    report.space_reclaimed += rec.size;
                    report
                        .images_deleted
                        .extend(crate::api::images::removal_json(&removed));
                }
                Err(e) => tracing::info!(image = %rec.id, "prune: {e}"),
            }
        }
        engine.images.prune_blobs()?;
        Ok(report)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    ok_json(report)
}

/// `GET /images/{name}/get`: `docker save` of one image.
async fn image_save(engine: &Arc<Engine>, name: &str) -> ApiResult {
    engine
        .images
        .resolve(name)
        .map_err(|_| ApiError::not_found(format!("No such image: {name}")))?;
    crate::api::images::save_names(engine, &[name.to_string()]).await
}

/// `POST /images/{name}/tag?repo=REPO[&tag=TAG]`: 201 and no body, as Docker.
fn image_tag(engine: &Arc<Engine>, name: &str, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let rec = engine
        .images
        .resolve(name)
        .map_err(|_| ApiError::not_found(format!("No such image: {name}")))?;
    let repo = q
        .get("repo")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad_request("repo is required"))?;
    let reference = match q.get("tag").filter(|t| !t.is_empty()) {
        Some(t) => format!("{repo}:{t}"),
        None => repo.clone(),
    };
    let target = crate::image::ImageRef::parse(&reference)?.familiar();
    engine.images.add_references(&rec.id, &[target])?;
    Ok(Response::builder()
        .status(StatusCode::CREATED)
        .body(crate::api::http::full(""))
        .expect("valid response"))
}

/// Whether a `SecurityOpt` entry asks for `no-new-privileges` (`no-new-privileges`,
/// `no-new-privileges:true`, or `=true`).
/// `--log-driver` and `--log-opt`: hyperd keeps json-file logs (`local` is taken as
/// the same); `max-size` and `max-file` set the pod's limits.
fn log_options(
    config: Option<&m::CreateLogConfig>,
) -> Result<Option<crate::spec::LogOptions>, ApiError> {
    let Some(c) = config else { return Ok(None) };
    if !matches!(c.kind.as_str(), "" | "json-file" | "local") {
        return Err(ApiError::bad_request(format!(
            "log driver {:?} is not supported (json-file)",
            c.kind
        )));
    }
    let mut log = crate::spec::LogOptions::default();
    for (k, v) in &c.config {
        let bad = |e: String| ApiError::bad_request(format!("log-opt {k}={v}: {e}"));
        match k.as_str() {
            "max-size" => {
                log.max_size = Some(crate::spec::LogOptions::parse_size(v).map_err(|e| bad(e.0))?)
            }
            "max-file" => log.max_files = Some(v.parse().map_err(|_| bad("not a number".into()))?),
            _ => {}
        }
    }
    Ok((log != Default::default()).then_some(log))
}

fn no_new_privileges(opt: &str) -> bool {
    let (name, value) = opt.split_once([':', '=']).unwrap_or((opt, "true"));
    name == "no-new-privileges" && value.eq_ignore_ascii_case("true")
}

/// Create options hyperd cannot honour yet: each gets a `Warnings` entry, never silence.
fn unsupported_options(cfg: &m::ContainerCreate) -> Vec<String> {
    let default = m::CreateHostConfig::default();
    let host = cfg.host_config.as_ref().unwrap_or(&default);
    let some_list = |v: Option<usize>| v.is_some_and(|n| n > 0);
    let mut out = Vec::new();
    for opt in host.security_opt.iter().flatten() {
        if !opt.starts_with("no-new-privileges") {
            out.push(format!(
                "Security option {opt:?} is not supported: ignored (no-new-privileges is)."
            ));
        }
    }
    if some_list(host.devices.as_ref().map(Vec::len)) {
        out.push("Devices are not passed into micro-VMs: ignored.".to_string());
    }
    if let Some(mode) = host.network_mode.as_deref() {
        if !matches!(mode, "" | "default" | "bridge" | "none") {
            out.push(format!(
                "Network mode {mode:?} is not supported yet: the container gets hyperd's user network."
            ));
        }
    }
    out
}

/// The ports a create publishes: `HostConfig.PortBindings` (`-p`), and with
/// `PublishAllPorts` (`-P`) every `ExposedPorts` entry not bound, on a free host port.
fn published_ports(cfg: &m::ContainerCreate) -> Result<Vec<crate::spec::Port>, ApiError> {
    let default = m::CreateHostConfig::default();
    let host = cfg.host_config.as_ref().unwrap_or(&default);
    let key = |k: &str| -> Result<(u32, String), ApiError> {
        let (port, proto) = k.split_once('/').unwrap_or((k, "tcp"));
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ApiError::bad_request(format!("invalid port {k:?}")))?;
        Ok((port as u32, proto.to_string()))
    };
    let mut out = Vec::new();
    for (k, bindings) in host.port_bindings.iter().flatten() {
        let (container_port, protocol) = key(k)?;
        for b in bindings.iter().flatten() {
            let host_port = if b.host_port.is_empty() {
                0
            } else {
                b.host_port.parse::<u16>().map_err(|_| {
                    ApiError::bad_request(format!("invalid host port {:?}", b.host_port))
                })?
            };
            let host_ip = match b.host_ip.as_str() {
                "0.0.0.0" => "",
                ip => ip,
            };
            out.push(crate::spec::Port {
                container_port,
                host_port: host_port as u32,
                protocol: protocol.clone(),
                host_ip: host_ip.to_string(),
                publish_all: host_port == 0,
            });
        }
    }
    if host.publish_all_ports.unwrap_or(false) {
        for k in cfg.exposed_ports.iter().flat_map(|m| m.keys()) {
            let (container_port, protocol) = key(k)?;
            let bound = out
                .iter()
                .any(|p| p.container_port == container_port && p.protocol() == protocol);
            if !bound {
                out.push(crate::spec::Port {
                    container_port,
                    protocol,
                    publish_all: true,
                    ..Default::default()
                });
            }
        }
    }
    Ok(out)
}

/// Docker's port map of a pod: its published ports as they are bound (host ports chosen
/// at start included), or as the spec asks while it has no VM.
fn port_map(pod: &Pod) -> m::PortMap {
    let Some(net) = pod.network() else {
        return spec_port_map(&pod.spec);
    };
    let mut map = m::PortMap::new();
    for p in net.ports {
        bind(
            &mut map,
            format!("{}/{}", p.container_port, p.protocol),
            m::PortBinding {
                host_ip: or_any(p.host_ip),
                host_port: p.host_port.to_string(),
            },
        );
    }
    map
}

/// Adds a host binding to a port's entry.
fn bind(map: &mut m::PortMap, port: String, binding: m::PortBinding) {
    map.entry(port)
        .or_insert_with(|| Some(Vec::new()))
        .get_or_insert_with(Vec::new)
        .push(binding);
}

/// A bound host address as Docker shows it: `0.0.0.0` for every address.
fn or_any(host_ip: String) -> String {
    if host_ip.is_empty() {
        "0.0.0.0".into()
    } else {
        host_ip
    }
}

/// The port map a spec asks for (`HostConfig.PortBindings`; an empty host port is one
/// to be picked at start).
fn spec_port_map(spec: &PodSpec) -> m::PortMap {
    let mut map = m::PortMap::new();
    for p in spec.published_ports() {
        bind(
            &mut map,
            format!("{}/{}", p.container_port, p.protocol()),
            m::PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: if p.host_port == 0 {
                    String::new()
                } else {
                    p.host_port.to_string()
                },
            },
        );
    }
    map
}

/// `POST /commit?container=..&repo=..&tag=..&comment=..&author=..&changes=..`: an image
/// from the container's changes (hyperd's `/container/commit`).
async fn commit(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let image = crate::api::containers::commit(engine, req, "docker commit").await?;
    Ok(crate::api::http::json_response(
        StatusCode::CREATED,
        &m::Committed { id: image.id },
    ))
}

/// `POST /containers/create[?name=NAME]`: a one-container pod from Docker's config.
async fn create(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let cfg: m::ContainerCreate = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid container config: {e}")))?;
    let image = cfg
        .image
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("config has no Image"))?;
    let name = q
        .get("name")
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let default = m::CreateHostConfig::default();
    let host = cfg.host_config.as_ref().unwrap_or(&default);
    let memory_mib = host
        .memory
        .filter(|m| *m > 0)
        .map(|m| (m >> 20).max(u64::from(crate::spec::MIN_MEMORY)) as u32)
        .unwrap_or(128);
    let vcpu = host
        .nano_cpus
        .filter(|n| *n > 0)
        .map(|n| n.div_ceil(1_000_000_000) as u32)
        .unwrap_or(1);
    let envs = cfg
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
            EnvVar {
                env: k.to_string(),
                value: v.to_string(),
            }
        })
        .collect();
    let restart = match host
        .restart_policy
        .as_ref()
        .and_then(|r| r.name.as_deref())
        .unwrap_or("")
    {
        "always" | "unless-stopped" => "always",
        "on-failure" => "onFailure",
        _ => "",
    };
    let warnings = unsupported_options(&cfg);
    let mut vols = super::docker_volumes::create_volumes(&cfg)?;
    super::docker_volumes::resolve_block_volumes(engine, &mut vols.volumes).await;
    let auto_remove = host.auto_remove.unwrap_or(false);
    let portmappings = published_ports(&cfg)?;
    let network_mode = match host.network_mode.as_deref() {
        Some("none") => crate::spec::NetworkMode::None,
        _ => crate::spec::NetworkMode::User,
    };
    let log = log_options(host.log_config.as_ref())?;
    let spec = PodSpec {
        id: name.clone(),
        hostname: cfg.hostname.unwrap_or_default(),
        containers: vec![ContainerSpec {
            name: name.clone(),
            image: image.clone(),
            command: cfg.cmd.map(m::Command::args).unwrap_or_default(),
            entrypoint: cfg.entrypoint.map(m::Command::args).unwrap_or_default(),
            workdir: cfg.working_dir.unwrap_or_default(),
            envs,
            user: cfg.user.unwrap_or_default(),
            tty: cfg.tty.unwrap_or(false),
            restart_policy: restart.to_string(),
            stop_signal: cfg.stop_signal.unwrap_or_default(),
            volumes: vols.mounts,
            readonly: host.readonly_rootfs.unwrap_or(false),
            privileged: host.privileged.unwrap_or(false),
            cap_add: host.cap_add.clone().unwrap_or_default(),
            cap_drop: host.cap_drop.clone().unwrap_or_default(),
            no_new_privileges: host
                .security_opt
                .iter()
                .flatten()
                .any(|o| no_new_privileges(o)),
            ..Default::default()
        }],
        resource: Resource {
            vcpu,
            memory: memory_mib,
            ..Default::default()
        },
        auto_remove,
        labels: cfg.labels.unwrap_or_default(),
        portmappings,
        network_mode,
        dns: host.dns.clone().unwrap_or_default(),
        extra_hosts: host.extra_hosts.clone().unwrap_or_default(),
        volumes: vols.volumes,
        log,
        ..Default::default()
    };
    let pod = engine.create_pod(spec).await.map_err(|e| match e {
        crate::engine::EngineError::Image(crate::image::ImageError::NotFound(_)) => {
            ApiError::not_found(format!("No such image: {image}"))
        }
        other => other.into(),
    })?;
    let c = pod.containers().first().cloned().expect("one container");
    for w in &warnings {
        tracing::warn!(container = %c.id, "{w}");
    }
    let resp = m::Created {
        id: c.id.clone(),
        warnings,
    };
    Ok(crate::api::http::json_response(StatusCode::CREATED, &resp))
}

/// The name Docker clients see for hyperd's user network (Docker's default network name,
/// so that clients that look up `bridge` find it).
const USER_NETWORK: &str = "bridge";

/// `HostConfig.NetworkMode` of a pod.
fn network_mode(pod: &Pod) -> &'static str {
    match pod.spec.network_mode {
        crate::spec::NetworkMode::None => "none",
        crate::spec::NetworkMode::User => "bridge",
    }
}

/// Docker's state of a container.
pub(super) fn state(pod: &Pod, c: &Container) -> &'static str {
    match (*c.io.state().borrow(), pod.phase()) {
        (IoState::Running, PodPhase::Paused) => "paused",
        (IoState::Running, _) => "running",
        (IoState::NotStarted, _) => "created",
        (IoState::Exited, _) => "exited",
    }
}

/// Docker's human duration (go-units' `HumanDuration`): `3 seconds`, `About a minute`,
/// `2 hours`, ...
pub(crate) fn human_duration(secs: u64) -> String {
    let (m, h) = (secs / 60, secs / 3600);
    match () {
        _ if secs < 1 => "Less than a second".into(),
        _ if secs == 1 => "1 second".into(),
        _ if secs < 60 => format!("{secs} seconds"),
        _ if m == 1 => "About a minute".into(),
        _ if m < 60 => format!("{m} minutes"),
        _ if h == 1 => "About an hour".into(),
        _ if h < 48 => format!("{h} hours"),
        _ if h < 24 * 7 * 2 => format!("{} days", h / 24),
        _ if h < 24 * 30 * 2 => format!("{} weeks", h / 24 / 7),
        _ if h < 24 * 365 * 2 => format!("{} months", h / 24 / 30),
        _ => format!("{} years", h / 24 / 365),
    }
}

fn since(time: Option<&String>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let then = time
        .and_then(|t| crate::image::parse_rfc3339(t))
        .unwrap_or(now);
    human_duration(now.saturating_sub(then))
}

/// `docker ps`'s Status column: `Up 3 seconds`, `Up 2 minutes (Paused)`,
/// `Exited (0) 2 minutes ago`, `Created`.
fn status_line(pod: &Pod, c: &Container) -> String {
    let st = c.status.lock().unwrap().clone();
    match state(pod, c) {
        "running" => format!("Up {}", since(st.started_at.as_ref())),
        "paused" => format!("Up {} (Paused)", since(st.started_at.as_ref())),
        "created" => "Created".to_string(),
        _ => format!(
            "Exited ({}) {} ago",
            st.exit_code.unwrap_or(0),
            since(st.finished_at.as_ref())
        ),
    }
}

fn created_secs(pod: &Pod) -> u64 {
    crate::image::parse_rfc3339(&pod.created).unwrap_or(0)
}

/// `GET /containers/json[?all=1]`.
fn list(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let all = flag(&q, "all");
    let mut out = Vec::new();
    for pod in engine.pods().iter().rev() {
        for c in pod.containers() {
            let st = state(pod, &c);
            if !all && st != "running" && st != "paused" {
                continue;
            }
            out.push(m::ContainerSummary {
                id: c.id.clone(),
                names: vec![format!("/{}", c.name())],
                image: c.image_ref.clone(),
                image_id: c.image.id.clone(),
                command: c.process.args.join(" "),
                created: created_secs(pod),
                state: st,
                status: status_line(pod, &c),
                ports: pod
                    .network()
                    .map(|n| n.ports)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| m::SummaryPort {
                        ip: Some(or_any(p.host_ip)),
                        private_port: p.container_port,
                        public_port: Some(p.host_port),
                        kind: p.protocol,
                    })
                    .collect(),
                labels: pod.labels(),
                host_config: m::SummaryHostConfig {
                    network_mode: network_mode(pod).into(),
                },
                mounts: super::docker_volumes::mount_points(engine, pod, &c.spec),
            });
        }
    }
    ok_json(out)
}

fn inspect(engine: &Arc<Engine>, id: &str) -> ApiResult {
    let (pod, c) = find(engine, id)?;
    let st = c.status.lock().unwrap().clone();
    let s = state(&pod, &c);
    let zero = "0001-01-01T00:00:00Z".to_string();
    let pid = match (s, pod.vm()) {
        ("running" | "paused", Some(vm)) => vm.handle.pid(),
        _ => 0,
    };
    // Fields hyperd cannot fill yet carry Docker's empty values, so that clients
    // (docker-py, compose) find every key they read.
    let host_config = m::HostConfig {
        binds: super::docker_volumes::binds(&pod, &c.spec),
        container_id_file: String::new(),
        log_config: m::LogConfig {
            kind: "json-file".into(),
            config: pod
                .spec
                .log
                .iter()
                .flat_map(|l| {
                    let size = l.max_size.map(|n| ("max-size".to_string(), n.to_string()));
                    let files = l.max_files.map(|n| ("max-file".to_string(), n.to_string()));
                    size.into_iter().chain(files)
                })
                .collect(),
        },
        network_mode: network_mode(&pod).into(),
        port_bindings: spec_port_map(&pod.spec),
        restart_policy: m::RestartPolicy {
            name: match c.spec.restart_policy.as_str() {
                "always" => "always",
                "onFailure" => "on-failure",
                _ => "no",
            },
            maximum_retry_count: 0,
        },
        auto_remove: pod.spec.auto_remove,
        volume_driver: String::new(),
        volumes_from: None,
        cap_add: (!c.spec.cap_add.is_empty()).then(|| c.spec.cap_add.clone()),
        cap_drop: (!c.spec.cap_drop.is_empty()).then(|| c.spec.cap_drop.clone()),
        dns: pod.spec.dns.clone(),
        dns_options: vec![],
        dns_search: vec![],
        extra_hosts: (!pod.spec.extra_hosts.is_empty()).then(|| pod.spec.extra_hosts.clone()),
        privileged: c.spec.privileged,
        publish_all_ports: pod.spec.published_ports().any(|p| p.publish_all),
        readonly_rootfs: c.spec.readonly,
        security_opt: c
            .spec
            .no_new_privileges
            .then(|| vec!["no-new-privileges".to_string()]),
        tmpfs: None,
        uts_mode: String::new(),
        userns_mode: String::new(),
        shm_size: 67108864,
        runtime: "hyperd".into(),
        isolation: String::new(),
        cpu_shares: 0,
        memory: u64::from(pod.spec.resource.memory) << 20,
        nano_cpus: u64::from(pod.spec.resource.vcpu) * 1_000_000_000,
        cgroup_parent: String::new(),
        blkio_weight: 0,
        cpu_period: 0,
        cpu_quota: 0,
        cpuset_cpus: String::new(),
        devices: vec![],
        memory_reservation: 0,
        memory_swap: 0,
        oom_kill_disable: false,
        pids_limit: None,
        ulimits: None,
        mounts: None,
        init: None,
    };
    ok_json(m::ContainerInspect {
        id: c.id.clone(),
        created: pod.created.clone(),
        path: c.process.args.first().cloned().unwrap_or_default(),
        args: c.process.args.iter().skip(1).cloned().collect(),
        state: m::ContainerState {
            status: s,
            running: s == "running" || s == "paused",
            paused: s == "paused",
            restarting: c.restarting.load(std::sync::atomic::Ordering::SeqCst),
            oom_killed: false,
            dead: false,
            pid,
            exit_code: st.exit_code.unwrap_or(0),
            error: String::new(),
            started_at: st.started_at.clone().unwrap_or_else(|| zero.clone()),
            finished_at: st.finished_at.clone().unwrap_or(zero),
        },
        image: c.image.id.clone(),
        resolv_conf_path: String::new(),
        hostname_path: String::new(),
        hosts_path: String::new(),
        log_path: c.io.log_path().to_path_buf(),
        name: format!("/{}", c.name()),
        restart_count: st.restart_count,
        driver: engine.driver.describe(),
        platform: "linux".into(),
        mount_label: String::new(),
        process_label: String::new(),
        app_armor_profile: String::new(),
        exec_ids: None,
        host_config,
        graph_driver: m::GraphDriver {
            name: "erofs".into(),
            data: m::Empty::new(),
        },
        mounts: super::docker_volumes::mount_points(engine, &pod, &c.spec),
        config: m::ContainerConfig {
            hostname: pod.spec.hostname.clone(),
            domainname: String::new(),
            user: c.process.user.clone(),
            attach_stdin: false,
            attach_stdout: true,
            attach_stderr: true,
            exposed_ports: None,
            tty: c.process.tty,
            open_stdin: c.process.tty,
            stdin_once: false,
            env: c.process.env.clone(),
            cmd: c.spec.command.clone(),
            entrypoint: c.spec.entrypoint.clone(),
            image: c.image_ref.clone(),
            volumes: None,
            working_dir: c.process.workdir.clone(),
            on_build: None,
            labels: pod.labels(),
            stop_signal: c.stop_signal().to_string(),
        },
        network_settings: {
            let net = pod.network();
            let (ip, prefix, gateway, mac) = net
                .as_ref()
                .map(|n| {
                    (
                        n.ip_address.clone(),
                        u32::from(n.prefix_len),
                        n.gateway.clone(),
                        n.mac_address.clone(),
                    )
                })
                .unwrap_or_default();
            let mut networks = std::collections::BTreeMap::new();
            if net.is_some() {
                networks.insert(
                    USER_NETWORK.to_string(),
                    m::EndpointSettings {
                        network_id: USER_NETWORK.into(),
                        ip_address: ip.clone(),
                        ip_prefix_len: prefix,
                        gateway: gateway.clone(),
                        mac_address: mac.clone(),
                    },
                );
            }
            m::NetworkSettings {
                bridge: String::new(),
                sandbox_id: String::new(),
                sandbox_key: String::new(),
                ports: port_map(&pod),
                ip_address: ip,
                ip_prefix_len: prefix,
                gateway,
                mac_address: mac,
                networks,
            }
        },
        hyper_pod_id: pod.id.clone(),
    })
}

pub(super) fn no_content() -> ApiResult {
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(crate::api::http::full(""))
        .expect("valid response"))
}

pub(super) fn not_modified() -> ApiResult {
    Ok(Response::builder()
        .status(StatusCode::NOT_MODIFIED)
        .body(crate::api::http::full(""))
        .expect("valid response"))
}

async fn start(engine: &Arc<Engine>, id: &str) -> ApiResult {
    let (pod, c) = find(engine, id)?;
    match state(&pod, &c) {
        "running" | "paused" => Ok(Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .body(crate::api::http::full(""))
            .expect("valid response")),
        _ => {
            engine.start_pod(&pod.id, None).await?;
            no_content()
        }
    }
}

async fn kill(engine: &Arc<Engine>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let (_, c) = find(engine, id)?;
    let q = query(req);
    engine
        .kill_container(&c.id, q.get("signal").map(String::as_str).unwrap_or("KILL"))
        .await?;
    no_content()
}

/// `POST /containers/{id}/wait[?condition=not-running|next-exit|removed]`: the headers
/// go out at once (clients wait for them before starting the container), the body
/// `{"StatusCode": n}` when the condition holds.
async fn wait(engine: &Arc<Engine>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let (pod, c) = find(engine, id)?;
    let condition = query(req)
        .get("condition")
        .cloned()
        .unwrap_or_else(|| "not-running".into());
    if !matches!(condition.as_str(), "not-running" | "next-exit" | "removed") {
        return Err(ApiError::bad_request(format!(
            "invalid condition {condition:?}"
        )));
    }
    let mut state = c.io.state();
    // "next-exit" waits for an exit that has not happened yet.
    let skip_current = condition != "not-running" && *state.borrow() == IoState::Exited;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let engine = engine.clone();
    tokio::spawn(async move {
        if skip_current {
            let _ = state.changed().await;
        }
        let _ = match condition.as_str() {
            "not-running" => state.wait_for(|s| *s != IoState::Running).await.map(|_| ()),
            _ => state.wait_for(|s| *s == IoState::Exited).await.map(|_| ()),
        };
        if condition == "removed" {
            while engine.pod(&pod.id).is_ok() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        let code = c.status.lock().unwrap().exit_code.unwrap_or(0);
        let reply = m::WaitReply {
            status_code: code,
            error: None,
        };
        let mut line = serde_json::to_vec(&reply).unwrap_or_default();
        line.push(b'\n');
        let _ = tx.send(bytes::Bytes::from(line)).await;
    });
    Ok(crate::api::http::stream_chunks(rx, "application/json"))
}

async fn logs(engine: &Arc<Engine>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let (_, c) = find(engine, id)?;
    crate::api::containers::logs_of(&c, &query(req)).await
}

async fn attach(engine: &Arc<Engine>, id: &str, mut req: Request<Incoming>) -> ApiResult {
    let (pod, c) = find(engine, id)?;
    if !wants_upgrade(&req) {
        return Err(ApiError::bad_request("attach needs Upgrade: tcp"));
    }
    let q = query(&req);
    let session = Session::from_query(&q, pod, c.io.clone(), c.stream, c.process.tty);
    tokio::spawn(session.begin(hyper::upgrade::on(&mut req)));
    Ok(upgrade_response())
}

async fn resize(
    engine: &Arc<Engine>,
    container: &str,
    exec: Option<&str>,
    req: &Request<Incoming>,
) -> ApiResult {
    let q = query(req);
    let num = |k: &str| q.get(k).and_then(|v| v.parse::<u16>().ok()).unwrap_or(0);
    let id = match exec {
        Some(_) => container.to_string(),
        None => find(engine, container)?.1.id.clone(),
    };
    match engine.resize(&id, exec, num("h"), num("w")).await {
        Ok(()) | Err(crate::engine::EngineError::WrongState(_)) => ok_json(m::Empty::new()),
        Err(e) => Err(e.into()),
    }
}

async fn remove(engine: &Arc<Engine>, id: &str, req: &Request<Incoming>) -> ApiResult {
    let (pod, c) = find(engine, id)?;
    let q = query(req);
    if matches!(state(&pod, &c), "running" | "paused") && !flag(&q, "force") {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("You cannot remove a running container {}. Stop the container before attempting removal or force remove", c.id)));
    }
    engine.remove_pod(&pod.id).await?;
    no_content()
}

async fn exec_create(engine: &Arc<Engine>, id: &str, req: Request<Incoming>) -> ApiResult {
    let (_, c) = find(engine, id)?;
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let cfg: m::ExecCreate = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid exec config: {e}")))?;
    let attach_stdin = cfg.attach_stdin.unwrap_or(false);
    let request = crate::engine::exec::ExecRequest {
        command: cfg.cmd.map(m::Command::args).unwrap_or_default(),
        tty: cfg.tty.unwrap_or(false),
        env: cfg
            .env
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.contains('='))
            .collect(),
        workdir: cfg.working_dir.unwrap_or_default(),
        user: cfg.user.unwrap_or_default(),
    };
    let (_, exec) = engine.create_exec(&c.id, request)?;
    if attach_stdin {
        exec.io
            .stdin_wanted
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    Ok(crate::api::http::json_response(
        StatusCode::CREATED,
        &m::ExecCreated {
            id: exec.id.clone(),
        },
    ))
}

/// `POST /exec/{id}/start` with `{"Detach": bool, "Tty": bool}`.
async fn exec_start(engine: &Arc<Engine>, id: &str, mut req: Request<Incoming>) -> ApiResult {
    let upgrade = wants_upgrade(&req);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let cfg: m::ExecStart = if body.iter().all(u8::is_ascii_whitespace) {
        m::ExecStart::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid exec start: {e}")))?
    };
    let (pod, exec) = engine.exec(id)?;
    if cfg.detach.unwrap_or(false) || !upgrade {
        engine.start_exec(&pod, &exec).await?;
        return ok_json(m::Empty::new());
    }
    let stdin = exec
        .io
        .stdin_wanted
        .load(std::sync::atomic::Ordering::SeqCst);
    let session = Session {
        pod: pod.clone(),
        io: exec.io.clone(),
        stream: exec.stream,
        tty: exec.process.tty,
        stdin,
        stdout: true,
        stderr: true,
    };
    engine.exec_startable(&pod, &exec)?;
    let start = start_exec_later(engine, &pod, &exec);
    tokio::spawn(session.begin_then(on_upgrade, Some(start)));
    Ok(upgrade_response())
}

fn exec_inspect(engine: &Arc<Engine>, id: &str) -> ApiResult {
    let (_, e) = engine.exec(id)?;
    let st = e.status.lock().unwrap().clone();
    let running = *e.io.state().borrow() == IoState::Running;
    ok_json(m::ExecInspect {
        id: e.id.clone(),
        running,
        exit_code: (!running).then(|| st.exit_code.unwrap_or(0)),
        process_config: m::ProcessConfig {
            tty: e.process.tty,
            entrypoint: e.process.args.first().cloned(),
            arguments: e.process.args.iter().skip(1).cloned().collect(),
            user: e.process.user.clone(),
        },
        open_stdin: e.io.stdin_wanted.load(std::sync::atomic::Ordering::SeqCst),
        open_stdout: true,
        open_stderr: true,
        container_id: e.container.id.clone(),
        pid: 0,
    })
}
