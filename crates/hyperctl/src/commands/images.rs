//! Image commands: import, images, pull, push, tag, login, logout, load, save, rmi.
use anyhow::{bail, Context};
use hyper::Method;
use hyperctl::client::{enc, Client};
use hyperd_api::error::ErrorBody;
use hyperd_api::images::{AuthReply, ImagesList, Login, Progress};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub(crate) struct ImportArgs {
    /// The tarball; `-` reads standard input.
    pub file: String,
    /// NAME[:TAG]
    pub reference: String,
    /// A Dockerfile-like change: CMD, ENTRYPOINT, ENV, WORKDIR, USER.
    #[arg(short = 'c', long = "change")]
    pub changes: Vec<String>,
}

/// Import a root filesystem tarball (optionally gzipped) as an image.
pub(crate) async fn import(client: &Client, args: ImportArgs) -> anyhow::Result<i32> {
    let ImportArgs {
        file,
        reference,
        changes,
    } = args;
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
        let msg = serde_json::from_str::<ErrorBody>(&text)
            .map(|e| e.message)
            .unwrap_or(text.to_string());
        bail!("{msg}");
    }
    let id = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Progress>(l).ok())
        .filter_map(|v| v.id)
        .next_back();
    println!("{}", id.unwrap_or_default());
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct ImagesArgs {
    /// Only print image ids.
    #[arg(short, long)]
    pub quiet: bool,
}

/// List images.
pub(crate) async fn images(client: &Client, args: ImagesArgs) -> anyhow::Result<i32> {
    let ImagesArgs { quiet } = args;
    let list: ImagesList = client.get("/images/get").await?;
    if !quiet {
        println!(
            "{:<40} {:<12} {:<14} {:>10}",
            "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
        );
    }
    for i in list.images() {
        if quiet {
            println!("{}", i.id);
        } else {
            println!("{:<40} {:<12} {:<14} {:>10}", i.repo, i.tag, i.id, i.size);
        }
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct PullArgs {
    /// NAME[:TAG|@DIGEST]
    pub image: String,
    #[arg(short, long)]
    pub quiet: bool,
}

/// Pull an image from a registry.
pub(crate) async fn pull(client: &Client, args: PullArgs) -> anyhow::Result<i32> {
    let PullArgs { image, quiet } = args;
    // The progress comes on a hijacked connection, as hyperd's clients have had it.
    let stream = client
        .hijack(
            Method::POST,
            &format!("/image/create?imageName={}", enc(&image)),
            vec![],
        )
        .await?;
    let out = hyperctl::client::progress::render_stream(stream, quiet).await?;
    println!("{}", out.image_id.unwrap_or_default());
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct PushArgs {
    /// NAME[:TAG] as it is to be named in the registry.
    pub image: String,
    /// Push this local image (and tag it as IMAGE) instead of the one named IMAGE.
    #[arg(long)]
    pub from: Option<String>,
    #[arg(short, long)]
    pub quiet: bool,
}

/// Push an image to a registry.
pub(crate) async fn push(client: &Client, args: PushArgs) -> anyhow::Result<i32> {
    let PushArgs { image, from, quiet } = args;
    let mut path = format!("/image/push?remote={}", enc(&image));
    if let Some(f) = &from {
        path.push_str(&format!("&imageId={}", enc(f)));
    }
    let stream = client.hijack(Method::POST, &path, vec![]).await?;
    let out = hyperctl::client::progress::render_stream(stream, quiet).await?;
    if let Some(d) = out
        .messages
        .iter()
        .rev()
        .find_map(|m| m.aux.as_ref().and_then(|a| a.pushed_digest()))
    {
        println!("{d}");
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct TagArgs {
    pub source: String,
    pub target: String,
}

/// Give an image another name.
pub(crate) async fn tag(client: &Client, args: TagArgs) -> anyhow::Result<i32> {
    let TagArgs { source, target } = args;
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

#[derive(clap::Args, Debug)]
pub(crate) struct LoginArgs {
    /// Registry (default: Docker Hub).
    #[arg(default_value = "https://index.docker.io/v1/")]
    pub server: String,
    #[arg(short, long)]
    pub username: String,
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

/// Log in to a registry; hyperd keeps the credentials for later pulls and pushes.
pub(crate) async fn login(client: &Client, args: LoginArgs) -> anyhow::Result<i32> {
    let LoginArgs {
        server,
        username,
        password,
        password_stdin,
    } = args;
    let password = match (password, password_stdin) {
        (Some(p), false) => p,
        (None, true) => {
            let mut p = String::new();
            std::io::stdin().read_line(&mut p)?;
            p.trim_end_matches(['\n', '\r']).to_string()
        }
        _ => bail!("give the password with --password or --password-stdin"),
    };
    let body = Login {
        username,
        password,
        serveraddress: server,
    };
    let v: AuthReply = client.call(Method::POST, "/auth", Some(&body)).await?;
    println!("{}", v.status);
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct LogoutArgs {
    /// Registry (default: Docker Hub).
    #[arg(default_value = "https://index.docker.io/v1/")]
    pub server: String,
}

/// Forget the login the daemon keeps for a registry.
pub(crate) async fn logout(client: &Client, args: LogoutArgs) -> anyhow::Result<i32> {
    let LogoutArgs { server } = args;
    let v: AuthReply = client
        .call(
            Method::DELETE,
            &format!("/auth?serveraddress={}", enc(&server)),
            None::<&()>,
        )
        .await?;
    println!("{}", v.status);
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct LoadArgs {
    /// The archive (default: standard input).
    #[arg(short, long)]
    pub input: Option<String>,
}

/// Load images from a `docker save` archive or an OCI layout tar.
pub(crate) async fn load(client: &Client, args: LoadArgs) -> anyhow::Result<i32> {
    let LoadArgs { input } = args;
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
    let out = hyperctl::client::progress::render(resp, true).await?;
    for m in out.messages {
        if let Some(s) = &m.stream {
            print!("{s}");
        }
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct SaveArgs {
    #[arg(required = true)]
    pub images: Vec<String>,
    /// The archive (default: standard output).
    #[arg(short, long)]
    pub output: Option<String>,
}

/// Save images to a tar archive (docker save format and OCI layout at once).
pub(crate) async fn save(client: &Client, args: SaveArgs) -> anyhow::Result<i32> {
    let SaveArgs { images, output } = args;
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
        let e = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| "save failed".into());
        bail!("{e}");
    }
    match &output {
        Some(f) => std::fs::write(f, &body).with_context(|| format!("writing {f}"))?,
        None => std::io::stdout().write_all(&body)?,
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub(crate) struct RmiArgs {
    #[arg(required = true)]
    pub images: Vec<String>,
    #[arg(short, long)]
    pub force: bool,
}

/// Remove images.
pub(crate) async fn rmi(client: &Client, args: RmiArgs) -> anyhow::Result<i32> {
    let RmiArgs { images, force } = args;
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
