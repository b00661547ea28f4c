//! `POST /image/build` (hyperd) and `POST /build` (Docker's classic builder): the
//! request body is the build context (a tar, maybe gzip- or zstd-compressed), the query
//! says what to build; the answer streams the build's progress as JSON lines, ending
//! with the image id in `aux.ID` or an `errorDetail`.
use super::http::{flag, json_lines, query, ApiError, ApiResult};
use crate::build::{self, BuildOptions};
use crate::engine::Engine;
use crate::image::progress;
use hyper::body::Incoming;
use hyper::Request;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A query parameter holding a JSON object of strings (`buildargs`, `labels`); nulls
/// (Docker's "take it from the environment", which a daemon does not have) are left out.
fn json_map(q: &HashMap<String, String>, name: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(text) = q.get(name).filter(|t| !t.trim().is_empty()) else {
        return Ok(BTreeMap::new());
    };
    let map: BTreeMap<String, Option<String>> = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("{name}: not a JSON object of strings: {e}")))?;
    Ok(map.into_iter().filter_map(|(k, v)| Some((k, v?))).collect())
}

/// The build's options from the query.
fn options(req: &Request<Incoming>) -> Result<BuildOptions, ApiError> {
    let q = query(req);
    if q.get("remote").is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::bad_request(
            "remote build contexts are not supported: send the context as the request body",
        ));
    }
    let tags: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, v)| k == "t" && !v.is_empty())
        .map(|(_, v)| v.into_owned())
        .collect();
    for t in &tags {
        crate::image::normalize_reference(t)?;
    }
    let opts = BuildOptions {
        dockerfile: q.get("dockerfile").cloned().unwrap_or_default(),
        tags,
        build_args: json_map(&q, "buildargs")?,
        no_cache: flag(&q, "nocache"),
        pull: flag(&q, "pull"),
        target: q.get("target").cloned().unwrap_or_default(),
        labels: json_map(&q, "labels")?,
        quiet: flag(&q, "q"),
    };
    if build::context::clean(&opts.dockerfile).is_none() {
        return Err(ApiError::bad_request(format!(
            "dockerfile {:?} leaves the build context",
            opts.dockerfile
        )));
    }
    Ok(opts)
}

pub(crate) async fn build(engine: &Arc<Engine>, mut req: Request<Incoming>) -> ApiResult {
    let opts = options(&req)?;
    let upgrade = super::attach::take_upgrade(&mut req);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = engine.clone();
    if upgrade.is_none() {
        let context = super::images::body_reader(req);
        tokio::spawn(async move {
            if let Err(e) = build::build(engine, context, opts, tx.clone()).await {
                report(&tx, &e);
            }
        });
        return Ok(json_lines(rx));
    }
    // Hijacked: the context is read whole (into a file, under the context cap) before
    // the connection switches, so no request bytes are left behind the upgrade.
    let spool = engine
        .cfg
        .root
        .join("image/tmp")
        .join(format!("context-{}.tar", crate::ids::random_hex(8)));
    let cap = engine.cfg.max_layer_bytes;
    let reader = super::images::body_reader(req);
    let spooled = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let result = (|| {
            let mut out = std::fs::File::create(&spool)?;
            let n = std::io::copy(&mut std::io::Read::take(reader, cap + 1), &mut out)?;
            if n > cap {
                return Err(std::io::Error::other(format!(
                    "the build context is larger than {cap} bytes (--max-layer-bytes)"
                )));
            }
            std::fs::File::open(&spool)
        })();
        // The open file keeps its data for the build; its name goes now.
        let _ = std::fs::remove_file(&spool);
        result
    })
    .await
    .map_err(|e| ApiError::new(hyper::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let context = spooled.map_err(|e| ApiError::bad_request(format!("the build context: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = build::build(engine, context, opts, tx.clone()).await {
            report(&tx, &e);
        }
    });
    Ok(super::attach::json_lines_or_hijacked(upgrade, rx))
}

fn report(tx: &progress::ProgressTx, e: &build::BuildError) {
    tracing::info!("build failed: {e}");
    let _ = tx.send(progress::error_with_code(&e.to_string(), e.exit_code()));
}
