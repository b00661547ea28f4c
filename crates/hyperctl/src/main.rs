//! hyperctl: hyperd's command-line client. The commands live in one module per group
//! under [`commands`]; the typed client is this crate's library (`hyperctl::client`).
mod commands;

use commands::{build, containers, images, pods, system};

use clap::{Parser, Subcommand};
use hyperctl::client::{Client, ClientError};

#[derive(Parser, Debug)]
#[command(
    name = "hyperctl",
    version,
    about = "Command-line client of hyperd: pods in micro-VMs"
)]
struct Cli {
    /// hyperd's socket (`unix:///path` or a path).
    #[arg(
        long,
        short = 'H',
        global = true,
        env = "HYPERD_HOST",
        default_value = "unix:///var/run/hyper.sock"
    )]
    host: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a pod with one container (or from a pod file), start it and attach to it.
    Run(Box<pods::RunArgs>),
    /// Create a pod from a pod file (hyperd's pod JSON) without starting it.
    Create(pods::CreateArgs),
    /// List pods, containers or VMs.
    List(pods::ListArgs),
    /// Show system-wide information.
    Info,
    /// Show a pod's details as JSON.
    Inspect(pods::InspectArgs),
    /// List the ports published to a pod.
    Ports(pods::PortsArgs),
    /// Start a created or stopped pod (or, with -c, one of its containers).
    Start(pods::StartArgs),
    /// Stop a running pod: each container gets its stop signal, SIGKILL after the
    /// grace time, then the VM is shut down (with -c, one container only).
    Stop(pods::StopArgs),
    /// Remove pods (running ones are stopped first), or with -c containers.
    Rm(pods::RmArgs),
    /// Show the client's and the daemon's versions.
    Version,
    /// Run a command in a running container (or a pod's first container).
    Exec(containers::ExecArgs),
    /// Attach to a running container's output (and input with -i).
    Attach(containers::AttachArgs),
    /// Print a container's output.
    Logs(containers::LogsArgs),
    /// Send a signal to a pod's containers (or one container).
    Kill(containers::KillArgs),
    /// Create an image from a running container's changes.
    Commit(containers::CommitArgs),
    /// Build an image from a Dockerfile and a context directory.
    Build(build::BuildArgs),
    /// Freeze a running pod's VM.
    Pause(pods::PauseArgs),
    /// Thaw a paused pod's VM.
    Unpause(pods::UnpauseArgs),
    /// Import a root filesystem tarball (optionally gzipped) as an image.
    Import(images::ImportArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Pull an image from a registry.
    Pull(images::PullArgs),
    /// Push an image to a registry.
    Push(images::PushArgs),
    /// Give an image another name.
    Tag(images::TagArgs),
    /// Log in to a registry; hyperd keeps the credentials for later pulls and pushes.
    Login(images::LoginArgs),
    /// Forget the login the daemon keeps for a registry.
    Logout(images::LogoutArgs),
    /// Load images from a `docker save` archive or an OCI layout tar.
    Load(images::LoadArgs),
    /// Save images to a tar archive (docker save format and OCI layout at once).
    Save(images::SaveArgs),
    /// Remove images.
    Rmi(images::RmiArgs),
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hyperctl: {e:#}");
            match e.downcast_ref::<ClientError>() {
                Some(ClientError::Api { status, .. }) if status.is_client_error() => 1,
                _ => 1,
            }
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let client = Client::new(cli.host.strip_prefix("unix://").unwrap_or(&cli.host));
    match cli.cmd {
        Cmd::Run(a) => pods::run_pod(&client, *a).await,
        Cmd::Create(a) => pods::create(&client, a).await,
        Cmd::List(a) => pods::list(&client, a).await,
        Cmd::Info => system::info(&client).await,
        Cmd::Inspect(a) => pods::inspect(&client, a).await,
        Cmd::Ports(a) => pods::ports(&client, a).await,
        Cmd::Start(a) => pods::start(&client, a).await,
        Cmd::Stop(a) => pods::stop(&client, a).await,
        Cmd::Rm(a) => pods::rm(&client, a).await,
        Cmd::Version => system::version(&client).await,
        Cmd::Exec(a) => containers::exec(&client, a).await,
        Cmd::Attach(a) => containers::attach(&client, a).await,
        Cmd::Logs(a) => containers::logs(&client, a).await,
        Cmd::Kill(a) => containers::kill(&client, a).await,
        Cmd::Commit(a) => containers::commit(&client, a).await,
        Cmd::Build(a) => build::build(&client, a).await,
        Cmd::Pause(a) => pods::pause(&client, a).await,
        Cmd::Unpause(a) => pods::unpause(&client, a).await,
        Cmd::Import(a) => images::import(&client, a).await,
        Cmd::Images(a) => images::images(&client, a).await,
        Cmd::Pull(a) => images::pull(&client, a).await,
        Cmd::Push(a) => images::push(&client, a).await,
        Cmd::Tag(a) => images::tag(&client, a).await,
        Cmd::Login(a) => images::login(&client, a).await,
        Cmd::Logout(a) => images::logout(&client, a).await,
        Cmd::Load(a) => images::load(&client, a).await,
        Cmd::Save(a) => images::save(&client, a).await,
        Cmd::Rmi(a) => images::rmi(&client, a).await,
    }
}
