//! Keys and identities.
//!
//! A node is identified by its ed25519 public key ([`NodeId`]), which is also the
//! key of its libp2p `PeerId`. Authority keys are the same type. Secret keys live
//! in their own files, written with mode 0600; a key file that others can read is
//! refused, because a node key that leaked lets anyone write that node's status.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// An ed25519 public key: a node's id or an authority key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

/// A node's id: its public key.
pub type NodeId = PublicKey;

/// Errors parsing or using a public key.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not 64 hex digits.
    #[error("not a key: expected 64 hex digits, got {0:?}")]
    NotHex(String),
    /// The bytes are not a point on the curve.
    #[error("key {0} is not a valid ed25519 point")]
    InvalidPoint(String),
    /// The key has small order: any signature "verifies" under it.
    #[error("key {0} is weak (small order) and is refused")]
    Weak(String),
}

impl PublicKey {
    /// The first 8 hex digits: enough to tell keys apart in a table.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// The full id as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key as a dalek verifying key, refusing invalid and weak keys.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        let key =
            VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::InvalidPoint(self.short()))?;
        if key.is_weak() {
            return Err(KeyError::Weak(self.short()));
        }
        Ok(key)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| KeyError::NotHex(s.to_string()))?;
        Ok(PublicKey(out))
    }
}

/// A 64-byte ed25519 signature, serialised as bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignatureBytes(pub [u8; 64]);

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..4]))
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SignatureBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                let arr: [u8; 64] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(SignatureBytes(arr))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// One signature and the key that made it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeySignature {
    /// Who signed.
    pub key: PublicKey,
    /// The signature.
    pub sig: SignatureBytes,
}

/// A secret signing key (node or authority). Never serialised except to its key file.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public().short())
    }
}

/// Errors reading or writing a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Group or others may read the file.
    #[error("key file {path} has mode {mode:o}: others can read it; run `chmod 600 {path}`")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not a dcloud secret key.
    #[error("key file {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Refusing to overwrite an existing key.
    #[error("key file {0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
}

const KEY_FILE_HEADER: &str = "dcloud-secret-key-v1";

impl SecretKey {
    /// A fresh key from the OS random number generator.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// A key from 32 seed bytes (tests and simulations use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// The 32 secret seed bytes (to build the libp2p identity from the same key).
    pub fn seed_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The X25519 secret this key stands for in sealed secrets
    /// ([`crate::secret`]): the ed25519 secret scalar bytes (first half of
    /// SHA-512 of the seed; X25519 clamps them), whose public half is this
    /// key's Edwards point in Montgomery form.
    pub fn x25519_secret(&self) -> [u8; 32] {
        self.0.to_scalar_bytes()
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Sign a message.
    pub fn sign(&self, msg: &[u8]) -> KeySignature {
        KeySignature {
            key: self.public(),
            sig: SignatureBytes(self.0.sign(msg).to_bytes()),
        }
    }

    /// Write to `path` with mode 0600, refusing to overwrite an existing file.
    pub fn write_file(&self, path: &Path) -> Result<(), KeyFileError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            return Err(KeyFileError::Exists(path.to_path_buf()));
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let text = format!(
            "{KEY_FILE_HEADER}\n{}\npublic {}\n",
            hex::encode(self.0.to_bytes()),
            self.public()
        );
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(())
    }

    /// Read a key file, refusing one that group or others can read, or that is malformed.
    pub fn read_file(path: &Path) -> Result<Self, KeyFileError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let malformed = |reason: &str| KeyFileError::Malformed {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(malformed("first line is not `dcloud-secret-key-v1`"));
        }
        let hexline = lines.next().ok_or_else(|| malformed("no key line"))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hexline.trim(), &mut seed)
            .map_err(|_| malformed("the key line is not 64 hex digits"))?;
        let key = SecretKey::from_seed(seed);
        if let Some(pubs) = lines.next().and_then(|l| l.strip_prefix("public "))
            && pubs.trim() != key.public().to_hex()
        {
            return Err(malformed(
                "the public key line does not match the secret key",
            ));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_file_roundtrip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = SecretKey::from_seed([7; 32]);
        key.write_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SecretKey::read_file(&path).unwrap().public(), key.public());
        assert!(matches!(
            key.write_file(&path),
            Err(KeyFileError::Exists(_))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SecretKey::read_file(&path),
            Err(KeyFileError::InsecurePermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        for body in ["", "dcloud-secret-key-v1\nzz\n", "other\n00\n"] {
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(matches!(
                SecretKey::read_file(&path),
                Err(KeyFileError::Malformed { .. })
            ));
        }
    }

    #[test]
    fn ids_print_and_parse() {
        let key = SecretKey::from_seed([1; 32]).public();
        let text = key.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(key.short(), &text[..8]);
        assert_eq!(text.parse::<PublicKey>().unwrap(), key);
        assert!("xyz".parse::<PublicKey>().is_err());
    }
}
