//! Where an active workflow came from.

use std::path::PathBuf;

/// The source of an active workflow's text. Two installs of the same name from different
/// origins replace each other; which origin wins a conflict is the caller's policy (the agent:
/// a file beats an embedded workflow).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// A file in a watched workflows folder.
    File(PathBuf),
    /// Compiled into the binary; the name is the embedded file's name.
    Embedded(String),
    /// Deployed through an API (the hub's, or a device's local one); the text names the
    /// deployment (user, request or deployment id) for logs and listings.
    Api(String),
    /// Read from a database of workflows (the hub); the text is the row's key.
    Database(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Embedded(name) => write!(f, "embedded:{name}"),
            Origin::Api(by) => write!(f, "api:{by}"),
            Origin::Database(key) => write!(f, "db:{key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_display_with_their_kind() {
        assert_eq!(Origin::File("/w/a.yaml".into()).to_string(), "/w/a.yaml");
        assert_eq!(
            Origin::Embedded("info.yaml".into()).to_string(),
            "embedded:info.yaml"
        );
        assert_eq!(Origin::Api("deploy-7".into()).to_string(), "api:deploy-7");
        assert_eq!(Origin::Database("w/3".into()).to_string(), "db:w/3");
    }
}
