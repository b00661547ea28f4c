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
pub(crate) fn decode_header(value: &str) -> Result<AuthConfig, ImageError> {
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
pub(crate) fn registry_key(server: &str) -> String {
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
        self.write(&all)
    }

    /// Forgets a registry's login; `false` when there was none.
    pub fn remove(&self, registry: &str) -> Result<bool, ImageError> {
        let _guard = self.lock.lock().unwrap();
        let mut all = self.load();
        if all.remove(registry).is_none() {
            return Ok(false);
        }
        self.write(&all)?;
        Ok(true)
    }

    fn write(&self, all: &BTreeMap<String, AuthConfig>) -> Result<(), ImageError> {
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(all).expect("json"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

/// Largest token-server answer read.
const MAX_TOKEN_BODY: usize = 1 << 20;

/// How a registry wants to be spoken to, and where credentials may go.
#[derive(Debug, Clone, Default)]
pub struct AuthPolicy {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Hosts besides the registry's own that may receive credentials for a token.
    pub trusted_realms: Vec<String>,
}

/// Docker Hub's registry hands out tokens from another host; it is trusted for it.
const DOCKER_HUB_REALM: &str = "auth.docker.io";

fn host_of(url: &reqwest::Url) -> String {
    url.host_str().unwrap_or_default().to_ascii_lowercase()
}

/// The host a registry name is reached at (`docker.io` is `registry-1.docker.io`).
pub(crate) fn registry_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// A registry name's host alone: without a numeric `:port` and without the brackets of
/// an IPv6 address (`[::1]:5000` is `::1`).
pub(crate) fn bare_host(registry: &str) -> &str {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether Basic credentials may go to a token realm: only on the registry's own host,
/// Docker Hub's auth host for Docker Hub, or a host the operator trusted.
pub(crate) fn realm_trusted(registry: &str, realm: &reqwest::Url, trusted: &[String]) -> bool {
    let realm_host = host_of(realm);
    let realm_host = bare_host(&realm_host);
    realm_host.eq_ignore_ascii_case(bare_host(registry_host(registry)))
        || (registry == "docker.io" && realm_host == DOCKER_HUB_REALM)
        || trusted.iter().any(|t| t.eq_ignore_ascii_case(realm_host))
}

/// One `name="value"` of a `WWW-Authenticate` challenge.
fn challenge_param(challenge: &str, name: &str) -> Option<String> {
    let i = challenge.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &challenge[i..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Reads at most `cap` bytes of a response body; more is an error.
pub(crate) async fn read_capped(
    mut res: reqwest::Response,
    cap: usize,
    what: &str,
) -> Result<Vec<u8>, ImageError> {
    if res.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ImageError::Registry(format!(
            "{what} is larger than {cap} bytes"
        )));
    }
    let mut out = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| ImageError::Registry(format!("{what}: {e}")))?
    {
        if out.len() + chunk.len() > cap {
            return Err(ImageError::Registry(format!(
                "{what} is larger than {cap} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Authorizes against a registry the way its `/v2/` challenge asks: nothing, Basic to
/// the registry itself, or a bearer token from its realm (`scope`, e.g.
/// `repository:app:pull`). Credentials reach a realm only where [`realm_trusted`] says
/// so; a token answer is read under a cap. The result is what every later request of
/// this operation carries.
pub(crate) async fn authorize(
    registry: &str,
    cfg: &AuthConfig,
    scope: Option<&str>,
    policy: &AuthPolicy,
) -> Result<oci_client::secrets::RegistryAuth, ImageError> {
    use oci_client::secrets::RegistryAuth;
    if !cfg.registrytoken.is_empty() {
        return Ok(RegistryAuth::Bearer(cfg.registrytoken.clone()));
    }
    let creds = cfg.credentials();
    let client = http_client()?;
    let url = format!("{}://{}/v2/", policy.scheme, registry_host(registry));
    let res = client
        .get(&url)
        .send()
        .await
        .map_err(|e| ImageError::Registry(format!("{url}: {e}")))?;
    let basic_or_anonymous = || match &creds {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => RegistryAuth::Anonymous,
    };
    if res.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Ok(basic_or_anonymous());
    }
    let challenge = res
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !challenge.to_ascii_lowercase().starts_with("bearer") {
        return Ok(basic_or_anonymous());
    }
    let realm = challenge_param(&challenge, "realm")
        .and_then(|r| reqwest::Url::parse(&r).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| ImageError::Registry(format!("{registry} sent a bad auth challenge")))?;
    let mut req = client.get(realm.clone());
    if let Some(service) = challenge_param(&challenge, "service") {
        req = req.query(&[("service", service)]);
    }
    if let Some(scope) = scope {
        req = req.query(&[("scope", scope)]);
    }
    if let Some((u, p)) = &creds {
        if !realm_trusted(registry, &realm, &policy.trusted_realms) {
            return Err(ImageError::Unauthorized(format!(
                "{registry} asks for credentials at {}, another host: not sent \
                 (trust it with --trusted-auth-realm {})",
                host_of(&realm),
                host_of(&realm)
            )));
        }
        req = req.basic_auth(u, Some(p));
    }
    let res = req
        .send()
        .await
        .map_err(|e| ImageError::Registry(format!("token from {}: {e}", host_of(&realm))))?;
    if !res.status().is_success() {
        return Err(ImageError::Unauthorized(format!(
            "{registry}: authentication failed ({})",
            res.status()
        )));
    }
    let body = read_capped(res, MAX_TOKEN_BODY, "token answer").await?;
    #[derive(Deserialize)]
    struct Token {
        #[serde(default)]
        token: String,
        #[serde(default)]
        access_token: String,
    }
    let t: Token = serde_json::from_slice(&body)
        .map_err(|e| ImageError::Registry(format!("{registry}: bad token answer: {e}")))?;
    let token = if t.token.is_empty() {
        t.access_token
    } else {
        t.token
    };
    if token.is_empty() {
        return Err(ImageError::Registry(format!(
            "{registry}: token answer without a token"
        )));
    }
    Ok(RegistryAuth::Bearer(token))
}

fn http_client() -> Result<reqwest::Client, ImageError> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ImageError::Registry(e.to_string()))
}

/// Checks credentials against a registry: `GET /v2/` with basic auth, or, when the
/// registry answers with a bearer challenge, a token request to its (trusted) realm.
pub(crate) async fn check_login(
    registry: &str,
    cfg: &AuthConfig,
    policy: &AuthPolicy,
) -> Result<(), ImageError> {
    use oci_client::secrets::RegistryAuth;
    let (user, pass) = cfg
        .credentials()
        .ok_or_else(|| ImageError::Unauthorized("no username given".into()))?;
    let failed = || {
        ImageError::Unauthorized(format!(
            "login to {registry} failed: wrong username or password"
        ))
    };
    match authorize(registry, cfg, None, policy).await {
        Ok(RegistryAuth::Bearer(_)) => return Ok(()),
        Ok(_) => {}
        Err(ImageError::Unauthorized(m)) if m.contains("authentication failed") => {
            return Err(failed())
        }
        Err(e) => return Err(e),
    }
    let url = format!("{}://{}/v2/", policy.scheme, registry_host(registry));
    let res = http_client()?
        .get(&url)
        .basic_auth(&user, Some(&pass))
        .send()
        .await
        .map_err(|e| ImageError::Registry(format!("{url}: {e}")))?;
    if res.status().is_success() {
        Ok(())
    } else if res.status() == reqwest::StatusCode::UNAUTHORIZED {
        Err(failed())
    } else {
        Err(ImageError::Registry(format!("{url}: {}", res.status())))
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
    fn credentials_go_only_to_trusted_realms() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(realm_trusted(
            "127.0.0.1:5000",
            &u("http://127.0.0.1:5001/token"),
            &[]
        ));
        assert!(realm_trusted(
            "reg.example:443",
            &u("https://reg.example/token"),
            &[]
        ));
        assert!(realm_trusted(
            "docker.io",
            &u("https://auth.docker.io/token"),
            &[]
        ));
        assert!(!realm_trusted(
            "reg.example",
            &u("https://evil.example/token"),
            &[]
        ));
        assert!(!realm_trusted(
            "reg.example",
            &u("https://auth.docker.io/token"),
            &[]
        ));
        assert!(realm_trusted(
            "reg.example",
            &u("https://auth.example/token"),
            &["auth.example".into()]
        ));
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
        assert!(store.remove("r:5000").unwrap());
        assert!(!store.remove("r:5000").unwrap());
        assert_eq!(store.get("r:5000"), None);
        store.save("r:5000", &AuthConfig::default()).unwrap();
        let mode = std::fs::metadata(dir.path().join("auth.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
