//! The local image store.
//!
//! Layout under `<root>/image/`:
//! - `blobs/sha256/<hex>`: manifests, configs and layers, content-addressed and verified
//!   on the way in ([`blobs`]); layers are shared between images.
//! - `images/<config hex>/record.json`: an image ([`ImageRecord`]): its manifest, layers,
//!   config, and `rootfs.erofs`, the read-only root filesystem a VM gets as a disk.
//! - `references.json`: `name:tag` and `name@sha256:…` to image id.
//!
//! Every file is written to a temporary name and renamed into place, so a crash leaves
//! either the old or the new state, never a half-written one. Images come from registries
//! ([`registry`]), from `docker save`/OCI archives ([`archive`]) or from root filesystem
//! tarballs ([`ImageStore::import`]); all three end in [`ImageStore::commit_image`].
pub mod archive;
pub(crate) mod auth;
pub(crate) mod beneath;
pub(crate) mod blobs;
pub mod commit;
pub(crate) mod progress;
pub mod registry;
pub(crate) mod remote_archive;
mod rootfs;
pub mod unpack;

use blobs::{digest_hex, BlobStore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
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
    #[error("invalid digest {0:?}")]
    BadDigest(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("invalid image: {0}")]
    BadImage(String),
    #[error("invalid image archive: {0}")]
    BadArchive(String),
    #[error("image {0} is in use by a pod")]
    InUse(String),
    #[error("registry: {0}")]
    Unauthorized(String),
    #[error("registry: {0}")]
    Registry(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

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
    /// `STOPSIGNAL`: what a graceful stop sends first.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config's digest, `sha256:<hex>`, as Docker's image ids.
    pub id: String,
    #[serde(default)]
    pub repo_tags: Vec<String>,
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Seconds since the epoch (the config's `created`, else the time of storing).
    pub created: u64,
    /// Bytes of the unpacked content.
    pub size: u64,
    pub config: ImageConfig,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub layers: Vec<LayerRecord>,
}

impl ImageRecord {
    pub fn hex(&self) -> &str {
        self.id.strip_prefix("sha256:").unwrap_or(&self.id)
    }
    pub fn short_id(&self) -> &str {
        &self.hex()[..12.min(self.hex().len())]
    }
}

/// A parsed reference: `familiar` is how the store names it (`busybox:latest`,
/// `localhost:5000/app:1`, `busybox@sha256:…`), `registry`/`repository` where it lives.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<ImageRef, ImageError> {
        let bad = || ImageError::BadReference(reference.to_string());
        let r = reference.trim();
        if r.is_empty() || r.len() > 512 || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let parsed: oci_client::Reference = r.parse().map_err(|_| bad())?;
        let digest = parsed.digest().map(str::to_string);
        if let Some(d) = &digest {
            digest_hex(d).map_err(|_| bad())?;
        }
        let tag = match (&digest, parsed.tag()) {
            (Some(_), None) => None,
            (_, Some(t)) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageRef {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag,
            digest,
        })
    }

    /// The repository as users write it: Docker Hub's `library/` and host left out.
    pub fn familiar_name(&self) -> String {
        if self.registry == "docker.io" {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    pub fn familiar(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}:{t}", self.familiar_name()),
            (None, Some(d)) => format!("{}@{d}", self.familiar_name()),
            (None, None) => format!("{}:latest", self.familiar_name()),
        }
    }

    /// The oci-client reference, by digest when there is one.
    pub fn oci(&self) -> oci_client::Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.clone(),
            ),
            (None, Some(t)) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
            ),
            (None, None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                "latest".into(),
            ),
        }
    }
}

/// `name[:tag]` with the default tag `latest`, in the store's familiar form.
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    Ok(ImageRef::parse(reference)?.familiar())
}

pub struct ImageStore {
    dir: PathBuf,
    pub blobs: BlobStore,
    lock: Mutex<()>,
    /// Per-layer limits against archive bombs.
    pub limits: unpack::Limits,
    /// Blobs an import, pull or load in progress needs: pruning leaves them alone.
    pins: Mutex<BTreeMap<String, usize>>,
}

/// Keeps blobs from being pruned while it lives.
pub struct Pin<'a> {
    store: &'a ImageStore,
    digests: Vec<String>,
}

impl Pin<'_> {
    pub fn add(&mut self, digest: &str) {
        *self
            .store
            .pins
            .lock()
            .unwrap()
            .entry(digest.to_string())
            .or_insert(0) += 1;
        self.digests.push(digest.to_string());
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut pins = self.store.pins.lock().unwrap();
        for d in &self.digests {
            if let Some(n) = pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(d);
                }
            }
        }
    }
}

impl ImageStore {
    pub fn open(root: &Path, limits: unpack::Limits) -> Result<ImageStore, ImageError> {
        let dir = root.join("image");
        std::fs::create_dir_all(dir.join("images"))?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        // Leftovers of an interrupted import, pull or removal.
        for e in std::fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
        }
        let blobs = BlobStore::open(&dir.join("blobs"))?;
        Ok(ImageStore {
            dir,
            blobs,
            lock: Mutex::new(()),
            limits,
            pins: Mutex::new(BTreeMap::new()),
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

    /// Finds an image by `name[:tag]`, `name@digest`, full id, or a unique id prefix of
    /// 4+ hex digits.
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
                .filter(|r| r.hex().starts_with(hex))
                .collect();
            if matches.len() == 1 {
                return Ok(matches.into_iter().next().unwrap());
            }
        }
        Err(ImageError::NotFound(reference.to_string()))
    }

    fn load(&self, id: &str) -> Result<ImageRecord, ImageError> {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        let bytes = std::fs::read(self.image_dir(hex).join("record.json"))
            .map_err(|_| ImageError::NotFound(id.to_string()))?;
        let mut rec: ImageRecord =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::Io(std::io::Error::other(e)))?;
        let names: Vec<String> = self
            .references()
            .into_iter()
            .filter(|(_, v)| v == &rec.id)
            .map(|(k, _)| k)
            .collect();
        rec.repo_tags = names.iter().filter(|n| !n.contains('@')).cloned().collect();
        rec.repo_digests = names.into_iter().filter(|n| n.contains('@')).collect();
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
        self.image_dir(rec.hex()).join("rootfs.erofs")
    }

    /// Points `names` (familiar references) at image `id`.
    pub fn add_references(&self, id: &str, names: &[String]) -> Result<(), ImageError> {
        let _guard = self.lock.lock().unwrap();
        let mut refs = self.references();
        for n in names {
            refs.insert(n.clone(), id.to_string());
        }
        self.write_references(&refs)
    }

    /// Imports a root filesystem tarball (optionally gzip-compressed) as a one-layer image
    /// named `reference`. Blocking: call from a blocking thread.
    pub fn import(
        &self,
        reference: &str,
        tarball: impl Read,
        config: ImageConfig,
    ) -> Result<ImageRecord, ImageError> {
        let name = normalize_reference(reference)?;
        // The layer is stored as sent; its diff id is the digest of the uncompressed tar.
        let mut w = self.blobs.writer(None)?;
        let mut tee = TeeReader {
            inner: tarball,
            out: &mut w,
        };
        let mut head = [0u8; 2];
        let n = read_full(&mut tee, &mut head)?;
        let gz = n == 2 && head == [0x1f, 0x8b];
        let mut diff_hasher = Sha256::new();
        if gz {
            let chain = std::io::Cursor::new(head[..n].to_vec()).chain(&mut tee);
            let mut dec = flate2::read::GzDecoder::new(chain);
            copy_hashing(&mut dec, &mut diff_hasher)?;
        } else {
            diff_hasher.update(&head[..n]);
            copy_hashing(&mut tee, &mut diff_hasher)?;
        }
        drop(tee);
        let (layer_digest, layer_size) = w.commit()?;
        let diff_id = format!("sha256:{}", hex::encode(diff_hasher.finalize()));
        let now = crate::engine::io::chrono_now();
        let config_json = json!({
            "created": now,
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Cmd": nonempty(&config.cmd),
                "Entrypoint": nonempty(&config.entrypoint),
                "Env": nonempty(&config.env),
                "WorkingDir": config.working_dir,
                "User": config.user,
                "StopSignal": config.stop_signal,
            },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created": now, "created_by": "hyperd import" }],
        });
        let config_bytes = serde_json::to_vec(&config_json).expect("json");
        let config_digest = self.blobs.put(&config_bytes, None)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": { "mediaType": MEDIA_OCI_CONFIG, "digest": config_digest, "size": config_bytes.len() },
            "layers": [{
                "mediaType": if gz { "application/vnd.oci.image.layer.v1.tar+gzip" } else { MEDIA_OCI_LAYER },
                "digest": layer_digest,
                "size": layer_size,
            }],
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("json");
        let manifest_digest = self.blobs.put(&manifest_bytes, None)?;
        let result = self.commit_image(&manifest_digest, &[name]);
        if result.is_err() {
            // What this import stored goes again, unless an image shares it.
            self.discard(&[&layer_digest, &config_digest, &manifest_digest]);
        }
        result
    }

    /// Removes the given blobs if no image refers to them.
    pub fn discard(&self, digests: &[&str]) {
        let _guard = self.lock.lock().unwrap();
        let used = |d: &str| {
            self.list().unwrap_or_default().iter().any(|r| {
                r.id == d || r.manifest_digest == d || r.layers.iter().any(|l| l.digest == d)
            }) || self.pins.lock().unwrap().contains_key(d)
        };
        for d in digests {
            if !used(d) {
                let _ = self.blobs.remove(d);
            }
        }
    }

    /// Makes an image out of a manifest whose config and layers are in the blob store:
    /// checks every layer's uncompressed digest against the config's diff ids, unpacks
    /// the layers safely, builds the erofs root filesystem, records the image and points
    /// `names` at it. Blocking.
    pub fn commit_image(
        &self,
        manifest_digest: &str,
        names: &[String],
    ) -> Result<ImageRecord, ImageError> {
        let manifest_bytes = self.blobs.read(manifest_digest)?;
        let manifest: Value = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| ImageError::BadImage(format!("manifest: {e}")))?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| ImageError::BadImage("manifest without config".into()))?
            .to_string();
        let config_bytes = self.blobs.read(&config_digest)?;
        let config: Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| ImageError::BadImage(format!("config: {e}")))?;
        let hex = digest_hex(&config_digest)?.to_string();
        if !self.image_dir(&hex).join("record.json").exists() {
            // Each build has its own erofs file: concurrent commits of one image never
            // write into the same one.
            let erofs = self
                .dir
                .join("tmp")
                .join(format!("{hex}-{}.erofs", crate::ids::random_hex(8)));
            let tmp = self.dir.join("tmp").join(crate::ids::random_hex(8));
            let result = (|| {
                let rec =
                    self.build_image(&manifest, manifest_digest, &config_digest, &config, &erofs)?;
                std::fs::create_dir_all(&tmp)?;
                let staged = tmp.join("image");
                std::fs::create_dir(&staged)?;
                std::fs::rename(&erofs, staged.join("rootfs.erofs"))?;
                write_atomic(
                    &staged.join("record.json"),
                    &serde_json::to_vec_pretty(&rec).expect("json"),
                )?;
                let _guard = self.lock.lock().unwrap();
                if !self.image_dir(&hex).exists() {
                    std::fs::rename(&staged, self.image_dir(&hex))?;
                    sync_dir(&self.dir.join("images"));
                }
                Ok::<_, ImageError>(())
            })();
            let _ = std::fs::remove_dir_all(&tmp);
            let _ = std::fs::remove_file(&erofs);
            result?;
        }
        self.add_references(&config_digest, names)?;
        self.load(&config_digest)
    }

    /// Unpacks and checks the layers, builds the erofs file `erofs`, returns the record.
    fn build_image(
        &self,
        manifest: &Value,
        manifest_digest: &str,
        config_digest: &str,
        config: &Value,
        erofs: &Path,
    ) -> Result<ImageRecord, ImageError> {
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != layers.len() {
            return Err(ImageError::BadImage(format!(
                "{} layers but {} diff ids in the config",
                layers.len(),
                diff_ids.len()
            )));
        }
        let work = self.dir.join("tmp").join(crate::ids::random_hex(8));
        let root = work.join("rootfs");
        std::fs::create_dir_all(&root)?;
        // The guest's `/`: readable by every user there, whatever the daemon's umask.
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let result = (|| {
            let mut records = Vec::new();
            let mut size = 0;
            for (layer, want) in layers.iter().zip(&diff_ids) {
                let digest = layer["digest"]
                    .as_str()
                    .ok_or_else(|| ImageError::BadImage("layer without digest".into()))?;
                let mut hashing = HashingReader {
                    inner: unpack::decompress(self.blobs.open_blob(digest)?)?,
                    hasher: Sha256::new(),
                };
                size += unpack::unpack_layer(&mut hashing, &root, &self.limits)
                    .map_err(|e| ImageError::BadImage(format!("layer {digest}: {e}")))?;
                std::io::copy(&mut hashing, &mut std::io::sink())?;
                let diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
                if &diff_id != want {
                    return Err(ImageError::DigestMismatch {
                        expected: want.clone(),
                        actual: diff_id,
                    });
                }
                records.push(LayerRecord {
                    digest: digest.to_string(),
                    media_type: layer["mediaType"]
                        .as_str()
                        .unwrap_or(MEDIA_OCI_LAYER)
                        .to_string(),
                    size: layer["size"].as_u64().unwrap_or(0),
                    diff_id,
                });
            }
            rootfs::make_erofs(&root, erofs)?;
            let c = &config["config"];
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            Ok(ImageRecord {
                id: config_digest.to_string(),
                repo_tags: vec![],
                repo_digests: vec![],
                created: config["created"]
                    .as_str()
                    .and_then(parse_rfc3339)
                    .unwrap_or_else(now_secs),
                size,
                config: ImageConfig {
                    cmd: strings(&c["Cmd"]),
                    entrypoint: strings(&c["Entrypoint"]),
                    env: strings(&c["Env"]),
                    working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
                    user: c["User"].as_str().unwrap_or_default().to_string(),
                    stop_signal: c["StopSignal"].as_str().unwrap_or_default().to_string(),
                },
                manifest_digest: manifest_digest.to_string(),
                manifest_media_type: manifest["mediaType"]
                    .as_str()
                    .unwrap_or(MEDIA_OCI_MANIFEST)
                    .to_string(),
                layers: records,
            })
        })();
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    /// Removes a reference, and the image when no reference is left (or when asked by
    /// id). Refuses while a pod uses it (`in_use`). Unless `noprune`, blobs no image
    /// needs any more are deleted. Returns Docker-style `Untagged: x`/`Deleted: y` lines.
    pub fn remove(
        &self,
        reference: &str,
        in_use: impl Fn(&str) -> bool,
        noprune: bool,
    ) -> Result<Vec<String>, ImageError> {
        let rec = self.resolve(reference)?;
        let _guard = self.lock.lock().unwrap();
        let mut refs = self.references();
        let mut removed = Vec::new();
        let names_of = |refs: &BTreeMap<String, String>| {
            refs.iter()
                .filter(|(_, v)| **v == rec.id)
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        };
        let norm = normalize_reference(reference)
            .ok()
            .filter(|n| refs.get(n) == Some(&rec.id));
        if let Some(n) = &norm {
            let others = names_of(&refs)
                .into_iter()
                .filter(|k| k != n && !k.contains('@'))
                .count();
            if others > 0 {
                refs.remove(n);
                self.write_references(&refs)?;
                return Ok(vec![format!("Untagged: {n}")]);
            }
        }
        if in_use(&rec.id) {
            return Err(ImageError::InUse(reference.to_string()));
        }
        for k in names_of(&refs) {
            refs.remove(&k);
            removed.push(format!("Untagged: {k}"));
        }
        self.write_references(&refs)?;
        let doomed = self.dir.join("tmp").join(format!("rm-{}", rec.hex()));
        std::fs::rename(self.image_dir(rec.hex()), &doomed)?;
        let _ = std::fs::remove_dir_all(&doomed);
        removed.push(format!("Deleted: {}", rec.id));
        drop(_guard);
        if !noprune {
            self.prune_blobs()?;
        }
        Ok(removed)
    }

    pub fn pin(&self) -> Pin<'_> {
        Pin {
            store: self,
            digests: Vec::new(),
        }
    }

    /// Deletes blobs no image refers to and no operation in progress has pinned.
    pub fn prune_blobs(&self) -> Result<usize, ImageError> {
        let _guard = self.lock.lock().unwrap();
        let pinned: Vec<String> = self.pins.lock().unwrap().keys().cloned().collect();
        let mut keep = std::collections::HashSet::new();
        for e in std::fs::read_dir(self.dir.join("images"))?.flatten() {
            if let Ok(b) = std::fs::read(e.path().join("record.json")) {
                if let Ok(rec) = serde_json::from_slice::<ImageRecord>(&b) {
                    keep.insert(rec.id.clone());
                    keep.insert(rec.manifest_digest.clone());
                    keep.extend(rec.layers.iter().map(|l| l.digest.clone()));
                }
            }
        }
        keep.extend(pinned);
        let mut n = 0;
        for d in self.blobs.list() {
            if !keep.contains(&d) {
                self.blobs.remove(&d)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

fn nonempty(v: &[String]) -> Value {
    if v.is_empty() {
        Value::Null
    } else {
        json!(v)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds since the epoch of an RFC 3339 time (`2024-01-02T03:04:05[.frac](Z|±hh:mm)`).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let mut secs = days * 86400 + hh * 3600 + mm * 60 + ss;
    let tz = s[19..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    if let Some(off) = tz.strip_prefix('+').or_else(|| tz.strip_prefix('-')) {
        let (oh, om) = (
            off.get(0..2)?.parse::<i64>().ok()?,
            off.get(3..5)?.parse::<i64>().ok()?,
        );
        let o = oh * 3600 + om * 60;
        secs = if tz.starts_with('+') {
            secs - o
        } else {
            secs + o
        };
    }
    u64::try_from(secs).ok()
}

struct TeeReader<'a, R, W> {
    inner: R,
    out: &'a mut W,
}

impl<R: Read, W: std::io::Write> Read for TeeReader<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn copy_hashing(r: &mut impl Read, h: &mut Sha256) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf)? {
            0 => return Ok(()),
            n => h.update(&buf[..n]),
        }
    }
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
        assert_eq!(
            normalize_reference("library/busybox:1.36").unwrap(),
            "busybox:1.36"
        );
        assert_eq!(
            normalize_reference("docker.io/library/busybox").unwrap(),
            "busybox:latest"
        );
        assert_eq!(
            normalize_reference("localhost:5000/a/b").unwrap(),
            "localhost:5000/a/b:latest"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize_reference(&format!("127.0.0.1:5000/x@{d}")).unwrap(),
            format!("127.0.0.1:5000/x@{d}")
        );
        assert!(normalize_reference("Busy Box").is_err());
        assert!(normalize_reference("").is_err());
        assert!(normalize_reference("a:b c").is_err());
        assert!(normalize_reference("UPPER").is_err());
    }

    #[test]
    fn parses_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123456789Z"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20+02:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
