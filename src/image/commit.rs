//! New images from a container's changes: the parent image's layers plus one more (the
//! container's diff, a tar the guest agent streamed), a config with the commit's
//! changes and history, made into an image by the same path as every pull — so the new
//! layer goes through the hardened unpacker before the image exists.
use super::{
    ImageError, ImageRecord, ImageStore, LayerRecord, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// What a commit records besides the layer.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub author: String,
    pub comment: String,
    /// Dockerfile instructions applied to the config (`CMD`, `ENTRYPOINT`, `ENV`,
    /// `WORKDIR`, `USER`, `LABEL`, `EXPOSE`, `VOLUME`, `STOPSIGNAL`, `ONBUILD`).
    pub changes: Vec<String>,
    /// What made it, for the history (`docker commit`, `hyperd commit`).
    pub created_by: String,
    /// Config fields (Docker's names: `Cmd`, `Env`, ...) the image takes as they are.
    pub config: Option<Value>,
}

/// An instruction's arguments as a list: the JSON form, else the shell form run by
/// `/bin/sh -c`.
fn command_form(args: &str) -> Result<Value, ImageError> {
    let t = args.trim();
    if t.starts_with('[') {
        let v: Vec<String> = serde_json::from_str(t)
            .map_err(|e| ImageError::BadReference(format!("invalid JSON form {t:?}: {e}")))?;
        return Ok(json!(v));
    }
    Ok(json!(["/bin/sh", "-c", t]))
}

/// `KEY=VALUE ...` or `KEY VALUE` pairs of ENV and LABEL.
fn pairs(args: &str) -> Result<Vec<(String, String)>, ImageError> {
    let t = args.trim();
    if !t.contains('=') {
        return match t.split_once(char::is_whitespace) {
            Some((k, v)) => Ok(vec![(k.to_string(), v.trim().to_string())]),
            None => Err(ImageError::BadReference(format!("{t:?} has no value"))),
        };
    }
    t.split_whitespace()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ImageError::BadReference(format!("{kv:?} is not KEY=VALUE")))?;
            Ok((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

/// Applies Dockerfile instructions to an image config's `config` object.
pub fn apply_changes(config: &mut Value, changes: &[String]) -> Result<(), ImageError> {
    if !config.is_object() {
        *config = json!({});
    }
    for change in changes.iter().filter(|c| !c.trim().is_empty()) {
        let (op, args) = change
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((change.trim(), ""));
        match op.to_ascii_uppercase().as_str() {
            "CMD" => config["Cmd"] = command_form(args)?,
            "ENTRYPOINT" => config["Entrypoint"] = command_form(args)?,
            "WORKDIR" => config["WorkingDir"] = json!(args.trim()),
            "USER" => config["User"] = json!(args.trim()),
            "STOPSIGNAL" => config["StopSignal"] = json!(args.trim()),
            "ONBUILD" => {
                let trigger = args.trim();
                let first = trigger.split_whitespace().next().unwrap_or("");
                if trigger.is_empty() || ["ONBUILD", "FROM", "MAINTAINER"].iter().any(|k| first.eq_ignore_ascii_case(k)) {
                    return Err(ImageError::BadReference(format!(
                        "ONBUILD {trigger:?}: not a trigger Docker allows"
                    )));
                }
                if !config["OnBuild"].is_array() {
                    config["OnBuild"] = json!([]);
                }
                config["OnBuild"]
                    .as_array_mut()
                    .expect("an array")
                    .push(json!(trigger));
            }
            "ENV" => {
                let mut env: Vec<String> = config["Env"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                for (k, v) in pairs(args)? {
                    env.retain(|e| e.split_once('=').map(|x| x.0) != Some(k.as_str()));
                    env.push(format!("{k}={v}"));
                }
                config["Env"] = json!(env);
            }
            "LABEL" => {
                for (k, v) in pairs(args)? {
                    if !config["Labels"].is_object() {
                        config["Labels"] = json!({});
                    }
                    config["Labels"][k] = json!(v);
                }
            }
            "EXPOSE" | "VOLUME" => {
                let key = if op.eq_ignore_ascii_case("EXPOSE") {
                    "ExposedPorts"
                } else {
                    "Volumes"
                };
                if !config[key].is_object() {
                    config[key] = json!({});
                }
                let items: Vec<String> = if args.trim().starts_with('[') {
                    serde_json::from_str(args.trim()).map_err(|e| {
                        ImageError::BadReference(format!("invalid JSON form {args:?}: {e}"))
                    })?
                } else {
                    args.split_whitespace().map(String::from).collect()
                };
                for mut item in items {
                    if key == "ExposedPorts" && !item.contains('/') {
                        item.push_str("/tcp");
                    }
                    config[key][item] = json!({});
                }
            }
            other => {
                return Err(ImageError::BadReference(format!(
                    "{other} cannot be applied by a commit (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL, ONBUILD)"
                )))
            }
        }
    }
    Ok(())
}

impl ImageStore {
    /// Stores the uncompressed tar layer at `layer` as a blob (its digest is its diff
    /// id). Blocking.
    pub fn put_layer(&self, layer: &Path) -> Result<LayerRecord, ImageError> {
        let mut w = self.blobs.writer(None)?;
        let mut file = std::fs::File::open(layer)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            std::io::Write::write_all(&mut w, &buf[..n])?;
        }
        let (digest, size) = w.commit()?;
        Ok(LayerRecord {
            digest,
            media_type: MEDIA_OCI_LAYER.to_string(),
            size,
            diff_id: format!("sha256:{}", hex::encode(hasher.finalize())),
        })
    }

    /// The image config (the whole OCI config blob) of a stored image.
    pub fn config_json(&self, image: &ImageRecord) -> Result<Value, ImageError> {
        serde_json::from_slice(&self.blobs.read(&image.id)?)
            .map_err(|e| ImageError::BadImage(format!("config of {}: {e}", image.id)))
    }

    /// An image of `layers` (stored blobs) and the OCI config `config` (whose
    /// `rootfs.diff_ids` must name the same layers), named `names`: made by the same path
    /// as every pull, so each layer goes through the hardened unpacker. Blocking.
    pub fn assemble(
        &self,
        layers: &[LayerRecord],
        config: &Value,
        names: &[String],
    ) -> Result<ImageRecord, ImageError> {
        let config_bytes = serde_json::to_vec(config).expect("json");
        let config_digest = self.blobs.put(&config_bytes, None)?;
        let layers_json: Vec<Value> = layers
            .iter()
            .map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config_digest, "size": config_bytes.len()},
            "layers": layers_json,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("json");
        let manifest_digest = self.blobs.put(&manifest_bytes, None)?;
        self.commit_image(&manifest_digest, names)
    }

    /// A new image: `parent`'s layers and the tar layer at `layer` (the container's
    /// changes), its config with `info` applied, named `names`. Blocking.
    pub fn commit_layer(
        &self,
        parent: &ImageRecord,
        layer: &Path,
        info: &CommitInfo,
        names: &[String],
    ) -> Result<ImageRecord, ImageError> {
        let mut config = self.config_json(parent)?;
        if !config["config"].is_object() {
            config["config"] = json!({});
        }
        if let Some(Value::Object(fields)) = &info.config {
            for (k, v) in fields.iter().filter(|(_, v)| !v.is_null()) {
                config["config"][k] = v.clone();
            }
        }
        apply_changes(&mut config["config"], &info.changes)?;
        let layer = self.put_layer(layer)?;
        let now = crate::engine::io::chrono_now();
        config["created"] = json!(now);
        if !info.author.is_empty() {
            config["author"] = json!(info.author);
        }
        push_diff_id(&mut config, &layer.diff_id);
        let mut entry = json!({"created": now, "created_by": info.created_by});
        if !info.author.is_empty() {
            entry["author"] = json!(info.author);
        }
        if !info.comment.is_empty() {
            entry["comment"] = json!(info.comment);
        }
        push_history(&mut config, entry);
        let mut layers = parent.layers.clone();
        layers.push(layer.clone());
        let result = self.assemble(&layers, &config, names);
        if result.is_err() {
            self.discard(&[&layer.digest]);
        }
        result
    }
}

/// Appends a layer's diff id to an OCI config's `rootfs`.
pub fn push_diff_id(config: &mut Value, diff_id: &str) {
    if !config["rootfs"]["diff_ids"].is_array() {
        config["rootfs"] = json!({"type": "layers", "diff_ids": []});
    }
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .expect("an array")
        .push(json!(diff_id));
}

/// Appends an entry to an OCI config's `history`.
pub fn push_history(config: &mut Value, entry: Value) {
    if !config["history"].is_array() {
        config["history"] = json!([]);
    }
    config["history"]
        .as_array_mut()
        .expect("an array")
        .push(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_edit_the_config() {
        let mut c = json!({"Env": ["A=1", "PATH=/bin"], "Cmd": ["sh"]});
        apply_changes(
            &mut c,
            &[
                "CMD [\"echo\", \"hi\"]".into(),
                "ENTRYPOINT /bin/run --fast".into(),
                "ENV A=2 B=3".into(),
                "ENV C four five".into(),
                "WORKDIR /srv".into(),
                "USER nobody".into(),
                "LABEL team=infra".into(),
                "EXPOSE 80 53/udp".into(),
                "VOLUME /data".into(),
                "STOPSIGNAL SIGINT".into(),
                "ONBUILD RUN make".into(),
            ],
        )
        .unwrap();
        assert_eq!(c["Cmd"], json!(["echo", "hi"]));
        assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c", "/bin/run --fast"]));
        assert_eq!(c["Env"], json!(["PATH=/bin", "A=2", "B=3", "C=four five"]));
        assert_eq!(
            (c["WorkingDir"].as_str(), c["User"].as_str()),
            (Some("/srv"), Some("nobody"))
        );
        assert_eq!(c["Labels"]["team"], "infra");
        assert!(c["ExposedPorts"]["80/tcp"].is_object() && c["ExposedPorts"]["53/udp"].is_object());
        assert!(c["Volumes"]["/data"].is_object());
        assert_eq!(c["StopSignal"], "SIGINT");
        assert_eq!(c["OnBuild"], json!(["RUN make"]));
        for bad in [
            "RUN rm -rf /",
            "CMD [broken",
            "ENV NOVALUE",
            "COPY a b",
            "ONBUILD FROM x",
        ] {
            assert!(apply_changes(&mut c, &[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
