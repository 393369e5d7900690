//! The replica: every document a node holds, and the one door bytes from a
//! stranger come in by, [`Replica::ingest`].
//!
//! A batch of signed changes goes through five steps, and a change that fails
//! one changes nothing:
//!
//! 1. **Parse and bound**: size, signature count, a bounded inspection of the
//!    raw chunk ([`crate::chunk`]: uncompressed only, op and column bounds,
//!    hash from the raw bytes) before automerge parses it, duplicates (skipped
//!    before any signature is checked), stale epochs, and the checks that need
//!    no decoding of operations (actor, root version, signer set).
//! 2. **Verify** every signature of the batch at once (batch verification, with a
//!    strict one-by-one fallback that names the bad signature). Only then are
//!    the operations decoded, for the schema check.
//! 3. **Authorise**: a policy change needs a threshold of distinct authority keys
//!    of the trust root it names, and its automerge actor must be one of them
//!    followed by a per-edit nonce; a change signed under a root a rotation
//!    superseded must be grandfathered by that rotation; a status change must
//!    be signed by its owner, who must be enrolled and not revoked, and its
//!    actor must be the owner's key followed by a nonce. The operations must
//!    fit the document's schema.
//! 4. **Apply**, batched per document: policy changes go to automerge in one
//!    call; status changes update last-writer-wins registers.
//! 5. **Buffer** changes whose dependencies have not arrived (bounded); they are
//!    applied as soon as the dependencies are.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::{Automerge, Change, ChangeHash, ReadDoc};

use crate::change::{DocId, Limits, SignedChange, actor_signer, parse_change, signing_message};
use crate::change::{OwnedKind, RegionId};
use crate::keys::NodeId;
use crate::policy::{Policy, RegionalPolicy};
use crate::root::{RootError, SignedTrustRoot, TrustChain};
use crate::status::{NodeStatus, STATUS_DOC_FIELDS, STATUS_FIELDS, SUMMARY_FIELDS};
use crate::verify::{SigItem, SignatureError, distinct_signers, verify_many};

/// Why a change was rejected. Each variant names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The change bytes are not an automerge change.
    #[error("malformed change: {0}")]
    Malformed(String),
    /// Larger than the bound for its document.
    #[error("change is {size} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// No signatures, or more than the bound (or more than one on a status change).
    #[error("change has {count} signatures; {allowed}")]
    SignatureCount {
        /// How many.
        count: usize,
        /// What is allowed.
        allowed: String,
    },
    /// A signature failed verification.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The automerge actor is not the author's key.
    #[error("actor {actor} of the change is not {expected}")]
    ActorNotAuthor {
        /// The actor (hex).
        actor: String,
        /// Who it had to be.
        expected: String,
    },
    /// Too few distinct authority signatures.
    #[error("signed by {got} distinct keys of trust root v{version}, needs {needed}")]
    Threshold {
        /// Root version named by the change.
        version: u64,
        /// Distinct valid authority signatures.
        got: usize,
        /// The threshold.
        needed: usize,
    },
    /// The change names a trust-root version this replica does not hold.
    #[error("signed under trust root v{version}, but this node holds v{first} to v{current}")]
    UnknownRoot {
        /// Named version.
        version: u64,
        /// Oldest held.
        first: u64,
        /// In force.
        current: u64,
    },
    /// A status change signed by a key other than the owner's.
    #[error("status of {owner} signed by {signer}, not by its owner")]
    NotOwner {
        /// The document's owner.
        owner: String,
        /// Who signed.
        signer: String,
    },
    /// The owner is not enrolled.
    #[error("node {0} is not enrolled")]
    Unenrolled(String),
    /// The owner is revoked.
    #[error("node {0} is revoked")]
    Revoked(String),
    /// The operations do not fit the document's schema.
    #[error("schema violation: {0}")]
    Schema(String),
    /// An authority key signed two different changes with one sequence number.
    #[error(
        "authority actor {actor} signed two different changes with sequence number {seq} (a forked key); the later one is refused"
    )]
    Fork {
        /// The actor (hex).
        actor: String,
        /// The reused sequence number.
        seq: u64,
    },
    /// Signed under a trust root that a rotation has superseded, and not among
    /// the changes that rotation grandfathers: a rotated-out key's change.
    #[error(
        "signed under trust root v{version}, superseded by the rotation to v{rotation}, which does not grandfather this change; re-sign it under the current root"
    )]
    RotatedOut {
        /// The version it was signed under.
        version: u64,
        /// The rotation that superseded that version.
        rotation: u64,
    },
    /// Authorised, yet automerge refuses to apply it.
    #[error("authorised change cannot be applied: {0}")]
    Unappliable(String),
    /// A status epoch too far ahead of the one held for its owner.
    #[error(
        "status epoch {epoch} of {node} is more than {max} epochs ahead of epoch {held}, the one held"
    )]
    EpochJump {
        /// Owner.
        node: String,
        /// The epoch named by the change.
        epoch: u32,
        /// The epoch held.
        held: u32,
        /// The bound.
        max: u32,
    },
    /// The owner's status changes arrive faster than the rate a replica
    /// accepts from one owner; brought again later by anti-entropy.
    #[error("status changes of {0} arrive faster than the per-owner rate; refused for now")]
    RateLimited(String),
    /// The owner's status is scoped to a region the receiving node is not
    /// in (policy `scope/<region>`): it is not held here. A sender that has
    /// not yet seen the scope relays it honestly.
    #[error("status of {owner} is scoped to region {region}, which this site is not in")]
    OutOfScope {
        /// Short id of the owner.
        owner: String,
        /// The region.
        region: String,
    },
    /// A change of a region's scoped policy, offered to a site that is not
    /// an active member of that region. Not the sender's fault when it has
    /// not yet applied the policy that moved this site.
    #[error(
        "the scoped policy of region {region} is held only by its sites, and this site is not one"
    )]
    NotInRegion {
        /// The region (its name, or its id when the policy does not name it).
        region: String,
    },
    /// A change of a region's scoped policy that the fleet policy held here
    /// does not commit to (`regional/<region>/<hash>`): it waits for the
    /// policy change that commits it, or never applies. Not the sender's
    /// fault: it may hold a policy this site has not received yet.
    #[error(
        "change {hash} of region {region}'s scoped policy is not committed by the fleet policy held here"
    )]
    Uncommitted {
        /// The region.
        region: String,
        /// The change (hex).
        hash: String,
    },
}

/// The kind of a [`Rejection`], without its details: a stable key for
/// counters and metrics ([`RejectionKind::label`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectionKind {
    /// [`Rejection::Malformed`].
    Malformed,
    /// [`Rejection::TooLarge`].
    TooLarge,
    /// [`Rejection::SignatureCount`].
    SignatureCount,
    /// [`Rejection::Signature`].
    Signature,
    /// [`Rejection::ActorNotAuthor`].
    ActorNotAuthor,
    /// [`Rejection::Threshold`].
    Threshold,
    /// [`Rejection::UnknownRoot`].
    UnknownRoot,
    /// [`Rejection::NotOwner`].
    NotOwner,
    /// [`Rejection::Unenrolled`].
    Unenrolled,
    /// [`Rejection::Revoked`].
    Revoked,
    /// [`Rejection::Schema`].
    Schema,
    /// [`Rejection::EpochJump`].
    EpochJump,
    /// [`Rejection::RateLimited`].
    RateLimited,
    /// [`Rejection::Fork`].
    Fork,
    /// [`Rejection::Unappliable`].
    Unappliable,
    /// [`Rejection::RotatedOut`].
    RotatedOut,
    /// [`Rejection::OutOfScope`].
    OutOfScope,
    /// [`Rejection::NotInRegion`].
    NotInRegion,
    /// [`Rejection::Uncommitted`].
    Uncommitted,
}

impl RejectionKind {
    /// A short stable label (`snake_case`), for metrics.
    pub fn label(self) -> &'static str {
        match self {
            RejectionKind::Malformed => "malformed",
            RejectionKind::TooLarge => "too_large",
            RejectionKind::SignatureCount => "signature_count",
            RejectionKind::Signature => "signature",
            RejectionKind::ActorNotAuthor => "actor_not_author",
            RejectionKind::Threshold => "threshold",
            RejectionKind::UnknownRoot => "unknown_root",
            RejectionKind::NotOwner => "not_owner",
            RejectionKind::Unenrolled => "unenrolled",
            RejectionKind::Revoked => "revoked",
            RejectionKind::Schema => "schema",
            RejectionKind::EpochJump => "epoch_jump",
            RejectionKind::RateLimited => "rate_limited",
            RejectionKind::Fork => "fork",
            RejectionKind::Unappliable => "unappliable",
            RejectionKind::RotatedOut => "rotated_out",
            RejectionKind::OutOfScope => "out_of_scope",
            RejectionKind::NotInRegion => "not_in_region",
            RejectionKind::Uncommitted => "uncommitted",
        }
    }
}

impl Rejection {
    /// What kind of rejection (metrics, counters).
    pub fn kind(&self) -> RejectionKind {
        match self {
            Rejection::Malformed(_) => RejectionKind::Malformed,
            Rejection::TooLarge { .. } => RejectionKind::TooLarge,
            Rejection::SignatureCount { .. } => RejectionKind::SignatureCount,
            Rejection::Signature(_) => RejectionKind::Signature,
            Rejection::ActorNotAuthor { .. } => RejectionKind::ActorNotAuthor,
            Rejection::Threshold { .. } => RejectionKind::Threshold,
            Rejection::UnknownRoot { .. } => RejectionKind::UnknownRoot,
            Rejection::NotOwner { .. } => RejectionKind::NotOwner,
            Rejection::Unenrolled(_) => RejectionKind::Unenrolled,
            Rejection::Revoked(_) => RejectionKind::Revoked,
            Rejection::Schema(_) => RejectionKind::Schema,
            Rejection::EpochJump { .. } => RejectionKind::EpochJump,
            Rejection::RateLimited(_) => RejectionKind::RateLimited,
            Rejection::Fork { .. } => RejectionKind::Fork,
            Rejection::Unappliable(_) => RejectionKind::Unappliable,
            Rejection::RotatedOut { .. } => RejectionKind::RotatedOut,
            Rejection::OutOfScope { .. } => RejectionKind::OutOfScope,
            Rejection::NotInRegion { .. } => RejectionKind::NotInRegion,
            Rejection::Uncommitted { .. } => RejectionKind::Uncommitted,
        }
    }

    /// Whether the sender is at fault: it sent something no honest node would
    /// relay (bad signature, malformed, oversized). Unenrolled, revoked and
    /// unknown-root rejections can be honest races and are not; nor is any
    /// rejection that depends on what the receiver holds or when it received
    /// (epoch jump, rate).
    pub fn is_misbehaviour(&self) -> bool {
        !matches!(
            self,
            Rejection::Unenrolled(_)
                | Rejection::Revoked(_)
                | Rejection::UnknownRoot { .. }
                | Rejection::Fork { .. }
                | Rejection::Unappliable(_)
                // A peer that has not yet heard of the rotation relays it honestly.
                | Rejection::RotatedOut { .. }
                | Rejection::EpochJump { .. }
                | Rejection::RateLimited(_)
                | Rejection::OutOfScope { .. }
                | Rejection::NotInRegion { .. }
                | Rejection::Uncommitted { .. }
        )
    }
}

/// What became of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// New, and applied.
    Applied,
    /// Already held.
    Duplicate,
    /// Verified and authorised; waiting for its dependencies.
    Pending,
    /// For a status epoch older than the one held, or for an epoch that is
    /// void (it was over-full); ignored.
    Stale,
    /// Refused.
    Rejected(Rejection),
}

/// The verdict on one change of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The change's document.
    pub doc: DocId,
    /// Its automerge hash, when it parsed.
    pub hash: Option<ChangeHash>,
    /// What became of it.
    pub outcome: Outcome,
}

/// A status document as a replica holds it.
#[derive(Clone, Debug)]
struct StatusDoc {
    epoch: u32,
    changes: Vec<SignedChange>,
    /// The hash of `changes[i]` (linear search: an epoch holds at most a few dozen).
    hashes: Vec<ChangeHash>,
    deps: Vec<Vec<ChangeHash>>,
    heads: Vec<ChangeHash>,
    /// The epoch held more than [`Limits::status_epoch_changes_max`] changes:
    /// it is void on every replica (no status is read from it), and `changes`
    /// keeps the first changes beyond the bound as the evidence that voids it
    /// wherever it is sent.
    void: bool,
    /// Last-writer-wins clock of each field of [`STATUS_FIELDS`]: (op counter, change hash).
    clocks: [(u64, ChangeHash); STATUS_FIELDS.len()],
    status: NodeStatus,
}

impl StatusDoc {
    fn new(epoch: u32) -> Self {
        StatusDoc {
            epoch,
            changes: Vec::new(),
            hashes: Vec::new(),
            deps: Vec::new(),
            heads: Vec::new(),
            void: false,
            clocks: [(0, ChangeHash([0; 32])); STATUS_FIELDS.len()],
            status: NodeStatus::default(),
        }
    }

    fn position(&self, h: &ChangeHash) -> Option<usize> {
        self.hashes.iter().position(|x| x == h)
    }

    /// Sorted heads, as every replica reports them: [`VOID_HEAD`] alone for a
    /// void epoch, whichever evidence this replica holds.
    fn reported_heads(&self) -> Vec<ChangeHash> {
        if self.void {
            return vec![VOID_HEAD];
        }
        let mut h = self.heads.clone();
        h.sort();
        h
    }
}

/// The heads reported for a void status epoch (one that was over-full): the
/// same on every replica that voided it, so that such replicas agree without
/// comparing the evidence each happened to keep. No change has this hash.
pub const VOID_HEAD: ChangeHash = ChangeHash([0xff; 32]);

/// The owner of a status document.
fn status_owner(doc: &DocId) -> Option<NodeId> {
    doc.owned().map(|(node, _, _)| node)
}

/// A parsed change waiting for verification, authorisation or dependencies.
struct Candidate {
    idx: usize,
    sc: SignedChange,
    change: Change,
    hash: ChangeHash,
}

#[derive(Clone)]
struct PendingEntry {
    sc: SignedChange,
    change: Change,
}

/// Changes waiting for dependencies, bounded in count and bytes; the oldest is
/// dropped first (anti-entropy brings it back later).
#[derive(Clone, Default)]
struct PendingBuffer {
    by_doc: BTreeMap<DocId, HashMap<ChangeHash, PendingEntry>>,
    order: VecDeque<(DocId, ChangeHash)>,
    count: usize,
    bytes: usize,
    dropped: u64,
    /// Status changes waiting, per owner.
    per_owner: HashMap<NodeId, usize>,
}

impl PendingBuffer {
    fn contains(&self, doc: &DocId, h: &ChangeHash) -> bool {
        self.by_doc.get(doc).is_some_and(|m| m.contains_key(h))
    }

    fn insert(&mut self, sc: SignedChange, change: Change, limits: &Limits) {
        let (doc, h) = (sc.doc, change.hash());
        if self.contains(&doc, &h) {
            return;
        }
        self.bytes += sc.change.len();
        self.count += 1;
        self.order.push_back((doc, h));
        self.by_doc
            .entry(doc)
            .or_default()
            .insert(h, PendingEntry { sc, change });
        if let Some(owner) = status_owner(&doc) {
            *self.per_owner.entry(owner).or_default() += 1;
            // The owner's oldest waiting changes make room: one owner cannot
            // push another's out.
            while self.per_owner.get(&owner).copied().unwrap_or(0) > limits.pending_per_owner_max {
                let Some(i) = self
                    .order
                    .iter()
                    .position(|(d, _)| status_owner(d) == Some(owner))
                else {
                    break;
                };
                if let Some((d, h)) = self.order.remove(i)
                    && self.remove(&d, &h).is_some()
                {
                    self.dropped += 1;
                }
            }
        }
        while self.count > limits.pending_changes_max || self.bytes > limits.pending_bytes_max {
            let Some((d, h)) = self.order.pop_front() else {
                break;
            };
            if self.remove(&d, &h).is_some() {
                self.dropped += 1;
            }
        }
    }

    fn remove(&mut self, doc: &DocId, h: &ChangeHash) -> Option<PendingEntry> {
        let m = self.by_doc.get_mut(doc)?;
        let e = m.remove(h)?;
        if m.is_empty() {
            self.by_doc.remove(doc);
        }
        self.count -= 1;
        self.bytes -= e.sc.change.len();
        self.forget_owner(doc, 1);
        Some(e)
    }

    /// Entries taken out by document stay in `order` until the bound pops
    /// them; drop them once they outnumber the live ones, so that the order
    /// queue stays bounded too.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.count + 64 {
            let by_doc = &self.by_doc;
            self.order
                .retain(|(d, h)| by_doc.get(d).is_some_and(|m| m.contains_key(h)));
        }
    }

    fn forget_owner(&mut self, doc: &DocId, n: usize) {
        if let Some(owner) = status_owner(doc)
            && let Some(c) = self.per_owner.get_mut(&owner)
        {
            *c -= n.min(*c);
            if *c == 0 {
                self.per_owner.remove(&owner);
            }
        }
    }

    fn take_doc(&mut self, doc: &DocId) -> Vec<PendingEntry> {
        let Some(m) = self.by_doc.remove(doc) else {
            return Vec::new();
        };
        let out: Vec<PendingEntry> = m.into_values().collect();
        self.count -= out.len();
        self.bytes -= out.iter().map(|e| e.sc.change.len()).sum::<usize>();
        self.forget_owner(doc, out.len());
        self.compact_order();
        out
    }

    fn docs_of_node(&self, node: &NodeId) -> Vec<DocId> {
        self.by_doc
            .keys()
            .filter(|d| status_owner(d) == Some(*node))
            .copied()
            .collect()
    }
}

/// Counters a daemon exports as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Status documents held.
    pub status_docs: usize,
    /// Changes held (policy and status).
    pub changes: usize,
    /// Of those, status changes.
    pub status_changes: usize,
    /// Bytes of change data held.
    pub change_bytes: usize,
    /// Changes waiting for dependencies.
    pub pending: usize,
    /// Pending changes dropped at the bound, ever.
    pub pending_dropped: u64,
    /// Status documents held whose epoch is void (over-full).
    pub void_epochs: usize,
}

/// The applied policy: its document, its signed changes in the order applied,
/// and what it says.
#[derive(Clone)]
struct PolicyState {
    doc: Automerge,
    changes: HashMap<ChangeHash, SignedChange>,
    order: Vec<ChangeHash>,
    /// (actor, seq) of every applied policy change, to refuse forks.
    seqs: HashMap<(Vec<u8>, u64), ChangeHash>,
    policy: Policy,
}

/// One region's scoped policy: its document and its signed changes, as
/// [`PolicyState`].
#[derive(Clone)]
struct RegionState {
    doc: Automerge,
    changes: HashMap<ChangeHash, SignedChange>,
    order: Vec<ChangeHash>,
    seqs: HashMap<(Vec<u8>, u64), ChangeHash>,
    policy: RegionalPolicy,
}

impl RegionState {
    fn new() -> Self {
        RegionState {
            doc: Automerge::new(),
            changes: HashMap::new(),
            order: Vec::new(),
            seqs: HashMap::new(),
            policy: RegionalPolicy::default(),
        }
    }
}

/// All documents a node holds. A clone shares every document with the
/// original (see [`Replica::clone`]); each copies what it changes.
#[derive(Clone)]
pub struct Replica {
    limits: Limits,
    chain: TrustChain,
    /// The applied policy, shared with the clones of this replica until one
    /// of them changes it (copy on write).
    pol: Arc<PolicyState>,
    /// Status documents by owner: a persistent map of shared documents, so
    /// that a clone of a replica costs nothing until it diverges, and then
    /// only the paths and documents it changed.
    statuses: imbl::OrdMap<NodeId, Arc<StatusDoc>>,
    /// Summary documents by owner, held as status documents are.
    summaries: imbl::OrdMap<NodeId, Arc<StatusDoc>>,
    /// Regions' scoped policies held: a node holds only its own region's;
    /// a tool's replica, every one it is given.
    regions: BTreeMap<RegionId, Arc<RegionState>>,
    /// The node this replica is of, if it holds only what its region may
    /// ([`Replica::hold_as`]); `None`: every status (a tool's replica).
    holder: Option<NodeId>,
    pending: PendingBuffer,
    /// Policy changes dropped because a rotation did not grandfather them.
    rotated_out: u64,
    /// The root version whose rotation has been fully enforced on the applied
    /// policy (its grandfathered history complete here): later old-version
    /// changes are judged as they arrive, so the pass need not run again
    /// until the chain advances.
    rotation_settled: u64,
    /// Status changes that waited for dependencies and applied during the
    /// last ingest (see [`Replica::take_promoted`]).
    promoted: Vec<(SignedChange, ChangeHash)>,
}

impl Replica {
    /// An empty replica trusting `chain`.
    pub fn new(chain: TrustChain, limits: Limits) -> Self {
        Replica {
            limits,
            chain,
            pol: Arc::new(PolicyState {
                doc: Automerge::new(),
                changes: HashMap::new(),
                order: Vec::new(),
                seqs: HashMap::new(),
                policy: Policy::default(),
            }),
            statuses: imbl::OrdMap::new(),
            summaries: imbl::OrdMap::new(),
            regions: BTreeMap::new(),
            holder: None,
            pending: PendingBuffer::default(),
            rotated_out: 0,
            rotation_settled: 0,
            promoted: Vec::new(),
        }
    }

    fn owned(&self, kind: OwnedKind) -> &imbl::OrdMap<NodeId, Arc<StatusDoc>> {
        match kind {
            OwnedKind::Status => &self.statuses,
            OwnedKind::Summary => &self.summaries,
        }
    }

    fn owned_mut(&mut self, kind: OwnedKind) -> &mut imbl::OrdMap<NodeId, Arc<StatusDoc>> {
        match kind {
            OwnedKind::Status => &mut self.statuses,
            OwnedKind::Summary => &mut self.summaries,
        }
    }

    /// The held document of an owner's `doc` at exactly its epoch.
    fn owned_doc(&self, doc: &DocId) -> Option<&StatusDoc> {
        let (node, epoch, kind) = doc.owned()?;
        self.owned(kind)
            .get(&node)
            .filter(|s| s.epoch == epoch)
            .map(|s| &**s)
    }

    /// Hold only what `node` may: the status documents of a region-scoped
    /// region (policy `scope/<region>`) only if `node` is a member of it.
    /// Others are refused ([`Rejection::OutOfScope`]) and those held are
    /// dropped, now and whenever the policy scopes them.
    pub fn hold_as(&mut self, node: NodeId) {
        self.holder = Some(node);
        self.drop_out_of_scope();
    }

    /// Drop the status documents the holder may not hold; their owners.
    fn drop_out_of_scope(&mut self) -> Vec<NodeId> {
        let Some(me) = self.holder else {
            return Vec::new();
        };
        let policy = &self.pol.policy;
        let gone: Vec<NodeId> = self
            .statuses
            .keys()
            .chain(self.pending.by_doc.keys().filter_map(|d| match d {
                DocId::Status { node, .. } => Some(node),
                _ => None,
            }))
            .filter(|n| !policy.may_hold_status(&me, n))
            .copied()
            .collect::<BTreeSet<NodeId>>()
            .into_iter()
            .collect();
        for n in &gone {
            self.drop_status(n);
        }
        gone
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The trust chain.
    pub fn trust(&self) -> &TrustChain {
        &self.chain
    }

    /// Offer a trust root. Returns `Ok(true)` if it advanced the chain, `Ok(false)`
    /// if this replica already holds that version (same content), and an error for
    /// anything else.
    ///
    /// A root of a version already held must be an exact, validly signed copy:
    /// a different root for that version is [`RootError::Conflict`], a copy
    /// with a bad signature [`RootError::Signature`]. Advancing the chain
    /// enforces the rotation at once: policy changes signed under the older
    /// version that it does not grandfather are dropped from the replica
    /// ([`Replica::rotated_out`] counts them).
    pub fn ingest_root(&mut self, root: SignedTrustRoot) -> Result<bool, RootError> {
        let v = root.root.version;
        if let Some(held) = self.chain.get(v) {
            if *held != root.root {
                return Err(RootError::Conflict { version: v });
            }
            root.check_signatures()?;
            return Ok(false);
        }
        if v < self.chain.roots()[0].root.version {
            // Older than this node's anchor: it cannot be checked, and it is
            // never needed (the anchor was installed by the operator).
            return Err(RootError::Rollback {
                current: self.chain.current().version,
                got: v,
            });
        }
        self.chain.advance(root)?;
        self.enforce_rotation();
        self.enforce_policy();
        Ok(true)
    }

    /// Policy changes dropped because a rotation did not grandfather them, ever.
    pub fn rotated_out(&self) -> u64 {
        self.rotated_out
    }

    /// For each superseded root version `v`, the policy changes the rotation
    /// to `v + 1` grandfathers (its heads and every ancestor reachable through
    /// the changes known here, applied or in `extra`), and whether that walk
    /// was complete (every hash it reached is known). An incomplete walk means
    /// some grandfathered change has not arrived yet.
    fn coverage(
        &self,
        extra: &HashMap<ChangeHash, Vec<ChangeHash>>,
    ) -> HashMap<u64, (HashSet<ChangeHash>, bool)> {
        let mut out = HashMap::new();
        for r in self.chain.roots().iter().skip(1) {
            let mut seen = HashSet::new();
            let mut complete = true;
            let mut stack: Vec<ChangeHash> = r
                .root
                .grandfathered_heads
                .iter()
                .map(|h| ChangeHash(*h))
                .collect();
            while let Some(h) = stack.pop() {
                if !seen.insert(h) {
                    continue;
                }
                if let Some(m) = self.pol.doc.get_change_meta_by_hash(&h) {
                    stack.extend(m.deps.iter().copied());
                } else if let Some(d) = extra.get(&h) {
                    stack.extend(d.iter().copied());
                } else {
                    complete = false;
                }
            }
            out.insert(r.root.version - 1, (seen, complete));
        }
        out
    }

    /// Drop the applied policy changes that a rotation in force does not
    /// grandfather (they were applied before this node held the rotation),
    /// with every change that depends on them, and rebuild the policy
    /// document from the rest. Only decided once the grandfathered history is
    /// complete here, so that every replica drops the same changes.
    fn enforce_rotation(&mut self) {
        let current = self.chain.current().version;
        if current <= self.chain.roots()[0].root.version || self.rotation_settled == current {
            return;
        }
        let old: Vec<ChangeHash> = self
            .pol
            .order
            .iter()
            .filter(|h| self.pol.changes[*h].root_version < current)
            .copied()
            .collect();
        if old.is_empty() {
            self.rotation_settled = current;
            return;
        }
        let extra: HashMap<ChangeHash, Vec<ChangeHash>> = self
            .pending
            .by_doc
            .get(&DocId::Policy)
            .map(|m| {
                m.iter()
                    .map(|(h, e)| (*h, e.change.deps().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let cov = self.coverage(&extra);
        if cov.values().all(|(_, complete)| *complete) {
            self.rotation_settled = current;
        }
        let mut drop: HashSet<ChangeHash> = HashSet::new();
        for h in old {
            let v = self.pol.changes[&h].root_version;
            if let Some((set, true)) = cov.get(&v)
                && !set.contains(&h)
            {
                drop.insert(h);
            }
        }
        if drop.is_empty() {
            return;
        }
        // Descendants of a dropped change can never apply anywhere.
        for h in &self.pol.order {
            if let Some(m) = self.pol.doc.get_change_meta_by_hash(h)
                && m.deps.iter().any(|d| drop.contains(d))
            {
                drop.insert(*h);
            }
        }
        tracing::warn!(
            dropped = drop.len(),
            version = current,
            "policy changes signed under a superseded trust root, not grandfathered by its rotation, are dropped"
        );
        self.rotated_out += drop.len() as u64;
        let keep: Vec<ChangeHash> = self
            .pol
            .order
            .iter()
            .filter(|h| !drop.contains(h))
            .copied()
            .collect();
        let changes: Vec<Change> = keep
            .iter()
            .filter_map(|h| self.pol.doc.get_change_by_hash(h))
            .collect();
        let mut doc = Automerge::new();
        if let Err(e) = doc.apply_changes(changes) {
            tracing::error!(error = %e, "rebuilding the policy after a rotation failed; keeping it as it was");
            return;
        }
        let pol = Arc::make_mut(&mut self.pol);
        pol.doc = doc;
        pol.changes.retain(|h, _| !drop.contains(h));
        pol.order = keep;
        pol.seqs = pol
            .order
            .iter()
            .filter_map(|h| pol.doc.get_change_meta_by_hash(h))
            .map(|m| ((m.actor.to_bytes().to_vec(), m.seq), m.hash))
            .collect();
        pol.policy = Policy::from_doc(&pol.doc);
    }

    /// Verify, authorise and apply a batch of signed changes. The report at index
    /// `i` is the verdict on `batch[i]`.
    pub fn ingest(&mut self, batch: Vec<SignedChange>) -> Vec<Report> {
        self.ingest_with(batch, &mut |_| true)
    }

    /// The status changes that had waited for their dependencies (reported
    /// [`Outcome::Pending`] by an earlier ingest) and applied since the last
    /// call, with their hashes. Pending status changes are neither stored nor
    /// forwarded by a node (they may never apply); these are, when they apply.
    pub fn take_promoted(&mut self) -> Vec<(SignedChange, ChangeHash)> {
        std::mem::take(&mut self.promoted)
    }

    /// [`Replica::ingest`], asking `admit` before each status change is
    /// applied (verified, authorised, dependencies present) whether its owner
    /// may write one more now: a refusal is [`Rejection::RateLimited`], which
    /// is no fault of the sender. The engine bounds each owner's rate with it.
    pub fn ingest_with(
        &mut self,
        batch: Vec<SignedChange>,
        admit: &mut dyn FnMut(&NodeId) -> bool,
    ) -> Vec<Report> {
        let mut reports: Vec<Report> = batch
            .iter()
            .map(|sc| Report {
                doc: sc.doc,
                hash: None,
                outcome: Outcome::Pending,
            })
            .collect();
        // A batch with policy changes may change the scope (admit this
        // holder to a region): its statuses' scope is then checked once the
        // policy is applied, not before.
        let scope_early = !batch.iter().any(|sc| sc.doc == DocId::Policy);
        // 1. Parse and bound.
        let mut seen: HashSet<(DocId, ChangeHash)> = HashSet::new();
        let mut candidates: Vec<Candidate> = Vec::new();
        for (idx, sc) in batch.into_iter().enumerate() {
            match self.parse(&sc) {
                Err(outcome) => reports[idx].outcome = outcome,
                Ok(change) => {
                    let hash = change.hash();
                    reports[idx].hash = Some(hash);
                    if !seen.insert((sc.doc, hash)) || self.has(&sc.doc, &hash) {
                        reports[idx].outcome = Outcome::Duplicate;
                    } else if self.is_stale(&sc.doc) {
                        reports[idx].outcome = Outcome::Stale;
                    } else if let Err(r) = self
                        .check_epoch_jump(&sc.doc)
                        .and_then(|()| self.check_static(&sc, &change, scope_early))
                    {
                        reports[idx].outcome = Outcome::Rejected(r);
                    } else {
                        candidates.push(Candidate {
                            idx,
                            sc,
                            change,
                            hash,
                        });
                    }
                }
            }
        }
        // 2. Verify every signature at once.
        let msgs: Vec<Vec<u8>> = candidates
            .iter()
            .map(|c| signing_message(&c.sc.doc, c.sc.root_version, &c.hash))
            .collect();
        let mut items: Vec<(usize, SigItem<'_>)> = Vec::new();
        for (ci, c) in candidates.iter().enumerate() {
            for sig in &c.sc.sigs {
                items.push((
                    ci,
                    SigItem {
                        msg: &msgs[ci],
                        sig,
                    },
                ));
            }
        }
        let just_items: Vec<SigItem<'_>> = items.iter().map(|(_, it)| it.clone()).collect();
        let verdicts = verify_many(&just_items);
        let mut bad: HashMap<usize, SignatureError> = HashMap::new();
        for ((ci, _), v) in items.iter().zip(verdicts) {
            if let Err(e) = v {
                bad.entry(*ci).or_insert(e);
            }
        }
        drop(just_items);
        drop(items);
        let mut policy_batch = Vec::new();
        let mut regional_batch = Vec::new();
        let mut status_batch = Vec::new();
        for (ci, c) in candidates.into_iter().enumerate() {
            if let Some(e) = bad.remove(&ci) {
                reports[c.idx].outcome = Outcome::Rejected(Rejection::Signature(e));
            } else if let Err(r) = self.check_schema(&c) {
                // Decoding the operations comes only after the signatures
                // verified (and the chunk inspection bounded their count).
                reports[c.idx].outcome = Outcome::Rejected(r);
            } else if c.sc.doc == DocId::Policy {
                policy_batch.push(c);
            } else if matches!(c.sc.doc, DocId::Region { .. }) {
                regional_batch.push(c);
            } else {
                status_batch.push(c);
            }
        }
        // 3-5. Authorise and apply, policy first: it decides who may write status.
        self.apply_policy(policy_batch, &mut reports);
        self.apply_regional(regional_batch, &mut reports);
        self.apply_status(status_batch, &mut reports, admit);
        reports
    }

    /// A status epoch may lie at most [`Limits::status_epoch_jump_max`] ahead
    /// of the one held for its owner (any epoch, when none is held).
    fn check_epoch_jump(&self, doc: &DocId) -> Result<(), Rejection> {
        let Some((node, epoch, kind)) = doc.owned() else {
            return Ok(());
        };
        let (node, epoch) = (&node, &epoch);
        let max = self.limits.status_epoch_jump_max;
        match self.owned(kind).get(node) {
            Some(s) if epoch.saturating_sub(s.epoch) > max => Err(Rejection::EpochJump {
                node: node.short(),
                epoch: *epoch,
                held: s.epoch,
                max,
            }),
            _ => Ok(()),
        }
    }

    fn parse(&self, sc: &SignedChange) -> Result<Change, Outcome> {
        let max = match sc.doc {
            DocId::Policy | DocId::Region { .. } => self.limits.policy_change_size_max_bytes,
            DocId::Status { .. } | DocId::Summary { .. } => {
                self.limits.status_change_size_max_bytes
            }
        };
        let reject = |r| Err(Outcome::Rejected(r));
        if sc.change.len() > max {
            return reject(Rejection::TooLarge {
                size: sc.change.len(),
                max,
            });
        }
        let allowed_sigs = match sc.doc {
            DocId::Policy | DocId::Region { .. } => self.limits.signatures_max,
            DocId::Status { .. } | DocId::Summary { .. } => 1,
        };
        if sc.sigs.is_empty() || sc.sigs.len() > allowed_sigs {
            return reject(Rejection::SignatureCount {
                count: sc.sigs.len(),
                allowed: format!("1 to {allowed_sigs} allowed"),
            });
        }
        parse_change(&sc.change).map_err(|e| Outcome::Rejected(Rejection::Malformed(e)))
    }

    /// Checks that need no signature verification and no decoding of the
    /// operations: actor, signer set, root version, threshold (counting keys,
    /// not yet signatures).
    fn check_static(
        &self,
        sc: &SignedChange,
        change: &Change,
        scope_early: bool,
    ) -> Result<(), Rejection> {
        let actor = change.actor_id().to_bytes();
        match sc.doc {
            DocId::Policy | DocId::Region { .. } => {
                // Before the signature is checked: a flood of valid but
                // uncommitted or out-of-region changes costs a lookup each.
                if let (DocId::Region { region }, true) = (sc.doc, scope_early) {
                    self.check_regional(&region, &change.hash())?;
                }
                let chain_first = self.chain.roots()[0].root.version;
                let root = self
                    .chain
                    .get(sc.root_version)
                    .ok_or(Rejection::UnknownRoot {
                        version: sc.root_version,
                        first: chain_first,
                        current: self.chain.current().version,
                    })?;
                let author = actor_signer(actor);
                if !sc.sigs.iter().any(|s| Some(s.key) == author) {
                    return Err(Rejection::ActorNotAuthor {
                        actor: hex::encode(actor),
                        expected: "one of the signers' keys followed by a 16-byte nonce".into(),
                    });
                }
                let got = distinct_signers(sc.sigs.iter().map(|s| &s.key), &root.keys);
                if got < root.threshold as usize {
                    return Err(Rejection::Threshold {
                        version: root.version,
                        got,
                        needed: root.threshold as usize,
                    });
                }
                Ok(())
            }
            DocId::Status { node, .. } | DocId::Summary { node, .. } => {
                // Before the signature is checked: a flood of replayed
                // out-of-scope statuses costs a lookup each, not a verify
                // (checked again when authorised, after the batch's policy).
                if scope_early {
                    self.check_scope(&sc.doc, &node)?;
                }
                let signer = sc.sigs[0].key;
                if signer != node {
                    return Err(Rejection::NotOwner {
                        owner: node.short(),
                        signer: signer.short(),
                    });
                }
                if actor_signer(actor) != Some(node) {
                    return Err(Rejection::ActorNotAuthor {
                        actor: hex::encode(actor),
                        expected: format!(
                            "owner {}'s key followed by a 16-byte nonce",
                            node.short()
                        ),
                    });
                }
                Ok(())
            }
        }
    }

    /// The operations fit the document's schema (decodes them: run after
    /// verification).
    fn check_schema(&self, c: &Candidate) -> Result<(), Rejection> {
        match c.sc.doc {
            DocId::Policy => check_policy_schema(&c.change),
            DocId::Region { .. } => check_regional_schema(&c.change),
            DocId::Status { .. } => check_status_schema(
                &c.change,
                STATUS_DOC_FIELDS,
                self.limits.status_value_size_max_bytes,
            ),
            DocId::Summary { .. } => check_status_schema(
                &c.change,
                SUMMARY_FIELDS,
                self.limits.status_value_size_max_bytes,
            ),
        }
    }

    fn has(&self, doc: &DocId, h: &ChangeHash) -> bool {
        if self.pending.contains(doc, h) {
            return true;
        }
        match doc {
            DocId::Policy => self.pol.changes.contains_key(h),
            DocId::Region { region } => self
                .regions
                .get(region)
                .is_some_and(|r| r.changes.contains_key(h)),
            _ => self.owned_doc(doc).is_some_and(|s| s.position(h).is_some()),
        }
    }

    fn is_stale(&self, doc: &DocId) -> bool {
        match doc.owned() {
            None => false,
            Some((node, epoch, kind)) => self
                .owned(kind)
                .get(&node)
                .is_some_and(|s| s.epoch > epoch || (s.epoch == epoch && s.void)),
        }
    }

    fn apply_policy(&mut self, batch: Vec<Candidate>, reports: &mut [Report]) {
        let mut waiting: Vec<(Option<usize>, SignedChange, Change)> = batch
            .into_iter()
            .map(|c| (Some(c.idx), c.sc, c.change))
            .collect();
        if waiting.is_empty() {
            return;
        }
        for e in self.pending.take_doc(&DocId::Policy) {
            waiting.push((None, e.sc, e.change));
        }
        // Rotation revokes: a change signed under a superseded root must be
        // grandfathered by the rotation that superseded it. While the
        // grandfathered history has not all arrived, it waits.
        let current = self.chain.current().version;
        let mut unproven = Vec::new();
        if waiting.iter().any(|w| w.1.root_version < current) {
            let extra: HashMap<ChangeHash, Vec<ChangeHash>> = waiting
                .iter()
                .map(|w| (w.2.hash(), w.2.deps().to_vec()))
                .collect();
            let cov = self.coverage(&extra);
            let mut rest = Vec::new();
            for w in waiting {
                let v = w.1.root_version;
                match cov.get(&v) {
                    Some((set, complete)) if v < current && !set.contains(&w.2.hash()) => {
                        if *complete {
                            if let Some(i) = w.0 {
                                reports[i].outcome = Outcome::Rejected(Rejection::RotatedOut {
                                    version: v,
                                    rotation: v + 1,
                                });
                            }
                        } else {
                            unproven.push(w);
                        }
                    }
                    _ => rest.push(w),
                }
            }
            waiting = rest;
        }
        // Order so that every change follows its dependencies; what cannot be
        // ordered waits for dependencies that have not arrived.
        let mut known: HashSet<ChangeHash> = self.pol.changes.keys().copied().collect();
        let mut seqs = self.pol.seqs.clone();
        let mut ready: Vec<(Option<usize>, SignedChange, Change)> = Vec::new();
        loop {
            let before = waiting.len();
            let mut rest = Vec::new();
            for w in waiting {
                if w.2.deps().iter().all(|d| known.contains(d)) {
                    // One authority key that signed two different changes with the
                    // same sequence number (a forked key): automerge refuses the
                    // second, so it is rejected here, and its dependents wait.
                    let slot = (w.2.actor_id().to_bytes().to_vec(), w.2.seq());
                    match seqs.get(&slot) {
                        Some(h) if *h != w.2.hash() => {
                            if let Some(i) = w.0 {
                                reports[i].outcome = Outcome::Rejected(Rejection::Fork {
                                    actor: hex::encode(&slot.0),
                                    seq: slot.1,
                                });
                            }
                            continue;
                        }
                        _ => {}
                    }
                    seqs.insert(slot, w.2.hash());
                    known.insert(w.2.hash());
                    ready.push(w);
                } else {
                    rest.push(w);
                }
            }
            waiting = rest;
            if waiting.len() == before || waiting.is_empty() {
                break;
            }
        }
        for (idx, sc, change) in waiting.into_iter().chain(unproven) {
            if let Some(i) = idx {
                reports[i].outcome = Outcome::Pending;
            }
            self.pending.insert(sc, change, &self.limits);
        }
        if ready.is_empty() {
            return;
        }
        let changes: Vec<Change> = ready.iter().map(|r| r.2.clone()).collect();
        let pol = Arc::make_mut(&mut self.pol);
        if let Err(e) = pol.doc.apply_changes(changes) {
            // Verified and authority-signed, yet automerge refuses it: record the
            // reason on every member of the batch; nothing is kept.
            tracing::error!(error = %e, "automerge refused a batch of authorised policy changes");
            for (idx, _, _) in ready {
                if let Some(i) = idx {
                    reports[i].outcome = Outcome::Rejected(Rejection::Unappliable(e.to_string()));
                }
            }
            return;
        }
        for (idx, sc, change) in ready {
            let h = change.hash();
            pol.seqs
                .insert((change.actor_id().to_bytes().to_vec(), change.seq()), h);
            pol.order.push(h);
            pol.changes.insert(h, sc);
            if let Some(i) = idx {
                reports[i].outcome = Outcome::Applied;
            }
        }
        pol.policy = Policy::from_doc(&pol.doc);
        self.enforce_rotation();
        self.enforce_policy();
    }

    /// What a new policy implies for the documents held: revocation (or an
    /// enrolment gone) cuts a node off (its status is dropped everywhere), and a region newly
    /// scoped takes its status away from the sites outside it. Run after
    /// every change of the policy, whichever path changed it (changes
    /// applied, or a rotation that dropped changes).
    fn enforce_policy(&mut self) {
        let policy = &self.pol.policy;
        // Revoked, or no longer enrolled (a rotation dropped its enrolment):
        // such a status would be refused if it arrived now, so it is not
        // kept (and never sent anywhere, scoped or not).
        let cut: BTreeSet<NodeId> = policy
            .revoked
            .keys()
            .copied()
            .chain(
                self.statuses
                    .keys()
                    .chain(self.summaries.keys())
                    .filter(|n| !policy.members.contains_key(n))
                    .copied(),
            )
            .collect();
        for n in cut {
            self.statuses.remove(&n);
            self.summaries.remove(&n);
            for d in self.pending.docs_of_node(&n) {
                self.pending.take_doc(&d);
            }
        }
        self.drop_out_of_scope();
        self.enforce_regional();
    }

    /// A region's scoped policy this holder may not hold (it left the
    /// region, or was revoked) is dropped; changes the policy no longer
    /// commits to (a rotation dropped their commitment) are dropped with
    /// every change that depends on them.
    fn enforce_regional(&mut self) {
        let policy = &self.pol.policy;
        if let Some(me) = self.holder {
            self.regions.retain(|id, _| policy.may_hold_region(&me, id));
            let gone: Vec<DocId> = self
                .pending
                .by_doc
                .keys()
                .filter(|d| matches!(d, DocId::Region { region } if !policy.may_hold_region(&me, region)))
                .copied()
                .collect();
            for d in gone {
                self.pending.take_doc(&d);
            }
        }
        let ids: Vec<RegionId> = self.regions.keys().copied().collect();
        for id in ids {
            let st = &self.regions[&id];
            let mut drop: HashSet<ChangeHash> = st
                .order
                .iter()
                .filter(|h| !policy.commits_region_change(&id, h))
                .copied()
                .collect();
            if drop.is_empty() {
                continue;
            }
            for h in &st.order {
                if let Some(m) = st.doc.get_change_meta_by_hash(h)
                    && m.deps.iter().any(|d| drop.contains(d))
                {
                    drop.insert(*h);
                }
            }
            tracing::warn!(
                dropped = drop.len(),
                region = %id.short(),
                "changes of a region's scoped policy the fleet policy no longer commits to are dropped"
            );
            let keep: Vec<ChangeHash> = st
                .order
                .iter()
                .filter(|h| !drop.contains(h))
                .copied()
                .collect();
            let changes: Vec<Change> = keep
                .iter()
                .filter_map(|h| st.doc.get_change_by_hash(h))
                .collect();
            let mut doc = Automerge::new();
            if let Err(e) = doc.apply_changes(changes) {
                tracing::error!(error = %e, "rebuilding a region's scoped policy failed; dropping it (peers of the region send it again)");
                self.regions.remove(&id);
                continue;
            }
            let st = Arc::make_mut(self.regions.get_mut(&id).expect("held"));
            st.changes.retain(|h, _| !drop.contains(h));
            st.order = keep;
            st.seqs = st
                .order
                .iter()
                .filter_map(|h| doc.get_change_meta_by_hash(h))
                .map(|m| ((m.actor.to_bytes().to_vec(), m.seq), m.hash))
                .collect();
            st.policy = RegionalPolicy::from_doc(&doc);
            st.doc = doc;
        }
    }

    /// Whether this replica may apply `hash` as a change of `region`'s
    /// scoped policy: its holder is an active member of the region, and the
    /// fleet policy commits to the change.
    fn check_regional(&self, region: &RegionId, hash: &ChangeHash) -> Result<(), Rejection> {
        let policy = &self.pol.policy;
        let name = || {
            policy
                .region_name(region)
                .map_or_else(|| format!("id {}", region.short()), str::to_string)
        };
        if let Some(me) = self.holder
            && !policy.may_hold_region(&me, region)
        {
            return Err(Rejection::NotInRegion { region: name() });
        }
        if !policy.commits_region_change(region, hash) {
            return Err(Rejection::Uncommitted {
                region: name(),
                hash: hash.to_string(),
            });
        }
        Ok(())
    }

    fn apply_regional(&mut self, batch: Vec<Candidate>, reports: &mut [Report]) {
        let mut by_region: BTreeMap<RegionId, Vec<(Option<usize>, SignedChange, Change)>> =
            BTreeMap::new();
        for c in batch {
            let DocId::Region { region } = c.sc.doc else {
                unreachable!("regional batch holds region changes")
            };
            if let Err(r) = self.check_regional(&region, &c.hash) {
                reports[c.idx].outcome = Outcome::Rejected(r);
                continue;
            }
            by_region
                .entry(region)
                .or_default()
                .push((Some(c.idx), c.sc, c.change));
        }
        for (region, mut waiting) in by_region {
            let doc = DocId::Region { region };
            for e in self.pending.take_doc(&doc) {
                if self.check_regional(&region, &e.change.hash()).is_ok() {
                    waiting.push((None, e.sc, e.change));
                }
            }
            let st = self
                .regions
                .get(&region)
                .map(|s| (**s).clone())
                .unwrap_or_else(RegionState::new);
            let mut known: HashSet<ChangeHash> = st.changes.keys().copied().collect();
            let mut seqs = st.seqs.clone();
            let mut ready = Vec::new();
            loop {
                let before = waiting.len();
                let mut rest = Vec::new();
                for w in waiting {
                    if !w.2.deps().iter().all(|d| known.contains(d)) {
                        rest.push(w);
                        continue;
                    }
                    let slot = (w.2.actor_id().to_bytes().to_vec(), w.2.seq());
                    if seqs.get(&slot).is_some_and(|h| *h != w.2.hash()) {
                        if let Some(i) = w.0 {
                            reports[i].outcome = Outcome::Rejected(Rejection::Fork {
                                actor: hex::encode(&slot.0),
                                seq: slot.1,
                            });
                        }
                        continue;
                    }
                    seqs.insert(slot, w.2.hash());
                    known.insert(w.2.hash());
                    ready.push(w);
                }
                waiting = rest;
                if waiting.len() == before || waiting.is_empty() {
                    break;
                }
            }
            for (idx, sc, change) in waiting {
                if let Some(i) = idx {
                    reports[i].outcome = Outcome::Pending;
                }
                self.pending.insert(sc, change, &self.limits);
            }
            if ready.is_empty() {
                continue;
            }
            let mut st = st;
            let changes: Vec<Change> = ready.iter().map(|r| r.2.clone()).collect();
            if let Err(e) = st.doc.apply_changes(changes) {
                tracing::error!(error = %e, "automerge refused a batch of committed changes of a region's scoped policy");
                for (idx, _, _) in ready {
                    if let Some(i) = idx {
                        reports[i].outcome =
                            Outcome::Rejected(Rejection::Unappliable(e.to_string()));
                    }
                }
                continue;
            }
            for (idx, sc, change) in ready {
                let h = change.hash();
                st.seqs
                    .insert((change.actor_id().to_bytes().to_vec(), change.seq()), h);
                st.order.push(h);
                st.changes.insert(h, sc);
                if let Some(i) = idx {
                    reports[i].outcome = Outcome::Applied;
                }
            }
            st.policy = RegionalPolicy::from_doc(&st.doc);
            self.regions.insert(region, Arc::new(st));
        }
    }

    fn authorise_status(&self, doc: &DocId, node: &NodeId) -> Result<(), Rejection> {
        let policy = &self.pol.policy;
        if policy.revoked.contains_key(node) {
            return Err(Rejection::Revoked(node.short()));
        }
        if !policy.members.contains_key(node) {
            return Err(Rejection::Unenrolled(node.short()));
        }
        self.check_scope(doc, node)
    }

    /// A status document this holder may not hold is refused
    /// ([`Rejection::OutOfScope`]); summaries go everywhere.
    fn check_scope(&self, doc: &DocId, node: &NodeId) -> Result<(), Rejection> {
        let policy = &self.pol.policy;
        if let (DocId::Status { .. }, Some(me)) = (doc, self.holder)
            && !policy.may_hold_status(&me, node)
        {
            return Err(Rejection::OutOfScope {
                owner: node.short(),
                region: policy.status_scope(node).unwrap_or_default().to_string(),
            });
        }
        Ok(())
    }

    fn apply_status(
        &mut self,
        batch: Vec<Candidate>,
        reports: &mut [Report],
        admit: &mut dyn FnMut(&NodeId) -> bool,
    ) {
        let mut by_doc: BTreeMap<DocId, Vec<(Option<usize>, SignedChange, Change)>> =
            BTreeMap::new();
        for c in batch {
            let Some((node, _, _)) = c.sc.doc.owned() else {
                unreachable!("status batch holds status and summary changes")
            };
            if let Err(r) = self.authorise_status(&c.sc.doc, &node) {
                reports[c.idx].outcome = Outcome::Rejected(r);
                continue;
            }
            by_doc
                .entry(c.sc.doc)
                .or_default()
                .push((Some(c.idx), c.sc, c.change));
        }
        for (doc, mut list) in by_doc {
            for e in self.pending.take_doc(&doc) {
                list.push((None, e.sc, e.change));
            }
            self.apply_status_doc(doc, list, reports, admit);
        }
    }

    fn apply_status_doc(
        &mut self,
        doc: DocId,
        mut waiting: Vec<(Option<usize>, SignedChange, Change)>,
        reports: &mut [Report],
        admit: &mut dyn FnMut(&NodeId) -> bool,
    ) {
        let Some((node, epoch, kind)) = doc.owned() else {
            unreachable!("status or summary document")
        };
        if self.is_stale(&doc) {
            for (idx, _, _) in waiting {
                if let Some(i) = idx {
                    reports[i].outcome = Outcome::Stale;
                }
            }
            return;
        }
        // A newer epoch starts with a change that has no dependencies.
        let newer = self.owned(kind).get(&node).is_none_or(|s| s.epoch < epoch);
        let mut next_doc = if newer {
            None
        } else {
            self.owned_mut(kind).remove(&node)
        };
        loop {
            let mut progressed = false;
            let mut rest = Vec::new();
            for (idx, sc, change) in waiting {
                let deps_ok = match &next_doc {
                    None => change.deps().is_empty(),
                    Some(d) => change.deps().iter().all(|h| d.position(h).is_some()),
                };
                if !deps_ok {
                    rest.push((idx, sc, change));
                    continue;
                }
                let void = next_doc.as_ref().is_some_and(|d| d.void);
                if void {
                    // Voided by an earlier change of this batch.
                    if let Some(i) = idx {
                        reports[i].outcome = Outcome::Stale;
                    }
                    continue;
                }
                if !admit(&node) {
                    if let Some(i) = idx {
                        reports[i].outcome =
                            Outcome::Rejected(Rejection::RateLimited(node.short()));
                    }
                    continue;
                }
                let d =
                    Arc::make_mut(next_doc.get_or_insert_with(|| Arc::new(StatusDoc::new(epoch))));
                let hash = change.hash();
                // Only a change that had waited is reported (and so copied).
                match idx {
                    Some(i) => reports[i].outcome = Outcome::Applied,
                    None => self.promoted.push((sc.clone(), hash)),
                }
                if d.changes.len() >= self.limits.status_epoch_changes_max {
                    // One change past the bound voids the epoch, on every
                    // replica alike, whichever changes arrived first: its
                    // status is no longer read, and the changes held (this one
                    // among them) are the evidence that voids it elsewhere.
                    tracing::debug!(node = %node.short(), epoch, "status epoch over-full: void");
                    d.void = true;
                    d.status = NodeStatus::default();
                    d.hashes.push(hash);
                    d.deps.push(change.deps().to_vec());
                    d.changes.push(sc);
                    d.heads.clear();
                } else {
                    apply_status_change(d, sc, &change);
                }
                progressed = true;
            }
            waiting = rest;
            if !progressed || waiting.is_empty() {
                break;
            }
        }
        if let Some(d) = next_doc {
            if newer {
                // Changes waiting for an epoch this one replaces will never apply.
                for old in self.pending.docs_of_node(&node) {
                    if old
                        .owned()
                        .is_some_and(|(_, e, k)| k == kind && e < d.epoch)
                    {
                        self.pending.take_doc(&old);
                    }
                }
            }
            self.owned_mut(kind).insert(node, d);
        }
        let void = self.is_stale(&doc);
        if void {
            self.pending.take_doc(&doc);
        }
        for (idx, sc, change) in waiting {
            if void {
                if let Some(i) = idx {
                    reports[i].outcome = Outcome::Stale;
                }
                continue;
            }
            if let Some(i) = idx {
                reports[i].outcome = Outcome::Pending;
            }
            self.pending.insert(sc, change, &self.limits);
        }
    }

    /// The materialised policy.
    pub fn policy(&self) -> &Policy {
        &self.pol.policy
    }

    /// The policy heads.
    pub fn policy_heads(&self) -> Vec<ChangeHash> {
        self.pol.doc.get_heads()
    }

    /// The live policy document (read-only).
    pub fn policy_doc(&self) -> &Automerge {
        &self.pol.doc
    }

    /// The effective config of a node, if it is an active member.
    /// Its region's scoped policy is merged in when held here.
    pub fn effective_config(&self, node: &NodeId) -> Option<serde_json::Value> {
        let policy = &self.pol.policy;
        let regional = policy
            .members
            .get(node)
            .and_then(|m| self.regions.get(&RegionId::of(&m.region)))
            .map(|r| &r.policy.config);
        policy.effective_config_with(node, regional)
    }

    /// The scoped policy of region `region` held here (`None`: none held).
    pub fn regional(&self, region: &str) -> Option<&RegionalPolicy> {
        self.regions.get(&RegionId::of(region)).map(|r| &r.policy)
    }

    /// The changes of region `region`'s scoped policy that the fleet policy
    /// commits to and this replica does not hold: what keeps a site of that
    /// region from applying its whole config.
    pub fn regional_missing(&self, region: &str) -> usize {
        let held = self.regions.get(&RegionId::of(region));
        self.pol.policy.regional.get(region).map_or(0, |set| {
            set.iter()
                .filter(|h| held.is_none_or(|r| !r.changes.contains_key(h)))
                .count()
        })
    }

    /// The changes of region `region`'s scoped policy held, in applicable
    /// order.
    pub fn regional_changes(&self, region: &str) -> Vec<SignedChange> {
        self.region_changes(&RegionId::of(region))
    }

    /// [`Replica::regional_changes`] by region id.
    pub fn region_changes(&self, region: &RegionId) -> Vec<SignedChange> {
        self.regions
            .get(region)
            .map(|r| {
                r.order
                    .iter()
                    .filter_map(|h| r.changes.get(h).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A node's status and the epoch it was read from.
    /// `None` when none is held or the epoch held is void.
    pub fn status(&self, node: &NodeId) -> Option<(&NodeStatus, u32)> {
        self.statuses
            .get(node)
            .filter(|s| !s.void)
            .map(|s| (&s.status, s.epoch))
    }

    /// The status epoch held for `node`, void or not.
    pub fn status_epoch(&self, node: &NodeId) -> Option<u32> {
        self.statuses.get(node).map(|s| s.epoch)
    }

    /// The epoch held of `node`'s document of `kind`, void or not.
    pub fn owned_epoch(&self, node: &NodeId, kind: OwnedKind) -> Option<u32> {
        self.owned(kind).get(node).map(|s| s.epoch)
    }

    /// A node's summary ([`crate::status::SUMMARY_FIELDS`] only) and the
    /// epoch it was read from; `None` when none is held or it is void.
    pub fn summary(&self, node: &NodeId) -> Option<(&NodeStatus, u32)> {
        self.summaries
            .get(node)
            .filter(|s| !s.void)
            .map(|s| (&s.status, s.epoch))
    }

    /// Drop every status document of `node` held here (not its summary):
    /// what a site does with the status of a region-scoped site of another
    /// region. True if one was held.
    pub fn drop_status(&mut self, node: &NodeId) -> bool {
        for d in self.pending.docs_of_node(node) {
            if matches!(d, DocId::Status { .. }) {
                self.pending.take_doc(&d);
            }
        }
        self.statuses.remove(node).is_some()
    }

    /// Every status held.
    pub fn statuses(&self) -> impl Iterator<Item = (&NodeId, &NodeStatus, u32)> {
        self.statuses
            .iter()
            .filter(|(_, s)| !s.void)
            .map(|(n, s)| (n, &s.status, s.epoch))
    }

    /// Every document held, with its heads (sorted).
    pub fn docs(&self) -> Vec<(DocId, Vec<ChangeHash>)> {
        let mut out = Vec::with_capacity(self.statuses.len() + 1);
        if !self.pol.changes.is_empty() {
            let mut h = self.policy_heads();
            h.sort();
            out.push((DocId::Policy, h));
        }
        for (id, r) in &self.regions {
            let mut h = r.doc.get_heads();
            h.sort();
            out.push((DocId::Region { region: *id }, h));
        }
        for (n, s) in &self.statuses {
            out.push((
                DocId::Status {
                    node: *n,
                    epoch: s.epoch,
                },
                s.reported_heads(),
            ));
        }
        for (n, s) in &self.summaries {
            out.push((
                DocId::Summary {
                    node: *n,
                    epoch: s.epoch,
                },
                s.reported_heads(),
            ));
        }
        out
    }

    /// How many documents [`Replica::docs`] lists, without listing them.
    pub fn doc_count(&self) -> usize {
        usize::from(!self.pol.changes.is_empty())
            + self.regions.len()
            + self.statuses.len()
            + self.summaries.len()
    }

    /// The heads of one document (empty if not held).
    pub fn heads(&self, doc: &DocId) -> Vec<ChangeHash> {
        match doc {
            DocId::Policy => self.policy_heads(),
            DocId::Region { region } => self
                .regions
                .get(region)
                .map(|r| r.doc.get_heads())
                .unwrap_or_default(),
            _ => self
                .owned_doc(doc)
                .map(|s| s.reported_heads())
                .unwrap_or_default(),
        }
    }

    /// One held change.
    pub fn get(&self, doc: &DocId, h: &ChangeHash) -> Option<&SignedChange> {
        match doc {
            DocId::Policy => self.pol.changes.get(h),
            DocId::Region { region } => self.regions.get(region).and_then(|r| r.changes.get(h)),
            _ => self
                .owned_doc(doc)
                .and_then(|s| s.position(h).map(|i| &s.changes[i])),
        }
    }

    /// Whether a change is held (applied or pending).
    pub fn contains(&self, doc: &DocId, h: &ChangeHash) -> bool {
        self.has(doc, h)
    }

    /// The changes of `doc` that a peer whose heads are `their_heads` lacks, in an
    /// order that applies (dependencies first). Heads this replica does not know
    /// are ignored (the peer has something we lack).
    pub fn missing_for(&self, doc: &DocId, their_heads: &[ChangeHash]) -> Vec<&SignedChange> {
        match doc {
            DocId::Policy => authority_missing(
                their_heads,
                &self.pol.doc,
                &self.pol.changes,
                &self.pol.order,
            ),
            DocId::Region { region } => self
                .regions
                .get(region)
                .map(|r| authority_missing(their_heads, &r.doc, &r.changes, &r.order))
                .unwrap_or_default(),
            _ => {
                let Some(s) = self.owned_doc(doc) else {
                    return Vec::new();
                };
                let have = ancestors(their_heads, |h| s.position(h).map(|i| s.deps[i].clone()));
                s.changes
                    .iter()
                    .zip(s.changes.iter().map(|c| c.hash().ok()))
                    .filter(|(_, h)| h.is_none_or(|h| !have.contains(&h)))
                    .map(|(c, _)| c)
                    .collect()
            }
        }
    }

    /// Every held change of every document (policy first, in applicable order):
    /// what a store persists and what a base snapshot exports.
    pub fn all_changes(&self) -> impl Iterator<Item = &SignedChange> {
        self.pol
            .order
            .iter()
            .filter_map(|h| self.pol.changes.get(h))
            .chain(
                self.regions
                    .values()
                    .flat_map(|r| r.order.iter().filter_map(|h| r.changes.get(h))),
            )
            .chain(self.statuses.values().flat_map(|s| s.changes.iter()))
            .chain(self.summaries.values().flat_map(|s| s.changes.iter()))
    }

    /// The policy changes, then the changes of every region's scoped policy
    /// held, each in applicable order: what a base snapshot exports.
    pub fn authority_changes(&self) -> Vec<SignedChange> {
        let mut out = self.policy_changes();
        for id in self.regions.keys() {
            out.extend(self.region_changes(id));
        }
        out
    }

    /// The policy changes, in applicable order.
    pub fn policy_changes(&self) -> Vec<SignedChange> {
        self.pol
            .order
            .iter()
            .filter_map(|h| self.pol.changes.get(h).cloned())
            .collect()
    }

    /// Sizes, for metrics.
    pub fn stats(&self) -> ReplicaStats {
        let status_changes: usize = self
            .statuses
            .values()
            .chain(self.summaries.values())
            .map(|s| s.changes.len())
            .sum();
        let bytes: usize = self
            .all_changes()
            .map(|c| c.change.len() + c.sigs.len() * 96)
            .sum();
        ReplicaStats {
            status_docs: self.statuses.len(),
            changes: self.pol.changes.len()
                + self
                    .regions
                    .values()
                    .map(|r| r.changes.len())
                    .sum::<usize>()
                + status_changes,
            status_changes,
            change_bytes: bytes,
            pending: self.pending.count,
            pending_dropped: self.pending.dropped,
            void_epochs: self
                .statuses
                .values()
                .chain(self.summaries.values())
                .filter(|s| s.void)
                .count(),
        }
    }
}

/// The changes of an authority document (in applicable order) that a peer
/// whose heads are `their_heads` lacks.
fn authority_missing<'a>(
    their_heads: &[ChangeHash],
    doc: &Automerge,
    changes: &'a HashMap<ChangeHash, SignedChange>,
    order: &[ChangeHash],
) -> Vec<&'a SignedChange> {
    let known: Vec<ChangeHash> = their_heads
        .iter()
        .filter(|h| changes.contains_key(h))
        .copied()
        .collect();
    let have = ancestors(&known, |h| {
        doc.get_change_meta_by_hash(h).map(|m| m.deps.to_vec())
    });
    order
        .iter()
        .filter(|h| !have.contains(h))
        .filter_map(|h| changes.get(h))
        .collect()
}

/// Every hash reachable from `start` through `deps_of` (which answers `None` for
/// unknown hashes), `start` included where known.
fn ancestors(
    start: &[ChangeHash],
    deps_of: impl Fn(&ChangeHash) -> Option<Vec<ChangeHash>>,
) -> HashSet<ChangeHash> {
    let mut seen = HashSet::new();
    let mut stack: Vec<ChangeHash> = start.to_vec();
    while let Some(h) = stack.pop() {
        if seen.contains(&h) {
            continue;
        }
        if let Some(deps) = deps_of(&h) {
            seen.insert(h);
            stack.extend(deps);
        }
    }
    seen
}

fn apply_status_change(d: &mut StatusDoc, sc: SignedChange, change: &Change) {
    let h = change.hash();
    let expanded = change.decode();
    for (counter, op) in (change.start_op().get()..).zip(expanded.operations.iter()) {
        if let Key::Map(k) = &op.key
            && let Some(f) = STATUS_FIELDS.iter().position(|x| *x == k.as_str())
            && (counter, h) > d.clocks[f]
        {
            d.clocks[f] = (counter, h);
            let value = match &op.action {
                OpType::Put(automerge::ScalarValue::Str(s)) => Some(s.as_str()),
                _ => None,
            };
            // A value that does not parse leaves the field at its default.
            d.status.set_field(STATUS_FIELDS[f], value);
        }
    }
    d.heads.retain(|x| !change.deps().contains(x));
    d.heads.push(h);
    d.hashes.push(h);
    d.deps.push(change.deps().to_vec());
    d.changes.push(sc);
}

fn check_status_schema(
    change: &Change,
    fields: &[&str],
    value_max: usize,
) -> Result<(), Rejection> {
    let expanded = change.decode();
    for op in &expanded.operations {
        if op.obj != ObjectId::Root || op.insert {
            return Err(Rejection::Schema(
                "status ops must be on the root map".into(),
            ));
        }
        let Key::Map(k) = &op.key else {
            return Err(Rejection::Schema("status ops must use map keys".into()));
        };
        if !fields.contains(&k.as_str()) {
            let what = if fields == SUMMARY_FIELDS {
                "summary"
            } else {
                "status"
            };
            return Err(Rejection::Schema(format!("unknown {what} field {k:?}")));
        }
        match &op.action {
            OpType::Put(automerge::ScalarValue::Str(s)) if s.len() <= value_max => {}
            OpType::Put(automerge::ScalarValue::Str(s)) => {
                return Err(Rejection::Schema(format!(
                    "status field {k} is {} bytes, over {value_max}",
                    s.len()
                )));
            }
            OpType::Delete => {}
            _ => {
                return Err(Rejection::Schema(format!(
                    "status field {k} must be set to text"
                )));
            }
        }
    }
    Ok(())
}

fn check_policy_schema(change: &Change) -> Result<(), Rejection> {
    let expanded = change.decode();
    for op in &expanded.operations {
        if op.obj != ObjectId::Root || op.insert {
            return Err(Rejection::Schema(
                "policy ops must be on the root map".into(),
            ));
        }
        let Key::Map(k) = &op.key else {
            return Err(Rejection::Schema("policy ops must use map keys".into()));
        };
        let known = [
            "fleet/",
            "region/",
            "site/",
            "member/",
            "revoked/",
            "secret/",
            "scope/",
            crate::policy::REGIONAL_KEY_PREFIX,
        ];
        if !known.iter().any(|p| k.starts_with(p)) {
            return Err(Rejection::Schema(format!("unknown policy key {k:?}")));
        }
        match &op.action {
            OpType::Put(automerge::ScalarValue::Str(_)) | OpType::Delete => {}
            _ => {
                return Err(Rejection::Schema(format!(
                    "policy key {k} must be set to JSON text"
                )));
            }
        }
    }
    Ok(())
}

/// A change of a region's scoped policy sets dotted config paths to JSON
/// text on its root map, and nothing else.
fn check_regional_schema(change: &Change) -> Result<(), Rejection> {
    let expanded = change.decode();
    for op in &expanded.operations {
        if op.obj != ObjectId::Root || op.insert {
            return Err(Rejection::Schema(
                "regional policy ops must be on the root map".into(),
            ));
        }
        let Key::Map(k) = &op.key else {
            return Err(Rejection::Schema(
                "regional policy ops must use map keys".into(),
            ));
        };
        if let Err(e) = crate::policy::check_path(k) {
            return Err(Rejection::Schema(format!(
                "regional policy key {k:?} is not a config path: {e}"
            )));
        }
        match &op.action {
            OpType::Put(automerge::ScalarValue::Str(_)) | OpType::Delete => {}
            _ => {
                return Err(Rejection::Schema(format!(
                    "regional policy key {k} must be set to JSON text"
                )));
            }
        }
    }
    Ok(())
}
