//! A registry's manifests and indexes as `resolve` checks them before a pull fetches
//! anything: any bytes as JSON, never a panic; a manifest that passes has well-formed
//! digests for its config and every layer, at most `max_layers` layers, and declared
//! sizes within the caps (what `pull` then reads from it without further checks).
use hyperd::image::registry::{check_image_manifest, platform_digest, RegistryOptions};
use serde_json::Value;

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    let Ok(manifest) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let options = RegistryOptions {
        max_layers: 8,
        max_image_bytes: 1 << 20,
        max_config_bytes: 1 << 16,
        ..Default::default()
    };
    let _ = platform_digest(&manifest);
    if check_image_manifest(&manifest, &options).is_err() {
        return;
    }
    let well_formed = |d: &Value| {
        let digest = d["digest"].as_str().expect("a digest");
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{digest}"
        );
        d["size"].as_u64().unwrap_or(0)
    };
    assert!(well_formed(&manifest["config"]) <= options.max_config_bytes);
    let layers = manifest["layers"].as_array().expect("layers");
    assert!(layers.len() <= options.max_layers);
    let total = layers
        .iter()
        .map(well_formed)
        .fold(0u64, u64::saturating_add);
    assert!(total <= options.max_image_bytes);
}
