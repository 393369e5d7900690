//! Bundle and trust-chain files.
//!
//! Outputs are written to a temporary file beside the target and renamed over
//! it, so that a crash never leaves half a bundle, and an input may be rewritten
//! in place (`cosign B --out B`, `root rotate --chain F --out F`).

use std::path::{Path, PathBuf};

use dcloud_crdt::DecodeError;
use dcloud_crdt::root::{decode_chain, encode_chain};
use dcloud_crdt::{Bundle, SignedTrustRoot};

/// Largest bundle file read: a whole policy history fits well within it.
pub const BUNDLE_FILE_SIZE_MAX_BYTES: usize = 256 << 20;

/// Errors reading or writing a bundle or chain file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The content is not what was expected.
    #[error("{path} is not a valid {what}: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// "bundle" or "trust chain".
        what: &'static str,
        /// Why.
        source: DecodeError,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `bytes` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    use std::io::Write;
    let io = |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Read a bundle file.
pub fn read_bundle(path: &Path) -> Result<Bundle, FileError> {
    let bytes = read(path)?;
    Bundle::decode(&bytes, BUNDLE_FILE_SIZE_MAX_BYTES).map_err(|source| FileError::Decode {
        path: path.to_path_buf(),
        what: "bundle",
        source,
    })
}

/// Write a bundle file.
pub fn write_bundle(path: &Path, bundle: &Bundle) -> Result<(), FileError> {
    write_atomic(path, &bundle.encode())
}

/// Read a trust-chain file (not verified here; see [`crate::admin::trust`]).
pub fn read_chain(path: &Path) -> Result<Vec<SignedTrustRoot>, FileError> {
    let bytes = read(path)?;
    decode_chain(&bytes).map_err(|source| FileError::Decode {
        path: path.to_path_buf(),
        what: "trust chain",
        source,
    })
}

/// Write a trust-chain file.
pub fn write_chain(path: &Path, roots: &[SignedTrustRoot]) -> Result<(), FileError> {
    write_atomic(path, &encode_chain(roots))
}
