//! hyperd's pod spec (the JSON of `POST /pod/create` and `hyperctl run -p`), with the
//! validation rules of hyperd's `types/validate.go` that apply so far.
use schemars::JsonSchema;

/// A spec breaks one of hyperd's rules; the message says which.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidSpec(pub String);

impl std::fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidSpec {}
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct PodSpec {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub containers: Vec<ContainerSpec>,
    #[serde(default)]
    pub resource: Resource,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Name servers written to every container's /etc/resolv.conf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// Files the containers can have inserted (`containers[].files`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PodFile>,
    /// Remove the pod once it has finished (hyperd's `autoremove`, Docker's `--rm`).
    #[serde(
        default,
        rename = "autoRemove",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub auto_remove: bool,
    /// Pod-level port mappings: host ports published to the pod (with the containers'
    /// own `ports`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub portmappings: Vec<Port>,
    /// `user` (default: a user-mode network through passt, outbound traffic and
    /// published ports) or `none` (loopback only).
    #[serde(
        default,
        rename = "networkMode",
        skip_serializing_if = "NetworkMode::is_default"
    )]
    pub network_mode: NetworkMode,
    /// An existing network namespace to put the pod on (the CNI way, as Kata): a path
    /// `/run/netns/NAME` or `/var/run/netns/NAME` whose namespace has one interface with
    /// an IPv4 address. The guest takes that interface's address, MAC, MTU and default
    /// route; its traffic is redirected to and from the VM by tc. Such a pod publishes no
    /// ports (the namespace's owner does that).
    #[serde(
        default,
        rename = "networkNamespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub network_namespace: Option<String>,
    /// Extra `/etc/hosts` entries, `name:address`; the address `host-gateway` is the
    /// host as the pod reaches it (Docker's `--add-host`).
    #[serde(default, rename = "extraHosts", skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// Volumes the containers can mount (`containers[].volumes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// The guest's user and group ids as the host sees them on the pod's directory
    /// volumes; absent: the host's own ids (as Docker's bind mounts).
    #[serde(default, rename = "idMap", skip_serializing_if = "Option::is_none")]
    pub id_map: Option<IdMap>,
    /// How much of each container's output is kept (Docker's json-file `max-size` and
    /// `max-file`); absent fields take the daemon's `--log-max-size`/`--log-max-files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogOptions>,
}

/// A pod's log limits: each container's log rotates at `maxSize` bytes and keeps
/// `maxFiles` files, the current one included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogOptions {
    #[serde(default, rename = "maxSize", skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    #[serde(default, rename = "maxFiles", skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u32>,
}

/// The smallest and largest log file a pod may ask for, and the most files.
pub const LOG_MIN_SIZE: u64 = 4096;
pub const LOG_MAX_SIZE: u64 = 1 << 30;
pub const LOG_MAX_FILES: u32 = 100;

impl LogOptions {
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        if let Some(n) = self.max_size {
            if !(LOG_MIN_SIZE..=LOG_MAX_SIZE).contains(&n) {
                return Err(InvalidSpec(format!(
                    "log maxSize must be between {LOG_MIN_SIZE} and {LOG_MAX_SIZE} bytes, not {n}"
                )));
            }
        }
        if let Some(n) = self.max_files {
            if !(1..=LOG_MAX_FILES).contains(&n) {
                return Err(InvalidSpec(format!(
                    "log maxFiles must be between 1 and {LOG_MAX_FILES}, not {n}"
                )));
            }
        }
        Ok(())
    }

    /// Docker's `--log-opt` sizes: a number with an optional `k`, `m` or `g` (powers of
    /// 1024, as Docker's `units.RAMInBytes`), `b`/`kb`/`mb`/`gb` also accepted.
    pub fn parse_size(s: &str) -> Result<u64, InvalidSpec> {
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_suffix('b').unwrap_or(&t);
        let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => (&t[..i], &t[i..]),
            None => (t, ""),
        };
        let mult: u64 = match unit {
            "" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            _ => return Err(InvalidSpec(format!("invalid size {s:?}"))),
        };
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .ok_or_else(|| InvalidSpec(format!("invalid size {s:?}")))
    }
}

/// Guest ids `0..size` are host ids `hostUid..` and `hostGid..` on the pod's directory
/// volumes: the guest's root is an unprivileged host user there, and whatever it creates
/// belongs to the range.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct IdMap {
    #[serde(rename = "hostUid")]
    pub host_uid: u32,
    #[serde(rename = "hostGid")]
    pub host_gid: u32,
    /// How many ids (65536 covers every usual id).
    #[serde(default = "default_id_map_size")]
    pub size: u32,
}

fn default_id_map_size() -> u32 {
    65536
}

/// A volume of the pod, by name.
///
/// - `source` an absolute host path (`driver` empty or `vfs`): that host directory or
///   file, shared over virtio-fs;
/// - `source` empty: a directory of the pod's own, on the host's disk, removed with the
///   pod;
/// - `driver` `local`: the named volume `source` (created when missing), which outlives
///   pods (Docker's named volumes, `/volumes`);
/// - `driver` `block`: the named block volume `source` (an ext4 disk, created when
///   missing), read-write in one running pod at a time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct Volume {
    pub name: String,
    #[serde(default)]
    pub source: String,
    /// `vfs` (or empty) for a host path, `local` for a named volume, `block` for a block
    /// volume, `tmpfs` for memory of the guest's.
    #[serde(default, alias = "format")]
    pub driver: String,
    /// Read-only for every container of the pod.
    #[serde(
        default,
        rename = "readOnly",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub read_only: bool,
}

/// What a pod volume is backed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// A host directory or file (`source`).
    HostPath,
    /// A directory of the pod's own.
    PodLocal,
    /// A named volume (`source` is its name).
    Named,
    /// A named block volume (`source` is its name): an ext4 disk of its own, attached to
    /// the VM; one pod at a time may have it read-write.
    Block,
    /// A tmpfs in the guest's memory, one per container that mounts it (Docker's
    /// `--tmpfs`).
    Tmpfs,
}

impl Volume {
    pub fn kind(&self) -> Result<VolumeKind, InvalidSpec> {
        match (self.driver.as_str(), self.source.as_str()) {
            ("" | "vfs", "") => Ok(VolumeKind::PodLocal),
            ("" | "vfs", s) if s.starts_with('/') => Ok(VolumeKind::HostPath),
            ("" | "vfs", s) => Err(InvalidSpec(format!(
                "volume {}: a host path must be absolute, not {s:?}",
                self.name
            ))),
            ("local", s) if valid_name(s) => Ok(VolumeKind::Named),
            ("local", "") => Ok(VolumeKind::Named),
            ("local", s) => Err(InvalidSpec(format!(
                "volume {}: invalid volume name {s:?}",
                self.name
            ))),
            ("block", s) if s.is_empty() || valid_name(s) => Ok(VolumeKind::Block),
            ("tmpfs", "") => Ok(VolumeKind::Tmpfs),
            ("tmpfs", s) => Err(InvalidSpec(format!(
                "volume {}: a tmpfs has no source, not {s:?}",
                self.name
            ))),
            ("block", s) => Err(InvalidSpec(format!(
                "volume {}: invalid volume name {s:?}",
                self.name
            ))),
            (d, _) => Err(InvalidSpec(format!(
                "volume {}: unsupported driver {d:?} (vfs for a host path, local for a named volume, block for a block volume, tmpfs)",
                self.name
            ))),
        }
    }

    /// The named volume's name (`source`, else the pod volume's own name).
    pub fn volume_name(&self) -> &str {
        if self.source.is_empty() {
            &self.name
        } else {
            &self.source
        }
    }
}

/// Where a container mounts a pod volume.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct VolumeMount {
    /// The pod volume's name.
    pub volume: String,
    /// Absolute path in the container.
    pub path: String,
    #[serde(
        default,
        rename = "readOnly",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub read_only: bool,
}

impl VolumeMount {
    /// Parses Docker's `-v` form: `/host/path:/path[:opts]` (a host path),
    /// `NAME:/path[:opts]` (a named volume) or `/path` (the pod's own volume); `opts` is
    /// `ro`, `rw` and Docker's options that mean nothing in a VM (SELinux labels,
    /// propagation, `nocopy`). The pod volume is called `volume`.
    pub fn parse_volume_flag(
        s: &str,
        volume: String,
    ) -> Result<(Volume, VolumeMount), InvalidSpec> {
        let bad = || InvalidSpec(format!("invalid volume {s:?} (SOURCE:/path[:ro] or /path)"));
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, opts) = match parts.as_slice() {
            [t] => ("", *t, ""),
            [src, t] => (*src, *t, ""),
            [src, t, o] => (*src, *t, *o),
            _ => return Err(bad()),
        };
        if target.is_empty() || (parts.len() > 1 && source.is_empty()) {
            return Err(bad());
        }
        let mut read_only = false;
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ro" => read_only = true,
                "rw" | "z" | "Z" | "nocopy" | "private" | "rprivate" | "shared" | "rshared"
                | "slave" | "rslave" | "consistent" | "cached" | "delegated" => {}
                _ => return Err(bad()),
            }
        }
        let driver = if source.is_empty() || source.starts_with('/') {
            "vfs"
        } else {
            "local"
        };
        valid_mount_path(target)?;
        Ok((
            Volume {
                name: volume.clone(),
                source: source.to_string(),
                driver: driver.into(),
                read_only: false,
            },
            VolumeMount {
                volume,
                path: target.to_string(),
                read_only,
            },
        ))
    }
}

/// Container paths a volume may not cover: the kernel's and the agent's own.
const RESERVED_PATHS: [&str; 4] = ["/proc", "/sys", "/dev", "/"];

/// Whether an absolute container path is one a volume may be mounted on.
pub fn valid_mount_path(path: &str) -> Result<(), InvalidSpec> {
    if !path.starts_with('/') || path.split('/').any(|p| p == ".." || p == ".") {
        return Err(InvalidSpec(format!(
            "a mount path must be absolute and stay inside, not {path:?}"
        )));
    }
    let clean = path.trim_end_matches('/');
    let clean = if clean.is_empty() { "/" } else { clean };
    for r in RESERVED_PATHS {
        let under = r != "/" && clean.starts_with(r) && clean[r.len()..].starts_with('/');
        if clean == r || under {
            return Err(InvalidSpec(format!("cannot mount a volume over {clean}")));
        }
    }
    Ok(())
}

/// The body of `PUT /pod/{id}/portmappings/add|delete`: the ports to publish on a running
/// pod, or to stop publishing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(transparent)]
pub struct PortList(pub Vec<Port>);

/// The name of a network namespace path hyperd accepts: `/run/netns/NAME` or
/// `/var/run/netns/NAME`, NAME one plain path component (what `ip netns` makes). Anything
/// else, the host's own namespace above all, is refused.
pub fn netns_name(path: &str) -> Result<&str, InvalidSpec> {
    let name = path
        .strip_prefix("/run/netns/")
        .or_else(|| path.strip_prefix("/var/run/netns/"))
        .ok_or_else(|| {
            InvalidSpec(format!(
                "network namespace {path:?} is not under /run/netns/ or /var/run/netns/"
            ))
        })?;
    let plain = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !plain {
        return Err(InvalidSpec(format!(
            "network namespace {path:?}: the name must be one plain path component"
        )));
    }
    Ok(name)
}

/// How a pod is connected.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    User,
    None,
}

impl NetworkMode {
    pub fn is_default(&self) -> bool {
        *self == NetworkMode::User
    }
}

impl PodSpec {
    /// Every published port of the pod: `portmappings` and the containers' `ports`.
    pub fn published_ports(&self) -> impl Iterator<Item = &Port> {
        self.portmappings
            .iter()
            .chain(self.containers.iter().flat_map(|c| c.ports.iter()))
            .filter(|p| p.host_port != 0 || p.publish_all)
    }

    /// `extra_hosts` as (name, address) pairs; `host-gateway` left for the caller.
    pub fn extra_host_entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.extra_hosts.iter().filter_map(|h| h.split_once(':'))
    }
}

/// A file of the pod, by name, with its content.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct PodFile {
    pub name: String,
    /// `raw` (default) or `base64`.
    #[serde(default)]
    pub encoding: String,
    #[serde(default)]
    pub content: String,
    /// Where the content comes from instead: `file:///host/path` (the API socket is
    /// privileged) or `http(s)://…` (fetched under the image sources' limits).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
}

impl PodFile {
    pub fn bytes(&self) -> Result<Vec<u8>, InvalidSpec> {
        match self.encoding.as_str() {
            "" | "raw" => Ok(self.content.clone().into_bytes()),
            "base64" => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(self.content.trim())
                    .map_err(|e| InvalidSpec(format!("file {}: bad base64: {e}", self.name)))
            }
            other => Err(InvalidSpec(format!(
                "file {}: unknown encoding {other:?} (raw, base64)",
                self.name
            ))),
        }
    }
}

/// Where a pod file goes in a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ContainerFile {
    /// The pod file's name.
    pub filename: String,
    /// Absolute path in the container.
    pub path: String,
    /// Octal mode, default 0644.
    #[serde(default)]
    pub perm: String,
    /// Owner: a user name of the container's /etc/passwd or a uid (default root).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Group: a group name of the container's /etc/group or a gid (default root).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
}

impl ContainerFile {
    /// The agent's `user[:group]` for the file's owner; empty for root.
    pub fn owner(&self) -> String {
        match (self.user.as_str(), self.group.as_str()) {
            ("", "") => String::new(),
            (u, "") => u.to_string(),
            ("", g) => format!("0:{g}"),
            (u, g) => format!("{u}:{g}"),
        }
    }

    pub fn mode(&self) -> Result<u32, InvalidSpec> {
        if self.perm.is_empty() {
            return Ok(0o644);
        }
        u32::from_str_radix(self.perm.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| InvalidSpec(format!("invalid perm {:?} for {}", self.perm, self.path)))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct Port {
    #[serde(default, rename = "containerPort")]
    pub container_port: u32,
    /// 0 with `publishAll` for a free port chosen at start; 0 alone for not published.
    #[serde(default, rename = "hostPort")]
    pub host_port: u32,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: String,
    /// Host address to listen on; empty for every address (Docker's default).
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    /// Publish on a free host port (Docker's `-P`, or `-p` without a host port).
    #[serde(
        default,
        rename = "publishAll",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub publish_all: bool,
}

impl Port {
    /// Parses Docker's `-p` form: `[ip:][host:]container[/proto]`; without a host port
    /// a free one is picked at start.
    /// Ports in range, an IPv4 host address if any, `tcp` or `udp`.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        if self.container_port == 0 || self.container_port > 65535 || self.host_port > 65535 {
            return Err(InvalidSpec(format!(
                "invalid port {}:{}",
                self.host_port, self.container_port
            )));
        }
        if !self.host_ip.is_empty() && self.host_ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(InvalidSpec(format!(
                "invalid host address {:?} (an IPv4 address)",
                self.host_ip
            )));
        }
        if !matches!(self.protocol.as_str(), "" | "tcp" | "udp") {
            return Err(InvalidSpec(format!(
                "invalid protocol {:?} (tcp, udp)",
                self.protocol
            )));
        }
        Ok(())
    }

    pub fn parse_publish(s: &str) -> Result<Port, InvalidSpec> {
        let bad = || {
            InvalidSpec(format!(
                "invalid port {s:?} ([ip:][host:]container[/tcp|udp])"
            ))
        };
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((p, proto @ ("tcp" | "udp"))) => (p, proto.to_string()),
            Some(_) => return Err(bad()),
            None => (s, String::new()),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let num = |p: &str| p.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(bad);
        let (host_ip, host, container) = match parts.as_slice() {
            [c] => ("", None, num(c)?),
            [h, c] => ("", Some(num(h)?), num(c)?),
            [ip, h, c] => (*ip, (!h.is_empty()).then(|| num(h)).transpose()?, num(c)?),
            _ => return Err(bad()),
        };
        if !host_ip.is_empty() && host_ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(bad());
        }
        Ok(Port {
            container_port: container as u32,
            host_port: host.unwrap_or(0) as u32,
            protocol,
            host_ip: host_ip.to_string(),
            publish_all: host.is_none(),
        })
    }

    pub fn protocol(&self) -> &str {
        if self.protocol.is_empty() {
            "tcp"
        } else {
            &self.protocol
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ContainerSpec {
    #[serde(default)]
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub workdir: String,
    #[serde(default)]
    pub envs: Vec<EnvVar>,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub tty: bool,
    /// `never` (default), `onFailure` or `always`: whether the daemon starts the
    /// container's process again when it exits.
    #[serde(
        default,
        rename = "restartPolicy",
        skip_serializing_if = "String::is_empty"
    )]
    pub restart_policy: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ContainerFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The signal a graceful stop sends first (`SIGTERM` when empty and the image names
    /// none), as Docker's `StopSignal`.
    #[serde(
        default,
        rename = "stopSignal",
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    /// Pod volumes mounted into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// A read-only root filesystem (its volumes stay as they are).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
    /// Every capability and the VM's whole `/dev` (its disks and the agent's port
    /// included), as Docker's `--privileged`: the container can then reach the guest
    /// kernel's devices, never the host's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Capabilities added to Docker's default set (`NET_ADMIN`, `CAP_SYS_TIME`, `ALL`).
    #[serde(default, rename = "capAdd", skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities taken from it (`ALL` drops every one, then `capAdd` applies).
    #[serde(default, rename = "capDrop", skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// No process of the container can gain privileges on exec (set-id bits and file
    /// capabilities do nothing), as Docker's `no-new-privileges`.
    #[serde(
        default,
        rename = "noNewPrivileges",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub no_new_privileges: bool,
}

/// The Linux capabilities by number (6.1's, `CAP_` left out).
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A capability's name as the tables spell it: upper case, without `CAP_`; `ALL` stays.
pub fn capability_name(name: &str) -> Result<String, InvalidSpec> {
    let up = name.trim().to_ascii_uppercase();
    let bare = up.strip_prefix("CAP_").unwrap_or(&up).to_string();
    if bare == "ALL" || CAPABILITIES.contains(&bare.as_str()) {
        Ok(bare)
    } else {
        Err(InvalidSpec(format!("unknown capability {name:?}")))
    }
}

impl ContainerSpec {
    /// The capabilities the container's processes keep: `None` for a privileged one
    /// (all), else Docker's default set with `capDrop` and `capAdd` applied.
    pub fn capabilities(&self) -> Result<Option<Vec<String>>, InvalidSpec> {
        if self.privileged {
            return Ok(None);
        }
        let mut set: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        for d in &self.cap_drop {
            match capability_name(d)?.as_str() {
                "ALL" => set.clear(),
                name => set.retain(|c| c != name),
            }
        }
        for a in &self.cap_add {
            match capability_name(a)?.as_str() {
                "ALL" => set = CAPABILITIES.iter().map(|c| c.to_string()).collect(),
                name if !set.iter().any(|c| c == name) => set.push(name.to_string()),
                _ => {}
            }
        }
        Ok(Some(set))
    }

    /// hyperd's rules for one container.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let c = self;
        if c.image.trim().is_empty() {
            return Err(InvalidSpec("every container needs an image".into()));
        }
        if !c.name.is_empty() && !valid_name(&c.name) {
            return Err(InvalidSpec(format!("invalid container name {:?}", c.name)));
        }
        for e in &c.envs {
            if e.env.is_empty() || e.env.contains('=') {
                return Err(InvalidSpec(format!(
                    "invalid environment variable name {:?}",
                    e.env
                )));
            }
        }
        if !matches!(
            c.restart_policy.as_str(),
            "" | "never" | "onFailure" | "always"
        ) {
            return Err(InvalidSpec(format!(
                "invalid restartPolicy {:?} (never, onFailure, always)",
                c.restart_policy
            )));
        }
        if !c.workdir.is_empty() && !c.workdir.starts_with('/') {
            return Err(InvalidSpec(format!(
                "workdir must be absolute, not {:?}",
                c.workdir
            )));
        }
        for f in &c.files {
            if !f.path.starts_with('/') || f.path.split('/').any(|p| p == "..") {
                return Err(InvalidSpec(format!(
                    "file path must be absolute and stay inside, not {:?}",
                    f.path
                )));
            }
            f.mode()?;
        }
        c.capabilities()?;
        let mut paths = std::collections::HashSet::new();
        for v in &c.volumes {
            valid_mount_path(&v.path)?;
            if !paths.insert(v.path.trim_end_matches('/')) {
                return Err(InvalidSpec(format!("{} is mounted twice", v.path)));
            }
        }
        Ok(())
    }

    /// Whether an exit with `code` calls for a restart under the container's policy.
    pub fn restarts_after(&self, code: i32) -> bool {
        match self.restart_policy.as_str() {
            "always" => true,
            "onFailure" => code != 0,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct EnvVar {
    pub env: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct Resource {
    #[serde(default = "default_vcpu")]
    pub vcpu: u32,
    /// MiB.
    #[serde(default = "default_memory")]
    pub memory: u32,
    /// Cap on the VM's CPU time, percent of one vCPU (0: none).
    #[serde(default, rename = "cpuPercent", skip_serializing_if = "is_zero")]
    pub cpu_percent: u32,
    /// Rate limits of the VM's disks (0: none).
    #[serde(default, skip_serializing_if = "DiskLimits::is_none")]
    pub disk: DiskLimits,
    /// Size of the pod's scratch disk, which holds its containers' writable layers, in
    /// MiB (0: [`DEFAULT_SCRATCH_MIB`]). Sparse: it costs what is written.
    #[serde(default, rename = "scratchSize", skip_serializing_if = "is_zero")]
    pub scratch_mib: u32,
}

impl Resource {
    /// The scratch disk's size in MiB.
    pub fn scratch_size_mib(&self) -> u32 {
        if self.scratch_mib == 0 {
            DEFAULT_SCRATCH_MIB
        } else {
            self.scratch_mib
        }
    }
}

/// The scratch disk's default size: 10 GiB (Docker's old per-container base size).
pub const DEFAULT_SCRATCH_MIB: u32 = 10 * 1024;
/// Scratch disks are 64 MiB to 1 TiB.
pub const MIN_SCRATCH_MIB: u32 = 64;
pub const MAX_SCRATCH_MIB: u32 = 1 << 20;

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Token-bucket limits on a VM's disk I/O.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct DiskLimits {
    #[serde(default, rename = "readBps")]
    pub read_bps: u64,
    #[serde(default, rename = "readIops")]
    pub read_iops: u64,
    #[serde(default, rename = "writeBps")]
    pub write_bps: u64,
    #[serde(default, rename = "writeIops")]
    pub write_iops: u64,
}

impl DiskLimits {
    pub fn is_none(&self) -> bool {
        *self == DiskLimits::default()
    }
}

fn default_vcpu() -> u32 {
    1
}
fn default_memory() -> u32 {
    128
}

impl Default for Resource {
    fn default() -> Self {
        Resource {
            vcpu: default_vcpu(),
            memory: default_memory(),
            cpu_percent: 0,
            disk: DiskLimits::default(),
            scratch_mib: 0,
        }
    }
}

pub const MAX_VCPU: u32 = 16;
/// Volumes a pod may have.
pub const MAX_VOLUMES: usize = 64;
pub const MIN_MEMORY: u32 = 64;
pub const MAX_MEMORY: u32 = 64 * 1024;

/// A name as hyperd accepts it: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 63 characters.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl PodSpec {
    /// Parses and validates; the message of an error is meant for the user.
    pub fn parse(json: &[u8]) -> Result<PodSpec, InvalidSpec> {
        let spec: PodSpec = serde_json::from_slice(json)
            .map_err(|e| InvalidSpec(format!("invalid pod spec: {e}")))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), InvalidSpec> {
        if !self.id.is_empty() && !valid_name(&self.id) {
            return Err(InvalidSpec(format!("invalid pod name {:?}", self.id)));
        }
        if !self.hostname.is_empty() && (self.hostname.len() > 63 || !valid_name(&self.hostname)) {
            return Err(InvalidSpec(format!("invalid hostname {:?}", self.hostname)));
        }
        if self.containers.is_empty() {
            return Err(InvalidSpec("a pod needs at least one container".into()));
        }
        if let Some(log) = &self.log {
            log.validate()?;
        }
        let r = &self.resource;
        if r.vcpu == 0 || r.vcpu > MAX_VCPU {
            return Err(InvalidSpec(format!(
                "vcpu must be between 1 and {MAX_VCPU}, not {}",
                r.vcpu
            )));
        }
        if r.memory < MIN_MEMORY || r.memory > MAX_MEMORY {
            return Err(InvalidSpec(format!(
                "memory must be between {MIN_MEMORY} and {MAX_MEMORY} MiB, not {}",
                r.memory
            )));
        }
        if r.scratch_mib != 0 && !(MIN_SCRATCH_MIB..=MAX_SCRATCH_MIB).contains(&r.scratch_mib) {
            return Err(InvalidSpec(format!(
                "scratchSize must be between {MIN_SCRATCH_MIB} and {MAX_SCRATCH_MIB} MiB, not {}",
                r.scratch_mib
            )));
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.containers {
            c.validate()?;
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                return Err(InvalidSpec(format!(
                    "duplicate container name {:?}",
                    c.name
                )));
            }
        }
        // As hyperd: a host port is used once in a pod.
        let mut host_ports = std::collections::HashSet::new();
        let ports = self
            .portmappings
            .iter()
            .chain(self.containers.iter().flat_map(|c| c.ports.iter()));
        for p in ports {
            p.validate()?;
            let key = (
                p.host_port,
                if p.protocol.is_empty() {
                    "tcp"
                } else {
                    p.protocol.as_str()
                },
            );
            if p.host_port != 0 && !host_ports.insert(key) {
                return Err(InvalidSpec(format!(
                    "port {} has already been used",
                    p.host_port
                )));
            }
        }
        for h in &self.extra_hosts {
            let ok = h.split_once(':').is_some_and(|(name, addr)| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                    && (addr == "host-gateway" || addr.parse::<std::net::Ipv4Addr>().is_ok())
            });
            if !ok {
                return Err(InvalidSpec(format!(
                    "invalid extra host {h:?} (name:IPv4 address or name:host-gateway)"
                )));
            }
        }
        if let Some(ns) = &self.network_namespace {
            netns_name(ns)?;
            if self.network_mode == NetworkMode::None {
                return Err(InvalidSpec(
                    "a pod without a network (networkMode none) takes no network namespace".into(),
                ));
            }
            if self.published_ports().next().is_some() {
                return Err(InvalidSpec(
                    "a pod on a network namespace publishes no ports: the namespace's owner \
                     forwards them"
                        .into(),
                ));
            }
        }
        if self.network_mode == NetworkMode::None && self.published_ports().next().is_some() {
            return Err(InvalidSpec(
                "a pod without a network (networkMode none) cannot publish ports".into(),
            ));
        }
        let mut file_names = std::collections::HashSet::new();
        for f in &self.files {
            if f.name.is_empty() || !file_names.insert(f.name.as_str()) {
                return Err(InvalidSpec(format!(
                    "file names must be unique and not empty: {:?}",
                    f.name
                )));
            }
            f.bytes()?;
        }
        for c in &self.containers {
            for f in &c.files {
                if !file_names.contains(f.filename.as_str()) {
                    return Err(InvalidSpec(format!(
                        "container file {} names no pod file {:?}",
                        f.path, f.filename
                    )));
                }
            }
        }
        for d in &self.dns {
            if d.parse::<std::net::IpAddr>().is_err() {
                return Err(InvalidSpec(format!("invalid DNS server {d:?}")));
            }
        }
        let mut volumes = std::collections::HashSet::new();
        for v in &self.volumes {
            if !valid_name(&v.name) || !volumes.insert(v.name.as_str()) {
                return Err(InvalidSpec(format!(
                    "volume names must be unique names, not {:?}",
                    v.name
                )));
            }
            v.kind()?;
            if v.source.split('/').any(|p| p == "..") {
                return Err(InvalidSpec(format!(
                    "volume {}: the source may not contain \"..\"",
                    v.name
                )));
            }
        }
        if let Some(m) = &self.id_map {
            let fits = |base: u32| base > 0 && base.checked_add(m.size).is_some();
            if m.size == 0 || !fits(m.host_uid) || !fits(m.host_gid) {
                return Err(InvalidSpec(format!(
                    "idMap: hostUid and hostGid must be above 0 and leave room for {} ids",
                    m.size
                )));
            }
        }
        if self.volumes.len() > MAX_VOLUMES {
            return Err(InvalidSpec(format!("at most {MAX_VOLUMES} volumes a pod")));
        }
        for c in &self.containers {
            for m in &c.volumes {
                if !volumes.contains(m.volume.as_str()) {
                    return Err(InvalidSpec(format!(
                        "container mount {} names no pod volume {:?}",
                        m.path, m.volume
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_named_namespaces_under_run_netns_are_accepted() {
        assert_eq!(
            super::netns_name("/run/netns/cni-1234").unwrap(),
            "cni-1234"
        );
        assert_eq!(super::netns_name("/var/run/netns/a.b_c").unwrap(), "a.b_c");
        for bad in [
            "/proc/1/ns/net",
            "/proc/self/ns/net",
            "/run/netns/",
            "/run/netns/..",
            "/run/netns/../../proc/1/ns/net",
            "/run/netns/a/b",
            "run/netns/a",
            "/run/netnsx/a",
            "/run/netns/a b",
        ] {
            assert!(super::netns_name(bad).is_err(), "{bad}");
        }
        let pod = |ns: &str, publish: bool| super::PodSpec {
            network_namespace: Some(ns.into()),
            portmappings: if publish {
                vec![super::Port {
                    container_port: 80,
                    host_port: 8080,
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            containers: vec![super::ContainerSpec {
                image: "busybox".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let ok = pod("/run/netns/x", false).validate();
        assert!(ok.is_ok(), "{ok:?}");
        assert!(pod("/run/netns/x", true).validate().is_err());
        assert!(pod("/proc/1/ns/net", false).validate().is_err());
    }

    #[test]
    fn capability_sets_follow_docker() {
        let spec = |add: &[&str], drop: &[&str], privileged: bool| ContainerSpec {
            image: "x".into(),
            cap_add: add.iter().map(|s| s.to_string()).collect(),
            cap_drop: drop.iter().map(|s| s.to_string()).collect(),
            privileged,
            ..Default::default()
        };
        let set = spec(&[], &[], false).capabilities().unwrap().unwrap();
        assert_eq!(set.len(), 14);
        let set = spec(&["cap_net_admin", "CHOWN"], &["MKNOD"], false)
            .capabilities()
            .unwrap()
            .unwrap();
        assert!(set.contains(&"NET_ADMIN".to_string()) && !set.contains(&"MKNOD".to_string()));
        assert_eq!(set.len(), 14);
        let set = spec(&["SYS_TIME"], &["ALL"], false)
            .capabilities()
            .unwrap()
            .unwrap();
        assert_eq!(set, vec!["SYS_TIME".to_string()]);
        assert_eq!(
            spec(&["ALL"], &[], false)
                .capabilities()
                .unwrap()
                .unwrap()
                .len(),
            41
        );
        assert_eq!(spec(&[], &[], true).capabilities().unwrap(), None);
        assert!(spec(&["SYS_WIZARD"], &[], false).validate().is_err());
    }
    use super::*;

    #[test]
    fn publish_forms() {
        let p = Port::parse_publish("127.0.0.1:8080:80").unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.container_port),
            ("127.0.0.1", 8080, 80)
        );
        assert!(!p.publish_all);
        let p = Port::parse_publish("5353:53/udp").unwrap();
        assert_eq!((p.host_port, p.protocol()), (5353, "udp"));
        let p = Port::parse_publish("80").unwrap();
        assert!(p.publish_all && p.host_port == 0);
        let p = Port::parse_publish("127.0.0.1::80").unwrap();
        assert!(p.publish_all && p.host_ip == "127.0.0.1");
        for bad in ["", "x", "0", "1:2:3:4", "80/sctp", "70000:80", "host:1:2"] {
            assert!(Port::parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_hyperd_pod_json() {
        let spec = PodSpec::parse(
            br#"{"id":"web","containers":[{"name":"c1","image":"busybox","command":["echo","hi"],
                "envs":[{"env":"A","value":"b"}],"tty":true}],"resource":{"vcpu":2,"memory":256}}"#,
        )
        .unwrap();
        assert_eq!(spec.id, "web");
        assert_eq!(spec.containers[0].command, vec!["echo", "hi"]);
        assert_eq!(spec.resource.vcpu, 2);
        assert!(spec.containers[0].tty);
    }

    #[test]
    fn volumes_and_their_kinds() {
        let spec = PodSpec::parse(
            br#"{"volumes":[{"name":"h","source":"/srv/data","driver":"vfs"},{"name":"l","source":""},
                {"name":"n","source":"db","driver":"local","readOnly":true}],
                "containers":[{"image":"b","readonly":true,"volumes":[{"volume":"h","path":"/data"},
                {"volume":"n","path":"/db/","readOnly":true}]}]}"#,
        )
        .unwrap();
        let kinds: Vec<_> = spec.volumes.iter().map(|v| v.kind().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                VolumeKind::HostPath,
                VolumeKind::PodLocal,
                VolumeKind::Named
            ]
        );
        assert_eq!(spec.volumes[2].volume_name(), "db");
        assert!(spec.containers[0].readonly && spec.containers[0].volumes[1].read_only);
        assert!(valid_mount_path("/device").is_ok());
        let (v, m) = VolumeMount::parse_volume_flag("/srv/d:/data:ro,z", "v0".into()).unwrap();
        assert_eq!(
            (v.kind().unwrap(), m.read_only),
            (VolumeKind::HostPath, true)
        );
        let (v, _) = VolumeMount::parse_volume_flag("db:/db", "v1".into()).unwrap();
        assert_eq!(
            (v.kind().unwrap(), v.volume_name()),
            (VolumeKind::Named, "db")
        );
        let (v, m) = VolumeMount::parse_volume_flag("/cache", "v2".into()).unwrap();
        assert_eq!(
            (v.kind().unwrap(), m.path.as_str()),
            (VolumeKind::PodLocal, "/cache")
        );
        for bad in ["a:b:c:d", "/x:", ":/y", "/x:/y:bogus", "/x:/proc"] {
            assert!(
                VolumeMount::parse_volume_flag(bad, "v".into()).is_err(),
                "{bad}"
            );
        }
        assert!(valid_mount_path("/dev/shm").is_err());
    }

    #[test]
    fn defaults_resources() {
        let spec = PodSpec::parse(br#"{"containers":[{"image":"busybox"}]}"#).unwrap();
        assert_eq!(spec.resource, Resource::default());
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            &br#"{"containers":[]}"#[..],
            br#"{"containers":[{"image":""}]}"#,
            br#"{"id":"../x","containers":[{"image":"busybox"}]}"#,
            br#"{"containers":[{"image":"b","name":"a"},{"image":"b","name":"a"}]}"#,
            br#"{"containers":[{"image":"b"}],"resource":{"vcpu":0}}"#,
            br#"{"containers":[{"image":"b"}],"resource":{"memory":1}}"#,
            br#"{"containers":[{"image":"b","workdir":"rel"}]}"#,
            br#"{"containers":[{"image":"b","envs":[{"env":"A=B"}]}]}"#,
            br#"{"containers":[{"image":"b","restartPolicy":"sometimes"}]}"#,
            br#"{"containers":[{"image":"b","ports":[{"containerPort":80,"hostPort":8080},{"containerPort":81,"hostPort":8080}]}]}"#,
            br#"{"containers":[{"image":"b","ports":[{"containerPort":0}]}]}"#,
            br#"{"containers":[{"image":"b","files":[{"filename":"nope","path":"/x"}]}]}"#,
            br#"{"files":[{"name":"f","content":"x"}],"containers":[{"image":"b","files":[{"filename":"f","path":"/../x"}]}]}"#,
            br#"{"files":[{"name":"f","encoding":"base64","content":"!!"}],"containers":[{"image":"b"}]}"#,
            br#"{"dns":["not-an-ip"],"containers":[{"image":"b"}]}"#,
            br#"{"containers": "#,
            br#"{"volumes":[{"name":"v","source":"rel/dir"}],"containers":[{"image":"b"}]}"#,
            br#"{"volumes":[{"name":"v","source":"/a/../etc"}],"containers":[{"image":"b"}]}"#,
            br#"{"volumes":[{"name":"v","source":"/a","driver":"rbd"}],"containers":[{"image":"b"}]}"#,
            br#"{"volumes":[{"name":"v"},{"name":"v"}],"containers":[{"image":"b"}]}"#,
            br#"{"volumes":[{"name":"v"}],"containers":[{"image":"b","volumes":[{"volume":"w","path":"/d"}]}]}"#,
            br#"{"volumes":[{"name":"v"}],"containers":[{"image":"b","volumes":[{"volume":"v","path":"/proc/x"}]}]}"#,
            br#"{"volumes":[{"name":"v"}],"containers":[{"image":"b","volumes":[{"volume":"v","path":"/dev"}]}]}"#,
            br#"{"volumes":[{"name":"v"}],"containers":[{"image":"b","volumes":[{"volume":"v","path":"/a/../b"}]}]}"#,
            br#"{"volumes":[{"name":"v"}],"containers":[{"image":"b","volumes":[{"volume":"v","path":"/"}]}]}"#,
            br#"{"idMap":{"hostUid":0,"hostGid":100000},"containers":[{"image":"b"}]}"#,
            br#"{"idMap":{"hostUid":4294967000,"hostGid":100000},"containers":[{"image":"b"}]}"#,
        ] {
            assert!(
                PodSpec::parse(bad).is_err(),
                "accepted {}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
