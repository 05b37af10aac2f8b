//! The `file.read` action: reads a text file
//!
//! Output `{content}`: the file as UTF-8 text. A file that is not UTF-8, a folder, a missing
//! file or one larger than [`FileConfig::max_read_bytes`] (10 MiB by default) is a permanent
//! error; other I/O failures are retryable. Paths follow [`FileConfig`] (optionally confined
//! under a root).

use async_trait::async_trait;
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::file_config::FileConfig;
use super::file_config::io_error;
use super::settings::With;
use super::{Action, ActionContext, ActionError, ActionSpec, Effect, SettingSpec};
use crate::Value;

pub const SPEC: ActionSpec = ActionSpec {
    kind: "file.read",
    description: "reads a text file",
    effect: Effect::SideEffect,
    settings: &[SettingSpec {
        name: "path",
        required: true,
        json_type: "string",
        description: "the file to read (UTF-8 text)",
    }],
};

/// Reads `path` (as the user wrote it) under `config`'s rules.
pub async fn read_file(config: &FileConfig, path: &str) -> Result<String, ActionError> {
    let kind = SPEC.kind;
    let full = config.resolve(kind, path).await?;
    let file = tokio::fs::File::open(&full)
        .await
        .map_err(|e| io_error(kind, path, &e))?;
    let metadata = file
        .metadata()
        .await
        .map_err(|e| io_error(kind, path, &e))?;
    if metadata.is_dir() {
        return Err(ActionError::permanent(format!(
            "{kind}: {path:?} is a folder, not a file"
        )));
    }
    let max = config.max_read_bytes;
    let too_large = || {
        ActionError::permanent(format!(
            "{kind}: {path:?} is larger than the {max}-byte limit"
        ))
    };
    if metadata.len() > max {
        return Err(too_large());
    }
    // The file may grow between the size check and the read: never read past the limit.
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| io_error(kind, path, &e))?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        ActionError::permanent(format!(
            "{kind}: {path:?} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The `file.read` action.
#[derive(Clone, Debug, Default)]
pub struct FileReadAction {
    config: FileConfig,
}

impl FileReadAction {
    pub fn new(config: FileConfig) -> Self {
        FileReadAction { config }
    }
}

#[async_trait]
impl Action for FileReadAction {
    fn spec(&self) -> &'static ActionSpec {
        &SPEC
    }

    async fn execute(&self, input: Value, _context: &ActionContext) -> Result<Value, ActionError> {
        let with = With::new(&SPEC, &input)?;
        let path = with.required_string("path")?;
        let content = read_file(&self.config, path).await?;
        Ok(json!({ "content": content }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::test_context;

    #[tokio::test]
    async fn reads_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "héllo\n").unwrap();
        let out = FileReadAction::default()
            .execute(json!({"path": path.to_str().unwrap()}), &test_context())
            .await
            .unwrap();
        assert_eq!(out, json!({"content": "héllo\n"}));
    }

    #[tokio::test]
    async fn reads_relative_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), "x").unwrap();
        let config = FileConfig::confined(dir.path());
        assert_eq!(read_file(&config, "sub/a.txt").await.unwrap(), "x");
        let err = read_file(&config, "../a.txt").await.unwrap_err();
        assert!(matches!(err, ActionError::Permanent { .. }));
    }

    #[tokio::test]
    async fn refuses_missing_large_binary_and_folders() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileConfig {
            root: Some(dir.path().to_path_buf()),
            max_read_bytes: 4,
        };
        let err = read_file(&config, "missing.txt").await.unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("file.read: \"missing.txt\" does not exist")
        );

        std::fs::write(dir.path().join("big.txt"), "12345").unwrap();
        let err = read_file(&config, "big.txt").await.unwrap_err();
        assert!(
            err.to_string().contains("larger than the 4-byte limit"),
            "{err}"
        );

        std::fs::write(dir.path().join("bin"), [0xff, 0xfe]).unwrap();
        let err = read_file(&config, "bin").await.unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");

        std::fs::create_dir(dir.path().join("folder")).unwrap();
        let err = read_file(&config, "folder").await.unwrap_err();
        assert!(matches!(err, ActionError::Permanent { .. }), "{err}");
    }

    #[tokio::test]
    async fn path_is_required() {
        let err = FileReadAction::default()
            .execute(json!({"path": 3}), &test_context())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("file.read: \"path\" must be a string, not a number")
        );
    }
}
