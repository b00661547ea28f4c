//! The build context (a tar the client sends, unpacked by the hardened unpacker into a
//! directory of the build's own), `.dockerignore`, and the layers `COPY` and `ADD` make
//! from it: tars written on the host, never anything a guest wrote.
use super::BuildError;
use globset::GlobMatcher;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// `.dockerignore`: patterns in order, the last one that matches a path (or one of its
/// parent directories) decides; `!pattern` lets a path back in.
#[derive(Default)]
pub struct Ignore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl Ignore {
    pub fn parse(text: &str) -> Result<Ignore, BuildError> {
        let mut rules = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (pattern, keep) = match line.strip_prefix('!') {
                Some(p) => (p.trim(), true),
                None => (line, false),
            };
            let cleaned = clean(pattern).ok_or_else(|| {
                BuildError::Invalid(format!(".dockerignore: {pattern:?} leaves the context"))
            })?;
            if cleaned.as_os_str().is_empty() {
                continue;
            }
            let glob = globset::GlobBuilder::new(&cleaned.to_string_lossy())
                .literal_separator(true)
                .build()
                .map_err(|e| BuildError::Invalid(format!(".dockerignore: {pattern:?}: {e}")))?;
            rules.push((glob.compile_matcher(), keep));
            if rules.len() > 10_000 {
                return Err(BuildError::Invalid(
                    ".dockerignore: too many patterns".into(),
                ));
            }
        }
        Ok(Ignore { rules })
    }

    /// Whether `rel` (relative to the context) is left out.
    pub fn ignored(&self, rel: &Path) -> bool {
        let mut verdict = false;
        for (glob, keep) in &self.rules {
            if rel
                .ancestors()
                .any(|a| !a.as_os_str().is_empty() && glob.is_match(a))
            {
                verdict = !keep;
            }
        }
        verdict
    }
}

/// `path` made relative and normal: no `..` that would leave its root, no `.`.
pub fn clean(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// An unpacked build context.
pub struct Context {
    pub dir: PathBuf,
    pub ignore: Ignore,
}

/// A source a `COPY` or `ADD` takes from the context.
struct Source {
    rel: PathBuf,
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl Context {
    /// Opens an unpacked context and reads its `.dockerignore`.
    pub fn open(dir: PathBuf) -> Result<Context, BuildError> {
        let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
            Ok(t) => Ignore::parse(&t)?,
            Err(_) => Ignore::default(),
        };
        Ok(Context { dir, ignore })
    }

    /// The context's file for a path the client named (the Dockerfile).
    pub fn read_file(&self, rel: &str, max: u64) -> Result<Vec<u8>, BuildError> {
        let r = clean(rel)
            .ok_or_else(|| BuildError::Invalid(format!("{rel:?} leaves the build context")))?;
        let path = self.checked(&r)?;
        let f = std::fs::File::open(&path)
            .map_err(|e| BuildError::Invalid(format!("cannot read {rel:?} in the context: {e}")))?;
        let mut buf = Vec::new();
        f.take(max + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > max {
            return Err(BuildError::Invalid(format!(
                "{rel} is larger than {max} bytes"
            )));
        }
        Ok(buf)
    }

    /// `rel` inside the context, refused if a directory on the way is a symbolic link
    /// (the context's own links could otherwise lead the builder out of it).
    fn checked(&self, rel: &Path) -> Result<PathBuf, BuildError> {
        let mut p = self.dir.clone();
        let comps: Vec<_> = rel.components().collect();
        for (i, c) in comps.iter().enumerate() {
            p.push(c);
            if i + 1 < comps.len() {
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(BuildError::Invalid(format!(
                            "{} goes through a symbolic link in the context",
                            rel.display()
                        )))
                    }
                    _ => {}
                }
            }
        }
        Ok(p)
    }

    /// The context paths a source names (a path or a glob), ignored ones left out.
    fn sources(&self, src: &str) -> Result<Vec<Source>, BuildError> {
        let rel = clean(src)
            .ok_or_else(|| BuildError::Invalid(format!("{src:?} is outside the build context")))?;
        if !has_glob(src) {
            let path = self.checked(&rel)?;
            if std::fs::symlink_metadata(&path).is_err()
                || (!rel.as_os_str().is_empty() && self.ignore.ignored(&rel))
            {
                return Err(BuildError::Invalid(format!(
                    "{src}: no such file or directory in the build context"
                )));
            }
            return Ok(vec![Source { rel }]);
        }
        let glob = globset::GlobBuilder::new(&rel.to_string_lossy())
            .literal_separator(true)
            .build()
            .map_err(|e| BuildError::Invalid(format!("{src:?}: {e}")))?
            .compile_matcher();
        let mut found = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(self.dir.join(&dir))? {
                let e = e?;
                let r = dir.join(e.file_name());
                if glob.is_match(&r) {
                    if !self.ignore.ignored(&r) {
                        found.push(Source { rel: r });
                    }
                } else if e.file_type()?.is_dir() {
                    stack.push(r);
                }
            }
        }
        if found.is_empty() {
            return Err(BuildError::Invalid(format!(
                "{src}: no source files were specified"
            )));
        }
        found.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(found)
    }
}

/// Docker's rule for several sources: the destination must be a directory (`.../`).
pub(crate) fn check_many_sources(count: usize, dest: &str) -> Result<(), BuildError> {
    if count > 1 && !dest.ends_with('/') {
        return Err(BuildError::Invalid(format!(
            "when copying more than one source the destination must be a directory ending in /: {dest}"
        )));
    }
    Ok(())
}

/// How `COPY`/`ADD` write what they copy.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// `--chown=uid[:gid]` (numeric, or `root`).
    pub owner: Option<(u64, u64)>,
    /// `--chmod=octal`.
    pub mode: Option<u32>,
    /// `ADD`: local tar archives are unpacked at the destination.
    pub unpack_archives: bool,
}

/// Parses `--chown`: numeric ids or `root` (names of the image's users would need its
/// /etc/passwd, which the host does not read).
pub fn parse_chown(v: &str) -> Result<(u64, u64), BuildError> {
    let id = |s: &str| -> Result<u64, BuildError> {
        if s == "root" {
            return Ok(0);
        }
        s.parse().map_err(|_| {
            BuildError::Invalid(format!(
                "--chown={v}: hyperd takes numeric user and group ids (or root)"
            ))
        })
    };
    match v.split_once(':') {
        Some((u, g)) => Ok((id(u)?, id(g)?)),
        None => {
            let u = id(v)?;
            Ok((u, u))
        }
    }
}

/// A layer tar being written on the host.
pub struct LayerWriter {
    tar: tar::Builder<std::fs::File>,
    opts: CopyOptions,
    bytes: u64,
    entries: u64,
    max_bytes: u64,
}

fn dest_path(p: &Path) -> PathBuf {
    // Tar names are relative to the image's root.
    p.strip_prefix("/").unwrap_or(p).to_path_buf()
}

impl LayerWriter {
    pub fn create(path: &Path, opts: CopyOptions, max_bytes: u64) -> Result<Self, BuildError> {
        let mut tar = tar::Builder::new(std::fs::File::create(path)?);
        tar.follow_symlinks(false);
        Ok(LayerWriter {
            tar,
            opts,
            bytes: 0,
            entries: 0,
            max_bytes,
        })
    }

    pub fn finish(self) -> Result<(), BuildError> {
        let mut f = self.tar.into_inner()?;
        f.flush()?;
        f.sync_all()?;
        Ok(())
    }

    fn header(&self, meta: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        let mode = meta.mode() & 0o7777;
        h.set_mode(match (self.opts.mode, kind) {
            (Some(m), _) => m,
            _ => mode,
        });
        let (uid, gid) = self.opts.owner.unwrap_or((0, 0));
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        h
    }

    fn count(&mut self, bytes: u64) -> Result<(), BuildError> {
        self.entries += 1;
        self.bytes += bytes;
        if self.bytes > self.max_bytes || self.entries > 1_000_000 {
            return Err(BuildError::Invalid(format!(
                "the copied files are larger than {} bytes or more than a million",
                self.max_bytes
            )));
        }
        Ok(())
    }

    /// Writes `src` (a context file, directory or link) as `dest`, directories with
    /// their contents.
    fn add_tree(
        &mut self,
        ctx: &Context,
        rel: &Path,
        src: &Path,
        dest: &Path,
        top: bool,
    ) -> Result<(), BuildError> {
        let meta = std::fs::symlink_metadata(src)?;
        let ft = meta.file_type();
        let name = dest_path(dest);
        if ft.is_dir() {
            // A source directory's own entry is left out: its contents land in the
            // destination, whose mode and owner (`/tmp`'s, say) stay as they are.
            if !top && !name.as_os_str().is_empty() {
                let mut h = self.header(&meta, tar::EntryType::Directory);
                self.count(0)?;
                self.tar.append_data(&mut h, &name, std::io::empty())?;
            }
            let mut children: Vec<_> = std::fs::read_dir(src)?.collect::<Result<_, _>>()?;
            children.sort_by_key(|e| e.file_name());
            for c in children {
                let crel = rel.join(c.file_name());
                if ctx.ignore.ignored(&crel) {
                    continue;
                }
                self.add_tree(ctx, &crel, &c.path(), &dest.join(c.file_name()), false)?;
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(src)?;
            let mut h = self.header(&meta, tar::EntryType::Symlink);
            self.count(0)?;
            self.tar.append_link(&mut h, &name, &target)?;
        } else if ft.is_file() {
            let mut h = self.header(&meta, tar::EntryType::Regular);
            h.set_size(meta.len());
            self.count(meta.len())?;
            let f = std::fs::File::open(src)?;
            self.tar.append_data(&mut h, &name, f.take(meta.len()))?;
        }
        // Devices, FIFOs and sockets in a context are not copied.
        Ok(())
    }

    /// Writes the entries of the tar archive `archive` (maybe compressed) under `dest`:
    /// `ADD` of a local archive. Names are re-rooted and must stay beneath `dest`.
    fn add_archive(&mut self, archive: Box<dyn Read>, dest: &Path) -> Result<(), BuildError> {
        let mut ar = tar::Archive::new(archive);
        for entry in ar.entries()? {
            let mut entry = entry?;
            let raw = entry.path()?.into_owned();
            let rel = clean(&raw.to_string_lossy()).ok_or_else(|| {
                BuildError::Invalid(format!("the archive's {} leaves its root", raw.display()))
            })?;
            let name = dest_path(&dest.join(&rel));
            let mut h = entry.header().clone();
            let kind = h.entry_type();
            let (uid, gid) = self
                .opts
                .owner
                .unwrap_or((h.uid().unwrap_or(0), h.gid().unwrap_or(0)));
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mode(h.mode().unwrap_or(0o644) & 0o7777);
            h.set_mtime(h.mtime().unwrap_or(0));
            match kind {
                tar::EntryType::Directory
                | tar::EntryType::Regular
                | tar::EntryType::Continuous => {
                    let size = if kind == tar::EntryType::Directory {
                        0
                    } else {
                        entry.size()
                    };
                    self.count(size)?;
                    h.set_entry_type(if kind == tar::EntryType::Directory {
                        kind
                    } else {
                        tar::EntryType::Regular
                    });
                    h.set_size(size);
                    self.tar
                        .append_data(&mut h, &name, (&mut entry).take(size))?;
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()?
                        .ok_or_else(|| BuildError::Invalid("a link without a target".into()))?
                        .into_owned();
                    self.count(0)?;
                    self.tar.append_link(&mut h, &name, &target)?;
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name()?
                        .ok_or_else(|| BuildError::Invalid("a link without a target".into()))?
                        .into_owned();
                    let t = clean(&target.to_string_lossy()).ok_or_else(|| {
                        BuildError::Invalid(format!(
                            "a hard link to {} leaves the archive",
                            target.display()
                        ))
                    })?;
                    self.count(0)?;
                    self.tar
                        .append_link(&mut h, &name, dest_path(&dest.join(t)))?;
                }
                _ => {} // devices and FIFOs are left out, as in the image layers
            }
        }
        Ok(())
    }
}

/// Whether the file at `path` is a tar archive (plain, gzip or zstd): its decoded
/// first block has the ustar magic.
fn is_archive(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(mut r) = crate::image::unpack::decompress(f) else {
        return false;
    };
    let mut block = [0u8; 512];
    r.read_exact(&mut block).is_ok() && &block[257..262] == b"ustar"
}

/// Writes the layer of one `COPY`/`ADD` from the context: `srcs` to `dest` (absolute,
/// in the image), into the tar file `out`.
pub fn copy_layer(
    ctx: &Context,
    srcs: &[String],
    dest: &str,
    opts: CopyOptions,
    out: &Path,
    max_bytes: u64,
) -> Result<(), BuildError> {
    let mut sources = Vec::new();
    let globbed = srcs.iter().any(|s| has_glob(s));
    for s in srcs {
        sources.extend(ctx.sources(s)?);
    }
    let dest_is_dir = dest.ends_with('/') || sources.len() > 1 || globbed;
    check_many_sources(sources.len(), dest)?;
    let unpack = opts.unpack_archives;
    let mut w = LayerWriter::create(out, opts, max_bytes)?;
    for s in sources {
        let path = ctx.dir.join(&s.rel);
        let meta = std::fs::symlink_metadata(&path)?;
        if unpack && meta.is_file() && is_archive(&path) {
            let r = crate::image::unpack::decompress(std::fs::File::open(&path)?)?;
            w.add_archive(r, Path::new(dest))?;
            continue;
        }
        let target = if meta.is_dir() {
            PathBuf::from(dest)
        } else if dest_is_dir {
            Path::new(dest).join(s.rel.file_name().unwrap_or_default())
        } else {
            PathBuf::from(dest)
        };
        w.add_tree(ctx, &s.rel, &path, &target, true)?;
    }
    w.finish()
}

/// Writes the layer of an `ADD` of a downloaded file: the file `file` as `dest` (or
/// `dest/name` when `dest` ends with `/`), mode 0600 as Docker's, time 0.
pub fn file_layer(
    file: &Path,
    name: &str,
    dest: &str,
    opts: CopyOptions,
    out: &Path,
    max_bytes: u64,
) -> Result<(), BuildError> {
    let target = if dest.ends_with('/') {
        Path::new(dest).join(name)
    } else {
        PathBuf::from(dest)
    };
    let mut w = LayerWriter::create(out, opts.clone(), max_bytes)?;
    let meta = std::fs::metadata(file)?;
    let mut h = w.header(&meta, tar::EntryType::Regular);
    if opts.mode.is_none() {
        h.set_mode(0o600);
    }
    // The download's time says nothing about its content: left out, so that the same
    // content makes the same layer (and hits the cache).
    h.set_mtime(0);
    h.set_size(meta.len());
    w.count(meta.len())?;
    w.tar.append_data(
        &mut h,
        dest_path(&target),
        std::fs::File::open(file)?.take(meta.len()),
    )?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules() {
        let ig = Ignore::parse("# c\n*.log\nbuild/\n!keep.log\n**/tmp\n/secret/*\n").unwrap();
        for (p, want) in [
            ("a.log", true),
            ("keep.log", false),
            ("dir/a.log", false),
            ("build/x/y", true),
            ("x/y/tmp/z", true),
            ("secret/k", true),
            ("src/main.rs", false),
        ] {
            assert_eq!(ig.ignored(Path::new(p)), want, "{p}");
        }
        assert!(Ignore::parse("../x").is_err());
    }

    #[test]
    fn clean_paths_stay_inside() {
        assert_eq!(clean("/a/./b/../c").unwrap(), PathBuf::from("a/c"));
        assert!(clean("a/../../b").is_none());
        assert_eq!(clean(".").unwrap(), PathBuf::new());
    }

    fn entries(tar: &Path) -> Vec<(String, u64, u32)> {
        let mut ar = tar::Archive::new(std::fs::File::open(tar).unwrap());
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().uid().unwrap(),
                    e.header().mode().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn copy_layers_follow_docker_rules() {
        let t = tempfile::tempdir().unwrap();
        let ctx_dir = t.path().join("ctx");
        std::fs::create_dir_all(ctx_dir.join("src/sub")).unwrap();
        std::fs::write(ctx_dir.join("src/a.txt"), "a").unwrap();
        std::fs::write(ctx_dir.join("src/sub/b.txt"), "b").unwrap();
        std::fs::write(ctx_dir.join("src/skip.log"), "x").unwrap();
        std::fs::write(ctx_dir.join("top.txt"), "t").unwrap();
        std::fs::write(ctx_dir.join(".dockerignore"), "**/*.log\n").unwrap();
        std::os::unix::fs::symlink("/etc", ctx_dir.join("link")).unwrap();
        let ctx = Context::open(ctx_dir).unwrap();
        let out = t.path().join("l.tar");
        // A directory's contents go under the destination; ignored files stay out.
        copy_layer(
            &ctx,
            &["src".into()],
            "/app",
            CopyOptions {
                owner: Some((7, 8)),
                ..Default::default()
            },
            &out,
            1 << 20,
        )
        .unwrap();
        let names: Vec<_> = entries(&out).into_iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(
            names,
            vec![
                ("app/a.txt".into(), 7),
                ("app/sub".into(), 7),
                ("app/sub/b.txt".into(), 7)
            ]
        );
        // A file into a directory; a glob needs a directory destination.
        copy_layer(
            &ctx,
            &["top.txt".into()],
            "/opt/",
            CopyOptions::default(),
            &out,
            1 << 20,
        )
        .unwrap();
        assert_eq!(entries(&out)[0].0, "opt/top.txt");
        copy_layer(
            &ctx,
            &["*.txt".into()],
            "/g/",
            CopyOptions {
                mode: Some(0o700),
                ..Default::default()
            },
            &out,
            1 << 20,
        )
        .unwrap();
        assert_eq!(entries(&out), vec![("g/top.txt".into(), 0, 0o700)]);
        assert!(copy_layer(
            &ctx,
            &["top.txt".into(), "src".into()],
            "/x",
            CopyOptions::default(),
            &out,
            1 << 20
        )
        .is_err());
        // Nothing outside the context, nothing through its links, nothing ignored.
        for bad in ["../etc/passwd", "link/passwd", "src/skip.log", "missing"] {
            assert!(
                copy_layer(
                    &ctx,
                    &[bad.into()],
                    "/x",
                    CopyOptions::default(),
                    &out,
                    1 << 20
                )
                .is_err(),
                "{bad}"
            );
        }
        // The size cap holds.
        assert!(copy_layer(
            &ctx,
            &["src".into()],
            "/app",
            CopyOptions::default(),
            &out,
            1
        )
        .is_err());
    }

    #[test]
    fn add_unpacks_local_archives_beneath_the_destination() {
        let t = tempfile::tempdir().unwrap();
        let ctx_dir = t.path().join("ctx");
        std::fs::create_dir_all(&ctx_dir).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "dir/f", &b"hi"[..]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&b.into_inner().unwrap()).unwrap();
        std::fs::write(ctx_dir.join("a.tar.gz"), gz.finish().unwrap()).unwrap();
        let ctx = Context::open(ctx_dir).unwrap();
        let out = t.path().join("l.tar");
        let opts = CopyOptions {
            unpack_archives: true,
            ..Default::default()
        };
        copy_layer(&ctx, &["a.tar.gz".into()], "/srv", opts, &out, 1 << 20).unwrap();
        assert_eq!(entries(&out)[0].0, "srv/dir/f");
        // COPY keeps the archive as a file.
        copy_layer(
            &ctx,
            &["a.tar.gz".into()],
            "/srv/",
            CopyOptions::default(),
            &out,
            1 << 20,
        )
        .unwrap();
        assert_eq!(entries(&out)[0].0, "srv/a.tar.gz");
    }
}
