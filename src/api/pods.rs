//! Pod routes: `/pod/create|start|stop|info`, `DELETE /pod`, `/list`, `/exitcode`.
use super::http::{ok_json, param, query, read_body, ApiError, ApiResult, MAX_JSON_BODY};
use crate::engine::{Container, Engine, Pod};
use crate::spec::PodSpec;
use hyper::body::Incoming;
use hyper::Request;
use hyperd_api::pods::{
    ContainerBrief, CpuStats, CpuUsage, ExitCodeReply, LabelsReply, ListReply, MemoryStats,
    PodContainerStatus, PodInfo, PodReply, PodStats, PodStatus, Running, Terminated,
};
use std::sync::Arc;

fn reply(id: &str) -> ApiResult {
    ok_json(PodReply::ok(id))
}

/// `POST /pod/create`: the pod JSON as the body, or (hyperd's older form) as `podArgs`.
pub(crate) async fn create(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let json = match q.get("podArgs") {
        Some(args) if body.is_empty() => args.as_bytes().to_vec(),
        _ => body.to_vec(),
    };
    if json.is_empty() {
        return Err(ApiError::bad_request("missing pod spec (JSON body)"));
    }
    let mut spec = PodSpec::parse(&json).map_err(|e| ApiError::bad_request(e.0))?;
    spec.auto_remove |= super::http::flag(&q, "autoremove");
    let pod = engine.create_pod(spec).await?;
    reply(&pod.id)
}

pub(crate) async fn start(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let id = param(&q, &["podId", "podName"])?;
    let pod = engine
        .start_pod(id, q.get("vmId").map(String::as_str))
        .await?;
    reply(&pod.id)
}

/// `POST /pod/stop?podId=ID[&time=SECONDS][&stopVM=no]`: each container gets its stop
/// signal, then SIGKILL after `time` (default 10, as Docker); the VM powers off after,
/// unless `stopVM=no` keeps it for the pod's next start.
pub(crate) async fn stop(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let id = param(&q, &["podId", "podName"])?;
    let grace = crate::api::containers::grace_of(&q)?;
    let keep_vm = q
        .get("stopVM")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "no" | "false" | "0"));
    let pod = engine.stop_pod_keeping_vm(id, grace, keep_vm).await?;
    reply(&pod.id)
}

pub(crate) async fn remove(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let id = param(&q, &["podId", "podName"])?;
    let pod = engine.pod(id)?;
    engine.remove_pod(&pod.id).await?;
    reply(&pod.id)
}

fn container_status(c: &Container) -> PodContainerStatus {
    let st = c.status.lock().unwrap().clone();
    PodContainerStatus {
        container_id: c.id.clone(),
        name: c.name().clone(),
        image: c.image_ref.clone(),
        image_id: c.image.id.clone(),
        phase: c.phase().to_string(),
        restart_count: st.restart_count,
        running: Running {
            started_at: st.started_at,
        },
        terminated: Terminated {
            exit_code: st.exit_code,
            started_at: None,
            finished_at: st.finished_at,
        },
    }
}

pub(crate) fn pod_info(pod: &Pod) -> PodInfo {
    let vm = pod.vm();
    PodInfo {
        kind: "Pod".into(),
        api_version: "v1".into(),
        pod_id: pod.id.clone(),
        pod_name: pod.name.clone(),
        vm: vm.as_ref().map(|v| v.id.clone()).unwrap_or_default(),
        vm_pid: vm.as_ref().map(|v| v.handle.pid()),
        created_at: pod.created.clone(),
        start_record: pod.start_record(),
        labels: pod.labels(),
        spec: pod.spec.clone(),
        status: PodStatus {
            phase: pod.phase().as_str().to_string(),
            container_status: pod
                .containers()
                .iter()
                .map(|c| container_status(c))
                .collect(),
        },
        network: pod.network(),
    }
}

/// `GET /pod/portmappings?podName=ID`: the ports published to a pod (empty while it has
/// no VM).
pub(crate) fn portmappings(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    portmappings_of(engine, param(&q, &["podName", "podId"])?)
}

/// `GET /pod/{id}/portmappings`: as `GET /pod/portmappings?podName=ID`.
pub(crate) fn portmappings_of(engine: &Arc<Engine>, id: &str) -> ApiResult {
    let pod = engine.pod(id)?;
    ok_json(pod.network().map(|n| n.ports).unwrap_or_default())
}

/// `PUT /pod/{id}/portmappings/add|delete` with a JSON list of ports
/// (`[{"containerPort":80,"hostPort":8080,"protocol":"tcp","hostIP":"127.0.0.1"}]`):
/// publishes them on the running pod, or stops publishing ones added so. Answers the
/// pod's published ports.
pub(crate) async fn change_portmappings(
    engine: &Arc<Engine>,
    id: &str,
    add: bool,
    req: Request<Incoming>,
) -> ApiResult {
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let ports: Vec<crate::spec::Port> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid port list: {e}")))?;
    ok_json(engine.change_ports(id, &ports, add).await?)
}

pub(crate) fn info(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let id = param(&q, &["podName", "podId"])?;
    let pod = engine.pod(id)?;
    ok_json(pod_info(&pod))
}

/// `GET /list?item=pod|container|vm[&pod=ID][&vm=ID]`, in hyperd's colon-joined format.
pub(crate) fn list(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let item = q.get("item").map(String::as_str).unwrap_or("pod");
    let pods: Vec<_> = engine
        .pods()
        .into_iter()
        .filter(|p| {
            q.get("pod")
                .is_none_or(|k| k.is_empty() || &p.id == k || &p.name == k)
        })
        .filter(|p| {
            q.get("vm")
                .is_none_or(|k| k.is_empty() || p.vm().is_some_and(|v| &v.id == k))
        })
        .collect();
    let vm_of = |p: &Pod| p.vm().map(|v| v.id.clone()).unwrap_or_default();
    let mut reply = ListReply {
        item: item.to_string(),
        pod_data: None,
        c_data: None,
        vm_data: None,
    };
    match item {
        "pod" => {
            reply.pod_data = Some(
                pods.iter()
                    .map(|p| format!("{}:{}:{}:{}", p.id, p.name, vm_of(p), p.phase().as_str()))
                    .collect(),
            )
        }
        "container" => {
            reply.c_data = Some(
                pods.iter()
                    .flat_map(|p| {
                        p.containers()
                            .into_iter()
                            .map(move |c| format!("{}:{}:{}:{}", c.id, c.name(), p.id, c.phase()))
                    })
                    .collect(),
            )
        }
        "vm" => {
            reply.vm_data = Some(
                pods.iter()
                    .filter_map(|p| {
                        p.vm()
                            .map(|v| format!("{}:{}:{}", v.id, p.id, "associated"))
                    })
                    .chain(
                        engine
                            .idle_vms()
                            .into_iter()
                            .filter(|_| !q.contains_key("pod"))
                            .map(|(id, _, _)| format!("{id}::idle")),
                    )
                    .collect(),
            )
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown item {other:?} (pod, container or vm)"
            )))
        }
    }
    ok_json(reply)
}

/// `GET /exitcode?container=ID`: `{"ExitCode": n}` once the container has exited.
pub(crate) fn exitcode(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let (code, what) = match q.get("exec").filter(|e| !e.is_empty()) {
        Some(exec) => {
            let (_, e) = engine.exec(exec)?;
            let code = e.status.lock().unwrap().exit_code;
            (code, format!("exec {exec}"))
        }
        None => {
            let (_, c) = engine.container(param(&q, &["container"])?)?;
            let code = c.status.lock().unwrap().exit_code;
            (code, format!("container {}", c.name()))
        }
    };
    match code {
        Some(code) => ok_json(ExitCodeReply { exit_code: code }),
        None => Err(ApiError::new(
            hyper::StatusCode::CONFLICT,
            format!("{what} has not exited"),
        )),
    }
}

/// `POST /pod/labels?podId=ID&labels={"k":"v"}[&override=yes]` (labels also as the body).
pub(crate) async fn labels(engine: &Arc<Engine>, req: Request<Incoming>) -> ApiResult {
    let q = query(&req);
    let id = param(&q, &["podId", "podName"])?.to_string();
    let overwrite = super::http::flag(&q, "override");
    let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
    let raw = match q.get("labels") {
        Some(l) if body.is_empty() => l.as_bytes().to_vec(),
        _ => body.to_vec(),
    };
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&raw).map_err(|e| {
            ApiError::bad_request(format!("labels must be a JSON object of strings: {e}"))
        })?;
    let pod = engine.label_pod(&id, labels, overwrite).await?;
    let labels = pod.labels();
    ok_json(LabelsReply {
        id: pod.id.clone(),
        labels,
    })
}

/// `GET /pod/stats?podId=ID`: the VM's CPU and memory use.
pub(crate) async fn stats(engine: &Arc<Engine>, req: &Request<Incoming>) -> ApiResult {
    let q = query(req);
    let (pod, s) = engine.pod_stats(param(&q, &["podId", "podName"])?).await?;
    ok_json(PodStats {
        pod_id: pod.id.clone(),
        timestamp: crate::engine::io::chrono_now(),
        cpu: CpuStats {
            usage: CpuUsage { total: s.cpu_ns },
        },
        memory: MemoryStats {
            usage: s.memory_total.saturating_sub(s.memory_available),
            available: s.memory_available,
            limit: s.memory_total,
        },
        load: s.load1,
        processes: s.processes,
        containers: pod
            .containers()
            .iter()
            .map(|c| ContainerBrief {
                container_id: c.id.clone(),
                name: c.name().clone(),
                phase: c.phase().to_string(),
            })
            .collect(),
    })
}
