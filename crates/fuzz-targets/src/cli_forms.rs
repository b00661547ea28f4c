//! The short forms clients send as strings: Docker's `-v` (`SRC:DST[:OPTS]`), `-p`
//! (`[ip:][host:]container[/proto]`), mount paths, and a commit's Dockerfile changes.
//! Never a panic; what is accepted keeps its promises (absolute targets without `..`,
//! ports in range).
use hyperd_api::spec::{valid_mount_path, Port, VolumeMount};

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((v, m)) = VolumeMount::parse_volume_flag(s, "v0".into()) {
        assert!(m.path.starts_with('/') && !m.path.split('/').any(|p| p == ".."));
        let _ = v.kind();
    }
    if let Ok(p) = Port::parse_publish(s) {
        assert!(p.container_port > 0 && p.container_port <= 65535 && p.host_port <= 65535);
    }
    if valid_mount_path(s).is_ok() {
        assert!(s.starts_with('/'));
    }
    let mut config = serde_json::json!({"Env": ["A=1"]});
    let changes: Vec<String> = s.lines().map(String::from).collect();
    let _ = hyperd::image::commit::apply_changes(&mut config, &changes);
}
