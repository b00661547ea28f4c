//! Pod commands: run, create, list, inspect, start, stop, rm, pause, unpause.
use crate::commands::{containers::*, terminal::*};
use anyhow::{bail, Context};
use hyper::Method;
use hyperctl::client::{enc, Client};
use hyperd_api::pods::{ListReply, PodInfo, PodReply};
use hyperd_api::spec::PodSpec;

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// Run in the background and print the pod id.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the pod when its container exits.
    #[arg(long)]
    pub rm: bool,
    /// Give the container a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Keep standard input open and send it to the container.
    #[arg(short, long)]
    pub interactive: bool,
    /// Pod file (hyperd's pod JSON) instead of IMAGE.
    #[arg(short = 'p', long = "podfile")]
    pub podfile: Option<String>,
    /// Pod name.
    #[arg(long)]
    pub name: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(long)]
    pub entrypoint: Option<String>,
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Restart policy: never, onFailure or always.
    #[arg(long, default_value = "never")]
    pub restart: String,
    /// A pod label KEY=VALUE (repeatable).
    #[arg(short, long = "label")]
    pub label: Vec<String>,
    /// vCPUs of the pod's VM.
    #[arg(long, default_value_t = 1)]
    pub cpu: u32,
    /// Memory of the pod's VM, MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u32,
    /// Publish a port: `[ip:][host:]container[/tcp|udp]` (repeatable; no host port
    /// picks a free one).
    #[arg(long)]
    pub publish: Vec<String>,
    /// Network: user (default), none, or a network namespace path under /run/netns/ (the
    /// pod takes over its interface).
    #[arg(long, default_value = "user")]
    pub net: String,
    /// An /etc/hosts entry NAME:ADDRESS, ADDRESS may be host-gateway (repeatable).
    #[arg(long = "add-host")]
    pub add_host: Vec<String>,
    /// A name server for the container's /etc/resolv.conf (repeatable).
    #[arg(long)]
    pub dns: Vec<String>,
    /// A volume: `/host/path:/path[:ro]` (a host directory or file), `NAME:/path[:ro]`
    /// (a named volume, created when missing) or `/path` (the pod's own); repeatable.
    #[arg(short = 'v', long = "volume")]
    pub volume: Vec<String>,
    /// Mount the container's root filesystem read-only (its volumes stay writable).
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Give the container every capability and the VM's whole /dev.
    #[arg(long)]
    pub privileged: bool,
    /// Add a capability to Docker's default set (`NET_ADMIN`, `ALL`); repeatable.
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Take a capability from it (`ALL` takes every one); repeatable.
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// No process of the container gains privileges on exec (set-id bits do nothing).
    #[arg(long = "no-new-privileges")]
    pub no_new_privileges: bool,
    pub image: Option<String>,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct CreateArgs {
    /// The pod file; `-` reads standard input.
    #[arg(short = 'p', long = "podfile")]
    pub podfile: String,
}

/// Create a pod from a pod file (hyperd's pod JSON) without starting it.
pub(crate) async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<i32> {
    let CreateArgs { podfile } = args;
    let text = if podfile == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&podfile).with_context(|| format!("reading {podfile}"))?
    };
    let spec: PodSpec =
        serde_json::from_str(&text).with_context(|| format!("parsing {podfile}"))?;
    let created: PodReply = client
        .call(Method::POST, "/pod/create", Some(&spec))
        .await?;
    println!("{}", created.id);
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    /// pod, container or vm.
    #[arg(default_value = "pod")]
    pub item: String,
    /// Only print ids.
    #[arg(short, long)]
    pub quiet: bool,
}

/// List pods, containers or VMs.
pub(crate) async fn list(client: &Client, args: ListArgs) -> anyhow::Result<i32> {
    let ListArgs { item, quiet } = args;
    list_items(client, &item, quiet).await
}

#[derive(clap::Args, Debug)]
pub(crate) struct InspectArgs {
    pub pod: String,
}

/// Show a pod's details as JSON.
pub(crate) async fn inspect(client: &Client, args: InspectArgs) -> anyhow::Result<i32> {
    let InspectArgs { pod } = args;
    let info: PodInfo = client
        .get(&format!("/pod/info?podName={}", enc(&pod)))
        .await?;
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct PortsArgs {
    pub pod: String,
    /// Publish a port on the running pod: `[ip:]host:container` (TCP; repeatable).
    #[arg(long)]
    pub add: Vec<String>,
    /// Stop publishing a port added with --add (repeatable).
    #[arg(long)]
    pub delete: Vec<String>,
}

/// List the ports published to a pod; with --add or --delete, change them first.
pub(crate) async fn ports(client: &Client, args: PortsArgs) -> anyhow::Result<i32> {
    for (action, specs) in [("add", &args.add), ("delete", &args.delete)] {
        if specs.is_empty() {
            continue;
        }
        let body = specs
            .iter()
            .map(|p| hyperd_api::spec::Port::parse_publish(p))
            .collect::<Result<Vec<_>, _>>()?;
        let _: Vec<hyperd_api::pods::PublishedPort> = client
            .call(
                Method::PUT,
                &format!("/pod/{}/portmappings/{action}", enc(&args.pod)),
                Some(&body),
            )
            .await?;
    }
    let ports: Vec<hyperd_api::pods::PublishedPort> = client
        .get(&format!("/pod/portmappings?podName={}", enc(&args.pod)))
        .await?;
    for p in ports {
        let ip = if p.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            &p.host_ip
        };
        println!(
            "{}/{} -> {ip}:{}",
            p.container_port, p.protocol, p.host_port
        );
    }
    Ok(0)
}

/// A pod by id or name, or with `-c` one container: what start and stop act on.
#[derive(clap::Args, Debug)]
pub(crate) struct PodOrContainer {
    pub pod: Option<String>,
    /// A container instead of a pod.
    #[arg(short = 'c', long = "container")]
    pub container: Option<String>,
}

impl PodOrContainer {
    /// The route for the target (`pod_route` with `podId=`, `container_route` with
    /// `container=`, then `extra`) and its name.
    fn route(
        self,
        pod_route: &str,
        container_route: &str,
        extra: &str,
    ) -> anyhow::Result<(String, String)> {
        match (self.container, self.pod) {
            (Some(c), _) => Ok((format!("{container_route}?container={}{extra}", enc(&c)), c)),
            (None, Some(p)) => Ok((format!("{pod_route}?podId={}{extra}", enc(&p)), p)),
            (None, None) => anyhow::bail!("name a pod, or a container with -c"),
        }
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct StartArgs {
    #[command(flatten)]
    pub target: PodOrContainer,
}

/// Start a created or stopped pod (or, with -c, one of its containers).
pub(crate) async fn start(client: &Client, args: StartArgs) -> anyhow::Result<i32> {
    let (path, name) = args.target.route("/pod/start", "/container/start", "")?;
    client.json(Method::POST, &path, None).await?;
    println!("{name}");
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct StopArgs {
    #[command(flatten)]
    pub target: PodOrContainer,
    /// Seconds to wait after the stop signal before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
}

/// Stop a running pod: each container gets its stop signal, SIGKILL after the
/// grace time, then the VM is shut down (with -c, one container only).
pub(crate) async fn stop(client: &Client, args: StopArgs) -> anyhow::Result<i32> {
    let StopArgs { target, time } = args;
    // A pod stop also powers its VM off (`stopVM=yes`); a container stop ignores it.
    let (path, name) = target.route(
        "/pod/stop",
        "/container/stop",
        &format!("&stopVM=yes&time={time}"),
    )?;
    client.json(Method::POST, &path, None).await?;
    println!("{name}");
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct RmArgs {
    pub pods: Vec<String>,
    /// Containers to remove (stopped ones) instead of pods.
    #[arg(short = 'c', long = "container")]
    pub containers: Vec<String>,
}

/// Remove pods (running ones are stopped first), or with -c containers.
pub(crate) async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<i32> {
    let RmArgs { pods, containers } = args;
    if pods.is_empty() && containers.is_empty() {
        anyhow::bail!("name pods, or containers with -c");
    }
    let requests = containers
        .into_iter()
        .map(|c| {
            (
                Method::POST,
                format!("/container/remove?container={}", enc(&c)),
                c,
            )
        })
        .chain(
            pods.into_iter()
                .map(|p| (Method::DELETE, format!("/pod?podId={}", enc(&p)), p)),
        );
    let mut code = 0;
    for (method, path, name) in requests {
        match client.json(method, &path, None).await {
            Ok(_) => println!("{name}"),
            Err(e) => {
                eprintln!("hyperctl: {name}: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

#[derive(clap::Args, Debug)]
pub(crate) struct PauseArgs {
    pub pod: String,
}

/// Freeze a running pod's VM.
pub(crate) async fn pause(client: &Client, args: PauseArgs) -> anyhow::Result<i32> {
    let PauseArgs { pod } = args;
    client
        .json(
            Method::POST,
            &format!("/pod/pause?podId={}", enc(&pod)),
            None,
        )
        .await?;
    println!("{pod}");
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct UnpauseArgs {
    pub pod: String,
}

/// Thaw a paused pod's VM.
pub(crate) async fn unpause(client: &Client, args: UnpauseArgs) -> anyhow::Result<i32> {
    let UnpauseArgs { pod } = args;
    client
        .json(
            Method::POST,
            &format!("/pod/unpause?podId={}", enc(&pod)),
            None,
        )
        .await?;
    println!("{pod}");
    Ok(0)
}

pub(crate) async fn list_items(client: &Client, item: &str, quiet: bool) -> anyhow::Result<i32> {
    let header = match item {
        "pod" => vec!["POD ID", "POD Name", "VM name", "Status"],
        "container" => vec!["Container ID", "Name", "POD ID", "Status"],
        "vm" => vec!["VM name", "POD ID", "Status"],
        other => bail!("unknown item {other}: pod, container or vm"),
    };
    let list: ListReply = client.get(&format!("/list?item={}", enc(item))).await?;
    let rows: Vec<Vec<String>> = list
        .lines()
        .iter()
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect();
    if quiet {
        for r in rows {
            println!("{}", r[0]);
        }
        return Ok(0);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
                .max(header[i].len())
                + 2
        })
        .collect();
    let print = |cells: Vec<&str>| {
        let line: String = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.trim_end());
    };
    print(header.clone());
    for r in &rows {
        print(r.iter().map(String::as_str).collect());
    }
    Ok(0)
}

pub(crate) fn pod_spec(args: &RunArgs) -> anyhow::Result<PodSpec> {
    if let Some(file) = &args.podfile {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        return serde_json::from_str(&text).with_context(|| format!("parsing {file}"));
    }
    let Some(image) = &args.image else {
        bail!("an IMAGE or a pod file (-p) is needed")
    };
    let pair = |kv: &String| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k.to_string(), v.to_string())
    };
    let (volumes, mounts): (Vec<_>, Vec<_>) = args
        .volume
        .iter()
        .enumerate()
        .map(|(i, v)| hyperd_api::spec::VolumeMount::parse_volume_flag(v, format!("vol{i}")))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    let spec = hyperd_api::spec::PodSpec {
        id: args.name.clone().unwrap_or_default(),
        volumes,
        containers: vec![hyperd_api::spec::ContainerSpec {
            volumes: mounts,
            readonly: args.read_only,
            privileged: args.privileged,
            cap_add: args.cap_add.clone(),
            cap_drop: args.cap_drop.clone(),
            no_new_privileges: args.no_new_privileges,
            image: image.clone(),
            command: args.command.clone(),
            entrypoint: args.entrypoint.iter().cloned().collect(),
            workdir: args.workdir.clone().unwrap_or_default(),
            envs: args
                .env
                .iter()
                .map(pair)
                .map(|(env, value)| hyperd_api::spec::EnvVar { env, value })
                .collect(),
            tty: args.tty,
            restart_policy: args.restart.clone(),
            ..Default::default()
        }],
        resource: hyperd_api::spec::Resource {
            vcpu: args.cpu,
            memory: args.memory,
            ..Default::default()
        },
        labels: args.label.iter().map(pair).collect(),
        portmappings: args
            .publish
            .iter()
            .map(|p| hyperd_api::spec::Port::parse_publish(p))
            .collect::<Result<_, _>>()?,
        network_mode: match args.net.as_str() {
            "user" => hyperd_api::spec::NetworkMode::User,
            "none" => hyperd_api::spec::NetworkMode::None,
            ns if ns.starts_with('/') => hyperd_api::spec::NetworkMode::User,
            other => bail!("unknown network {other:?} (user, none, /run/netns/NAME)"),
        },
        network_namespace: args.net.starts_with('/').then(|| args.net.clone()),
        extra_hosts: args.add_host.clone(),
        dns: args.dns.clone(),
        ..Default::default()
    };
    Ok(spec)
}

pub(crate) async fn run_pod(client: &Client, args: RunArgs) -> anyhow::Result<i32> {
    let spec = pod_spec(&args)?;
    let created: PodReply = client
        .call(Method::POST, "/pod/create", Some(&spec))
        .await?;
    let pod_id = created.id;
    if args.detach {
        client
            .json(
                Method::POST,
                &format!("/pod/start?podId={}", enc(&pod_id)),
                None,
            )
            .await?;
        println!("{pod_id}");
        return Ok(0);
    }
    let (container, tty) = first_container(client, &pod_id).await?;
    let stdin = args.interactive || args.tty;
    let attach_path = format!(
        "/attach?container={}&stdin={}&stdout=1&stderr=1",
        enc(&container),
        u8::from(stdin)
    );
    let conn = client.hijack(Method::POST, &attach_path, vec![]).await?;
    if let Err(e) = client
        .json(
            Method::POST,
            &format!("/pod/start?podId={}", enc(&pod_id)),
            None,
        )
        .await
    {
        if args.rm {
            let _ = client
                .json(
                    Method::DELETE,
                    &format!("/pod?podId={}", enc(&pod_id)),
                    None,
                )
                .await;
        }
        return Err(e.into());
    }
    let resize = tty.then(|| {
        tokio::spawn(forward_window_size(
            client.clone(),
            format!("container={}", enc(&container)),
        ))
    });
    pump(conn, tty, stdin).await?;
    if let Some(r) = resize {
        r.abort();
    }
    let code = exit_code(client, &format!("container={}", enc(&container))).await?;
    if args.rm {
        client
            .json(
                Method::DELETE,
                &format!("/pod?podId={}", enc(&pod_id)),
                None,
            )
            .await?;
    }
    Ok(code)
}
