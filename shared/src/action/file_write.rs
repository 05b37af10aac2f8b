//! The `file.write` action: writes or appends to a file
//!
//! Decisions:
//! - `content`: a string is written as it is; any other value as compact JSON (no newline
//!   added).
//! - Missing parent folders are created (like `mkdir -p`), under the root when one is set.
//! - Replacing (the default) is atomic: the bytes go to a temporary file in the same folder,
//!   which is fsynced and renamed over the target, then the folder is fsynced. Readers see the
//!   old file or the new one, never half of it, even across a power cut. An existing file's
//!   permissions are kept. A rerun after a crash writes the same bytes again: idempotent.
//! - `append: true` opens the file in append mode (creating it) and fsyncs the data. Not
//!   atomic, and **not idempotent**: if the step is re-run after a crash (same idempotency
//!   key), the content may be appended twice.
//! - Output `{path, bytes}`: the path as written in `with:` and the number of bytes written.
//! - Paths follow [`FileConfig`] (optionally confined under a root).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::file_config::FileConfig;
use super::file_config::io_error;
use super::settings::{With, text_or_json};
use super::{Action, ActionContext, ActionError, ActionSpec, Effect, SettingSpec};
use crate::Value;

pub const SPEC: ActionSpec = ActionSpec {
    kind: "file.write",
    description: "writes or appends to a file",
    effect: Effect::SideEffect,
    settings: &[
        SettingSpec {
            name: "path",
            required: true,
            json_type: "string",
            description: "the file to write",
        },
        SettingSpec {
            name: "content",
            required: true,
            json_type: "",
            description: "text; other values are written as JSON",
        },
        SettingSpec {
            name: "append",
            required: false,
            json_type: "boolean",
            description: "append instead of replacing (replacing is atomic; appending is not)",
        },
    ],
};

/// A parsed `file.write` step.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteSettings {
    pub path: String,
    pub content: Vec<u8>,
    pub append: bool,
}

impl WriteSettings {
    pub fn parse(input: &Value) -> Result<Self, ActionError> {
        let with = With::new(&SPEC, input)?;
        Ok(WriteSettings {
            path: with.required_string("path")?.to_string(),
            content: text_or_json(with.required("content")?),
            append: with.bool("append")?.unwrap_or(false),
        })
    }
}

/// Writes (atomically) or appends; returns the number of bytes written.
pub async fn write_file(config: &FileConfig, settings: &WriteSettings) -> Result<u64, ActionError> {
    let kind = SPEC.kind;
    let path = settings.path.as_str();
    let full = config.resolve(kind, path).await?;
    let err = |e: std::io::Error| io_error(kind, path, &e);
    if let Some(parent) = full.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(err)?;
    }
    if settings.append {
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&full)
            .await
            .map_err(err)?;
        file.write_all(&settings.content).await.map_err(err)?;
        file.sync_data().await.map_err(err)?;
    } else {
        replace_atomically(&full, &settings.content)
            .await
            .map_err(err)?;
    }
    Ok(settings.content.len() as u64)
}

/// Temp file in the same folder → fsync → rename → fsync the folder.
async fn replace_atomically(target: &Path, content: &[u8]) -> std::io::Result<()> {
    let folder = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", ulid::Ulid::new()));
    let temp = folder.join(temp_name);

    let result = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await?;
        if let Ok(existing) = tokio::fs::metadata(target).await {
            file.set_permissions(existing.permissions()).await?;
        }
        file.write_all(content).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&temp, target).await
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    result?;
    // Make the rename itself durable. Some platforms cannot fsync a folder; that only weakens
    // durability, so it is not an error.
    if let Ok(dir) = tokio::fs::File::open(&folder).await {
        let _ = dir.sync_all().await;
    }
    Ok(())
}

/// The `file.write` action.
#[derive(Clone, Debug, Default)]
pub struct FileWriteAction {
    config: FileConfig,
}

impl FileWriteAction {
    pub fn new(config: FileConfig) -> Self {
        FileWriteAction { config }
    }
}

#[async_trait]
impl Action for FileWriteAction {
    fn spec(&self) -> &'static ActionSpec {
        &SPEC
    }

    async fn execute(&self, input: Value, _context: &ActionContext) -> Result<Value, ActionError> {
        let settings = WriteSettings::parse(&input)?;
        let bytes = write_file(&self.config, &settings).await?;
        Ok(json!({ "path": settings.path, "bytes": bytes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::test_context;

    async fn run(config: FileConfig, input: Value) -> Result<Value, ActionError> {
        FileWriteAction::new(config)
            .execute(input, &test_context())
            .await
    }

    #[tokio::test]
    async fn writes_strings_raw_and_values_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileConfig::confined(dir.path());
        let out = run(config.clone(), json!({"path": "a.txt", "content": "hi\n"}))
            .await
            .unwrap();
        assert_eq!(out, json!({"path": "a.txt", "bytes": 3}));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.txt")).unwrap(),
            "hi\n"
        );

        run(
            config,
            json!({"path": "b.json", "content": {"x": [1, true]}}),
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("b.json")).unwrap(),
            r#"{"x":[1,true]}"#
        );
    }

    #[tokio::test]
    async fn replaces_atomically_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "old content that is longer").unwrap();
        let config = FileConfig::default();
        run(
            config,
            json!({"path": path.to_str().unwrap(), "content": "new"}),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("a.txt")]);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn keeps_permissions_of_a_replaced_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script.sh");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();
        let settings = WriteSettings {
            path: path.to_str().unwrap().into(),
            content: b"new".to_vec(),
            append: false,
        };
        write_file(&FileConfig::default(), &settings).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o750);
    }

    #[tokio::test]
    async fn appends_and_creates_parent_folders() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileConfig::confined(dir.path());
        for line in ["one\n", "two\n"] {
            let out = run(
                config.clone(),
                json!({"path": "logs/day/x.log", "content": line, "append": true}),
            )
            .await
            .unwrap();
            assert_eq!(out["bytes"], json!(4));
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("logs/day/x.log")).unwrap(),
            "one\ntwo\n"
        );
    }

    #[tokio::test]
    async fn refuses_escapes_and_bad_settings() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileConfig::confined(dir.path());
        let err = run(config.clone(), json!({"path": "../x", "content": "a"}))
            .await
            .unwrap_err();
        assert!(matches!(err, ActionError::Permanent { .. }), "{err}");
        let err = run(config.clone(), json!({"path": "x"})).await.unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("file.write: \"content\" is required")
        );
        let err = run(
            config,
            json!({"path": "x", "content": "a", "append": "yes"}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("file.write: \"append\" must be true or false, not a string")
        );
    }
}
