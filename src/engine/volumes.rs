//! Volumes: what a pod's volumes are on the host, and the named volumes that outlive
//! pods.
//!
//! Every volume kind reaches the guest the same way, as an entry of the VM's share
//! (virtio-fs, [`crate::vm::share`]):
//! - a host path: that directory or file (canonical; never under `/proc`, `/sys`, `/dev`
//!   or the daemon's own root);
//! - a pod-local volume: `<pod dir>/volumes/<name>`, removed with the pod;
//! - a named volume: `<root>/volumes/<name>/_data`, with its record beside it in
//!   `volume.json`, kept until it is removed.
//!
//! A block volume is the exception: `<root>/volumes/<name>/disk.img`, a sparse ext4 image
//! the host formats while it is empty and only guests mount, attached to the VM as a
//! virtio-blk disk. One running pod at a time may have it read-write.
use super::{Engine, EngineError, Pod};
use crate::spec::{PodSpec, VolumeKind};
use crate::vm::share::{ShareEntry, VmShare};
use crate::vm::DiskConfig;
use std::path::{Path, PathBuf};

/// Host paths a volume may not come from (with the daemon's root).
const FORBIDDEN_SOURCES: [&str; 3] = ["/proc", "/sys", "/dev"];

/// A named volume's record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NamedVolume {
    pub name: String,
    /// `local` (a directory) or `block` (an ext4 disk image).
    pub driver: String,
    /// A block volume's size in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u32>,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where its data is on the host (a block volume's disk image).
    #[serde(skip)]
    pub mountpoint: PathBuf,
}

/// A block volume's default size: 10 GiB, sparse.
pub(crate) const DEFAULT_BLOCK_MIB: u32 = 10 * 1024;

/// What a pod's VM gets for its volumes: share entries (virtio-fs) and disks (block
/// volumes).
#[derive(Debug, Default)]
pub struct PodStorage {
    pub share: VmShare,
    pub disks: Vec<DiskConfig>,
}

impl PodStorage {
    pub fn is_empty(&self) -> bool {
        self.share.is_empty() && self.disks.is_empty()
    }
}

/// The virtio-blk serial of the pod's `i`th volume when it is a block volume.
pub(crate) fn disk_serial(i: usize) -> String {
    format!("hyper-b{i}")
}

/// How a volume is created when a pod or a client names one that does not exist.
#[derive(Debug, Clone, Copy)]
pub enum VolumeDriver {
    Local,
    Block { size_mib: u32 },
}

/// The share entry name of the pod's `i`th volume.
pub(crate) fn entry_name(i: usize) -> String {
    format!("v{i}")
}

/// The host path a volume's source names, checked: it exists, and neither it nor what
/// its symbolic links lead to is under `/proc`, `/sys`, `/dev` or the daemon's root.
pub(crate) fn checked_host_path(source: &str, root: &Path) -> Result<PathBuf, EngineError> {
    let p = Path::new(source);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(EngineError::Invalid(format!(
            "a volume source must be an absolute path without \"..\", not {source:?}"
        )));
    }
    let real = std::fs::canonicalize(p)
        .map_err(|e| EngineError::Invalid(format!("volume source {source}: {e}")))?;
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let forbidden = FORBIDDEN_SOURCES
        .iter()
        .map(PathBuf::from)
        .chain(std::iter::once(root))
        .find(|f| real.starts_with(f));
    if let Some(f) = forbidden {
        return Err(EngineError::Invalid(format!(
            "volume source {source} is {} (under {}): not allowed",
            real.display(),
            f.display()
        )));
    }
    let meta = std::fs::metadata(&real)
        .map_err(|e| EngineError::Invalid(format!("volume source {source}: {e}")))?;
    if !meta.is_dir() && !meta.is_file() {
        return Err(EngineError::Invalid(format!(
            "volume source {source} is neither a directory nor a regular file"
        )));
    }
    Ok(real)
}

impl Engine {
    fn volumes_dir(&self) -> PathBuf {
        self.cfg.root.join("volumes")
    }

    /// What a pod's VM gets for its volumes: share entries and block volume disks, in
    /// the spec's order. Pod-local directories and named volumes are created as needed;
    /// a block volume another running pod holds read-write (or holds at all, when this
    /// pod wants it read-write) is refused.
    pub(super) async fn pod_storage(&self, pod: &Pod) -> Result<PodStorage, EngineError> {
        self.check_block_volumes_free(pod)?;
        let spec = pod.spec.clone();
        let (root, pod_dir, volumes_dir) =
            (self.cfg.root.clone(), pod.dir.clone(), self.volumes_dir());
        let mut storage =
            super::blocking(move || resolve_storage(&spec, &root, &pod_dir, &volumes_dir)).await?;
        storage.share.id_map = pod.spec.id_map.map(|m| crate::vm::share::IdMap {
            host_uid: m.host_uid,
            host_gid: m.host_gid,
            size: m.size,
        });
        if !storage.share.is_empty() && !self.driver.has_shared_dirs() {
            return Err(crate::vm::VmError::Unsupported(format!(
                "the {} driver cannot share host directories",
                self.driver.describe()
            ))
            .into());
        }
        Ok(storage)
    }

    /// Refuses a pod's start while another pod with a VM holds one of its block volumes
    /// in a way that conflicts (either side read-write).
    fn check_block_volumes_free(&self, pod: &Pod) -> Result<(), EngineError> {
        let wanted = block_volumes(&pod.spec);
        if wanted.is_empty() {
            return Ok(());
        }
        for other in self.pods() {
            if other.id == pod.id || other.vm().is_none() {
                continue;
            }
            for (name, rw) in block_volumes(&other.spec) {
                if let Some((_, mine_rw)) = wanted.iter().find(|(n, _)| *n == name) {
                    if rw || *mine_rw {
                        return Err(EngineError::WrongState(format!(
                            "block volume {name} is in use by pod {}{}",
                            other.name,
                            if rw { " (read-write)" } else { "" }
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates a named volume (an existing one is returned as it is, as Docker does).
    pub async fn create_volume(
        &self,
        name: &str,
        labels: std::collections::BTreeMap<String, String>,
        driver: VolumeDriver,
    ) -> Result<NamedVolume, EngineError> {
        if !crate::spec::valid_name(name) {
            return Err(EngineError::Invalid(format!(
                "invalid volume name {name:?}"
            )));
        }
        let (dir, name) = (self.volumes_dir(), name.to_string());
        super::blocking(move || ensure_named(&dir, &name, labels, driver)).await
    }

    /// Where a named volume's data is on the host (a block volume's disk image), from
    /// its name and kind alone: no file is read.
    pub fn volume_path(&self, name: &str, block: bool) -> PathBuf {
        data_path(&self.volumes_dir(), name, block)
    }

    /// Every named volume.
    pub async fn volumes(&self) -> Result<Vec<NamedVolume>, EngineError> {
        let dir = self.volumes_dir();
        super::blocking(move || {
            let mut v = Vec::new();
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if let Ok(vol) = read_named(&dir, &e.file_name().to_string_lossy()) {
                        v.push(vol);
                    }
                }
            }
            v.sort_by(|a: &NamedVolume, b| a.name.cmp(&b.name));
            Ok(v)
        })
        .await
    }

    pub async fn volume(&self, name: &str) -> Result<NamedVolume, EngineError> {
        let (dir, n) = (self.volumes_dir(), name.to_string());
        super::blocking(move || Ok(read_named(&dir, &n).ok()))
            .await?
            .ok_or_else(|| EngineError::NoSuch(format!("no such volume: {name}")))
    }

    /// Pods (by name) whose spec names the volume.
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        self.pods()
            .into_iter()
            .filter(|p| {
                p.spec.volumes.iter().any(|v| {
                    matches!(v.kind(), Ok(VolumeKind::Named | VolumeKind::Block))
                        && v.volume_name() == name
                })
            })
            .map(|p| p.name.clone())
            .collect()
    }

    /// Removes a named volume and its data; refused while a pod names it.
    pub async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        self.volume(name).await?;
        let users = self.volume_users(name);
        if !users.is_empty() {
            return Err(EngineError::WrongState(format!(
                "volume {name} is in use by pod {}",
                users.join(", ")
            )));
        }
        super::remove_tree(self.volumes_dir().join(name)).await;
        Ok(())
    }

    /// Removes every named volume no pod names; returns their names.
    pub async fn prune_volumes(&self) -> Result<Vec<String>, EngineError> {
        let mut removed = Vec::new();
        for v in self.volumes().await? {
            if self.volume_users(&v.name).is_empty() {
                super::remove_tree(self.volumes_dir().join(&v.name)).await;
                removed.push(v.name);
            }
        }
        Ok(removed)
    }
}

/// Whether a pod has block volumes.
pub(crate) fn has_block_volumes(spec: &PodSpec) -> bool {
    !block_volumes(spec).is_empty()
}

/// A spec's block volumes: (name, whether some container mounts it read-write).
fn block_volumes(spec: &PodSpec) -> Vec<(&str, bool)> {
    spec.volumes
        .iter()
        .filter(|v| v.kind().ok() == Some(VolumeKind::Block))
        .map(|v| {
            let rw = !v.read_only
                && spec
                    .containers
                    .iter()
                    .flat_map(|c| &c.volumes)
                    .any(|m| m.volume == v.name && !m.read_only);
            (v.volume_name(), rw)
        })
        .collect()
}

/// The share entries and disks of a spec's volumes (blocking: creates directories and
/// disks, reads links).
fn resolve_storage(
    spec: &PodSpec,
    root: &Path,
    pod_dir: &Path,
    volumes_dir: &Path,
) -> Result<PodStorage, EngineError> {
    let mut storage = PodStorage::default();
    for (i, v) in spec.volumes.iter().enumerate() {
        let source = match v.kind()? {
            VolumeKind::HostPath => checked_host_path(&v.source, root)?,
            VolumeKind::PodLocal => {
                let d = pod_dir.join("volumes").join(&v.name);
                std::fs::create_dir_all(&d).map_err(EngineError::io(d.display()))?;
                // The pod's own: its guest root owns it, mapped or not.
                if let Some(m) = &spec.id_map {
                    std::os::unix::fs::chown(&d, Some(m.host_uid), Some(m.host_gid))
                        .map_err(EngineError::io(d.display()))?;
                }
                d
            }
            VolumeKind::Named => {
                ensure_named(
                    volumes_dir,
                    v.volume_name(),
                    Default::default(),
                    VolumeDriver::Local,
                )?
                .mountpoint
            }
            // In the guest's RAM, nothing on the host.
            VolumeKind::Tmpfs => continue,
            VolumeKind::Block => {
                let vol = ensure_named(
                    volumes_dir,
                    v.volume_name(),
                    Default::default(),
                    VolumeDriver::Block {
                        size_mib: DEFAULT_BLOCK_MIB,
                    },
                )?;
                if vol.driver != "block" {
                    return Err(EngineError::Invalid(format!(
                        "volume {} is a {} volume, not a block volume",
                        vol.name, vol.driver
                    )));
                }
                storage.disks.push(DiskConfig {
                    path: vol.mountpoint,
                    serial: disk_serial(i),
                    read_only: v.read_only,
                });
                continue;
            }
        };
        if v.kind()? == VolumeKind::Named
            && read_named(volumes_dir, v.volume_name()).is_ok_and(|n| n.driver == "block")
        {
            return Err(EngineError::Invalid(format!(
                "volume {} is a block volume: name it with driver block",
                v.volume_name()
            )));
        }
        storage.share.entries.push(ShareEntry {
            name: entry_name(i),
            source,
            read_only: v.read_only,
        });
    }
    Ok(storage)
}

/// A named volume's data: `_data/`, or a block volume's `disk.img`.
fn data_path(dir: &Path, name: &str, block: bool) -> PathBuf {
    dir.join(name)
        .join(if block { "disk.img" } else { "_data" })
}

fn read_named(dir: &Path, name: &str) -> std::io::Result<NamedVolume> {
    if !crate::spec::valid_name(name) {
        return Err(std::io::Error::other("not a volume"));
    }
    let d = dir.join(name);
    let mut v: NamedVolume = serde_json::from_slice(&std::fs::read(d.join("volume.json"))?)
        .map_err(std::io::Error::other)?;
    v.mountpoint = data_path(dir, name, v.driver == "block");
    Ok(v)
}

/// The named volume `name`, created with `labels` if it does not exist (its record is
/// written last, renamed into place, so a crash leaves no half volume listed).
fn ensure_named(
    dir: &Path,
    name: &str,
    labels: std::collections::BTreeMap<String, String>,
    driver: VolumeDriver,
) -> Result<NamedVolume, EngineError> {
    if let Ok(v) = read_named(dir, name) {
        return Ok(v);
    }
    let d = dir.join(name);
    std::fs::create_dir_all(&d).map_err(EngineError::io(d.display()))?;
    let (driver, size_mib, mountpoint) = match driver {
        VolumeDriver::Local => {
            let data = data_path(dir, name, false);
            std::fs::create_dir_all(&data).map_err(EngineError::io(data.display()))?;
            ("local", None, data)
        }
        VolumeDriver::Block { size_mib } => {
            let disk = data_path(dir, name, true);
            super::slots::make_ext4(&disk, size_mib, "hyper-volume")
                .map_err(EngineError::io(disk.display()))?;
            ("block", Some(size_mib), disk)
        }
    };
    let v = NamedVolume {
        name: name.to_string(),
        driver: driver.into(),
        size_mib,
        created_at: super::io::chrono_now(),
        labels,
        mountpoint,
    };
    let tmp = d.join("volume.json.tmp");
    let json = serde_json::to_vec(&v).map_err(|e| EngineError::Invalid(e.to_string()))?;
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, d.join("volume.json")))
        .map_err(EngineError::io(d.display()))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_checked_where_they_lead() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let ok = t.path().join("data");
        std::fs::create_dir(&ok).unwrap();
        assert_eq!(
            checked_host_path(ok.to_str().unwrap(), &root).unwrap(),
            std::fs::canonicalize(&ok).unwrap()
        );
        let link = t.path().join("to-proc");
        std::os::unix::fs::symlink("/proc/self", &link).unwrap();
        let into_root = t.path().join("to-root");
        std::os::unix::fs::symlink(&root, &into_root).unwrap();
        for bad in [
            "/proc",
            "/sys/kernel",
            "/dev",
            "relative",
            "/tmp/../etc",
            link.to_str().unwrap(),
            into_root.to_str().unwrap(),
            root.to_str().unwrap(),
            "/no/such/dir",
        ] {
            assert!(
                matches!(checked_host_path(bad, &root), Err(EngineError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn named_volumes_are_created_once() {
        let t = tempfile::tempdir().unwrap();
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("a".to_string(), "b".to_string());
        let v = ensure_named(t.path(), "db", labels, VolumeDriver::Local).unwrap();
        assert!(v.mountpoint.is_dir());
        std::fs::write(v.mountpoint.join("x"), "1").unwrap();
        let again = ensure_named(
            t.path(),
            "db",
            Default::default(),
            VolumeDriver::Block { size_mib: 64 },
        )
        .unwrap();
        assert_eq!(again.labels.get("a").map(String::as_str), Some("b"));
        assert!(again.mountpoint.join("x").exists());
    }
}
