//! What an image's sender controls besides its layers: references and digests as
//! clients type them, and the JSON of an image archive (`docker load`, `/image/load`,
//! mCM's payloads): `manifest.json`, `index.json` and a config blob, from the input, in
//! a tar the harness builds. Never a panic; a load either fails cleanly or stores
//! images whose ids are digests.
use hyperd::image::{ImageRef, ImageStore};
use sha2::Digest;
use std::sync::OnceLock;

fn store() -> &'static (tempfile::TempDir, ImageStore) {
    static STORE: OnceLock<(tempfile::TempDir, ImageStore)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let limits = hyperd::image::unpack::Limits {
            max_bytes: 1 << 20,
            max_entries: 1000,
        };
        let store = ImageStore::open(&dir.path().join("image"), limits).unwrap();
        (dir, store)
    })
}

fn add(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
}

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = ImageRef::parse(s) {
            let _ = (r.familiar(), r.familiar_name(), r.oci());
        }
        let _ = hyperd::image::normalize_reference(s);
        let _ = hyperd::image::parse_rfc3339(s);
    }
    let mut parts = data.splitn(3, |b| *b == 0);
    let (manifest, index, config) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "manifest.json", manifest);
    add(&mut b, "index.json", index);
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let hex = hex::encode(sha2::Sha256::digest(config));
    add(&mut b, &format!("blobs/sha256/{hex}"), config);
    add(&mut b, &format!("{hex}.json"), config);
    let tar = b.into_inner().unwrap();
    let (dir, store) = store();
    let work = dir.path().join("work");
    if let Ok(images) = hyperd::image::archive::load(store, std::io::Cursor::new(tar), &work) {
        for rec in images {
            assert!(
                rec.id.starts_with("sha256:") && rec.id.len() == 71,
                "{}",
                rec.id
            );
        }
    }
    let _ = std::fs::remove_dir_all(&work);
}
