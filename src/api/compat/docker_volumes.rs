//! Docker's volumes: a create's `Binds`, `Mounts` and `Volumes` as pod volumes, inspect's
//! `Mounts`, and the `/volumes` API over hyperd's named volumes.
use super::docker::no_content;
use super::docker_models as m;
use crate::api::http::{ok_json, query, read_body, ApiError, ApiResult, MAX_JSON_BODY};
use crate::engine::volumes::{NamedVolume, VolumeDriver};
use crate::engine::{Engine, Pod};
use crate::spec::{Volume, VolumeKind, VolumeMount};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use std::sync::Arc;

/// A create's volumes: the pod's volumes and the container's mounts of them.
pub(super) struct CreateVolumes {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
}

/// One mount as a create states it.
struct Wanted {
    /// `bind`, `volume` (named; an empty name is an anonymous volume).
    kind: &'static str,
    source: String,
    target: String,
    read_only: bool,
}

/// `-v SRC:DST[:OPTS]`, `-v NAME:DST`, `-v DST` (anonymous).
fn parse_bind(b: &str) -> Result<Wanted, ApiError> {
    let (v, mnt) =
        VolumeMount::parse_volume_flag(b, String::new()).map_err(|e| ApiError::bad_request(e.0))?;
    Ok(Wanted {
        kind: if v.driver == "local" || v.source.is_empty() {
            "volume"
        } else {
            "bind"
        },
        source: v.source,
        target: mnt.path,
        read_only: mnt.read_only,
    })
}

/// The pod volumes of a create's `HostConfig.Binds`, `HostConfig.Mounts` and `Volumes`.
/// A bind's missing host directory is created, as Docker does for `-v`.
pub(super) fn create_volumes(cfg: &m::ContainerCreate) -> Result<CreateVolumes, ApiError> {
    let default = m::CreateHostConfig::default();
    let host = cfg.host_config.as_ref().unwrap_or(&default);
    let mut wanted = Vec::new();
    for b in host.binds.iter().flatten() {
        wanted.push(parse_bind(b)?);
    }
    for mnt in host.mounts.iter().flatten() {
        let kind = match mnt.kind.as_str() {
            "bind" => "bind",
            "volume" => "volume",
            "tmpfs" => "tmpfs",
            other => {
                return Err(ApiError::bad_request(format!(
                    "mount type {other:?} is not supported (bind, volume)"
                )))
            }
        };
        if kind == "bind" && !mnt.source.starts_with('/') {
            return Err(ApiError::bad_request(format!(
                "bind source {:?} must be an absolute path",
                mnt.source
            )));
        }
        wanted.push(Wanted {
            kind,
            source: mnt.source.clone(),
            target: mnt.target.clone(),
            read_only: mnt.read_only,
        });
    }
    // `--tmpfs PATH[:OPTIONS]`: a tmpfs in the guest's memory (its options are the
    // kernel's defaults but for mode 1777).
    for target in host.tmpfs.iter().flat_map(|t| t.keys()) {
        wanted.push(Wanted {
            kind: "tmpfs",
            source: String::new(),
            target: target.clone(),
            read_only: false,
        });
    }
    for target in cfg.volumes.iter().flat_map(|v| v.keys()) {
        if !wanted.iter().any(|w| w.target == *target) {
            wanted.push(Wanted {
                kind: "volume",
                source: String::new(),
                target: target.clone(),
                read_only: false,
            });
        }
    }
    let mut out = CreateVolumes {
        volumes: Vec::new(),
        mounts: Vec::new(),
    };
    for (i, w) in wanted.into_iter().enumerate() {
        let name = format!("vol{i}");
        let (source, driver) = match w.kind {
            "bind" => {
                if !std::path::Path::new(&w.source).exists()
                    && !["/proc", "/sys", "/dev"]
                        .iter()
                        .any(|f| std::path::Path::new(&w.source).starts_with(f))
                {
                    std::fs::create_dir_all(&w.source).map_err(|e| {
                        ApiError::bad_request(format!("bind source {}: {e}", w.source))
                    })?;
                }
                (w.source, "vfs")
            }
            "tmpfs" => (String::new(), "tmpfs"),
            // An anonymous volume: the pod's own, removed with it.
            _ if w.source.is_empty() => (String::new(), ""),
            _ => (w.source, "local"),
        };
        out.volumes.push(Volume {
            name: name.clone(),
            source,
            driver: driver.into(),
            read_only: false,
        });
        out.mounts.push(VolumeMount {
            volume: name,
            path: w.target,
            read_only: w.read_only,
        });
    }
    Ok(out)
}

/// Named volumes of a create that exist as block volumes get the block driver (`-v
/// NAME:/path` names either kind).
pub(super) async fn resolve_block_volumes(engine: &Engine, volumes: &mut [Volume]) {
    for v in volumes.iter_mut().filter(|v| v.driver == "local") {
        if engine
            .volume(&v.source)
            .await
            .is_ok_and(|n| n.driver == "block")
        {
            v.driver = "block".into();
        }
    }
}

/// inspect's `Mounts` of a container.
pub(super) fn mount_points(
    engine: &Engine,
    pod: &Pod,
    c: &crate::spec::ContainerSpec,
) -> Vec<m::MountPoint> {
    c.volumes
        .iter()
        .filter_map(|mnt| {
            let v = pod.spec.volumes.iter().find(|v| v.name == mnt.volume)?;
            let rw = !(mnt.read_only || v.read_only);
            let (kind, name, source) = match v.kind().ok()? {
                VolumeKind::HostPath => ("bind", None, v.source.clone()),
                VolumeKind::PodLocal => (
                    "volume",
                    Some(v.name.clone()),
                    pod.dir.join("volumes").join(&v.name).display().to_string(),
                ),
                VolumeKind::Tmpfs => ("tmpfs", None, String::new()),
                kind @ (VolumeKind::Named | VolumeKind::Block) => (
                    "volume",
                    Some(v.volume_name().to_string()),
                    engine
                        .volume_path(v.volume_name(), kind == VolumeKind::Block)
                        .display()
                        .to_string(),
                ),
            };
            Some(m::MountPoint {
                kind: kind.into(),
                driver: name.as_ref().map(|_| "local".to_string()),
                name,
                source,
                destination: mnt.path.clone(),
                mode: if rw { String::new() } else { "ro".into() },
                rw,
                propagation: if kind == "bind" {
                    "rprivate".into()
                } else {
                    String::new()
                },
            })
        })
        .collect()
}

/// inspect's `HostConfig.Binds`: the container's mounts in `-v` form.
pub(super) fn binds(pod: &Pod, c: &crate::spec::ContainerSpec) -> Option<Vec<String>> {
    let v: Vec<String> = c
        .volumes
        .iter()
        .filter_map(|mnt| {
            let v = pod.spec.volumes.iter().find(|v| v.name == mnt.volume)?;
            if v.source.is_empty() {
                return None;
            }
            let ro = if mnt.read_only || v.read_only {
                ":ro"
            } else {
                ""
            };
            Some(format!("{}:{}{ro}", v.source, mnt.path))
        })
        .collect();
    (!v.is_empty()).then_some(v)
}

fn volume_json(v: NamedVolume) -> m::VolumeInfo {
    m::VolumeInfo {
        name: v.name,
        driver: v.driver,
        mountpoint: v.mountpoint.display().to_string(),
        created_at: v.created_at,
        labels: v.labels,
        scope: "local".into(),
        options: v
            .size_mib
            .map(|s| [("size".to_string(), format!("{s}M"))].into())
            .unwrap_or_default(),
    }
}

/// A size as Docker's options write it: bytes, or a number with `k`, `m`, `g`, `t`
/// (optionally followed by `b`/`B`, `i`); in MiB, at least 64.
fn size_mib(s: &str) -> Result<u32, ApiError> {
    let bad = || ApiError::bad_request(format!("invalid size {s:?} (like 512M or 10G)"));
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches('b').trim_end_matches('i');
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let bytes = match unit {
        "" => n,
        "k" => n << 10,
        "m" => n << 20,
        "g" => n << 30,
        "t" => n << 40,
        _ => return Err(bad()),
    };
    let mib = bytes >> 20;
    if !(u64::from(crate::spec::MIN_SCRATCH_MIB)..=u64::from(crate::spec::MAX_SCRATCH_MIB))
        .contains(&mib)
    {
        return Err(ApiError::bad_request(format!(
            "size {s:?} is out of range (64M to 1T)"
        )));
    }
    Ok(mib as u32)
}

/// `/volumes…` routes; `None` when the path is not one of them.
pub(super) async fn route(
    engine: &Arc<Engine>,
    method: &str,
    seg: &[&str],
    req: Request<Incoming>,
) -> Option<ApiResult> {
    Some(match (method, seg) {
        ("GET", ["volumes"]) => list(engine).await,
        ("POST", ["volumes", "create"]) => create(engine, req).await,
        ("POST", ["volumes", "prune"]) => prune(engine).await,
        ("GET", ["volumes", name]) => match engine.volume(name).await {
            Ok(v) => ok_json(volume_json(v)),
            Err(e) => Err(e.into()),
        },
        ("DELETE", ["volumes", name]) => {
            let force = query(&req)
                .get("force")
                .is_some_and(|f| f == "1" || f == "true");
            match engine.remove_volume(name).await {
                Ok(()) => no_content(),
                Err(crate::engine::EngineError::NoSuch(_)) if force => no_content(),
                Err(e) => Err(e.into()),
            }
        }
        _ => return None,
    })
}

async fn list(engine: &Arc<Engine>) -> ApiResult {
    let volumes = engine.volumes().await?;
    ok_json(m::VolumeList {
        volumes: volumes.into_iter().map(volume_json).collect(),
        warnings: Vec::new(),
    })
}

async fn create(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let c: m::VolumeCreate = if body.is_empty() {
        m::VolumeCreate::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid volume config: {e}")))?
    };
    let driver = match c.driver.as_str() {
        "" | "local" => VolumeDriver::Local,
        "block" => VolumeDriver::Block {
            size_mib: match c.driver_opts.get("size") {
                Some(s) => size_mib(s)?,
                None => crate::engine::volumes::DEFAULT_BLOCK_MIB,
            },
        },
        other => {
            return Err(ApiError::bad_request(format!(
                "volume driver {other:?} is not supported (local, block)"
            )))
        }
    };
    let name = if c.name.is_empty() {
        crate::ids::random_hex(16)
    } else {
        c.name
    };
    let v = engine.create_volume(&name, c.labels, driver).await?;
    Ok(crate::api::http::json_response(
        StatusCode::CREATED,
        &volume_json(v),
    ))
}

async fn prune(engine: &Arc<Engine>) -> ApiResult {
    let deleted = engine.prune_volumes().await?;
    ok_json(m::VolumePrune {
        volumes_deleted: deleted,
        space_reclaimed: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_forms() {
        let w = parse_bind("/srv/data:/data:ro,z").unwrap();
        assert_eq!(
            (w.kind, w.source.as_str(), w.target.as_str(), w.read_only),
            ("bind", "/srv/data", "/data", true)
        );
        let w = parse_bind("db:/var/lib/db").unwrap();
        assert_eq!((w.kind, w.source.as_str()), ("volume", "db"));
        assert_eq!(size_mib("10G").unwrap(), 10240);
        assert_eq!(size_mib("512MiB").unwrap(), 512);
        assert!(size_mib("1k").is_err() && size_mib("x").is_err());
        let w = parse_bind("/cache").unwrap();
        assert_eq!(
            (w.kind, w.source.as_str(), w.target.as_str()),
            ("volume", "", "/cache")
        );
        for bad in ["a:b:c:d", "/x:", "/x:/y:bogus"] {
            assert!(parse_bind(bad).is_err(), "{bad}");
        }
    }
}
