//! The trust root: a versioned, threshold-signed list of authority keys.
//!
//! It moves like TUF's root metadata. Version 1 is the anchor an operator
//! installs; it must be signed by a threshold of its own keys. Version N+1 is
//! accepted only if it is signed by a threshold of version N's keys *and* by a
//! threshold of its own, and only if its version is exactly N+1. Each key counts
//! once however often it is listed or signs. Older or equal versions are refused,
//! so a root can never be rolled back.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, DecodeError, Format};
use crate::keys::{KeySignature, PublicKey};
use crate::verify::{SignatureError, distinct_signers, verify_all};

const ROOT_CONTEXT: &[u8] = b"dcloud/root/v2\0";

/// Version byte of a trust-chain file ([`encode_chain`]). Version 2 added the
/// grandfathered heads and the timestamp keys; a version-1 file is refused.
pub const CHAIN_FORMAT_VERSION: u8 = 2;
/// Largest trust-chain file read.
pub const CHAIN_SIZE_MAX_BYTES: usize = 1 << 20;
/// The envelope of a trust-chain file: a version byte, no magic.
const CHAIN_FORMAT: Format = Format {
    what: "trust chain",
    magic: b"",
    version: CHAIN_FORMAT_VERSION,
};
/// Most grandfathered heads one rotation may record.
pub const GRANDFATHERED_HEADS_MAX: usize = 1024;

/// Most keys one root may list.
pub const ROOT_KEYS_MAX: usize = 64;
/// Most signatures on one root.
pub const ROOT_SIGNATURES_MAX: usize = 64;

/// The content of a trust root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRoot {
    /// Starts at 1; each rotation adds exactly one.
    pub version: u64,
    /// How many distinct authority keys must sign a policy change.
    pub threshold: u32,
    /// The authority keys.
    pub keys: Vec<PublicKey>,
    /// Rotation revokes: the policy heads (automerge change hashes) this root
    /// grandfathers. Once a node holds this root, a policy change signed under
    /// an older version is accepted only if it is one of these heads or one of
    /// their ancestors; every other old-version change is refused, naming this
    /// rotation. Empty for the anchor (v1) and for a rotation made before any
    /// policy existed.
    pub grandfathered_heads: Vec<[u8; 32]>,
    /// Timestamp keys: online, low-value keys that may sign only freshness
    /// statements ("the newest policy is H, valid until T"), never policy.
    pub timestamp_keys: Vec<PublicKey>,
    /// How many distinct timestamp keys a freshness statement needs; 0 when
    /// `timestamp_keys` is empty (freshness is then not checked).
    pub timestamp_threshold: u32,
}

/// A trust root with its signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTrustRoot {
    /// The root.
    pub root: TrustRoot,
    /// Signatures over [`TrustRoot::signing_message`].
    pub sigs: Vec<KeySignature>,
}

/// Why a trust root was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    /// Threshold zero, more than the distinct keys, or too many keys.
    #[error("trust root v{version} is malformed: {reason}")]
    Malformed {
        /// The root's version.
        version: u64,
        /// What is wrong.
        reason: String,
    },
    /// The version is not exactly one more than the root in force.
    #[error("trust root v{got} does not follow v{current} (expected v{})", current + 1)]
    NotNext {
        /// The version in force.
        current: u64,
        /// The version offered.
        got: u64,
    },
    /// Older than or equal to the root in force: a rollback.
    #[error("trust root v{got} is not newer than v{current} in force (rollback refused)")]
    Rollback {
        /// The version in force.
        current: u64,
        /// The version offered.
        got: u64,
    },
    /// Not enough distinct valid signatures from the named key set.
    #[error("trust root v{version} has {got} valid signatures from {by} keys, needs {needed}")]
    Threshold {
        /// The root's version.
        version: u64,
        /// Whose keys: "its own" or "v{N}'s".
        by: String,
        /// Distinct valid signatures found.
        got: usize,
        /// Threshold.
        needed: usize,
    },
    /// A signature is invalid.
    #[error("trust root v{version}: {source}")]
    Signature {
        /// The root's version.
        version: u64,
        /// The bad signature.
        source: SignatureError,
    },
    /// The anchor (first root) is not version 1... unless a whole chain is given.
    #[error("trust chain is empty")]
    EmptyChain,
    /// A root of a version this node already holds, with different content:
    /// either a tampered copy or a second root signed for one version.
    #[error(
        "trust root v{version} differs from the v{version} this node holds (a tampered or conflicting copy); refused"
    )]
    Conflict {
        /// The version.
        version: u64,
    },
}

impl TrustRoot {
    /// The bytes signatures cover.
    pub fn signing_message(&self) -> Vec<u8> {
        let mut m = ROOT_CONTEXT.to_vec();
        postcard::to_io(self, &mut m).expect("writing to a Vec cannot fail");
        m
    }

    /// The distinct keys, in first-listed order.
    pub fn distinct_keys(&self) -> Vec<PublicKey> {
        dedup_keys(&self.keys)
    }

    fn check_shape(&self) -> Result<(), RootError> {
        let malformed = |reason: String| RootError::Malformed {
            version: self.version,
            reason,
        };
        if self.version == 0 {
            return Err(malformed("version 0; versions start at 1".into()));
        }
        if self.keys.len() > ROOT_KEYS_MAX {
            return Err(malformed(format!("more than {ROOT_KEYS_MAX} keys")));
        }
        let distinct = self.distinct_keys().len();
        if self.threshold == 0 || self.threshold as usize > distinct {
            return Err(malformed(format!(
                "threshold {} with {distinct} distinct keys",
                self.threshold
            )));
        }
        for k in self.keys.iter().chain(&self.timestamp_keys) {
            k.verifying_key().map_err(|e| malformed(e.to_string()))?;
        }
        if self.grandfathered_heads.len() > GRANDFATHERED_HEADS_MAX {
            return Err(malformed(format!(
                "more than {GRANDFATHERED_HEADS_MAX} grandfathered heads"
            )));
        }
        if self.version == 1 && !self.grandfathered_heads.is_empty() {
            return Err(malformed("the anchor (v1) cannot grandfather heads".into()));
        }
        if self.timestamp_keys.len() > ROOT_KEYS_MAX {
            return Err(malformed(format!(
                "more than {ROOT_KEYS_MAX} timestamp keys"
            )));
        }
        if self.timestamp_keys.iter().any(|k| self.keys.contains(k)) {
            return Err(malformed(
                "a timestamp key is also an authority key; they must differ".into(),
            ));
        }
        let ts_distinct = dedup_keys(&self.timestamp_keys).len();
        if (ts_distinct == 0) != (self.timestamp_threshold == 0)
            || self.timestamp_threshold as usize > ts_distinct
        {
            return Err(malformed(format!(
                "timestamp threshold {} with {ts_distinct} distinct timestamp keys",
                self.timestamp_threshold
            )));
        }
        Ok(())
    }
}

/// `keys` without repeats, in first-listed order.
fn dedup_keys(keys: &[PublicKey]) -> Vec<PublicKey> {
    let mut out: Vec<PublicKey> = Vec::new();
    for k in keys {
        if !out.contains(k) {
            out.push(*k);
        }
    }
    out
}

impl SignedTrustRoot {
    /// Sign a root with several keys (the admin tool; tests).
    pub fn sign(root: TrustRoot, keys: &[&crate::keys::SecretKey]) -> Self {
        let msg = root.signing_message();
        SignedTrustRoot {
            sigs: keys.iter().map(|k| k.sign(&msg)).collect(),
            root,
        }
    }

    /// Add a signature.
    pub fn add_signature(&mut self, key: &crate::keys::SecretKey) {
        if !self.sigs.iter().any(|s| s.key == key.public()) {
            self.sigs.push(key.sign(&self.root.signing_message()));
        }
    }

    /// Check that every signature verifies (a copy of a held root whose
    /// signatures were tampered with is refused, not silently ignored).
    pub fn check_signatures(&self) -> Result<(), RootError> {
        self.valid_signers().map(|_| ())
    }

    /// The distinct keys whose signatures verify. A bad signature is an error:
    /// a tampered root is refused outright, not silently counted down.
    fn valid_signers(&self) -> Result<Vec<PublicKey>, RootError> {
        if self.sigs.len() > ROOT_SIGNATURES_MAX {
            return Err(RootError::Malformed {
                version: self.root.version,
                reason: format!("more than {ROOT_SIGNATURES_MAX} signatures"),
            });
        }
        verify_all(&self.root.signing_message(), &self.sigs).map_err(|source| {
            RootError::Signature {
                version: self.root.version,
                source,
            }
        })?;
        Ok(self.sigs.iter().map(|s| s.key).collect())
    }

    fn check_threshold(
        &self,
        signers: &[PublicKey],
        by: &TrustRoot,
        by_name: String,
    ) -> Result<(), RootError> {
        let got = distinct_signers(signers.iter(), &by.keys);
        if got < by.threshold as usize {
            return Err(RootError::Threshold {
                version: self.root.version,
                by: by_name,
                got,
                needed: by.threshold as usize,
            });
        }
        Ok(())
    }
}

/// The chain of trust roots a node holds, from its anchor to the root in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustChain {
    roots: Vec<SignedTrustRoot>,
}

impl TrustChain {
    /// Verify a chain from its first root (the anchor, trusted because the
    /// operator installed it, and checked to be signed by a threshold of its own keys)
    /// through each rotation.
    pub fn from_roots(roots: Vec<SignedTrustRoot>) -> Result<Self, RootError> {
        let mut iter = roots.into_iter();
        let anchor = iter.next().ok_or(RootError::EmptyChain)?;
        anchor.root.check_shape()?;
        let signers = anchor.valid_signers()?;
        anchor.check_threshold(&signers, &anchor.root, "its own".into())?;
        let mut chain = TrustChain {
            roots: vec![anchor],
        };
        for r in iter {
            chain.advance(r)?;
        }
        Ok(chain)
    }

    /// Accept the next root. Refuses anything but exactly version N+1 signed by a
    /// threshold of N's keys and a threshold of its own.
    pub fn advance(&mut self, next: SignedTrustRoot) -> Result<(), RootError> {
        let current = self.current();
        if next.root.version <= current.version {
            return Err(RootError::Rollback {
                current: current.version,
                got: next.root.version,
            });
        }
        if next.root.version != current.version + 1 {
            return Err(RootError::NotNext {
                current: current.version,
                got: next.root.version,
            });
        }
        next.root.check_shape()?;
        let signers = next.valid_signers()?;
        next.check_threshold(&signers, current, format!("v{}'s", current.version))?;
        next.check_threshold(&signers, &next.root, "its own".into())?;
        self.roots.push(next);
        Ok(())
    }

    /// The root in force.
    pub fn current(&self) -> &TrustRoot {
        &self.roots.last().expect("a chain is never empty").root
    }

    /// The root of a given version, if this chain holds it.
    pub fn get(&self, version: u64) -> Option<&TrustRoot> {
        let first = self.roots[0].root.version;
        let idx = version.checked_sub(first)? as usize;
        self.roots.get(idx).map(|r| &r.root)
    }

    /// Every signed root, oldest first.
    pub fn roots(&self) -> &[SignedTrustRoot] {
        &self.roots
    }
}

/// Encode a chain for a file: a version byte, then postcard.
pub fn encode_chain(roots: &[SignedTrustRoot]) -> Vec<u8> {
    envelope::encode(&CHAIN_FORMAT, roots)
}

/// Decode a chain written by [`encode_chain`], refusing a file over
/// [`CHAIN_SIZE_MAX_BYTES`].
pub fn decode_chain(bytes: &[u8]) -> Result<Vec<SignedTrustRoot>, DecodeError> {
    envelope::decode(&CHAIN_FORMAT, bytes, CHAIN_SIZE_MAX_BYTES)
}
