//! The hyper-vmm driver: hyperd's own VMM (the `hyper-vmm` crate), one `hyper-vmm` process per
//! VM, driven over its control socket (`<vm dir>/vmm.sock`).
//!
//! The guest sees what it sees under qemu: the 8250 console into `<vm dir>/console.log`,
//! virtio-blk disks found by serial, and the virtio-console port `hyper.agent` whose host
//! end is the daemon's `<vm dir>/agent.sock` (the VMM connects and reconnects, as qemu's
//! chardev does). The agent cannot tell the two apart.
use super::{RunningVm, VmConfig, VmError};
use hyper_vmm_api::config::{DiskConfig, Limits, MachineConfig, NetConfig, MAX_VCPUS};
use hyper_vmm_api::control::{Request, Response};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, Clone)]
pub struct VmmDriver {
    pub binary: PathBuf,
}

/// The kernel command line for a hyper-vmm guest (the VMM adds its devices and, on hosts
/// that emulate ring 0, what keeps unsupported instructions out).
pub fn kernel_cmdline() -> String {
    // reboot=k: the agent's reboot goes through the i8042, which ends the VMM.
    "console=ttyS0 reboot=k panic=-1 rdinit=/init loglevel=4 nomodule".to_string()
}

/// Where the `hyper-vmm` binary is: `HYPERD_VMM`, else next to the running binary.
pub fn find_binary() -> Result<PathBuf, super::SetupError> {
    if let Some(p) = std::env::var_os("HYPERD_VMM") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(super::SetupError::NoExe)?;
    // Integration tests run from target/<profile>/deps; the binaries are one level up.
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("hyper-vmm");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(super::SetupError::VmmNotFound(exe))
}

impl VmmDriver {
    pub fn new() -> Result<VmmDriver, super::SetupError> {
        if !super::host::kvm_usable() {
            return Err(super::SetupError::NoKvm);
        }
        Ok(VmmDriver {
            binary: find_binary()?,
        })
    }

    /// The machine the VMM is asked to create for a VM; `net_fd` is the VMM's end of the
    /// link to the network backend, inherited by the VMM process.
    pub fn machine_config(
        cfg: &VmConfig,
        net_fd: Option<(i32, super::net::LinkKind)>,
    ) -> MachineConfig {
        let guest = cfg.net.guest();
        MachineConfig {
            vcpus: cfg.vcpus.clamp(1, u32::from(MAX_VCPUS)) as u8,
            mem_mib: u64::from(cfg.memory_mib),
            kernel: cfg.kernel.clone(),
            initrd: Some(cfg.initrd.clone()),
            cmdline: kernel_cmdline(),
            disks: cfg
                .disks
                .iter()
                .map(|d| DiskConfig {
                    path: d.path.clone(),
                    read_only: d.read_only,
                    serial: d.serial.clone(),
                    read_limit: Limits {
                        bytes_per_sec: cfg.disk_limits.read_bps,
                        ops_per_sec: cfg.disk_limits.read_iops,
                    },
                    write_limit: Limits {
                        bytes_per_sec: cfg.disk_limits.write_bps,
                        ops_per_sec: cfg.disk_limits.write_iops,
                    },
                })
                .collect(),
            agent_socket: Some(cfg.dir.join("agent.sock")),
            console_log: Some(cfg.console_log()),
            shared_dirs: if cfg.share.is_empty() {
                Vec::new()
            } else {
                vec![hyper_vmm_api::config::SharedDirConfig {
                    tag: super::share::TAG.to_string(),
                    socket: super::share::socket_path(&cfg.dir),
                }]
            },
            net: net_fd.zip(guest).map(|((fd, kind), guest)| NetConfig {
                fd,
                framing: kind,
                mac: guest.mac,
                mtu: guest.mtu.min(u32::from(u16::MAX)) as u16,
                tx_limit: Limits::default(),
                rx_limit: Limits::default(),
            }),
        }
    }

    pub async fn boot(&self, cfg: &VmConfig) -> Result<RunningVm, VmError> {
        std::fs::create_dir_all(&cfg.dir)?;
        let backend = super::net::start_backend(&cfg.dir, &cfg.id, &cfg.net).await?;
        if !cfg.share.is_empty() {
            if let Err(e) = super::share::start_virtiofsd(&cfg.dir, &cfg.share) {
                super::stop_helpers(&cfg.dir);
                return Err(e);
            }
        }
        let net_fd = backend
            .as_ref()
            .map(|b| (b.monitor_end.as_raw_fd(), b.kind));
        let result = self.launch(cfg, net_fd).await;
        // The VMM has its end now (or failed); the helpers must still be there.
        let result = super::check_helpers(cfg, backend, result).await;
        if result.is_err() {
            super::stop_helpers(&cfg.dir);
        }
        result
    }

    async fn launch(
        &self,
        cfg: &VmConfig,
        net_fd: Option<(i32, super::net::LinkKind)>,
    ) -> Result<RunningVm, VmError> {
        let api = cfg.dir.join("vmm.sock");
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--api-sock").arg(&api);
        if let Some((fd, _)) = net_fd {
            super::net::pass_fd(&mut cmd, fd);
        }
        let machine = Self::machine_config(cfg, net_fd);
        let setup = async {
            let mut ctl = Control::connect(&api, Duration::from_secs(10)).await?;
            ctl.call(&Request::Create {
                config: Box::new(machine),
            })
            .await?;
            ctl.call(&Request::Start).await?;
            Ok(())
        };
        super::launch(
            cfg,
            cmd,
            "vmm.log",
            super::ControlSocket::Vmm(api.clone()),
            setup,
        )
        .await
    }
}

/// A connection to a VMM's control socket.
pub struct Control {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Control {
    /// Connects, retrying while the VMM is still starting.
    pub async fn connect(path: &Path, within: Duration) -> Result<Control, VmError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match UnixStream::connect(path).await {
                Ok(s) => {
                    let (r, w) = s.into_split();
                    return Ok(Control {
                        reader: BufReader::new(r),
                        writer: w,
                    });
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(VmError::Launch(format!("{}: {e}", path.display())))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Sends a request; an answer with `ok: false` is an error. The answer is read under
    /// a size bound: a VMM is a process a guest may have taken over.
    pub async fn call(&mut self, req: &Request) -> Result<Response, VmError> {
        let mut line = serde_json::to_vec(req).map_err(|e| VmError::Control(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let mut answer = Vec::new();
        let limit = hyper_vmm_api::control::MAX_REQUEST_BYTES as u64;
        if (&mut self.reader)
            .take(limit + 1)
            .read_until(b'\n', &mut answer)
            .await?
            == 0
        {
            return Err(VmError::Control("the VMM closed its control socket".into()));
        }
        if answer.len() as u64 > limit {
            return Err(VmError::Control("the VMM sent an oversized answer".into()));
        }
        let resp: Response =
            serde_json::from_slice(&answer).map_err(|e| VmError::Control(e.to_string()))?;
        if !resp.ok {
            return Err(VmError::Control(format!(
                "hyper-vmm: {}",
                resp.error.clone().unwrap_or_default()
            )));
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod boundary_tests {
    #[test]
    fn the_vmm_names_the_port_the_agent_looks_for() {
        assert_eq!(
            hyper_vmm_api::config::AGENT_PORT_NAME,
            hyperd_agent::protocol::SERIAL_PORT_NAME
        );
    }
}
