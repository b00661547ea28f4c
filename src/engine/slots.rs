//! Disk slots: every VM boots with a few empty, read-only virtio-blk disks (sparse files
//! in its directory). A container's image is copied into a free slot when the container
//! is placed in the VM, and the agent drops its cached blocks before mounting it. So a VM
//! can take containers after it booted (`POST /container/create` on a running pod, VMs
//! booted ahead by `POST /vm/create`) although qemu's microvm has no disk hotplug.
use super::{Container, Engine, EngineError, Pod, VmRuntime, AGENT_TIMEOUT};
use crate::vm::net::VmNet;
use crate::vm::DiskConfig;
use hyperd_agent::protocol::Op;
use std::path::{Path, PathBuf};

/// Size of every slot disk; sparse, so it costs what the image written into it costs.
pub(crate) const SLOT_BYTES: u64 = 8 << 30;
/// Slots a VM gets at least.
pub(crate) const MIN_SLOTS: usize = 4;

pub(crate) fn serial(i: usize) -> String {
    format!("hyper-s{i}")
}

fn path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("slot-{i}.img"))
}

/// Creates `n` empty slot files in a VM directory; returns their disks.
pub(crate) fn make(dir: &Path, n: usize) -> std::io::Result<Vec<DiskConfig>> {
    std::fs::create_dir_all(dir)?;
    (0..n)
        .map(|i| {
            let p = path(dir, i);
            std::fs::File::create(&p)?.set_len(SLOT_BYTES)?;
            Ok(DiskConfig {
                path: p,
                serial: serial(i),
                read_only: true,
            })
        })
        .collect()
}

/// The scratch disk's virtio-blk serial.
pub(crate) const SCRATCH_SERIAL: &str = hyperd_agent::protocol::SCRATCH_SERIAL;

/// Creates a VM's scratch disk: a new sparse file of `mib` MiB, formatted ext4 by
/// `mkfs.ext4` (the host formats an empty file; only the guest ever mounts it). It holds
/// the writable layers of the VM's containers.
pub(crate) fn make_scratch(dir: &Path, mib: u32) -> std::io::Result<DiskConfig> {
    let p = dir.join("scratch.img");
    make_ext4(&p, mib, "hyper-scratch")?;
    Ok(DiskConfig {
        path: p,
        serial: SCRATCH_SERIAL.to_string(),
        read_only: false,
    })
}

/// A new sparse file of `mib` MiB at `path`, formatted ext4 by `mkfs.ext4` while it is
/// empty (lazy inode tables and journal: milliseconds, a few MiB on the host).
pub(crate) fn make_ext4(p: &Path, mib: u32, label: &str) -> std::io::Result<()> {
    std::fs::File::create(p)?.set_len(u64::from(mib) << 20)?;
    let out = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            "-L",
            label,
        ])
        .arg(p)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| std::io::Error::other(format!("mkfs.ext4: {e}")))?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "mkfs.ext4: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Writes an image's root filesystem into a slot (keeping the slot's size).
fn fill(dir: &Path, i: usize, image: &Path) -> std::io::Result<()> {
    let size = std::fs::metadata(image)?.len();
    if size > SLOT_BYTES {
        return Err(std::io::Error::other(format!(
            "image of {size} bytes is larger than a disk slot ({SLOT_BYTES})"
        )));
    }
    let p = path(dir, i);
    std::fs::copy(image, &p)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)?
        .set_len(SLOT_BYTES)
}

/// Largest pod file (one agent frame carries it).
pub(crate) const MAX_POD_FILE_BYTES: u64 = 1 << 20;

impl Engine {
    /// A pod file's content: inline, from a host file (`file://`, checked like a volume
    /// source) or downloaded (`http(s)://`, under the image sources' rules), at most
    /// [`MAX_POD_FILE_BYTES`].
    pub(super) async fn pod_file_bytes(
        &self,
        f: &crate::spec::PodFile,
    ) -> Result<Vec<u8>, EngineError> {
        let too_big = || {
            EngineError::Invalid(format!(
                "pod file {} is larger than {MAX_POD_FILE_BYTES} bytes",
                f.name
            ))
        };
        let path = if f.uri.is_empty() {
            return Ok(f.bytes()?);
        } else if let Some(host_path) = f.uri.strip_prefix("file://") {
            let (host_path, root) = (host_path.to_string(), self.cfg.root.clone());
            super::blocking(move || {
                let p = super::volumes::checked_host_path(&host_path, &root)?;
                if !p.is_file() {
                    return Err(EngineError::Invalid(format!(
                        "{host_path} is not a regular file"
                    )));
                }
                Ok(p)
            })
            .await?
        } else if f.uri.starts_with("http://") || f.uri.starts_with("https://") {
            let tmp = self
                .cfg
                .root
                .join(format!("download-{}.tmp", crate::ids::random_hex(8)));
            let limits = crate::image::remote_archive::DownloadLimits {
                max_bytes: MAX_POD_FILE_BYTES,
                timeout: std::time::Duration::from_secs(60),
            };
            let got = crate::image::remote_archive::download(&f.uri, &tmp, &limits).await;
            let data = match got {
                Ok(()) => tokio::fs::read(&tmp)
                    .await
                    .map_err(EngineError::io(format!("pod file {}", f.name))),
                Err(e) => Err(e.into()),
            };
            let _ = tokio::fs::remove_file(&tmp).await;
            return data;
        } else {
            return Err(EngineError::Invalid(format!(
                "pod file {}: unsupported uri (file://, http://, https://)",
                f.name
            )));
        };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(EngineError::io(path.display()))?;
        let mut data = Vec::new();
        use tokio::io::AsyncReadExt;
        file.take(MAX_POD_FILE_BYTES + 1)
            .read_to_end(&mut data)
            .await
            .map_err(EngineError::io(path.display()))?;
        if data.len() as u64 > MAX_POD_FILE_BYTES {
            return Err(too_big());
        }
        Ok(data)
    }

    /// Puts a container into a running VM: a free slot gets its image, the agent mounts
    /// it as the container's root filesystem.
    pub(super) async fn place(
        &self,
        pod: &Pod,
        vm: &VmRuntime,
        c: &Container,
    ) -> Result<(), EngineError> {
        let slot = {
            let mut slots = vm.slots.lock().unwrap();
            let i = slots.iter().position(Option::is_none).ok_or_else(|| {
                EngineError::WrongState(format!("VM {} has no free disk slot", vm.id))
            })?;
            slots[i] = Some(c.id.clone());
            i
        };
        let result = async {
            let (dir, image) = (vm.dir.clone(), self.images.rootfs_path(&c.image));
            tokio::task::spawn_blocking(move || fill(&dir, slot, &image))
                .await
                .map_err(|e| EngineError::io("the slot filler")(std::io::Error::other(e)))?
                .map_err(EngineError::io(format!("slot {slot}")))?;
            let hostname = if pod.spec.hostname.is_empty() {
                pod.name.clone()
            } else {
                pod.spec.hostname.clone()
            };
            let mounts = container_mounts(&pod.spec, &c.spec)?;
            if (!mounts.is_empty() || c.spec.readonly || c.spec.files.iter().any(|f| !f.owner().is_empty()))
                && vm.agent_protocol < 3
            {
                return Err(EngineError::WrongState(format!(
                    "VM {} runs an older guest agent (protocol {}) without volumes, read-only roots or file owners",
                    vm.id, vm.agent_protocol
                )));
            }
            let capabilities = c.spec.capabilities()?.map(|names| {
                names
                    .iter()
                    .filter_map(|n| crate::spec::CAPABILITIES.iter().position(|c| c == n))
                    .map(|i| i as u32)
                    .collect::<Vec<u32>>()
            });
            let asks_privileges = c.spec.privileged
                || c.spec.no_new_privileges
                || !c.spec.cap_add.is_empty()
                || !c.spec.cap_drop.is_empty();
            if asks_privileges && vm.agent_protocol < 4 {
                return Err(EngineError::WrongState(format!(
                    "VM {} runs an older guest agent (protocol {}) without capability sets",
                    vm.id, vm.agent_protocol
                )));
            }
            let create = Op::CreateContainer {
                container: c.id.clone(),
                image_disk_serial: serial(slot),
                fstype: "erofs".into(),
                hostname: Some(hostname.chars().take(63).collect()),
                mounts,
                readonly: c.spec.readonly,
                capabilities,
                privileged: c.spec.privileged,
                no_new_privileges: c.spec.no_new_privileges,
            };
            vm.agent.call(create, AGENT_TIMEOUT).await?;
            // The pod's names, name servers and files, into the container's writable
            // layer.
            let mut files = vec![(
                "/etc/hosts".to_string(),
                hosts_file(&pod.spec, &hostname, &vm.net).into_bytes(),
                0o644,
                String::new(),
            )];
            if let Some(conf) = resolv_conf(&pod.spec, &vm.net) {
                files.push((
                    "/etc/resolv.conf".to_string(),
                    conf.into_bytes(),
                    0o644,
                    String::new(),
                ));
            }
            for f in &c.spec.files {
                let src = pod
                    .spec
                    .files
                    .iter()
                    .find(|p| p.name == f.filename)
                    .ok_or_else(|| EngineError::Invalid(format!("no pod file {}", f.filename)))?;
                let data = self.pod_file_bytes(src).await?;
                files.push((f.path.clone(), data, f.mode()?, f.owner()));
            }
            for (path, data, mode, owner) in files {
                let op = Op::WriteFile {
                    container: c.id.clone(),
                    path: path.clone(),
                    data,
                    mode,
                    owner,
                };
                vm.agent
                    .call(op, AGENT_TIMEOUT)
                    .await
                    .map_err(|e| EngineError::Invalid(format!("file {path}: {e}")))?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            vm.slots.lock().unwrap()[slot] = None;
        }
        result
    }

    /// Takes a container out of a running VM and frees its slot.
    pub(super) async fn unplace(&self, vm: &VmRuntime, c: &Container) {
        let _ = vm
            .agent
            .call(
                Op::RemoveContainer {
                    container: c.id.clone(),
                },
                AGENT_TIMEOUT,
            )
            .await;
        for s in vm.slots.lock().unwrap().iter_mut() {
            if s.as_deref() == Some(c.id.as_str()) {
                *s = None;
            }
        }
    }
}

/// The share entries a container mounts, from its spec's volume mounts.
pub(crate) fn container_mounts(
    pod: &crate::spec::PodSpec,
    c: &crate::spec::ContainerSpec,
) -> Result<Vec<hyperd_agent::protocol::Mount>, EngineError> {
    c.volumes
        .iter()
        .map(|m| {
            let i = pod
                .volumes
                .iter()
                .position(|v| v.name == m.volume)
                .ok_or_else(|| EngineError::Invalid(format!("no pod volume {:?}", m.volume)))?;
            let kind = pod.volumes[i].kind().ok();
            let block = kind == Some(crate::spec::VolumeKind::Block);
            let tmpfs = kind == Some(crate::spec::VolumeKind::Tmpfs);
            Ok(hyperd_agent::protocol::Mount {
                tmpfs,
                share: if block || tmpfs {
                    String::new()
                } else {
                    super::volumes::entry_name(i)
                },
                disk: if block {
                    super::volumes::disk_serial(i)
                } else {
                    String::new()
                },
                target: m.path.clone(),
                read_only: m.read_only || pod.volumes[i].read_only,
            })
        })
        .collect()
}

/// A container's `/etc/hosts`: localhost, the pod's hostname at its address, and the
/// spec's extra hosts (`host-gateway` is the host as the pod reaches it).
pub(crate) fn hosts_file(spec: &crate::spec::PodSpec, hostname: &str, net: &VmNet) -> String {
    // The pod's own address and the gateway (the host, as the pod reaches it).
    let (own, gateway) = match net.guest() {
        Some(g) => (g.address.to_string(), g.gateway.map(|a| a.to_string())),
        None => ("127.0.1.1".to_string(), None),
    };
    let mut s = format!("127.0.0.1\tlocalhost\n{own}\t{hostname}\n");
    for (name, addr) in spec.extra_host_entries() {
        let addr = match (addr, gateway.as_deref()) {
            ("host-gateway", Some(gw)) => gw,
            // No network: the host cannot be reached; the name still resolves, nowhere.
            ("host-gateway", None) => "127.0.0.1",
            (a, _) => a,
        };
        s.push_str(&format!("{addr}\t{name}\n"));
    }
    s
}

/// A container's `/etc/resolv.conf`: the spec's name servers, else the backend's DNS
/// forwarder; `None` keeps the image's (a pod without a network).
pub(crate) fn resolv_conf(spec: &crate::spec::PodSpec, net: &VmNet) -> Option<String> {
    let servers: Vec<&str> = if !spec.dns.is_empty() {
        spec.dns.iter().map(String::as_str).collect()
    } else if matches!(net, VmNet::User { .. }) {
        vec![crate::vm::net::DNS_FORWARD]
    } else {
        return None;
    };
    Some(
        servers
            .iter()
            .map(|d| format!("nameserver {d}\n"))
            .collect(),
    )
}

#[cfg(test)]
mod net_file_tests {
    use super::*;

    #[test]
    fn hosts_and_resolv_conf() {
        let spec = crate::spec::PodSpec {
            extra_hosts: vec![
                "host.docker.internal:host-gateway".into(),
                "db:10.9.8.7".into(),
            ],
            ..Default::default()
        };
        let user = VmNet::User {
            forwards: vec![],
            host_loopback: true,
        };
        let h = hosts_file(&spec, "web", &user);
        assert!(h.contains("10.0.2.15\tweb\n"), "{h}");
        assert!(h.contains("10.0.2.2\thost.docker.internal\n"), "{h}");
        assert!(h.contains("10.9.8.7\tdb\n"), "{h}");
        assert_eq!(resolv_conf(&spec, &user).unwrap(), "nameserver 10.0.2.3\n");
        assert_eq!(resolv_conf(&spec, &VmNet::None), None);
        let with_dns = crate::spec::PodSpec {
            dns: vec!["127.0.0.1".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(&with_dns, &VmNet::None).unwrap(),
            "nameserver 127.0.0.1\n"
        );
    }
}
