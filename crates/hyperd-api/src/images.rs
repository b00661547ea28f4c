//! Image answers: `/images/get` (hyperd's list), `/image/create` and `/image/load`
//! progress, `/auth`.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `GET /images/get`: `repo:tag:id:created:size` lines (`<none>:<none>` for an untagged
/// image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImagesList {
    #[serde(rename = "imagesList")]
    pub images_list: Vec<String>,
}

/// One image line of [`ImagesList`], split.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageLine<'a> {
    pub repo: &'a str,
    pub tag: &'a str,
    pub id: &'a str,
    pub created: &'a str,
    pub size: &'a str,
}

impl ImagesList {
    /// The lines, split (a repository may itself hold colons: `host:port/name`).
    pub fn images(&self) -> impl Iterator<Item = ImageLine<'_>> {
        self.images_list.iter().filter_map(|l| {
            let mut it = l.rsplitn(5, ':');
            let (size, created, id, tag, repo) =
                (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
            Some(ImageLine {
                repo,
                tag,
                id,
                created,
                size,
            })
        })
    }
}

/// `POST /image/create|load` and friends: an image created or named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageNamed {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
}

/// `POST /auth` and `DELETE /auth`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuthReply {
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(
        rename = "IdentityToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub identity_token: Option<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_lines_split_from_the_right() {
        let l = super::ImagesList {
            images_list: vec!["localhost:5000/bb:1:abc:1700000000:42".into()],
        };
        let i = l.images().next().unwrap();
        assert_eq!(
            (i.repo, i.tag, i.id, i.size),
            ("localhost:5000/bb", "1", "abc", "42")
        );
    }
}

/// One line of a pull, push, load or import progress stream (Docker's jsonmessage): a
/// status, a layer's transfer, the pushed manifest (`aux`), or the error that ended it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// A layer's short id, or the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_detail: Option<ProgressDetail>,
    /// The bar as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Free text (`Loaded image: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// What a push stored, or the image a build made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux: Option<Aux>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProgressDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct PushAux {
    pub tag: String,
    pub digest: String,
    pub size: u64,
}

/// The `aux` of a progress message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Aux {
    Push(PushAux),
    Built(BuiltAux),
}

impl Aux {
    /// The pushed manifest's digest.
    pub fn pushed_digest(&self) -> Option<&str> {
        match self {
            Aux::Push(p) => Some(&p.digest),
            Aux::Built(_) => None,
        }
    }
}

/// What a build made: Docker's `{"aux":{"ID":"sha256:..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuiltAux {
    #[serde(rename = "ID")]
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// A build step's exit code, when it failed with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    pub message: String,
}

/// One line of Docker's image removal answer: `{"Untagged": name}` or `{"Deleted": id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum Removed {
    Untagged(String),
    Deleted(String),
}

/// `POST /auth`: a registry login (Docker's `AuthConfig` fields that hyperctl sends).
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Login {
    pub username: String,
    pub password: String,
    pub serveraddress: String,
}

impl std::fmt::Debug for Login {
    /// The password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("serveraddress", &self.serveraddress)
            .finish_non_exhaustive()
    }
}
