//! `hyperctl build`: a Dockerfile build on the daemon (`POST /image/build`), the context
//! a directory (sent as a tar) or `-` (a tar on standard input); the build's output goes
//! to standard error, the image id to standard output.
use anyhow::{bail, Context};
use hyper::Method;
use hyperctl::client::{enc, Client};
use hyperd_api::images::Aux;
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub(crate) struct BuildArgs {
    /// The context: a directory, or `-` for a tar archive on standard input.
    pub context: String,
    /// Name the image NAME[:TAG] (more than once for more names).
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// The Dockerfile's path inside the context.
    #[arg(short = 'f', long = "file")]
    pub file: Option<String>,
    /// A build argument, NAME=VALUE.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Run every step, whatever the cache holds.
    #[arg(long)]
    pub no_cache: bool,
    /// Pull the FROM images even when stored.
    #[arg(long)]
    pub pull: bool,
    /// Build up to this stage.
    #[arg(long)]
    pub target: Option<String>,
    /// Print only the image id.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The context directory as a tar (links kept as links).
fn context_tar(dir: &str) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir)
        .with_context(|| format!("reading the context {dir}"))?;
    Ok(b.into_inner()?)
}

/// Build an image from a Dockerfile.
pub(crate) async fn build(client: &Client, args: BuildArgs) -> anyhow::Result<i32> {
    let context = if args.context == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        b
    } else {
        context_tar(&args.context)?
    };
    let mut build_args = BTreeMap::new();
    for a in &args.build_args {
        let Some((k, v)) = a.split_once('=') else {
            bail!("--build-arg {a:?} is not NAME=VALUE");
        };
        build_args.insert(k.to_string(), v.to_string());
    }
    let mut path = format!(
        "/image/build?buildargs={}",
        enc(&serde_json::to_string(&build_args)?)
    );
    for t in &args.tags {
        path.push_str(&format!("&t={}", enc(t)));
    }
    if let Some(f) = &args.file {
        path.push_str(&format!("&dockerfile={}", enc(f)));
    }
    if let Some(t) = &args.target {
        path.push_str(&format!("&target={}", enc(t)));
    }
    for (flag, on) in [
        ("nocache", args.no_cache),
        ("pull", args.pull),
        ("q", args.quiet),
    ] {
        if on {
            path.push_str(&format!("&{flag}=1"));
        }
    }
    // The progress comes on a hijacked connection (the daemon has read the whole
    // context before it switches).
    let stream = client
        .hijack_with(Method::POST, &path, context, "application/x-tar")
        .await?;
    let out = hyperctl::client::progress::render_stream(stream, args.quiet).await?;
    let id = out.messages.iter().find_map(|m| match &m.aux {
        Some(Aux::Built(b)) => Some(b.id.clone()),
        _ => None,
    });
    match id {
        Some(id) => {
            println!("{id}");
            Ok(0)
        }
        None => bail!("the build ended without an image"),
    }
}
