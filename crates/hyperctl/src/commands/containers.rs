//! Container and process commands: exec, attach, logs, kill.
use crate::commands::terminal::*;
use anyhow::{bail, Context};
use hyper::Method;
use hyperctl::client::{enc, parse_stdcopy, Client, ClientError};
use hyperd_api::containers::{ContainerInfo, ExecCommand, ExecCreate};
use hyperd_api::pods::{ExitCodeReply, PodInfo};
use hyperd_api::IdReply;
use std::io::Write;

#[derive(clap::Args, Debug)]
pub(crate) struct ExecArgs {
    /// Give the command a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Keep standard input open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Start it and return at once.
    #[arg(short, long)]
    pub detach: bool,
    /// POD or CONTAINER.
    pub target: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// Run a command in a running container (or a pod's first container).
pub(crate) async fn exec(client: &Client, args: ExecArgs) -> anyhow::Result<i32> {
    let ExecArgs {
        tty,
        interactive,
        detach,
        target,
        command,
    } = args;
    let container = resolve_container(client, &target).await?;
    let body = ExecCreate {
        container: container.0,
        command: ExecCommand::Args(command),
        tty,
        ..Default::default()
    };
    let id = client
        .call::<IdReply>(Method::POST, "/exec/create", Some(&body))
        .await?
        .id;
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
    let resize =
        tty.then(|| tokio::spawn(forward_window_size(client.clone(), format!("exec={id}"))));
    pump(conn, tty, stdin).await?;
    if let Some(r) = resize {
        r.abort();
    }
    exit_code(client, &format!("exec={id}")).await
}

#[derive(clap::Args, Debug)]
pub(crate) struct AttachArgs {
    #[arg(short, long)]
    pub interactive: bool,
    /// POD or CONTAINER.
    pub target: String,
}

/// Attach to a running container's output (and input with -i).
pub(crate) async fn attach(client: &Client, args: AttachArgs) -> anyhow::Result<i32> {
    let AttachArgs {
        interactive,
        target,
    } = args;
    let (container, tty) = resolve_container(client, &target).await?;
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

#[derive(clap::Args, Debug)]
pub(crate) struct LogsArgs {
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<String>,
    #[arg(short, long)]
    pub timestamps: bool,
    /// Only lines since a time (Unix seconds or RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// POD or CONTAINER.
    pub target: String,
}

/// Print a container's output.
pub(crate) async fn logs(client: &Client, args: LogsArgs) -> anyhow::Result<i32> {
    let LogsArgs {
        follow,
        tail,
        timestamps,
        since,
        target,
    } = args;
    let (container, tty) = resolve_container(client, &target).await?;
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

#[derive(clap::Args, Debug)]
pub(crate) struct CommitArgs {
    /// The image's author.
    #[arg(short, long)]
    pub author: Option<String>,
    /// The commit's message, in the image's history.
    #[arg(short, long)]
    pub message: Option<String>,
    /// A Dockerfile instruction applied to the image's config (CMD, ENTRYPOINT, ENV,
    /// WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL); repeatable.
    #[arg(short, long)]
    pub change: Vec<String>,
    /// CONTAINER (id, prefix or name).
    pub container: String,
    /// The new image's name, REPO[:TAG].
    pub repo: Option<String>,
}

/// Create an image from a running container's changes; prints its id.
pub(crate) async fn commit(client: &Client, args: CommitArgs) -> anyhow::Result<i32> {
    let mut path = format!("/container/commit?container={}", enc(&args.container));
    for (k, v) in [
        ("repo", &args.repo),
        ("author", &args.author),
        ("message", &args.message),
    ] {
        if let Some(v) = v {
            path.push_str(&format!("&{k}={}", enc(v)));
        }
    }
    for c in &args.change {
        path.push_str(&format!("&change={}", enc(c)));
    }
    let id = client
        .call::<IdReply>(Method::POST, &path, None::<&()>)
        .await?
        .id;
    println!("{id}");
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct KillArgs {
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    /// POD or CONTAINER.
    pub target: String,
}

/// Send a signal to a pod's containers (or one container).
pub(crate) async fn kill(client: &Client, args: KillArgs) -> anyhow::Result<i32> {
    let KillArgs { signal, target } = args;
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

/// A container id (and whether it has a tty) from a container key or a pod's id or name
/// (its first container).
pub(crate) async fn resolve_container(
    client: &Client,
    target: &str,
) -> anyhow::Result<(String, bool)> {
    match client
        .get::<ContainerInfo>(&format!("/container/info?container={}", enc(target)))
        .await
    {
        Ok(c) => Ok((c.container_id, c.tty)),
        Err(ClientError::Api { status, .. }) if status == hyper::StatusCode::NOT_FOUND => {
            first_container(client, target).await
        }
        Err(e) => Err(e.into()),
    }
}

/// A pod's first container id, and whether it has a tty.
pub(crate) async fn first_container(client: &Client, pod: &str) -> anyhow::Result<(String, bool)> {
    let info: PodInfo = client
        .get(&format!("/pod/info?podName={}", enc(pod)))
        .await?;
    let id = info
        .first_container()
        .context("pod has no container")?
        .container_id
        .clone();
    let tty = info.spec.containers.first().is_some_and(|c| c.tty);
    Ok((id, tty))
}

/// A process's exit code (`target` is `container=ID` or `exec=ID`); it is recorded
/// just before its output ends, so a short retry covers the gap.
pub(crate) async fn exit_code(client: &Client, target: &str) -> anyhow::Result<i32> {
    let path = format!("/exitcode?{target}");
    for _ in 0..100 {
        match client.get::<ExitCodeReply>(&path).await {
            Ok(v) => return Ok(v.exit_code),
            Err(ClientError::Api { status, .. }) if status == hyper::StatusCode::CONFLICT => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("{target} did not report an exit code")
}
