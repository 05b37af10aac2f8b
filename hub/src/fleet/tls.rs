//! TLS on the device endpoint (`serve --mqtt-listen ADDR --mqtt-tls-cert FILE
//! --mqtt-tls-key FILE`): rustls with the ring provider, TLS 1.2 and 1.3, no client
//! certificates (devices authenticate with their credential inside MQTT CONNECT).
//!
//! Enrollment hands devices an `mqtts://` URL and the PEM they should trust
//! ([`TlsFiles::trust_pem`]): the `--mqtt-tls-ca` file when given, else the last certificate
//! of the chain file (the certificate itself when it is self-signed, the issuing CA when the
//! chain file ends with it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The endpoint's certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server certificate first, then its intermediates (and optionally the CA).
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM handed to devices to trust instead of the chain's last certificate.
    pub ca: Option<PathBuf>,
}

/// The device endpoint's TLS acceptor.
#[derive(Clone)]
pub struct Acceptor(pub TlsAcceptor);

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor(rustls)")
    }
}

/// The certificate files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0}: {1}")]
    Pem(PathBuf, String),
    #[error("the certificate and key are not usable together: {0}")]
    Config(#[from] rustls::Error),
}

impl TlsFiles {
    /// The acceptor for device connections.
    pub fn acceptor(&self) -> Result<Acceptor, TlsError> {
        let chain = certificates(&self.cert)?;
        let key_pem = read(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::Pem(self.key.clone(), format!("no private key: {e}")))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        Ok(Acceptor(TlsAcceptor::from(Arc::new(config))))
    }

    /// The PEM devices trust (see the module documentation).
    pub fn trust_pem(&self) -> Result<String, TlsError> {
        if let Some(ca) = &self.ca {
            certificates(ca)?;
            return String::from_utf8(read(ca)?)
                .map_err(|_| TlsError::Pem(ca.clone(), "not UTF-8 text".into()));
        }
        let last = certificates(&self.cert)?
            .pop()
            .ok_or_else(|| TlsError::NoCertificate(self.cert.clone()))?;
        Ok(pem("CERTIFICATE", &last))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read(path.to_path_buf(), e))
}

/// Every certificate of a PEM file (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(path.to_path_buf(), e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(chain)
}

/// DER as PEM text (base64, 64 columns).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
