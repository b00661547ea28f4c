//! The qemu driver: `qemu-system-x86_64 -M microvm`, booting hyperd's vmlinux (PVH entry)
//! and initramfs with no firmware, PCI or ACPI.
//!
//! - console: the 8250 UART into `<vm dir>/console.log`;
//! - agent channel: a virtio-serial port named `hyper.agent` whose host end is a Unix
//!   socket the daemon listens on (`<vm dir>/agent.sock`), qemu connecting as client and
//!   reconnecting if the daemon restarts;
//! - disks: virtio-blk over virtio-mmio, found by the agent through their serials;
//! - control: QMP on `<vm dir>/qmp.sock` (pause, resume, quit, status: [`super::qmp`]);
//! - KVM where the CPU has hardware virtualization, TCG otherwise ([`super::host`]).
use super::host::{choose_accel, Accel};
use super::{RunningVm, VmConfig, VmError};
use hyperd_agent::protocol::SERIAL_PORT_NAME;
use std::os::fd::AsRawFd;

#[derive(Debug, Clone)]
pub struct QemuDriver {
    pub accel: Accel,
    pub binary: String,
}

/// The kernel command line for a qemu microvm guest.
pub fn kernel_cmdline() -> String {
    // reboot=t: the agent's reboot triple-faults, which `-no-reboot` turns into qemu's exit.
    "console=ttyS0 reboot=t panic=-1 rdinit=/init loglevel=4 nomodule".to_string()
}

impl QemuDriver {
    pub fn new(accel: &str) -> Result<QemuDriver, super::SetupError> {
        Ok(QemuDriver {
            accel: choose_accel(accel)?,
            binary: std::env::var("HYPERD_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
        })
    }

    /// The kernel command line: on a host whose KVM emulates guest ring 0, qemu's KVM
    /// mode needs what keeps unsupported instructions out, as hyper-vmm does.
    pub fn cmdline(&self) -> String {
        let mut c = kernel_cmdline();
        if self.accel == Accel::Kvm && super::host::kvm_emulates_ring0() {
            c.push_str(hyper_vmm_api::host::EMULATED_RING0_CMDLINE);
        }
        c
    }

    /// The qemu command line for a VM; `net_fd` is the descriptor qemu inherits for its
    /// network link.
    pub fn args(&self, cfg: &VmConfig, net_fd: Option<i32>) -> Vec<String> {
        let dir = &cfg.dir;
        let (machine_accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "max"),
        };
        // vhost-user (virtiofsd) maps the guest's memory: it must be a shareable memfd.
        let shared_memory = !cfg.share.is_empty();
        let backend = if shared_memory {
            ",memory-backend=mem"
        } else {
            ""
        };
        let mut a: Vec<String> = vec![
            "-M".into(),
            format!("microvm,accel={machine_accel},acpi=off,isa-serial=on{backend}"),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            cfg.vcpus.to_string(),
            "-m".into(),
            format!("{}M", cfg.memory_mib),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            cfg.kernel.display().to_string(),
            "-initrd".into(),
            cfg.initrd.display().to_string(),
            "-append".into(),
            self.cmdline(),
            // Appended to, so that the daemon can empty it past its cap (vm::console).
            "-chardev".into(),
            format!(
                "file,id=console,path={},append=on",
                cfg.console_log().display()
            ),
            "-serial".into(),
            "chardev:console".into(),
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},reconnect=1",
                dir.join("agent.sock").display()
            ),
            "-device".into(),
            format!("virtserialport,chardev=agent,name={SERIAL_PORT_NAME}"),
            // The VM handle's control socket (pause, resume, quit, status).
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
        ];
        if shared_memory {
            a.push("-object".into());
            a.push(format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                cfg.memory_mib
            ));
            a.push("-chardev".into());
            a.push(format!(
                "socket,id=share,path={}",
                super::share::socket_path(dir).display()
            ));
            a.push("-device".into());
            a.push(format!(
                "vhost-user-fs-device,chardev=share,tag={}",
                super::share::TAG
            ));
        }
        if let (Some(guest), Some(fd)) = (cfg.net.guest(), net_fd) {
            // qemu's end of the link (opened before qemu by `boot`): a stream to passt, or
            // a tap in the pod's network namespace.
            a.push("-netdev".into());
            a.push(match cfg.net {
                super::net::VmNet::Netns { .. } => format!("tap,id=net0,fd={fd}"),
                _ => format!("stream,id=net0,server=off,addr.type=fd,addr.str={fd}"),
            });
            a.push("-device".into());
            // The agent sets the MTU (qemu's mergeable receive buffers take any).
            a.push(format!("virtio-net-device,netdev=net0,mac={}", guest.mac));
        }
        for (i, d) in cfg.disks.iter().enumerate() {
            a.push("-drive".into());
            let l = &cfg.disk_limits;
            let mut throttle = String::new();
            for (key, v) in [
                ("bps-read", l.read_bps),
                ("iops-read", l.read_iops),
                ("bps-write", l.write_bps),
                ("iops-write", l.write_iops),
            ] {
                if v > 0 {
                    throttle.push_str(&format!(",throttling.{key}={v}"));
                }
            }
            a.push(format!(
                "id=disk{i},file={},format=raw,if=none,readonly={}{throttle}",
                d.path.display(),
                if d.read_only { "on" } else { "off" }
            ));
            a.push("-device".into());
            a.push(format!(
                "virtio-blk-device,drive=disk{i},serial={}",
                d.serial
            ));
        }
        a
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
        let mut cmd = tokio::process::Command::new(&self.binary);
        let net_fd = backend.as_ref().map(|b| b.monitor_end.as_raw_fd());
        cmd.args(self.args(cfg, net_fd));
        if let Some(fd) = net_fd {
            super::net::pass_fd(&mut cmd, fd);
        }
        let result = self.launch(cfg, cmd).await;
        // qemu has its ends now (or failed); the helpers must still be there.
        let result = super::check_helpers(cfg, backend, result).await;
        if result.is_err() {
            super::stop_helpers(&cfg.dir);
        }
        result
    }

    async fn launch(
        &self,
        cfg: &VmConfig,
        cmd: tokio::process::Command,
    ) -> Result<RunningVm, VmError> {
        let qmp = super::ControlSocket::Qmp(cfg.dir.join("qmp.sock"));
        super::launch(cfg, cmd, "qemu.log", qmp, async { Ok(()) }).await
    }
}
