//! Image archives: `docker save` tarballs (`manifest.json` with configs and layer tars)
//! and OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/…`), in and out.
//! What `save` writes is both at once, as Docker 25+ does, so `docker load`, skopeo's
//! `oci-archive:` and hyperd all read it. Loading prefers the OCI layout, which keeps
//! the manifests' exact bytes and so their digests.
use super::blobs::digest_hex;
use super::unpack::{unpack_layer, Limits};

use super::{ImageError, ImageRecord, ImageStore, MEDIA_OCI_CONFIG, MEDIA_OCI_MANIFEST};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;

/// Largest `index.json`, `manifest.json` or image config read from an archive.
const MAX_JSON_FILE: u64 = 4 << 20;

/// Loads every image of an archive; returns them with the names they were loaded as.
pub fn load(
    store: &ImageStore,
    archive: impl Read + 'static,
    work: &Path,
) -> Result<Vec<ImageRecord>, ImageError> {
    std::fs::create_dir_all(work)?;
    // The archive holds whole layers: its limit is a multiple of one layer's.
    let limits = Limits {
        max_bytes: store.limits.max_bytes.saturating_mul(4),
        max_entries: 100_000,
    };
    let archive = super::unpack::decompress(archive)?;
    unpack_layer(archive, work, &limits).map_err(|e| ImageError::BadArchive(e.to_string()))?;
    // Files of the archive are read only through these, which open regular files beneath
    // `work` and follow no link on the way (a symlinked directory can't redirect a read).
    let file = |name: &str| -> Result<std::fs::File, ImageError> {
        super::beneath::open_file(work, Path::new(name)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::BadArchive(format!("{name} is missing"))
            } else if e.kind() == std::io::ErrorKind::InvalidInput {
                ImageError::BadArchive(format!("path {name:?} leaves the archive: {e}"))
            } else {
                ImageError::BadArchive(format!("{name}: {e}"))
            }
        })
    };
    let read_json = |name: &str| -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        file(name)?.take(MAX_JSON_FILE + 1).read_to_end(&mut out)?;
        if out.len() as u64 > MAX_JSON_FILE {
            return Err(ImageError::BadArchive(format!(
                "{name} is larger than {MAX_JSON_FILE} bytes"
            )));
        }
        Ok(out)
    };
    let mut out = Vec::new();
    if file("index.json").is_ok() {
        let copy_blob = |digest: &str| -> Result<(), ImageError> {
            let hex = digest_hex(digest)?;
            if !store.blobs.exists(digest) {
                let mut f = file(&format!("blobs/sha256/{hex}"))?;
                let mut w = store.blobs.writer(Some(digest))?;
                std::io::copy(&mut f, &mut w)?;
                w.commit()?;
            }
            Ok(())
        };
        let index: Value = serde_json::from_slice(&read_json("index.json")?)
            .map_err(|e| ImageError::BadArchive(format!("index.json: {e}")))?;
        let mut queue: Vec<(Value, Vec<String>)> = index["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m, vec![]))
            .collect();
        while let Some((desc, inherited)) = queue.pop() {
            let digest = desc["digest"]
                .as_str()
                .ok_or_else(|| ImageError::BadArchive("descriptor without digest".into()))?
                .to_string();
            copy_blob(&digest)?;
            let manifest: Value = serde_json::from_slice(&store.blobs.read(&digest)?)
                .map_err(|e| ImageError::BadArchive(format!("{digest}: {e}")))?;
            let mut names = inherited;
            if let Some(n) = desc["annotations"]["io.containerd.image.name"].as_str() {
                names.push(n.to_string());
            } else if let Some(tag) =
                desc["annotations"]["org.opencontainers.image.ref.name"].as_str()
            {
                if tag.contains(':') || tag.contains('/') {
                    names.push(tag.to_string());
                }
            }
            if let Some(children) = manifest["manifests"].as_array() {
                let amd64 = children
                    .iter()
                    .find(|m| m["platform"]["architecture"] == "amd64" || m["platform"].is_null());
                if let Some(c) = amd64 {
                    queue.push((c.clone(), names));
                }
                continue;
            }
            copy_blob(
                manifest["config"]["digest"]
                    .as_str()
                    .ok_or_else(|| ImageError::BadArchive("manifest without config".into()))?,
            )?;
            for l in manifest["layers"].as_array().into_iter().flatten() {
                copy_blob(l["digest"].as_str().unwrap_or_default())?;
            }
            let names = names_of(Some(&names.into_iter().map(Value::from).collect()));
            out.push(store.commit_image(&digest, &names)?);
        }
        return Ok(out);
    }
    if file("manifest.json").is_ok() {
        let manifest: Value = serde_json::from_slice(&read_json("manifest.json")?)
            .map_err(|e| ImageError::BadArchive(format!("manifest.json: {e}")))?;
        for entry in manifest
            .as_array()
            .ok_or_else(|| ImageError::BadArchive("manifest.json is not a list".into()))?
        {
            let config_path = entry["Config"]
                .as_str()
                .ok_or_else(|| ImageError::BadArchive("entry without Config".into()))?;
            let config = read_json(config_path)?;
            let config_digest = store.blobs.put(&config, None)?;
            let mut layers = Vec::new();
            for l in entry["Layers"].as_array().into_iter().flatten() {
                let name = l
                    .as_str()
                    .ok_or_else(|| ImageError::BadArchive("bad layer entry".into()))?;
                let mut w = store.blobs.writer(None)?;
                let mut f = file(name)?;
                std::io::copy(&mut f, &mut w)?;
                let (digest, size) = w.commit()?;
                let mut head = [0u8; 4];
                let n = file(name)?.read(&mut head)?;
                let media = if n >= 2 && head[..2] == [0x1f, 0x8b] {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                } else if n == 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
                    "application/vnd.oci.image.layer.v1.tar+zstd"
                } else {
                    super::MEDIA_OCI_LAYER
                };
                layers.push(json!({ "mediaType": media, "digest": digest, "size": size }));
            }
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_MANIFEST,
                "config": { "mediaType": MEDIA_OCI_CONFIG, "digest": config_digest, "size": config.len() },
                "layers": layers,
            });
            let bytes = serde_json::to_vec(&manifest).expect("json");
            let manifest_digest = store.blobs.put(&bytes, None)?;
            let names = names_of(entry["RepoTags"].as_array());
            out.push(store.commit_image(&manifest_digest, &names)?);
        }
        return Ok(out);
    }
    Err(ImageError::BadArchive(
        "neither manifest.json (docker save) nor index.json (OCI layout) in the archive".into(),
    ))
}

fn names_of(list: Option<&Vec<Value>>) -> Vec<String> {
    list.into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .filter_map(|n| super::normalize_reference(n).ok())
        .collect()
}

/// Writes images as one archive that is both a `docker save` tarball and an OCI layout.
pub(crate) fn save(
    store: &ImageStore,
    images: &[(ImageRecord, Vec<String>)],
    out: impl Write,
) -> Result<(), ImageError> {
    let mut tar = tar::Builder::new(out);
    let mut added = std::collections::HashSet::new();
    let add_bytes =
        |tar: &mut tar::Builder<_>, name: &str, data: &[u8]| -> Result<(), ImageError> {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            tar.append_data(&mut h, name, data)?;
            Ok(())
        };
    add_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut docker_manifest = Vec::new();
    let mut index = Vec::new();
    for (rec, names) in images {
        let mut digests = vec![rec.manifest_digest.clone(), rec.id.clone()];
        digests.extend(rec.layers.iter().map(|l| l.digest.clone()));
        for d in &digests {
            if added.insert(d.clone()) {
                let path = store.blobs.path(d)?;
                let mut h = tar::Header::new_gnu();
                h.set_size(std::fs::metadata(&path)?.len());
                h.set_mode(0o644);
                h.set_mtime(0);
                tar.append_data(
                    &mut h,
                    format!("blobs/sha256/{}", digest_hex(d)?),
                    std::fs::File::open(&path)?,
                )?;
            }
        }
        let manifest_size = store.blobs.size(&rec.manifest_digest)?;
        let tags: Vec<&String> = names.iter().filter(|n| !n.contains('@')).collect();
        docker_manifest.push(json!({
            "Config": format!("blobs/sha256/{}", rec.hex()),
            "RepoTags": tags,
            "Layers": rec.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.trim_start_matches("sha256:"))).collect::<Vec<_>>(),
        }));
        let mut entries: Vec<Option<&String>> = tags.iter().map(|t| Some(*t)).collect();
        if entries.is_empty() {
            entries.push(None);
        }
        for t in entries {
            let mut desc = json!({ "mediaType": rec.manifest_media_type, "digest": rec.manifest_digest, "size": manifest_size });
            if let Some(t) = t {
                let tag = t.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("latest");
                desc["annotations"] = json!({ "io.containerd.image.name": t, "org.opencontainers.image.ref.name": tag });
            }
            index.push(desc);
        }
    }
    add_bytes(
        &mut tar,
        "manifest.json",
        &serde_json::to_vec(&docker_manifest).expect("json"),
    )?;
    let index =
        json!({ "schemaVersion": 2, "mediaType": super::MEDIA_OCI_INDEX, "manifests": index });
    add_bytes(
        &mut tar,
        "index.json",
        &serde_json::to_vec(&index).expect("json"),
    )?;
    tar.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic `docker save` layout: manifest.json, a config file and layer tars.
    #[test]
    fn loads_docker_save_archives() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), Limits::default()).unwrap();
        let layer = {
            let mut t = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o755);
            t.append_data(&mut h, "bin/hi", &b"hi\n"[..]).unwrap();
            t.into_inner().unwrap()
        };
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Cmd": ["/bin/hi"] },
            "rootfs": { "type": "layers", "diff_ids": [crate::image::blobs::sha256_digest(&layer)] },
        }))
        .unwrap();
        let mut t = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            t.append_data(&mut h, name, data).unwrap();
        };
        add("abc.json", &config);
        add("l1/layer.tar", &layer);
        add(
            "manifest.json",
            br#"[{"Config":"abc.json","RepoTags":["hello:1"],"Layers":["l1/layer.tar"]}]"#,
        );
        let archive = t.into_inner().unwrap();
        let recs = load(
            &store,
            std::io::Cursor::new(archive),
            &dir.path().join("work"),
        )
        .unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].repo_tags, vec!["hello:1".to_string()]);
        assert_eq!(recs[0].config.cmd, vec!["/bin/hi".to_string()]);
        assert_eq!(recs[0].id, crate::image::blobs::sha256_digest(&config));
        assert!(store.rootfs_path(&recs[0]).exists());

        // A manifest.json naming a file outside the archive is refused.
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        let m = br#"[{"Config":"../../etc/passwd","RepoTags":[],"Layers":[]}]"#;
        h.set_size(m.len() as u64);
        h.set_mode(0o644);
        t.append_data(&mut h, "manifest.json", &m[..]).unwrap();
        let err = load(
            &store,
            std::io::Cursor::new(t.into_inner().unwrap()),
            &dir.path().join("work2"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("leaves the archive"), "{err}");
    }

    /// A symlinked directory in the archive must not redirect a read out of it.
    #[test]
    fn reads_never_go_through_archive_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), Limits::default()).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("c.json"), br#"{"rootfs":{"diff_ids":[]}}"#).unwrap();
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        t.append_link(&mut h, "d", &outside).unwrap();
        let m = br#"[{"Config":"d/c.json","RepoTags":["x:1"],"Layers":[]}]"#;
        let mut h = tar::Header::new_gnu();
        h.set_size(m.len() as u64);
        h.set_mode(0o644);
        t.append_data(&mut h, "manifest.json", &m[..]).unwrap();
        let err = load(
            &store,
            std::io::Cursor::new(t.into_inner().unwrap()),
            &dir.path().join("work"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("d/c.json"), "{err}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn compressed_bomb_hits_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 20,
            max_entries: 100,
        };
        let store = ImageStore::open(dir.path(), limits).unwrap();
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(8 << 20);
        h.set_mode(0o644);
        t.append_data(&mut h, "bomb", std::io::repeat(0).take(8 << 20))
            .unwrap();
        let raw = t.into_inner().unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&raw).unwrap();
        let gz = e.finish().unwrap();
        let err = load(&store, std::io::Cursor::new(gz), &dir.path().join("work")).unwrap_err();
        assert!(err.to_string().contains("larger than the limit"), "{err}");
    }
}
