//! `/_ping`, `/version`, `/info`.
use super::http::{full, ok_json, ApiResult};
use crate::engine::Engine;
use hyper::Response;
use hyperd_api::system::{Component, Info, Platform, RegistryConfig, Runtime, Swarm, Version};
use std::sync::Arc;

pub(crate) fn ping() -> ApiResult {
    Ok(Response::builder()
        .header("Content-Type", "text/plain")
        .body(full("OK"))
        .expect("valid response"))
}

pub(crate) fn version() -> ApiResult {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    ok_json(Version {
        version: crate::VERSION.into(),
        api_version: crate::API_VERSION.into(),
        min_api_version: "1.24".into(),
        git_commit: String::new(),
        go_version: String::new(),
        os: "linux".into(),
        arch: std::env::consts::ARCH.into(),
        kernel_version: kernel.trim().into(),
        components: vec![Component {
            name: "hyperd".into(),
            version: crate::VERSION.into(),
        }],
        platform: Platform {
            name: "hyperd".into(),
        },
    })
}

pub(crate) fn info(engine: &Arc<Engine>) -> ApiResult {
    let pods = engine.pods();
    let containers: usize = pods.iter().map(|p| p.containers().len()).sum();
    let running = pods.iter().filter(|p| p.vm().is_some()).count();
    let count = |phase: crate::engine::PodPhase| {
        pods.iter()
            .filter(|p| p.phase() == phase)
            .map(|p| p.containers().len())
            .sum::<usize>()
    };
    let (c_running, c_paused) = (
        count(crate::engine::PodPhase::Running),
        count(crate::engine::PodPhase::Paused),
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    ok_json(Info {
        id: hostname.trim().into(),
        name: hostname.trim().into(),
        version: crate::VERSION.into(),
        server_version: crate::VERSION.into(),
        api_version: crate::API_VERSION.into(),
        driver: engine.driver.describe(),
        containers_running: c_running,
        containers_paused: c_paused,
        containers_stopped: containers.saturating_sub(c_running + c_paused),
        os_type: "linux".into(),
        architecture: std::env::consts::ARCH.into(),
        default_runtime: "hyperd".into(),
        runtimes: [(
            "hyperd".to_string(),
            Runtime {
                path: "hyper-vmm".into(),
            },
        )]
        .into(),
        security_options: vec!["name=micro-vm".into()],
        swarm: Swarm {
            local_node_state: "inactive".into(),
            control_available: false,
        },
        logging_driver: "json-file".into(),
        cgroup_driver: "none".into(),
        index_server_address: "https://index.docker.io/v1/".into(),
        registry_config: RegistryConfig {
            insecure_registry_cidrs: vec!["127.0.0.0/8".into()],
            index_configs: Default::default(),
            mirrors: vec![],
        },
        pods: pods.len(),
        running_pods: running,
        pool: engine.pool_info(),
        containers,
        images: engine.images.list().map(|l| l.len()).unwrap_or(0),
        docker_root_dir: engine.cfg.root.clone(),
        guest_kernel: engine.cfg.kernel.clone(),
        guest_initrd: engine.cfg.initrd.clone(),
        kernel_version: kernel.trim().into(),
        operating_system: "linux".into(),
        mem_total,
        ncpu: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}
