//! Random identifiers for pods, containers and VMs.
use std::io::Read;

/// `n` random bytes as lowercase hex, from the kernel's CSPRNG.
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom is readable");
    hex::encode(buf)
}

pub(crate) fn pod_id() -> String {
    format!("pod-{}", &random_hex(5))
}

pub(crate) fn vm_id() -> String {
    format!("vm-{}", &random_hex(5))
}

pub(crate) fn container_id() -> String {
    random_hex(32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_shaped() {
        let a = super::pod_id();
        let b = super::pod_id();
        assert_ne!(a, b);
        assert!(a.starts_with("pod-") && a.len() == 14);
        assert_eq!(super::container_id().len(), 64);
    }
}
