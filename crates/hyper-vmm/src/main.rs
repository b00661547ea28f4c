//! hyper-vmm: hyperd's virtual machine monitor, one process per micro-VM.
//!
//! `hyper-vmm --api-sock PATH` serves the daemon's control socket (create, start, pause,
//! resume, stop, status; see `hyper_vmm_api::control`). `hyper-vmm --config vm.json`
//! creates and starts the VM the file describes at once. Either way the process exits
//! when the guest powers off or resets: 0 for a guest that stopped, 1 for one KVM could
//! not run on (the reason on stderr).
use clap::Parser;
use hyper_vmm::machine::{Ending, Machine, MachineConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "hyper-vmm",
    about = "hyperd's micro-VM monitor (one VM per process)"
)]
struct Args {
    /// A JSON machine configuration: create and start it at once.
    #[arg(long, conflicts_with = "api_sock")]
    config: Option<PathBuf>,
    /// The control socket to serve (mode 0600).
    #[arg(long)]
    api_sock: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    hyper_vmm::privileges::drop_all()?;
    let ending = match (args.config, args.api_sock) {
        (Some(cfg_path), _) => {
            let cfg: MachineConfig = serde_json::from_slice(&std::fs::read(&cfg_path)?)?;
            hyper_vmm::seccomp::install()?;
            let mut m = Machine::new(&cfg)?;
            m.start()?;
            Some(m.wait())
        }
        (None, Some(sock)) => {
            let _ = std::fs::remove_file(&sock);
            let listener = std::os::unix::net::UnixListener::bind(&sock)?;
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
            hyper_vmm::seccomp::install()?;
            let end = hyper_vmm::control::serve(listener);
            let _ = std::fs::remove_file(&sock);
            end
        }
        (None, None) => anyhow::bail!("give --api-sock or --config"),
    };
    match ending {
        Some(Ending::Failed(why)) => {
            eprintln!("hyper-vmm: the guest stopped: {why}");
            std::process::exit(1)
        }
        _ => std::process::exit(0),
    }
}
