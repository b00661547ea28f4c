//! hyperd's pod spec parser and validator on any bytes (the body of `POST /pod/create`):
//! never a panic; a spec it accepts serializes and parses back to the same spec, and
//! every mount path it accepts is absolute and stays inside.
use hyperd_api::spec::PodSpec;

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    if let Ok(spec) = PodSpec::parse(data) {
        let json = serde_json::to_vec(&spec).expect("a spec serializes");
        let again = PodSpec::parse(&json).expect("an accepted spec parses again");
        assert_eq!(again, spec);
        for c in &spec.containers {
            for m in &c.volumes {
                assert!(m.path.starts_with('/') && !m.path.split('/').any(|p| p == ".."));
            }
        }
        for v in &spec.volumes {
            let _ = v.kind();
        }
        let _ = spec.published_ports().count();
    }
}
