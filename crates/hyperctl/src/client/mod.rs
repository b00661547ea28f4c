//! A typed client for hyperd's API over its Unix socket, used by `hyperctl` and the tests.
pub mod progress;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to hyperd at {0}: {1} (is hyperd running?)")]
    Connect(PathBuf, std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The daemon's answer to a failed request: its status and message.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("bad response from hyperd: {0}")]
    BadResponse(String),
    /// What a streamed answer (pull, push, build) reported as its failure.
    #[error("{0}")]
    Failed(String),
    #[error("the connection to hyperd broke: {0}")]
    Stream(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// A hijacked connection: the raw byte stream after `101 Switching Protocols`.
pub type Hijacked = TokioIo<hyper::upgrade::Upgraded>;

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Client {
        Client {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| ClientError::Connect(self.socket.clone(), e))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    fn build(
        method: Method,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("Host", "hyperd")
            .header("Content-Type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("valid request")
    }

    /// Sends a request; returns the status and the whole body, whatever the status.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(Self::build(method, path, body, content_type))
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Sends a request and returns the response with its body unread (for streams);
    /// a non-2xx status is an error carrying the daemon's message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(Self::build(method, path, body, content_type))
            .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            check(status, &bytes)?;
            return Err(ClientError::BadResponse(format!("status {status}")));
        }
        Ok(resp)
    }

    /// Sends a request and parses a JSON answer; a non-2xx status is an error carrying
    /// the daemon's message.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (status, bytes) = self.raw(method, path, body, "application/json").await?;
        check(status, &bytes)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// Sends a request with an optional JSON body and parses the answer as `T` (one of
    /// `hyperd_api`'s models); a non-2xx status is an error carrying the daemon's message.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, ClientError> {
        let body = match body {
            Some(b) => {
                serde_json::to_vec(b).map_err(|e| ClientError::BadResponse(e.to_string()))?
            }
            None => Vec::new(),
        };
        let (status, bytes) = self.raw(method, path, body, "application/json").await?;
        check(status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// `GET path`, parsed as `T`.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// Opens a hijacked connection (`Upgrade: tcp`).
    pub async fn hijack(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Hijacked, ClientError> {
        self.hijack_with(method, path, body, "application/json")
            .await
    }

    /// [`Client::hijack`] with a body of another type (a build context's tar).
    pub async fn hijack_with(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<Hijacked, ClientError> {
        let mut sender = self.connect().await?;
        let mut req = Self::build(method, path, body, content_type);
        req.headers_mut()
            .insert("Connection", "Upgrade".parse().expect("header"));
        req.headers_mut()
            .insert("Upgrade", "tcp".parse().expect("header"));
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let bytes = resp.into_body().collect().await?.to_bytes();
            check(status, &bytes)?;
            return Err(ClientError::BadResponse(format!(
                "expected 101, got {status}"
            )));
        }
        Ok(TokioIo::new(hyper::upgrade::on(resp).await?))
    }
}

fn check(status: StatusCode, body: &[u8]) -> Result<(), ClientError> {
    if status.is_success() {
        return Ok(());
    }
    let message = serde_json::from_slice::<hyperd_api::error::ErrorBody>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string());
    Err(ClientError::Api { status, message })
}

/// Percent-encodes a query value.
pub fn enc(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// Splits a stdcopy stream into (stream type, payload) frames; returns the frames and
/// how many bytes were consumed.
pub use hyperd_api::stdcopy::parse as parse_stdcopy;
