//! The guest's network interfaces, configured with the classic `SIOCSIF*` ioctls: `lo`
//! up at boot, `eth0` (address, prefix, MTU, default route) when the host says so. All
//! containers of a pod share this one network namespace, as in a Kubernetes pod.
use hyperd_agent::protocol::NetworkConfig;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(r: libc::c_int, what: &str) -> Result<(), String> {
    if r < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn inet_socket() -> Result<OwnedFd, String> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket")?;
    // SAFETY: fd is a new, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> Result<libc::ifreq, String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!("bad interface name {name:?}"));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and sockaddr is
    // plain old data; the kernel reads it as the sockaddr_in it is.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, r: &mut libc::ifreq, what: &str) -> Result<(), String> {
    // SAFETY: r is a valid, initialized ifreq that outlives the call, as these ioctls
    // expect.
    check(
        unsafe { libc::ioctl(fd.as_raw_fd(), req, r as *mut libc::ifreq) },
        what,
    )
}

/// Sets an interface's flags to include IFF_UP.
fn up(fd: &OwnedFd, name: &str) -> Result<(), String> {
    let mut r = ifreq(name)?;
    ioctl(fd, libc::SIOCGIFFLAGS, &mut r, "get flags")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(fd, libc::SIOCSIFFLAGS, &mut r, "set flags")
}

/// Brings the loopback interface up (the kernel gives it 127.0.0.1/8).
pub(crate) fn loopback_up() -> Result<(), String> {
    up(&inet_socket()?, "lo")
}

/// Configures one interface and the default route through its gateway.
pub(crate) fn configure(cfg: &NetworkConfig) -> Result<(), String> {
    let address: Ipv4Addr = cfg
        .address
        .parse()
        .map_err(|_| format!("bad address {:?}", cfg.address))?;
    if cfg.prefix > 32 {
        return Err(format!("bad prefix /{}", cfg.prefix));
    }
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - cfg.prefix as u32).unwrap_or(0));
    let fd = inet_socket()?;
    let name = cfg.interface.as_str();
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_addr = sockaddr(address);
    ioctl(&fd, libc::SIOCSIFADDR, &mut r, "set address")?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_netmask = sockaddr(mask);
    ioctl(&fd, libc::SIOCSIFNETMASK, &mut r, "set netmask")?;
    if cfg.mtu > 0 {
        let mut r = ifreq(name)?;
        r.ifr_ifru.ifru_mtu = cfg.mtu as libc::c_int;
        ioctl(&fd, libc::SIOCSIFMTU, &mut r, "set mtu")?;
    }
    up(&fd, name)?;
    if !cfg.gateway.is_empty() {
        let gw: Ipv4Addr = cfg
            .gateway
            .parse()
            .map_err(|_| format!("bad gateway {:?}", cfg.gateway))?;
        // SAFETY: rtentry is plain old data; all zeroes is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // SAFETY: rt is a valid rtentry that outlives the call; its rt_dev is null.
        let res = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCADDRT, &mut rt as *mut _) };
        check(res, "add default route")?;
        announce(gw);
    }
    Ok(())
}

/// Sends one empty datagram to the gateway's discard port, so that the guest's first
/// frames (the ARP for the gateway, then the datagram) reach the backend: passt learns
/// the guest's MAC address from them and delivers nothing to the guest before it has.
fn announce(gateway: Ipv4Addr) {
    if let Ok(s) = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        let _ = s.send_to(&[], (gateway, 9));
    }
}
