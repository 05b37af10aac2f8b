//! Sealing secret values: XChaCha20-Poly1305 with a random 24-byte nonce per value and the
//! secret's name bound as associated data.
//!
//! Binding the name means a ciphertext copied to another row (someone with write access to
//! the database swapping `SLACK_TOKEN` for `DEBUG_ECHO`) fails to open instead of handing one
//! secret's value to a workflow that reads another. The associated data is versioned
//! (`reactor-secret/v1/NAME`) so a later format can change it.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ring::rand::{SecureRandom, SystemRandom};

use super::key::SecretKey;

/// Nonce length (XChaCha20).
pub const NONCE_LEN: usize = 24;

/// A sealed value as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Sealing or opening failed. Says which secret, never its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CipherError {
    #[error("the system random generator failed")]
    Random,
    #[error("encrypting secret {0:?} failed")]
    Seal(String),
    #[error(
        "secret {0:?} cannot be decrypted with this key (was REACTOR_SECRET_KEY or the data folder's secret.key changed, or the row altered?)"
    )]
    Open(String),
    #[error("secret {0:?} decrypts to text that is not UTF-8")]
    NotText(String),
}

/// Seals and opens secret values with one key.
pub struct Cipher {
    aead: XChaCha20Poly1305,
    random: SystemRandom,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(***)")
    }
}

fn associated_data(name: &str) -> Vec<u8> {
    format!("reactor-secret/v1/{name}").into_bytes()
}

impl Cipher {
    pub fn new(key: &SecretKey) -> Cipher {
        Cipher {
            aead: XChaCha20Poly1305::new(&key.0.into()),
            random: SystemRandom::new(),
        }
    }

    /// Encrypts `value` for the secret `name`.
    pub fn seal(&self, name: &str, value: &str) -> Result<Sealed, CipherError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| CipherError::Random)?;
        let aad = associated_data(name);
        let ciphertext = self
            .aead
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| CipherError::Seal(name.to_string()))?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Decrypts the secret `name`.
    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<String, CipherError> {
        let nonce: [u8; NONCE_LEN] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| CipherError::Open(name.to_string()))?;
        let aad = associated_data(name);
        let plain = self
            .aead
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CipherError::Open(name.to_string()))?;
        String::from_utf8(plain).map_err(|_| CipherError::NotText(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_fresh_nonces() {
        let cipher = Cipher::new(&SecretKey::generate().unwrap());
        let a = cipher.seal("TOKEN", "hunter2").unwrap();
        let b = cipher.seal("TOKEN", "hunter2").unwrap();
        assert_ne!(a.nonce, b.nonce, "a nonce per value");
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(cipher.open("TOKEN", &a).unwrap(), "hunter2");
    }

    #[test]
    fn another_name_or_key_or_a_flipped_bit_fails() {
        let cipher = Cipher::new(&SecretKey::generate().unwrap());
        let sealed = cipher.seal("A", "value").unwrap();
        assert_eq!(
            cipher.open("B", &sealed).unwrap_err(),
            CipherError::Open("B".into())
        );
        let other = Cipher::new(&SecretKey::generate().unwrap());
        assert!(other.open("A", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(cipher.open("A", &flipped).is_err());
        let short = Sealed {
            nonce: vec![0; 3],
            ciphertext: sealed.ciphertext,
        };
        assert!(cipher.open("A", &short).is_err());
    }
}
