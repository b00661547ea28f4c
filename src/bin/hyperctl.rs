//! hyperctl: hyperd's command-line client.
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hyper::Method;
use hyperd::client::{enc, parse_stdcopy, Client, ClientError};
use serde_json::{json, Value};
use std::io::Write;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    Run(RunArgs),
    /// Create a pod from a pod file (hyperd's pod JSON) without starting it.
    Create {
        /// The pod file; `-` reads standard input.
        #[arg(short = 'p', long = "podfile")]
        podfile: String,
    },
    /// List pods, containers or VMs.
    List {
        /// pod, container or vm.
        #[arg(default_value = "pod")]
        item: String,
        /// Only print ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show system-wide information.
    Info,
    /// Show a pod's details as JSON.
    Inspect { pod: String },
    /// Start a created or stopped pod (or, with -c, one of its containers).
    Start {
        pod: Option<String>,
        /// A container instead of a pod.
        #[arg(short = 'c', long = "container")]
        container: Option<String>,
    },
    /// Stop a running pod: each container gets its stop signal, SIGKILL after the
    /// grace time, then the VM is shut down (with -c, one container only).
    Stop {
        pod: Option<String>,
        /// A container instead of a pod.
        #[arg(short = 'c', long = "container")]
        container: Option<String>,
        /// Seconds to wait after the stop signal before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
    },
    /// Remove pods (running ones are stopped first), or with -c containers.
    Rm {
        pods: Vec<String>,
        /// Containers to remove (stopped ones) instead of pods.
        #[arg(short = 'c', long = "container")]
        containers: Vec<String>,
    },
    /// Show the client's and the daemon's versions.
    Version,
    /// Run a command in a running container (or a pod's first container).
    Exec {
        /// Give the command a terminal.
        #[arg(short, long)]
        tty: bool,
        /// Keep standard input open.
        #[arg(short, long)]
        interactive: bool,
        /// Start it and return at once.
        #[arg(short, long)]
        detach: bool,
        /// POD or CONTAINER.
        target: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Attach to a running container's output (and input with -i).
    Attach {
        #[arg(short, long)]
        interactive: bool,
        /// POD or CONTAINER.
        target: String,
    },
    /// Print a container's output.
    Logs {
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<String>,
        #[arg(short, long)]
        timestamps: bool,
        /// Only lines since a time (Unix seconds or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// POD or CONTAINER.
        target: String,
    },
    /// Send a signal to a pod's containers (or one container).
    Kill {
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        /// POD or CONTAINER.
        target: String,
    },
    /// Freeze a running pod's VM.
    Pause { pod: String },
    /// Thaw a paused pod's VM.
    Unpause { pod: String },
    /// Import a root filesystem tarball (optionally gzipped) as an image.
    Import {
        /// The tarball; `-` reads standard input.
        file: String,
        /// NAME[:TAG]
        reference: String,
        /// A Dockerfile-like change: CMD, ENTRYPOINT, ENV, WORKDIR, USER.
        #[arg(short = 'c', long = "change")]
        changes: Vec<String>,
    },
    /// List images.
    Images {
        /// Only print image ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Pull an image from a registry.
    Pull {
        /// NAME[:TAG|@DIGEST]
        image: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Push an image to a registry.
    Push {
        /// NAME[:TAG] as it is to be named in the registry.
        image: String,
        /// Push this local image (and tag it as IMAGE) instead of the one named IMAGE.
        #[arg(long)]
        from: Option<String>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Log in to a registry; hyperd keeps the credentials for later pulls and pushes.
    Login {
        /// Registry (default: Docker Hub).
        #[arg(default_value = "https://index.docker.io/v1/")]
        server: String,
        #[arg(short, long)]
        username: String,
        #[arg(short, long)]
        password: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the login the daemon keeps for a registry.
    Logout {
        /// Registry (default: Docker Hub).
        #[arg(default_value = "https://index.docker.io/v1/")]
        server: String,
    },
    /// Load images from a `docker save` archive or an OCI layout tar.
    Load {
        /// The archive (default: standard input).
        #[arg(short, long)]
        input: Option<String>,
    },
    /// Save images to a tar archive (docker save format and OCI layout at once).
    Save {
        #[arg(required = true)]
        images: Vec<String>,
        /// The archive (default: standard output).
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Remove images.
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Run in the background and print the pod id.
    #[arg(short, long)]
    detach: bool,
    /// Remove the pod when its container exits.
    #[arg(long)]
    rm: bool,
    /// Give the container a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Keep standard input open and send it to the container.
    #[arg(short, long)]
    interactive: bool,
    /// Pod file (hyperd's pod JSON) instead of IMAGE.
    #[arg(short = 'p', long = "podfile")]
    podfile: Option<String>,
    /// Pod name.
    #[arg(long)]
    name: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(long)]
    entrypoint: Option<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    /// Restart policy: never, onFailure or always.
    #[arg(long, default_value = "never")]
    restart: String,
    /// A pod label KEY=VALUE (repeatable).
    #[arg(short, long = "label")]
    label: Vec<String>,
    /// vCPUs of the pod's VM.
    #[arg(long, default_value_t = 1)]
    cpu: u32,
    /// Memory of the pod's VM, MiB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    image: Option<String>,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
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
        Cmd::Run(args) => run_pod(&client, args).await,
        Cmd::List { item, quiet } => list(&client, &item, quiet).await,
        Cmd::Info => {
            let v = client.json(Method::GET, "/info", None).await?;
            for (k, val) in v.as_object().into_iter().flatten() {
                println!(
                    "{k}: {}",
                    val.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| val.to_string())
                );
            }
            Ok(0)
        }
        Cmd::Inspect { pod } => {
            let v = client
                .json(
                    Method::GET,
                    &format!("/pod/info?podName={}", enc(&pod)),
                    None,
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Cmd::Create { podfile } => {
            let text = if podfile == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&podfile).with_context(|| format!("reading {podfile}"))?
            };
            let spec: Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {podfile}"))?;
            let v = client
                .json(Method::POST, "/pod/create", Some(&spec))
                .await?;
            println!("{}", v["ID"].as_str().unwrap_or_default());
            Ok(0)
        }
        Cmd::Start { pod, container } => {
            let (path, name) = match (container, pod) {
                (Some(c), _) => (format!("/container/start?container={}", enc(&c)), c),
                (None, Some(p)) => (format!("/pod/start?podId={}", enc(&p)), p),
                (None, None) => anyhow::bail!("name a pod, or a container with -c"),
            };
            client.json(Method::POST, &path, None).await?;
            println!("{name}");
            Ok(0)
        }
        Cmd::Stop {
            pod,
            container,
            time,
        } => {
            let (path, name) = match (container, pod) {
                (Some(c), _) => (
                    format!("/container/stop?container={}&time={time}", enc(&c)),
                    c,
                ),
                (None, Some(p)) => (
                    format!("/pod/stop?podId={}&stopVM=yes&time={time}", enc(&p)),
                    p,
                ),
                (None, None) => anyhow::bail!("name a pod, or a container with -c"),
            };
            client.json(Method::POST, &path, None).await?;
            println!("{name}");
            Ok(0)
        }
        Cmd::Version => {
            println!("Client version: {}", hyperd::VERSION);
            let v = client.json(Method::GET, "/version", None).await?;
            println!(
                "Server version: {} (API {})",
                v["Version"].as_str().unwrap_or("?"),
                v["ApiVersion"].as_str().unwrap_or("?")
            );
            Ok(0)
        }
        Cmd::Rm { pods, containers } => {
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
        Cmd::Import {
            file,
            reference,
            changes,
        } => {
            let data = if file == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("reading {file}"))?
            };
            let mut path = format!("/image/create?fromSrc=-&imageName={}", enc(&reference));
            for c in &changes {
                path.push_str(&format!("&changes={}", enc(c)));
            }
            let (status, body) = client
                .raw(Method::POST, &path, data, "application/x-tar")
                .await?;
            let text = String::from_utf8_lossy(&body);
            if !status.is_success() {
                let msg = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or(text.to_string());
                bail!("{msg}");
            }
            let id = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v["id"].as_str().map(str::to_string))
                .next_back();
            println!("{}", id.unwrap_or_default());
            Ok(0)
        }
        Cmd::Exec {
            tty,
            interactive,
            detach,
            target,
            command,
        } => {
            let container = resolve_container(&client, &target).await?;
            let body = json!({ "container": container.0, "command": command, "tty": tty });
            let id = client
                .json(Method::POST, "/exec/create", Some(&body))
                .await?["ID"]
                .as_str()
                .context("no exec id")?
                .to_string();
            if detach {
                client
                    .json(
                        Method::POST,
                        &format!("/exec/start?exec={id}&detach=1"),
                        None,
                    )
                    .await?;
                println!("{id}");
                return Ok(0);
            }
            let stdin = interactive || tty;
            let conn = client
                .hijack(
                    Method::POST,
                    &format!("/exec/start?exec={id}&stdin={}", u8::from(stdin)),
                    vec![],
                )
                .await?;
            let resize = tty
                .then(|| tokio::spawn(forward_window_size(client.clone(), format!("exec={id}"))));
            pump(conn, tty, stdin).await?;
            if let Some(r) = resize {
                r.abort();
            }
            exit_code(&client, &format!("exec={id}")).await
        }
        Cmd::Attach {
            interactive,
            target,
        } => {
            let (container, tty) = resolve_container(&client, &target).await?;
            let stdin = interactive || tty;
            let conn = client
                .hijack(
                    Method::POST,
                    &format!(
                        "/attach?container={}&stdin={}",
                        enc(&container),
                        u8::from(stdin)
                    ),
                    vec![],
                )
                .await?;
            pump(conn, tty, stdin).await?;
            Ok(0)
        }
        Cmd::Logs {
            follow,
            tail,
            timestamps,
            since,
            target,
        } => {
            let (container, tty) = resolve_container(&client, &target).await?;
            let mut path = format!(
                "/container/logs?container={}&follow={}&timestamps={}",
                enc(&container),
                u8::from(follow),
                u8::from(timestamps)
            );
            if let Some(t) = &tail {
                path.push_str(&format!("&tail={}", enc(t)));
            }
            if let Some(s) = &since {
                path.push_str(&format!("&since={}", enc(s)));
            }
            let resp = client
                .send(Method::GET, &path, vec![], "application/json")
                .await?;
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            use http_body_util::BodyExt;
            while let Some(frame) = body.frame().await {
                let frame = frame?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                if tty {
                    std::io::stdout().write_all(data)?;
                    continue;
                }
                buf.extend_from_slice(data);
                let (frames, used) = parse_stdcopy(&buf);
                for (stream, d) in frames {
                    if stream == 2 {
                        std::io::stderr().write_all(d)?;
                    } else {
                        std::io::stdout().write_all(d)?;
                    }
                }
                buf.drain(..used);
                std::io::stdout().flush()?;
            }
            Ok(0)
        }
        Cmd::Kill { signal, target } => {
            match client
                .json(
                    Method::POST,
                    &format!("/pod/kill?podId={}&signal={}", enc(&target), enc(&signal)),
                    None,
                )
                .await
            {
                Err(ClientError::Api { status, .. }) if status == hyper::StatusCode::NOT_FOUND => {
                    client
                        .json(
                            Method::POST,
                            &format!(
                                "/container/kill?container={}&signal={}",
                                enc(&target),
                                enc(&signal)
                            ),
                            None,
                        )
                        .await?;
                }
                other => {
                    other?;
                }
            }
            println!("{target}");
            Ok(0)
        }
        Cmd::Pause { pod } => {
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
        Cmd::Unpause { pod } => {
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
        Cmd::Pull { image, quiet } => {
            let resp = client
                .send(
                    Method::POST,
                    &format!("/image/create?imageName={}", enc(&image)),
                    vec![],
                    "application/json",
                )
                .await?;
            let out = hyperd::client::progress::render(resp, quiet).await?;
            println!("{}", out.image_id.unwrap_or_default());
            Ok(0)
        }
        Cmd::Push { image, from, quiet } => {
            let mut path = format!("/image/push?remote={}", enc(&image));
            if let Some(f) = &from {
                path.push_str(&format!("&imageId={}", enc(f)));
            }
            let resp = client
                .send(Method::POST, &path, vec![], "application/json")
                .await?;
            let out = hyperd::client::progress::render(resp, quiet).await?;
            if let Some(d) = out
                .messages
                .iter()
                .rev()
                .find_map(|m| m["aux"]["Digest"].as_str())
            {
                println!("{d}");
            }
            Ok(0)
        }
        Cmd::Tag { source, target } => {
            let (repo, tag) = match target.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                Some((r, t)) => (r.to_string(), t.to_string()),
                None => (target.clone(), "latest".to_string()),
            };
            client
                .json(
                    Method::POST,
                    &format!(
                        "/image/tag?imageId={}&repo={}&tag={}",
                        enc(&source),
                        enc(&repo),
                        enc(&tag)
                    ),
                    None,
                )
                .await?;
            Ok(0)
        }
        Cmd::Login {
            server,
            username,
            password,
            password_stdin,
        } => {
            let password = match (password, password_stdin) {
                (Some(p), false) => p,
                (None, true) => {
                    let mut p = String::new();
                    std::io::stdin().read_line(&mut p)?;
                    p.trim_end_matches(['\n', '\r']).to_string()
                }
                _ => bail!("give the password with --password or --password-stdin"),
            };
            let body =
                json!({ "username": username, "password": password, "serveraddress": server });
            let v = client.json(Method::POST, "/auth", Some(&body)).await?;
            println!("{}", v["Status"].as_str().unwrap_or("Login Succeeded"));
            Ok(0)
        }
        Cmd::Logout { server } => {
            let v = client
                .json(
                    Method::DELETE,
                    &format!("/auth?serveraddress={}", enc(&server)),
                    None,
                )
                .await?;
            println!("{}", v["Status"].as_str().unwrap_or("Removed"));
            Ok(0)
        }
        Cmd::Load { input } => {
            let data = match &input {
                Some(f) => std::fs::read(f).with_context(|| format!("reading {f}"))?,
                None => {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                    b
                }
            };
            let resp = client
                .send(Method::POST, "/image/load", data, "application/x-tar")
                .await?;
            let out = hyperd::client::progress::render(resp, true).await?;
            for m in out.messages {
                if let Some(s) = m["stream"].as_str() {
                    print!("{s}");
                }
            }
            Ok(0)
        }
        Cmd::Save { images, output } => {
            let q: Vec<String> = images
                .iter()
                .map(|i| format!("imageId={}", enc(i)))
                .collect();
            let (status, body) = client
                .raw(
                    Method::GET,
                    &format!("/images/save?{}", q.join("&")),
                    vec![],
                    "application/json",
                )
                .await?;
            if !status.is_success() {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                bail!("{}", v["message"].as_str().unwrap_or("save failed"));
            }
            match &output {
                Some(f) => std::fs::write(f, &body).with_context(|| format!("writing {f}"))?,
                None => std::io::stdout().write_all(&body)?,
            }
            Ok(0)
        }
        Cmd::Images { quiet } => {
            let v = client.json(Method::GET, "/images/get", None).await?;
            if !quiet {
                println!(
                    "{:<40} {:<12} {:<14} {:>10}",
                    "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
                );
            }
            // Each line is `repo:tag:id:created:size`; the repo may hold colons itself.
            for line in v["imagesList"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str())
            {
                let f: Vec<&str> = line.rsplitn(5, ':').collect();
                if let [size, _created, id, tag, repo] = f[..] {
                    if quiet {
                        println!("{id}");
                    } else {
                        println!("{repo:<40} {tag:<12} {id:<14} {size:>10}");
                    }
                }
            }
            Ok(0)
        }
        Cmd::Rmi { images, force } => {
            let mut code = 0;
            for img in images {
                let path = format!(
                    "/image?imageId={}&force={}",
                    enc(&img),
                    if force { "yes" } else { "no" }
                );
                match client.json(Method::DELETE, &path, None).await {
                    Ok(v) => {
                        for item in v.as_array().into_iter().flatten() {
                            for (k, val) in item.as_object().into_iter().flatten() {
                                println!("{k}: {}", val.as_str().unwrap_or_default());
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("hyperctl: {img}: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}

async fn list(client: &Client, item: &str, quiet: bool) -> anyhow::Result<i32> {
    let v = client
        .json(Method::GET, &format!("/list?item={}", enc(item)), None)
        .await?;
    let (key, header) = match item {
        "pod" => ("podData", vec!["POD ID", "POD Name", "VM name", "Status"]),
        "container" => ("cData", vec!["Container ID", "Name", "POD ID", "Status"]),
        "vm" => ("vmData", vec!["VM name", "POD ID", "Status"]),
        other => bail!("unknown item {other}: pod, container or vm"),
    };
    let rows: Vec<Vec<String>> = v[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str())
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

/// A container id (and whether it has a tty) from a container key or a pod's id or name
/// (its first container).
async fn resolve_container(client: &Client, target: &str) -> anyhow::Result<(String, bool)> {
    match client
        .json(
            Method::GET,
            &format!("/container/info?container={}", enc(target)),
            None,
        )
        .await
    {
        Ok(v) => Ok((
            v["containerID"].as_str().unwrap_or(target).to_string(),
            v["tty"].as_bool().unwrap_or(false),
        )),
        Err(ClientError::Api { status, .. }) if status == hyper::StatusCode::NOT_FOUND => {
            let info = client
                .json(
                    Method::GET,
                    &format!("/pod/info?podName={}", enc(target)),
                    None,
                )
                .await?;
            let c = &info["status"]["containerStatus"][0];
            let id = c["containerID"]
                .as_str()
                .context("pod has no container")?
                .to_string();
            let tty = info["spec"]["containers"][0]["tty"]
                .as_bool()
                .unwrap_or(false);
            Ok((id, tty))
        }
        Err(e) => Err(e.into()),
    }
}

fn pod_spec(args: &RunArgs) -> anyhow::Result<Value> {
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
    let spec = hyperd::spec::PodSpec {
        id: args.name.clone().unwrap_or_default(),
        containers: vec![hyperd::spec::ContainerSpec {
            image: image.clone(),
            command: args.command.clone(),
            entrypoint: args.entrypoint.iter().cloned().collect(),
            workdir: args.workdir.clone().unwrap_or_default(),
            envs: args
                .env
                .iter()
                .map(pair)
                .map(|(env, value)| hyperd::spec::EnvVar { env, value })
                .collect(),
            tty: args.tty,
            restart_policy: args.restart.clone(),
            ..Default::default()
        }],
        resource: hyperd::spec::Resource {
            vcpu: args.cpu,
            memory: args.memory,
            ..Default::default()
        },
        labels: args.label.iter().map(pair).collect(),
        ..Default::default()
    };
    Ok(serde_json::to_value(&spec)?)
}

async fn run_pod(client: &Client, args: RunArgs) -> anyhow::Result<i32> {
    let spec = pod_spec(&args)?;
    let created = client
        .json(Method::POST, "/pod/create", Some(&spec))
        .await?;
    let pod_id = created["ID"]
        .as_str()
        .context("no pod id in answer")?
        .to_string();
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
    let info = client
        .json(
            Method::GET,
            &format!("/pod/info?podName={}", enc(&pod_id)),
            None,
        )
        .await?;
    let container = info["status"]["containerStatus"][0]["containerID"]
        .as_str()
        .context("pod has no container")?
        .to_string();
    let tty = info["status"]["containerStatus"][0].is_object()
        && spec["containers"][0]["tty"].as_bool().unwrap_or(false);
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

/// Copies a hijacked connection to the terminal (stdcopy frames to stdout and stderr,
/// or raw with a tty, the terminal in raw mode meanwhile) and, with `stdin`, standard
/// input to the connection. Returns when the daemon closes the connection.
async fn pump(conn: hyperd::client::Hijacked, tty: bool, stdin: bool) -> anyhow::Result<()> {
    let _raw = if tty { RawTerminal::enter() } else { None };
    let (mut rd, mut wr) = tokio::io::split(conn);
    if stdin {
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 8192];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if wr.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = wr.shutdown().await;
        });
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        let n = rd.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return Ok(());
        }
        if tty {
            let mut out = std::io::stdout();
            out.write_all(&chunk[..n])?;
            out.flush()?;
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        let (frames, used) = parse_stdcopy(&buf);
        for (stream, data) in frames {
            if stream == 2 {
                let mut e = std::io::stderr();
                e.write_all(data)?;
                e.flush()?;
            } else {
                let mut o = std::io::stdout();
                o.write_all(data)?;
                o.flush()?;
            }
        }
        buf.drain(..used);
    }
}

/// The local terminal's size (rows, columns), if standard output is a terminal.
fn window_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the local, which outlives the call.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sends the terminal's size now and after every SIGWINCH (`target` is
/// `container=ID` or `exec=ID`).
async fn forward_window_size(client: Client, target: String) {
    let Ok(mut winch) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    else {
        return;
    };
    loop {
        if let Some((h, w)) = window_size() {
            let _ = client
                .json(
                    Method::POST,
                    &format!("/tty/resize?{target}&h={h}&w={w}"),
                    None,
                )
                .await;
        }
        if winch.recv().await.is_none() {
            return;
        }
    }
}

/// A process's exit code (`target` is `container=ID` or `exec=ID`); it is recorded
/// just before its output ends, so a short retry covers the gap.
async fn exit_code(client: &Client, target: &str) -> anyhow::Result<i32> {
    let path = format!("/exitcode?{target}");
    for _ in 0..100 {
        match client.json(Method::GET, &path, None).await {
            Ok(v) => return Ok(v["ExitCode"].as_i64().unwrap_or(255) as i32),
            Err(ClientError::Api { status, .. }) if status == hyper::StatusCode::CONFLICT => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("{target} did not report an exit code")
}

/// Puts the local terminal in raw mode while a `-t` container is attached.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}
