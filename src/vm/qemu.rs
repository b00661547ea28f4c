//! The qemu driver: `qemu-system-x86_64 -M microvm`, booting hyperd's vmlinux (PVH entry)
//! and initramfs with no firmware, PCI or ACPI.
//!
//! - console: the 8250 UART into `<vm dir>/console.log`;
//! - agent channel: a virtio-serial port named `hyper.agent` whose host end is a Unix
//!   socket the daemon listens on (`<vm dir>/agent.sock`), qemu connecting as client and
//!   reconnecting if the daemon restarts;
//! - disks: virtio-blk over virtio-mmio, found by the agent through their serials;
//! - KVM where the CPU has hardware virtualization, TCG otherwise ([`super::host`]).
use super::agent::AgentClient;
use super::host::{choose_accel, Accel};
use super::{RunningVm, VmConfig, VmError};
use hyperd_agent::protocol::{Op, SERIAL_PORT_NAME};
use std::process::Stdio;
use std::time::Duration;
use tokio::net::UnixListener;

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
    pub fn new(accel: &str) -> Result<QemuDriver, String> {
        Ok(QemuDriver {
            accel: choose_accel(accel)?,
            binary: std::env::var("HYPERD_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
        })
    }

    /// The qemu command line for a VM.
    pub fn args(&self, cfg: &VmConfig) -> Vec<String> {
        let dir = &cfg.dir;
        let (machine_accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "max"),
        };
        let mut a: Vec<String> = vec![
            "-M".into(),
            format!("microvm,accel={machine_accel},acpi=off,isa-serial=on"),
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
            kernel_cmdline(),
            "-serial".into(),
            format!("file:{}", cfg.console_log().display()),
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},reconnect=1",
                dir.join("agent.sock").display()
            ),
            "-device".into(),
            format!("virtserialport,chardev=agent,name={SERIAL_PORT_NAME}"),
        ];
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
        let sock = cfg.dir.join("agent.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)?;
        let log = std::fs::File::create(cfg.dir.join("qemu.log"))?;
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(self.args(cfg))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the daemon does not reach the VM.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| VmError::Launch(format!("{}: {e}", self.binary)))?;
        let pid = child.id().unwrap_or(0);
        std::fs::write(cfg.dir.join("pid"), pid.to_string())?;
        let console = cfg.console_log();
        let boot = async {
            let (stream, _) = listener.accept().await?;
            let (agent, events) = AgentClient::new(stream);
            agent.call(Op::Ping, cfg.boot_timeout).await?;
            Ok::<_, VmError>((agent, events))
        };
        let result = tokio::select! {
            r = tokio::time::timeout(cfg.boot_timeout + Duration::from_secs(5), boot) => match r {
                Ok(r) => r,
                Err(_) => Err(VmError::BootTimeout(cfg.boot_timeout, console.clone())),
            },
            _ = child.wait() => Err(VmError::DiedDuringBoot(cfg.dir.join("qemu.log"))),
        };
        drop(listener);
        let _ = std::fs::remove_file(&sock);
        match result {
            Ok((agent, events)) => Ok(RunningVm {
                pid,
                agent,
                events,
                process: super::VmProcess::Child(child),
            }),
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(e)
            }
        }
    }
}
