//! Where `file.read` and `file.write` may go, shared by both.
//!
//! Without a root (the agent's default) a path is used as written; a relative one is relative
//! to the runtime's working directory. With a root (the hub), every path is relative to the
//! root: an absolute path must already lie under it, `..` is refused outright, and the nearest
//! existing ancestor is resolved through symlinks and must still lie under the root, so a link
//! inside the root cannot lead out of it.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::ActionError;

/// Settings of the file actions.
#[derive(Clone, Debug)]
pub struct FileConfig {
    /// Confine every path under this folder.
    pub root: Option<PathBuf>,
    /// `file.read` refuses larger files (default 10 MiB).
    pub max_read_bytes: u64,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            root: None,
            max_read_bytes: 10 * 1024 * 1024,
        }
    }
}

impl FileConfig {
    /// Confines paths under `root`.
    pub fn confined(root: impl Into<PathBuf>) -> Self {
        FileConfig {
            root: Some(root.into()),
            ..FileConfig::default()
        }
    }

    /// The path to open for `path` as a user wrote it.
    pub(crate) async fn resolve(&self, kind: &str, path: &str) -> Result<PathBuf, ActionError> {
        if path.is_empty() {
            return Err(ActionError::permanent(format!(
                "{kind}: \"path\" must not be empty"
            )));
        }
        if path.contains('\0') {
            return Err(ActionError::permanent(format!(
                "{kind}: \"path\" must not contain NUL"
            )));
        }
        let Some(root) = &self.root else {
            return Ok(PathBuf::from(path));
        };
        let outside = || {
            ActionError::permanent(format!(
                "{kind}: path {path:?} is outside the allowed folder {}",
                root.display()
            ))
        };
        let given = Path::new(path);
        if given
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(ActionError::permanent(format!(
                "{kind}: path {path:?} must not contain \"..\""
            )));
        }
        let relative = if given.is_absolute() {
            given.strip_prefix(root).map_err(|_| outside())?
        } else {
            given
        };
        let full = root.join(relative);
        let canonical_root = tokio::fs::canonicalize(root).await.map_err(|e| {
            ActionError::permanent(format!(
                "{kind}: the allowed folder {} is not usable: {e}",
                root.display()
            ))
        })?;
        // The deepest part of the path that exists decides where the rest will land.
        let mut existing = full.as_path();
        let resolved = loop {
            match tokio::fs::canonicalize(existing).await {
                Ok(resolved) => break resolved,
                Err(e) if e.kind() == io::ErrorKind::NotFound => match existing.parent() {
                    Some(parent) => existing = parent,
                    None => return Err(outside()),
                },
                Err(e) => return Err(io_error(kind, path, &e)),
            }
        };
        if !resolved.starts_with(&canonical_root) {
            return Err(outside());
        }
        Ok(full)
    }
}

/// An I/O failure: permanent when the path itself is the problem, retryable otherwise
/// (a full disk or a flaky mount may recover).
pub(crate) fn io_error(kind: &str, path: &str, error: &io::Error) -> ActionError {
    use io::ErrorKind::*;
    let message = match error.kind() {
        NotFound => format!("{kind}: {path:?} does not exist"),
        PermissionDenied => format!("{kind}: permission denied for {path:?}"),
        _ => format!("{kind}: {path:?}: {error}"),
    };
    match error.kind() {
        NotFound | PermissionDenied | InvalidInput | InvalidData | IsADirectory | NotADirectory
        | AlreadyExists | ReadOnlyFilesystem | InvalidFilename => ActionError::permanent(message),
        _ => ActionError::retryable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unconfined_paths_are_used_as_written() {
        let config = FileConfig::default();
        assert_eq!(
            config.resolve("file.read", "a/../b").await.unwrap(),
            PathBuf::from("a/../b")
        );
    }

    #[tokio::test]
    async fn confined_paths_stay_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileConfig::confined(dir.path());
        assert_eq!(
            config.resolve("file.write", "x/y.txt").await.unwrap(),
            dir.path().join("x/y.txt")
        );
        let inside = dir.path().join("z.txt");
        assert_eq!(
            config
                .resolve("file.write", inside.to_str().unwrap())
                .await
                .unwrap(),
            inside
        );
        let err = config.resolve("file.write", "../escape").await.unwrap_err();
        assert!(err.to_string().contains("must not contain \"..\""), "{err}");
        let err = config
            .resolve("file.write", "/etc/passwd")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("outside the allowed folder"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlinks_cannot_lead_out() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("link")).unwrap();
        let config = FileConfig::confined(root.path());
        let err = config
            .resolve("file.write", "link/new.txt")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("outside the allowed folder"),
            "{err}"
        );
    }
}
