//! The signed change: one automerge change plus the signatures that authorise it,
//! and its compact, versioned binary encoding ([`crate::envelope`]).
//!
//! A signature covers a domain-separated message: a context string, the document
//! id, the trust-root version it was made under, and the automerge change hash.
//! The hash commits to the change's bytes, its actor, its dependencies and its
//! operations, so no part of the change can be altered without breaking every
//! signature.

use std::fmt;

use automerge::{ActorId, Change, ChangeHash};
use serde::{Deserialize, Serialize};

use crate::chunk;
use crate::envelope::{self, DecodeError, Format};
use crate::keys::{KeySignature, NodeId, PublicKey, SecretKey};
use crate::root::SignedTrustRoot;

/// Domain separation for change signatures.
const CHANGE_CONTEXT: &[u8] = b"dcloud/change/v2\0";

/// Version byte of the signed-change encoding. Version 2: the automerge actor
/// of every change is its signer's key followed by a per-edit nonce
/// ([`edit_actor`]); version-1 changes (actor = key alone) are refused.
/// Version 3: a change may belong to a region's scoped policy
/// ([`DocId::Region`]); a version-2 reader could not decode such a change,
/// so version-2 changes are refused too.
pub const CHANGE_FORMAT_VERSION: u8 = 3;
/// Magic of a bundle file.
pub const BUNDLE_MAGIC: &[u8; 8] = b"DCBUNDLE";
/// Version byte of the bundle encoding (3: changes of format 3).
pub const BUNDLE_FORMAT_VERSION: u8 = 3;

/// The envelope of a signed change: a version byte, no magic.
const CHANGE_FORMAT: Format = Format {
    what: "signed change",
    magic: b"",
    version: CHANGE_FORMAT_VERSION,
};
/// The envelope of a bundle file.
const BUNDLE_FORMAT: Format = Format {
    what: "bundle",
    magic: BUNDLE_MAGIC,
    version: BUNDLE_FORMAT_VERSION,
};

/// Bytes of the random nonce that follows the signer's key in an actor id.
pub const ACTOR_NONCE_BYTES: usize = 16;
/// Bytes of an actor id: the signer's 32-byte key, then the nonce.
pub const ACTOR_BYTES: usize = 32 + ACTOR_NONCE_BYTES;

/// A fresh automerge actor for one edit (one signing run, one status
/// document) by `signer`: its key followed by a random nonce.
///
/// Why: automerge identifies a change by (actor, sequence number). If the
/// actor were the key alone, two edits by one key on one base would share
/// (actor, seq) and every replica would refuse the second as a fork. With a
/// nonce each edit is its own actor, so any number of them merge; the key
/// prefix keeps authorship checkable, since a replica accepts a change only
/// if a key that signed it is the actor's prefix ([`actor_signer`]).
pub fn edit_actor(signer: &PublicKey) -> ActorId {
    actor_with_nonce(signer, rand::random())
}

/// The actor for `signer` with a given nonce. The nonce must never repeat for
/// one signer (that would fork); only a deterministic simulation, which draws
/// nonces from its seeded generator, should call this directly.
pub fn actor_with_nonce(signer: &PublicKey, nonce: [u8; ACTOR_NONCE_BYTES]) -> ActorId {
    let mut a = Vec::with_capacity(ACTOR_BYTES);
    a.extend_from_slice(&signer.0);
    a.extend_from_slice(&nonce);
    ActorId::from(a.as_slice())
}

/// The signer key an actor id names, or `None` if it is not of the shape
/// [`edit_actor`] makes (key followed by a nonce).
pub fn actor_signer(actor: &[u8]) -> Option<PublicKey> {
    if actor.len() != ACTOR_BYTES {
        return None;
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&actor[..32]);
    Some(PublicKey(k))
}

/// Which document a change belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DocId {
    /// The fleet policy: written only by the authority.
    Policy,
    /// One node's status document in one epoch: written only by that node.
    Status {
        /// The node that owns the document.
        node: NodeId,
        /// The epoch: a fresh document is started past a history bound.
        epoch: u32,
    },
    /// One node's summary document in one epoch: written only by that node,
    /// replicated to the whole fleet when its status is region-scoped (see
    /// [`crate::status::SUMMARY_FIELDS`]): what a remote region may know of
    /// a site (applied policy heads, healthy or not, version, heartbeat),
    /// and nothing else.
    Summary {
        /// The node that owns the document.
        node: NodeId,
        /// The epoch, as for a status document.
        epoch: u32,
    },
    /// One region's scoped policy: config entries for the sites of one
    /// region, written by the authority and held only by the active members
    /// of that region. The fleet policy commits to each of its changes by
    /// hash (`regional/<region>/<hash>`), so a change that the policy does
    /// not commit is never applied, and a rotation that drops a commitment
    /// drops the change with it.
    Region {
        /// The region, by [`RegionId::of`] its name.
        region: RegionId,
    },
}

/// A region, by hash of its name: fixed-size, so that a document id stays
/// small and `Copy`. The name travels in the policy (enrolments and
/// commitments), never in the id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RegionId(pub [u8; 32]);

impl RegionId {
    /// The id of the region named `name`.
    pub fn of(name: &str) -> RegionId {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"dcloud/region/v1\0");
        h.update(name.as_bytes());
        RegionId(h.finalize().into())
    }

    /// The first 8 hex digits.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// The two kinds of single-writer document a node owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnedKind {
    /// [`DocId::Status`].
    Status,
    /// [`DocId::Summary`].
    Summary,
}

impl OwnedKind {
    /// The first byte of [`DocId::to_bytes`] of a document of this kind.
    pub fn prefix(self) -> u8 {
        match self {
            OwnedKind::Status => 1,
            OwnedKind::Summary => 2,
        }
    }

    /// The document of this kind of `node` at `epoch`.
    pub fn doc(self, node: NodeId, epoch: u32) -> DocId {
        match self {
            OwnedKind::Status => DocId::Status { node, epoch },
            OwnedKind::Summary => DocId::Summary { node, epoch },
        }
    }
}

impl DocId {
    /// Whether the authority writes this document (the policy, or a
    /// region's scoped policy): threshold-signed, under a trust root.
    pub fn is_authority(&self) -> bool {
        matches!(self, DocId::Policy | DocId::Region { .. })
    }

    /// The owner, epoch and kind of a node's own document (`None`: the policy).
    pub fn owned(&self) -> Option<(NodeId, u32, OwnedKind)> {
        match *self {
            DocId::Policy | DocId::Region { .. } => None,
            DocId::Status { node, epoch } => Some((node, epoch, OwnedKind::Status)),
            DocId::Summary { node, epoch } => Some((node, epoch, OwnedKind::Summary)),
        }
    }

    /// The canonical bytes that signatures cover.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            DocId::Policy => vec![0],
            DocId::Region { region } => {
                let mut v = Vec::with_capacity(33);
                v.push(3);
                v.extend_from_slice(&region.0);
                v
            }
            DocId::Status { node, epoch } | DocId::Summary { node, epoch } => {
                let kind = if matches!(self, DocId::Status { .. }) {
                    OwnedKind::Status
                } else {
                    OwnedKind::Summary
                };
                let mut v = Vec::with_capacity(37);
                v.push(kind.prefix());
                v.extend_from_slice(&node.0);
                v.extend_from_slice(&epoch.to_be_bytes());
                v
            }
        }
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocId::Policy => f.write_str("policy"),
            DocId::Region { region } => write!(f, "region-policy/{}", region.short()),
            DocId::Status { node, epoch } => write!(f, "status/{}/{}", node.short(), epoch),
            DocId::Summary { node, epoch } => write!(f, "summary/{}/{}", node.short(), epoch),
        }
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Size and count bounds on what a replica accepts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest policy change, raw automerge bytes.
    pub policy_change_size_max_bytes: usize,
    /// Largest status change, raw automerge bytes.
    pub status_change_size_max_bytes: usize,
    /// Most signatures on one change.
    pub signatures_max: usize,
    /// Most changes in one status epoch; the owner starts a new epoch well before.
    pub status_epoch_changes_max: usize,
    /// Most changes waiting for their dependencies.
    pub pending_changes_max: usize,
    /// Most bytes of changes waiting for their dependencies.
    pub pending_bytes_max: usize,
    /// Most status changes of one owner waiting for their dependencies (one
    /// owner cannot push another's out of the buffer).
    pub pending_per_owner_max: usize,
    /// Furthest a status epoch may lie ahead of the one held for its owner
    /// (an owner cannot spend its epoch space in one step).
    pub status_epoch_jump_max: u32,
    /// Largest value in a status field, bytes.
    pub status_value_size_max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            policy_change_size_max_bytes: 4 << 20,
            status_change_size_max_bytes: 16 << 10,
            signatures_max: 16,
            status_epoch_changes_max: 64,
            pending_changes_max: 4096,
            pending_bytes_max: 32 << 20,
            pending_per_owner_max: 64,
            status_epoch_jump_max: 1 << 20,
            status_value_size_max_bytes: 4 << 10,
        }
    }
}

impl Limits {
    /// The largest encoded signed change (any document).
    pub fn encoded_change_size_max_bytes(&self) -> usize {
        self.policy_change_size_max_bytes + self.signatures_max * 100 + 64
    }
}

/// A change with the signatures that authorise it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedChange {
    /// The document it belongs to.
    pub doc: DocId,
    /// The trust-root version the signatures were made under (policy changes; 0 for status).
    pub root_version: u64,
    /// The raw automerge change bytes.
    pub change: Vec<u8>,
    /// The signatures.
    pub sigs: Vec<KeySignature>,
}

impl fmt::Debug for SignedChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SignedChange({}, {} bytes, {} sigs)",
            self.doc,
            self.change.len(),
            self.sigs.len()
        )
    }
}

/// Parse raw automerge change bytes from a stranger.
///
/// [`chunk::inspect`] reads them first, bounded: it refuses anything but one
/// uncompressed change chunk (a compressed chunk inflates without bound), a
/// checksum that is not the change hash's (automerge itself ignores it, so a
/// flipped checksum byte would otherwise yield a second byte string for the same
/// change), and columns that would decode to more than [`chunk::ops_max_for`]
/// ops (at most [`chunk::CHANGE_OPS_MAX`], and no more ops than bytes) or claim
/// strings longer than their bytes. Only then does automerge parse
/// them, so its allocation is bounded by the input and that op bound.
pub fn parse_change(bytes: &[u8]) -> Result<Change, String> {
    let info =
        chunk::inspect_with(bytes, chunk::ops_max_for(bytes.len())).map_err(|e| e.to_string())?;
    let change = Change::from_bytes(bytes.to_vec()).map_err(|e| e.to_string())?;
    if change.hash() != info.hash || change.len() as u64 != info.ops {
        return Err("change chunk inspection disagrees with automerge".into());
    }
    Ok(change)
}

/// An inspection error in the shape [`SignedChange::hash`] and
/// [`SignedChange::cosign`] have always returned.
fn load_error(e: chunk::ChunkError) -> automerge::LoadChangeError {
    automerge::LoadChangeError::Parse(Box::new(e))
}

/// The message a signature on a change covers.
pub fn signing_message(doc: &DocId, root_version: u64, hash: &ChangeHash) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHANGE_CONTEXT.len() + 37 + 8 + 32);
    m.extend_from_slice(CHANGE_CONTEXT);
    m.extend_from_slice(&doc.to_bytes());
    m.extend_from_slice(&root_version.to_be_bytes());
    m.extend_from_slice(&hash.0);
    m
}

impl SignedChange {
    /// Sign an automerge change for `doc` with `key`.
    pub fn sign(doc: DocId, root_version: u64, change: &Change, key: &SecretKey) -> Self {
        let msg = signing_message(&doc, root_version, &change.hash());
        SignedChange {
            doc,
            root_version,
            change: change.raw_bytes().to_vec(),
            sigs: vec![key.sign(&msg)],
        }
    }

    /// Add a signature (a cosigner). Returns false if `key` had already signed.
    pub fn cosign(&mut self, key: &SecretKey) -> Result<bool, automerge::LoadChangeError> {
        let hash = self.hash()?;
        if self.sigs.iter().any(|s| s.key == key.public()) {
            return Ok(false);
        }
        let msg = signing_message(&self.doc, self.root_version, &hash);
        self.sigs.push(key.sign(&msg));
        Ok(true)
    }

    /// The automerge change hash, computed from the raw bytes by
    /// [`chunk::inspect`] (no automerge decoding); an error if they are not an
    /// acceptable change chunk.
    pub fn hash(&self) -> Result<ChangeHash, automerge::LoadChangeError> {
        chunk::change_hash(&self.change).map_err(load_error)
    }

    /// Encode: one version byte, then the fields (postcard).
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(&CHANGE_FORMAT, self)
    }

    /// Decode, refusing input over `max_bytes`.
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Self, DecodeError> {
        envelope::decode(&CHANGE_FORMAT, bytes, max_bytes)
    }
}

/// A file of signed changes, with the trust-root chain they were signed under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Trust roots (so that a node can learn a rotation from the bundle itself).
    pub roots: Vec<SignedTrustRoot>,
    /// The changes.
    pub changes: Vec<SignedChange>,
}

impl Bundle {
    /// Encode: magic, version byte, then the fields (postcard).
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(&BUNDLE_FORMAT, self)
    }

    /// Decode, refusing input over `max_bytes`.
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Self, DecodeError> {
        envelope::decode(&BUNDLE_FORMAT, bytes, max_bytes)
    }
}
