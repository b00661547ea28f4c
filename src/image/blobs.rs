//! The content-addressed blob store: `blobs/sha256/<hex>`.
//!
//! Every blob is written to a temporary file while its sha256 is computed, checked
//! against the digest it is supposed to have, synced, and only then renamed into place:
//! a crash or a lying source leaves no half-written or wrong blob under a digest.
use super::ImageError;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

/// `sha256:<64 hex>` checked, the hex returned.
pub(crate) fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| ImageError::BadDigest(digest.to_string()))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(ImageError::BadDigest(digest.to_string()));
    }
    Ok(hex)
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl BlobStore {
    pub fn open(dir: &Path) -> Result<BlobStore, ImageError> {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(dir.join("sha256"))?;
        std::fs::create_dir_all(&tmp)?;
        for e in std::fs::read_dir(&tmp)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(BlobStore {
            dir: dir.to_path_buf(),
            tmp,
        })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("sha256").join(digest_hex(digest)?))
    }

    pub fn exists(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.exists()).unwrap_or(false)
    }

    pub fn size(&self, digest: &str) -> Result<u64, ImageError> {
        Ok(std::fs::metadata(self.path(digest)?)?.len())
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        std::fs::read(self.path(digest)?)
            .map_err(|_| ImageError::NotFound(format!("blob {digest}")))
    }

    pub fn open_blob(&self, digest: &str) -> Result<File, ImageError> {
        File::open(self.path(digest)?).map_err(|_| ImageError::NotFound(format!("blob {digest}")))
    }

    /// Starts a blob; `expected` is checked at commit.
    pub fn writer(&self, expected: Option<&str>) -> Result<BlobWriter<'_>, ImageError> {
        if let Some(d) = expected {
            digest_hex(d)?;
        }
        let path = self.tmp.join(crate::ids::random_hex(12));
        Ok(BlobWriter {
            store: self,
            file: Some(File::create(&path)?),
            path,
            hasher: Sha256::new(),
            size: 0,
            expected: expected.map(str::to_string),
        })
    }

    pub fn put(&self, bytes: &[u8], expected: Option<&str>) -> Result<String, ImageError> {
        let mut w = self.writer(expected)?;
        w.write_all(bytes)?;
        Ok(w.commit()?.0)
    }

    pub fn remove(&self, digest: &str) -> Result<(), ImageError> {
        match std::fs::remove_file(self.path(digest)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    pub fn list(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("sha256"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
            .collect()
    }
}

pub struct BlobWriter<'a> {
    store: &'a BlobStore,
    file: Option<File>,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
    expected: Option<String>,
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.as_mut().expect("open until commit").write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("open until commit").flush()
    }
}

impl BlobWriter<'_> {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Verifies, syncs and renames the blob into place; returns (digest, size).
    pub fn commit(mut self) -> Result<(String, u64), ImageError> {
        let digest = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if let Some(expected) = &self.expected {
            if expected != &digest {
                return Err(ImageError::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        let file = self.file.take().expect("open until commit");
        file.sync_all()?;
        drop(file);
        let dest = self.store.path(&digest)?;
        std::fs::rename(&self.path, &dest)?;
        if let Ok(d) = File::open(dest.parent().expect("blob dir")) {
            let _ = d.sync_all();
        }
        Ok((digest, self.size))
    }
}

impl Drop for BlobWriter<'_> {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_on_the_way_in() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let d = s.put(b"hello", None).unwrap();
        assert_eq!(d, sha256_digest(b"hello"));
        assert_eq!(s.read(&d).unwrap(), b"hello");
        let wrong = sha256_digest(b"other");
        assert!(matches!(
            s.put(b"hello!", Some(&wrong)),
            Err(ImageError::DigestMismatch { .. })
        ));
        assert!(!s.exists(&wrong));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(s.path("sha256:../../etc").is_err());
        assert!(s.path("md5:abc").is_err());
    }
}
