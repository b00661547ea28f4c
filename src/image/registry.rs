//! Pull and push against registries speaking the OCI distribution API, through
//! oci-client (manifests, auth challenges and tokens, blob transfers). What oci-client
//! leaves to us: choosing linux/amd64 from an index while keeping the raw manifest bytes
//! (so digests round-trip), verifying every byte against its digest as it lands in the
//! blob store, parallel layer downloads with retries, and progress messages.
use super::blobs::sha256_digest;
use super::progress::{self, ProgressTx};
use super::{
    ImageError, ImageRecord, ImageRef, ImageStore, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use serde_json::Value;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Parallel layer downloads.
const PARALLEL_LAYERS: usize = 3;
/// Attempts per blob before the pull fails.
const BLOB_ATTEMPTS: u32 = 3;

/// What a registry may send, and where credentials may go. Every bound is configurable
/// (hyperd's `--max-*` options).
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Registries spoken to over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Token realm hosts, besides the registry's own, that may receive credentials.
    pub trusted_realms: Vec<String>,
    /// Largest manifest or index (Docker's limit is 4 MiB).
    pub max_manifest_bytes: u64,
    /// Largest image config.
    pub max_config_bytes: u64,
    /// Most layers an image may have.
    pub max_layers: usize,
    /// Largest image (sum of its compressed layers), and the cap of a blob whose
    /// descriptor declares no size.
    pub max_image_bytes: u64,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: Vec::new(),
            trusted_realms: Vec::new(),
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 8 << 20,
            max_layers: 128,
            max_image_bytes: 32 << 30,
        }
    }
}

/// Whether a registry is spoken to over plain HTTP: loopback registries (as Docker
/// treats 127.0.0.0/8 and ::1; a host *name* merely starting with `127.` is not one)
/// and those the operator listed with `--insecure-registry`.
pub fn plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = super::auth::bare_host(registry);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
        || insecure.iter().any(|r| r == registry)
}

impl RegistryOptions {
    /// How `registry` is spoken to, and where its credentials may go.
    pub fn auth_policy(&self, registry: &str) -> super::auth::AuthPolicy {
        super::auth::AuthPolicy {
            scheme: if plain_http(registry, &self.insecure) {
                "http"
            } else {
                "https"
            },
            trusted_realms: self.trusted_realms.clone(),
        }
    }
}

pub struct Registry {
    pub client: oci_client::Client,
    pub auth: RegistryAuth,
    pub image: ImageRef,
    pub options: RegistryOptions,
    scheme: &'static str,
}

impl Registry {
    /// Authorizes for `op` on `image`'s repository with `creds` and returns a client
    /// that carries the result.
    pub async fn connect(
        image: ImageRef,
        creds: &super::auth::AuthConfig,
        options: &RegistryOptions,
        op: RegistryOperation,
    ) -> Result<Registry, ImageError> {
        let policy = options.auth_policy(&image.registry);
        let scheme = policy.scheme;
        let scope = match op {
            RegistryOperation::Pull => format!("repository:{}:pull", image.repository),
            RegistryOperation::Push => format!("repository:{}:pull,push", image.repository),
        };
        let auth = super::auth::authorize(&image.registry, creds, Some(&scope), &policy).await?;
        let protocol = if scheme == "http" {
            ClientProtocol::HttpsExcept(vec![image.registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let client = oci_client::Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        });
        Ok(Registry {
            client,
            auth,
            image,
            options: options.clone(),
            scheme,
        })
    }
}

fn map_err(e: OciDistributionError) -> ImageError {
    match e {
        OciDistributionError::UnauthorizedError { url } => {
            ImageError::Unauthorized(format!("unauthorized: authentication required ({url})"))
        }
        OciDistributionError::AuthenticationFailure(m) => {
            ImageError::Unauthorized(format!("authentication failed: {}", m.trim()))
        }
        OciDistributionError::ImageManifestNotFoundError(m) => ImageError::NotFound(m),
        OciDistributionError::DigestError(d) => {
            ImageError::Registry(format!("digest check failed: {d}"))
        }
        OciDistributionError::ServerError { code: 401, url, .. } => {
            ImageError::Unauthorized(format!("unauthorized: {url}"))
        }
        OciDistributionError::ServerError { code: 404, url, .. } => ImageError::NotFound(url),
        OciDistributionError::RegistryError { envelope, url } => {
            let text = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            let upper = text.to_ascii_uppercase();
            if upper.contains("UNAUTHORIZED") || upper.contains("DENIED") {
                ImageError::Unauthorized(format!("{text} ({url})"))
            } else if upper.contains("UNKNOWN") {
                ImageError::NotFound(format!("{text} ({url})"))
            } else {
                ImageError::Registry(format!("{text} ({url})"))
            }
        }
        other => ImageError::Registry(other.to_string()),
    }
}

/// A manifest chosen for pulling, with its exact bytes.
pub struct Resolved {
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: String,
    pub manifest: Value,
}

const ACCEPT: &[&str] = &[
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
];

/// Fetches a manifest by tag or digest, reading at most `max_manifest_bytes` of it (an
/// endless answer fails at the cap), and checks it against `expected`.
async fn fetch_manifest(
    r: &Registry,
    reference: &str,
    expected: Option<&str>,
) -> Result<(Vec<u8>, String, Value), ImageError> {
    let url = format!(
        "{}://{}/v2/{}/manifests/{reference}",
        r.scheme,
        super::auth::registry_host(&r.image.registry),
        r.image.repository
    );
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| ImageError::Registry(e.to_string()))?;
    let mut req = client.get(&url).header("Accept", ACCEPT.join(", "));
    req = match &r.auth {
        RegistryAuth::Anonymous => req,
        RegistryAuth::Basic(u, p) => req.basic_auth(u, Some(p)),
        RegistryAuth::Bearer(t) => req.bearer_auth(t),
    };
    let res = req
        .send()
        .await
        .map_err(|e| ImageError::Registry(format!("{url}: {e}")))?;
    match res.status().as_u16() {
        200..=299 => {}
        401 | 403 => {
            return Err(ImageError::Unauthorized(format!(
                "unauthorized: authentication required ({url})"
            )))
        }
        404 => return Err(ImageError::NotFound(format!("manifest unknown ({url})"))),
        code => return Err(ImageError::Registry(format!("{url}: HTTP {code}"))),
    }
    let cap = r.options.max_manifest_bytes as usize;
    let bytes = super::auth::read_capped(res, cap, "manifest").await?;
    let digest = sha256_digest(&bytes);
    if let Some(want) = expected {
        if want != digest {
            return Err(ImageError::DigestMismatch {
                expected: want.to_string(),
                actual: digest,
            });
        }
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::BadImage(format!("manifest is not JSON: {e}")))?;
    Ok((bytes, digest, v))
}

/// Fetches the manifest a reference names; from an index or manifest list, the
/// linux/amd64 one.
pub async fn resolve(r: &Registry) -> Result<Resolved, ImageError> {
    let oci = r.image.oci();
    let reference = oci.digest().or(oci.tag()).unwrap_or("latest");
    let (mut bytes, mut digest, mut manifest) =
        fetch_manifest(r, reference, r.image.digest.as_deref()).await?;
    if manifest.get("manifests").is_some() {
        let pick = platform_digest(&manifest)
            .ok_or_else(|| {
                ImageError::NotFound(format!("{} has no linux/amd64 image", r.image.familiar()))
            })?
            .to_string();
        super::blobs::digest_hex(&pick)?;
        (bytes, digest, manifest) = fetch_manifest(r, &pick, Some(&pick)).await?;
    }
    check_image_manifest(&manifest, &r.options)?;
    Ok(Resolved {
        manifest_bytes: bytes,
        manifest_digest: digest,
        manifest,
    })
}

/// The digest of an index's (or manifest list's) linux/amd64 entry.
pub fn platform_digest(index: &Value) -> Option<&str> {
    index["manifests"]
        .as_array()?
        .iter()
        .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
        .and_then(|m| m["digest"].as_str())
}

/// Checks an image manifest before anything is fetched for it: a config and layers
/// named by well-formed digests, with sizes that are numbers, no more layers than
/// `max_layers`, and declared sizes within the caps (a registry that declares a small
/// size and sends more is cut off at the declared size by [`download`]).
pub fn check_image_manifest(manifest: &Value, options: &RegistryOptions) -> Result<(), ImageError> {
    let (Some(_), Some(layers)) = (
        manifest["config"].as_object(),
        manifest["layers"].as_array(),
    ) else {
        return Err(ImageError::BadImage(
            "unsupported manifest (schema 1 or not an image)".into(),
        ));
    };
    if layers.len() > options.max_layers {
        return Err(ImageError::BadImage(format!(
            "{} layers, more than the limit of {}",
            layers.len(),
            options.max_layers
        )));
    }
    let size_of = |d: &Value| -> Result<u64, ImageError> {
        let digest = d["digest"].as_str().unwrap_or_default();
        super::blobs::digest_hex(digest)?;
        match &d["size"] {
            Value::Null => Ok(0),
            v => v.as_u64().ok_or_else(|| {
                ImageError::BadImage(format!("descriptor {digest}: size {v} is not a byte count"))
            }),
        }
    };
    let config_size = size_of(&manifest["config"])?;
    if config_size > options.max_config_bytes {
        return Err(ImageError::BadImage(format!(
            "config of {config_size} bytes, more than the limit of {}",
            options.max_config_bytes
        )));
    }
    let mut declared = 0u64;
    for l in layers {
        declared = declared.saturating_add(size_of(l)?);
    }
    if declared > options.max_image_bytes {
        return Err(ImageError::BadImage(format!(
            "image of {declared} bytes, more than the limit of {}",
            options.max_image_bytes
        )));
    }
    Ok(())
}

/// Downloads one blob into the store, verified; retried on transfer errors.
async fn download(
    store: &ImageStore,
    r: &Registry,
    desc: &Value,
    progress: &ProgressTx,
    show: bool,
    max: u64,
) -> Result<(), ImageError> {
    let digest = desc["digest"]
        .as_str()
        .ok_or_else(|| ImageError::BadImage("descriptor without digest".into()))?;
    let size = desc["size"].as_u64().unwrap_or(0);
    if size > max {
        return Err(ImageError::BadImage(format!(
            "blob {digest} declares {size} bytes, more than the limit of {max}"
        )));
    }
    // Never more than the descriptor declares; with no declared size, the limit.
    let cap = if size > 0 { size } else { max };
    let id = progress::short(digest);
    let layer = oci_client::manifest::OciDescriptor {
        digest: digest.to_string(),
        size: size as i64,
        media_type: desc["mediaType"].as_str().unwrap_or_default().to_string(),
        ..Default::default()
    };
    let reference = r.image.oci();
    let mut last_err = None;
    for attempt in 1..=BLOB_ATTEMPTS {
        if attempt > 1 {
            if show {
                let _ = progress.send(progress::layer(
                    &id,
                    &format!("Retrying in {} seconds", attempt - 1),
                ));
            }
            tokio::time::sleep(Duration::from_secs(u64::from(attempt - 1))).await;
        }
        let mut stream = match r.client.pull_blob_stream(&reference, &layer).await {
            Ok(s) => s,
            Err(e) => {
                let e = map_err(e);
                if matches!(e, ImageError::Unauthorized(_) | ImageError::NotFound(_)) {
                    return Err(e);
                }
                last_err = Some(e);
                continue;
            }
        };
        let total = match stream.content_length {
            Some(n) if n > cap => {
                return Err(ImageError::Registry(format!(
                    "blob {digest}: the registry sends {n} bytes, more than the {cap} expected"
                )))
            }
            Some(n) => n,
            None => size,
        };
        let mut w = store.blobs.writer(Some(digest))?;
        let mut last = Instant::now();
        let mut failed = None;
        while let Some(chunk) = stream.stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if w.size() + bytes.len() as u64 > cap {
                        // The registry's lie, not bad luck: no retry.
                        return Err(ImageError::Registry(format!(
                            "blob {digest}: the registry sends more than the {cap} bytes expected"
                        )));
                    }
                    w.write_all(&bytes)?;
                    if show && last.elapsed() > Duration::from_millis(100) {
                        last = Instant::now();
                        let _ =
                            progress.send(progress::transfer(&id, "Downloading", w.size(), total));
                    }
                }
                Err(e) => {
                    failed = Some(ImageError::Registry(format!("download of {digest}: {e}")));
                    break;
                }
            }
        }
        if let Some(e) = failed {
            last_err = Some(e);
            continue;
        }
        if show {
            let _ = progress.send(progress::transfer(&id, "Downloading", w.size(), total));
            let _ = progress.send(progress::layer(&id, "Verifying Checksum"));
        }
        // A digest mismatch is the registry's lie, not bad luck: no retry.
        w.commit()?;
        if show {
            let _ = progress.send(progress::layer(&id, "Download complete"));
        }
        return Ok(());
    }
    Err(last_err.unwrap_or_else(|| ImageError::Registry(format!("cannot download {digest}"))))
}

/// Pulls what `resolved` names into the store and records the image under its tag
/// and its repo digest.
pub async fn pull(
    store: Arc<ImageStore>,
    r: Arc<Registry>,
    resolved: Resolved,
    progress: ProgressTx,
) -> Result<ImageRecord, ImageError> {
    let name = r.image.familiar_name();
    let mut pin = store.pin();
    pin.add(&resolved.manifest_digest);
    pin.add(
        resolved.manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default(),
    );
    for l in resolved.manifest["layers"].as_array().into_iter().flatten() {
        pin.add(l["digest"].as_str().unwrap_or_default());
    }
    let _ = progress.send(progress::about(
        &r.image
            .tag
            .clone()
            .unwrap_or_else(|| r.image.digest.clone().unwrap_or_default()),
        format!("Pulling from {}", r.image.repository),
    ));
    let layers = resolved.manifest["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for l in &layers {
        let digest = l["digest"].as_str().unwrap_or_default();
        let id = progress::short(digest);
        let status = if store.blobs.exists(digest) {
            "Already exists"
        } else {
            "Pulling fs layer"
        };
        let _ = progress.send(progress::layer(&id, status));
    }
    let config = resolved.manifest["config"].clone();
    if !store
        .blobs
        .exists(config["digest"].as_str().unwrap_or_default())
    {
        let max = r.options.max_config_bytes;
        download(&store, &r, &config, &progress, false, max).await?;
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL_LAYERS));
    let mut tasks = tokio::task::JoinSet::new();
    for l in layers
        .iter()
        .filter(|l| !store.blobs.exists(l["digest"].as_str().unwrap_or_default()))
    {
        let (store, r, progress, sem, l) = (
            store.clone(),
            r.clone(),
            progress.clone(),
            sem.clone(),
            l.clone(),
        );
        tasks.spawn(async move {
            let _permit = sem.acquire().await.expect("semaphore open");
            let max = r.options.max_image_bytes;
            download(&store, &r, &l, &progress, true, max).await
        });
    }
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = res
            .map_err(|e| ImageError::Registry(e.to_string()))
            .and_then(|r| r)
        {
            tasks.abort_all();
            return Err(e);
        }
    }
    let manifest_digest = store
        .blobs
        .put(&resolved.manifest_bytes, Some(&resolved.manifest_digest))?;
    let mut names = vec![format!("{name}@{manifest_digest}")];
    if r.image.tag.is_some() {
        names.push(r.image.familiar());
    }
    for l in &layers {
        let _ = progress.send(progress::layer(
            &progress::short(l["digest"].as_str().unwrap_or_default()),
            "Extracting",
        ));
    }
    let store2 = store.clone();
    let rec = tokio::task::spawn_blocking(move || store2.commit_image(&manifest_digest, &names))
        .await
        .map_err(|e| ImageError::Registry(e.to_string()))??;
    for l in &layers {
        let _ = progress.send(progress::layer(
            &progress::short(l["digest"].as_str().unwrap_or_default()),
            "Pull complete",
        ));
    }
    let _ = progress.send(progress::status(format!("Digest: {}", rec.manifest_digest)));
    let _ = progress.send(progress::about(
        &rec.id,
        format!("Status: Downloaded newer image for {}", r.image.familiar()),
    ));
    Ok(rec)
}

/// Pushes an image's layers, config and manifest (its exact bytes, so the digest is the
/// one stored) to `r.image`. Returns the manifest digest and size.
pub async fn push(
    store: Arc<ImageStore>,
    r: &Registry,
    rec: &ImageRecord,
    progress: ProgressTx,
) -> Result<(String, usize), ImageError> {
    let reference = r.image.oci();
    let _ = progress.send(progress::status(format!(
        "The push refers to repository [{}]",
        r.image.familiar_name()
    )));
    r.client
        .auth(&reference, &r.auth, RegistryOperation::Push)
        .await
        .map_err(map_err)?;
    let mut blobs: Vec<String> = rec.layers.iter().map(|l| l.digest.clone()).collect();
    for d in &blobs {
        let _ = progress.send(progress::layer(&progress::short(d), "Preparing"));
    }
    blobs.push(rec.id.clone());
    for d in &blobs {
        let id = progress::short(d);
        let is_layer = d != &rec.id;
        if r.client.blob_exists(&reference, d).await.map_err(map_err)? {
            if is_layer {
                let _ = progress.send(progress::layer(&id, "Layer already exists"));
            }
            continue;
        }
        let data = tokio::fs::read(store.blobs.path(d)?).await?;
        if is_layer {
            let _ = progress.send(progress::transfer(&id, "Pushing", 0, data.len() as u64));
        }
        let len = data.len() as u64;
        r.client
            .push_blob(&reference, data, d)
            .await
            .map_err(map_err)?;
        if is_layer {
            let _ = progress.send(progress::transfer(&id, "Pushing", len, len));
            let _ = progress.send(progress::layer(&id, "Pushed"));
        }
    }
    let manifest = store.blobs.read(&rec.manifest_digest)?;
    let size = manifest.len();
    let content_type = rec
        .manifest_media_type
        .parse()
        .map_err(|_| ImageError::BadImage("bad media type".into()))?;
    r.client
        .push_manifest_raw(&reference, manifest, content_type)
        .await
        .map_err(map_err)?;
    let tag = r.image.tag.clone().unwrap_or_else(|| "latest".into());
    let _ = progress.send(progress::status(format!(
        "{tag}: digest: {} size: {size}",
        rec.manifest_digest
    )));
    let _ = progress.send(progress::pushed(&tag, &rec.manifest_digest, size as u64));
    Ok((rec.manifest_digest.clone(), size))
}

#[cfg(test)]
mod tests {
    use super::{check_image_manifest, platform_digest, RegistryOptions};
    use serde_json::json;

    /// What a registry's manifest may not say: bad digests, sizes that are not byte
    /// counts, too many layers, sizes past the caps, no config.
    #[test]
    fn hostile_manifests_are_refused() {
        let d = format!("sha256:{}", "a".repeat(64));
        let opts = RegistryOptions {
            max_layers: 2,
            max_image_bytes: 100,
            max_config_bytes: 10,
            ..Default::default()
        };
        let m = |config: serde_json::Value, layers: serde_json::Value| json!({"schemaVersion": 2, "config": config, "layers": layers});
        let ok = m(
            json!({"digest": d, "size": 10}),
            json!([{"digest": d, "size": 60}]),
        );
        check_image_manifest(&ok, &opts).unwrap();
        for bad in [
            json!({"schemaVersion": 1, "fsLayers": []}),
            m(json!({"digest": "sha256:../../etc", "size": 1}), json!([])),
            m(
                json!({"digest": d, "size": 1}),
                json!([{"digest": "md5:00"}]),
            ),
            m(json!({"digest": d, "size": -1}), json!([])),
            m(json!({"digest": d, "size": "1"}), json!([])),
            m(json!({"digest": d, "size": 11}), json!([])),
            m(
                json!({"digest": d}),
                json!([{"digest": d, "size": 60}, {"digest": d, "size": 60}]),
            ),
            m(
                json!({"digest": d}),
                json!([{"digest": d}, {"digest": d}, {"digest": d}]),
            ),
            m(
                json!({"digest": d}),
                json!([{"digest": d, "size": u64::MAX}, {"digest": d, "size": 1}]),
            ),
        ] {
            assert!(check_image_manifest(&bad, &opts).is_err(), "{bad}");
        }
        let index = json!({"manifests": [
            {"digest": "sha256:1", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:2", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        assert_eq!(platform_digest(&index), Some("sha256:2"));
        assert_eq!(platform_digest(&json!({"manifests": {}})), None);
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(super::plain_http("127.0.0.1:5000", &[]));
        assert!(super::plain_http("localhost:5000", &[]));
        assert!(super::plain_http("127.8.9.10:5000", &[]));
        assert!(super::plain_http("[::1]:5000", &[]));
        assert!(!super::plain_http("127.evil.example:5000", &[]));
        assert!(!super::plain_http("127.0.0.1.nip.io", &[]));
        assert!(!super::plain_http("registry.example.com", &[]));
        assert!(super::plain_http(
            "registry.example.com:5000",
            &["registry.example.com:5000".into()]
        ));
    }
}
