//! The trust root, as the authority manages it.
//!
//! `root init` writes version 1, listing the authority keys and the threshold,
//! signed by a threshold of its own keys. `root rotate` appends version N+1,
//! which nodes accept only if it is signed by a threshold of version N's keys
//! *and* a threshold of its own (see [`dcloud_crdt::root`]). Admins who hold
//! their keys on different machines pass the chain file around and add their
//! signatures with `root cosign`; until the last root has enough, the file is
//! *incomplete*, and the tool says how many signatures are still missing.

use std::path::Path;

use dcloud_crdt::root::{GRANDFATHERED_HEADS_MAX, RootError};
use dcloud_crdt::verify::verify_one;
use dcloud_crdt::{ChangeHash, PublicKey, SecretKey, SignedTrustRoot, TrustChain, TrustRoot};

use crate::admin::base::{Base, BaseError};
use crate::admin::files::{self, FileError};

/// Errors managing the trust root.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The chain file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The chain (or the root being made) does not verify.
    #[error("{0}")]
    Root(#[from] RootError),
    /// The policy snapshot the rotation keeps does not fit the chain file.
    #[error(transparent)]
    Base(#[from] BaseError),
    /// The chain file holds no root.
    #[error("the trust chain file holds no root")]
    Empty,
    /// A signing key that the root cannot count.
    #[error(
        "key {key} is not an authority key of trust root v{version} (nor of the root before it); its signature would not count"
    )]
    NotAuthority {
        /// The key (short).
        key: String,
        /// The root version.
        version: u64,
    },
    /// Rotating a chain whose last root is not yet fully signed.
    #[error(
        "trust root v{version} is not fully signed yet ({missing}); cosign it first (`dcloud-admin root cosign`)"
    )]
    Incomplete {
        /// The incomplete root.
        version: u64,
        /// What is missing.
        missing: String,
    },
    /// No signing key was given.
    #[error("no signing key given (--key FILE)")]
    NoSigner,
    /// The policy snapshot a rotation keeps has too many heads to record.
    #[error(
        "the policy snapshot has {0} heads, more than the {GRANDFATHERED_HEADS_MAX} a rotation can grandfather; publish any edit made against it first (it depends on every head and merges them), then take the snapshot again"
    )]
    TooManyHeads(usize),
    /// The snapshot's trust chain is already past the chain file's.
    #[error(
        "the policy snapshot already holds trust root v{held}, newer than your chain file's v{file}; get the current chain file before rotating"
    )]
    ChainBehind {
        /// The version the snapshot holds.
        held: u64,
        /// The last version of the chain file.
        file: u64,
    },
}

/// How far a trust root is from being accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootProgress {
    /// The root's version.
    pub version: u64,
    /// Distinct valid signatures by its own keys.
    pub own_got: usize,
    /// Its own threshold.
    pub own_needed: usize,
    /// For a rotation: (previous version, distinct valid signatures by its keys, its threshold).
    pub previous: Option<(u64, usize, usize)>,
    /// Keys that signed (valid signatures only).
    pub signers: Vec<PublicKey>,
}

impl RootProgress {
    /// Signed by enough keys to be accepted.
    pub fn complete(&self) -> bool {
        self.own_got >= self.own_needed
            && self.previous.is_none_or(|(_, got, needed)| got >= needed)
    }

    /// What is missing, in words ("" when complete).
    pub fn missing(&self) -> String {
        let mut parts = Vec::new();
        if self.own_got < self.own_needed {
            parts.push(format!(
                "{} more signature(s) from v{}'s own keys ({} of {})",
                self.own_needed - self.own_got,
                self.version,
                self.own_got,
                self.own_needed
            ));
        }
        if let Some((v, got, needed)) = self.previous
            && got < needed
        {
            parts.push(format!(
                "{} more signature(s) from v{v}'s keys ({got} of {needed})",
                needed - got
            ));
        }
        parts.join(" and ")
    }
}

impl std::fmt::Display for RootProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let signers: Vec<String> = self.signers.iter().map(|k| k.short()).collect();
        write!(
            f,
            "trust root v{}: signed by [{}]; {} of {} own",
            self.version,
            signers.join(", "),
            self.own_got,
            self.own_needed
        )?;
        if let Some((v, got, needed)) = self.previous {
            write!(f, ", {got} of {needed} from v{v}")?;
        }
        if self.complete() {
            f.write_str(": complete")
        } else {
            write!(f, ": INCOMPLETE, needs {}", self.missing())
        }
    }
}

/// Count the distinct keys of `of` among the valid signatures of `root`.
fn count(valid: &[PublicKey], of: &TrustRoot) -> usize {
    let keys = of.distinct_keys();
    valid.iter().filter(|k| keys.contains(k)).count()
}

/// How far `root` is from being accepted after `previous` (None for version 1).
pub fn progress(previous: Option<&TrustRoot>, root: &SignedTrustRoot) -> RootProgress {
    let msg = root.root.signing_message();
    let mut valid: Vec<PublicKey> = Vec::new();
    for s in &root.sigs {
        if verify_one(&msg, s).is_ok() && !valid.contains(&s.key) {
            valid.push(s.key);
        }
    }
    RootProgress {
        version: root.root.version,
        own_got: count(&valid, &root.root),
        own_needed: root.root.threshold as usize,
        previous: previous.map(|p| (p.version, count(&valid, p), p.threshold as usize)),
        signers: valid,
    }
}

/// A chain file: every root but possibly the last verifies as a chain; the last
/// may still be collecting signatures.
#[derive(Clone, Debug)]
pub struct ChainFile {
    /// Every root in the file.
    pub roots: Vec<SignedTrustRoot>,
}

impl ChainFile {
    /// Read a chain file.
    pub fn read(path: &Path) -> Result<Self, TrustError> {
        let roots = files::read_chain(path)?;
        if roots.is_empty() {
            return Err(TrustError::Empty);
        }
        Ok(ChainFile { roots })
    }

    /// Write it.
    pub fn write(&self, path: &Path) -> Result<(), TrustError> {
        files::write_chain(path, &self.roots)?;
        Ok(())
    }

    /// The progress of the last root.
    pub fn last_progress(&self) -> RootProgress {
        let n = self.roots.len();
        let prev = (n >= 2).then(|| &self.roots[n - 2].root);
        progress(prev, &self.roots[n - 1])
    }

    /// The verified chain: every root, the last one included, must be fully signed.
    pub fn verified(&self) -> Result<TrustChain, TrustError> {
        let last = self.last_progress();
        if !last.complete() {
            return Err(TrustError::Incomplete {
                version: last.version,
                missing: last.missing(),
            });
        }
        Ok(TrustChain::from_roots(self.roots.clone())?)
    }

    /// Add `key`'s signature to the last root.
    pub fn cosign(&mut self, key: &SecretKey) -> Result<RootProgress, TrustError> {
        let n = self.roots.len();
        if n >= 2 {
            TrustChain::from_roots(self.roots[..n - 1].to_vec())?;
        }
        let version = self.roots[n - 1].root.version;
        let public = key.public();
        let counts = self.roots[n - 1].root.keys.contains(&public)
            || (n >= 2 && self.roots[n - 2].root.keys.contains(&public));
        if !counts {
            return Err(TrustError::NotAuthority {
                key: public.short(),
                version,
            });
        }
        self.roots[n - 1].add_signature(key);
        Ok(self.last_progress())
    }
}

/// Make trust root version 1: the keys of `signers` plus `others` (public keys of
/// admins who will cosign), with `threshold`, signed by every signer.
pub fn init(
    signers: &[SecretKey],
    others: &[PublicKey],
    threshold: u32,
) -> Result<(ChainFile, RootProgress), TrustError> {
    if signers.is_empty() {
        return Err(TrustError::NoSigner);
    }
    let mut keys: Vec<PublicKey> = signers.iter().map(|k| k.public()).collect();
    keys.extend_from_slice(others);
    let mut distinct: Vec<PublicKey> = Vec::new();
    for k in keys {
        if !distinct.contains(&k) {
            distinct.push(k);
        }
    }
    let root = TrustRoot {
        version: 1,
        threshold,
        keys: distinct,
        ..Default::default()
    };
    let refs: Vec<&SecretKey> = signers.iter().collect();
    let signed = SignedTrustRoot::sign(root, &refs);
    check_shape(&signed)?;
    let file = ChainFile {
        roots: vec![signed],
    };
    let p = file.last_progress();
    Ok((file, p))
}

/// Append version N+1 with `keys` and `threshold`, signed by `signers` (each
/// must be a key of version N or of N+1), grandfathering `grandfathered`: the
/// policy heads it keeps. Once a node holds N+1, a policy change signed under
/// version N or older is accepted only if it is one of these heads or one of
/// their ancestors, so they must be the heads of the whole policy (see
/// [`dcloud_crdt::TrustRoot::grandfathered_heads`]).
pub fn rotate(
    file: &mut ChainFile,
    keys: &[PublicKey],
    threshold: u32,
    signers: &[SecretKey],
    grandfathered: &[ChangeHash],
) -> Result<RootProgress, TrustError> {
    if signers.is_empty() {
        return Err(TrustError::NoSigner);
    }
    let chain = file.verified()?;
    let current = chain.current().clone();
    let mut distinct: Vec<PublicKey> = Vec::new();
    for k in keys {
        if !distinct.contains(k) {
            distinct.push(*k);
        }
    }
    let mut heads: Vec<[u8; 32]> = grandfathered.iter().map(|h| h.0).collect();
    heads.sort();
    heads.dedup();
    if heads.len() > GRANDFATHERED_HEADS_MAX {
        return Err(TrustError::TooManyHeads(heads.len()));
    }
    let next = TrustRoot {
        version: current.version + 1,
        threshold,
        keys: distinct,
        grandfathered_heads: heads,
        ..Default::default()
    };
    for s in signers {
        let p = s.public();
        if !next.keys.contains(&p) && !current.keys.contains(&p) {
            return Err(TrustError::NotAuthority {
                key: p.short(),
                version: next.version,
            });
        }
    }
    let refs: Vec<&SecretKey> = signers.iter().collect();
    let signed = SignedTrustRoot::sign(next, &refs);
    check_shape(&signed)?;
    file.roots.push(signed);
    Ok(file.last_progress())
}

/// The policy heads a rotation of `file` keeps: those of `base`, a verified
/// snapshot of the whole policy, whose trust chain must be the chain file's
/// (or a prefix of it: a rotation not yet published).
pub fn kept_heads(file: &ChainFile, base: &Base) -> Result<Vec<ChangeHash>, TrustError> {
    let own = file.verified()?;
    base.signing_chain(Some(&own))?;
    let held = base.chain().current().version;
    let last = own.current().version;
    if held > last {
        return Err(TrustError::ChainBehind { held, file: last });
    }
    Ok(base.heads())
}

/// Refuse a malformed root (threshold zero or above the key count, bad keys)
/// at once, rather than after the other admins have cosigned it.
fn check_shape(root: &SignedTrustRoot) -> Result<(), TrustError> {
    let r = &root.root;
    let distinct = r.distinct_keys().len();
    if r.threshold == 0 || r.threshold as usize > distinct {
        return Err(RootError::Malformed {
            version: r.version,
            reason: format!(
                "threshold {} with {distinct} distinct key(s); it must be 1 to {distinct}",
                r.threshold
            ),
        }
        .into());
    }
    for k in &r.keys {
        k.verifying_key().map_err(|e| RootError::Malformed {
            version: r.version,
            reason: e.to_string(),
        })?;
    }
    Ok(())
}
