//! System commands: info, version.
use hyperctl::client::Client;
use hyperd_api::system::{Info, Version};

/// Show system-wide information.
pub(crate) async fn info(client: &Client) -> anyhow::Result<i32> {
    let i: Info = client.get("/info").await?;
    let pool = &i.pool;
    for (k, v) in [
        ("Name", i.name.clone()),
        ("Server Version", i.server_version.clone()),
        ("API Version", i.api_version.clone()),
        ("Driver", i.driver.clone()),
        ("Pods", format!("{} ({} running)", i.pods, i.running_pods)),
        (
            "Containers",
            format!(
                "{} (running {}, paused {}, stopped {})",
                i.containers, i.containers_running, i.containers_paused, i.containers_stopped
            ),
        ),
        ("Images", i.images.to_string()),
        (
            "Pool",
            format!(
                "{} idle of {} ({} MiB), replaced after {} s",
                pool.idle_vms, pool.target, pool.idle_memory_mib, pool.max_age_seconds
            ),
        ),
        ("Guest Kernel", i.guest_kernel.display().to_string()),
        ("Guest Initrd", i.guest_initrd.display().to_string()),
        ("Root Dir", i.docker_root_dir.display().to_string()),
        ("Kernel Version", i.kernel_version.clone()),
        ("CPUs", i.ncpu.to_string()),
        ("Total Memory", format!("{} MiB", i.mem_total >> 20)),
    ] {
        println!("{k}: {v}");
    }
    Ok(0)
}

/// Show the client's and the daemon's versions.
pub(crate) async fn version(client: &Client) -> anyhow::Result<i32> {
    println!("Client version: {}", env!("CARGO_PKG_VERSION"));
    let v: Version = client.get("/version").await?;
    println!("Server version: {} (API {})", v.version, v.api_version);
    Ok(0)
}
