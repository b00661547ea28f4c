//! Docker Engine API 1.41's shapes, as far as hyperd answers them: what the `docker` CLI,
//! docker-py and compose read. Fields hyperd cannot fill carry Docker's empty values
//! (`null`, `""`, `{}`), so that clients find every key they look up.
use serde::Serialize;
use std::collections::BTreeMap;

/// `{}`.
pub(crate) type Empty = BTreeMap<String, String>;

/// `GET /images/json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ImageSummary {
    pub id: String,
    pub parent_id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub created: u64,
    pub size: u64,
    pub virtual_size: u64,
    pub shared_size: i64,
    pub labels: Empty,
    pub containers: usize,
}

/// `GET /images/{name}/json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ImageInspect {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub parent: String,
    pub created: String,
    pub size: u64,
    pub virtual_size: u64,
    pub os: String,
    pub architecture: String,
    pub config: ImageConfig,
    #[serde(rename = "RootFS")]
    pub root_fs: RootFs,
    pub metadata: ImageMetadata,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ImageMetadata {
    pub last_tag_time: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ImageConfig {
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: Empty,
    pub exposed_ports: BTreeMap<String, Empty>,
    pub volumes: BTreeMap<String, Empty>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
}

/// `POST /images/prune`.
#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ImagesPruned {
    pub images_deleted: Vec<hyperd_api::images::Removed>,
    pub space_reclaimed: u64,
}

/// One entry of `GET /images/{name}/history`, newest first.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HistoryItem {
    /// The image's id on its top entry, `<missing>` below (as Docker's for layers it
    /// has no image of).
    pub id: String,
    pub created: u64,
    pub created_by: String,
    pub tags: Vec<String>,
    pub size: u64,
    pub comment: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RootFs {
    #[serde(rename = "Type")]
    pub kind: String,
    pub layers: Vec<String>,
}

/// `GET /containers/json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    #[serde(rename = "ImageID")]
    pub image_id: String,
    pub command: String,
    pub created: u64,
    pub state: &'static str,
    pub status: String,
    pub ports: Vec<SummaryPort>,
    pub labels: BTreeMap<String, String>,
    pub host_config: SummaryHostConfig,
    pub mounts: Vec<MountPoint>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SummaryHostConfig {
    pub network_mode: String,
}

/// `GET /containers/{id}/json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerInspect {
    pub id: String,
    pub created: String,
    pub path: String,
    pub args: Vec<String>,
    pub state: ContainerState,
    pub image: String,
    pub resolv_conf_path: String,
    pub hostname_path: String,
    pub hosts_path: String,
    pub log_path: std::path::PathBuf,
    pub name: String,
    pub restart_count: u32,
    pub driver: String,
    pub platform: String,
    pub mount_label: String,
    pub process_label: String,
    pub app_armor_profile: String,
    #[serde(rename = "ExecIDs")]
    pub exec_ids: Option<Vec<String>>,
    pub host_config: HostConfig,
    pub graph_driver: GraphDriver,
    pub mounts: Vec<MountPoint>,
    pub config: ContainerConfig,
    pub network_settings: NetworkSettings,
    /// The hyperd pod the container belongs to.
    #[serde(rename = "HyperPodID")]
    pub hyper_pod_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerState {
    pub status: &'static str,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: u32,
    pub exit_code: i32,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HostConfig {
    pub binds: Option<Vec<String>>,
    #[serde(rename = "ContainerIDFile")]
    pub container_id_file: String,
    pub log_config: LogConfig,
    pub network_mode: String,
    pub port_bindings: PortMap,
    pub restart_policy: RestartPolicy,
    pub auto_remove: bool,
    pub volume_driver: String,
    pub volumes_from: Option<Vec<String>>,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub dns: Vec<String>,
    pub dns_options: Vec<String>,
    pub dns_search: Vec<String>,
    pub extra_hosts: Option<Vec<String>>,
    pub privileged: bool,
    pub publish_all_ports: bool,
    pub readonly_rootfs: bool,
    pub security_opt: Option<Vec<String>>,
    pub tmpfs: Option<Empty>,
    #[serde(rename = "UTSMode")]
    pub uts_mode: String,
    pub userns_mode: String,
    pub shm_size: u64,
    pub runtime: String,
    pub isolation: String,
    pub cpu_shares: u64,
    pub memory: u64,
    pub nano_cpus: u64,
    pub cgroup_parent: String,
    pub blkio_weight: u64,
    pub cpu_period: u64,
    pub cpu_quota: u64,
    pub cpuset_cpus: String,
    pub devices: Vec<String>,
    pub memory_reservation: u64,
    pub memory_swap: u64,
    pub oom_kill_disable: bool,
    pub pids_limit: Option<u64>,
    pub ulimits: Option<Vec<String>>,
    pub mounts: Option<Vec<String>>,
    pub init: Option<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct LogConfig {
    #[serde(rename = "Type")]
    pub kind: String,
    pub config: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RestartPolicy {
    /// `no`, `always` or `on-failure`.
    pub name: &'static str,
    pub maximum_retry_count: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GraphDriver {
    pub name: String,
    pub data: Empty,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    pub hostname: String,
    pub domainname: String,
    pub user: String,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub exposed_ports: Option<Empty>,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub image: String,
    pub volumes: Option<Empty>,
    pub working_dir: String,
    pub on_build: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NetworkSettings {
    pub bridge: String,
    #[serde(rename = "SandboxID")]
    pub sandbox_id: String,
    pub sandbox_key: String,
    pub ports: PortMap,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u32,
    pub gateway: String,
    pub mac_address: String,
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// One network a container is on, in inspect's `NetworkSettings.Networks`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EndpointSettings {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u32,
    pub gateway: String,
    pub mac_address: String,
}

/// Docker's port map: `"80/tcp"` to its host bindings (`None` for exposed only).
pub(crate) type PortMap = BTreeMap<String, Option<Vec<PortBinding>>>;

/// One host binding of a port.
#[derive(Serialize, serde::Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct PortBinding {
    pub host_ip: String,
    pub host_port: String,
}

/// A published port in `/containers/json`.
#[derive(Serialize)]
pub(crate) struct SummaryPort {
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(rename = "PrivatePort")]
    pub private_port: u16,
    #[serde(rename = "PublicPort", skip_serializing_if = "Option::is_none")]
    pub public_port: Option<u16>,
    #[serde(rename = "Type")]
    pub kind: String,
}

/// `POST /containers/create`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Created {
    pub id: String,
    pub warnings: Vec<String>,
}

/// `POST /commit`.
#[derive(Serialize)]
pub(crate) struct Committed {
    #[serde(rename = "Id")]
    pub id: String,
}

/// `POST /containers/{id}/wait`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct WaitReply {
    pub status_code: i32,
    pub error: Option<Empty>,
}

/// `POST /containers/{id}/exec`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ExecCreated {
    pub id: String,
}

/// `GET /exec/{id}/json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ExecInspect {
    #[serde(rename = "ID")]
    pub id: String,
    pub running: bool,
    pub exit_code: Option<i32>,
    pub process_config: ProcessConfig,
    pub open_stdin: bool,
    pub open_stdout: bool,
    pub open_stderr: bool,
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    pub pid: u32,
}

#[derive(Serialize)]
pub(crate) struct ProcessConfig {
    pub tty: bool,
    pub entrypoint: Option<String>,
    pub arguments: Vec<String>,
    pub user: String,
}

/// `GET /containers/{id}/top`.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Top {
    pub titles: Vec<String>,
    pub processes: Vec<Vec<String>>,
}

/// A command as Docker's clients send it: an argument list, or a shell line.
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum Command {
    Args(Vec<String>),
    Line(String),
}

impl Command {
    /// The argument list (a shell line runs under `/bin/sh -c`).
    pub(crate) fn args(self) -> Vec<String> {
        match self {
            Command::Args(a) => a,
            Command::Line(s) => vec!["/bin/sh".into(), "-c".into(), s],
        }
    }
}

/// `POST /containers/create`: the fields hyperd reads. Every field may be absent or
/// `null` (docker-py sends `null` for what it does not set).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ContainerCreate {
    pub image: Option<String>,
    pub hostname: Option<String>,
    pub cmd: Option<Command>,
    pub entrypoint: Option<Command>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub tty: Option<bool>,
    pub stop_signal: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub volumes: Option<serde_json::Map<String, serde_json::Value>>,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub host_config: Option<CreateHostConfig>,
}

/// The `HostConfig` of a create: what hyperd honours, and what it warns about.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct CreateHostConfig {
    pub memory: Option<u64>,
    pub nano_cpus: Option<u64>,
    pub restart_policy: Option<CreateRestartPolicy>,
    pub auto_remove: Option<bool>,
    pub port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    pub publish_all_ports: Option<bool>,
    pub binds: Option<Vec<String>>,
    pub mounts: Option<Vec<CreateMount>>,
    pub privileged: Option<bool>,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub security_opt: Option<Vec<String>>,
    pub readonly_rootfs: Option<bool>,
    pub tmpfs: Option<BTreeMap<String, String>>,
    pub devices: Option<Vec<serde_json::Value>>,
    pub dns: Option<Vec<String>>,
    pub extra_hosts: Option<Vec<String>>,
    pub network_mode: Option<String>,
    pub log_config: Option<CreateLogConfig>,
}

/// A create's `HostConfig.LogConfig` (`--log-driver`, `--log-opt`).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct CreateLogConfig {
    #[serde(rename = "Type")]
    pub kind: String,
    pub config: BTreeMap<String, String>,
}

/// One of a create's `HostConfig.Mounts` (`--mount`).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct CreateMount {
    #[serde(rename = "Type")]
    pub kind: String,
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// A mount in inspect's and `/containers/json`'s `Mounts`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MountPoint {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub source: String,
    pub destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    pub mode: String,
    #[serde(rename = "RW")]
    pub rw: bool,
    pub propagation: String,
}

/// A named volume (`/volumes`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct VolumeInfo {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    pub scope: String,
    pub options: BTreeMap<String, String>,
}

/// `GET /volumes`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct VolumeList {
    pub volumes: Vec<VolumeInfo>,
    pub warnings: Vec<String>,
}

/// `POST /volumes/create`.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct VolumeCreate {
    pub name: String,
    pub driver: String,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// `POST /volumes/prune`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct VolumePrune {
    pub volumes_deleted: Vec<String>,
    pub space_reclaimed: u64,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct CreateRestartPolicy {
    pub name: Option<String>,
}

/// `POST /containers/{id}/exec`.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ExecCreate {
    pub cmd: Option<Command>,
    pub tty: Option<bool>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub attach_stdin: Option<bool>,
}

/// `POST /exec/{id}/start`.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ExecStart {
    pub detach: Option<bool>,
}

/// One filter's values: `["a", "b"]`, or the older `{"a": true}`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum FilterValues {
    List(Vec<String>),
    Set(BTreeMap<String, bool>),
}

impl FilterValues {
    pub(crate) fn values(&self) -> Vec<String> {
        match self {
            FilterValues::List(l) => l.clone(),
            FilterValues::Set(s) => s
                .iter()
                .filter(|(_, on)| **on)
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }
}

/// The `filters` query parameter.
pub(crate) type Filters = BTreeMap<String, FilterValues>;

/// `GET /containers/{id}/stats`: Docker's shape, from the VM's numbers.
#[derive(Serialize)]
pub(crate) struct Stats {
    pub id: String,
    pub name: String,
    pub read: String,
    pub preread: String,
    pub num_procs: u64,
    pub pids_stats: PidsStats,
    pub cpu_stats: CpuStats,
    pub precpu_stats: CpuStats,
    pub memory_stats: MemoryStats,
    pub blkio_stats: BlkioStats,
    pub storage_stats: Empty,
}

#[derive(Serialize)]
pub(crate) struct PidsStats {
    pub current: u64,
}

#[derive(Serialize)]
pub(crate) struct CpuStats {
    pub cpu_usage: CpuUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_cpu_usage: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online_cpus: Option<u64>,
    pub throttling_data: ThrottlingData,
}

#[derive(Serialize)]
pub(crate) struct CpuUsage {
    pub total_usage: u64,
    pub usage_in_kernelmode: u64,
    pub usage_in_usermode: u64,
}

#[derive(Serialize, Default)]
pub(crate) struct ThrottlingData {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
}

#[derive(Serialize)]
pub(crate) struct MemoryStats {
    pub usage: u64,
    pub limit: u64,
    pub stats: Empty,
}

/// Every list `null`: the VM's disks are not accounted per container.
#[derive(Serialize, Default)]
pub(crate) struct BlkioStats {
    pub io_service_bytes_recursive: Option<Vec<u64>>,
    pub io_serviced_recursive: Option<Vec<u64>>,
    pub io_queue_recursive: Option<Vec<u64>>,
    pub io_service_time_recursive: Option<Vec<u64>>,
    pub io_wait_time_recursive: Option<Vec<u64>>,
    pub io_merged_recursive: Option<Vec<u64>>,
    pub io_time_recursive: Option<Vec<u64>>,
    pub sectors_recursive: Option<Vec<u64>>,
}

/// `GET /networks` and `/networks/{id}`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Network {
    pub name: String,
    pub id: String,
    pub created: String,
    pub scope: String,
    pub driver: String,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: Ipam,
    pub internal: bool,
    pub attachable: bool,
    pub containers: Empty,
    pub options: Empty,
    pub labels: Empty,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Ipam {
    pub driver: String,
    pub config: Vec<IpamConfig>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct IpamConfig {
    pub subnet: String,
    pub gateway: String,
}
