//! The newest trust chain, kept durably outside the replica store.
//!
//! The store can be moved aside (damage), deleted by an operator, or restored
//! from an old backup, and a site can be started with an old `--trust-root`
//! file. None of that may lower the trust root a node has accepted: otherwise
//! anyone holding a threshold of a rotated-out root's keys could race it. So
//! every advance of the chain is written to `<data_dir>/trust-chain` (write a
//! temporary file, fsync it, rename it into place, fsync the directory), beside
//! the `status-epoch` file, and at start the chain in force is the newest of
//! the `--trust-root` file, this file and the store, all of which must agree
//! on every version they share.

use std::io::Write;
use std::path::{Path, PathBuf};

use dcloud_crdt::root::{decode_chain, encode_chain};
use dcloud_crdt::{SignedTrustRoot, TrustChain};

/// Errors of the trust-chain file.
#[derive(Debug, thiserror::Error)]
pub enum TrustFileError {
    /// The file could not be read or written.
    #[error("trust-chain file {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// The file does not decode or verify: the operator must look (guessing
    /// an older root would open the rollback this file exists to prevent).
    #[error(
        "trust-chain file {path} is damaged ({reason}); restore it from a backup, or copy the newest trust chain there"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Two sources name different roots for one version.
    #[error(
        "trust root v{version} of {source_name} differs from the v{version} this node already holds; refusing to start (a tampered or conflicting chain)"
    )]
    Conflict {
        /// The version.
        version: u64,
        /// Which source disagreed.
        source_name: String,
    },
}

/// The durable record of the newest trust chain a node has accepted.
pub struct TrustFile {
    path: PathBuf,
    held: Option<Vec<SignedTrustRoot>>,
}

impl TrustFile {
    /// Read `path` (nothing held when it does not exist).
    pub fn open(path: &Path) -> Result<Self, TrustFileError> {
        let held = match std::fs::read(path) {
            Ok(bytes) => {
                let damaged = |reason: String| TrustFileError::Damaged {
                    path: path.to_path_buf(),
                    reason,
                };
                let roots = decode_chain(&bytes).map_err(|e| damaged(e.to_string()))?;
                TrustChain::from_roots(roots.clone()).map_err(|e| damaged(e.to_string()))?;
                Some(roots)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(TrustFileError::Io {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        Ok(TrustFile {
            path: path.to_path_buf(),
            held,
        })
    }

    /// Newest version recorded (0 when none).
    pub fn version(&self) -> u64 {
        self.held
            .as_ref()
            .and_then(|r| r.last())
            .map_or(0, |r| r.root.version)
    }

    /// Bring `chain` up to what this file holds: every version both hold must
    /// be the same root, and the file's newer roots advance the chain.
    pub fn raise_chain(&self, chain: &mut TrustChain) -> Result<(), TrustFileError> {
        let Some(roots) = &self.held else {
            return Ok(());
        };
        merge_roots(chain, roots, &self.path.display().to_string())
    }

    /// Record `chain` if it is newer than what the file holds, durably.
    pub fn record(&mut self, chain: &TrustChain) -> Result<(), TrustFileError> {
        if chain.current().version <= self.version() {
            return Ok(());
        }
        let io = |e: std::io::Error| TrustFileError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&encode_chain(chain.roots())).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        self.held = Some(chain.roots().to_vec());
        Ok(())
    }
}

/// Check that `roots` agree with `chain` on every shared version, and advance
/// `chain` with the newer ones.
pub fn merge_roots(
    chain: &mut TrustChain,
    roots: &[SignedTrustRoot],
    source_name: &str,
) -> Result<(), TrustFileError> {
    for r in roots {
        let v = r.root.version;
        match chain.get(v) {
            Some(held) if *held == r.root => {}
            Some(_) => {
                return Err(TrustFileError::Conflict {
                    version: v,
                    source_name: source_name.to_string(),
                });
            }
            None if v > chain.current().version => {
                chain
                    .advance(r.clone())
                    .map_err(|e| TrustFileError::Damaged {
                        path: PathBuf::from(source_name),
                        reason: e.to_string(),
                    })?;
            }
            // Older than the anchor in force: not needed.
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcloud_crdt::{SecretKey, TrustRoot};

    fn chain_of(n: u64) -> (TrustChain, Vec<SignedTrustRoot>) {
        let keys: Vec<SecretKey> = (0..=n)
            .map(|i| SecretKey::from_seed([i as u8 + 1; 32]))
            .collect();
        let mut roots = Vec::new();
        for v in 1..=n {
            let k = &keys[v as usize];
            let root = TrustRoot {
                version: v,
                threshold: 1,
                keys: vec![k.public()],
                ..Default::default()
            };
            let signers: Vec<&SecretKey> = if v == 1 {
                vec![k]
            } else {
                vec![&keys[v as usize - 1], k]
            };
            roots.push(SignedTrustRoot::sign(root, &signers));
        }
        (TrustChain::from_roots(roots.clone()).unwrap(), roots)
    }

    #[test]
    fn recorded_chain_survives_and_raises_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("trust-chain");
        let (v3, roots) = chain_of(3);
        let mut f = TrustFile::open(&p).unwrap();
        assert_eq!(f.version(), 0);
        f.record(&v3).unwrap();
        let f = TrustFile::open(&p).unwrap();
        assert_eq!(f.version(), 3);
        let mut old = TrustChain::from_roots(roots[..1].to_vec()).unwrap();
        f.raise_chain(&mut old).unwrap();
        assert_eq!(old.current().version, 3);
        // A conflicting v2 is refused, naming the version.
        let other = SecretKey::from_seed([99; 32]);
        let bad = SignedTrustRoot::sign(
            TrustRoot {
                version: 2,
                threshold: 1,
                keys: vec![other.public()],
                ..Default::default()
            },
            &[&SecretKey::from_seed([2; 32]), &other],
        );
        let mut c = TrustChain::from_roots(roots[..1].to_vec()).unwrap();
        c.advance(bad).unwrap();
        assert!(matches!(
            f.raise_chain(&mut c),
            Err(TrustFileError::Conflict { version: 2, .. })
        ));
        // A damaged file is an error, never "nothing held".
        std::fs::write(&p, b"\x02garbage").unwrap();
        assert!(matches!(
            TrustFile::open(&p),
            Err(TrustFileError::Damaged { .. })
        ));
    }
}
