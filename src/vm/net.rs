//! A VM's network: the guest's virtio-net device and its host backend.
//!
//! The `user` backend is one `passt` process per VM (Debian's passt; Podman uses the same
//! for rootless containers): it turns the guest's frames into host sockets, so the guest
//! reaches out through the host's own connections, the host's loopback answers at the
//! gateway address, and published ports are host sockets passt listens on. passt runs
//! sandboxed (it drops to `nobody`, into its own namespaces, under seccomp), in its own
//! process group so that it outlives a daemon restart with its VM. It and the VM monitor
//! each get one end of a socket pair (passt's `--fd`, qemu's `-netdev stream` on an fd):
//! no socket path, no race to connect, and passt quits when the VM's end closes.
//!
//! Every VM gets the same addresses (each has its own passt): the guest is
//! [`GUEST_ADDRESS`]/[`PREFIX`], the host is reached at [`GATEWAY`], and
//! [`DNS_FORWARD`] forwards DNS queries to the host's resolvers.
use super::VmError;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub const GUEST_ADDRESS: &str = "10.0.2.15";
pub const PREFIX: u8 = 24;
pub const GATEWAY: &str = "10.0.2.2";
pub const DNS_FORWARD: &str = "10.0.2.3";
/// The guest's MAC (locally administered); one per VM is enough, each VM has its own link.
pub const GUEST_MAC: &str = "02:68:79:70:64:01";
/// The guest's interface.
pub const INTERFACE: &str = "eth0";
/// The guest's MTU: passt's largest frame. Fewer, larger frames cost far less than
/// Ethernet's 1500 bytes where every guest instruction is emulated (docs/benchmarks.md).
pub const MTU: u32 = 65520;

const PASST_PID: &str = "passt.pid";
const PASST_LOG: &str = "passt.log";

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// A spec's protocol (`udp`, else TCP: the spec allows only `tcp`, `udp` or none).
    pub fn of(protocol: &str) -> Proto {
        if protocol == "udp" {
            Proto::Udp
        } else {
            Proto::Tcp
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A host port published to a guest port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Forward {
    pub proto: Proto,
    /// `None`: every host address.
    pub host_ip: Option<std::net::Ipv4Addr>,
    pub host_port: u16,
    pub guest_port: u16,
}

impl Forward {
    /// passt's port spec: `[ADDR/]HOST:GUEST`.
    fn passt_spec(&self) -> String {
        match self.host_ip {
            Some(ip) => format!("{ip}/{}:{}", self.host_port, self.guest_port),
            None => format!("{}:{}", self.host_port, self.guest_port),
        }
    }
}

/// A VM's network.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum VmNet {
    /// Loopback only: no network device.
    #[default]
    None,
    /// A virtio-net device on a passt backend, with these ports published; the gateway
    /// address reaches the host's loopback only with `host_loopback`.
    User {
        forwards: Vec<Forward>,
        #[serde(default)]
        host_loopback: bool,
    },
    /// A virtio-net device on a tap in an existing network namespace, taking over its
    /// interface (super::netns).
    Netns {
        path: String,
        link: super::netns::NetnsLink,
    },
}

impl VmNet {
    /// The guest's side of the link: interface set-up for the agent, and the MAC and MTU
    /// of its device. `None` without a network.
    pub fn guest(&self) -> Option<GuestLink> {
        match self {
            VmNet::None => None,
            VmNet::User { .. } => Some(GuestLink {
                address: GUEST_ADDRESS.parse().expect("a constant address"),
                prefix: PREFIX,
                gateway: Some(GATEWAY.parse().expect("a constant address")),
                mtu: MTU,
                mac: GUEST_MAC.to_string(),
            }),
            VmNet::Netns { link, .. } => Some(GuestLink {
                address: link.address,
                prefix: link.prefix,
                gateway: link.gateway,
                mtu: link.mtu,
                mac: link.mac.clone(),
            }),
        }
    }
}

/// What the guest's network interface is set to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLink {
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<std::net::Ipv4Addr>,
    pub mtu: u32,
    pub mac: String,
}

/// How the monitor's end of the link carries frames (passt's length-prefixed stream, or
/// a tap's descriptor): the VMM boundary's own type, which hyper-vmm is told.
pub use hyper_vmm_api::config::NetFraming as LinkKind;

/// The passt binary: `$HYPERD_PASST`, else `passt` on the PATH.
fn passt_binary() -> String {
    std::env::var("HYPERD_PASST").unwrap_or_else(|_| "passt".into())
}

/// passt's command line: the VM's end of the link on descriptor `fd`, the forwards, and
/// whether the gateway address maps to the host's loopback.
pub(crate) fn passt_args(fd: i32, forwards: &[Forward], host_loopback: bool) -> Vec<String> {
    let mut a: Vec<String> = ["--foreground", "--quiet", "--ipv4-only", "--fd"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(fd.to_string());
    if !host_loopback {
        // The host's own services on 127.0.0.1 stay out of a tenant's reach unless the
        // pod asks for the host (`host-gateway`).
        a.push("--no-map-gw".into());
    }
    for (flag, v) in [
        ("--address", GUEST_ADDRESS),
        ("--netmask", "24"),
        ("--gateway", GATEWAY),
        ("--dns-forward", DNS_FORWARD),
        ("--mac-addr", "02:68:79:70:64:02"),
    ] {
        a.push(flag.into());
        a.push(v.into());
    }
    for proto in [Proto::Tcp, Proto::Udp] {
        let specs: Vec<String> = forwards
            .iter()
            .filter(|f| f.proto == proto)
            .map(Forward::passt_spec)
            .collect();
        for spec in specs {
            a.push(if proto == Proto::Tcp { "-t" } else { "-u" }.into());
            a.push(spec);
        }
    }
    a
}

/// Checks that every forward's host port is free now (passt only warns when it cannot
/// bind): a port taken by anyone is refused before anything starts.
pub fn check_ports_free(forwards: &[Forward]) -> Result<(), VmError> {
    for f in forwards {
        let ip = f.host_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        let addr = std::net::SocketAddrV4::new(ip, f.host_port);
        let free = match f.proto {
            Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
            Proto::Udp => std::net::UdpSocket::bind(addr).map(drop),
        };
        if let Err(e) = free {
            return Err(VmError::PortTaken(format!(
                "{}/{}: {e}",
                addr,
                f.proto.as_str()
            )));
        }
    }
    Ok(())
}

/// A free host port for `proto` on `ip`, for ports published without one (`-P`).
pub fn free_port(proto: Proto, ip: Option<std::net::Ipv4Addr>) -> Result<u16, VmError> {
    let addr = std::net::SocketAddrV4::new(ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED), 0);
    let port = match proto {
        Proto::Tcp => std::net::TcpListener::bind(addr).and_then(|l| l.local_addr()),
        Proto::Udp => std::net::UdpSocket::bind(addr).and_then(|s| s.local_addr()),
    }
    .map_err(|e| VmError::PortTaken(format!("no free {} port: {e}", proto.as_str())))?
    .port();
    Ok(port)
}

/// A started backend: the VM monitor's end of the link, and the backend process.
pub(crate) struct Backend {
    /// Handed to the VM monitor (qemu's `-netdev stream,addr.type=fd` or `-netdev
    /// tap,fd=`).
    pub monitor_end: OwnedFd,
    pub kind: LinkKind,
    /// passt, for the user backend.
    child: Option<tokio::process::Child>,
    log: PathBuf,
}

impl Backend {
    /// Fails with passt's own words if it has exited (bad forwards, a port it could not
    /// take); otherwise lets it run on, reaped when it quits.
    pub(crate) fn check_running(self) -> Result<(), VmError> {
        let Some(mut child) = self.child else {
            return Ok(());
        };
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            return Err(VmError::Launch(format!(
                "passt exited ({status}): {}",
                log.trim()
            )));
        }
        // Reaped when it quits (with its VM); after a daemon restart, init reaps it.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }
}

/// Clears close-on-exec on `fd`, in a child between fork and exec.
pub(crate) fn inherit(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd number with integer arguments; async-signal-safe.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Lets a VM monitor's command inherit `fd` (close-on-exec cleared in the child only).
pub(crate) fn pass_fd(cmd: &mut tokio::process::Command, fd: i32) {
    // SAFETY: the closure only calls fcntl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || inherit(fd));
    }
}

/// Starts the VM's passt on one end of a new socket pair; the other end is for the VM
/// monitor. Host ports are checked first.
pub(crate) fn start_passt(
    dir: &Path,
    forwards: &[Forward],
    host_loopback: bool,
) -> Result<Backend, VmError> {
    check_ports_free(forwards)?;
    std::fs::create_dir_all(dir)?;
    let (monitor_end, passt_end) = std::os::unix::net::UnixStream::pair()?;
    let passt_end = OwnedFd::from(passt_end);
    let log = dir.join(PASST_LOG);
    let log_file = std::fs::File::create(&log)?;
    let mut cmd = tokio::process::Command::new(passt_binary());
    cmd.args(passt_args(passt_end.as_raw_fd(), forwards, host_loopback))
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .kill_on_drop(false);
    pass_fd(&mut cmd, passt_end.as_raw_fd());
    let child = cmd
        .spawn()
        .map_err(|e| VmError::Launch(format!("{}: {e}", passt_binary())))?;
    drop(passt_end);
    if let Some(pid) = child.id() {
        super::handle::record_helper(dir, PASST_PID, pid)?;
    }
    Ok(Backend {
        monitor_end: OwnedFd::from(monitor_end),
        kind: LinkKind::Stream,
        child: Some(child),
        log,
    })
}

/// Starts the backend `net` needs, if any: its `monitor_end` goes to the VM monitor.
/// `vm_id` names the tap of a namespace backend.
pub(crate) async fn start_backend(
    dir: &Path,
    vm_id: &str,
    net: &VmNet,
) -> Result<Option<Backend>, VmError> {
    match net {
        VmNet::User {
            forwards,
            host_loopback,
        } => Ok(Some(start_passt(dir, forwards, *host_loopback)?)),
        VmNet::Netns { path, link } => {
            let (dir, path, link) = (dir.to_path_buf(), path.clone(), link.clone());
            let tap = tap_name(vm_id);
            let fd = tokio::task::spawn_blocking(move || {
                super::netns::attach(&dir, &path, &link, &tap).map(|fd| (fd, dir))
            })
            .await
            .map_err(|e| VmError::Network(format!("wiring the namespace: {e}")))??;
            Ok(Some(Backend {
                monitor_end: fd.0,
                kind: LinkKind::Tap,
                child: None,
                log: fd.1.join(PASST_LOG),
            }))
        }
        VmNet::None => Ok(None),
    }
}

/// The tap of VM `vm_id` in a namespace: `hyt` and the id's hex (at most 15 bytes, the
/// kernel's limit).
pub fn tap_name(vm_id: &str) -> String {
    let hex: String = vm_id
        .trim_start_matches("vm-")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("hyt{hex}")
}

/// Stops the VM's passt if it is still there (it quits with its VM on its own; this
/// covers a VM that never connected, and leftovers).
pub(crate) fn stop_backend(dir: &Path) {
    super::handle::kill_helper(dir, PASST_PID);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passt_gets_each_forward_with_its_address() {
        let f = |proto, ip: Option<&str>, h, g| Forward {
            proto,
            host_ip: ip.map(|i| i.parse().unwrap()),
            host_port: h,
            guest_port: g,
        };
        let a = passt_args(
            7,
            &[
                f(Proto::Tcp, Some("127.0.0.1"), 8080, 80),
                f(Proto::Udp, None, 5353, 53),
            ],
            false,
        );
        let s = a.join(" ");
        assert!(s.contains("--no-map-gw"), "{s}");
        assert!(!passt_args(7, &[], true).contains(&"--no-map-gw".to_string()));
        assert!(s.contains("--fd 7"), "{s}");
        assert!(s.contains("-t 127.0.0.1/8080:80"), "{s}");
        assert!(s.contains("-u 5353:53"), "{s}");
    }

    #[test]
    fn a_taken_port_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let f = Forward {
            proto: Proto::Tcp,
            host_ip: Some(std::net::Ipv4Addr::LOCALHOST),
            host_port: port,
            guest_port: 80,
        };
        assert!(matches!(check_ports_free(&[f]), Err(VmError::PortTaken(_))));
    }
}
