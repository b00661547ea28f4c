//! hyperd's state directory: created private (0700) and tightened at start.
//!
//! The root holds pod specs (env, files), logs, credentials, slot images and unpacked
//! image content with its setuid binaries: nothing there is for other local users. The
//! daemon runs with umask 077 so everything it creates is private, and a root left by an
//! older daemon with wider modes is tightened here (directories to 0700, files to at most
//! 0600), without following links and without entering the image store's work area,
//! whose unpacked trees keep their images' own modes, nor volumes, whose data is the
//! users' (named volumes' `_data`, pod-local volumes, a VM's share).
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Deepest level of the root walked when tightening (pods/<id>/<file> is 3).
const MAX_DEPTH: usize = 4;

/// Sets the process umask so files and directories the daemon creates are its own.
pub fn private_umask() {
    // SAFETY: umask only changes this process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates `root` (0700) or tightens an existing one; returns the paths it tightened.
pub fn prepare(root: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    let mut changed = Vec::new();
    tighten(root, root, 0, &mut changed)?;
    Ok(changed)
}

/// Whether `path` (below `root`) holds users' data, whose modes are theirs: a named
/// volume's `_data`, a pod's `volumes`, a VM's `share` (its mount points, which an
/// id-mapped virtiofsd must be able to enter).
fn users_data(root: &Path, path: &Path) -> bool {
    let rel: Vec<_> = path
        .strip_prefix(root)
        .map(|r| {
            r.components()
                .map(|c| c.as_os_str().to_os_string())
                .collect()
        })
        .unwrap_or_default();
    matches!(
        rel.iter()
            .map(|c| c.to_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .as_slice(),
        ["volumes", _, "_data"] | ["pods", _, "volumes"] | ["vm", _, "share"]
    )
}

fn tighten(root: &Path, path: &Path, depth: usize, changed: &mut Vec<PathBuf>) -> io::Result<()> {
    if users_data(root, path) {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        if mode != 0o700 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
            changed.push(path.to_path_buf());
        }
        // The image store's work area holds unpacked trees with the images' own modes
        // (the store empties it at start); blobs and records below it are tightened.
        if depth >= MAX_DEPTH || path.ends_with("image/tmp") {
            return Ok(());
        }
        for e in std::fs::read_dir(path)?.flatten() {
            tighten(root, &e.path(), depth + 1, changed)?;
        }
    } else if meta.is_file() && mode & 0o7077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o600))?;
        changed.push(path.to_path_buf());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn tightens_an_open_root_without_following_links() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("pods/p1")).unwrap();
        std::fs::create_dir_all(root.join("image/tmp/x")).unwrap();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        for d in [
            "volumes/db/_data",
            "pods/p1/volumes/cache",
            "vm/v1/share/v0",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (f, m) in [
            ("state.redb", 0o644),
            ("auth.json", 0o666),
            ("pods/p1/spec.json", 0o4755),
            ("image/tmp/x/bin", 0o755),
            ("volumes/db/_data/users.txt", 0o644),
            ("pods/p1/volumes/cache/page", 0o664),
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
            set(&root.join(f), m);
        }
        set(&root, 0o755);
        set(&root.join("vm/v1/share"), 0o755);
        let outside = outer.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        set(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let changed = prepare(&root).unwrap();
        assert!(changed.contains(&root));
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("state.redb")), 0o600);
        assert_eq!(mode(&root.join("auth.json")), 0o600);
        assert_eq!(mode(&root.join("pods/p1/spec.json")), 0o600);
        assert_eq!(mode(&root.join("image/tmp/x/bin")), 0o755);
        assert_eq!(mode(&outside), 0o644);
        // Volumes are the users' data: their modes stay (and a VM's share stays
        // enterable for an id-mapped virtiofsd).
        assert_eq!(mode(&root.join("volumes/db/_data/users.txt")), 0o644);
        assert_eq!(mode(&root.join("pods/p1/volumes/cache/page")), 0o664);
        assert_eq!(mode(&root.join("vm/v1/share")), 0o755);
        // A second start has nothing to change.
        assert!(prepare(&root).unwrap().is_empty());
    }
}
