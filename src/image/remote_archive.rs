//! Image archives downloaded from a URL a request names (mCM's `payload` mode).
//!
//! The URL is hostile: only `http` and `https`; the host's addresses are resolved once,
//! checked (no link-local, metadata, multicast or unspecified address) and pinned for the
//! connection, so a second lookup cannot rebind it; redirects are followed only on the
//! same host; the whole download has a deadline; the body streams to a file and stops at
//! the cap; and credentials written in the URL never appear in an error or a log.
use super::ImageError;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// Bounds of one download.
#[derive(Debug, Clone)]
pub(crate) struct DownloadLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

/// The URL as it may be shown: without user name and password.
pub(crate) fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Addresses a request from the daemon must never reach: link-local (cloud metadata
/// services live at 169.254.169.254 and fd00:ec2::254), unspecified, multicast,
/// broadcast.
pub(crate) fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_link_local() || a.is_unspecified() || a.is_multicast() || a.is_broadcast()
                // Alibaba Cloud's metadata service.
                || a.octets() == [100, 100, 100, 200]
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            let seg = a.segments();
            (seg[0] & 0xffc0) == 0xfe80
                || a.is_unspecified()
                || a.is_multicast()
                || seg == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
        }
    }
}

fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::BadReference(msg.into())
}

/// Downloads `url` into `dest` under `limits`.
pub(crate) async fn download(
    url: &str,
    dest: &Path,
    limits: &DownloadLimits,
) -> Result<(), ImageError> {
    let url = reqwest::Url::parse(url).map_err(|e| bad(format!("invalid URL: {e}")))?;
    let shown = redacted(&url);
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "{shown}: only http and https URLs are fetched"
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| bad(format!("{shown}: no host")))?
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let lookup_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addrs: Vec<SocketAddr> = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::lookup_host((lookup_host.as_str(), port)),
    )
    .await
    .map_err(|_| ImageError::Registry(format!("{shown}: name lookup timed out")))?
    .map_err(|e| ImageError::Registry(format!("{shown}: {e}")))?
    .collect();
    let addr = addrs
        .first()
        .copied()
        .ok_or_else(|| ImageError::Registry(format!("{shown}: the host has no address")))?;
    if let Some(a) = addrs.iter().find(|a| forbidden(a.ip())) {
        return Err(bad(format!(
            "{shown}: {} is a link-local, metadata or non-unicast address",
            a.ip()
        )));
    }
    let same_host = host.clone();
    let client = reqwest::Client::builder()
        .resolve(&lookup_host, addr)
        .connect_timeout(Duration::from_secs(10))
        .timeout(limits.timeout)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if attempt.url().host_str() != Some(same_host.as_str())
                || !matches!(attempt.url().scheme(), "http" | "https")
            {
                attempt.error("redirect to another host refused")
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| ImageError::Registry(e.without_url().to_string()))?;
    let fail = |e: reqwest::Error| {
        let what = if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_redirect() {
            "redirect to another host refused".to_string()
        } else {
            e.without_url().to_string()
        };
        ImageError::Registry(format!("{shown}: {what}"))
    };
    let mut res = client.get(url.clone()).send().await.map_err(fail)?;
    if !res.status().is_success() {
        return Err(ImageError::Registry(format!(
            "{shown}: the server answered HTTP {}",
            res.status().as_u16()
        )));
    }
    let too_large = || {
        bad(format!(
            "{shown}: image payload larger than {} bytes",
            limits.max_bytes
        ))
    };
    if res.content_length().is_some_and(|n| n > limits.max_bytes) {
        return Err(too_large());
    }
    let mut file = std::fs::File::create(dest)?;
    let mut written: u64 = 0;
    while let Some(chunk) = res.chunk().await.map_err(fail)? {
        written += chunk.len() as u64;
        if written > limits.max_bytes {
            return Err(too_large());
        }
        // Small writes to a local file; the chunk is at most a socket read.
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_metadata_and_link_local() {
        for a in [
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "224.0.0.1",
        ] {
            assert!(forbidden(a.parse().unwrap()), "{a}");
        }
        for a in ["127.0.0.1", "::1", "192.0.2.1", "10.1.2.3"] {
            assert!(!forbidden(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn credentials_never_shown() {
        let u = reqwest::Url::parse("http://alice:s3cret@127.0.0.1:1/x.tar").unwrap();
        assert!(!redacted(&u).contains("s3cret"));
        assert!(!redacted(&u).contains("alice"));
    }

    #[tokio::test]
    async fn refuses_schemes_and_metadata_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let limits = DownloadLimits {
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(5),
        };
        for url in [
            "file:///etc/passwd",
            "ftp://127.0.0.1/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://u:pw@[fe80::1]/x",
        ] {
            let e = download(url, &dir.path().join("f"), &limits)
                .await
                .unwrap_err();
            assert!(!e.to_string().contains("pw@"), "{e}");
            assert!(matches!(e, ImageError::BadReference(_)), "{url}: {e}");
        }
    }
}
