//! The key that encrypts secrets: from `REACTOR_SECRET_KEY` (base64 of 32 bytes) or from the
//! key file `DATA/secret.key`, created with mode 0600 at first use.
//!
//! The key is never in the database: a copy of the database alone reveals nothing. A key
//! file readable by group or others is refused (the hub does not start) rather than
//! silently tightened: someone may already have read it. Losing the key loses the secrets;
//! back it up with the data folder's other private files, apart from database backups.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

/// The environment variable holding the key (base64 of 32 bytes).
pub const KEY_ENV: &str = "REACTOR_SECRET_KEY";
/// The key file's name inside the data folder.
pub const KEY_FILE: &str = "secret.key";
/// Key length in bytes (XChaCha20-Poly1305).
pub const KEY_LEN: usize = 32;

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("{KEY_ENV} must be the base64 of {KEY_LEN} bytes ({0})")]
    BadEnv(String),
    #[error("the key file {path} must be the base64 of {KEY_LEN} bytes ({reason})")]
    BadFile { path: PathBuf, reason: String },
    #[error(
        "the key file {path} has mode {mode:o}: group and others must have no access; run `chmod 600 {path}` after checking nobody else read it"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("cannot read or create the key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the system random generator failed")]
    Random,
}

/// A 32-byte secret key. `Debug` prints `***`.
#[derive(Clone)]
pub struct SecretKey(pub(crate) [u8; KEY_LEN]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(SecretKey(bytes))
    }

    /// Decodes base64 text (standard alphabet, padding optional, surrounding space ignored).
    pub fn from_base64(text: &str) -> Result<SecretKey, String> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|e| format!("not base64: {e}"))?;
        let bytes: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("{} bytes", b.len()))?;
        Ok(SecretKey(bytes))
    }

    /// The key as base64 text.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// The key from `REACTOR_SECRET_KEY` if set, else from (or a new) `DATA/secret.key`.
    pub fn load(data_dir: &Path) -> Result<SecretKey, KeyError> {
        match std::env::var(KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                SecretKey::from_base64(&text).map_err(KeyError::BadEnv)
            }
            _ => SecretKey::from_file(&data_dir.join(KEY_FILE)),
        }
    }

    /// Reads the key file, creating it (0600, a fresh key) when it does not exist.
    pub fn from_file(path: &Path) -> Result<SecretKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                check_mode(path)?;
                SecretKey::from_base64(&text).map_err(|reason| KeyError::BadFile {
                    path: path.to_path_buf(),
                    reason,
                })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                let key = SecretKey::generate()?;
                match create_private(path) {
                    Ok(mut file) => {
                        file.write_all(key.to_base64().as_bytes()).map_err(io)?;
                        file.write_all(b"\n").map_err(io)?;
                        file.sync_all().map_err(io)?;
                        Ok(key)
                    }
                    // Another process created it first: use theirs.
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                        SecretKey::from_file(path)
                    }
                    Err(error) => Err(io(error)),
                }
            }
            Err(error) => Err(io(error)),
        }
    }
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path) -> Result<(), KeyError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(KEY_FILE);
        let first = SecretKey::from_file(&path).unwrap();
        let second = SecretKey::from_file(&path).unwrap();
        assert_eq!(first.0, second.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        SecretKey::from_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = SecretKey::from_file(&path).unwrap_err();
        assert!(
            matches!(error, KeyError::TooOpen { mode: 0o644, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }

    #[test]
    fn base64_round_trip_and_bad_lengths() {
        let key = SecretKey::generate().unwrap();
        assert_eq!(SecretKey::from_base64(&key.to_base64()).unwrap().0, key.0);
        assert_eq!(
            SecretKey::from_base64("AAAA").unwrap_err(),
            "3 bytes".to_string()
        );
        assert!(
            SecretKey::from_base64("!!")
                .unwrap_err()
                .starts_with("not base64")
        );
        assert_eq!(format!("{key:?}"), "SecretKey(***)");
    }
}
