//! `/_ping`, `/version`, `/info`.
use super::http::{full, ok_json, ApiResult};
use crate::engine::Engine;
use hyper::Response;
use std::sync::Arc;

pub fn ping() -> ApiResult {
    Ok(Response::builder()
        .header("Content-Type", "text/plain")
        .body(full("OK"))
        .expect("valid response"))
}

pub fn version() -> ApiResult {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    ok_json(serde_json::json!({
        "Version": crate::VERSION,
        "ApiVersion": crate::API_VERSION,
        "MinAPIVersion": "1.24",
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": std::env::consts::ARCH,
        "KernelVersion": kernel.trim(),
        "Components": [{ "Name": "hyperd", "Version": crate::VERSION }],
        "Platform": { "Name": "hyperd" },
    }))
}

pub fn info(engine: &Arc<Engine>) -> ApiResult {
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
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    ok_json(serde_json::json!({
        "ID": hostname.trim(),
        "Name": hostname.trim(),
        "Version": crate::VERSION,
        "ServerVersion": crate::VERSION,
        "ApiVersion": crate::API_VERSION,
        "Driver": engine.driver.describe(),
        "ContainersRunning": c_running,
        "ContainersPaused": c_paused,
        "ContainersStopped": containers.saturating_sub(c_running + c_paused),
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "DefaultRuntime": "hyperd",
        "Runtimes": { "hyperd": { "path": "hyper-vmm" } },
        "SecurityOptions": ["name=micro-vm"],
        "Swarm": { "LocalNodeState": "inactive", "ControlAvailable": false },
        "LoggingDriver": "json-file",
        "CgroupDriver": "none",
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": { "InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {}, "Mirrors": [] },
        "Pods": pods.len(),
        "RunningPods": running,
        "Pool": engine.pool_info(),
        "Containers": containers,
        "Images": engine.images.list().map(|l| l.len()).unwrap_or(0),
        "DockerRootDir": engine.cfg.root,
        "GuestKernel": engine.cfg.kernel,
        "GuestInitrd": engine.cfg.initrd,
        "KernelVersion": kernel.trim(),
        "OperatingSystem": "linux",
        "MemTotal": mem_total,
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }))
}
