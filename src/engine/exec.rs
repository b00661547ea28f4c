//! Extra processes in running containers (`exec`), and signals, terminal sizes and
//! pause/unpause for the processes and VMs of pods.
use super::io::{ContainerIo, IoState};
use super::{Container, ContainerStatus, Engine, EngineError, Pod, PodPhase, AGENT_TIMEOUT};
use hyperd_agent::protocol::{Op, ProcessSpec};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

pub struct Exec {
    pub id: String,
    pub container: Arc<Container>,
    pub process: ProcessSpec,
    pub stream: u32,
    pub io: Arc<ContainerIo>,
    pub status: Mutex<ContainerStatus>,
}

/// Finished execs a pod keeps (their exit codes and output) at most, and for how long
/// after they exited: clients read an exec's result right after it ends, and a pod that
/// runs execs all day must not grow the daemon's memory.
const MAX_FINISHED_EXECS: usize = 256;
const FINISHED_EXEC_KEEP: std::time::Duration = std::time::Duration::from_secs(600);

/// Forgets a pod's execs that finished more than `keep` ago, and the oldest finished
/// ones past `max`; returns them (their logs are to be removed).
pub(crate) fn prune_finished_execs(
    pod: &Pod,
    max: usize,
    keep: std::time::Duration,
) -> Vec<Arc<Exec>> {
    let since = std::time::SystemTime::now()
        .checked_sub(keep)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    // Same format as `finished_at`: the strings sort as the times do.
    let cutoff = super::io::rfc3339(since.as_secs() as i64, since.subsec_nanos());
    let mut state = pod.state();
    let mut finished: Vec<(String, String)> = state
        .execs
        .iter()
        .filter(|(_, e)| *e.io.state().borrow() == IoState::Exited)
        .filter_map(|(id, e)| {
            let at = e.status.lock().unwrap().finished_at.clone()?;
            Some((at, id.clone()))
        })
        .collect();
    finished.sort();
    // Room for the exec about to be added.
    let excess = (finished.len() + 1).saturating_sub(max);
    finished
        .iter()
        .enumerate()
        .filter(|(i, (at, _))| *i < excess || at.as_str() < cutoff.as_str())
        .filter_map(|(_, (_, id))| state.execs.remove(id))
        .collect()
}

/// What `POST /exec/create` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub tty: bool,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
}

/// A signal by name (`KILL`, `SIGKILL`) or number.
pub(crate) fn parse_signal(s: &str) -> Result<i32, EngineError> {
    let up = s.trim().to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Ok(n) = name.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        _ => return Err(EngineError::Invalid(format!("unknown signal {s:?}"))),
    };
    Ok(n)
}

impl Pod {
    /// CPU use since the previous sample, percent of one CPU (0 at the first sample).
    pub fn cpu_percent(&self, cpu_ns: u64) -> f64 {
        let now = std::time::Instant::now();
        let mut state = self.state();
        let last = &mut state.cpu_sample;
        let pct = match *last {
            Some((t, ns)) if cpu_ns >= ns && now > t => {
                (cpu_ns - ns) as f64 / now.duration_since(t).as_nanos() as f64 * 100.0
            }
            _ => 0.0,
        };
        *last = Some((now, cpu_ns));
        (pct * 100.0).round() / 100.0
    }

    /// Records a memory reading (MiB); returns the largest seen.
    pub fn note_memory(&self, mib: f64) -> f64 {
        let mut state = self.state();
        if mib > state.mem_max {
            state.mem_max = mib;
        }
        state.mem_max
    }

    pub fn exec_by_stream(&self, stream: u32) -> Option<Arc<Exec>> {
        self.state()
            .execs
            .values()
            .find(|e| e.stream == stream)
            .cloned()
    }

    fn running_agent(&self) -> Result<crate::vm::agent::AgentClient, EngineError> {
        match (self.phase(), self.vm()) {
            (PodPhase::Running, Some(vm)) => Ok(vm.agent.clone()),
            (PodPhase::Paused, _) => Err(EngineError::WrongState(format!(
                "pod {} is paused",
                self.id
            ))),
            _ => Err(EngineError::WrongState(format!(
                "pod {} is not running",
                self.id
            ))),
        }
    }
}

fn agent_err(e: crate::vm::agent::AgentError) -> EngineError {
    match e {
        crate::vm::agent::AgentError::Failed(m) => EngineError::GuestRefused(m),
        other => EngineError::Agent(other),
    }
}

async fn signal_stream(
    agent: &crate::vm::agent::AgentClient,
    stream: u32,
    signal: i32,
) -> Result<(), EngineError> {
    agent
        .call(Op::Signal { stream, signal }, AGENT_TIMEOUT)
        .await
        .map_err(agent_err)?;
    Ok(())
}

impl Engine {
    /// A container by key, or the first container of a pod by its id or name.
    pub fn container_or_pod(&self, key: &str) -> Result<(Arc<Pod>, Arc<Container>), EngineError> {
        match self.container(key) {
            Err(EngineError::NoSuch(m)) => match self.pod(key) {
                Ok(p) => {
                    let c = p
                        .containers()
                        .first()
                        .cloned()
                        .ok_or(EngineError::NoSuch(m))?;
                    Ok((p, c))
                }
                Err(_) => Err(EngineError::NoSuch(m)),
            },
            other => other,
        }
    }

    pub fn create_exec(
        &self,
        key: &str,
        req: ExecRequest,
    ) -> Result<(Arc<Pod>, Arc<Exec>), EngineError> {
        let (pod, c) = self.container_or_pod(key)?;
        if req.command.is_empty() {
            return Err(EngineError::Invalid("exec needs a command".into()));
        }
        if *c.io.state().borrow() != IoState::Running {
            return Err(EngineError::WrongState(format!(
                "container {} is not running",
                c.name()
            )));
        }
        pod.running_agent()?;
        let mut env = c.process.env.clone();
        for kv in &req.env {
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        let id = crate::ids::random_hex(32);
        let exec = Arc::new(Exec {
            io: Arc::new(ContainerIo::new(
                pod.dir.join(format!("exec-{id}.log")),
                &self.logs,
                self.log_limits(&pod.spec),
            )),
            id: id.clone(),
            process: ProcessSpec {
                args: req.command,
                env,
                workdir: if req.workdir.is_empty() {
                    c.process.workdir.clone()
                } else {
                    req.workdir
                },
                user: if req.user.is_empty() {
                    c.process.user.clone()
                } else {
                    req.user
                },
                tty: req.tty,
                stdin: req.tty,
            },
            stream: pod.next_stream.fetch_add(1, Ordering::SeqCst),
            container: c,
            status: Mutex::new(ContainerStatus::default()),
        });
        for gone in prune_finished_execs(&pod, MAX_FINISHED_EXECS, FINISHED_EXEC_KEEP) {
            tokio::spawn(async move { gone.io.remove_log().await });
        }
        pod.state().execs.insert(id, exec.clone());
        Ok((pod, exec))
    }

    pub fn exec(&self, id: &str) -> Result<(Arc<Pod>, Arc<Exec>), EngineError> {
        for p in self.pods() {
            let found = p.state().execs.get(id).cloned();
            if let Some(e) = found {
                return Ok((p.clone(), e));
            }
        }
        Err(EngineError::NoSuch(format!("no such exec: {id}")))
    }

    /// Starts a created exec; its output goes to whoever attached to its io.
    /// Whether `exec` can start now: never started, and its pod running. Hijacked
    /// starts check this before they answer, then start once the connection is theirs.
    pub fn exec_startable(&self, pod: &Pod, exec: &Exec) -> Result<(), EngineError> {
        if *exec.io.state().borrow() != IoState::NotStarted {
            return Err(EngineError::WrongState(format!(
                "exec {} was already started",
                exec.id
            )));
        }
        pod.running_agent().map(drop)
    }

    pub async fn start_exec(&self, pod: &Pod, exec: &Exec) -> Result<(), EngineError> {
        self.exec_startable(pod, exec)?;
        let agent = pod.running_agent()?;
        let mut process = exec.process.clone();
        process.stdin |= exec.io.stdin_wanted.load(Ordering::SeqCst);
        exec.status.lock().unwrap().started_at = Some(super::io::chrono_now());
        exec.io.set_state(IoState::Running);
        let op = Op::StartProcess {
            container: exec.container.id.clone(),
            stream: exec.stream,
            process,
        };
        if let Err(e) = agent.call(op, AGENT_TIMEOUT).await {
            super::mark_exited(&exec.io, &exec.status, 126);
            return Err(agent_err(e));
        }
        Ok(())
    }

    /// Runs `args` in a container to its end (at most `timeout`) and returns its exit
    /// code and standard output (capped at 1 MiB), as `docker top` needs.
    pub async fn run_to_end(
        &self,
        key: &str,
        args: Vec<String>,
        timeout: std::time::Duration,
    ) -> Result<(i32, Vec<u8>), EngineError> {
        const MAX_OUTPUT: usize = 1 << 20;
        let (pod, exec) = self.create_exec(
            key,
            ExecRequest {
                command: args,
                ..Default::default()
            },
        )?;
        let mut rx = exec
            .io
            .attach(false)
            .ok_or_else(|| EngineError::GuestFailed("exec ended before it started".into()))?;
        self.start_exec(&pod, &exec).await?;
        let mut out = Vec::new();
        let collect = async {
            while let Some(chunk) = rx.recv().await {
                if let super::io::Chunk::Stdout(b) = chunk {
                    let room = MAX_OUTPUT.saturating_sub(out.len());
                    out.extend_from_slice(&b[..b.len().min(room)]);
                }
            }
        };
        if tokio::time::timeout(timeout, collect).await.is_err() {
            return Err(EngineError::GuestFailed(format!(
                "{} did not finish in {timeout:?}",
                exec.process.args.join(" ")
            )));
        }
        let mut state = exec.io.state();
        let _ = tokio::time::timeout(timeout, state.wait_for(|s| *s == IoState::Exited)).await;
        let code = exec.status.lock().unwrap().exit_code.unwrap_or(-1);
        Ok((code, out))
    }

    /// Signals a container's main process.
    pub async fn kill_container(&self, key: &str, signal: &str) -> Result<(), EngineError> {
        let sig = parse_signal(signal)?;
        let (pod, c) = self.container(key)?;
        if *c.io.state().borrow() != IoState::Running {
            return Err(EngineError::WrongState(format!(
                "container {} is not running",
                c.name()
            )));
        }
        if sig == libc::SIGKILL || sig == libc::SIGTERM {
            c.stop_requested
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        signal_stream(&pod.running_agent()?, c.stream, sig).await
    }

    /// Signals every running container of a pod.
    pub async fn kill_pod(&self, key: &str, signal: &str) -> Result<Arc<Pod>, EngineError> {
        let sig = parse_signal(signal)?;
        let pod = self.pod(key)?;
        let agent = pod.running_agent()?;
        for c in pod
            .containers()
            .iter()
            .filter(|c| *c.io.state().borrow() == IoState::Running)
        {
            signal_stream(&agent, c.stream, sig).await?;
        }
        Ok(pod)
    }

    /// Resizes the terminal of a container's main process or of an exec.
    pub async fn resize(
        &self,
        container: &str,
        exec: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), EngineError> {
        let (pod, stream) = match exec.filter(|e| !e.is_empty()) {
            Some(id) => {
                let (pod, e) = self.exec(id)?;
                (pod, e.stream)
            }
            None => {
                let (pod, c) = self.container(container)?;
                (pod, c.stream)
            }
        };
        let agent = pod.running_agent()?;
        agent
            .call(Op::ResizeTty { stream, rows, cols }, AGENT_TIMEOUT)
            .await
            .map_err(agent_err)?;
        Ok(())
    }

    /// The VM's resource use, as its agent reads it.
    pub async fn pod_stats(
        &self,
        key: &str,
    ) -> Result<(Arc<Pod>, hyperd_agent::protocol::Stats), EngineError> {
        self.pod_stats_within(key, AGENT_TIMEOUT).await
    }

    /// [`pod_stats`](Self::pod_stats) with a deadline of the caller's: listings that show
    /// every pod's figures wait only briefly for each, so one wedged guest does not slow
    /// them for the others.
    pub async fn pod_stats_within(
        &self,
        key: &str,
        timeout: std::time::Duration,
    ) -> Result<(Arc<Pod>, hyperd_agent::protocol::Stats), EngineError> {
        let pod = self.pod(key)?;
        let agent = pod.running_agent()?;
        let v = agent.call(Op::Stats, timeout).await.map_err(agent_err)?;
        let stats = serde_json::from_value(v.unwrap_or_default())
            .map_err(|e| EngineError::GuestFailed(format!("bad stats from the agent: {e}")))?;
        Ok((pod, stats))
    }

    /// Sets labels on a pod; an existing label changes only with `overwrite`.
    pub async fn label_pod(
        &self,
        key: &str,
        labels: std::collections::BTreeMap<String, String>,
        overwrite: bool,
    ) -> Result<Arc<Pod>, EngineError> {
        let pod = self.pod(key)?;
        {
            let mut state = pod.state();
            let current = &mut state.labels;
            for (k, v) in &labels {
                if k.is_empty() || k.len() > 253 {
                    return Err(EngineError::Invalid(format!("invalid label key {k:?}")));
                }
                if !overwrite && current.get(k).is_some_and(|old| old != v) {
                    return Err(EngineError::WrongState(format!(
                        "label {k} is already set; use override to change it"
                    )));
                }
            }
            current.extend(labels);
        }
        self.persist(&pod).await?;
        Ok(pod)
    }

    /// Freezes a running pod's vCPUs through its VM's monitor, or lets them run again.
    pub async fn pause_pod(&self, key: &str, pause: bool) -> Result<Arc<Pod>, EngineError> {
        let pod = self.pod(key)?;
        let _op = pod.op.lock().await;
        let vm = pod
            .vm()
            .ok_or_else(|| EngineError::WrongState(format!("pod {} is not running", pod.id)))?;
        let (from, to) = if pause {
            (PodPhase::Running, PodPhase::Paused)
        } else {
            (PodPhase::Paused, PodPhase::Running)
        };
        if pod.phase() != from {
            return Err(EngineError::WrongState(format!(
                "pod {} is {}, not {}",
                pod.id,
                pod.phase().as_str(),
                from.as_str()
            )));
        }
        let done = if pause {
            vm.handle.pause().await
        } else {
            vm.handle.resume().await
        };
        done?;
        pod.set_phase(to);
        self.persist(&pod).await?;
        drop(_op);
        Ok(pod)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_signals() {
        assert_eq!(super::parse_signal("KILL").unwrap(), 9);
        assert_eq!(super::parse_signal("sigterm").unwrap(), 15);
        assert_eq!(super::parse_signal("SIGUSR1").unwrap(), libc::SIGUSR1);
        assert_eq!(super::parse_signal("2").unwrap(), 2);
        assert!(super::parse_signal("BOGUS").is_err());
        assert!(super::parse_signal("0").is_err());
    }
}
