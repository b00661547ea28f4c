//! A QMP client (qemu's JSON control socket) for the four commands hyperd needs: `stop`,
//! `cont`, `quit` and `query-status`. Written here rather than taken from a crate: the
//! protocol is one greeting, `qmp_capabilities`, then one JSON object per line, and
//! hyperd needs no more of it (docs/decisions.md).
use super::VmError;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The longest line hyperd reads from qemu (greetings and answers are a few hundred bytes).
const MAX_LINE: u64 = 64 * 1024;
/// How long one command may take, connection included.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// What `query-status` answers, in the fields hyperd reads.
#[derive(Debug, Deserialize)]
pub(crate) struct QmpStatus {
    pub running: bool,
    pub status: String,
}

/// One QMP session, in command mode.
pub(crate) struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    /// Connects and leaves capabilities negotiation.
    pub(crate) async fn connect(path: &Path) -> Result<Qmp, VmError> {
        let stream = tokio::time::timeout(COMMAND_TIMEOUT, UnixStream::connect(path))
            .await
            .map_err(|_| VmError::Control(format!("{}: connect timed out", path.display())))?
            .map_err(|e| VmError::Control(format!("{}: {e}", path.display())))?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(VmError::Control("qemu sent no QMP greeting".into()));
        }
        qmp.execute("qmp_capabilities").await?;
        Ok(qmp)
    }

    /// Runs a command without arguments and returns its `return` value; events that
    /// arrive meanwhile are skipped.
    pub(crate) async fn execute(&mut self, command: &str) -> Result<serde_json::Value, VmError> {
        let mut line = serde_json::to_vec(&serde_json::json!({ "execute": command }))
            .map_err(|e| VmError::Control(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        tokio::time::timeout(COMMAND_TIMEOUT, async {
            loop {
                let msg = self.read_message().await?;
                if let Some(ret) = msg.get("return") {
                    return Ok(ret.clone());
                }
                if let Some(err) = msg.get("error") {
                    return Err(VmError::Control(format!("qemu {command}: {err}")));
                }
            }
        })
        .await
        .map_err(|_| VmError::Control(format!("qemu did not answer {command}")))?
    }

    pub(crate) async fn query_status(&mut self) -> Result<QmpStatus, VmError> {
        let v = self.execute("query-status").await?;
        serde_json::from_value(v).map_err(|e| VmError::Control(format!("query-status: {e}")))
    }

    async fn read_message(&mut self) -> Result<serde_json::Value, VmError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(VmError::Control("qemu closed its QMP socket".into()));
        }
        if line.len() as u64 > MAX_LINE {
            return Err(VmError::Control("qemu sent an oversized QMP line".into()));
        }
        serde_json::from_slice(&line).map_err(|e| VmError::Control(format!("QMP: {e}")))
    }
}
