//! The engine state machine: see the module docs of [`super`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use dcloud_crdt::status::EPOCH_CHANGES_DEFAULT;
use dcloud_crdt::{
    ChangeHash, Claim, DocId, FreshnessError, Limits, NodeId, Outcome, OwnedKind, Rejection,
    RejectionKind, Replica, Report, Rumour, SecretKey, SignedChange, SignedFreshness, SignedRumour,
    SignedTrustRoot, StatusWriter, TrustChain,
};
use rand::RngExt;

use super::config::EngineConfig;
use super::index::{DocIndex, key_of, split};
use super::membership::{Adopted, Liveness, MemberState, Membership, incarnation_of_epoch};
use super::wire::{
    ChangeId, Item, Message, Push, RangeItems, ShortId, Split, rumour_short_id, short_id,
};
use super::{DisconnectReason, Event, Input, Millis, Output, Persist, Timer};

/// Counters, for metrics and the simulator's report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Messages handed to the driver.
    pub messages_sent: u64,
    /// Bytes handed to the driver.
    pub bytes_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Changes received (from peers) or published that were new and applied.
    pub changes_applied: u64,
    /// New changes held back waiting for their dependencies.
    pub changes_pending: u64,
    /// Changes received that were already held.
    pub duplicates_received: u64,
    /// Changes received by eager push.
    pub eager_changes_received: u64,
    /// Changes received in answer to a graft, a want or reconciliation.
    pub reply_changes_received: u64,
    /// Of those, changes already held (or otherwise not new).
    pub reply_duplicates_received: u64,
    /// Changes received for an older status epoch than held.
    pub stale_received: u64,
    /// Times this node's writer moved past its own status from an earlier
    /// life (a lost store, a backup) that peers still held.
    pub earlier_lives_passed: u64,
    /// Rejected changes, trust roots and freshness statements, by reason.
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Reconciliation rounds started.
    pub anti_entropy_rounds: u64,
    /// Messages that did not decode.
    pub malformed_messages: u64,
    /// Encoded bytes of changes received from peers.
    pub change_bytes_received: u64,
    /// Encoded bytes of changes received from peers that were new here.
    pub new_change_bytes_received: u64,
    /// Lazy announcements sent (ids).
    pub announcements_sent: u64,
    /// Grafts sent (ids).
    pub grafts_sent: u64,
    /// Prunes sent.
    pub prunes_sent: u64,
    /// Requests (`Want`, `Graft`, `Sync`) not answered at all: the sender's
    /// answer budget was spent (`EngineConfig::answer_burst_bytes` and
    /// `answer_work_burst_lookups`).
    pub requests_refused: u64,
    /// Requests answered in part: the budget ran out while answering.
    pub answers_cut_short: u64,
    /// Bytes sent in answer to requests (changes, reconciliation steps, roots).
    pub answer_bytes_sent: u64,
    /// Work done in answer to requests (lookups, see `answer_work_burst_lookups`).
    pub answer_lookups: u64,
    /// Reconciliation steps left unanswered past `sync_retry_ms` (lost):
    /// each started a new round at once.
    pub sync_retries: u64,
    /// Key ranges not listed to a peer because another peer was already
    /// answering for them (`sync_hold_ms`).
    pub sync_ranges_held: u64,
    /// Membership probes sent (first sends and repeats).
    pub probes_sent: u64,
    /// Membership rumours whose signature was checked (news only).
    pub rumours_verified: u64,
    /// Suspicions this node raised (a neighbour unanswered or its link lost).
    pub suspicions_raised: u64,
    /// Times this node refuted a suspicion of itself.
    pub refutations: u64,
    /// Suspicions dropped for an incarnation their subject never announced.
    pub rumours_out_of_bound: u64,
    /// Rumours dropped over their reporter's (or subject's) budget.
    pub rumours_rate_limited: u64,
    /// Encoded bytes of the rumours received that were news here (adopted,
    /// or a suspicion of this node that it refuted): what membership had
    /// to tell this node, each piece once.
    pub new_rumour_bytes_received: u64,
    /// Bytes received, by message kind ([`Message::kind`]; undecodable
    /// messages under `"malformed"`).
    pub bytes_received_by_kind: BTreeMap<&'static str, u64>,
    /// Scoped status documents (changes and index items) the last gate
    /// before the wire took out of a message to a site outside their
    /// region: 0 unless a send decision missed the scope.
    pub scope_withheld: u64,
    /// Status documents dropped because the policy scoped them to a
    /// region this node is not in.
    pub scope_dropped: u64,
}

/// Why a freshness statement was not kept.
#[derive(Debug)]
enum FreshnessRefusal {
    /// It is invalid: its sender is penalised.
    Invalid(String),
    /// It may be valid for a node with another trust root: dropped quietly.
    Ignored(String),
}

impl std::fmt::Display for FreshnessRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreshnessRefusal::Invalid(e) | FreshnessRefusal::Ignored(e) => f.write_str(e),
        }
    }
}

/// A token bucket: `tokens` left, refilled with time up to a capacity.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u64,
    /// When tokens were last added.
    at: Millis,
}

impl Bucket {
    fn full(capacity: u64, now: Millis) -> Bucket {
        Bucket {
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Millis, capacity: u64, per_s: u64) {
        let elapsed = now.saturating_sub(self.at);
        let add = u64::try_from(u128::from(elapsed) * u128::from(per_s) / 1000).unwrap_or(u64::MAX);
        // Time that adds less than one token is kept for the next refill.
        if add > 0 || self.tokens >= capacity {
            self.tokens = self.tokens.saturating_add(add).min(capacity);
            self.at = now;
        }
    }
}

/// What is left of a peer's answer budget while one request is answered.
#[derive(Clone, Copy, Debug)]
struct Allowance {
    work: u64,
    bytes: u64,
    /// Whether some work or bytes were wanted but not allowed.
    short: bool,
}

impl Allowance {
    /// Take `n` units of work; false (and nothing taken) if none is left.
    fn work(&mut self, n: u64) -> bool {
        if self.work == 0 {
            self.short = true;
            return false;
        }
        self.work = self.work.saturating_sub(n);
        true
    }

    /// Whether any work is left (noting that more was wanted if not).
    fn has_work(&mut self) -> bool {
        if self.work == 0 {
            self.short = true;
        }
        self.work > 0
    }

    /// Take `n` units of work or bytes done already (saturating).
    fn spend(&mut self, work: u64, bytes: u64) {
        self.work = self.work.saturating_sub(work);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Whether `n` more bytes may be sent (taking them if so). The last
    /// answer may overshoot by one change or one message: the bound is the
    /// budget plus one message.
    fn bytes(&mut self, n: u64) -> bool {
        if self.bytes == 0 {
            self.short = true;
            return false;
        }
        self.bytes = self.bytes.saturating_sub(n);
        true
    }
}

#[derive(Debug)]
struct Peer {
    /// Owners whose status changes go to this peer lazily (the link is off
    /// their dissemination tree); every other owner's go eagerly.
    pruned: BTreeSet<NodeId>,
    penalty: u32,
    /// When the penalty last decayed.
    penalty_at: Millis,
    /// What this node still does for the peer's requests (token buckets).
    work: Bucket,
    bytes: Bucket,
    /// Announcements waiting for the next lazy flush.
    lazy: Vec<ShortId>,
    /// When the connection came up.
    connected_at: Millis,
    /// How often this peer answered reconciliation steps, in thousandths (a
    /// moving average: an answer moves it a fifth of the way to 1000, a step
    /// left unanswered a fifth of the way to 0). Rounds go more often to
    /// peers that answer: on a lossy link a round of several steps rarely
    /// completes.
    sync_quality: u32,
}

#[derive(Debug)]
struct Missing {
    /// Announcers not yet asked in this pass.
    announcers: Vec<NodeId>,
    /// Announcers asked in this pass.
    asked: Vec<NodeId>,
    /// Passes over the announcers completed.
    passes: u32,
    due: Millis,
}

/// What one ingest did.
struct Absorbed {
    reports: Vec<Report>,
    new: Vec<(ChangeId, SignedChange)>,
    /// Duplicates of status changes whose first copy also came down the tree
    /// (or was local): proof of a redundant eager link. Policy changes are
    /// flooded and answers race the tree, so their duplicates prove nothing.
    tree_dup_origins: BTreeSet<NodeId>,
    /// Owners of the new changes this node had been announced and was
    /// grafting (in `missing`).
    grafted_origins: BTreeSet<NodeId>,
}

/// What a node's store holds, for [`Engine::restore`].
pub struct Stored {
    /// This node's key.
    pub key: SecretKey,
    /// The trust chain in force (raised by the driver from its durable files).
    pub chain: TrustChain,
    /// Trust roots stored (those newer than the chain and extending it advance it).
    pub roots: Vec<SignedTrustRoot>,
    /// Changes stored (verified again).
    pub changes: Vec<SignedChange>,
    /// The replica's bounds.
    pub limits: Limits,
    /// The highest status epoch this node is known to have written (0: none).
    pub epoch_floor: u32,
    /// `Some(seed)`: each status epoch's automerge actor is drawn from a
    /// generator seeded so (the simulator, for runs that repeat); `None`: it
    /// is derived from the key (the daemon).
    pub actor_seed: Option<u64>,
}

/// Why [`Engine::restore`] cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// This node has used the last status epoch (a corrupt epoch file or store).
    #[error(
        "status epoch {floor} is the last one: this node cannot write its status in a new epoch (is the epoch file corrupt?)"
    )]
    EpochsExhausted {
        /// The highest epoch used.
        floor: u32,
    },
}

/// What [`Engine::restore`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// Changes read from the store.
    pub changes: usize,
    /// Of those, refused (they no longer verify).
    pub refused: usize,
    /// Stored trust roots that do not extend the chain (ignored).
    pub roots_ignored: usize,
    /// The status epoch this life writes in.
    pub epoch: u32,
}

/// What was refused from a peer, for [`EngineStats::rejected`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    /// A change, for this reason.
    Change(RejectionKind),
    /// A trust root that does not extend the chain.
    Root,
    /// A freshness statement that does not verify.
    Freshness,
}

impl RejectReason {
    /// A short stable label (the metrics' `reason`): the change's
    /// [`RejectionKind::label`], or `root`, or `freshness`.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Change(k) => k.label(),
            RejectReason::Root => "root",
            RejectReason::Freshness => "freshness",
        }
    }
}

/// The replication engine of one node.
pub struct Engine {
    config: EngineConfig,
    replica: Replica,
    writer: StatusWriter,
    /// The writer of this node's summary, from when its region is first
    /// scoped (kept after, so that its epochs never go back).
    summary_writer: Option<StatusWriter>,
    id: NodeId,
    index: DocIndex,
    /// With any region scoped: the index of what may leave this node's
    /// region (every document but scoped status), used with peers outside
    /// it. `None`: nothing is scoped, `index` serves everyone.
    index_out: Option<DocIndex>,
    /// The owners whose status was scoped at the last policy change, with
    /// their region.
    scoped_owners: BTreeMap<NodeId, String>,
    peers: BTreeMap<NodeId, Peer>,
    missing: BTreeMap<ShortId, Missing>,
    /// Recently disseminated changes by short id, and their arrival order.
    /// (id, when, how it came).
    recent: BTreeMap<ShortId, (ChangeId, Millis, Arrival)>,
    recent_order: VecDeque<(ShortId, Millis)>,
    /// Membership rumours seen recently, by short id (`wire::rumour_short_id`):
    /// the rumour itself if this node sent it on (to answer grafts), and
    /// when; and their arrival order. Bounded as `recent`.
    rumours_seen: BTreeMap<ShortId, (Option<SignedRumour>, Millis)>,
    rumours_order: VecDeque<(ShortId, Millis)>,
    last_heard: HashMap<NodeId, Millis>,
    revoked: BTreeSet<NodeId>,
    own_unpublished: Vec<SignedChange>,
    policy_heads: Vec<ChangeHash>,
    /// The engine's timers: when each is due (one entry per kind; setting
    /// one again replaces it). Drivers ask [`Engine::poll_timeout`].
    timers: BTreeMap<Timer, Millis>,
    /// Anti-entropy found something to repair since the last round: the next
    /// round comes sooner.
    repairing: bool,
    /// Peers from which an answer to a reconciliation step is awaited, since when.
    awaiting: BTreeMap<NodeId, Millis>,
    /// Pruned owners of peers whose connection went down, restored when it
    /// comes back (bounded by `pruned_memory_peers_max`).
    pruned_memory: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// Key ranges whose documents were listed to a peer that has not answered
    /// yet: (lo, hi, peer, until). Not listed to anyone else meanwhile.
    holds: VecDeque<(u64, u64, NodeId, Millis)>,
    /// Key ranges where this node found it lacks something (it listed its
    /// side back): (lo, hi, its fingerprint of the range then, until). The
    /// first step of each next round lists them again, until the range
    /// changes here or the entry expires: on a lossy link, where each step
    /// of a round may be lost, one step each way then fetches what it lacks.
    lacking: VecDeque<(u64, u64, (u32, u64), Millis)>,
    freshness: Option<SignedFreshness>,
    /// Each status owner's allowance of applied changes (see
    /// [`EngineConfig::status_owner_burst`]).
    owner_rates: OwnerRates,
    stats: EngineStats,
    /// Liveness of the members (SWIM's rules on the mesh; `membership.rs`).
    members: Membership,
    /// The membership probe in flight, if any.
    probe: Option<ProbeState>,
    probe_seq: u32,
    /// Connections lost, since when: suspected unless back within
    /// `membership.link_grace_ms`.
    lost: BTreeMap<NodeId, Millis>,
    /// The anti-entropy interval in force: it doubles while rounds find
    /// nothing, up to `anti_entropy_idle_max_ms`.
    ae_interval: u64,
    /// When a new change last arrived or a link came up (anti-entropy
    /// backs off only `anti_entropy_idle_after_ms` after it).
    active_at: Millis,
    /// Members this node suspected itself and has not been connected to
    /// since (its evidence still holds).
    my_suspicions: BTreeSet<NodeId>,
    /// News budgets: suspicions per reporter, refutations per subject.
    rumour_rates: OwnerRates,
}

/// One membership probe.
#[derive(Clone, Copy, Debug)]
struct ProbeState {
    peer: NodeId,
    seq: u32,
    /// Sends so far.
    sends: u32,
    started: Millis,
    acked: bool,
}

/// A token bucket per status owner: `burst` changes at once, then `per_s`
/// more a second. Owners are enrolled nodes (the replica asks only after
/// authorising), so the map is bounded by the fleet.
#[derive(Debug, Default)]
struct OwnerRates {
    buckets: HashMap<NodeId, Bucket>,
}

impl OwnerRates {
    fn take(&mut self, owner: NodeId, now: Millis, burst: u64, per_s: u64) -> bool {
        if per_s == 0 {
            return true;
        }
        let b = self
            .buckets
            .entry(owner)
            .or_insert_with(|| Bucket::full(burst, now));
        b.refill(now, burst, per_s);
        if b.tokens == 0 {
            return false;
        }
        b.tokens -= 1;
        true
    }

    /// Give back what `take` took for work that turned out to be a
    /// stranger's forgery: a forger must not spend the owner's budget.
    fn give_back(&mut self, owner: NodeId, burst: u64) {
        if let Some(b) = self.buckets.get_mut(&owner) {
            b.tokens = (b.tokens + 1).min(burst);
        }
    }
}

/// How a change this node holds first came to it (see `Engine::recent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    /// Published here (by this node, or handed to it to publish).
    Local,
    /// By eager push, from the peer whose id starts with these bytes.
    Eager([u8; 8]),
    /// In an answer (graft, want, reconciliation).
    Reply,
}

impl Arrival {
    fn of(from: Option<NodeId>, eager: bool) -> Arrival {
        match from {
            None => Arrival::Local,
            Some(p) if eager => Arrival::Eager(peer_tag(&p)),
            Some(_) => Arrival::Reply,
        }
    }

    /// Whether another copy pushed eagerly by `from` shows a redundant link
    /// of the tree: the first copy came down the tree (or was this node's
    /// own), from another peer. A second copy from the same peer is the
    /// network's duplicate, not a cycle: pruning that link would cut this
    /// node off the tree.
    fn tree_dup(self, from: Option<NodeId>) -> bool {
        match self {
            Arrival::Local => true,
            Arrival::Eager(tag) => from.is_none_or(|f| peer_tag(&f) != tag),
            Arrival::Reply => false,
        }
    }
}

fn peer_tag(p: &NodeId) -> [u8; 8] {
    p.0[..8].try_into().expect("a node id is 32 bytes")
}

/// The owner of a status document: the root of its dissemination tree.
fn origin(doc: &DocId) -> Option<NodeId> {
    doc.owned().map(|(node, _, _)| node)
}

/// Whether `doc` may be sent to `peer` under `policy`: anything but a
/// status document scoped to a region `peer` is not an active member of.
fn may_send(policy: &dcloud_crdt::Policy, doc: &DocId, peer: &NodeId) -> bool {
    match doc {
        DocId::Status { node, .. } => policy.may_hold_status(peer, node),
        DocId::Region { region } => policy.may_hold_region(peer, region),
        _ => true,
    }
}

/// `a` is an older epoch of `b`'s document (same owner, same kind).
fn older_epoch(a: &DocId, b: &DocId) -> bool {
    match (a.owned(), b.owned()) {
        (Some((na, ea, ka)), Some((nb, eb, kb))) => na == nb && ka == kb && ea < eb,
        _ => false,
    }
}

/// Below this `sync_quality` (a step to the peer lost within about its last
/// twenty answers) a round with the peer starts wide: on a clean link the
/// narrow start is cheaper and nearly always completes.
const LOSSY_SYNC_QUALITY: u32 = 995;

/// Most key ranges remembered as lacking (`Engine::lacking`), and for how
/// many anti-entropy intervals.
const LACKING_MAX: usize = 16;
const LACKING_INTERVALS: u64 = 3;

/// The most a signed rumour takes on the wire (a suspicion: two ids, an
/// incarnation, a signature), for answer budgets.
const RUMOUR_SIZE_BYTES: u64 = 150;

/// Forget the oldest of `order` past `max` entries or `keep` ms, each from
/// `map` only if it was not remembered again since (`at` is when it was).
fn trim_recent<V>(
    map: &mut BTreeMap<ShortId, V>,
    order: &mut VecDeque<(ShortId, Millis)>,
    max: usize,
    keep: u64,
    now: Millis,
    at: impl Fn(&V) -> Millis,
) {
    while let Some(&(old, t)) = order.front() {
        if order.len() <= max && t + keep > now {
            break;
        }
        order.pop_front();
        if map.get(&old).is_some_and(|v| at(v) == t) {
            map.remove(&old);
        }
    }
}

fn encoded_len(sc: &SignedChange) -> usize {
    postcard::experimental::serialized_size(sc).unwrap_or(sc.change.len())
}

/// The reconciliation index of a replica's documents, built once and shared
/// by the engines started from clones of that replica (see
/// [`Engine::with_index`]). Cloning it is O(1).
#[derive(Clone)]
pub struct IndexSnapshot(DocIndex);

impl IndexSnapshot {
    /// The index of every document `replica` holds, stamped `now`.
    pub fn of(replica: &Replica, now: Millis) -> IndexSnapshot {
        let mut index = DocIndex::default();
        for (doc, heads) in replica.docs() {
            index.set(doc, heads, now);
        }
        IndexSnapshot(index)
    }
}

impl Engine {
    /// An engine over `replica` (loaded from the store, or empty), writing this
    /// node's status with `writer`. The outputs set the first timers and
    /// persist the first heartbeat.
    pub fn new(
        config: EngineConfig,
        replica: Replica,
        writer: StatusWriter,
        now: Millis,
    ) -> (Engine, Vec<Output>) {
        let index = IndexSnapshot::of(&replica, now);
        Engine::with_index(config, replica, writer, now, index)
    }

    /// [`Engine::new`] with the reconciliation index of `replica` already
    /// built ([`IndexSnapshot::of`]): a simulator starting many engines from
    /// clones of one replica builds it once, and every engine shares its
    /// entries until it changes them. The snapshot must be of this replica's
    /// documents (checked by count in debug builds; a stale snapshot would make
    /// anti-entropy report documents the replica does not hold).
    pub fn with_index(
        config: EngineConfig,
        replica: Replica,
        writer: StatusWriter,
        now: Millis,
        index: IndexSnapshot,
    ) -> (Engine, Vec<Output>) {
        if let Err(e) = config.validate() {
            panic!(
                "invalid engine configuration (check it with EngineConfig::validate first): {e}"
            );
        }
        let IndexSnapshot(index) = index;
        debug_assert_eq!(
            index.len(),
            replica.doc_count(),
            "an index snapshot of another replica"
        );
        let mut policy_heads = replica.policy_heads();
        policy_heads.sort();
        let revoked = replica.policy().revoked.keys().copied().collect();
        // The writer does not expose its key; the id is the owner of the first
        // heartbeat, which every start writes (a node says it is up).
        let mut writer = writer;
        let first_heartbeat = writer.heartbeat();
        let incarnation = incarnation_of_epoch(writer.epoch());
        let id = match first_heartbeat.doc {
            DocId::Status { node, .. } => node,
            _ => unreachable!("a status writer writes status documents"),
        };
        let mut engine = Engine {
            config,
            replica,
            writer,
            summary_writer: None,
            id,
            index,
            index_out: None,
            scoped_owners: BTreeMap::new(),
            peers: BTreeMap::new(),
            missing: BTreeMap::new(),
            recent: BTreeMap::new(),
            recent_order: VecDeque::new(),
            rumours_seen: BTreeMap::new(),
            rumours_order: VecDeque::new(),
            last_heard: HashMap::new(),
            revoked,
            own_unpublished: Vec::new(),
            policy_heads,
            timers: BTreeMap::new(),
            repairing: false,
            awaiting: BTreeMap::new(),
            pruned_memory: BTreeMap::new(),
            holds: VecDeque::new(),
            lacking: VecDeque::new(),
            freshness: None,
            owner_rates: OwnerRates::default(),
            stats: EngineStats::default(),
            members: Membership::new(id, incarnation),
            probe: None,
            probe_seq: 0,
            lost: BTreeMap::new(),
            ae_interval: 0,
            active_at: now,
            my_suspicions: BTreeSet::new(),
            rumour_rates: OwnerRates::default(),
        };
        engine.ae_interval = engine.config.anti_entropy_interval_ms;
        engine
            .members
            .set_confirmations(engine.config.membership.suspicion_confirmations);
        let first_round = now + engine.config.anti_entropy_interval_ms;
        engine.timers.insert(Timer::AntiEntropy, first_round);
        let mut out = Vec::new();
        engine.replica.hold_as(id);
        engine.enforce_scope(now, &mut out);
        engine.publish_own(first_heartbeat, now, &mut out);
        engine.write_summary(now, &mut out);
        // First timers spread by node id, so that a fleet started at once
        // does not refresh or probe in step (later ones are jittered too).
        let spread = u64::from(u16::from_be_bytes([id.0[0], id.0[1]]));
        let interval = engine.config.status_refresh_interval_ms;
        if interval > 0 {
            // Somewhere in the second half of the interval.
            engine.timers.insert(
                Timer::StatusRefresh,
                now + interval / 2 + spread * (interval / 2) / u64::from(u16::MAX),
            );
        }
        if engine.config.membership.enabled {
            let p = engine.config.membership.probe_interval_ms;
            engine
                .timers
                .insert(Timer::Probe, now + spread * p / u64::from(u16::MAX));
        }
        (engine, out)
    }

    /// Start from what a node's store holds: the trust chain in force (the
    /// driver raises it from its own durable files first), the stored trust
    /// roots (those that extend it advance it), the stored changes (verified
    /// again like any others: a store is not trusted more than a peer), and
    /// the highest status epoch this node is known to have written
    /// (`epoch_floor`, from a file that survives a lost store). This node
    /// writes its status in a new epoch above every one it ever used, so that
    /// what it says after a restart never contradicts what it said before;
    /// Daemon and simulator both start so.
    pub fn restore(
        config: EngineConfig,
        stored: Stored,
        now: Millis,
    ) -> Result<(Engine, Vec<Output>, Restored), RestoreError> {
        let Stored {
            key,
            mut chain,
            roots,
            changes,
            limits,
            epoch_floor,
            actor_seed,
        } = stored;
        let mut roots_ignored = 0;
        let mut roots = roots;
        roots.sort_by_key(|r| r.root.version);
        for root in roots {
            if root.root.version > chain.current().version && chain.advance(root).is_err() {
                roots_ignored += 1;
            }
        }
        let mut replica = Replica::new(chain, limits);
        let me = key.public();
        let stored_count = changes.len();
        let refused = replica
            .ingest(changes)
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Rejected(_)))
            .count();
        // From what the replica accepted, not from what the store claims: a
        // corrupt stored change must not push the epoch anywhere.
        let own_epoch_max = replica.status_epoch(&me).unwrap_or(0);
        let epoch =
            epoch_floor
                .max(own_epoch_max)
                .checked_add(1)
                .ok_or(RestoreError::EpochsExhausted {
                    floor: epoch_floor.max(own_epoch_max),
                })?;
        let writer = match actor_seed {
            Some(seed) => StatusWriter::seeded(key, epoch, EPOCH_CHANGES_DEFAULT, seed),
            None => StatusWriter::new(key, epoch, EPOCH_CHANGES_DEFAULT),
        };
        let (engine, out) = Engine::new(config, replica, writer, now);
        Ok((
            engine,
            out,
            Restored {
                changes: stored_count,
                refused,
                roots_ignored,
                epoch,
            },
        ))
    }

    /// Whether `peer` may talk to this node: an active member of the policy
    /// and not revoked; or anyone not revoked while this node is not itself
    /// an active member of the policy it holds (none yet, or one from before
    /// its enrolment: the bootstrap exception, so that a site just set up can
    /// receive the policy that enrols it). The reason when not.
    pub fn admits(&self, peer: &NodeId) -> Result<(), DisconnectReason> {
        let policy = self.replica.policy();
        if self.revoked.contains(peer) || policy.revoked.contains_key(peer) {
            Err(DisconnectReason::Revoked)
        } else if policy.members.is_empty()
            || !policy.is_active_member(&self.id)
            || policy.is_active_member(peer)
        {
            // The bootstrap exception covers a node that is not (or not yet)
            // a member of the policy it holds: an old policy relayed to a
            // fresh node must not make it refuse the members that would bring
            // it the newer one.
            Ok(())
        } else {
            Err(DisconnectReason::NotAdmitted)
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Local time this node last heard from `node` itself (never its clock):
    /// a message over a direct link, or a status change of its own.
    pub fn last_heard(&self, node: &NodeId) -> Option<Millis> {
        self.last_heard.get(node).copied()
    }

    /// What membership holds about `node`: alive, suspect or down, since
    /// when. `None`: nothing was ever said about it (membership off, or a
    /// member nobody suspected and that never had to refute).
    pub fn liveness(&self, node: &NodeId) -> Option<Liveness> {
        self.members.liveness(node)
    }

    /// The membership table.
    pub fn membership(&self) -> &Membership {
        &self.members
    }

    /// Connected peers.
    pub fn peers(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    /// Peers on the eager side of `origin`'s dissemination tree.
    pub fn eager_peers(&self, origin: &NodeId) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.pruned.contains(origin))
            .map(|(n, _)| *n)
            .collect()
    }

    /// Links pruned from some owner's tree, summed over owners.
    pub fn pruned_links(&self) -> usize {
        self.peers.values().map(|p| p.pruned.len()).sum()
    }

    /// A fingerprint of every document held with its heads (the
    /// reconciliation index's root): two engines with equal fingerprints hold
    /// the same documents, but for a 2^-64 chance. Cheap: for metrics and checks.
    pub fn state_fingerprint(&self) -> (u32, u64) {
        self.index.range_fp(0, u64::MAX)
    }

    /// [`Engine::state_fingerprint`] of what may leave this node's region
    /// (every document but status scoped to a region): equal on every node
    /// that holds the same, whatever their regions.
    pub fn shared_fingerprint(&self) -> (u32, u64) {
        self.index_out
            .as_ref()
            .unwrap_or(&self.index)
            .range_fp(0, u64::MAX)
    }

    /// The newest valid freshness statement held (not checked for expiry).
    pub fn freshness(&self) -> Option<&SignedFreshness> {
        self.freshness.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        self.stats.clone()
    }

    /// When the engine next wants [`Engine::handle_timeout`] called (driver
    /// clock); `None` while no timer is set. Ask again after every call.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.timers.values().min().copied()
    }

    /// Fire every timer due at `now` (earliest first); carry out the outputs
    /// in order, as for [`Engine::handle`].
    pub fn handle_timeout(&mut self, now: Millis, rng: &mut impl rand::Rng) -> Vec<Output> {
        let mut out = Vec::new();
        // Bounded: each kind fires at most once per call (one set again for
        // `now` waits for the next call).
        let due: Vec<(Millis, Timer)> = {
            let mut d: Vec<(Millis, Timer)> = self
                .timers
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(t, at)| (*at, *t))
                .collect();
            d.sort();
            d
        };
        for (_, t) in due {
            self.timers.remove(&t);
            self.on_timer(t, now, rng, &mut out);
        }
        out
    }

    /// Fire one timer now, whether or not it is due (tests).
    #[cfg(test)]
    pub(crate) fn fire(&mut self, t: Timer, now: Millis, rng: &mut impl rand::Rng) -> Vec<Output> {
        let mut out = Vec::new();
        self.timers.remove(&t);
        self.on_timer(t, now, rng, &mut out);
        out
    }

    /// When timer `t` is due, if set (tests).
    #[cfg(test)]
    pub(crate) fn timer(&self, t: Timer) -> Option<Millis> {
        self.timers.get(&t).copied()
    }

    /// Set `t` for `at` unless it is already set for earlier.
    fn arm(&mut self, t: Timer, at: Millis) {
        let e = self.timers.entry(t).or_insert(at);
        *e = (*e).min(at);
    }

    /// Handle one input at time `now`; carry out the outputs in order.
    pub fn handle(&mut self, input: Input, now: Millis) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::PeerUp { peer } => self.on_peer_up(peer, now, &mut out),
            Input::PeerDown { peer } => {
                if let Some(p) = self.peers.remove(&peer)
                    && self.config.pruned_memory_peers_max > 0
                {
                    // Its place in the owners' trees, for when it comes back
                    // (a heal): links that were redundant before stay lazy
                    // rather than flooding every owner's changes once more.
                    if self.pruned_memory.len() >= self.config.pruned_memory_peers_max {
                        self.pruned_memory.pop_first();
                    }
                    self.pruned_memory.insert(peer, p.pruned);
                }
                self.awaiting.remove(&peer);
                self.holds.retain(|h| h.2 != peer);
                self.on_link_lost(peer, now);
            }
            Input::Message { from, bytes } => self.on_bytes(from, &bytes, now, &mut out),
            Input::Publish { roots, changes } => self.on_publish(roots, changes, now, &mut out),
            Input::SetStatus(status) => {
                if let Some(c) = self.writer.update(&status) {
                    self.publish_own(c, now, &mut out);
                }
                self.write_summary(now, &mut out);
            }
            Input::Freshness { statement } => {
                if let Err(e) = self.on_freshness(None, &statement, &mut out) {
                    tracing::info!(error = %e, "local freshness statement not kept");
                }
            }
        }
        self.move_past_earlier_life(now, &mut out);
        self.members
            .raise_incarnation(incarnation_of_epoch(self.writer.epoch()));
        out
    }

    /// A node that lost its store (or came back from a backup, or with only
    /// `node.key`) starts writing at a low epoch while its peers hold its
    /// status from an earlier life, which replicas prefer. Once this node's
    /// replica holds its own status at the writer's epoch or later with
    /// changes the writer did not make, the writer moves past that history:
    /// a new epoch above it, holding the whole current status.
    fn move_past_earlier_life(&mut self, now: Millis, out: &mut Vec<Output>) {
        // The summary likewise (it carries no incarnation).
        if let (Some(w), Some(held)) = (
            &mut self.summary_writer,
            self.replica.owned_epoch(&self.id, OwnedKind::Summary),
        ) {
            let doc = DocId::Summary {
                node: self.id,
                epoch: held,
            };
            let foreign = held > w.epoch()
                || held == w.epoch() && self.replica.heads(&doc).iter().any(|h| !w.knows(h));
            if foreign && let Some(c) = w.move_past(held) {
                self.publish_own(c, now, out);
            }
        }
        let Some((_, held)) = self.replica.status(&self.id) else {
            return;
        };
        let mine = self.writer.epoch();
        let foreign = held > mine
            || held == mine
                && self
                    .replica
                    .heads(&DocId::Status {
                        node: self.id,
                        epoch: held,
                    })
                    .iter()
                    .any(|h| !self.writer.knows(h));
        if !foreign {
            return;
        }
        if let Some(c) = self.writer.move_past(held) {
            self.stats.earlier_lives_passed += 1;
            self.publish_own(c, now, out);
            // Suspicions of the earlier life are above what this life had
            // announced (it started low): say it is alive above them all.
            self.members
                .raise_incarnation(incarnation_of_epoch(self.writer.epoch()));
            if self.config.membership.enabled && self.is_member(&self.id) {
                let alive = self.own_alive();
                self.flood_rumours(None, vec![alive], now, out);
            }
        }
    }

    // ---- inputs ----

    fn on_peer_up(&mut self, peer: NodeId, now: Millis, out: &mut Vec<Output>) {
        if let Err(reason) = self.admits(&peer) {
            self.drop_peer(&peer);
            out.push(Output::Disconnect { peer, reason });
            return;
        }
        // A repeated PeerUp (no PeerDown between) keeps the penalty and what
        // is left of the answer budget.
        let cfg = &self.config;
        let (penalty, penalty_at, work, bytes, sync_quality) = self.peers.get(&peer).map_or(
            (
                0,
                now,
                Bucket::full(cfg.answer_work_burst_lookups, now),
                Bucket::full(cfg.answer_burst_bytes, now),
                1000,
            ),
            |p| (p.penalty, p.penalty_at, p.work, p.bytes, p.sync_quality),
        );
        let pruned = match self.peers.get(&peer) {
            Some(p) => p.pruned.clone(),
            None => self.pruned_memory.remove(&peer).unwrap_or_default(),
        };
        self.peers.insert(
            peer,
            Peer {
                pruned,
                penalty,
                penalty_at,
                work,
                bytes,
                lazy: Vec::new(),
                connected_at: now,
                sync_quality,
            },
        );
        self.last_heard.insert(peer, now);
        self.lost.remove(&peer);
        self.my_suspicions.remove(&peer);
        self.reset_anti_entropy(now);
        if self.config.membership.enabled {
            // What this node suspects, so that a suspected peer (restarted,
            // or back from a partition) refutes, and the peer learns what it
            // missed.
            // Those of the peer itself in full; the rest by id (it grafts
            // what it lacks: after a heal most of it came another way).
            let (own, others): (Vec<_>, Vec<_>) = self
                .members
                .suspicions()
                .into_iter()
                .partition(|r| r.rumour.subject == peer);
            self.send_rumours(peer, own, out);
            if !others.is_empty() {
                for r in &others {
                    self.saw_rumour(r, true, now);
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.lazy.extend(others.iter().map(rumour_short_id));
                    let over = p.lazy.len().saturating_sub(self.config.lazy_queue_max);
                    p.lazy.drain(..over);
                }
                if !self.timers.contains_key(&Timer::LazyFlush) {
                    let at = now + self.config.lazy_flush_interval_ms;
                    self.timers.insert(Timer::LazyFlush, at);
                }
            }
        }
        // Catch up at once (after a restart or a heal) rather than at the next
        // round; but one round at a time: when many links come up together
        // (a heal), the peers' own rounds cover the others, and this node's
        // first lists then go to one neighbour rather than to all at once.
        if self.awaiting.is_empty() {
            self.start_sync(peer, false, now, out);
        }
        if let Some(f) = &self.freshness {
            let msg = Message::Freshness {
                statement: f.encode(),
            };
            self.send(peer, &msg, out);
        }
    }

    fn on_bytes(&mut self, from: NodeId, bytes: &[u8], now: Millis, out: &mut Vec<Output>) {
        self.stats.messages_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        self.decay_penalty(from, now);
        if self.peers.contains_key(&from) {
            self.last_heard.insert(from, now);
        }
        let decoded = Message::decode(bytes, &self.config.wire);
        let kind = decoded.as_ref().map_or("malformed", Message::kind);
        *self.stats.bytes_received_by_kind.entry(kind).or_default() += bytes.len() as u64;
        match decoded {
            Err(e) => {
                self.stats.malformed_messages += 1;
                tracing::debug!(peer = %from, error = %e, "undecodable message");
                let w = self.config.penalty_per_offence;
                self.penalise(from, w, format!("sent an invalid message: {e}"), out);
            }
            Ok(msg) => self.on_message(from, msg, now, out),
        }
        if self.repairing {
            self.hasten_anti_entropy(now);
        }
    }

    fn on_message(&mut self, from: NodeId, msg: Message, now: Millis, out: &mut Vec<Output>) {
        match msg {
            Message::Changes { push, changes } => {
                if push == Push::Reply {
                    // The answer to what this node listed to the peer.
                    self.holds.retain(|h| h.2 != from);
                }
                let a = self.absorb(Some(from), changes, push == Push::Eager, now, out);
                // Not new: everything but what applied or now waits (`new`
                // also holds earlier changes that this batch let apply).
                let dups = a
                    .reports
                    .iter()
                    .filter(|r| !matches!(r.outcome, Outcome::Applied | Outcome::Pending))
                    .count();
                match push {
                    Push::Eager => self.stats.eager_changes_received += a.reports.len() as u64,
                    Push::Reply => {
                        self.stats.reply_changes_received += a.reports.len() as u64;
                        self.stats.reply_duplicates_received += dups as u64;
                    }
                }
                let new_origins: BTreeSet<NodeId> =
                    a.new.iter().filter_map(|(id, _)| origin(&id.doc)).collect();
                let max = self.config.pruned_origins_max;
                if let Some(p) = self.peers.get_mut(&from) {
                    match push {
                        Push::Eager if self.config.plumtree => {
                            // A redundant link of these owners' trees. The
                            // peer is told each time it pushes one, even if
                            // this side pruned it long ago: the Prune may have
                            // been lost, or the peer moved the link back into
                            // the tree after an answer from this node. Either
                            // way it would otherwise push them here for good.
                            let origins: Vec<NodeId> = a
                                .tree_dup_origins
                                .difference(&new_origins)
                                .filter(|o| {
                                    p.pruned.contains(*o)
                                        || (p.pruned.len() < max && p.pruned.insert(**o))
                                })
                                .copied()
                                .collect();
                            if !origins.is_empty() {
                                self.stats.prunes_sent += 1;
                                self.send(from, &Message::Prune { origins }, out);
                            }
                        }
                        Push::Eager => {}
                        // A peer that answered a graft with something new
                        // is on a good path from those owners: the link
                        // joins their trees both ways (the peer moved it
                        // on its side when it answered). An answer to
                        // reconciliation leaves the trees alone: moving
                        // the link here would push to a peer that pruned
                        // it, one duplicate for each owner.
                        Push::Reply => p.pruned.retain(|o| {
                            !(new_origins.contains(o) && a.grafted_origins.contains(o))
                        }),
                    }
                }
                self.disseminate(Some(from), &a.new, now, out);
            }
            Message::IHave { ids } => self.on_ihave(from, ids, now),
            Message::Graft { ids } => {
                let Some(mut allow) = self.open_budget(from, "Graft", now, out) else {
                    return;
                };
                let mut found: Vec<SignedChange> = Vec::new();
                let mut rumours: Vec<SignedRumour> = Vec::new();
                for s in &ids {
                    if !allow.work(1) {
                        break;
                    }
                    if let Some((Some(r), _)) = self.rumours_seen.get(s) {
                        if !allow.bytes(RUMOUR_SIZE_BYTES) {
                            break;
                        }
                        rumours.push(*r);
                        continue;
                    }
                    let Some(c) = self
                        .recent
                        .get(s)
                        .filter(|r| self.visible_to(&r.0.doc, &from))
                        .and_then(|r| self.replica.get(&r.0.doc, &r.0.change_hash()))
                    else {
                        continue;
                    };
                    if !allow.bytes(encoded_len(c) as u64) {
                        break;
                    }
                    found.push(c.clone());
                }
                if let Some(p) = self.peers.get_mut(&from) {
                    for c in &found {
                        if let Some(o) = origin(&c.doc) {
                            p.pruned.remove(&o);
                        }
                    }
                }
                self.close_budget(from, allow);
                self.answer_changes(from, found, out);
                // A suspicion's proof (its subject's Alive) before it: the
                // suspicion alone would be out of bounds there.
                rumours.sort_by_key(|r| matches!(r.rumour.claim, Claim::Suspect { .. }));
                for msg in self.rumour_messages(&rumours) {
                    self.answer(from, &msg, out);
                }
            }
            Message::Prune { origins } => {
                let max = self.config.pruned_origins_max;
                if let Some(p) = self.peers.get_mut(&from) {
                    for o in origins {
                        if p.pruned.len() >= max {
                            break;
                        }
                        p.pruned.insert(o);
                    }
                }
            }
            Message::Want { items } => {
                let Some(mut allow) = self.open_budget(from, "Want", now, out) else {
                    return;
                };
                let mut found = Vec::new();
                let mut bytes = 0usize;
                'items: for it in items {
                    if !allow.work(1) {
                        break;
                    }
                    let Some(e) = self.view_for(&from).get(&it.doc) else {
                        continue;
                    };
                    let theirs: Vec<ChangeHash> = match (it.doc, e.doc) {
                        (a, b) if a == b => it.heads.iter().map(|h| ChangeHash(*h)).collect(),
                        (a, b) if older_epoch(&a, &b) => Vec::new(),
                        _ => continue,
                    };
                    let doc = e.doc;
                    for c in self.replica.missing_for(&doc, &theirs) {
                        if bytes >= self.config.sync_send_max_bytes
                            || !allow.work(1)
                            || !allow.bytes(encoded_len(c) as u64)
                        {
                            break 'items;
                        }
                        bytes += c.change.len();
                        found.push(c.clone());
                    }
                }
                self.close_budget(from, allow);
                self.answer_changes(from, found, out);
            }
            Message::Roots { roots } => {
                let before = self.root_version();
                let advanced = self.ingest_roots(Some(from), roots, now, out);
                if !advanced.is_empty() {
                    self.broadcast_roots(Some(from), before, out);
                }
            }
            sync @ Message::Sync { .. } => self.on_sync(from, sync, now, out),
            Message::Probe { seq } => self.send(from, &Message::Ack { seq }, out),
            Message::Ack { seq } => {
                if let Some(p) = &mut self.probe
                    && p.peer == from
                    && p.seq == seq
                {
                    p.acked = true;
                }
            }
            Message::Rumours { rumours } => self.on_rumours(from, rumours, now, out),
            Message::Freshness { statement } => {
                if let Err(FreshnessRefusal::Invalid(e)) =
                    self.on_freshness(Some(from), &statement, out)
                {
                    *self
                        .stats
                        .rejected
                        .entry(RejectReason::Freshness)
                        .or_default() += 1;
                    let w = self.config.penalty_per_offence;
                    self.penalise(from, w, format!("freshness statement refused: {e}"), out);
                }
            }
        }
    }

    // ---- freshness ----

    /// Decode, verify and keep a freshness statement if it is newer than the
    /// one held; forward it to every peer but its sender. `Ok(true)`: kept.
    fn on_freshness(
        &mut self,
        from: Option<NodeId>,
        bytes: &[u8],
        out: &mut Vec<Output>,
    ) -> Result<bool, FreshnessRefusal> {
        let st =
            SignedFreshness::decode(bytes).map_err(|e| FreshnessRefusal::Invalid(e.to_string()))?;
        let current = self.root_version();
        match st.verify(self.replica.trust()) {
            Ok(()) => {}
            // The sender may hold a newer root than this node: not its fault.
            Err(e @ FreshnessError::UnknownRoot { .. }) => {
                return Err(FreshnessRefusal::Ignored(e.to_string()));
            }
            Err(e) => return Err(FreshnessRefusal::Invalid(e.to_string())),
        }
        if st.statement.root_version < current {
            return Err(FreshnessRefusal::Ignored(format!(
                "freshness statement is under trust root v{}, older than v{current} in force",
                st.statement.root_version
            )));
        }
        if self
            .freshness
            .as_ref()
            .is_some_and(|held| held.statement.order_key() >= st.statement.order_key())
        {
            return Ok(false);
        }
        tracing::debug!(
            issued_ms = st.statement.issued_ms,
            expires_ms = st.statement.expires_ms,
            "newer freshness statement"
        );
        let msg = Message::Freshness {
            statement: bytes.to_vec(),
        };
        self.freshness = Some(st);
        self.send_to_all(from, &msg, out);
        Ok(true)
    }

    fn on_timer(&mut self, t: Timer, now: Millis, rng: &mut impl rand::Rng, out: &mut Vec<Output>) {
        match t {
            Timer::AntiEntropy => {
                if let Some(peer) = self.sync_peer(None, rng) {
                    self.stats.anti_entropy_rounds += 1;
                    self.start_sync(peer, true, now, out);
                    self.announce_suspicions(peer, out);
                }
                let mut base = self.ae_interval;
                if std::mem::take(&mut self.repairing) {
                    base = self.config.anti_entropy_interval_ms / 4;
                    self.ae_interval = self.config.anti_entropy_interval_ms;
                } else if now < self.active_at + self.config.anti_entropy_idle_after_ms {
                    // Changes moved recently: a neighbour may still lack one
                    // this node cannot know of (lost on its way there).
                    self.ae_interval = self.config.anti_entropy_interval_ms;
                } else {
                    // Quiet, and nothing to repair found since the last
                    // round: back off while that lasts (the idle cost).
                    self.ae_interval = self
                        .ae_interval
                        .saturating_mul(2)
                        .min(self.config.anti_entropy_idle_max_ms);
                }
                let jitter = if base >= 10 {
                    rng.random_range(0..base / 10)
                } else {
                    0
                };
                let at = now + base - base / 20 + jitter;
                self.timers.insert(Timer::AntiEntropy, at);
            }
            Timer::StatusRefresh => {
                if self.config.status_refresh_interval_ms > 0 {
                    let hb = self.writer.heartbeat();
                    self.publish_own(hb, now, out);
                    self.write_summary(now, out);
                    // Within a tenth either side of the interval.
                    let base = self.config.status_refresh_interval_ms;
                    let jitter = rng.random_range(0..=base / 5);
                    self.timers
                        .insert(Timer::StatusRefresh, now + base - base / 10 + jitter);
                }
            }
            Timer::Probe => self.on_probe_timer(now, rng, out),
            Timer::Membership => self.on_membership_timer(now, rng, out),
            Timer::LazyFlush => self.flush_lazy(out),
            Timer::Graft => self.on_graft_timer(now, out),
            Timer::SyncRetry => self.on_sync_retry(now, rng, out),
        }
    }

    /// Something new arrived or a link came up: anti-entropy leaves its idle
    /// back-off, and the next round is at most one base interval away.
    fn reset_anti_entropy(&mut self, now: Millis) {
        let base = self.config.anti_entropy_interval_ms;
        self.ae_interval = base;
        self.active_at = now;
        if let Some(at) = self.timers.get_mut(&Timer::AntiEntropy)
            && *at > now + base
        {
            *at = now + base;
        }
    }

    /// Something is being repaired: the next round comes a quarter interval
    /// from now, not at the end of a whole interval set before it was known.
    fn hasten_anti_entropy(&mut self, now: Millis) {
        let soon = now + self.config.anti_entropy_interval_ms / 4;
        if let Some(at) = self.timers.get_mut(&Timer::AntiEntropy)
            && *at > soon
        {
            *at = soon;
        }
    }

    /// A random connected peer, other than `not` if there is another.
    fn random_peer(&self, not: Option<NodeId>, rng: &mut impl rand::Rng) -> Option<NodeId> {
        let others = self.peers.keys().filter(|p| Some(**p) != not).count();
        if others == 0 {
            return self.peers.keys().next().copied();
        }
        let i = rng.random_range(0..others);
        self.peers
            .keys()
            .filter(|p| Some(**p) != not)
            .nth(i)
            .copied()
    }

    /// A peer to reconcile with, other than `not` if there is another: at
    /// random, weighted by how often each answered (the square of its
    /// `sync_quality`, plus a floor so that a link that got better is tried
    /// again).
    fn sync_peer(&self, not: Option<NodeId>, rng: &mut impl rand::Rng) -> Option<NodeId> {
        let weight = |p: &Peer| u64::from(p.sync_quality).pow(2) / 1000 + 50;
        // In a scoped region, half the rounds are with a member of it: the
        // region's status is reconciled only over such links, which may be
        // few among this node's peers.
        let policy = self.replica.policy();
        let region = policy.scoped_region(&self.id);
        let ours = |id: &NodeId| {
            region.is_some()
                && policy.is_active_member(id)
                && policy.members.get(id).map(|m| m.region.as_str()) == region
        };
        // A round with a member that lost a step is retried with a member:
        // with the same one if it is the only one (what the region lacks
        // is to be had only inside it).
        let inside = region.is_some()
            && self.peers.keys().any(&ours)
            && (not.is_some_and(|n| ours(&n)) || rng.random_bool(0.5));
        let only_one = inside && !self.peers.keys().any(|id| Some(*id) != not && ours(id));
        let candidates: Vec<(NodeId, u64)> = self
            .peers
            .iter()
            .filter(|(id, _)| {
                if inside {
                    ours(id) && (only_one || Some(**id) != not)
                } else {
                    Some(**id) != not
                }
            })
            .map(|(id, p)| (*id, weight(p)))
            .collect();
        if candidates.is_empty() {
            return self.peers.keys().next().copied();
        }
        let total: u64 = candidates.iter().map(|c| c.1).sum();
        let mut x = rng.random_range(0..total);
        for (id, w) in &candidates {
            if x < *w {
                return Some(*id);
            }
            x -= w;
        }
        candidates.last().map(|c| c.0)
    }

    /// Steps left unanswered past `sync_retry_ms` were lost (or the peer is
    /// gone quiet): reconcile again at once with another peer.
    fn on_sync_retry(&mut self, now: Millis, rng: &mut impl rand::Rng, out: &mut Vec<Output>) {
        let retry = self.config.sync_retry_ms;
        let stalled: Vec<NodeId> = self
            .awaiting
            .iter()
            .filter(|(_, since)| **since + retry <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &stalled {
            self.awaiting.remove(p);
            if let Some(peer) = self.peers.get_mut(p) {
                peer.sync_quality = peer.sync_quality * 4 / 5;
            }
        }
        // One new round for all the stalls of this check: bounded.
        if let Some(&last) = stalled.last()
            && let Some(peer) = self.sync_peer(Some(last), rng)
        {
            self.stats.sync_retries += 1;
            self.stats.anti_entropy_rounds += 1;
            self.start_sync(peer, true, now, out);
        }
        self.arm_sync_retry();
    }

    fn arm_sync_retry(&mut self) {
        if self.config.sync_retry_ms == 0 {
            return;
        }
        let Some(next) = self
            .awaiting
            .values()
            .min()
            .map(|t| t + self.config.sync_retry_ms)
        else {
            return;
        };
        self.arm(Timer::SyncRetry, next);
    }

    /// An answer to a reconciliation step is awaited from `peer` from now.
    fn await_answer(&mut self, peer: NodeId, now: Millis) {
        self.awaiting.insert(peer, now);
        self.arm_sync_retry();
    }

    fn on_publish(
        &mut self,
        roots: Vec<SignedTrustRoot>,
        changes: Vec<SignedChange>,
        now: Millis,
        out: &mut Vec<Output>,
    ) {
        let mut root_errors = Vec::new();
        let mut advanced = false;
        let root_version_before = self.root_version();
        for root in roots {
            let v = root.root.version;
            match self.replica.ingest_root(root.clone()) {
                Ok(true) => {
                    advanced = true;
                    out.push(Output::Persist(Persist::Root(root)));
                }
                Ok(false) => {}
                Err(e) => root_errors.push(format!("trust root v{v}: {e}")),
            }
        }
        if advanced {
            // The rotation may have dropped changes it did not grandfather.
            self.check_policy_heads(now, out);
        }
        let a = self.absorb(None, changes, true, now, out);
        out.push(Output::Event(Event::Published {
            root_errors,
            reports: a.reports,
        }));
        if advanced {
            self.broadcast_roots(None, root_version_before, out);
        }
        self.disseminate(None, &a.new, now, out);
    }

    /// Ingest and disseminate one of this node's own status changes. While the
    /// node is not enrolled its changes are kept and offered again when the
    /// policy changes.
    fn publish_own(&mut self, change: SignedChange, now: Millis, out: &mut Vec<Output>) {
        let doc = change.doc;
        let a = self.absorb(None, vec![change.clone()], true, now, out);
        if let Some(Outcome::Rejected(Rejection::Unenrolled(_))) =
            a.reports.first().map(|r| &r.outcome)
        {
            // Kept: the changes of the epochs being written (of the status
            // and of the summary), not those of earlier ones.
            self.own_unpublished
                .retain(|c| c.doc == doc || c.doc.owned().map(|o| o.2) != doc.owned().map(|o| o.2));
            if self.own_unpublished.len() < self.config.own_unpublished_max {
                self.own_unpublished.push(change);
            }
        }
        self.disseminate(None, &a.new, now, out);
    }

    // ---- ingest and dissemination ----

    /// Verify, authorise and apply `changes`; persist what is new; update the
    /// index, liveness, epochs and revocations; penalise a misbehaving sender.
    /// Sends nothing (see [`Engine::disseminate`]).
    fn absorb(
        &mut self,
        from: Option<NodeId>,
        changes: Vec<SignedChange>,
        eager: bool,
        now: Millis,
        out: &mut Vec<Output>,
    ) -> Absorbed {
        if changes.is_empty() {
            return Absorbed {
                reports: Vec::new(),
                new: Vec::new(),
                tree_dup_origins: BTreeSet::new(),
                grafted_origins: BTreeSet::new(),
            };
        }
        let mut epochs_before: BTreeMap<(NodeId, OwnedKind), Option<u32>> = BTreeMap::new();
        for c in &changes {
            if let Some((node, _, kind)) = c.doc.owned() {
                epochs_before
                    .entry((node, kind))
                    .or_insert_with(|| self.replica.owned_epoch(&node, kind));
            }
        }
        let me = self.id;
        let rates = &mut self.owner_rates;
        let (burst, refill) = (
            self.config.status_owner_burst,
            self.config.status_owner_refill_per_s,
        );
        let reports = self.replica.ingest_with(changes.clone(), &mut |owner| {
            *owner == me || rates.take(*owner, now, burst, refill)
        });
        let promoted = self.replica.take_promoted();
        let mut new = Vec::new();
        let mut tree_dup_origins = BTreeSet::new();
        let mut grafted_origins = BTreeSet::new();
        let mut touched: BTreeSet<DocId> = BTreeSet::new();
        let mut offences: Vec<String> = Vec::new();
        let mut not_admitted = false;
        let mut incomplete: BTreeSet<DocId> = BTreeSet::new();
        for (sc, r) in changes.into_iter().zip(&reports) {
            let size = if from.is_some() {
                encoded_len(&sc) as u64
            } else {
                0
            };
            self.stats.change_bytes_received += size;
            match &r.outcome {
                Outcome::Pending if !sc.doc.is_authority() => {
                    // Neither stored nor forwarded: it may never apply (its
                    // dependency withheld), and a node that sends thousands
                    // must not fill every disk. It is, once it applies.
                    self.stats.changes_pending += 1;
                    incomplete.insert(sc.doc);
                    if let Some(h) = r.hash {
                        self.missing.remove(&short_id(&h));
                    }
                }
                Outcome::Applied | Outcome::Pending => {
                    self.stats.new_change_bytes_received += size;
                    if r.outcome == Outcome::Applied {
                        self.stats.changes_applied += 1;
                        touched.insert(sc.doc);
                    } else {
                        self.stats.changes_pending += 1;
                        incomplete.insert(sc.doc);
                    }
                    if let Some((node, _, _)) = sc.doc.owned() {
                        self.last_heard.insert(node, now);
                    }
                    let hash = r.hash.expect("a held change parsed");
                    let id = ChangeId::new(sc.doc, hash);
                    if self.missing.remove(&short_id(&hash)).is_some()
                        && let Some(o) = origin(&sc.doc)
                    {
                        grafted_origins.insert(o);
                    }
                    self.remember(id, now, Arrival::of(from, eager));
                    new.push((id, sc));
                }
                Outcome::Duplicate => {
                    self.stats.duplicates_received += 1;
                    if let Some(h) = r.hash {
                        let s = short_id(&h);
                        self.missing.remove(&s);
                        if let Some(o) = origin(&sc.doc)
                            && eager
                            && self.recent.get(&s).is_some_and(|r| r.2.tree_dup(from))
                        {
                            tree_dup_origins.insert(o);
                        }
                    }
                }
                Outcome::Stale => self.stats.stale_received += 1,
                Outcome::Rejected(rej) => {
                    *self
                        .stats
                        .rejected
                        .entry(RejectReason::Change(rej.kind()))
                        .or_default() += 1;
                    if rej.is_misbehaviour() {
                        offences.push(format!("change for {} rejected: {rej}", sc.doc));
                    } else if matches!(rej, Rejection::Revoked(_))
                        // Not Unenrolled: a newly enrolled peer's status can
                        // overtake its enrolment on another stream. Unenrolled
                        // peers are refused by admission (`admits`), checked
                        // again on every policy change.
                        && from.is_some()
                        && matches!(sc.doc, DocId::Status { node, .. } if Some(node) == from)
                    {
                        not_admitted = true;
                    }
                }
            }
        }
        for (sc, hash) in promoted {
            self.stats.changes_applied += 1;
            touched.insert(sc.doc);
            if let Some((node, _, _)) = sc.doc.owned() {
                self.last_heard.insert(node, now);
            }
            let id = ChangeId::new(sc.doc, hash);
            self.remember(id, now, Arrival::of(from, eager));
            new.push((id, sc));
        }
        self.record_new(&new, epochs_before, touched, now, out);
        if let Some(peer) = from {
            self.want_dependencies(peer, incomplete, out);
            self.judge_sender(peer, offences, not_admitted, out);
        }
        Absorbed {
            reports,
            new,
            tree_dup_origins,
            grafted_origins,
        }
    }

    /// Make what was newly held durable (and drop the status epochs it
    /// obsoletes), update the reconciliation index, and act on a policy
    /// change: in that order (events after the Persist they report).
    fn record_new(
        &mut self,
        new: &[(ChangeId, SignedChange)],
        epochs_before: BTreeMap<(NodeId, OwnedKind), Option<u32>>,
        touched: BTreeSet<DocId>,
        now: Millis,
        out: &mut Vec<Output>,
    ) {
        if !new.is_empty() {
            out.push(Output::Persist(Persist::Changes(
                new.iter().map(|(_, c)| c.clone()).collect(),
            )));
            self.reset_anti_entropy(now);
        }
        for ((node, kind), before) in epochs_before {
            if let Some(epoch) = self.replica.owned_epoch(&node, kind)
                && before.is_some_and(|b| b < epoch)
            {
                out.push(Output::Persist(Persist::DropStatusBefore {
                    node,
                    kind,
                    epoch,
                }));
            }
        }
        let regional = touched.iter().any(|d| matches!(d, DocId::Region { .. }));
        for doc in touched {
            if let DocId::Region { .. } = doc {
                let mut heads = self.replica.heads(&doc);
                heads.sort();
                self.index_set(doc, heads, now);
            } else if let Some((node, _, kind)) = doc.owned()
                && let Some(epoch) = self.replica.owned_epoch(&node, kind)
            {
                let d = kind.doc(node, epoch);
                let heads = self.replica.heads(&d);
                self.index_set(d, heads, now);
            }
        }
        if !self.check_policy_heads(now, out) && regional {
            // This site's region's scoped policy changed: its effective
            // config did, under the same policy heads.
            out.push(Output::Event(Event::PolicyChanged));
        }
    }

    /// If the policy's heads moved (changes applied, or a rotation dropped
    /// changes), index them and act on the new policy.
    fn check_policy_heads(&mut self, now: Millis, out: &mut Vec<Output>) -> bool {
        let mut heads = self.replica.policy_heads();
        heads.sort();
        let moved = heads != self.policy_heads;
        if moved {
            self.index_set(DocId::Policy, heads.clone(), now);
            self.policy_heads = heads;
            self.on_policy_changed(now, out);
            // After every Persist it implies (module docs: events that report
            // state follow what makes them durable).
            out.push(Output::Event(Event::PolicyChanged));
        }
        moved
    }

    /// Some changes from `peer` wait for dependencies: it may hold them, so
    /// ask it at once (and reconcile sooner, in case it does not).
    fn want_dependencies(
        &mut self,
        peer: NodeId,
        incomplete: BTreeSet<DocId>,
        out: &mut Vec<Output>,
    ) {
        if !incomplete.is_empty() && self.peers.contains_key(&peer) {
            // The sender may hold the missing dependencies: ask it at once
            // (and reconcile sooner, in case it does not).
            self.repairing = true;
            let items: Vec<Item> = incomplete
                .into_iter()
                .take(self.config.wire.items_per_message_max)
                .map(|doc| Item {
                    doc,
                    heads: self.replica.heads(&doc).iter().map(|h| h.0).collect(),
                })
                .collect();
            self.send(peer, &Message::Want { items }, out);
        }
    }

    /// Penalise `peer` for the invalid changes it sent, and cut it off if it
    /// sent its own status while revoked.
    fn judge_sender(
        &mut self,
        peer: NodeId,
        mut offences: Vec<String>,
        not_admitted: bool,
        out: &mut Vec<Output>,
    ) {
        if !offences.is_empty() {
            let reason = if offences.len() == 1 {
                offences.swap_remove(0)
            } else {
                format!("{} invalid changes; first: {}", offences.len(), offences[0])
            };
            let w = self.config.penalty_per_offence;
            self.penalise(peer, w, reason, out);
        }
        if not_admitted && self.drop_peer(&peer) {
            out.push(Output::Disconnect {
                peer,
                reason: DisconnectReason::Revoked,
            });
        }
    }

    /// Forget a peer this engine disconnects: its state, the answer awaited
    /// from it and the ranges held for it (so that no retry round or hold
    /// outlives the link). True if it was connected.
    fn drop_peer(&mut self, peer: &NodeId) -> bool {
        self.awaiting.remove(peer);
        self.holds.retain(|h| h.2 != *peer);
        self.peers.remove(peer).is_some()
    }

    /// Remember a change by short id for grafts and announcements (bounded in
    /// time and count).
    fn remember(&mut self, id: ChangeId, now: Millis, how: Arrival) {
        let s = short_id(&id.change_hash());
        self.recent.insert(s, (id, now, how));
        self.recent_order.push_back((s, now));
        let (max, keep) = (self.config.recent_max, self.config.recent_keep_ms);
        trim_recent(
            &mut self.recent,
            &mut self.recent_order,
            max,
            keep,
            now,
            |r| r.1,
        );
    }

    // ---- region scoping ----

    /// Set `doc`'s heads in the index, and in the index of what may leave
    /// the region unless `doc` is a scoped status.
    fn index_set(&mut self, doc: DocId, heads: Vec<ChangeHash>, now: Millis) {
        let scoped = self.is_scoped(&doc);
        if let Some(o) = &mut self.index_out {
            if scoped {
                o.remove(&doc);
            } else {
                o.set(doc, heads.clone(), now);
            }
        }
        self.index.set(doc, heads, now);
    }

    /// A status document scoped to its owner's region, or a region's scoped
    /// policy.
    fn is_scoped(&self, doc: &DocId) -> bool {
        match doc {
            DocId::Status { node, .. } => self.replica.policy().status_scope(node).is_some(),
            DocId::Region { .. } => true,
            _ => false,
        }
    }

    /// Whether `peer` may hold `doc` (see [`may_send`]).
    fn visible_to(&self, doc: &DocId, peer: &NodeId) -> bool {
        may_send(self.replica.policy(), doc, peer)
    }

    /// The index reconciled with `peer`: everything held, with a peer of
    /// this node's own scoped region (they may hold the same); else only
    /// what may leave the region. Both sides of a link compute the same
    /// view, so their fingerprints agree once they hold the same.
    fn view_for(&self, peer: &NodeId) -> &DocIndex {
        match &self.index_out {
            Some(out) if !self.shares_scoped_region(peer) => out,
            _ => &self.index,
        }
    }

    /// `peer` is an active member of this node's own region, and some of
    /// that region's data is scoped: it may hold everything this node holds.
    fn shares_scoped_region(&self, peer: &NodeId) -> bool {
        let policy = self.replica.policy();
        policy.scoped_region(&self.id).is_some() && policy.same_region(&self.id, peer)
    }

    /// After the policy changed (or at start): drop the status documents
    /// this node may no longer hold (the replica already has), and rebuild
    /// the index of what may leave the region.
    fn enforce_scope(&mut self, now: Millis, out: &mut Vec<Output>) {
        let policy = self.replica.policy();
        if !policy.has_scoped_data() && self.index_out.is_none() {
            return;
        }
        // A region's scoped policy this node no longer holds (it left the
        // region), or holds less of (a rotation dropped a commitment): the
        // store keeps exactly what the replica does.
        let regional: Vec<(DocId, std::sync::Arc<[ChangeHash]>)> = self
            .index
            .entries()
            .filter(|e| matches!(e.doc, DocId::Region { .. }))
            .map(|e| (e.doc, e.heads.clone()))
            .collect();
        for (doc, indexed) in regional {
            let mut heads = self.replica.heads(&doc);
            heads.sort();
            if heads.as_slice() == &*indexed {
                continue;
            }
            tracing::info!(doc = %doc, "a region's scoped policy shrank or left this site: stored anew");
            out.push(Output::Persist(Persist::DropDoc { doc }));
            let DocId::Region { region } = doc else {
                unreachable!("regional entries only")
            };
            let kept = self.replica.region_changes(&region);
            if !kept.is_empty() {
                out.push(Output::Persist(Persist::Changes(kept)));
            }
            self.index_set(doc, heads, now);
        }
        let gone: Vec<NodeId> = self
            .index
            .entries()
            .filter_map(|e| match e.doc {
                DocId::Status { node, .. } if self.replica.heads(&e.doc).is_empty() => Some(node),
                _ => None,
            })
            .collect();
        for node in gone {
            tracing::debug!(owner = %node.short(), "status scoped to another region: dropped");
            self.index.remove(&DocId::Status { node, epoch: 0 });
            self.stats.scope_dropped += 1;
            out.push(Output::Persist(Persist::DropStatus { node }));
        }
        let policy = self.replica.policy();
        if !policy.has_scoped_data() {
            self.index_out = None;
            self.scoped_owners.clear();
            return;
        }
        let mut o = self.index.clone();
        for e in self.index.entries() {
            if self.is_scoped(&e.doc) {
                o.remove(&e.doc);
            }
        }
        self.index_out = Some(o);
        // Announcements queued before this policy may name changes of a
        // status scoped by it; the queue holds bare short ids, so when the
        // scoped owners or their regions changed (an owner scoped, a peer
        // moved out of this region), a peer that may not hold them loses
        // its queue (anti-entropy covers changes; a rumour is announced
        // again by whoever holds it).
        let scoped: BTreeMap<NodeId, String> = policy
            .members
            .keys()
            .filter_map(|n| policy.status_scope(n).map(|r| (*n, r.to_string())))
            .collect();
        let changed = scoped != self.scoped_owners;
        self.scoped_owners = scoped;
        if changed {
            let outside: Vec<NodeId> = self
                .peers
                .keys()
                .filter(|peer| !self.shares_scoped_region(peer))
                .copied()
                .collect();
            for peer in outside {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.lazy.clear();
                }
            }
        }
    }

    /// Write this node's summary from its status, if its region is scoped
    /// (the summary is what the rest of the fleet knows of it).
    fn write_summary(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.replica.policy().status_scope(&self.id).is_none() {
            return;
        }
        let status = self.writer.current();
        let w = match &mut self.summary_writer {
            Some(w) => w,
            None => self.summary_writer.insert(self.writer.summary_writer()),
        };
        if let Some(c) = w.update(&status) {
            self.publish_own(c, now, out);
        }
    }

    /// Take every document of `node` out of both reconciliation indexes.
    fn unindex_node(&mut self, node: &NodeId) {
        self.index.remove_node(node);
        if let Some(o) = &mut self.index_out {
            o.remove_node(node);
        }
    }

    fn on_policy_changed(&mut self, now: Millis, out: &mut Vec<Output>) {
        // Owners no longer enrolled (a rotation dropped their enrolment):
        // the replica dropped their documents; so do the index and the store.
        let policy = self.replica.policy();
        let unenrolled: BTreeSet<NodeId> = self
            .index
            .entries()
            .filter_map(|e| e.doc.owned().map(|o| o.0))
            .filter(|n| !policy.members.contains_key(n))
            .collect();
        for node in unenrolled {
            tracing::warn!(owner = %node.short(), "status of a node no longer enrolled: dropped");
            self.unindex_node(&node);
            out.push(Output::Persist(Persist::DropNode { node }));
        }
        self.enforce_scope(now, out);
        self.write_summary(now, out);
        let revoked: Vec<NodeId> = self
            .replica
            .policy()
            .revoked
            .keys()
            .filter(|n| !self.revoked.contains(n))
            .copied()
            .collect();
        for node in revoked {
            self.revoked.insert(node);
            self.unindex_node(&node);
            self.last_heard.remove(&node);
            self.members.forget(&node);
            for subject in self.members.withdraw_reporter(&node) {
                tracing::debug!(subject = %subject.short(), reporter = %node.short(), "suspicion by a revoked reporter withdrawn");
                out.push(Output::Event(Event::Member {
                    node: subject,
                    state: MemberState::Alive,
                }));
            }
            self.lost.remove(&node);
            out.push(Output::Persist(Persist::DropNode { node }));
            if self.drop_peer(&node) {
                out.push(Output::Disconnect {
                    peer: node,
                    reason: DisconnectReason::Revoked,
                });
            }
        }
        // Peers the new policy does not admit (a policy with members has
        // arrived at a node that admitted everyone while it had none).
        let refused: Vec<(NodeId, DisconnectReason)> = self
            .peers
            .keys()
            .filter_map(|p| self.admits(p).err().map(|r| (*p, r)))
            .collect();
        for (peer, reason) in refused {
            self.drop_peer(&peer);
            out.push(Output::Disconnect { peer, reason });
        }
        // Membership speaks only of members: forget the others (removed
        // from the policy), and what was heard of strangers before it.
        let policy = self.replica.policy();
        if !policy.members.is_empty() {
            for node in self.members.members() {
                if !policy.is_active_member(&node) {
                    self.members.forget(&node);
                }
            }
            let peers = &self.peers;
            self.last_heard
                .retain(|n, _| policy.is_active_member(n) || peers.contains_key(n));
            self.my_suspicions.retain(|n| policy.is_active_member(n));
        }
        if !self.own_unpublished.is_empty() && self.replica.policy().is_active_member(&self.id) {
            let mine = std::mem::take(&mut self.own_unpublished);
            let a = self.absorb(None, mine, true, now, out);
            self.disseminate(None, &a.new, now, out);
        }
    }

    /// Push new changes eagerly to the tree and announce them lazily to the
    /// other peers (or flood them eagerly to all, without PlumTree).
    fn disseminate(
        &mut self,
        from: Option<NodeId>,
        new: &[(ChangeId, SignedChange)],
        now: Millis,
        out: &mut Vec<Output>,
    ) {
        if new.is_empty() {
            return;
        }
        let flood_policy = self.config.policy_flood || !self.config.plumtree;
        let (policy, status): (Vec<_>, Vec<_>) = new
            .iter()
            .partition(|(id, _)| id.doc == DocId::Policy && flood_policy);
        let policy: Vec<SignedChange> = policy.into_iter().map(|(_, c)| c.clone()).collect();
        let mut eager: Vec<(NodeId, Vec<SignedChange>)> = Vec::new();
        let mut lazy_any = false;
        let mut all = Vec::new();
        let plumtree = self.config.plumtree;
        let policy_now = self.replica.policy();
        for (peer, p) in &mut self.peers {
            if Some(*peer) == from {
                continue;
            }
            all.push(*peer);
            let mut push = Vec::new();
            for (id, c) in &status {
                // A status scoped to a region goes only to its members:
                // neither pushed nor announced to anyone else.
                if !may_send(policy_now, &id.doc, peer) {
                    continue;
                }
                let pruned = plumtree && origin(&id.doc).is_some_and(|o| p.pruned.contains(&o));
                if !pruned {
                    push.push(c.clone());
                }
                if plumtree {
                    // Every peer gets the id (8 bytes; a peer that has the
                    // change ignores it): a pruned peer instead of the
                    // push, a tree peer beside it. A lost push is otherwise
                    // repaired only by another neighbour's announcement,
                    // and there may be none: this node's own change, or a
                    // peer whose other neighbours are below it in the tree
                    // (they hear of it only from it). Without the id the
                    // change waits for anti-entropy, whose rounds need
                    // several messages to cross the same lossy link.
                    p.lazy.push(short_id(&id.change_hash()));
                    lazy_any = true;
                }
            }
            let over = p.lazy.len().saturating_sub(self.config.lazy_queue_max);
            p.lazy.drain(..over);
            if !push.is_empty() {
                eager.push((*peer, push));
            }
        }
        if !policy.is_empty() {
            for peer in all {
                self.send_changes(peer, Push::Eager, policy.clone(), out);
            }
        }
        for (peer, changes) in eager {
            self.send_changes(peer, Push::Eager, changes, out);
        }
        if lazy_any && !self.timers.contains_key(&Timer::LazyFlush) {
            let at = now + self.config.lazy_flush_interval_ms;
            self.timers.insert(Timer::LazyFlush, at);
        }
    }

    fn flush_lazy(&mut self, out: &mut Vec<Output>) {
        let max = self.config.wire.ids_per_message_max.max(1);
        let mut sends = Vec::new();
        for (peer, p) in &mut self.peers {
            if p.lazy.is_empty() {
                continue;
            }
            let ids = std::mem::take(&mut p.lazy);
            for chunk in ids.chunks(max) {
                sends.push((*peer, chunk.to_vec()));
            }
        }
        for (peer, ids) in sends {
            self.stats.announcements_sent += ids.len() as u64;
            self.send(peer, &Message::IHave { ids }, out);
        }
    }

    fn on_ihave(&mut self, from: NodeId, ids: Vec<ShortId>, now: Millis) {
        let due = now + self.config.graft_timeout_ms;
        for id in ids {
            if self.recent.contains_key(&id) || self.rumours_seen.contains_key(&id) {
                continue;
            }
            let len = self.missing.len();
            match self.missing.get_mut(&id) {
                Some(m)
                    if m.announcers.len() + m.asked.len() < self.config.announcers_max
                        && !m.announcers.contains(&from)
                        && !m.asked.contains(&from) =>
                {
                    m.announcers.push(from);
                }
                Some(_) => {}
                None if len < self.config.missing_max => {
                    self.missing.insert(
                        id,
                        Missing {
                            announcers: vec![from],
                            asked: Vec::new(),
                            passes: 0,
                            due,
                        },
                    );
                }
                None => {}
            }
        }
        self.arm_graft_timer();
    }

    fn arm_graft_timer(&mut self) {
        let Some(next) = self.missing.values().map(|m| m.due).min() else {
            return;
        };
        self.arm(Timer::Graft, next);
    }

    fn on_graft_timer(&mut self, now: Millis, out: &mut Vec<Output>) {
        let mut grafts: BTreeMap<NodeId, Vec<ShortId>> = BTreeMap::new();
        let mut gone = Vec::new();
        let mut in_vain = false;
        let passes = self.config.graft_passes.max(1);
        for (id, m) in &mut self.missing {
            if m.due > now {
                continue;
            }
            // The first announcer still connected.
            m.announcers.retain(|a| self.peers.contains_key(a));
            if m.announcers.is_empty() {
                // Every announcer asked in this pass, in vain. They hold the
                // change (a graft or its answer was lost, 15-20% of messages
                // on a bad link): ask them again, in turn, a few times.
                m.asked.retain(|a| self.peers.contains_key(a));
                in_vain |= m.passes == 0;
                m.passes += 1;
                if m.passes >= passes || m.asked.is_empty() {
                    gone.push(*id);
                    continue;
                }
                m.announcers = std::mem::take(&mut m.asked);
            }
            let peer = m.announcers.remove(0);
            m.asked.push(peer);
            grafts.entry(peer).or_default().push(*id);
            m.due = now + self.config.graft_retry_ms;
        }
        for id in gone {
            self.missing.remove(&id);
        }
        if in_vain {
            // Announced, every announcer asked, and still not here (the
            // grafts or their answers lost): reconciliation finds it, soon
            // rather than a whole interval from now.
            self.repairing = true;
            self.hasten_anti_entropy(now);
        }
        let max = self.config.wire.ids_per_message_max.max(1);
        for (peer, ids) in grafts {
            for chunk in ids.chunks(max) {
                self.stats.grafts_sent += chunk.len() as u64;
                self.send(
                    peer,
                    &Message::Graft {
                        ids: chunk.to_vec(),
                    },
                    out,
                );
            }
        }
        self.arm_graft_timer();
    }

    // ---- trust roots ----

    fn ingest_roots(
        &mut self,
        from: Option<NodeId>,
        roots: Vec<SignedTrustRoot>,
        now: Millis,
        out: &mut Vec<Output>,
    ) -> Vec<u64> {
        let mut advanced = Vec::new();
        let mut gap = false;
        for root in roots {
            let v = root.root.version;
            match self.replica.ingest_root(root.clone()) {
                Ok(true) => {
                    advanced.push(v);
                    out.push(Output::Persist(Persist::Root(root)));
                }
                Ok(false) => {}
                // Newer than the next: peers send only the roots they just
                // took (or the ones a reconciliation showed missing), so one
                // behind by more sees a gap. No offence: reconcile with the
                // sender, whose answer carries every root after this node's.
                Err(dcloud_crdt::RootError::NotNext { .. }) => gap = true,
                Err(e) => {
                    *self.stats.rejected.entry(RejectReason::Root).or_default() += 1;
                    if let Some(peer) = from {
                        let w = self.config.penalty_per_offence;
                        self.penalise(peer, w, format!("trust root v{v} refused: {e}"), out);
                    }
                }
            }
        }
        if !advanced.is_empty() {
            // A rotation may have dropped policy changes it did not
            // grandfather: the policy in force changed with it (before any
            // round starts from the index).
            self.check_policy_heads(now, out);
        }
        if gap
            && let Some(peer) = from
            && self.peers.contains_key(&peer)
            && !self.awaiting.contains_key(&peer)
        {
            self.start_sync(peer, false, now, out);
        }
        advanced
    }

    /// The roots of the chain after `version`, oldest first, in messages of
    /// at most `wire.roots_per_message_max` (a chain may grow past one
    /// message; each message extends the receiver's chain in order).
    fn roots_after(&self, version: u64) -> Vec<Vec<SignedTrustRoot>> {
        let newer: Vec<SignedTrustRoot> = self
            .replica
            .trust()
            .roots()
            .iter()
            .filter(|r| r.root.version > version)
            .cloned()
            .collect();
        newer
            .chunks(self.config.wire.roots_per_message_max)
            .map(<[SignedTrustRoot]>::to_vec)
            .collect()
    }

    /// Send every peer (but `except`) the roots after `after` (what this
    /// node just took); a peer further behind asks for the rest.
    fn broadcast_roots(&mut self, except: Option<NodeId>, after: u64, out: &mut Vec<Output>) {
        for roots in self.roots_after(after) {
            self.send_to_all(except, &Message::Roots { roots }, out);
        }
    }

    // ---- anti-entropy ----

    fn root_version(&self) -> u64 {
        self.replica.trust().current().version
    }

    /// Start a round of reconciliation with `peer`. A `wide` round while
    /// active (not backing off) fingerprints ranges small enough for the peer
    /// to list the differing ones in its first answer: one step fewer, and
    /// on a lossy link a round of fewer steps completes more often. Otherwise
    /// one fingerprint of everything: it most often matches when idle, and
    /// when a link comes up the peer answers with fingerprints, so that the
    /// side that lacks something lists first and asks one neighbour at a
    /// time (when all of a node's links come back at once, every neighbour
    /// starts a round: listed to at once, each would send what it lacks).
    fn start_sync(&mut self, peer: NodeId, wide: bool, now: Millis, out: &mut Vec<Output>) {
        let active = self.ae_interval <= self.config.anti_entropy_interval_ms;
        let lossy = self
            .peers
            .get(&peer)
            .is_some_and(|p| p.sync_quality < LOSSY_SYNC_QUALITY);
        let index = self.view_for(&peer).clone();
        let parts = if wide && active && lossy {
            let per = u64::from(self.config.sync_items_threshold / 2).max(1);
            (index.len() as u64)
                .div_ceil(per)
                .clamp(1, self.config.sync_first_parts_max)
        } else {
            1
        };
        let items = self.relist_lacking(&index, peer, parts, now);
        let parts = split(0, u64::MAX, parts)
            .into_iter()
            .map(|(a, b)| index.range_fp(a, b))
            .collect();
        let msg = Message::Sync {
            root_version: self.root_version(),
            depth: 0,
            splits: vec![Split {
                lo: 0,
                hi: u64::MAX,
                parts,
            }],
            items,
        };
        self.send(peer, &msg, out);
        self.await_answer(peer, now);
    }

    /// The ranges this node found lacking and that have not changed here
    /// since, listed (as an answer: the peer sends what this node lacks and
    /// lists nothing back), within the step's bounds beside `parts`
    /// fingerprints; each is held for `peer` like any list it answers.
    fn relist_lacking(
        &mut self,
        index: &DocIndex,
        peer: NodeId,
        parts: u64,
        now: Millis,
    ) -> Vec<RangeItems> {
        self.lacking
            .retain(|l| l.3 > now && index.range_fp(l.0, l.1) == l.2);
        self.expire_holds(now);
        let wire = &self.config.wire;
        let mut room = wire.ranges_per_message_max.saturating_sub(parts as usize);
        let mut items_room = wire.items_per_message_max;
        let mut listed = Vec::new();
        for &(lo, hi, _, _) in &self.lacking {
            if self.held(lo, hi) {
                continue;
            }
            let items = index.items(lo, hi);
            if room == 0 || items.len() > items_room {
                break;
            }
            room -= 1;
            items_room -= items.len();
            listed.push(RangeItems {
                lo,
                hi,
                items,
                reply: false,
            });
        }
        for ri in &listed {
            self.hold(ri, peer, now);
        }
        listed
    }

    /// Drop the holds that expired.
    fn expire_holds(&mut self, now: Millis) {
        while self.holds.front().is_some_and(|h| h.3 <= now) {
            self.holds.pop_front();
        }
    }

    /// Whether a range overlapping `lo..=hi` is held for some peer.
    fn held(&self, lo: u64, hi: u64) -> bool {
        self.holds.iter().any(|h| h.0 <= hi && lo <= h.1)
    }

    /// Hold the range of `ri`, listed to `peer`, for `sync_hold_ms`.
    fn hold(&mut self, ri: &RangeItems, peer: NodeId, now: Millis) {
        if self.holds.len() >= self.config.sync_holds_max {
            self.holds.pop_front();
        }
        self.holds
            .push_back((ri.lo, ri.hi, peer, now + self.config.sync_hold_ms));
    }

    /// One step of range-based reconciliation. For each range the peer
    /// fingerprinted: equal, done; small (on this side), list its documents;
    /// else split it and fingerprint the parts. For each range the peer listed:
    /// send what the peer lacks (except documents changed here in the last
    /// `sync_settle_ms`, most likely still in flight), and list this side's
    /// documents back once if the peer holds something this side lacks.
    /// The peer's fingerprints of split ranges against this node's: equal
    /// ranges stop; differing ones are listed (small, or deep enough) or
    /// split again, within the answer budget.
    fn compare_splits(
        &self,
        index: &DocIndex,
        splits: Vec<Split>,
        depth: u8,
        allow: &mut Allowance,
        reply_splits: &mut Vec<Split>,
        reply_items: &mut Vec<RangeItems>,
    ) {
        let cfg = &self.config;
        let fanout = cfg.sync_fanout.clamp(2, 64);
        for sp in splits {
            let ranges = split(sp.lo, sp.hi, sp.parts.len() as u64);
            for ((lo, hi), (count, fp)) in ranges.into_iter().zip(sp.parts) {
                if !allow.has_work() {
                    break;
                }
                let (my_count, my_fp) = index.range_fp(lo, hi);
                allow.spend(1 + u64::from(my_count), 0);
                if my_count == count && my_fp == fp {
                    continue;
                }
                // Listing or splitting the range scans it once more.
                allow.spend(u64::from(my_count), 0);
                if my_count <= cfg.sync_items_threshold || depth >= cfg.sync_depth_max || lo == hi {
                    reply_items.push(RangeItems {
                        lo,
                        hi,
                        items: index.items(lo, hi),
                        reply: true,
                    });
                } else {
                    let parts = split(lo, hi, fanout)
                        .into_iter()
                        .map(|(a, b)| index.range_fp(a, b))
                        .collect();
                    reply_splits.push(Split { lo, hi, parts });
                }
            }
        }
    }

    /// The peer's listed ranges against this node's documents: collects the
    /// changes the peer lacks (within the budget and the step's byte bound,
    /// leaving to the tree what is most likely in flight) and lists back the
    /// ranges where this node lacks something the peer has. True if this
    /// node lacks anything.
    #[allow(clippy::too_many_arguments)]
    fn compare_items(
        &self,
        index: &DocIndex,
        items: Vec<RangeItems>,
        connected_at: Millis,
        now: Millis,
        allow: &mut Allowance,
        to_send: &mut Vec<SignedChange>,
        held_back: &mut Vec<ShortId>,
        reply_items: &mut Vec<RangeItems>,
    ) -> bool {
        let cfg = &self.config;
        let mut send_bytes = 0usize;
        let mut lacks = false;
        for ri in items {
            if !allow.has_work() {
                break;
            }
            allow.spend(ri.items.len() as u64, 0);
            let theirs: BTreeMap<_, &Item> = ri
                .items
                .iter()
                .map(|it| (key_of(&it.doc), it))
                .filter(|(k, _)| k.0 >= ri.lo && k.0 <= ri.hi)
                .collect();
            let mut i_lack = false;
            for (key, e) in index.range(ri.lo, ri.hi) {
                allow.spend(1, 0);
                let their_heads: Vec<ChangeHash> = match theirs.get(key) {
                    None => Vec::new(),
                    Some(it) if it.doc == e.doc => {
                        let hs: Vec<ChangeHash> = it.heads.iter().map(|h| ChangeHash(*h)).collect();
                        if hs[..] == e.heads[..] {
                            continue;
                        }
                        // Applied, not merely held: a change pending on a
                        // missing dependency still needs the peer's help.
                        if hs.iter().any(|h| self.replica.get(&e.doc, h).is_none()) {
                            i_lack = true;
                            // The peer holds changes this node lacks, so this
                            // node cannot tell which of its own the peer
                            // lacks: most often none (one writer, the peer is
                            // ahead). If the peer will see this node's list
                            // it sends exactly what this node lacks and, on
                            // a fork, the rest follows from its answer; else
                            // offer the heads only (a fork's peer holds them
                            // pending and `Want`s the rest), not the whole
                            // history, which was mostly duplicates.
                            if ri.reply {
                                continue;
                            }
                            if e.doc.owned().is_some() {
                                for h in e.heads.iter() {
                                    if let Some(c) = self.replica.get(&e.doc, h)
                                        && !hs.contains(h)
                                        && allow.work(1)
                                        && allow.bytes(c.change.len() as u64)
                                    {
                                        send_bytes += c.change.len();
                                        to_send.push(c.clone());
                                    }
                                }
                                continue;
                            }
                        }
                        hs
                    }
                    Some(it) if older_epoch(&it.doc, &e.doc) => Vec::new(),
                    Some(_) => {
                        i_lack = true;
                        continue;
                    }
                };
                if send_bytes >= cfg.sync_send_max_bytes {
                    continue;
                }
                // Changes that arrived here within the settle time, after
                // this connection came up, are most likely in flight to the
                // peer down the tree: left to it. Older ones the peer lacks
                // (a heal, a lost push) are sent now.
                // A list sent back (`reply: false`) is the peer saying it
                // lacks this after a round trip: nothing is left to the tree.
                let settling = ri.reply
                    && e.updated_at + cfg.sync_settle_ms > now
                    && e.updated_at > connected_at;
                for c in self.replica.missing_for(&e.doc, &their_heads) {
                    if settling
                        && let Some(s) = c.hash().ok().map(|h| short_id(&h))
                        && self
                            .recent
                            .get(&s)
                            .is_some_and(|r| r.1 + cfg.sync_settle_ms > now && r.1 > connected_at)
                    {
                        held_back.push(s);
                        continue;
                    }
                    if !allow.work(1) || !allow.bytes(c.change.len() as u64) {
                        break;
                    }
                    send_bytes += c.change.len();
                    to_send.push(c.clone());
                }
            }
            for (key, it) in &theirs {
                if index.range(key.0, key.0).all(|(k, _)| k != key) {
                    if let Some((node, _, _)) = it.doc.owned()
                        && self.revoked.contains(&node)
                    {
                        continue;
                    }
                    // Not for this node to hold (scoped to a region it is
                    // not in): never asked for.
                    if !self.visible_to(&it.doc, &self.id) {
                        continue;
                    }
                    i_lack = true;
                }
            }
            lacks |= i_lack;
            if i_lack && ri.reply {
                reply_items.push(RangeItems {
                    lo: ri.lo,
                    hi: ri.hi,
                    items: index.items(ri.lo, ri.hi),
                    reply: false,
                });
            }
        }
        lacks
    }

    fn on_sync(&mut self, from: NodeId, sync: Message, now: Millis, out: &mut Vec<Output>) {
        let Message::Sync {
            root_version,
            depth,
            splits,
            items,
        } = sync
        else {
            unreachable!("called with a Sync message")
        };
        let Some(mut allow) = self.open_budget(from, "Sync", now, out) else {
            return;
        };
        // The peer answered: nothing awaited from it any more, and what this
        // node listed to it has been answered.
        if self.awaiting.remove(&from).is_some()
            && let Some(p) = self.peers.get_mut(&from)
        {
            p.sync_quality = p.sync_quality * 4 / 5 + 200;
        }
        self.holds.retain(|h| h.2 != from && h.3 > now);
        let expects_answer = !splits.is_empty() || items.iter().any(|ri| ri.reply);
        if root_version < self.root_version() {
            // Only the roots the peer lacks, in messages within the bound.
            let before = self.stats.bytes_sent;
            for roots in self.roots_after(root_version) {
                self.answer(from, &Message::Roots { roots }, out);
            }
            allow.spend(1, self.stats.bytes_sent - before);
        }
        // Changes that arrived before this connection are not in flight to the
        // peer through this node: the settle rule does not hold them back.
        let connected_at = self.peers.get(&from).map_or(0, |p| p.connected_at);
        let mut reply_splits: Vec<Split> = Vec::new();
        let mut reply_items: Vec<RangeItems> = Vec::new();
        // What this node and the peer may both hold (see `view_for`).
        let index = self.view_for(&from).clone();
        self.compare_splits(
            &index,
            splits,
            depth,
            &mut allow,
            &mut reply_splits,
            &mut reply_items,
        );
        let mut to_send: Vec<SignedChange> = Vec::new();
        let mut held_back: Vec<ShortId> = Vec::new();
        if self.compare_items(
            &index,
            items,
            connected_at,
            now,
            &mut allow,
            &mut to_send,
            &mut held_back,
            &mut reply_items,
        ) {
            self.repairing = true;
        }
        if !to_send.is_empty() {
            self.answer_changes(from, to_send, out);
        }
        // What the settle rule left to the tree is announced, as to a lazy
        // peer: if the push was lost on the way, the peer grafts it at once
        // instead of learning it lacks it a round later.
        let before = self.stats.bytes_sent;
        for ids in held_back.chunks(self.config.wire.ids_per_message_max.max(1)) {
            self.stats.announcements_sent += ids.len() as u64;
            self.answer(from, &Message::IHave { ids: ids.to_vec() }, out);
        }
        allow.spend(0, self.stats.bytes_sent - before);
        // Where this node lacks something: listed again in the next rounds'
        // first steps, until it arrives (see `lacking`).
        let until = now + LACKING_INTERVALS * self.config.anti_entropy_interval_ms;
        for ri in reply_items.iter().filter(|ri| !ri.reply) {
            let fp = index.range_fp(ri.lo, ri.hi);
            self.lacking.retain(|l| (l.0, l.1) != (ri.lo, ri.hi));
            if self.lacking.len() >= LACKING_MAX {
                self.lacking.pop_front();
            }
            self.lacking.push_back((ri.lo, ri.hi, fp, until));
        }
        // One listing of a range in flight at a time: a range listed to a
        // peer that has not answered yet is not listed to another (nor again
        // to the same one), so that what this node lacks there comes once.
        self.expire_holds(now);
        let before = reply_items.len();
        reply_items.retain(|ri| !self.held(ri.lo, ri.hi));
        if reply_items.len() < before {
            // Left for now, to the peer answering for them: look again soon.
            self.stats.sync_ranges_held += (before - reply_items.len()) as u64;
            self.repairing = true;
        }
        if reply_splits.is_empty() && reply_items.is_empty() {
            if expects_answer {
                // An empty step: "nothing more here" (the peer stops awaiting).
                let msg = Message::Sync {
                    root_version: self.root_version(),
                    depth: depth.saturating_add(1),
                    splits: Vec::new(),
                    items: Vec::new(),
                };
                let before = self.stats.bytes_sent;
                self.answer(from, &msg, out);
                allow.spend(0, self.stats.bytes_sent - before);
            }
            self.close_budget(from, allow);
            return;
        }
        // Bound one step: what does not fit waits for the next round.
        let step_max = self.config.wire.ranges_per_message_max;
        reply_items.truncate(step_max);
        let mut room = step_max - reply_items.len();
        reply_splits.retain(|sp| {
            let fits = sp.parts.len() <= room;
            if fits {
                room -= sp.parts.len();
            }
            fits
        });
        let items_max = self.config.wire.items_per_message_max;
        let mut total = 0;
        for ri in &mut reply_items {
            ri.items.truncate(items_max.saturating_sub(total));
            total += ri.items.len();
        }
        // A list sent because the peer holds what this node lacks there (not
        // a first listing, which may find nothing): the peer answers with it.
        for ri in reply_items.iter().filter(|ri| !ri.reply) {
            self.hold(ri, from, now);
        }
        let awaits = !reply_splits.is_empty() || reply_items.iter().any(|ri| ri.reply);
        let msg = Message::Sync {
            root_version: self.root_version(),
            depth: depth.saturating_add(1),
            splits: reply_splits,
            items: reply_items,
        };
        let before = self.stats.bytes_sent;
        self.answer(from, &msg, out);
        allow.spend(0, self.stats.bytes_sent - before);
        self.close_budget(from, allow);
        if awaits {
            self.await_answer(from, now);
        }
    }

    // ---- membership ----

    /// The probe timer: send the next probe, send an unanswered one again,
    /// or suspect a neighbour that left every send unanswered.
    fn on_probe_timer(&mut self, now: Millis, rng: &mut impl rand::Rng, out: &mut Vec<Output>) {
        let m = self.config.membership.clone();
        if !m.enabled {
            return;
        }
        if let Some(p) = self.probe {
            let connected = self.peers.contains_key(&p.peer);
            if !p.acked && connected {
                if p.sends >= m.probe_attempts {
                    self.probe = None;
                    self.suspect(p.peer, now, out);
                    out.push(Output::Event(Event::PeerUnresponsive { peer: p.peer }));
                    self.arm(Timer::Probe, now + m.probe_interval_ms);
                } else {
                    self.probe = Some(ProbeState {
                        sends: p.sends + 1,
                        ..p
                    });
                    self.stats.probes_sent += 1;
                    self.send(p.peer, &Message::Probe { seq: p.seq }, out);
                    self.arm(Timer::Probe, now + m.probe_retry_ms);
                }
                return;
            }
            // Answered (or the link went, which `lost` covers): the next
            // probe comes a period after this one started.
            if p.started + m.probe_interval_ms > now {
                self.arm(Timer::Probe, p.started + m.probe_interval_ms);
                return;
            }
        }
        let Some(peer) = self.random_peer(None, rng) else {
            self.probe = None;
            self.arm(Timer::Probe, now + m.probe_interval_ms);
            return;
        };
        self.probe_seq = self.probe_seq.wrapping_add(1);
        self.probe = Some(ProbeState {
            peer,
            seq: self.probe_seq,
            sends: 1,
            started: now,
            acked: false,
        });
        self.stats.probes_sent += 1;
        self.send(
            peer,
            &Message::Probe {
                seq: self.probe_seq,
            },
            out,
        );
        // A tenth of jitter on the period, so that probes do not fall in step.
        let period = m.probe_interval_ms;
        let jitter = rng.random_range(0..=period / 10);
        self.arm(
            Timer::Probe,
            now + m.probe_retry_ms.min(period) + jitter / 2,
        );
    }

    /// A connection went down: the peer is suspected unless it comes back
    /// within the grace (a restart of this node's dialer, a flap).
    fn on_link_lost(&mut self, peer: NodeId, now: Millis) {
        if self.probe.is_some_and(|p| p.peer == peer) {
            self.probe = None;
        }
        if !self.config.membership.enabled {
            return;
        }
        self.lost.insert(peer, now);
        self.arm_membership();
    }

    /// Suspicions that timed out become down marks; lost links past their
    /// grace make their peers suspect.
    fn on_membership_timer(
        &mut self,
        now: Millis,
        rng: &mut impl rand::Rng,
        out: &mut Vec<Output>,
    ) {
        let cfg = self.config.membership.clone();
        // Half way: ask two peers; one holding the refutation answers it.
        for r in self.members.echoes_due(now) {
            let mut asked = Vec::new();
            for _ in 0..2 {
                if let Some(p) = self.random_peer(asked.first().copied(), rng)
                    && !asked.contains(&p)
                {
                    asked.push(p);
                }
            }
            for p in asked {
                self.send_rumours(p, vec![r], out);
            }
        }
        let heard = &self.last_heard;
        let (downs, nudges) = self.members.expire(now, &cfg, |n, since| {
            heard.get(n).is_some_and(|t| *t > since)
        });
        for r in nudges {
            // Heard from it since it was suspected: its refutation was lost.
            // Tell it again (directly, if connected) and wait once more.
            let subject = r.rumour.subject;
            if self.peers.contains_key(&subject) {
                self.send_rumours(subject, vec![r], out);
            } else {
                self.flood_rumours(None, vec![r], now, out);
            }
        }
        for node in downs {
            tracing::debug!(node = %node.short(), "member marked down");
            out.push(Output::Event(Event::Member {
                node,
                state: MemberState::Down,
            }));
        }
        let grace = self.config.membership.link_grace_ms;
        let due: Vec<NodeId> = self
            .lost
            .iter()
            .filter(|(_, t)| **t + grace <= now)
            .map(|(n, _)| *n)
            .collect();
        for node in due {
            self.lost.remove(&node);
            if !self.peers.contains_key(&node) {
                self.suspect(node, now, out);
            }
        }
        self.arm_membership();
    }

    fn arm_membership(&mut self) {
        let grace = self.config.membership.link_grace_ms;
        let lost = self.lost.values().min().map(|t| t + grace);
        let next = match (self.members.next_deadline(), lost) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            self.arm(Timer::Membership, at);
        }
    }

    /// Whether membership speaks about `node`: an active member of the policy
    /// (a fleet without members has no membership).
    fn is_member(&self, node: &NodeId) -> bool {
        self.replica.policy().is_active_member(node)
    }

    /// The incarnation a node's signed status implies (its epoch's first).
    fn status_incarnation(&self, node: &NodeId) -> u64 {
        if *node == self.id {
            return self.members.incarnation();
        }
        incarnation_of_epoch(self.known_epoch(node))
    }

    /// The epoch `node`'s signed documents are in here: its status's, or,
    /// outside its scoped region (no status held), its summary's.
    fn known_epoch(&self, node: &NodeId) -> u32 {
        let status = self.replica.status_epoch(node).unwrap_or(0);
        let summary = self
            .replica
            .owned_epoch(node, OwnedKind::Summary)
            .unwrap_or(0);
        status.max(summary)
    }

    /// Whether a suspicion names an incarnation its subject could have
    /// announced: one within the epoch after the one its signed status is in
    /// here (a restart this node has not heard of yet), or one of its own
    /// `Alive`s held here (a reporter sends that `Alive` ahead of the
    /// suspicion). A member could otherwise sign a suspicion at `u64::MAX`,
    /// which nothing could refute: one member would mark a live node down
    /// for good. Within the bound, each refutation is one above.
    fn suspicion_in_bounds(&self, r: &Rumour) -> bool {
        let (epoch, announced) = if r.subject == self.id {
            (self.writer.epoch(), self.members.incarnation())
        } else {
            (
                self.known_epoch(&r.subject),
                self.members.announced_incarnation(&r.subject),
            )
        };
        let bound = incarnation_of_epoch(epoch.saturating_add(1)) | u64::from(u32::MAX);
        r.incarnation <= bound.max(announced)
    }

    /// A suspicion, preceded by its subject's `Alive` at that incarnation
    /// when the suspicion is above the status epoch's first (the proof).
    fn with_proof(&self, r: SignedRumour, into: &mut Vec<SignedRumour>) {
        if let Claim::Suspect { .. } = r.rumour.claim
            && r.rumour.incarnation > self.status_incarnation(&r.rumour.subject)
            && let Some(a) = self.members.alive_of(&r.rumour.subject)
            && !into.contains(a)
        {
            into.push(*a);
        }
        into.push(r);
    }

    /// This node could not reach `node`: sign a suspicion and flood it.
    fn suspect(&mut self, node: NodeId, now: Millis, out: &mut Vec<Output>) {
        if node == self.id || !self.is_member(&node) || !self.is_member(&self.id) {
            return;
        }
        // Its evidence holds until the node is connected again: an `Alive`
        // at a higher incarnation heard meanwhile makes it suspect again.
        self.my_suspicions.insert(node);
        let rumour = Rumour {
            subject: node,
            incarnation: self
                .status_incarnation(&node)
                .max(self.members.announced_incarnation(&node)),
            claim: Claim::Suspect { reporter: self.id },
        };
        if self.members.judge(&rumour) != Adopted::News {
            return;
        }
        let signed = self.writer.sign_rumour(rumour);
        self.stats.suspicions_raised += 1;
        tracing::debug!(node = %node.short(), "suspecting a member");
        if self
            .members
            .adopt(signed, now, &self.config.membership.clone())
        {
            out.push(Output::Event(Event::Member {
                node,
                state: MemberState::Suspect,
            }));
        }
        self.arm_membership();
        let mut batch = Vec::new();
        self.with_proof(signed, &mut batch);
        self.flood_rumours(None, batch, now, out);
    }

    /// This node's `Alive` at its current incarnation (signed once).
    fn own_alive(&mut self) -> SignedRumour {
        if let Some(r) = self.members.own_alive() {
            return *r;
        }
        let r = self.writer.sign_rumour(Rumour {
            subject: self.id,
            incarnation: self.members.incarnation(),
            claim: Claim::Alive,
        });
        self.members.set_own_alive(r);
        r
    }

    /// Rumours from a peer: news is verified, adopted and flooded on; a
    /// suspicion of this node is refuted; an outdated one is answered with
    /// this node's current `Alive`, and one outdated by a newer `Alive` held
    /// here with that `Alive` (or with the suspicion held at it); an `Alive`
    /// no newer than a suspicion held here is answered with the suspicion.
    fn on_rumours(
        &mut self,
        from: NodeId,
        rumours: Vec<SignedRumour>,
        now: Millis,
        out: &mut Vec<Output>,
    ) {
        if !self.config.membership.enabled || !self.is_member(&self.id) {
            return;
        }
        let cfg = self.config.membership.clone();
        let mut onward = Vec::new();
        let mut answer = Vec::new();
        let mut refute = None;
        let mut remind = false;
        let mut again = Vec::new();
        // Members whose state news changed, with their state before this
        // message: one event each, for the state the whole message leaves
        // (a suspicion comes after the Alive that proves its incarnation,
        // and that Alive alone is no event).
        let mut changed: Vec<(NodeId, Option<MemberState>)> = Vec::new();
        // The suspicions this message carries: an Alive sent as the proof
        // of one is no stale Alive to answer.
        let carried: Vec<(NodeId, u64)> = rumours
            .iter()
            .filter(|r| matches!(r.rumour.claim, Claim::Suspect { .. }))
            .map(|r| (r.rumour.subject, r.rumour.incarnation))
            .collect();
        for r in rumours {
            if !self.peers.contains_key(&from) {
                // Disconnected for what it sent: the rest is not looked at.
                break;
            }
            // About members, from members, of the policy held here (one from
            // a newer or older policy is dropped quietly: not an offence).
            if !self.is_member(&r.rumour.subject) || !self.is_member(&r.rumour.signer()) {
                continue;
            }
            if let Claim::Suspect { .. } = r.rumour.claim
                && !self.suspicion_in_bounds(&r.rumour)
            {
                // Above what its subject announced (or this node has not
                // heard that yet): dropped before any signature check.
                self.stats.rumours_out_of_bound += 1;
                continue;
            }
            let about_me = r.rumour.subject == self.id;
            let verdict = self.members.judge(&r.rumour);
            let raises_me = about_me
                && r.rumour.claim == Claim::Alive
                && r.rumour.incarnation > self.members.incarnation();
            let size = postcard::experimental::serialized_size(&r).unwrap_or(0) as u64;
            if matches!(verdict, Adopted::News | Adopted::Refute(_)) || raises_me {
                // News costs every node a check and a forward: each reporter
                // (suspicions) and each subject (refutations) has a budget.
                let (who, burst, per_s) = match r.rumour.claim {
                    Claim::Suspect { reporter } => (reporter, 8, 1),
                    Claim::Alive => (r.rumour.subject, 8, 1),
                };
                if !about_me && !self.rumour_rates.take(who, now, burst, per_s) {
                    self.stats.rumours_rate_limited += 1;
                    continue;
                }
                self.stats.rumours_verified += 1;
                if let Err(e) = r.verify() {
                    // Not the reporter's (or subject's) work: their budget
                    // is left whole, and the forger pays with a penalty
                    // (disconnected at `penalty_max`), which bounds the
                    // checks it can cause.
                    if !about_me {
                        self.rumour_rates.give_back(who, burst);
                    }
                    let w = self.config.penalty_per_offence;
                    self.penalise(from, w, format!("sent an invalid rumour: {e}"), out);
                    continue;
                }
            }
            if verdict != Adopted::News {
                // Verified, or what it says is known here: not grafted again.
                self.saw_rumour(&r, false, now);
            }
            if raises_me {
                // Another instance on this key, or an earlier life: take its
                // incarnation quietly (no flood: two instances must not
                // outbid each other for ever).
                self.members.raise_incarnation(r.rumour.incarnation);
                continue;
            }
            match verdict {
                Adopted::Known => {
                    // A suspicion older than an Alive held here: the sender
                    // has not heard the refutation. If a suspicion at that
                    // Alive's incarnation is held too (the subject refuted,
                    // then went silent: a crash on the far side of a
                    // partition), that is what the sender is answered, with
                    // the Alive as its proof: the refutation alone would
                    // show a crashed node alive there.
                    if let Claim::Suspect { .. } = r.rumour.claim
                        && let Some(a) = self.members.alive_of(&r.rumour.subject)
                        && a.rumour.incarnation > r.rumour.incarnation
                    {
                        match self.members.suspicion_of(&r.rumour.subject) {
                            Some(s)
                                if s.rumour.incarnation >= a.rumour.incarnation
                                    && !answer.contains(&s) =>
                            {
                                self.with_proof(s, &mut answer);
                            }
                            Some(_) => {}
                            None if !answer.contains(a) => answer.push(*a),
                            None => {}
                        }
                    }
                    // An Alive no newer than a suspicion held here: the
                    // sender shows the subject alive on a refutation the
                    // suspicion answers (it was cut from it). Nothing else
                    // would repair that: it is answered with the suspicion,
                    // with its proof.
                    if r.rumour.claim == Claim::Alive
                        && !about_me
                        && !carried
                            .iter()
                            .any(|(n, i)| *n == r.rumour.subject && *i >= r.rumour.incarnation)
                        && let Some(s) = self.members.suspicion_of(&r.rumour.subject)
                        && s.rumour.incarnation >= r.rumour.incarnation
                        && !answer.contains(&s)
                    {
                        self.with_proof(s, &mut answer);
                    }
                }
                Adopted::Remind => remind = true,
                Adopted::Refute(inc) => {
                    self.stats.new_rumour_bytes_received += size;
                    refute = Some(refute.unwrap_or(0).max(inc));
                }
                Adopted::News => {
                    let subject = r.rumour.subject;
                    let before = self.members.liveness(&subject).map(|l| l.state);
                    if self.members.adopt(r, now, &cfg) {
                        self.stats.new_rumour_bytes_received += size;
                        if !changed.iter().any(|(n, _)| *n == subject) {
                            changed.push((subject, before));
                        }
                        if r.rumour.claim == Claim::Alive
                            && self.my_suspicions.contains(&subject)
                            && !self.peers.contains_key(&subject)
                        {
                            again.push(subject);
                        }
                        self.with_proof(r, &mut onward);
                    }
                }
            }
        }
        for (node, before) in changed {
            let after = self.members.liveness(&node).map(|l| l.state);
            // First news of a member that is alive is no event.
            if after != before
                && !(before.is_none() && after == Some(MemberState::Alive))
                && let Some(state) = after
            {
                out.push(Output::Event(Event::Member { node, state }));
            }
        }
        if let Some(inc) = refute {
            self.members.raise_incarnation(inc);
            self.stats.refutations += 1;
            tracing::info!(incarnation = inc, "refuting a suspicion of this node");
            let alive = self.own_alive();
            // To everyone, the sender included.
            self.flood_rumours(None, vec![alive], now, out);
        } else if remind {
            let alive = self.own_alive();
            answer.push(alive);
        }
        if !answer.is_empty() && self.peers.contains_key(&from) {
            self.send_rumours(from, answer, out);
        }
        self.arm_membership();
        if !onward.is_empty() {
            self.flood_rumours(Some(from), onward, now, out);
        }

        // Still unreachable from here: suspect again, at the new incarnation.
        for node in again {
            self.suspect(node, now, out);
        }
    }

    /// Send rumours on to every peer but `except`: down each signer's tree
    /// (PlumTree, as its status changes go), announced by id to the peers
    /// pruned from it, who graft what no tree brought them.
    fn flood_rumours(
        &mut self,
        except: Option<NodeId>,
        rumours: Vec<SignedRumour>,
        now: Millis,
        out: &mut Vec<Output>,
    ) {
        for r in &rumours {
            self.saw_rumour(r, true, now);
        }
        if !self.config.plumtree {
            for msg in self.rumour_messages(&rumours) {
                self.send_to_all(except, &msg, out);
            }
            return;
        }
        let mut eager: Vec<(NodeId, Vec<SignedRumour>)> = Vec::new();
        let mut lazy_any = false;
        for (peer, p) in &mut self.peers {
            if Some(*peer) == except {
                continue;
            }
            // Rumours of one subject go the same way: a suspicion's proof
            // (its subject's Alive, signed by another, down another tree)
            // announced without it would show a crashed node alive until
            // the suspicion came; the suspicion without it is out of bounds.
            let eager_subjects: BTreeSet<NodeId> = rumours
                .iter()
                .filter(|r| !p.pruned.contains(&r.rumour.signer()))
                .map(|r| r.rumour.subject)
                .collect();
            let mut push = Vec::new();
            for r in &rumours {
                if eager_subjects.contains(&r.rumour.subject) {
                    push.push(*r);
                } else {
                    p.lazy.push(rumour_short_id(r));
                    lazy_any = true;
                }
            }
            let over = p.lazy.len().saturating_sub(self.config.lazy_queue_max);
            p.lazy.drain(..over);
            if !push.is_empty() {
                eager.push((*peer, push));
            }
        }
        for (peer, rs) in eager {
            for msg in self.rumour_messages(&rs) {
                self.send(peer, &msg, out);
            }
        }
        if lazy_any && !self.timers.contains_key(&Timer::LazyFlush) {
            let at = now + self.config.lazy_flush_interval_ms;
            self.timers.insert(Timer::LazyFlush, at);
        }
    }

    /// The suspicions held here that are still kept to answer a graft (and
    /// their proofs), announced by id to an anti-entropy partner, which
    /// grafts those it lacks. A flood pushed eagerly is not announced again,
    /// and reconciliation carries changes, not rumours: without this a node
    /// whose every copy was lost (15-20% of messages on a bad link, each of
    /// its few links) never hears of a crash (overlap-2000: one observer
    /// never marked two crashed nodes down in 29 s). Nothing is sent when
    /// nothing is held; a partner that holds them all skips every id.
    fn announce_suspicions(&mut self, peer: NodeId, out: &mut Vec<Output>) {
        if !self.config.membership.enabled {
            return;
        }
        let max = self.config.wire.ids_per_message_max.max(1);
        let mut ids: Vec<ShortId> = Vec::new();
        for s in self.members.suspicions() {
            let mut batch = Vec::new();
            self.with_proof(s, &mut batch);
            for r in batch {
                let id = rumour_short_id(&r);
                if matches!(self.rumours_seen.get(&id), Some((Some(_), _))) && !ids.contains(&id) {
                    ids.push(id);
                }
            }
            if ids.len() >= max {
                break;
            }
        }
        ids.truncate(max);
        if ids.is_empty() {
            return;
        }
        self.stats.announcements_sent += ids.len() as u64;
        self.send(peer, &Message::IHave { ids }, out);
    }

    /// Rumours to one peer alone (an answer, an echo, the exchange at link-up).
    fn send_rumours(&mut self, to: NodeId, rumours: Vec<SignedRumour>, out: &mut Vec<Output>) {
        for msg in self.rumour_messages(&rumours) {
            self.send(to, &msg, out);
        }
    }

    /// Remember a rumour's id (and the rumour, if this node sends it on, to
    /// answer grafts), bounded in time and count as `recent`.
    fn saw_rumour(&mut self, r: &SignedRumour, held: bool, now: Millis) {
        let s = rumour_short_id(r);
        let keep = match self.rumours_seen.get(&s) {
            Some((Some(_), _)) if !held => return,
            _ => held.then_some(*r),
        };
        self.rumours_seen.insert(s, (keep, now));
        self.missing.remove(&s);
        self.rumours_order.push_back((s, now));
        let (max, keep) = (self.config.recent_max, self.config.recent_keep_ms);
        trim_recent(
            &mut self.rumours_seen,
            &mut self.rumours_order,
            max,
            keep,
            now,
            |r| r.1,
        );
    }

    /// Rumours in messages within `wire.rumours_per_message_max`.
    fn rumour_messages(&self, rumours: &[SignedRumour]) -> Vec<Message> {
        rumours
            .chunks(self.config.wire.rumours_per_message_max)
            .map(|c| Message::Rumours {
                rumours: c.to_vec(),
            })
            .collect()
    }

    // ---- sending and penalties ----

    fn send(&mut self, to: NodeId, msg: &Message, out: &mut Vec<Output>) {
        // The last gate of region scoping: whatever decided this send, no
        // status document scoped to a region `to` is not in leaves here.
        // Every decision above already leaves them out (the gate counts
        // what it stops: `scope_withheld`, 0 when they do).
        let gated;
        let msg = match self.scope_gate(to, msg) {
            Some(m) => {
                gated = m;
                &gated
            }
            None => msg,
        };
        let bytes = msg.encode();
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        out.push(Output::Send { to, bytes });
    }

    /// `msg` without what `to` may not hold (`None`: nothing to take out).
    fn scope_gate(&mut self, to: NodeId, msg: &Message) -> Option<Message> {
        let policy = self.replica.policy();
        if !policy.has_scoped_data() {
            return None;
        }
        let ok = |d: &DocId| may_send(policy, d, &to);
        let mut withheld = 0u64;
        let gated = match msg {
            Message::Changes { push, changes } if changes.iter().any(|c| !ok(&c.doc)) => {
                let kept: Vec<SignedChange> =
                    changes.iter().filter(|c| ok(&c.doc)).cloned().collect();
                withheld += (changes.len() - kept.len()) as u64;
                Message::Changes {
                    push: *push,
                    changes: kept,
                }
            }
            Message::Want { items } if items.iter().any(|i| !ok(&i.doc)) => {
                let kept: Vec<Item> = items.iter().filter(|i| ok(&i.doc)).cloned().collect();
                withheld += (items.len() - kept.len()) as u64;
                Message::Want { items: kept }
            }
            Message::Sync {
                root_version,
                depth,
                splits,
                items,
            } if items.iter().any(|ri| ri.items.iter().any(|i| !ok(&i.doc))) => {
                let items = items
                    .iter()
                    .map(|ri| {
                        let kept: Vec<Item> =
                            ri.items.iter().filter(|i| ok(&i.doc)).cloned().collect();
                        withheld += (ri.items.len() - kept.len()) as u64;
                        RangeItems {
                            items: kept,
                            ..ri.clone()
                        }
                    })
                    .collect();
                Message::Sync {
                    root_version: *root_version,
                    depth: *depth,
                    splits: splits.clone(),
                    items,
                }
            }
            _ => return None,
        };
        self.stats.scope_withheld += withheld;
        Some(gated)
    }

    /// Send one message to every peer but `except`, encoded once.
    fn send_to_all(&mut self, except: Option<NodeId>, msg: &Message, out: &mut Vec<Output>) {
        let bytes = msg.encode();
        for &to in self.peers.keys().filter(|p| Some(**p) != except) {
            self.stats.messages_sent += 1;
            self.stats.bytes_sent += bytes.len() as u64;
            out.push(Output::Send {
                to,
                bytes: bytes.clone(),
            });
        }
    }

    /// Send changes in messages of bounded size and count.
    fn send_changes(
        &mut self,
        to: NodeId,
        push: Push,
        changes: Vec<SignedChange>,
        out: &mut Vec<Output>,
    ) {
        let mut batch: Vec<SignedChange> = Vec::new();
        let mut bytes = 0usize;
        for c in changes {
            let len = c.change.len() + c.sigs.len() * 100;
            if !batch.is_empty()
                && (bytes + len > self.config.batch_size_max_bytes
                    || batch.len() >= self.config.wire.changes_per_message_max)
            {
                let changes = std::mem::take(&mut batch);
                self.send(to, &Message::Changes { push, changes }, out);
                bytes = 0;
            }
            bytes += len;
            batch.push(c);
        }
        if !batch.is_empty() {
            self.send(
                to,
                &Message::Changes {
                    push,
                    changes: batch,
                },
                out,
            );
        }
    }

    /// Let `peer`'s penalty decay with the time since it last did.
    fn decay_penalty(&mut self, peer: NodeId, now: Millis) {
        let per_s = u64::from(self.config.penalty_decay_per_s);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let elapsed = now.saturating_sub(p.penalty_at);
        let decay = elapsed.saturating_mul(per_s) / 1000;
        if decay > 0 || p.penalty == 0 {
            p.penalty = p
                .penalty
                .saturating_sub(u32::try_from(decay).unwrap_or(u32::MAX));
            p.penalty_at = now;
        }
    }

    /// The answer budget left for `peer`'s request `what` (refilled up to
    /// now), or None if it is spent: the request is refused, counted and
    /// mildly penalised.
    fn open_budget(
        &mut self,
        peer: NodeId,
        what: &str,
        now: Millis,
        out: &mut Vec<Output>,
    ) -> Option<Allowance> {
        let cfg = &self.config;
        let p = self.peers.get_mut(&peer)?;
        p.work.refill(
            now,
            cfg.answer_work_burst_lookups,
            cfg.answer_work_refill_lookups_per_s,
        );
        p.bytes
            .refill(now, cfg.answer_burst_bytes, cfg.answer_refill_bytes_per_s);
        if p.work.tokens > 0 && p.bytes.tokens > 0 {
            return Some(Allowance {
                work: p.work.tokens,
                bytes: p.bytes.tokens,
                short: false,
            });
        }
        self.stats.requests_refused += 1;
        let w = self.config.penalty_per_refusal;
        self.penalise(
            peer,
            w,
            format!("{what} refused: answer budget spent (asks for more than it may)"),
            out,
        );
        None
    }

    /// Put back what is left of a request's allowance.
    fn close_budget(&mut self, peer: NodeId, allow: Allowance) {
        if allow.short {
            self.stats.answers_cut_short += 1;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            self.stats.answer_lookups += p.work.tokens.saturating_sub(allow.work);
            p.work.tokens = allow.work;
            p.bytes.tokens = allow.bytes;
        }
    }

    /// Send changes in answer to a request (counted in `answer_bytes_sent`).
    fn answer_changes(&mut self, to: NodeId, changes: Vec<SignedChange>, out: &mut Vec<Output>) {
        let before = self.stats.bytes_sent;
        self.send_changes(to, Push::Reply, changes, out);
        self.stats.answer_bytes_sent += self.stats.bytes_sent - before;
    }

    /// Send a message in answer to a request (counted in `answer_bytes_sent`).
    fn answer(&mut self, to: NodeId, msg: &Message, out: &mut Vec<Output>) {
        let before = self.stats.bytes_sent;
        self.send(to, msg, out);
        self.stats.answer_bytes_sent += self.stats.bytes_sent - before;
    }

    fn penalise(&mut self, peer: NodeId, weight: u32, reason: String, out: &mut Vec<Output>) {
        tracing::debug!(%peer, %reason, "peer penalised");
        out.push(Output::Event(Event::PeerMisbehaved {
            peer,
            reason: reason.clone(),
        }));
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.penalty = p.penalty.saturating_add(weight);
        if p.penalty >= self.config.penalty_max {
            self.drop_peer(&peer);
            out.push(Output::Disconnect {
                peer,
                reason: DisconnectReason::Misbehaved { offence: reason },
            });
        }
    }
}
