//! The Dockerfile builder behind hyperd's `/image/build`, Docker's `/build` and
//! `hyperctl build`: stages from `FROM` (a local, pulled or earlier stage's image, or
//! `scratch`), `RUN` in a micro-VM per step with the image so far as its root (the
//! step's changes come back as the agent's tar stream), `COPY`/`ADD` as layers written on
//! the host from the context (or from another image's layers), the metadata
//! instructions on the image config, and a cache of the images the layer steps made.
//!
//! Progress is Docker's classic builder stream (`Step 2/7 : RUN ...`, ` ---> id`,
//! `Successfully built`, `aux.ID`, `errorDetail`).
pub mod context;
pub mod dockerfile;
pub mod from_image;

use crate::engine::build_step::{StepError, StepRun, StepVm};
use crate::engine::{Engine, EngineError};
use crate::image::commit::{push_diff_id, push_history};
use crate::image::progress::{self, ProgressTx};
use crate::image::{ImageError, ImageRecord, LayerRecord};
use context::{Context, CopyOptions};
use dockerfile::{Dockerfile, Instruction, Vars};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What went wrong in a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Invalid(String),
    #[error("Dockerfile: {0}")]
    Parse(#[from] dockerfile::ParseError),
    #[error("{0}")]
    Image(#[from] ImageError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Step(#[from] StepError),
    #[error("the build context: {0}")]
    Context(#[from] crate::image::unpack::UnpackError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl BuildError {
    /// The exit code of the `RUN` that failed, if that is what happened.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            BuildError::Step(StepError::Failed { code, .. }) => Some(*code),
            _ => None,
        }
    }
}

/// What a build request asks.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The Dockerfile's path in the context (`Dockerfile` when empty).
    pub dockerfile: String,
    /// Names for the result.
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub no_cache: bool,
    /// Pull `FROM` images even when the store has them.
    pub pull: bool,
    /// Build up to this stage.
    pub target: String,
    /// Labels set on the result.
    pub labels: BTreeMap<String, String>,
    /// Only the result's id is reported.
    pub quiet: bool,
}

/// The images the build cache points at (the intermediate images of builds).
pub fn cached_image_ids(root: &Path) -> std::collections::HashSet<String> {
    std::fs::read_dir(root.join("image/build-cache"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|id| id.trim().to_string())
        .collect()
}

/// Largest Dockerfile read.
const MAX_DOCKERFILE: u64 = 1 << 20;

/// The state of the stage being built.
struct StageState {
    /// Layers so far (of the stage's base and its layer steps).
    layers: Vec<LayerRecord>,
    /// The OCI config being built (whole: `config`, `rootfs`, `history`).
    config: Value,
    /// The image whose layers are `layers` (none for `scratch` before a layer step).
    image: Option<ImageRecord>,
    /// `image` has the config as it is now.
    image_current: bool,
    /// The chain of instructions so far, hashed: the cache key.
    key: String,
    /// `ARG`s declared in this stage, with their values.
    args: BTreeMap<String, Option<String>>,
    shell: Vec<String>,
    /// `CMD` was set in this stage (an `ENTRYPOINT` then keeps it).
    cmd_set: bool,
    /// The micro-VM the stage's `RUN` steps share, once one ran.
    vm: Option<StepVm>,
}

fn chain(prev: &str, what: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(what.as_bytes());
    hex::encode(h.finalize())
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

impl StageState {
    fn new(base: Option<(ImageRecord, Value)>) -> StageState {
        let (layers, mut config, image, key) = match base {
            Some((rec, cfg)) => (
                rec.layers.clone(),
                cfg,
                Some(rec.clone()),
                chain("", &format!("FROM {}", rec.id)),
            ),
            None => (
                Vec::new(),
                json!({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": []}, "history": []}),
                None,
                chain("", "FROM scratch"),
            ),
        };
        if !config["config"].is_object() {
            config["config"] = json!({});
        }
        if let Some(o) = config.as_object_mut() {
            o.remove("container");
            o.remove("container_config");
        }
        StageState {
            layers,
            config,
            image_current: image.is_some(),
            image,
            key,
            args: BTreeMap::new(),
            shell: vec!["/bin/sh".into(), "-c".into()],
            cmd_set: false,
            vm: None,
        }
    }

    fn cfg(&mut self) -> &mut Value {
        &mut self.config["config"]
    }

    fn env(&self) -> Vec<(String, String)> {
        self.config["config"]["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// What instructions expand: the stage's `ARG`s, then its `ENV` (which wins).
    fn vars(&self) -> Vars {
        let mut v: Vars = self
            .args
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        v.extend(self.env());
        v
    }

    fn set_env(&mut self, key: &str, value: &str) {
        let mut env: Vec<Value> = self.config["config"]["Env"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        env.retain(|e| {
            e.as_str()
                .and_then(|s| s.split_once('='))
                .is_none_or(|(k, _)| k != key)
        });
        env.push(json!(format!("{key}={value}")));
        self.cfg()["Env"] = json!(env);
    }

    fn history(&mut self, created_by: String, empty_layer: bool) {
        let mut entry =
            json!({"created": crate::engine::io::chrono_now(), "created_by": created_by});
        if empty_layer {
            entry["empty_layer"] = json!(true);
        }
        push_history(&mut self.config, entry);
    }

    fn workdir(&self) -> String {
        self.config["config"]["WorkingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_string()
    }

    /// A path of the instruction made absolute against the working directory (a
    /// trailing `/` kept).
    fn absolute(&self, p: &str) -> String {
        if p.starts_with('/') {
            return p.to_string();
        }
        let mut out = Path::new(&self.workdir()).join(p).display().to_string();
        if p.ends_with('/') && !out.ends_with('/') {
            out.push('/');
        }
        out
    }
}

/// A running build.
pub struct Builder {
    engine: Arc<Engine>,
    opts: BuildOptions,
    progress: ProgressTx,
    work: PathBuf,
    step: usize,
    total: usize,
    /// Each finished stage's image, by index; names map to indexes.
    stages: Vec<ImageRecord>,
    names: BTreeMap<String, usize>,
    used_args: std::collections::BTreeSet<String>,
}

impl Builder {
    fn say(&self, text: impl Into<String>) {
        if !self.opts.quiet {
            let _ = self.progress.send(progress::stream(text));
        }
    }

    fn cache_path(&self, key: &str) -> PathBuf {
        self.engine.cfg.root.join("image/build-cache").join(key)
    }

    /// The image the cache holds for `key`, if it is still stored.
    fn cached(&self, key: &str) -> Option<ImageRecord> {
        if self.opts.no_cache {
            return None;
        }
        let id = std::fs::read_to_string(self.cache_path(key)).ok()?;
        self.engine.images.resolve(id.trim()).ok()
    }

    fn remember(&self, key: &str, id: &str) {
        let p = self.cache_path(key);
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = crate::image::write_atomic(&p, id.as_bytes()) {
            tracing::warn!("build cache: {e}");
        }
    }

    /// Takes a cached image for the current key; whether there was one.
    fn use_cache(&self, st: &mut StageState) -> Result<bool, BuildError> {
        let Some(rec) = self.cached(&st.key) else {
            return Ok(false);
        };
        st.config = self.engine.images.config_json(&rec)?;
        st.layers = rec.layers.clone();
        st.image = Some(rec);
        st.image_current = true;
        self.say(" ---> Using cache\n");
        Ok(true)
    }

    /// The stage's image as it is now, made if needed (no names), and cached by key.
    async fn materialize(&self, st: &mut StageState) -> Result<ImageRecord, BuildError> {
        if let (true, Some(rec)) = (st.image_current, &st.image) {
            return Ok(rec.clone());
        }
        if let Some(rec) = self.cached(&st.key) {
            st.image = Some(rec.clone());
            st.image_current = true;
            return Ok(rec);
        }
        let mut config = st.config.clone();
        config["created"] = json!(crate::engine::io::chrono_now());
        let (images, layers) = (self.engine.images.clone(), st.layers.clone());
        let rec = tokio::task::spawn_blocking(move || images.assemble(&layers, &config, &[]))
            .await
            .map_err(|e| BuildError::Invalid(e.to_string()))??;
        self.remember(&st.key, &rec.id);
        st.image = Some(rec.clone());
        st.image_current = true;
        Ok(rec)
    }

    /// Adds the tar layer `tar` (removed afterwards) made by `created_by`.
    async fn add_layer(
        &self,
        st: &mut StageState,
        tar: &Path,
        created_by: String,
    ) -> Result<(), BuildError> {
        let (images, t) = (self.engine.images.clone(), tar.to_path_buf());
        let layer = tokio::task::spawn_blocking(move || images.put_layer(&t))
            .await
            .map_err(|e| BuildError::Invalid(e.to_string()))?;
        let _ = std::fs::remove_file(tar);
        let layer = layer?;
        push_diff_id(&mut st.config, &layer.diff_id);
        st.layers.push(layer);
        st.history(created_by, false);
        st.image_current = false;
        let rec = self.materialize(st).await?;
        self.say(format!(" ---> {}\n", short(&rec.id)));
        Ok(())
    }

    fn tmp(&self, what: &str) -> PathBuf {
        self.work
            .join(format!("{what}-{}", crate::ids::random_hex(6)))
    }

    /// An image a `FROM` or `COPY --from` names: an earlier stage, else a stored image
    /// (pulled when missing or when the build asks for pulls).
    async fn image_for(
        &mut self,
        name: &str,
        allow_stage: bool,
    ) -> Result<ImageRecord, BuildError> {
        let lower = name.to_ascii_lowercase();
        if allow_stage {
            if let Some(&i) = self.names.get(&lower) {
                return Ok(self.stages[i].clone());
            }
            if let Ok(i) = name.parse::<usize>() {
                return self
                    .stages
                    .get(i)
                    .cloned()
                    .ok_or_else(|| BuildError::Invalid(format!("no stage {i} before this one")));
            }
        }
        let local = self.engine.images.resolve(name);
        match local {
            Ok(rec) if !self.opts.pull => Ok(rec),
            Ok(_) | Err(ImageError::NotFound(_)) => {
                self.say(format!("Pulling {name}\n"));
                Ok(self.engine.pull_image(name).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn from(
        &mut self,
        ins: &Instruction,
        global: &Vars,
        escape: char,
    ) -> Result<StageState, BuildError> {
        let word = ins.args.split_whitespace().next().unwrap_or_default();
        let name = dockerfile::expand(word, global, escape).map_err(|e| line_err(ins, e))?;
        if name.is_empty() {
            return Err(line_err(ins, "FROM names no image".into()));
        }
        if name == "scratch" {
            return Ok(StageState::new(None));
        }
        let rec = self.image_for(&name, true).await?;
        let cfg = self.engine.images.config_json(&rec)?;
        self.say(format!(" ---> {}\n", short(&rec.id)));
        Ok(StageState::new(Some((rec, cfg))))
    }

    async fn run(&mut self, st: &mut StageState, ins: &Instruction) -> Result<(), BuildError> {
        let argv = match dockerfile::json_form(&ins.args) {
            Some(v) if !v.is_empty() => v,
            Some(_) => return Err(line_err(ins, "RUN [] runs nothing".into())),
            None => st.shell.iter().cloned().chain([ins.args.clone()]).collect(),
        };
        if ins.flags.iter().any(|(f, _)| f != "network") {
            return Err(line_err(
                ins,
                "RUN takes no flags here (--mount needs BuildKit)".into(),
            ));
        }
        // Build arguments reach the command as variables, as with Docker, and count
        // in its cache key; ENV wins over an ARG of the same name.
        let mut env: Vec<(String, String)> = st
            .args
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        let image_env = st.env();
        env.retain(|(k, _)| !image_env.iter().any(|(ik, _)| ik == k));
        let arg_text: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend(image_env);
        st.key = chain(&st.key, &format!("RUN {argv:?} {arg_text:?}"));
        if self.use_cache(st)? {
            return Ok(());
        }
        let image = self.materialize(st).await?;
        if image.layers.is_empty() {
            return Err(line_err(
                ins,
                "RUN needs an image with a root file system (FROM scratch has none)".into(),
            ));
        }
        let step = StepRun {
            image: image.id.clone(),
            argv: argv.clone(),
            env,
            workdir: st.config["config"]["WorkingDir"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            user: st.config["config"]["User"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        };
        self.say(" ---> Running in a micro-VM\n");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
        let progress = self.progress.clone();
        let quiet = self.opts.quiet;
        let forward = tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if !quiet {
                    let _ =
                        progress.send(progress::stream(String::from_utf8_lossy(&b).into_owned()));
                }
            }
        });
        // The step runs in a task of its own, which always hands the VM back to the
        // stage (that ends it).
        let engine = self.engine.clone();
        let mut vm = st.vm.take();
        let (vm, result) = tokio::spawn(async move {
            let r = engine.run_build_step(&mut vm, step, tx).await;
            (vm, r)
        })
        .await
        .map_err(|e| BuildError::Invalid(e.to_string()))?;
        st.vm = vm;
        let _ = forward.await;
        let tar = result?;
        let created_by = if dockerfile::json_form(&ins.args).is_some() {
            argv.join(" ")
        } else {
            format!("{} {}", st.shell.join(" "), ins.args)
        };
        self.add_layer(st, &tar, created_by).await
    }

    async fn copy(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        escape: char,
    ) -> Result<(), BuildError> {
        let vars = st.vars();
        let mut parts = match dockerfile::json_form(&ins.args) {
            Some(v) => v,
            None => dockerfile::words(&ins.args, &vars, escape).map_err(|e| line_err(ins, e))?,
        };
        if parts.len() < 2 {
            return Err(line_err(
                ins,
                format!("{} needs a source and a destination", ins.keyword),
            ));
        }
        let dest = st.absolute(&parts.pop().expect("two parts"));
        let mut opts = CopyOptions {
            unpack_archives: ins.keyword == "ADD",
            ..Default::default()
        };
        if let Some(c) = ins.flag("chown") {
            let c = dockerfile::expand(c, &vars, escape).map_err(|e| line_err(ins, e))?;
            opts.owner = Some(context::parse_chown(&c)?);
        }
        if let Some(m) = ins.flag("chmod") {
            opts.mode = Some(
                u32::from_str_radix(m, 8)
                    .map_err(|_| line_err(ins, format!("--chmod={m} is not an octal mode")))?,
            );
        }
        let max = self.engine.cfg.max_layer_bytes;
        let tar = self.tmp("layer.tar");
        let what;
        if let Some(from) = ins.flag("from") {
            if ins.keyword == "ADD" {
                return Err(line_err(ins, "ADD has no --from".into()));
            }
            let from = dockerfile::expand(from, &vars, escape).map_err(|e| line_err(ins, e))?;
            let image = self.image_for(&from, true).await?;
            let (images, t, d, o) = (
                self.engine.images.clone(),
                tar.clone(),
                dest.clone(),
                opts.clone(),
            );
            let srcs = parts.clone();
            tokio::task::spawn_blocking(move || {
                from_image::copy_layer(&images, &image, &srcs, &d, o, &t, max)
            })
            .await
            .map_err(|e| BuildError::Invalid(e.to_string()))??;
            what = format!("COPY --from={from} {} {dest}", parts.join(" "));
        } else if parts
            .iter()
            .any(|p| p.starts_with("http://") || p.starts_with("https://"))
        {
            if ins.keyword != "ADD" || parts.len() != 1 {
                return Err(line_err(
                    ins,
                    "a URL source takes ADD with that one source".into(),
                ));
            }
            let url = parts[0].clone();
            let file = self.tmp("download");
            let limits = crate::image::remote_archive::DownloadLimits {
                max_bytes: max,
                timeout: std::time::Duration::from_secs(600),
            };
            self.say(format!("Downloading {url}\n"));
            crate::image::remote_archive::download(&url, &file, &limits).await?;
            let name = url
                .split(['?', '#'])
                .next()
                .and_then(|u| u.rsplit('/').next())
                .filter(|n| !n.is_empty())
                .unwrap_or("download")
                .to_string();
            let (t, d, o, f) = (tar.clone(), dest.clone(), opts.clone(), file.clone());
            let r =
                tokio::task::spawn_blocking(move || context::file_layer(&f, &name, &d, o, &t, max))
                    .await
                    .map_err(|e| BuildError::Invalid(e.to_string()))?;
            let _ = std::fs::remove_file(&file);
            r?;
            what = format!("ADD {url} {dest}");
        } else {
            let ctx = Context::open(self.work.join("context"))?;
            let (t, d, o, srcs) = (tar.clone(), dest.clone(), opts.clone(), parts.clone());
            tokio::task::spawn_blocking(move || context::copy_layer(&ctx, &srcs, &d, o, &t, max))
                .await
                .map_err(|e| BuildError::Invalid(e.to_string()))??;
            what = format!("{} {} {dest}", ins.keyword, parts.join(" "));
        }
        // The cache key holds what is copied: the layer's content digest.
        let digest = {
            let t = tar.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<String> {
                let mut h = Sha256::new();
                std::io::copy(&mut std::fs::File::open(&t)?, &mut h)?;
                Ok(hex::encode(h.finalize()))
            })
            .await
            .map_err(|e| BuildError::Invalid(e.to_string()))??
        };
        st.key = chain(
            &st.key,
            &format!("{what} {:?} {:?} sha256:{digest}", opts.owner, opts.mode),
        );
        if self.use_cache(st)? {
            let _ = std::fs::remove_file(&tar);
            return Ok(());
        }
        self.add_layer(st, &tar, format!("/bin/sh -c #(nop) {what}"))
            .await
    }

    /// A metadata instruction: the config changes, the key moves on, no layer.
    fn metadata(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        escape: char,
    ) -> Result<(), BuildError> {
        let vars = st.vars();
        let exp = |t: &str| dockerfile::expand(t, &vars, escape).map_err(|e| line_err(ins, e));
        let command = |st: &StageState| -> Value {
            match dockerfile::json_form(&ins.args) {
                Some(v) => json!(v),
                None => json!(st
                    .shell
                    .iter()
                    .cloned()
                    .chain([ins.args.clone()])
                    .collect::<Vec<_>>()),
            }
        };
        let mut record = ins.original.clone();
        match ins.keyword.as_str() {
            "ENV" => {
                let pairs = dockerfile::pairs(&ins.args, &vars, escape, true)
                    .map_err(|e| line_err(ins, e))?;
                record = format!(
                    "ENV {}",
                    pairs
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                for (k, v) in pairs {
                    st.set_env(&k, &v);
                }
            }
            "LABEL" => {
                let pairs = dockerfile::pairs(&ins.args, &vars, escape, true)
                    .map_err(|e| line_err(ins, e))?;
                for (k, v) in pairs {
                    if !st.cfg()["Labels"].is_object() {
                        st.cfg()["Labels"] = json!({});
                    }
                    st.cfg()["Labels"][k] = json!(v);
                }
            }
            "MAINTAINER" => st.config["author"] = json!(exp(&ins.args)?),
            "WORKDIR" => {
                let w = exp(&ins.args)?;
                let abs = st.absolute(&w);
                let clean = format!(
                    "/{}",
                    context::clean(&abs)
                        .ok_or_else(|| line_err(ins, "bad WORKDIR".into()))?
                        .display()
                );
                st.cfg()["WorkingDir"] = json!(clean);
            }
            "USER" => st.cfg()["User"] = json!(exp(&ins.args)?),
            "STOPSIGNAL" => st.cfg()["StopSignal"] = json!(exp(&ins.args)?),
            "CMD" => {
                st.cfg()["Cmd"] = command(st);
                st.cmd_set = true;
            }
            "ENTRYPOINT" => {
                st.cfg()["Entrypoint"] = command(st);
                if !st.cmd_set {
                    st.cfg()["Cmd"] = Value::Null;
                }
            }
            "SHELL" => {
                let shell = dockerfile::json_form(&ins.args)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| line_err(ins, "SHELL takes the JSON form".into()))?;
                st.cfg()["Shell"] = json!(shell);
                st.shell = shell;
            }
            "EXPOSE" | "VOLUME" => {
                let items = match (ins.keyword.as_str(), dockerfile::json_form(&ins.args)) {
                    ("VOLUME", Some(v)) => v,
                    _ => {
                        dockerfile::words(&ins.args, &vars, escape).map_err(|e| line_err(ins, e))?
                    }
                };
                let key = if ins.keyword == "EXPOSE" {
                    "ExposedPorts"
                } else {
                    "Volumes"
                };
                if !st.cfg()[key].is_object() {
                    st.cfg()[key] = json!({});
                }
                for mut item in items {
                    if key == "ExposedPorts" && !item.contains('/') {
                        item.push_str("/tcp");
                    }
                    st.cfg()[key][item] = json!({});
                }
            }
            "HEALTHCHECK" => st.cfg()["Healthcheck"] = healthcheck(ins)?,
            "ONBUILD" => {
                if !st.cfg()["OnBuild"].is_array() {
                    st.cfg()["OnBuild"] = json!([]);
                }
                st.cfg()["OnBuild"]
                    .as_array_mut()
                    .expect("array")
                    .push(json!(ins.args));
            }
            "ARG" => {
                let text = ins.args.trim();
                let (name, default) = match text.split_once('=') {
                    Some((n, d)) => (
                        n.to_string(),
                        Some(dockerfile::expand(d, &vars, escape).map_err(|e| line_err(ins, e))?),
                    ),
                    None => (text.to_string(), None),
                };
                let value = self
                    .opts
                    .build_args
                    .get(&name)
                    .cloned()
                    .or(default)
                    .or_else(|| st.args.get(&name).cloned().flatten());
                if self.opts.build_args.contains_key(&name) {
                    self.used_args.insert(name.clone());
                }
                st.args.insert(name, value);
            }
            other => return Err(line_err(ins, format!("{other} is not handled here"))),
        }
        st.key = chain(&st.key, &record);
        if ins.keyword != "ARG" {
            st.history(format!("/bin/sh -c #(nop) {record}"), true);
            st.image_current = false;
        }
        Ok(())
    }
}

fn line_err(ins: &Instruction, what: String) -> BuildError {
    BuildError::Invalid(format!(
        "Dockerfile line {}: {}: {what}",
        ins.line, ins.keyword
    ))
}

/// A Go duration as Docker's flags take it (`30s`, `1m30s`, `500ms`), in nanoseconds.
fn duration_ns(s: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !c.is_ascii_digit())?;
        let (num, tail) = rest.split_at(n);
        let num: u64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let mult = match unit {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        total = total.checked_add(num.checked_mul(mult)?)?;
        rest = next;
    }
    Some(total)
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [--interval=...] CMD ...` as Docker stores it.
/// HEALTHCHECK's config: `CMD-SHELL` runs under the image's default shell, as Docker
/// stores it (the build's SHELL does not apply).
fn healthcheck(ins: &Instruction) -> Result<Value, BuildError> {
    let args = ins.args.trim();
    if args.eq_ignore_ascii_case("NONE") {
        return Ok(json!({"Test": ["NONE"]}));
    }
    let Some(cmd) = args
        .strip_prefix("CMD")
        .or_else(|| args.strip_prefix("cmd"))
    else {
        return Err(line_err(ins, "HEALTHCHECK takes NONE or CMD".into()));
    };
    let test = match dockerfile::json_form(cmd) {
        Some(v) => std::iter::once("CMD".to_string())
            .chain(v)
            .collect::<Vec<_>>(),
        None => vec!["CMD-SHELL".to_string(), cmd.trim().to_string()],
    };
    let mut hc = json!({"Test": test});
    for (flag, field) in [
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
    ] {
        if let Some(v) = ins.flag(flag) {
            hc[field] = json!(duration_ns(v)
                .ok_or_else(|| line_err(ins, format!("--{flag}={v} is not a duration")))?);
        }
    }
    if let Some(r) = ins.flag("retries") {
        hc["Retries"] = json!(r
            .parse::<u32>()
            .map_err(|_| line_err(ins, format!("--retries={r}")))?);
    }
    Ok(hc)
}

/// Builds an image from the context tar `context`, reporting to `progress`; the image
/// (named by `opts.tags`).
pub async fn build(
    engine: Arc<Engine>,
    context: impl std::io::Read + Send + 'static,
    opts: BuildOptions,
    progress: ProgressTx,
) -> Result<ImageRecord, BuildError> {
    let tags = opts
        .tags
        .iter()
        .map(|t| crate::image::normalize_reference(t))
        .collect::<Result<Vec<_>, _>>()?;
    let work = engine
        .cfg
        .root
        .join("image/tmp")
        .join(format!("build-{}", crate::ids::random_hex(8)));
    let mut b = Builder {
        engine: engine.clone(),
        opts,
        progress,
        work: work.clone(),
        step: 0,
        total: 0,
        stages: Vec::new(),
        names: BTreeMap::new(),
        used_args: Default::default(),
    };
    let result = b.build_in(context, &tags).await;
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&work)).await;
    result
}

impl Builder {
    async fn build_in(
        &mut self,
        context: impl std::io::Read + Send + 'static,
        tags: &[String],
    ) -> Result<ImageRecord, BuildError> {
        let ctx_dir = self.work.join("context");
        let limits = crate::image::unpack::Limits {
            max_bytes: self.engine.cfg.max_layer_bytes,
            max_entries: 1_000_000,
        };
        let dir = ctx_dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), BuildError> {
            std::fs::create_dir_all(&dir)?;
            crate::image::unpack::unpack_layer(
                crate::image::unpack::decompress(context)?,
                &dir,
                &limits,
            )?;
            Ok(())
        })
        .await
        .map_err(|e| BuildError::Invalid(e.to_string()))??;
        let ctx = Context::open(ctx_dir)?;
        let name = if self.opts.dockerfile.is_empty() {
            "Dockerfile"
        } else {
            self.opts.dockerfile.as_str()
        };
        let text = ctx.read_file(name, MAX_DOCKERFILE)?;
        let df = dockerfile::parse(&String::from_utf8_lossy(&text))?;
        let last = if self.opts.target.is_empty() {
            df.stages.len() - 1
        } else {
            let t = self.opts.target.to_ascii_lowercase();
            df.stages
                .iter()
                .position(|s| s.name.as_deref() == Some(t.as_str()))
                .ok_or_else(|| BuildError::Invalid(format!("no build stage named {t}")))?
        };
        self.total = df.stages[..=last].iter().map(|s| 1 + s.steps.len()).sum();
        let global = self.global_args(&df)?;
        for (i, stage) in df.stages[..=last].iter().enumerate() {
            let rec = self.stage(stage, &global, df.escape, i == last).await?;
            if let Some(n) = &stage.name {
                self.names.insert(n.clone(), i);
            }
            self.stages.push(rec);
        }
        let unused: Vec<&String> = self
            .opts
            .build_args
            .keys()
            .filter(|k| !self.used_args.contains(*k) && !PREDEFINED_ARGS.contains(&k.as_str()))
            .collect();
        if !unused.is_empty() {
            self.say(format!(
                "[Warning] One or more build-args {unused:?} were not consumed\n"
            ));
        }
        let rec = self.stages.last().cloned().expect("a stage");
        if !tags.is_empty() {
            let (images, id, names) = (self.engine.images.clone(), rec.id.clone(), tags.to_vec());
            tokio::task::spawn_blocking(move || images.add_references(&id, &names))
                .await
                .map_err(|e| BuildError::Invalid(e.to_string()))??;
        }
        let _ = self.progress.send(progress::built(&rec.id));
        if self.opts.quiet {
            let _ = self
                .progress
                .send(progress::stream(format!("{}\n", rec.id)));
        } else {
            self.say(format!("Successfully built {}\n", short(&rec.id)));
            for t in tags {
                self.say(format!("Successfully tagged {t}\n"));
            }
        }
        Ok(rec)
    }

    fn global_args(&mut self, df: &Dockerfile) -> Result<Vars, BuildError> {
        let mut vars = Vars::new();
        for ins in &df.global_args {
            let text = ins.args.trim();
            let (name, default) = match text.split_once('=') {
                Some((n, d)) => (
                    n,
                    Some(dockerfile::expand(d, &vars, df.escape).map_err(|e| line_err(ins, e))?),
                ),
                None => (text, None),
            };
            if let Some(v) = self.opts.build_args.get(name).cloned().or(default) {
                vars.insert(name.to_string(), v);
            }
            if self.opts.build_args.contains_key(name) {
                self.used_args.insert(name.to_string());
            }
        }
        Ok(vars)
    }

    async fn stage(
        &mut self,
        stage: &dockerfile::Stage,
        global: &Vars,
        escape: char,
        last: bool,
    ) -> Result<ImageRecord, BuildError> {
        self.step += 1;
        self.say(format!(
            "Step {}/{} : {}\n",
            self.step, self.total, stage.from.original
        ));
        let mut st = self.from(&stage.from, global, escape).await?;
        let result = self.steps(stage, &mut st, global, escape, last).await;
        // The stage's VM goes however the stage ended.
        if let Some(vm) = st.vm.take() {
            self.engine.end_build_vm(vm).await;
        }
        result
    }

    async fn steps(
        &mut self,
        stage: &dockerfile::Stage,
        st: &mut StageState,
        global: &Vars,
        escape: char,
        last: bool,
    ) -> Result<ImageRecord, BuildError> {
        for ins in &stage.steps {
            self.step += 1;
            self.say(format!(
                "Step {}/{} : {}\n",
                self.step, self.total, ins.original
            ));
            match ins.keyword.as_str() {
                "RUN" => self.run(st, ins).await?,
                "COPY" | "ADD" => self.copy(st, ins, escape).await?,
                "ARG" if !ins.args.contains('=') => {
                    // `ARG name` in a stage takes the global value of that name.
                    let name = ins.args.trim().to_string();
                    if let Some(v) = global.get(&name) {
                        st.args.insert(name.clone(), Some(v.clone()));
                    }
                    self.metadata(st, ins, escape)?;
                }
                _ => self.metadata(st, ins, escape)?,
            }
        }
        if last && !self.opts.labels.is_empty() {
            for (k, v) in &self.opts.labels {
                if !st.cfg()["Labels"].is_object() {
                    st.cfg()["Labels"] = json!({});
                }
                st.cfg()["Labels"][k] = json!(v);
            }
            st.key = chain(&st.key, &format!("LABELS {:?}", self.opts.labels));
            st.image_current = false;
        }
        let had_image = st.image_current;
        let rec = self.materialize(st).await?;
        if !had_image {
            self.say(format!(" ---> {}\n", short(&rec.id)));
        }
        Ok(rec)
    }
}

/// Build arguments Docker defines without an `ARG` (proxies).
const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(duration_ns("30s"), Some(30_000_000_000));
        assert_eq!(duration_ns("1m30s"), Some(90_000_000_000));
        assert_eq!(duration_ns("500ms"), Some(500_000_000));
        assert_eq!(duration_ns("5"), None);
        assert_eq!(duration_ns("1d"), None);
    }
}
