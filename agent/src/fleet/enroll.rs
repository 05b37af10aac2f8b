//! `reactor-agent enroll`: trade a one-time token for the device's fleet identity, and the
//! enrollment file that `run` reads afterwards.
//!
//! The hub's answer (docs/sync-protocol.md, "Enrollment") is checked before anything is
//! written: a valid device id, a broker URL the MQTT client accepts, a 32-byte ed25519 key
//! whose id matches `key_id`. It is stored as `DATA/fleet/enrollment.json`, created with mode
//! 0600 (it holds the MQTT password) and written through a temporary file + rename, so a
//! crash leaves the old file or the new one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use reactor_core::sync::DeviceId;
use reactor_core::sync::bundle::PublicKey;
use serde::{Deserialize, Serialize};

/// The enrollment file, relative to the data folder.
pub const ENROLLMENT_FILE: &str = "fleet/enrollment.json";
/// Largest enrollment answer read from the hub.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What the hub answered to `POST /api/v1/enroll`, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub protocol_version: u16,
    pub device_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub broker: Broker,
    pub bundle_signing_key: SigningKey,
    /// The hub's HTTP address the device enrolled with (added by the agent).
    #[serde(default)]
    pub hub: Option<String>,
}

/// How to reach the fleet's MQTT broker.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broker {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS with rustls).
    pub url: String,
    pub client_id: String,
    pub username: String,
    pub password: String,
    pub topic_prefix: String,
    /// PEM of the CA that signed the broker's certificate (mqtts only; the system roots when
    /// absent). Optional in the hub's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("topic_prefix", &self.topic_prefix)
            .finish_non_exhaustive()
    }
}

/// The fleet's bundle-signing public key, pinned at enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub algorithm: String,
    pub key_id: String,
    pub public_key: String,
}

impl Enrollment {
    /// Checks the answer; returns the pinned key.
    pub fn validate(&self) -> anyhow::Result<PublicKey> {
        if self.protocol_version != reactor_core::sync::PROTOCOL_VERSION {
            bail!(
                "the hub speaks protocol version {}, this agent {}",
                self.protocol_version,
                reactor_core::sync::PROTOCOL_VERSION
            );
        }
        let device = DeviceId::parse(&self.device_id)
            .map_err(|e| anyhow::anyhow!("the hub gave an invalid device id: {e}"))?;
        let expected_prefix = format!("reactor/v1/d/{device}/");
        if self.broker.topic_prefix != expected_prefix {
            bail!(
                "the hub gave topic prefix {:?}, expected {expected_prefix:?}",
                self.broker.topic_prefix
            );
        }
        reactor_core::mqtt::settings::parse_url(&self.broker.url)
            .map_err(|e| anyhow::anyhow!("the hub gave a bad broker url: {e}"))?;
        if self.broker.client_id.is_empty() || self.broker.username.is_empty() {
            bail!("the hub gave no MQTT client id or username");
        }
        if self.bundle_signing_key.algorithm != "ed25519" {
            bail!(
                "unsupported bundle-signing algorithm {:?}",
                self.bundle_signing_key.algorithm
            );
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.bundle_signing_key.public_key.trim())
            .context("the bundle-signing key is not base64")?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("the bundle-signing key is not 32 bytes"))?;
        let key = PublicKey(key);
        let id: String = key.id().0.iter().map(|b| format!("{b:02x}")).collect();
        if !id.eq_ignore_ascii_case(&self.bundle_signing_key.key_id) {
            bail!(
                "the bundle-signing key's id is {id}, the hub said {}",
                self.bundle_signing_key.key_id
            );
        }
        Ok(key)
    }

    /// The device id (validated).
    pub fn device(&self) -> anyhow::Result<DeviceId> {
        DeviceId::parse(&self.device_id).map_err(|e| anyhow::anyhow!("device id: {e}"))
    }

    /// Reads `DATA/fleet/enrollment.json`; `None` when the device is not enrolled.
    pub fn load(data: &Path) -> anyhow::Result<Option<Enrollment>> {
        let path = data.join(ENROLLMENT_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let enrollment: Enrollment = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an enrollment", path.display()))?;
        enrollment
            .validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(Some(enrollment))
    }

    /// Writes the file (0600, atomically).
    pub fn save(&self, data: &Path) -> anyhow::Result<PathBuf> {
        let path = data.join(ENROLLMENT_FILE);
        let dir = path.parent().unwrap_or(data);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(".enrollment.json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(path)
    }
}

/// `POST {hub}/api/v1/enroll {"token": …}`; validates and stores the answer.
pub async fn enroll(hub: &str, token: &str, data: &Path) -> anyhow::Result<Enrollment> {
    let token = token.trim();
    if token.is_empty() || token.len() > 512 {
        bail!("the enrollment token must be 1 to 512 characters");
    }
    let base = hub.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--hub must be the hub's http:// or https:// address, got {hub:?}");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let url = format!("{base}/api/v1/enroll");
    let response = client
        .post(&url)
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let body = response.bytes().await.context("reading the hub's answer")?;
    if body.len() > MAX_ANSWER_BYTES {
        bail!("the hub's answer is larger than {MAX_ANSWER_BYTES} bytes");
    }
    if !status.is_success() {
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("detail")
                    .or_else(|| v.get("title"))
                    .and_then(|d| d.as_str().map(str::to_string))
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        bail!("the hub refused the enrollment ({status}): {detail}");
    }
    let mut enrollment: Enrollment =
        serde_json::from_slice(&body).context("the hub's answer is not an enrollment")?;
    enrollment.validate()?;
    enrollment.hub = Some(base.to_string());
    enrollment.save(data)?;
    Ok(enrollment)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(key: &PublicKey) -> Enrollment {
        Enrollment {
            protocol_version: 1,
            device_id: "pump-1".into(),
            labels: BTreeMap::from([("site".into(), "north".into())]),
            broker: Broker {
                url: "mqtt://127.0.0.1:1883".into(),
                client_id: "pump-1".into(),
                username: "pump-1".into(),
                password: "rd_secret".into(),
                topic_prefix: "reactor/v1/d/pump-1/".into(),
                ca_pem: None,
            },
            bundle_signing_key: SigningKey {
                algorithm: "ed25519".into(),
                key_id: key.id().0.iter().map(|b| format!("{b:02x}")).collect(),
                public_key: base64::engine::general_purpose::STANDARD.encode(key.0),
            },
            hub: None,
        }
    }

    #[test]
    fn answers_are_checked_and_stored_private() {
        let key = PublicKey([7; 32]);
        let good = sample(&key);
        assert_eq!(good.validate().unwrap(), key);
        let mut bad = good.clone();
        bad.device_id = "a/b".into();
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.broker.topic_prefix = "reactor/v1/d/other/".into();
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.bundle_signing_key.key_id = "0000000000000000".into();
        assert!(bad.validate().unwrap_err().to_string().contains("id"));
        let mut bad = good.clone();
        bad.bundle_signing_key.public_key = "AAAA".into();
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.broker.url = "http://x".into();
        assert!(bad.validate().is_err());
        assert!(!format!("{:?}", good.broker).contains("rd_secret"));

        let dir = tempfile::tempdir().unwrap();
        assert!(Enrollment::load(dir.path()).unwrap().is_none());
        let path = good.save(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(Enrollment::load(dir.path()).unwrap(), Some(good));
        std::fs::write(&path, "{").unwrap();
        assert!(Enrollment::load(dir.path()).is_err());
    }
}
