//! Container and exec requests and answers: `/container/info`, `/container/create`,
//! `/container/rename`, `/container/commit`, `/exec/create`.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `GET /container/info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInfo {
    pub name: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(rename = "podID")]
    pub pod_id: String,
    pub image: String,
    #[serde(rename = "imageID")]
    pub image_id: String,
    pub commands: Vec<String>,
    pub working_dir: String,
    pub env: Vec<String>,
    pub user: String,
    pub tty: bool,
    pub restart_count: u32,
    pub status: ContainerState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerState {
    /// `pending`, `running`, `succeeded` or `failed`.
    pub phase: String,
    pub running: crate::pods::Running,
    pub terminated: crate::pods::Terminated,
}

/// `POST /container/create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerCreated {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "PodID")]
    pub pod_id: String,
}

/// The optional body of `POST /container/commit` (and Docker's `POST /commit`): config
/// fields the new image takes instead of the container's image's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct CommitConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// `POST /container/rename`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Renamed {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
}

/// `POST /exec/create`: hyperd's field names, or Docker's (`Container`, `Cmd`, `Tty`,
/// `Env`, `WorkingDir`, `User`). The command may also be a JSON-encoded array or a shell
/// line, as hyperd's older clients sent it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecCreate {
    #[serde(alias = "Container")]
    pub container: String,
    #[serde(default, alias = "Cmd")]
    pub command: ExecCommand,
    #[serde(default, alias = "Tty")]
    pub tty: bool,
    #[serde(default, alias = "Env")]
    pub env: Vec<String>,
    #[serde(default, alias = "WorkingDir")]
    pub workdir: String,
    #[serde(default, alias = "User")]
    pub user: String,
}

/// An exec's command: an argument list, or one string (a JSON array, else a shell line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ExecCommand {
    Args(Vec<String>),
    Line(String),
}

impl Default for ExecCommand {
    fn default() -> Self {
        ExecCommand::Args(Vec::new())
    }
}

impl ExecCommand {
    /// The argument list: a line that holds a JSON array is that array, any other line
    /// runs under `/bin/sh -c`.
    pub fn into_args(self) -> Vec<String> {
        match self {
            ExecCommand::Args(a) => a,
            ExecCommand::Line(s) => serde_json::from_str::<Vec<String>>(&s)
                .unwrap_or_else(|_| vec!["/bin/sh".into(), "-c".into(), s]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_create_takes_both_spellings_and_every_command_form() {
        let a: ExecCreate =
            serde_json::from_str(r#"{"container":"c","command":["ls","-l"],"tty":true}"#).unwrap();
        assert_eq!(a.command.clone().into_args(), ["ls", "-l"]);
        assert!(a.tty);
        let b: ExecCreate =
            serde_json::from_str(r#"{"Container":"c","Cmd":["id"],"Env":["A=1"]}"#).unwrap();
        assert_eq!((b.container.as_str(), b.env.len()), ("c", 1));
        let c: ExecCreate =
            serde_json::from_str(r#"{"container":"c","command":"[\"echo\",\"x\"]"}"#).unwrap();
        assert_eq!(c.command.into_args(), ["echo", "x"]);
        let d: ExecCreate =
            serde_json::from_str(r#"{"container":"c","command":"echo $HOME"}"#).unwrap();
        assert_eq!(d.command.into_args(), ["/bin/sh", "-c", "echo $HOME"]);
        assert!(serde_json::from_str::<ExecCreate>(r#"{"command":["x"]}"#).is_err());
    }
}
