//! What the trigger and the publisher share about a broker connection: the TLS client
//! configuration, reconnect backoff with jitter, and rate-limited warnings for a link that
//! flaps.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use tokio::time::Instant;

use super::settings::{MqttSettings, Tls};
use crate::action::mqtt_publish::Qos;

/// First reconnect delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a TCP + TLS + CONNECT handshake may take.
pub const CONNECT_TIMEOUT_SECS: u64 = 10;
/// A repeating warning is logged at most once per this window (with a count of the rest).
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Whether `settings`' TLS configuration can work at all (its `ca_file` reads as
/// certificates); plain TCP always can.
pub(super) fn check_tls(settings: &MqttSettings) -> Result<(), String> {
    match &settings.tls {
        Tls::None => Ok(()),
        Tls::Rustls { ca_file } => tls_config(ca_file.as_deref()).map(|_| ()),
    }
}

/// A rustls client config with the ring provider (never the process default, which may not
/// be installed) trusting `ca_file` or the system roots.
pub(super) fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in
                CertificateDer::pem_file_iter(path).map_err(|e| format!("ca_file {path:?}: {e}"))?
            {
                let cert = cert.map_err(|e| format!("ca_file {path:?}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {path:?}: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err("no CA certificates to trust (set ca_file)".into());
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

pub fn to_rumqttc(qos: Qos) -> QoS {
    match qos {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub fn qos_from_u8(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

pub fn qos_number(qos: QoS) -> u8 {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// Exponential reconnect delays with "equal jitter" (half kept, half random), capped.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            next: initial,
            initial,
            max,
        }
    }

    /// The delay before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        base / 2 + base.mul_f64(random_fraction() / 2.0)
    }

    /// After a successful connection.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX)
    }
}

/// A number in [0, 1) from the process's random hasher keys (no `rand` dependency needed for
/// jitter that only has to differ between devices).
fn random_fraction() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Decides whether a repeating warning is logged now: the first one always, then at most one
/// per window, reporting how many were suppressed.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(window: Duration) -> Throttle {
        Throttle {
            window,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last logged one)` when this occurrence should be logged.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.window => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// After recovery: the next failure is logged at once.
    pub fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] < Duration::from_millis(100));
        for d in &delays {
            assert!(*d < Duration::from_secs(1));
        }
        assert!(delays[7] >= Duration::from_millis(500));
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_logs_once_per_window() {
        let mut throttle = Throttle::new(Duration::from_secs(60));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(throttle.allow(), Some(2));
        throttle.reset();
        assert_eq!(throttle.allow(), Some(0));
    }

    #[test]
    fn tls_config_builds_without_a_process_provider() {
        let settings = MqttSettings::from_url("mqtts://localhost", "t").unwrap();
        // The system roots may be absent in a container; either way it must not panic.
        let _ = check_tls(&settings);
    }
}
