//! The `netns` network backend, for orchestrators that run CNI plugins (Kata's
//! "tcfilter" model): the pod's VM joins a network namespace someone else made and wired.
//!
//! - The path must be `/run/netns/NAME` or `/var/run/netns/NAME` (checked lexically by the
//!   spec), must be a namespace file (nsfs), and must not be the host's own namespace.
//! - Its one interface with an IPv4 address (a veth, typically) gives the guest its
//!   address, prefix, MAC, MTU and default route: the guest becomes that interface.
//! - hyperd opens a tap in the namespace (a thread that enters it, `TUNSETIFF`), and tc
//!   redirects everything that arrives on the interface to the tap and back (ingress
//!   qdiscs, u32 match-all filters, mirred egress redirect): the namespace's own IP stack
//!   never sees the pod's packets.
//! - The VM monitor gets the tap's descriptor (qemu's `-netdev tap,fd=`, hyper-vmm's tap
//!   framing): it needs neither `/dev/net/tun` nor any tap ioctl. The tap is not
//!   persistent: it goes when the monitor's descriptor closes, with its filters; the
//!   interface's ingress qdisc is removed when the VM ends ([`detach`]), recorded in the
//!   VM's directory so that a restarted daemon removes it too.
//!
//! `ip` and `tc` (Debian's iproute2) do the reading and the wiring, run with `-n NAME`.
use super::VmError;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// What hyperd wired in a namespace, in the VM's directory.
const RECORD: &str = "netns.json";
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The namespace's interface the guest takes over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsLink {
    /// The namespace's name (under /run/netns).
    pub namespace: String,
    pub interface: String,
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
}

/// `ip -j addr` rows (the fields used).
#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    addr_info: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct IpAddr {
    family: String,
    local: String,
    prefixlen: u8,
}

/// `ip -j route` rows.
#[derive(Deserialize)]
struct IpRoute {
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dev: String,
}

fn refuse(msg: String) -> VmError {
    VmError::Network(msg)
}

/// Checks that `path` names a network namespace that is not the host's.
fn check_namespace(path: &str) -> Result<String, VmError> {
    let name = hyperd_api::spec::netns_name(path)
        .map_err(|e| refuse(e.0))?
        .to_string();
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).map_err(|e| refuse(format!("network namespace {path}: {e}")))?;
    let c = std::ffi::CString::new(path).map_err(|_| refuse(format!("bad path {path:?}")))?;
    // SAFETY: statfs fills the zeroed struct it is given; `c` is a NUL-terminated path.
    let fs_type = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut st) != 0 {
            return Err(refuse(format!(
                "network namespace {path}: {}",
                std::io::Error::last_os_error()
            )));
        }
        st.f_type
    };
    if fs_type != NSFS_MAGIC {
        return Err(refuse(format!("{path} is not a network namespace")));
    }
    for host in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        if let Ok(h) = std::fs::metadata(host) {
            if h.dev() == meta.dev() && h.ino() == meta.ino() {
                return Err(refuse(format!(
                    "{path} is the host's own network namespace"
                )));
            }
        }
    }
    Ok(name)
}

/// Runs `prog args` (iproute2), its output or its error in words.
fn run(prog: &str, args: &[&str]) -> Result<Vec<u8>, VmError> {
    let out = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| refuse(format!("{prog}: {e}")))?;
    if !out.status.success() {
        return Err(refuse(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// The interface of the namespace at `path` that the guest takes over: the one that has
/// an IPv4 address, besides loopback (exactly one must).
pub fn inspect(path: &str) -> Result<NetnsLink, VmError> {
    let ns = check_namespace(path)?;
    let links: Vec<IpLink> =
        serde_json::from_slice(&run("ip", &["-n", &ns, "-j", "addr", "show"])?)
            .map_err(|e| refuse(format!("ip addr in {ns}: {e}")))?;
    let mut candidates: Vec<(IpLink, Ipv4Addr, u8)> = Vec::new();
    for l in links {
        if l.ifname == "lo" || l.link_type != "ether" {
            continue;
        }
        let v4 = l
            .addr_info
            .iter()
            .find(|a| a.family == "inet")
            .and_then(|a| Some((a.local.parse::<Ipv4Addr>().ok()?, a.prefixlen)));
        if let Some((addr, prefix)) = v4 {
            candidates.push((l, addr, prefix));
        }
    }
    if candidates.len() != 1 {
        return Err(refuse(format!(
            "network namespace {ns} has {} interfaces with an IPv4 address; hyperd takes over exactly one",
            candidates.len()
        )));
    }
    let (link, address, prefix) = candidates.pop().expect("one");
    let routes: Vec<IpRoute> = serde_json::from_slice(&run(
        "ip",
        &["-n", &ns, "-j", "-4", "route", "show", "default"],
    )?)
    .map_err(|e| refuse(format!("ip route in {ns}: {e}")))?;
    let gateway = routes
        .iter()
        .filter(|r| r.dev == link.ifname)
        .find_map(|r| r.gateway.as_deref()?.parse().ok());
    Ok(NetnsLink {
        namespace: ns,
        interface: link.ifname,
        mac: link.address,
        address,
        prefix,
        gateway,
        mtu: if link.mtu == 0 { 1500 } else { link.mtu },
    })
}

#[derive(Serialize, Deserialize)]
struct Record {
    namespace: String,
    interface: String,
}

/// Opens a new (non-persistent) tap named `name` in the namespace at `path`, from a
/// thread that enters the namespace and ends with the call.
fn open_tap(path: &str, name: &str) -> Result<OwnedFd, VmError> {
    let ns = std::fs::File::open(path).map_err(|e| refuse(format!("{path}: {e}")))?;
    let name = name.to_string();
    std::thread::spawn(move || -> std::io::Result<OwnedFd> {
        // SAFETY: setns on a namespace descriptor moves this thread alone (it ends right
        // after) into the namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        // SAFETY: an all-zero ifreq is valid; the name is shorter than IFNAMSIZ (the
        // caller's names are), and TUNSETIFF reads the struct, which lives across the
        // call.
        unsafe {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
            if libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &ifr) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(OwnedFd::from(tun))
    })
    .join()
    .map_err(|_| refuse("the tap thread panicked".into()))?
    .map_err(|e| refuse(format!("tap {path}: {e}")))
}

/// Wires the VM into the namespace: a tap named `tap`, and tc redirects between it and
/// the interface both ways. Answers the tap's descriptor for the VM monitor. Once the
/// interface's ingress qdisc is ours it is recorded in `dir`, so that [`detach`] undoes
/// it; an interface another pod holds (its qdisc exists) is refused and left alone.
pub fn attach(dir: &Path, path: &str, link: &NetnsLink, tap: &str) -> Result<OwnedFd, VmError> {
    let ns = check_namespace(path)?;
    if ns != link.namespace {
        return Err(refuse(format!(
            "{path} is not namespace {}",
            link.namespace
        )));
    }
    // Not persistent: on any failure below, dropping it removes the tap and its qdisc.
    let fd = open_tap(path, tap)?;
    let mtu = link.mtu.to_string();
    run("ip", &["-n", &ns, "link", "set", tap, "mtu", &mtu, "up"])?;
    let iface = link.interface.as_str();
    run("tc", &["-n", &ns, "qdisc", "add", "dev", iface, "ingress"]).map_err(|e| {
        refuse(format!(
            "{iface} in {ns} already has an ingress qdisc (another pod on it?): {e}"
        ))
    })?;
    let record = Record {
        namespace: ns.clone(),
        interface: link.interface.clone(),
    };
    let wire = || -> Result<(), VmError> {
        std::fs::write(
            dir.join(RECORD),
            serde_json::to_vec(&record).map_err(|e| refuse(e.to_string()))?,
        )?;
        run("tc", &["-n", &ns, "qdisc", "add", "dev", tap, "ingress"])?;
        for (from, to) in [(iface, tap), (tap, iface)] {
            run(
                "tc",
                &[
                    "-n", &ns, "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all",
                    "u32", "match", "u8", "0", "0", "action", "mirred", "egress", "redirect",
                    "dev", to,
                ],
            )?;
        }
        Ok(())
    };
    if let Err(e) = wire() {
        let _ = run("tc", &["-n", &ns, "qdisc", "del", "dev", iface, "ingress"]);
        let _ = std::fs::remove_file(dir.join(RECORD));
        return Err(e);
    }
    Ok(fd)
}

/// Undoes [`attach`] as far as it is still there: the interface's ingress qdisc (and its
/// filter) goes; the tap went with the VM monitor.
pub fn detach(dir: &Path) {
    let Ok(bytes) = std::fs::read(dir.join(RECORD)) else {
        return;
    };
    if let Ok(r) = serde_json::from_slice::<Record>(&bytes) {
        if hyperd_api::spec::netns_name(&format!("/run/netns/{}", r.namespace)).is_ok() {
            let _ = run(
                "tc",
                &[
                    "-n",
                    &r.namespace,
                    "qdisc",
                    "del",
                    "dev",
                    &r.interface,
                    "ingress",
                ],
            );
        }
    }
    let _ = std::fs::remove_file(dir.join(RECORD));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_own_namespace_and_other_files_are_refused() {
        for bad in [
            "/proc/1/ns/net",
            "/run/netns/../../proc/1/ns/net",
            "/etc/passwd",
        ] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
        // A file under /run/netns that is no namespace.
        let _ = std::fs::create_dir_all("/run/netns");
        let fake = format!("/run/netns/hyperd-not-a-ns-{}", std::process::id());
        if std::fs::write(&fake, b"x").is_ok() {
            let r = check_namespace(&fake);
            let _ = std::fs::remove_file(&fake);
            assert!(r
                .unwrap_err()
                .to_string()
                .contains("not a network namespace"));
        }
    }

    #[test]
    fn iproute2_json_is_read_for_the_one_interface() {
        let links: Vec<IpLink> = serde_json::from_str(
            r#"[{"ifindex":1,"ifname":"lo","link_type":"loopback","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
                {"ifindex":2,"ifname":"eth0","address":"aa:bb:cc:dd:ee:ff","mtu":1450,"link_type":"ether",
                 "addr_info":[{"family":"inet","local":"10.1.2.3","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#,
        )
        .unwrap();
        assert_eq!(links.len(), 2);
        assert_eq!(links[1].mtu, 1450);
        assert_eq!(links[1].addr_info[0].local, "10.1.2.3");
        let routes: Vec<IpRoute> = serde_json::from_str(
            r#"[{"dst":"default","gateway":"10.1.2.1","dev":"eth0","flags":[]}]"#,
        )
        .unwrap();
        assert_eq!(routes[0].gateway.as_deref(), Some("10.1.2.1"));
    }
}
