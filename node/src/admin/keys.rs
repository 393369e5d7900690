//! Key files and public-key arguments.
//!
//! A secret key lives in its own file (mode 0600, see
//! [`dcloud_crdt::SecretKey::write_file`]); `keygen` writes the public key
//! beside it as `FILE.pub`, so that it can be handed to the other admins and
//! listed in a trust root without touching the secret.

use std::path::{Path, PathBuf};

use dcloud_crdt::keys::KeyFileError;
use dcloud_crdt::{PublicKey, SecretKey};

/// Errors of `keygen`.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// The secret key file could not be written (it exists, or the directory is not writable).
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The public key file could not be written.
    #[error("public key file {path}: {source}")]
    PublicFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Why a public-key argument was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyArgError {
    /// Neither 64 hex digits nor a readable key file.
    #[error(
        "{0:?} is neither a public key (64 hex digits) nor a key file (secret key or FILE.pub)"
    )]
    Unrecognised(String),
    /// The argument named a secret key file that could not be read.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The hex is not a usable ed25519 key.
    #[error(transparent)]
    Key(#[from] dcloud_crdt::keys::KeyError),
}

/// The path of the public key file written beside a secret key file.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Generate a key, write it to `path` (0600, never overwriting) and its public
/// key to `path.pub`. Returns the public key.
pub fn keygen(path: &Path) -> Result<PublicKey, KeygenError> {
    let key = SecretKey::generate();
    let public = key.public();
    let pub_path = public_path(path);
    if pub_path.exists() {
        return Err(KeyFileError::Exists(pub_path).into());
    }
    key.write_file(path)?;
    std::fs::write(&pub_path, format!("{public}\n")).map_err(|source| KeygenError::PublicFile {
        path: pub_path.clone(),
        source,
    })?;
    tracing::info!(key = %public.short(), path = %path.display(), "generated key");
    Ok(public)
}

/// Read a secret key file (refusing one that others can read).
pub fn read_secret(path: &Path) -> Result<SecretKey, KeyFileError> {
    SecretKey::read_file(path)
}

/// A public key from an argument: 64 hex digits, a `FILE.pub` holding them, or
/// a secret key file (its public half is taken).
pub fn parse_public(arg: &str) -> Result<PublicKey, KeyArgError> {
    let checked = |k: PublicKey| -> Result<PublicKey, KeyArgError> {
        k.verifying_key()?;
        Ok(k)
    };
    if let Ok(k) = arg.parse::<PublicKey>() {
        return checked(k);
    }
    let path = Path::new(arg);
    if !path.is_file() {
        return Err(KeyArgError::Unrecognised(arg.to_string()));
    }
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(k) = text.trim().parse::<PublicKey>() {
            return checked(k);
        }
        if text.starts_with("dcloud-secret-key-v1") {
            return Ok(read_secret(path)?.public());
        }
    }
    Err(KeyArgError::Unrecognised(arg.to_string()))
}
