//! `GET /version` and `GET /info` (hyperd's fields and the Docker fields its clients
//! read).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Version {
    pub version: String,
    pub api_version: String,
    #[serde(rename = "MinAPIVersion")]
    pub min_api_version: String,
    pub git_commit: String,
    pub go_version: String,
    pub os: String,
    pub arch: String,
    pub kernel_version: String,
    pub components: Vec<Component>,
    pub platform: Platform,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Component {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Platform {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Info {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub version: String,
    pub server_version: String,
    pub api_version: String,
    /// `hyper-vmm`, `qemu-kvm` or `qemu-tcg`.
    pub driver: String,
    pub containers_running: usize,
    pub containers_paused: usize,
    pub containers_stopped: usize,
    #[serde(rename = "OSType")]
    pub os_type: String,
    pub architecture: String,
    pub default_runtime: String,
    pub runtimes: BTreeMap<String, Runtime>,
    pub security_options: Vec<String>,
    pub swarm: Swarm,
    pub logging_driver: String,
    pub cgroup_driver: String,
    pub index_server_address: String,
    pub registry_config: RegistryConfig,
    pub pods: usize,
    pub running_pods: usize,
    pub pool: PoolInfo,
    pub containers: usize,
    pub images: usize,
    pub docker_root_dir: PathBuf,
    pub guest_kernel: PathBuf,
    pub guest_initrd: PathBuf,
    pub kernel_version: String,
    pub operating_system: String,
    pub mem_total: u64,
    #[serde(rename = "NCPU")]
    pub ncpu: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Runtime {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Swarm {
    pub local_node_state: String,
    pub control_available: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct RegistryConfig {
    #[serde(rename = "InsecureRegistryCIDRs")]
    pub insecure_registry_cidrs: Vec<String>,
    pub index_configs: BTreeMap<String, String>,
    pub mirrors: Vec<String>,
}

/// The warm pool: the size it keeps, its target and what is idle now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct PoolInfo {
    pub target: usize,
    pub max_age_seconds: u64,
    pub sizes: Vec<PoolSize>,
    #[serde(rename = "IdleVMs")]
    pub idle_vms: usize,
    #[serde(rename = "IdleMemoryMiB")]
    pub idle_memory_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct PoolSize {
    pub vcpus: u32,
    #[serde(rename = "MemoryMiB")]
    pub memory_mib: u32,
    pub idle: usize,
    pub target: usize,
}
