//! The engine's wire format: one version byte, then a postcard-encoded
//! [`Message`]. Everything decoded from a peer is bounded (message size, ids per
//! announcement, ranges per reconciliation step, heads per document) and every
//! failure is a typed [`WireError`]; decoding never panics.

use dcloud_crdt::envelope::{self, DecodeError, Format};
use dcloud_crdt::{ChangeHash, DocId, NodeId, SignedChange, SignedRumour, SignedTrustRoot};
use serde::{Deserialize, Serialize};

/// Version byte of the engine protocol. A peer speaking another version is
/// refused with [`WireError::UnknownVersion`].
/// Version 2 added [`Message::Freshness`]; version 3 added membership
/// ([`Message::Probe`], [`Message::Ack`], [`Message::Rumours`]); in version 4
/// rumours go down the PlumTree trees, and [`Message::IHave`] and
/// [`Message::Graft`] name rumours too ([`rumour_short_id`]); version 5
/// carries summary documents ([`dcloud_crdt::DocId::Summary`], region
/// scoping), which a version-4 node could not decode; version 6 carries a
/// region's scoped policy ([`dcloud_crdt::DocId::Region`], change format 3).
pub const WIRE_VERSION: u8 = 6;

/// The engine message envelope: no magic, the version byte, postcard.
const WIRE_FORMAT: Format = Format {
    what: "engine message",
    magic: b"",
    version: WIRE_VERSION,
};

/// One change, named compactly: its document and automerge hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChangeId {
    /// The document.
    pub doc: DocId,
    /// The automerge change hash.
    pub hash: [u8; 32],
}

impl ChangeId {
    /// The id of a change with hash `hash` in `doc`.
    pub fn new(doc: DocId, hash: ChangeHash) -> Self {
        ChangeId { doc, hash: hash.0 }
    }

    /// The automerge hash.
    pub fn change_hash(&self) -> ChangeHash {
        ChangeHash(self.hash)
    }
}

/// Why a batch of changes is sent; it decides how the receiver treats duplicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Push {
    /// Eager push along the dissemination tree: a duplicate means the link is
    /// redundant, and the receiver prunes it.
    Eager,
    /// An answer to a graft or to reconciliation: duplicates are a race, not redundancy.
    Reply,
}

/// A short change id for announcements and grafts: the first 8 bytes of the
/// automerge hash. Announcements are for recent changes, which both sides
/// remember by short id; a collision costs a wasted graft, never safety (what
/// arrives is verified), and anti-entropy repairs what it hides.
/// (Fixed 8 bytes on the wire: a varint of a random u64 takes 10.)
pub type ShortId = [u8; 8];

/// The short id of a membership rumour: the first 8 bytes of
/// [`dcloud_crdt::Rumour::id`] (what it says, not its signature). Rumours and
/// changes share announcements and grafts; a collision between them costs a
/// wasted graft, as between changes.
pub fn rumour_short_id(r: &SignedRumour) -> ShortId {
    let mut b = [0u8; 8];
    b.copy_from_slice(&r.rumour.id()[..8]);
    b
}

/// The short id of a change hash.
pub fn short_id(hash: &ChangeHash) -> ShortId {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash.0[..8]);
    b
}

/// One key range of the reconciliation index, split into `parts.len()`
/// near-equal sub-ranges (see `split`), with each sub-range's entry count and
/// fingerprint (XOR of its entries' fingerprints, folded to 64 bits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// First key (inclusive).
    pub lo: u64,
    /// Last key (inclusive).
    pub hi: u64,
    /// (count, fingerprint) of each sub-range, in key order.
    pub parts: Vec<(u32, u64)>,
}

/// One document as held: its id (with the status epoch) and sorted heads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The document, with its epoch.
    pub doc: DocId,
    /// Its heads, sorted.
    pub heads: Vec<[u8; 32]>,
}

/// Every document of one key range, sent when the range is small.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeItems {
    /// First key (inclusive).
    pub lo: u64,
    /// Last key (inclusive).
    pub hi: u64,
    /// The sender's documents in the range.
    pub items: Vec<Item>,
    /// Whether the receiver should answer with its own items if it holds
    /// something the sender lacks (false on an answer, so that it ends).
    pub reply: bool,
}

/// A message of the engine protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Signed changes (deps first).
    Changes {
        /// Eager push or answer.
        push: Push,
        /// The changes.
        changes: Vec<SignedChange>,
    },
    /// Lazy announcement: the sender holds these (recent) changes.
    IHave {
        /// Short ids.
        ids: Vec<ShortId>,
    },
    /// Send me these changes, and push eagerly to me from now on.
    Graft {
        /// Short ids.
        ids: Vec<ShortId>,
    },
    /// Stop pushing status changes of these owners eagerly to me; announce
    /// them lazily instead (one dissemination tree per owner).
    Prune {
        /// Owners of the status documents.
        origins: Vec<NodeId>,
    },
    /// Send me what I lack of these documents, given my heads (asked when a
    /// change from the receiver arrived without its dependencies).
    Want {
        /// The documents with the sender's heads (empty: it holds none).
        items: Vec<Item>,
    },
    /// Trust roots (the receiver's chain is older than the sender's).
    Roots {
        /// The chain, oldest first.
        roots: Vec<SignedTrustRoot>,
    },
    /// A step of range-based set reconciliation over (document, heads).
    Sync {
        /// The sender's trust-root version in force.
        root_version: u64,
        /// Depth of this step (bounded, so that a session ends).
        depth: u8,
        /// Ranges whose fingerprints the receiver compares with its own.
        splits: Vec<Split>,
        /// Ranges small enough to list.
        items: Vec<RangeItems>,
    },
    /// A signed freshness statement (the timestamp role): the sender's newest
    /// valid one. The bytes are a [`dcloud_crdt::SignedFreshness`] in its own
    /// versioned encoding, decoded and verified by the receiver.
    Freshness {
        /// [`dcloud_crdt::SignedFreshness::encode`].
        statement: Vec<u8>,
    },
    /// Membership: are you there? (answered with [`Message::Ack`]).
    Probe {
        /// Echoed in the answer.
        seq: u32,
    },
    /// Membership: the answer to [`Message::Probe`].
    Ack {
        /// The probe's.
        seq: u32,
    },
    /// Membership rumours (suspicions and refutations), each signed.
    Rumours {
        /// The rumours.
        rumours: Vec<SignedRumour>,
    },
}

impl Message {
    /// The message's kind, for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Changes {
                push: Push::Eager, ..
            } => "changes-eager",
            Message::Changes { .. } => "changes-reply",
            Message::IHave { .. } => "ihave",
            Message::Graft { .. } => "graft",
            Message::Prune { .. } => "prune",
            Message::Want { .. } => "want",
            Message::Roots { .. } => "roots",
            Message::Sync { .. } => "sync",
            Message::Freshness { .. } => "freshness",
            Message::Probe { .. } => "probe",
            Message::Ack { .. } => "ack",
            Message::Rumours { .. } => "rumours",
        }
    }
}

/// Bounds applied when decoding a message from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WireLimits {
    /// Largest message.
    pub message_size_max_bytes: usize,
    /// Most changes in one message.
    pub changes_per_message_max: usize,
    /// Most ids in one announcement or graft.
    pub ids_per_message_max: usize,
    /// Most ranges (fingerprints plus item lists) in one reconciliation step.
    pub ranges_per_message_max: usize,
    /// Most items in one message.
    pub items_per_message_max: usize,
    /// Most heads of one document.
    pub heads_per_doc_max: usize,
    /// Most trust roots in one message.
    pub roots_per_message_max: usize,
    /// Most membership rumours in one message.
    pub rumours_per_message_max: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            message_size_max_bytes: 8 << 20,
            changes_per_message_max: 1024,
            ids_per_message_max: 1024,
            ranges_per_message_max: 256,
            items_per_message_max: 4096,
            heads_per_doc_max: 64,
            roots_per_message_max: 64,
            rumours_per_message_max: 256,
        }
    }
}

/// Why bytes from a peer are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Zero bytes.
    #[error("empty message")]
    Empty,
    /// The version byte is not one this build speaks.
    #[error("unknown protocol version {0} (this node speaks {WIRE_VERSION})")]
    UnknownVersion(u8),
    /// Over the size bound.
    #[error("message is {size} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// Postcard could not decode the body, or bytes trail it.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A list longer than its bound.
    #[error("{what}: {count} entries, over the limit of {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A split into no parts, or into more parts than the range has keys.
    #[error("range {lo:#x}..={hi:#x} cannot be split into {parts} parts")]
    BadSplit {
        /// First key.
        lo: u64,
        /// Last key.
        hi: u64,
        /// Parts.
        parts: usize,
    },
    /// A range whose first key is after its last.
    #[error("range {lo:#x}..={hi:#x} is empty")]
    BadRange {
        /// First key.
        lo: u64,
        /// Last key.
        hi: u64,
    },
}

impl Message {
    /// Encode: the version byte, then postcard (an envelope with no magic,
    /// [`dcloud_crdt::envelope`]).
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(&WIRE_FORMAT, self)
    }

    /// Decode bytes from a peer, enforcing `limits`: the envelope's checks
    /// (size first, then version, postcard, trailing bytes), then every
    /// list's bound.
    pub fn decode(bytes: &[u8], limits: &WireLimits) -> Result<Message, WireError> {
        let msg: Message = envelope::decode(&WIRE_FORMAT, bytes, limits.message_size_max_bytes)
            .map_err(|e| match e {
                DecodeError::TooLarge { size, max, .. } => WireError::TooLarge { size, max },
                DecodeError::Empty | DecodeError::BadMagic { .. } => WireError::Empty,
                DecodeError::UnknownVersion { found, .. } => WireError::UnknownVersion(found),
                DecodeError::Malformed(why) => WireError::Malformed(why),
            })?;
        msg.check(limits)?;
        Ok(msg)
    }

    fn check(&self, l: &WireLimits) -> Result<(), WireError> {
        fn bound(what: &'static str, count: usize, max: usize) -> Result<(), WireError> {
            if count > max {
                Err(WireError::TooMany { what, count, max })
            } else {
                Ok(())
            }
        }
        fn range(lo: u64, hi: u64) -> Result<(), WireError> {
            if lo > hi {
                Err(WireError::BadRange { lo, hi })
            } else {
                Ok(())
            }
        }
        match self {
            Message::Changes { changes, .. } => {
                bound("changes", changes.len(), l.changes_per_message_max)
            }
            Message::IHave { ids } | Message::Graft { ids } => {
                bound("ids", ids.len(), l.ids_per_message_max)
            }
            Message::Prune { origins } => bound("origins", origins.len(), l.ids_per_message_max),
            Message::Want { items } => {
                bound("items", items.len(), l.items_per_message_max)?;
                for it in items {
                    bound("heads", it.heads.len(), l.heads_per_doc_max)?;
                }
                Ok(())
            }
            Message::Roots { roots } => bound("roots", roots.len(), l.roots_per_message_max),
            Message::Probe { .. } | Message::Ack { .. } => Ok(()),
            Message::Rumours { rumours } => {
                bound("rumours", rumours.len(), l.rumours_per_message_max)
            }
            Message::Freshness { statement } => bound(
                "freshness statement bytes",
                statement.len(),
                dcloud_crdt::freshness::FRESHNESS_SIZE_MAX_BYTES,
            ),
            Message::Sync { splits, items, .. } => {
                let parts: usize = splits.iter().map(|s| s.parts.len()).sum();
                bound("ranges", parts + items.len(), l.ranges_per_message_max)?;
                let mut total = 0;
                for r in splits {
                    range(r.lo, r.hi)?;
                    if r.parts.is_empty() || (r.parts.len() as u128) > (r.hi - r.lo) as u128 + 1 {
                        return Err(WireError::BadSplit {
                            lo: r.lo,
                            hi: r.hi,
                            parts: r.parts.len(),
                        });
                    }
                }
                for r in items {
                    range(r.lo, r.hi)?;
                    total += r.items.len();
                    for it in &r.items {
                        bound("heads", it.heads.len(), l.heads_per_doc_max)?;
                    }
                }
                bound("items", total, l.items_per_message_max)
            }
        }
    }
}
