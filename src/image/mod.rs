//! The local image store.
//!
//! Layout under `<root>/image/`:
//! - `images/<hex id>/config.json`: [`ImageRecord`] (references, creation time, config).
//! - `images/<hex id>/rootfs.erofs`: the read-only root filesystem a VM gets as a disk.
//! - `references.json`: `repo:tag` to image id.
//!
//! Every file is written to a temporary name and renamed into place, so a crash leaves
//! either the old or the new state, never a half-written one.
mod rootfs;
pub mod unpack;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("invalid reference {0:?}")]
    BadReference(String),
    #[error("invalid image archive: {0}")]
    BadArchive(String),
    #[error("image {0} is in use by a pod")]
    InUse(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a container takes from its image when its spec says nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<hex>`.
    pub id: String,
    pub repo_tags: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Bytes of the unpacked content.
    pub size: u64,
    pub config: ImageConfig,
}

pub struct ImageStore {
    dir: PathBuf,
    lock: Mutex<()>,
}

/// `name[:tag]` with the default tag `latest`, as `name:tag`.
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    let r = reference.trim();
    let bad = || ImageError::BadReference(reference.to_string());
    if r.is_empty() || r.len() > 255 || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (name, tag) = match r.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (r, "latest"),
    };
    let name_ok = !name.is_empty()
        && name.split('/').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| {
                    c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || matches!(c, '.' | '_' | '-' | ':')
                })
        });
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !name_ok || !tag_ok {
        return Err(bad());
    }
    Ok(format!("{name}:{tag}"))
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        let dir = root.join("image");
        std::fs::create_dir_all(dir.join("images"))?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        // Leftovers of an interrupted import.
        for e in std::fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
        Ok(ImageStore {
            dir,
            lock: Mutex::new(()),
        })
    }

    fn references(&self) -> BTreeMap<String, String> {
        std::fs::read(self.dir.join("references.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_references(&self, refs: &BTreeMap<String, String>) -> Result<(), ImageError> {
        write_atomic(
            &self.dir.join("references.json"),
            &serde_json::to_vec_pretty(refs).expect("map serializes"),
        )
    }

    fn image_dir(&self, hex: &str) -> PathBuf {
        self.dir.join("images").join(hex)
    }

    /// Finds an image by `name[:tag]`, full id, or a unique id prefix of 4+ hex digits.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let refs = self.references();
        if let Ok(norm) = normalize_reference(reference) {
            if let Some(id) = refs.get(&norm) {
                return self.load(id);
            }
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 4 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let matches: Vec<_> = self
                .list()?
                .into_iter()
                .filter(|r| r.id["sha256:".len()..].starts_with(hex))
                .collect();
            if matches.len() == 1 {
                return Ok(matches.into_iter().next().unwrap());
            }
        }
        Err(ImageError::NotFound(reference.to_string()))
    }

    fn load(&self, id: &str) -> Result<ImageRecord, ImageError> {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        let bytes = std::fs::read(self.image_dir(hex).join("config.json"))
            .map_err(|_| ImageError::NotFound(id.to_string()))?;
        let mut rec: ImageRecord =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::Io(std::io::Error::other(e)))?;
        rec.repo_tags = self
            .references()
            .into_iter()
            .filter(|(_, v)| v == &rec.id)
            .map(|(k, _)| k)
            .collect();
        Ok(rec)
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.join("images"))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Ok(rec) = self.load(&format!("sha256:{name}")) {
                out.push(rec);
            }
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The root filesystem disk of an image.
    pub fn rootfs_path(&self, rec: &ImageRecord) -> PathBuf {
        self.image_dir(&rec.id["sha256:".len()..])
            .join("rootfs.erofs")
    }

    /// Imports a root filesystem tarball (optionally gzip-compressed) as `reference`.
    /// Blocking: call from a blocking thread.
    pub fn import(
        &self,
        reference: &str,
        mut tarball: impl Read,
        config: ImageConfig,
    ) -> Result<ImageRecord, ImageError> {
        let reference = normalize_reference(reference)?;
        let tmp = tempdir_in(&self.dir.join("tmp"))?;
        let result = (|| {
            // Spool the archive while hashing it: the id is the digest of what was sent.
            let tar_path = tmp.join("layer.tar");
            let mut hasher = Sha256::new();
            {
                let mut f = std::fs::File::create(&tar_path)?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = tarball.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    std::io::Write::write_all(&mut f, &buf[..n])?;
                }
            }
            let hex = hex::encode(hasher.finalize());
            let id = format!("sha256:{hex}");
            let final_dir = self.image_dir(&hex);
            if !final_dir.join("config.json").exists() {
                let root = tmp.join("rootfs");
                std::fs::create_dir(&root)?;
                let size = unpack::unpack_layer(
                    unpack::open_maybe_gzip(std::fs::File::open(&tar_path)?)?,
                    &root,
                    &unpack::Limits::default(),
                )
                .map_err(|e| ImageError::BadArchive(e.to_string()))?;
                std::fs::remove_file(&tar_path)?;
                let image_dir = tmp.join("image");
                std::fs::create_dir(&image_dir)?;
                rootfs::make_erofs(&root, &image_dir.join("rootfs.erofs"))?;
                let rec = ImageRecord {
                    id: id.clone(),
                    repo_tags: vec![],
                    created: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    size,
                    config,
                };
                write_atomic(
                    &image_dir.join("config.json"),
                    &serde_json::to_vec_pretty(&rec).expect("record serializes"),
                )?;
                let _guard = self.lock.lock().unwrap();
                if !final_dir.exists() {
                    std::fs::rename(&image_dir, &final_dir)?;
                    sync_dir(&self.dir.join("images"));
                }
            }
            let _guard = self.lock.lock().unwrap();
            let mut refs = self.references();
            refs.insert(reference.clone(), id.clone());
            self.write_references(&refs)?;
            drop(_guard);
            self.load(&id)
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    /// Removes an image (or just one of its references when it has several).
    pub fn remove(
        &self,
        reference: &str,
        in_use: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, ImageError> {
        let rec = self.resolve(reference)?;
        let _guard = self.lock.lock().unwrap();
        let mut refs = self.references();
        let norm = normalize_reference(reference).ok();
        let mut removed = Vec::new();
        if let Some(n) = norm.filter(|n| refs.get(n) == Some(&rec.id) && rec.repo_tags.len() > 1) {
            refs.remove(&n);
            self.write_references(&refs)?;
            removed.push(format!("Untagged: {n}"));
            return Ok(removed);
        }
        if in_use(&rec.id) {
            return Err(ImageError::InUse(reference.to_string()));
        }
        refs.retain(|k, v| {
            if v == &rec.id {
                removed.push(format!("Untagged: {k}"));
                false
            } else {
                true
            }
        });
        self.write_references(&refs)?;
        let hex = &rec.id["sha256:".len()..];
        let doomed = self.dir.join("tmp").join(format!("rm-{hex}"));
        std::fs::rename(self.image_dir(hex), &doomed)?;
        let _ = std::fs::remove_dir_all(&doomed);
        removed.push(format!("Deleted: {}", rec.id));
        Ok(removed)
    }
}

fn tempdir_in(parent: &Path) -> Result<PathBuf, ImageError> {
    let p = parent.join(crate::ids::random_hex(8));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

/// Writes a file so that readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", crate::ids::random_hex(4)));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_references() {
        assert_eq!(normalize_reference("busybox").unwrap(), "busybox:latest");
        assert_eq!(normalize_reference("busybox:1.36").unwrap(), "busybox:1.36");
        assert_eq!(
            normalize_reference("localhost:5000/a/b").unwrap(),
            "localhost:5000/a/b:latest"
        );
        assert!(normalize_reference("Busy Box").is_err());
        assert!(normalize_reference("").is_err());
        assert!(normalize_reference("a:b c").is_err());
    }
}
