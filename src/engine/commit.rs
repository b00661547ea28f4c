//! Committing a container: its changes come out of the guest as a tar stream (the
//! agent's `export_diff`), are written to a file under a size cap, and become the top
//! layer of a new image through the image store (which unpacks every layer with the
//! hardened unpacker before the image exists). The host never mounts the guest's disk.
use super::{Container, Engine, EngineError, Pod, VmRuntime, AGENT_TIMEOUT};
use crate::image::commit::CommitInfo;
use crate::image::ImageRecord;
use bytes::Bytes;
use hyperd_agent::protocol::Op;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// What arrives for an export stream.
#[derive(Debug)]
pub(crate) enum ExportEvent {
    Data(Bytes),
    Error(Bytes),
    Done(i32),
}

/// How long an export may take in all.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(600);

/// Unregisters an export stream however the export ends.
struct ExportGuard<'a> {
    pod: &'a Pod,
    stream: u32,
}

impl Drop for ExportGuard<'_> {
    fn drop(&mut self) {
        self.pod.state().exports.remove(&self.stream);
    }
}

impl Engine {
    /// A new image from a running container's changes, named `names` (may be empty).
    pub async fn commit_container(
        &self,
        key: &str,
        info: CommitInfo,
        names: Vec<String>,
        pause: bool,
    ) -> Result<ImageRecord, EngineError> {
        let (pod, c) = self.container(key)?;
        let running = *c.io.state().borrow() == super::io::IoState::Running;
        let vm = pod.vm().filter(|_| running).ok_or_else(|| {
            EngineError::WrongState(format!(
                "container {} is not running: hyperd commits running containers (their \
                 changes live on the VM's scratch disk while it runs)",
                c.name()
            ))
        })?;
        if vm.agent_protocol < 3 {
            return Err(EngineError::WrongState(format!(
                "VM {} runs an older guest agent (protocol {}) that cannot export changes",
                vm.id, vm.agent_protocol
            )));
        }
        let names = names
            .iter()
            .map(|n| crate::image::normalize_reference(n))
            .collect::<Result<Vec<_>, _>>()?;
        let tmp = self.export_diff(&pod, &c, &vm, pause).await?;
        let (images, parent, layer) = (self.images.clone(), c.image.clone(), tmp.clone());
        let result =
            super::blocking(move || Ok(images.commit_layer(&parent, &layer, &info, &names)?)).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        result
    }

    /// A container's changes as a tar file under the image store's temporary directory
    /// (the caller removes it), streamed by the agent of the VM it runs in (its process
    /// may have exited), under the layer size cap and a deadline. With `pause` the
    /// container's processes are stopped while the agent reads.
    pub(crate) async fn export_diff(
        &self,
        pod: &Pod,
        c: &Container,
        vm: &VmRuntime,
        pause: bool,
    ) -> Result<std::path::PathBuf, EngineError> {
        let stream = pod.next_stream.fetch_add(1, Ordering::SeqCst);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        pod.state().exports.insert(stream, tx);
        let _guard = ExportGuard { pod, stream };
        let tmp = self
            .cfg
            .root
            .join("image/tmp")
            .join(format!("diff-{}.tar", crate::ids::random_hex(8)));
        let result = async {
            // The agent's answer and the export's data come over the same channel, data
            // possibly first: the data is taken while the answer is awaited, or a full
            // event queue would hold the answer back (vm::agent).
            let call = vm.agent.call(
                Op::ExportDiff {
                    container: c.id.clone(),
                    stream,
                    pause,
                },
                AGENT_TIMEOUT,
            );
            tokio::pin!(call);
            let mut answered = false;
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(EngineError::io(tmp.display()))?;
            let (mut total, mut errors) = (0u64, Vec::new());
            let deadline = tokio::time::Instant::now() + EXPORT_TIMEOUT;
            loop {
                let ev = tokio::select! {
                    answer = &mut call, if !answered => {
                        answer?;
                        answered = true;
                        continue;
                    }
                    ev = tokio::time::timeout_at(deadline, rx.recv()) => ev,
                };
                let ev = ev.map_err(|_| {
                    EngineError::GuestFailed(format!(
                        "the container's changes did not arrive within {EXPORT_TIMEOUT:?}"
                    ))
                })?;
                match ev {
                    Some(ExportEvent::Data(b)) => {
                        total += b.len() as u64;
                        if total > self.cfg.max_layer_bytes {
                            return Err(EngineError::Invalid(format!(
                                "the container's changes are larger than {} bytes (--max-layer-bytes)",
                                self.cfg.max_layer_bytes
                            )));
                        }
                        file.write_all(&b)
                            .await
                            .map_err(EngineError::io(tmp.display()))?;
                    }
                    Some(ExportEvent::Error(b)) if errors.len() < 4096 => {
                        errors.extend_from_slice(&b[..b.len().min(4096)]);
                    }
                    Some(ExportEvent::Error(_)) => {}
                    Some(ExportEvent::Done(0)) => {
                        if !answered {
                            call.await?;
                        }
                        break;
                    }
                    Some(ExportEvent::Done(code)) => {
                        return Err(EngineError::GuestFailed(format!(
                            "exporting the container's changes failed ({code}): {}",
                            String::from_utf8_lossy(&errors)
                        )))
                    }
                    None => {
                        return Err(EngineError::GuestFailed(
                            "the VM went away during the export".into(),
                        ))
                    }
                }
            }
            file.sync_all()
                .await
                .map_err(EngineError::io(tmp.display()))?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }
}

/// Routes an export stream's event to its waiting commit; whether `stream` is one.
pub(crate) async fn route_export(pod: &Pod, stream: u32, ev: ExportEvent) -> bool {
    let tx = pod.state().exports.get(&stream).cloned();
    match tx {
        Some(tx) => {
            // A commit that gave up has dropped its receiver: the rest is dropped.
            let _ = tx.send(ev).await;
            true
        }
        None => false,
    }
}
