//! `COPY --from`: paths out of another stage's (or any local) image, read from its
//! stored layers as tar streams — the layers the hardened unpacker already accepted —
//! with the layers' whiteouts applied, and written as a new layer under the destination.
//! No image is mounted or unpacked for it.
use super::context::{clean, CopyOptions};
use super::BuildError;
use crate::image::{ImageRecord, ImageStore};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the final version of a path comes from: its layer, and whether it is a
/// directory.
#[derive(Debug, Clone, Copy)]
struct Origin {
    layer: usize,
    dir: bool,
}

fn layer_reader(
    images: &ImageStore,
    image: &ImageRecord,
    i: usize,
) -> Result<Box<dyn Read>, BuildError> {
    let f = images.blobs.open_blob(&image.layers[i].digest)?;
    Ok(crate::image::unpack::decompress(f)?)
}

/// Removes `path` and everything beneath it from `view` (only what `below` layers put
/// there when given).
fn remove_tree(view: &mut BTreeMap<PathBuf, Origin>, path: &Path, below: Option<usize>) {
    let doomed: Vec<PathBuf> = view
        .range(path.to_path_buf()..)
        .take_while(|(p, _)| p.starts_with(path))
        .filter(|(p, o)| below.is_none_or(|l| o.layer < l && p.as_path() != path))
        .map(|(p, _)| p.clone())
        .collect();
    for p in doomed {
        view.remove(&p);
    }
}

/// Writes `src` (an absolute path in `image`) to `dest` as the tar layer `out`. A
/// directory's contents go under `dest`; a file becomes `dest` (or `dest/name` when `dest`
/// ends with `/`).
pub fn copy_layer(
    images: &ImageStore,
    image: &ImageRecord,
    srcs: &[String],
    dest: &str,
    opts: CopyOptions,
    out: &Path,
    max_bytes: u64,
) -> Result<(), BuildError> {
    let roots: Vec<PathBuf> = srcs
        .iter()
        .map(|s| {
            clean(s).ok_or_else(|| BuildError::Invalid(format!("{s:?} leaves the image's root")))
        })
        .collect::<Result<_, _>>()?;
    if srcs.iter().any(|s| s.contains(['*', '?', '['])) {
        return Err(BuildError::Invalid(
            "COPY --from takes plain paths, not patterns".into(),
        ));
    }
    super::context::check_many_sources(roots.len(), dest)?;
    let wanted = |p: &Path| roots.iter().any(|r| p.starts_with(r));
    // Pass 1: the merged view of the wanted paths.
    let mut view: BTreeMap<PathBuf, Origin> = BTreeMap::new();
    for i in 0..image.layers.len() {
        let mut ar = tar::Archive::new(layer_reader(images, image, i)?);
        for entry in ar.entries()? {
            let entry = entry?;
            let Some(path) = clean(&entry.path()?.to_string_lossy()) else {
                continue;
            };
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
            if name == ".wh..wh..opq" {
                remove_tree(&mut view, &parent, Some(i));
                continue;
            }
            if let Some(victim) = name.strip_prefix(".wh.") {
                remove_tree(&mut view, &parent.join(victim), None);
                continue;
            }
            if !wanted(&path) {
                continue;
            }
            let dir = entry.header().entry_type() == tar::EntryType::Directory;
            if !dir {
                remove_tree(&mut view, &path, None);
            }
            view.insert(path, Origin { layer: i, dir });
            if view.len() > 1_000_000 {
                return Err(BuildError::Invalid(
                    "COPY --from of more than a million files".into(),
                ));
            }
        }
    }
    // Where each source goes.
    let mut targets: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (r, s) in roots.iter().zip(srcs) {
        let has_children = view
            .range(r.clone()..)
            .any(|(p, _)| p != r && p.starts_with(r));
        let is_dir = view.get(r).map_or(has_children, |o| o.dir);
        if !view.contains_key(r) && !has_children {
            return Err(BuildError::Invalid(format!("{s}: not found in the image")));
        }
        let to = if is_dir {
            PathBuf::from(dest)
        } else if dest.ends_with('/') {
            Path::new(dest).join(r.file_name().unwrap_or_default())
        } else {
            PathBuf::from(dest)
        };
        targets.push((r.clone(), to));
    }
    let rename = |p: &Path| -> Option<PathBuf> {
        targets
            .iter()
            .find(|(r, _)| p.starts_with(r))
            .map(|(r, to)| {
                let rest = p.strip_prefix(r).unwrap_or(Path::new(""));
                let full = to.join(rest);
                full.strip_prefix("/").unwrap_or(&full).to_path_buf()
            })
    };
    // Pass 2: each path's final version, from its layer.
    let file = std::fs::File::create(out)?;
    let mut tar = tar::Builder::new(file);
    let (mut bytes, mut written) = (0u64, std::collections::HashSet::new());
    for i in 0..image.layers.len() {
        if !view.values().any(|o| o.layer == i) {
            continue;
        }
        let mut ar = tar::Archive::new(layer_reader(images, image, i)?);
        for entry in ar.entries()? {
            let mut entry = entry?;
            let Some(path) = clean(&entry.path()?.to_string_lossy()) else {
                continue;
            };
            if view.get(&path).is_none_or(|o| o.layer != i) || !written.insert(path.clone()) {
                continue;
            }
            let Some(name) = rename(&path) else { continue };
            if name.as_os_str().is_empty() {
                continue; // the copied directory itself, when it lands on `/`
            }
            let mut h = entry.header().clone();
            if let Some((uid, gid)) = opts.owner {
                h.set_uid(uid);
                h.set_gid(gid);
            }
            if let Some(m) = opts.mode {
                h.set_mode(m);
            }
            match h.entry_type() {
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::Directory => {
                    let size = if h.entry_type() == tar::EntryType::Directory {
                        0
                    } else {
                        entry.size()
                    };
                    bytes += size;
                    if bytes > max_bytes {
                        return Err(BuildError::Invalid(format!(
                            "COPY --from of more than {max_bytes} bytes"
                        )));
                    }
                    h.set_size(size);
                    tar.append_data(&mut h, &name, (&mut entry).take(size))?;
                }
                tar::EntryType::Symlink => {
                    let target = entry.link_name()?.unwrap_or_default().into_owned();
                    tar.append_link(&mut h, &name, target)?;
                }
                tar::EntryType::Link => {
                    let target = entry.link_name()?.unwrap_or_default().into_owned();
                    let t = clean(&target.to_string_lossy())
                        .and_then(|t| written.contains(&t).then(|| rename(&t)).flatten());
                    let Some(t) = t else {
                        return Err(BuildError::Invalid(format!(
                            "COPY --from: {} is a hard link to {}, outside what is copied",
                            path.display(),
                            target.display()
                        )));
                    };
                    tar.append_link(&mut h, &name, t)?;
                }
                _ => {}
            }
        }
    }
    let mut f = tar.into_inner()?;
    std::io::Write::flush(&mut f)?;
    f.sync_all()?;
    Ok(())
}
