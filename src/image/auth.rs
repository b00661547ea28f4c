//! Registry credentials: Docker's `AuthConfig` (from `X-Registry-Auth` or `POST /auth`),
//! the daemon's credential file (`<root>/auth.json`, mode 0600), and the login check.
//! Passwords never reach a log: `AuthConfig`'s `Debug` leaves them out.
use super::ImageError;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuthConfig {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub email: String,
    #[serde(
        default,
        alias = "serverAddress",
        skip_serializing_if = "String::is_empty"
    )]
    pub serveraddress: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identitytoken: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub registrytoken: String,
    /// base64 `user:password`, as in Docker's config files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("serveraddress", &self.serveraddress)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl AuthConfig {
    /// Username and password, also from the `auth` field.
    pub fn credentials(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        let raw = decode_b64(&self.auth)?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }

    pub fn registry_auth(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth;
        if !self.registrytoken.is_empty() {
            return RegistryAuth::Bearer(self.registrytoken.clone());
        }
        match self.credentials() {
            Some((u, p)) => RegistryAuth::Basic(u, p),
            None => RegistryAuth::Anonymous,
        }
    }
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

/// Decodes an `X-Registry-Auth` header (base64 JSON `AuthConfig`, URL-safe or not).
pub fn decode_header(value: &str) -> Result<AuthConfig, ImageError> {
    let raw = decode_b64(value)
        .ok_or_else(|| ImageError::BadReference("X-Registry-Auth is not base64".into()))?;
    if raw.iter().all(u8::is_ascii_whitespace) || raw == b"{}" || raw == b"null" {
        return Ok(AuthConfig::default());
    }
    serde_json::from_slice(&raw)
        .map_err(|e| ImageError::BadReference(format!("X-Registry-Auth is not an AuthConfig: {e}")))
}

/// The registry host a server address names: `https://index.docker.io/v1/` is
/// `docker.io`, `http://127.0.0.1:5000` is `127.0.0.1:5000`.
pub fn registry_key(server: &str) -> String {
    let s = server.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// Credentials the daemon keeps per registry, in a 0600 JSON file.
pub struct CredentialStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl CredentialStore {
    pub fn new(root: &Path) -> CredentialStore {
        CredentialStore {
            path: root.join("auth.json"),
            lock: Mutex::new(()),
        }
    }

    fn load(&self) -> BTreeMap<String, AuthConfig> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn get(&self, registry: &str) -> Option<AuthConfig> {
        self.load().remove(registry)
    }

    pub fn save(&self, registry: &str, cfg: &AuthConfig) -> Result<(), ImageError> {
        let _guard = self.lock.lock().unwrap();
        let mut all = self.load();
        all.insert(registry.to_string(), cfg.clone());
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&all).expect("json"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

/// Checks credentials against a registry: `GET /v2/` with basic auth, or, when the
/// registry answers with a bearer challenge, a token request to its realm.
pub async fn check_login(
    registry: &str,
    cfg: &AuthConfig,
    plain_http: bool,
) -> Result<(), ImageError> {
    let host = if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    };
    let scheme = if plain_http { "http" } else { "https" };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| ImageError::Registry(e.to_string()))?;
    let (user, pass) = cfg
        .credentials()
        .ok_or_else(|| ImageError::Unauthorized("no username given".into()))?;
    let url = format!("{scheme}://{host}/v2/");
    let res = client
        .get(&url)
        .basic_auth(&user, Some(&pass))
        .send()
        .await
        .map_err(|e| ImageError::Registry(format!("{url}: {e}")))?;
    if res.status().is_success() {
        return Ok(());
    }
    if res.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Err(ImageError::Registry(format!("{url}: {}", res.status())));
    }
    let challenge = res
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !challenge.to_ascii_lowercase().starts_with("bearer") {
        return Err(ImageError::Unauthorized(format!(
            "login to {registry} failed: wrong username or password"
        )));
    }
    let param = |name: &str| -> Option<String> {
        let i = challenge.find(&format!("{name}=\""))? + name.len() + 2;
        let rest = &challenge[i..];
        Some(rest[..rest.find('"')?].to_string())
    };
    let realm = param("realm")
        .ok_or_else(|| ImageError::Registry(format!("bad challenge from {registry}")))?;
    let mut req = client.get(&realm).basic_auth(&user, Some(&pass));
    if let Some(service) = param("service") {
        req = req.query(&[("service", service)]);
    }
    let res = req
        .send()
        .await
        .map_err(|e| ImageError::Registry(format!("{realm}: {e}")))?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(ImageError::Unauthorized(format!(
            "login to {registry} failed: wrong username or password"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_headers_and_keys() {
        let json = r#"{"username":"u","password":"p?>","serveraddress":"127.0.0.1:5000"}"#;
        for engine in [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
        ] {
            let cfg = decode_header(&engine.encode(json)).unwrap();
            assert_eq!(cfg.credentials(), Some(("u".into(), "p?>".into())));
        }
        assert!(decode_header("!!!").is_err());
        assert_eq!(
            decode_header(&base64::engine::general_purpose::STANDARD.encode("{}")).unwrap(),
            AuthConfig::default()
        );
        assert_eq!(registry_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_key("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
        let cfg = AuthConfig {
            username: "u".into(),
            password: "secret".into(),
            ..Default::default()
        };
        assert!(!format!("{cfg:?}").contains("secret"));
    }

    #[test]
    fn credential_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(dir.path());
        let cfg = AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        store.save("r:5000", &cfg).unwrap();
        assert_eq!(store.get("r:5000"), Some(cfg));
        let mode = std::fs::metadata(dir.path().join("auth.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
