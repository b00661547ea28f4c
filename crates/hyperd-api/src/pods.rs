//! Pod answers: `/pod/create|start|stop|kill|pause|unpause` and `DELETE /pod`
//! ([`PodReply`]), `/pod/info` ([`PodInfo`]), `/list` ([`ListReply`]), `/exitcode`,
//! `/pod/labels`, `/pod/stats`.
use crate::spec::PodSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// hyperd's answer to a pod operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PodReply {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Code")]
    pub code: i32,
    #[serde(rename = "Cause")]
    pub cause: String,
}

impl PodReply {
    /// Success for pod `id`.
    pub fn ok(id: &str) -> PodReply {
        PodReply {
            id: id.to_string(),
            code: 0,
            cause: String::new(),
        }
    }
}

/// `GET /pod/info`: a pod, its spec and its containers' states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    /// Always `Pod`.
    pub kind: String,
    /// Always `v1`.
    pub api_version: String,
    #[serde(rename = "podID")]
    pub pod_id: String,
    pub pod_name: String,
    /// The VM's id while the pod has one, else empty.
    pub vm: String,
    /// The VM process, for display.
    pub vm_pid: Option<u32>,
    pub created_at: String,
    /// The phases of the last start.
    pub start_record: Option<StartRecord>,
    pub labels: BTreeMap<String, String>,
    pub spec: PodSpec,
    pub status: PodStatus,
    /// The pod's network while it has a VM with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<PodNetwork>,
}

/// A running pod's network identity and published ports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodNetwork {
    /// `user` (passt) or `netns` (an existing network namespace).
    pub mode: String,
    #[serde(rename = "ipAddress")]
    pub ip_address: String,
    pub prefix_len: u8,
    pub gateway: String,
    pub mac_address: String,
    pub ports: Vec<PublishedPort>,
}

/// A host port published to a pod port (`GET /pod/portmappings`, `hyperctl ports`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishedPort {
    pub container_port: u16,
    pub host_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Empty: every host address.
    #[serde(rename = "hostIP")]
    pub host_ip: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `pending`, `running`, `paused`, `succeeded` or `failed`.
    pub phase: String,
    pub container_status: Vec<PodContainerStatus>,
}

/// One container as `/pod/info` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodContainerStatus {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub name: String,
    pub image: String,
    #[serde(rename = "imageID")]
    pub image_id: String,
    /// `pending`, `running`, `succeeded` or `failed`.
    pub phase: String,
    pub restart_count: u32,
    pub running: Running,
    pub terminated: Terminated,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    pub started_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Terminated {
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// How the pod got its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartPath {
    /// An idle VM of the warm pool (or one booted ahead with `POST /vm/create`).
    Pool,
    /// A VM booted for this start.
    Cold,
    /// The pod's own VM, kept by a `stopVM=no` stop.
    Kept,
}

/// The phase record of a pod start: when each phase ended, in milliseconds from the
/// request (negative for what a VM booted ahead did before it), and the path taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartRecord {
    pub path: StartPath,
    /// When the start request arrived (RFC 3339).
    pub requested_at: String,
    /// The VM process was spawned.
    pub vm_spawned_ms: Option<f64>,
    /// The guest kernel started (the agent's uptime at ready, taken back from then).
    pub kernel_started_ms: Option<f64>,
    /// The agent answered.
    pub agent_ready_ms: Option<f64>,
    /// The VM was the pod's: taken from the pool, or booted.
    pub vm_ready_ms: f64,
    /// The last container's root filesystem was set up in the guest.
    pub container_created_ms: Option<f64>,
    /// The last container's process was started.
    pub process_started_ms: Option<f64>,
}

/// The phase fields of a [`StartRecord`] as `/pod/info` names them, in the order a start
/// passes them.
pub const START_PHASES: [&str; 6] = [
    "vmSpawnedMs",
    "kernelStartedMs",
    "agentReadyMs",
    "vmReadyMs",
    "containerCreatedMs",
    "processStartedMs",
];

impl PodInfo {
    /// The pod's first container (the one `hyperctl run`, exec and attach address when
    /// they are given a pod).
    pub fn first_container(&self) -> Option<&PodContainerStatus> {
        self.status.container_status.first()
    }
}

/// `GET /list?item=pod|container|vm`, in hyperd's colon-joined lines: `podData`
/// (`id:name:vm:phase`), `cData` (`id:name:pod:phase`) or `vmData` (`id:pod:state`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ListReply {
    pub item: String,
    #[serde(rename = "podData", default, skip_serializing_if = "Option::is_none")]
    pub pod_data: Option<Vec<String>>,
    #[serde(rename = "cData", default, skip_serializing_if = "Option::is_none")]
    pub c_data: Option<Vec<String>>,
    #[serde(rename = "vmData", default, skip_serializing_if = "Option::is_none")]
    pub vm_data: Option<Vec<String>>,
}

impl ListReply {
    /// The lines, whichever item was asked for.
    pub fn lines(&self) -> &[String] {
        self.pod_data
            .as_deref()
            .or(self.c_data.as_deref())
            .or(self.vm_data.as_deref())
            .unwrap_or_default()
    }
}

/// `GET /exitcode`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExitCodeReply {
    #[serde(rename = "ExitCode")]
    pub exit_code: i32,
}

/// `POST /pod/labels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LabelsReply {
    #[serde(rename = "ID")]
    pub id: String,
    pub labels: BTreeMap<String, String>,
}

/// `GET /pod/stats`: the VM's CPU and memory use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PodStats {
    #[serde(rename = "podID")]
    pub pod_id: String,
    pub timestamp: String,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    /// The guest's one-minute load average.
    pub load: f64,
    pub processes: u64,
    pub containers: Vec<ContainerBrief>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CpuStats {
    pub usage: CpuUsage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CpuUsage {
    /// Guest CPU time, nanoseconds.
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryStats {
    pub usage: u64,
    pub available: u64,
    pub limit: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerBrief {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub name: String,
    pub phase: String,
}
