//! Request and response helpers: query strings, bodies, JSON replies, API errors.
use crate::engine::EngineError;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// Largest JSON request body accepted.
pub(crate) const MAX_JSON_BODY: usize = 4 << 20;

#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::NoSuch(_) => StatusCode::NOT_FOUND,
            EngineError::WrongState(_) | EngineError::GuestRefused(_) => StatusCode::CONFLICT,
            EngineError::Invalid(_) => StatusCode::BAD_REQUEST,
            EngineError::Vm(crate::vm::VmError::PortTaken(_)) => StatusCode::CONFLICT,
            EngineError::Vm(crate::vm::VmError::Unsupported(_)) => StatusCode::BAD_REQUEST,
            EngineError::Vm(crate::vm::VmError::Network(_)) => StatusCode::BAD_REQUEST,
            EngineError::GuestFailed(_)
            | EngineError::Agent(_)
            | EngineError::Vm(_)
            | EngineError::Store(_)
            | EngineError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            EngineError::Image(e) => image_status(e),
        };
        ApiError::new(status, e.to_string())
    }
}

/// The one status map of image errors: 401 for a refused login, 502 for a registry that
/// fails or lies, 400 for bad input, 404, 409, and 500 for the daemon's own I/O.
pub(crate) fn image_status(e: &crate::image::ImageError) -> StatusCode {
    use crate::image::ImageError as E;
    match e {
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::BadReference(_) | E::BadDigest(_) | E::BadArchive(_) | E::BadImage(_) => {
            StatusCode::BAD_REQUEST
        }
        E::InUse(_) => StatusCode::CONFLICT,
        E::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        E::DigestMismatch { .. } | E::Registry(_) => StatusCode::BAD_GATEWAY,
        E::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<crate::image::ImageError> for ApiError {
    fn from(e: crate::image::ImageError) -> Self {
        ApiError::new(image_status(&e), e.to_string())
    }
}

/// A response that streams the chunks sent into the channel, as they come.
pub(crate) fn stream_chunks(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    content_type: &str,
) -> Response<Body> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, std::io::Error>(hyper::body::Frame::data(b)), rx))
    });
    Response::builder()
        .header("Content-Type", content_type)
        .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
        .expect("valid response")
}

/// A response that streams JSON lines as they are sent into the channel; the stream ends
/// when every sender is gone.
pub(crate) fn json_lines<T: serde::Serialize + Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> Response<Body> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.extend_from_slice(b"\r\n");
        let line = Bytes::from(line);
        Some((Ok::<_, std::io::Error>(hyper::body::Frame::data(line)), rx))
    });
    Response::builder()
        .header("Content-Type", "application/json")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
        .expect("valid response")
}

pub(crate) type ApiResult = Result<Response<Body>, ApiError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(full(body))
        .expect("valid response")
}

/// A 200 answer with `value` as JSON (a model of `hyperd_api`, or a compat API's).
pub(crate) fn ok_json(value: impl serde::Serialize) -> ApiResult {
    Ok(json_response(StatusCode::OK, &value))
}

pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    json_response(
        e.status,
        &hyperd_api::error::ErrorBody {
            message: e.message.clone(),
        },
    )
}

/// The query string as a map (the last value of a repeated key wins).
pub(crate) fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A required query parameter.
pub(crate) fn param<'a>(
    q: &'a HashMap<String, String>,
    names: &[&str],
) -> Result<&'a str, ApiError> {
    names
        .iter()
        .find_map(|n| q.get(*n).filter(|v| !v.is_empty()))
        .map(String::as_str)
        .ok_or_else(|| ApiError::bad_request(format!("missing query parameter {}", names[0])))
}

/// `yes`, `true`, `1` are true.
pub(crate) fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    matches!(
        q.get(name).map(|s| s.to_ascii_lowercase()).as_deref(),
        Some("yes" | "true" | "1")
    )
}

/// Reads a body up to `limit` bytes.
pub(crate) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
            )
        })?
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))
}

/// How long a request's (bounded) body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod status_tests {
    use super::*;
    use crate::image::ImageError;

    /// Image errors get the same status whether the engine or a handler met them.
    #[test]
    fn one_status_map_for_image_errors() {
        let cases = [
            (ImageError::Unauthorized("x".into()), 401),
            (ImageError::Registry("x".into()), 502),
            (
                ImageError::DigestMismatch {
                    expected: "a".into(),
                    actual: "b".into(),
                },
                502,
            ),
            (ImageError::NotFound("x".into()), 404),
            (ImageError::InUse("x".into()), 409),
            (ImageError::BadImage("x".into()), 400),
        ];
        for (e, want) in cases {
            let text = e.to_string();
            let via_engine = ApiError::from(EngineError::from(e));
            assert_eq!(via_engine.status.as_u16(), want, "{text}");
            assert_eq!(via_engine.message, text);
        }
    }
}
