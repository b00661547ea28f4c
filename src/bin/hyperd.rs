//! hyperd: the daemon.
use anyhow::Context;
use clap::Parser;
use hyperd::config::{default_cache_dir, Config};
use hyperd::engine::Engine;
use hyperd::vm::Driver;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "hyperd",
    version,
    about = "Runs pods in micro-VMs and serves the hyperd API on a Unix socket"
)]
struct Args {
    /// Socket to listen on (`unix:///path` or a path).
    #[arg(
        long,
        short = 'H',
        env = "HYPERD_HOST",
        default_value = "unix:///var/run/hyper.sock"
    )]
    host: String,
    /// State directory.
    #[arg(long, env = "HYPERD_ROOT", default_value = "/var/lib/hyper")]
    root: PathBuf,
    /// Guest kernel (uncompressed vmlinux); default: the one kernel-config/build.sh cached.
    #[arg(long, env = "HYPERD_KERNEL")]
    kernel: Option<PathBuf>,
    /// Guest initramfs with the agent; default: the one guest-agent/build-initrd.sh cached.
    #[arg(long, env = "HYPERD_INITRD")]
    initrd: Option<PathBuf>,
    /// VM driver: auto (hyper-vmm where the CPU runs KVM guests, else qemu), hyper-vmm, qemu.
    #[arg(long, env = "HYPERD_DRIVER", default_value = "auto")]
    driver: String,
    /// How qemu runs guests: auto (KVM where the CPU has VT-x/AMD-V, else TCG), kvm, tcg.
    #[arg(long, env = "HYPERD_ACCEL", default_value = "auto")]
    accel: String,
    /// Seconds a VM may take to boot to its agent.
    #[arg(long, env = "HYPERD_BOOT_TIMEOUT", default_value_t = 120)]
    boot_timeout: u64,
    /// A registry to speak plain HTTP to (repeatable); loopback registries always are.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// A token realm host, besides a registry's own, that may receive credentials
    /// (repeatable; Docker Hub's auth.docker.io is trusted for docker.io).
    #[arg(long = "trusted-auth-realm")]
    trusted_auth_realms: Vec<String>,
    /// Largest manifest or index a registry may send, in bytes.
    #[arg(long, env = "HYPERD_MAX_MANIFEST_BYTES", default_value_t = 4 << 20)]
    max_manifest_bytes: u64,
    /// Largest image config a registry may send, in bytes.
    #[arg(long, env = "HYPERD_MAX_CONFIG_BYTES", default_value_t = 8 << 20)]
    max_config_bytes: u64,
    /// Most layers an image may have.
    #[arg(long, env = "HYPERD_MAX_IMAGE_LAYERS", default_value_t = 128)]
    max_image_layers: usize,
    /// Largest image a pull may bring (its compressed layers), in bytes; also the cap
    /// of a blob whose size is not declared.
    #[arg(long, env = "HYPERD_MAX_IMAGE_BYTES", default_value_t = 32 << 30)]
    max_image_bytes: u64,
    /// Largest unpacked size of one image layer, in bytes (against archive bombs).
    #[arg(long, env = "HYPERD_MAX_LAYER_BYTES", default_value_t = 16 << 30)]
    max_layer_bytes: u64,
    /// Idle VMs of the default size (1 vCPU, 128 MiB) kept booted ahead, so that pod
    /// starts skip the boot; 0 turns the warm pool off. Each costs its VM's memory.
    #[arg(long, env = "HYPERD_POOL", default_value_t = 1)]
    pool: usize,
    /// Seconds after which an idle pool VM is replaced by a fresh one.
    #[arg(long, env = "HYPERD_POOL_MAX_AGE", default_value_t = 3600)]
    pool_max_age: u64,
    /// Bytes of a container's log file before it rotates (json-file's `max-size`).
    #[arg(long, env = "HYPERD_LOG_MAX_SIZE", default_value_t = 10 << 20)]
    log_max_size: u64,
    /// Log files kept per container, the current one included (json-file's `max-file`).
    #[arg(long, env = "HYPERD_LOG_MAX_FILES", default_value_t = 3)]
    log_max_files: u32,
    /// Seconds a client has to send a request's head before it is disconnected.
    #[arg(long, env = "HYPERD_API_HEADER_TIMEOUT", default_value_t = 30)]
    api_header_timeout: u64,
    /// API connections served at once; more wait until one ends.
    #[arg(long, env = "HYPERD_API_MAX_CONNECTIONS", default_value_t = 1024)]
    api_max_connections: usize,
    /// Boot a micro-VM for each RUN of a Dockerfile build instead of one per stage
    /// (slower; for measuring the two ways against each other).
    #[arg(long, env = "HYPERD_BUILD_VM_PER_STEP")]
    build_vm_per_step: bool,
    /// Bytes a VM's serial console log may hold; past them the daemon empties it (a
    /// guest that floods its console cannot fill the disk).
    #[arg(long, env = "HYPERD_CONSOLE_LOG_MAX", default_value_t = 1 << 20)]
    console_log_max: u64,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "HYPERD_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    let socket = PathBuf::from(args.host.strip_prefix("unix://").unwrap_or(&args.host));
    if args.host.starts_with("tcp://") {
        anyhow::bail!("hyperd listens on a Unix socket only");
    }
    let cache = default_cache_dir();
    let cfg = Config {
        root: args.root.clone(),
        socket: socket.clone(),
        kernel: args.kernel.unwrap_or_else(|| cache.join("vmlinux")),
        initrd: args.initrd.unwrap_or_else(|| cache.join("initrd.img")),
        driver: args.driver.clone(),
        accel: args.accel.clone(),
        boot_timeout: std::time::Duration::from_secs(args.boot_timeout),
        registry: hyperd::image::registry::RegistryOptions {
            insecure: args.insecure_registries.clone(),
            trusted_realms: args.trusted_auth_realms.clone(),
            max_manifest_bytes: args.max_manifest_bytes,
            max_config_bytes: args.max_config_bytes,
            max_layers: args.max_image_layers,
            max_image_bytes: args.max_image_bytes,
        },
        max_layer_bytes: args.max_layer_bytes,
        pool_size: args.pool,
        pool_max_age: std::time::Duration::from_secs(args.pool_max_age.max(1)),
        log_limits: hyperd::engine::LogLimits {
            max_size: args.log_max_size.max(1),
            max_files: args.log_max_files.max(1),
        },
        api_limits: hyperd::config::ApiLimits {
            header_timeout: std::time::Duration::from_secs(args.api_header_timeout.max(1)),
            max_connections: args.api_max_connections.max(1),
        },
        build_vm_per_step: args.build_vm_per_step,
        console_log_max: args.console_log_max.max(4096),
    };
    for (what, path, how) in [
        ("guest kernel", &cfg.kernel, "kernel-config/build.sh"),
        (
            "guest initramfs",
            &cfg.initrd,
            "guest-agent/build-initrd.sh",
        ),
    ] {
        if !path.exists() {
            anyhow::bail!("{what} {} not found: build it with {how}", path.display());
        }
    }
    let driver = Driver::select(&cfg.driver, &cfg.accel)?;
    tracing::info!("VM driver: {}", driver.describe());
    hyperd::root_dir::private_umask();
    let tightened = hyperd::root_dir::prepare(&cfg.root)
        .with_context(|| format!("preparing {}", cfg.root.display()))?;
    if !tightened.is_empty() {
        tracing::warn!(
            count = tightened.len(),
            first = %tightened[0].display(),
            "state directory was readable by others: tightened to 0700 directories and 0600 files"
        );
    }
    let engine = Arc::new(Engine::new(cfg, driver).map_err(|e| anyhow::anyhow!("{e}"))?);
    engine.recover().await;
    engine.start_pool_keeper();
    let listener = hyperd::api::server::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    tracing::info!(
        "hyperd {} listening on {}",
        hyperd::VERSION,
        socket.display()
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    hyperd::api::serve(engine.clone(), listener, shutdown).await;
    // Pods keep running: the next daemon re-attaches to their VMs. Idle VMs go.
    tracing::info!("shutting down; running pods stay up");
    engine.drain_pool().await;
    engine.flush_records().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
