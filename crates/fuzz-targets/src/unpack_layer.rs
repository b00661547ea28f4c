//! The layer unpacker on any bytes (a hostile tar): it must never panic, and nothing may
//! appear outside the directory it unpacks into.

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let limits = hyperd::image::unpack::Limits {
        max_bytes: 1 << 20,
        max_entries: 1000,
    };
    let _ = hyperd::image::unpack::unpack_layer(data, &root, &limits);
    let outside: Vec<_> = std::fs::read_dir(outer.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "root")
        .collect();
    assert!(outside.is_empty(), "written outside the root: {outside:?}");
}
