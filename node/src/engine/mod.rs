//! The sans-IO replication engine.
//!
//! A state machine: no sockets, no clock, no random number generator of its own.
//! The driver (the libp2p daemon in `crate::daemon`, or the simulator in
//! `dcloud-sim`) feeds it [`Input`]s with the current time and an RNG, and
//! carries out the [`Output`]s it returns, **in order**:
//!
//! * [`Output::Persist`] must be durable before any later output of the same
//!   call is carried out (a change is stored before it is forwarded or
//!   acknowledged);
//! * [`Output::Send`] queues bytes for one peer (the engine bounds what it asks
//!   for; the driver may drop on a full socket, anti-entropy repairs it);
//! * [`Output::Disconnect`] closes the connection to a peer, for a typed
//!   [`DisconnectReason`] (the driver keeps a revoked peer away for good, a
//!   misbehaving one for a while, and only closes the connection of one not
//!   admitted);
//! * [`Output::Event`] tells the daemon what happened. An event that reports
//!   state ([`Event::PolicyChanged`], [`Event::Published`]) must reach the
//!   applier or the caller only once every [`Output::Persist`] before it is
//!   durable (a driver that groups its flushes holds the event until then).
//!
//! Call order: [`Engine::restore`] (or [`Engine::new`]) once, carrying out its
//! outputs; then [`Engine::handle`] for every input, in the order they happen,
//! and [`Engine::handle_timeout`] whenever the clock passes
//! [`Engine::poll_timeout`] (the engine owns its timers: the driver keeps one
//! deadline, asked again after every call).
//!
//! **Admission** is the engine's rule: a peer may talk to this node if it is
//! an active member of the policy and not revoked; while this node is not
//! itself an active member of the policy it holds (a site just set up, or one
//! handed an old policy from before its enrolment), any peer not revoked is
//! admitted, so that the policy enrolling it can reach it. [`Input::PeerUp`] of
//! a peer not admitted is answered with [`Output::Disconnect`]
//! ([`DisconnectReason::NotAdmitted`] or [`DisconnectReason::Revoked`]), and a
//! policy change disconnects every connected peer it no longer admits.
//!
//! THE INTERFACE IN THIS FILE IS SHARED BY THE DAEMON AND THE SIMULATOR:
//! extend it, do not break it.
//!
//! # The protocol
//!
//! Every change goes through [`dcloud_crdt::Replica::ingest`] (verify,
//! authorise, apply) before anything else happens to it: **nothing is
//! forwarded before it is validated**, and a peer whose changes or messages
//! are invalid is penalised ([`Event::PeerMisbehaved`]) and, past
//! [`EngineConfig::penalty_max`], disconnected.
//!
//! **Dissemination** (fast path). Status changes follow PlumTree (Leitão,
//! Pereira, Rodrigues, "Epidemic Broadcast Trees", SRDS 2007) with one tree
//! per status owner: a new change is pushed whole to the peers that are
//! *eager* for its owner and announced by an 8-byte short id, batched every
//! [`EngineConfig::lazy_flush_interval_ms`], to the *lazy* ones. A change
//! received again by eager push, whose first copy also came down the tree,
//! means a redundant link: the receiver sends `Prune` for that owner and the
//! sender stops pushing that owner's changes on it. An announced change still
//! missing after [`EngineConfig::graft_timeout_ms`] is grafted from an
//! announcer, which puts that link back on the owner's tree: trees repair
//! themselves around lost links and dead nodes. (A single tree shared by all
//! owners, as in the paper, never settles when a thousand nodes each send:
//! every sender re-optimises it and the grafts and prunes cost more than
//! flooding saves; one tree per owner settles after the owner's first change,
//! at the price of a set of pruned owners per peer, bounded by
//! [`EngineConfig::pruned_origins_max`].) Policy changes (rare, small, urgent) are pushed eagerly to every
//! peer ([`EngineConfig::policy_flood`]), so they travel the overlay's shortest
//! paths whatever the tree looks like. A change that arrives without its
//! dependencies is held pending and its sender asked for them (`Want`).
//!
//! **Anti-entropy** (the guarantee). Every
//! [`EngineConfig::anti_entropy_interval_ms`] (jittered; a quarter of it while
//! repairs are under way) and whenever a connection comes up, the engine
//! reconciles with one random peer by range-based set reconciliation over the
//! set of (document, heads) it holds (Meyer, "Range-Based Set Reconciliation",
//! 2023; iroh-docs' `ranger`). Documents are keyed by a hash of their owner;
//! each side sends the count and a 64-bit XOR fingerprint of key ranges, equal
//! ranges stop, differing ranges are split 16 ways or, when small, listed with
//! their heads, and each side then sends what the other lacks. The cost of a
//! round grows with the number of differing documents times the log of the
//! fleet, not with the fleet: two nodes in sync exchange one ~30-byte message
//! each way. Changes of a document this node changed within
//! [`EngineConfig::sync_settle_ms`] are left to the tree (they are most likely
//! in flight) unless the peer connected after they arrived.
//! A step with nothing to add is answered by an empty step, so a step left
//! unanswered for [`EngineConfig::sync_retry_ms`] was lost: a new round starts
//! at once with another peer ([`Timer::SyncRetry`]). A range listed to one
//! peer is not listed to another until it answers or
//! [`EngineConfig::sync_hold_ms`] passes, and links that come up together
//! start one round, so that after a heal each missing change comes from about
//! one neighbour.
//!
//! **Answer budgets.** What a peer's `Want`, `Graft` and `Sync` requests make
//! this node do and send is bounded by two token buckets per peer (work and
//! bytes, [`EngineConfig::answer_burst_bytes`] and the fields beside it); a
//! request that finds them empty is refused and mildly penalised, and
//! penalties decay ([`EngineConfig::penalty_decay_per_s`]).
//!
//! **Status and liveness.** [`Engine::new`] writes a refresh (a node says it
//! is up); [`Input::SetStatus`] writes what changed, at once; and a slow
//! signed refresh every [`EngineConfig::status_refresh_interval_ms`] (10
//! minutes) keeps an owner's signed view from getting old. Nothing is
//! written only to say "alive": liveness is membership's
//! ([`membership`]: SWIM's probes, suspicions and refutations on the mesh),
//! at a cost per node that does not grow with the fleet. The
//! [`dcloud_crdt::StatusWriter`] starts a new epoch past its bound and
//! replicas drop older epochs ([`Persist::DropStatusBefore`]).
//! [`Engine::liveness`] is what membership holds about a node;
//! [`Engine::last_heard`] the local time this node last heard from it
//! directly, never its clock.
//!
//! **Bounds.** Message size and list lengths on decode ([`WireLimits`]);
//! messages of changes by size and count; lazy announcements per peer;
//! announced-but-missing changes and their announcers; changes remembered by
//! short id; reconciliation ranges and items per step, its depth, and the
//! bytes it sends per step; the pending-dependencies buffer (in the replica).
//!
//! **Freshness** (TUF's timestamp role). The engine keeps the newest
//! [`dcloud_crdt::SignedFreshness`] that verifies against its trust chain
//! under the root in force (newest by `(issued_ms, root_version)`), sends it
//! to every peer that comes up, and forwards a newer one to its peers once.
//! An invalid statement from a peer is penalised like an invalid change; one
//! naming a root this node does not hold yet, or an older root than the one
//! in force, is ignored. The engine has no wall clock: whether the statement
//! has expired is the driver's verdict (`crate::freshness`).
//!
//! **Wire format** ([`wire`]): a version byte, then postcard. Unknown versions
//! and malformed or over-limit messages are typed [`WireError`]s, counted in
//! [`EngineStats::malformed_messages`] and penalised; decoding never panics.

mod config;
mod index;
pub mod membership;
mod state;
pub mod wire;

pub use config::{EngineConfig, EngineConfigError};
pub use membership::{Liveness, MemberState, MembershipConfig};
pub use state::{Engine, EngineStats, IndexSnapshot, RejectReason, RestoreError, Restored, Stored};
pub use wire::{ChangeId, Message, WireError, WireLimits};

use dcloud_crdt::replica::Report;
use dcloud_crdt::{DocId, NodeId, NodeStatus, OwnedKind, SignedChange, SignedTrustRoot};

/// Milliseconds on the driver's clock (monotonic; virtual in the simulator).
pub type Millis = u64;

/// Timers the engine asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Reconcile with a random neighbour.
    AntiEntropy,
    /// Sign this node's status again (the slow refresh).
    StatusRefresh,
    /// Probe a neighbour (or send an unanswered probe again).
    Probe,
    /// Suspicions that time out, lost connections past their grace.
    Membership,
    /// Send batched lazy announcements.
    LazyFlush,
    /// Check for missing changes announced lazily but not received (PlumTree graft).
    Graft,
    /// Check for reconciliation steps left unanswered (lost): reconcile again
    /// at once, with another peer, instead of waiting a whole interval.
    SyncRetry,
}

/// Why the engine closes a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The policy revokes the peer: keep it away for good.
    Revoked,
    /// The peer is not an active member of the policy (not enrolled yet, or
    /// no longer): close the connection; it may be admitted later.
    NotAdmitted,
    /// The peer's penalty reached [`EngineConfig::penalty_max`]: keep it away
    /// for a while.
    Misbehaved {
        /// The last offence, for the log.
        offence: String,
    },
}

impl DisconnectReason {
    /// A short label (metrics, logs): `revoked`, `not_admitted`, `misbehaviour`.
    pub fn label(&self) -> &'static str {
        match self {
            DisconnectReason::Revoked => "revoked",
            DisconnectReason::NotAdmitted => "not_admitted",
            DisconnectReason::Misbehaved { .. } => "misbehaviour",
        }
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectReason::Revoked => f.write_str("revoked by policy"),
            DisconnectReason::NotAdmitted => f.write_str("not an active member of the policy"),
            DisconnectReason::Misbehaved { offence } => {
                write!(f, "penalty bound reached; last offence: {offence}")
            }
        }
    }
}

/// What happens to the engine.
#[derive(Debug)]
pub enum Input {
    /// A connection to a peer is up (the engine decides whether it is
    /// admitted; see the module docs).
    PeerUp {
        /// The peer.
        peer: NodeId,
    },
    /// The connection to a peer is gone.
    PeerDown {
        /// The peer.
        peer: NodeId,
    },
    /// A message arrived from a peer (one frame of the engine's protocol).
    Message {
        /// Who sent it.
        from: NodeId,
        /// The bytes, as received.
        bytes: Vec<u8>,
    },
    /// Local command: publish signed changes (from a bundle posted to the local API).
    Publish {
        /// Trust roots carried by the bundle.
        roots: Vec<SignedTrustRoot>,
        /// The changes.
        changes: Vec<SignedChange>,
    },
    /// Local command: this node's status changed (health, applied policy, addresses).
    SetStatus(NodeStatus),
    /// Local command: a signed freshness statement (posted to the local API),
    /// [`dcloud_crdt::SignedFreshness::encode`]d. Kept and forwarded if it is
    /// valid and newer than the one held ([`Engine::freshness`] tells).
    Freshness {
        /// The encoded statement.
        statement: Vec<u8>,
    },
}

/// What the engine asks its driver to do.
#[derive(Debug)]
#[must_use]
pub enum Output {
    /// Send one message to a peer.
    Send {
        /// The peer.
        to: NodeId,
        /// The encoded message.
        bytes: Vec<u8>,
    },
    /// Make this durable before carrying out any later output.
    Persist(Persist),
    /// Close the connection to a peer (see [`DisconnectReason`]).
    Disconnect {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: DisconnectReason,
    },
    /// Tell the daemon.
    Event(Event),
}

/// State to make durable.
#[derive(Debug)]
pub enum Persist {
    /// Changes newly held (applied or pending).
    Changes(Vec<SignedChange>),
    /// A trust root that advanced the chain.
    Root(SignedTrustRoot),
    /// Epochs of `node`'s document of `kind` older than `epoch` are
    /// obsolete and may be deleted.
    DropStatusBefore {
        /// Owner.
        node: NodeId,
        /// Its status document or its summary.
        kind: OwnedKind,
        /// First epoch to keep.
        epoch: u32,
    },
    /// All status and summary of a revoked node may be deleted.
    DropNode {
        /// The revoked node.
        node: NodeId,
    },
    /// Every change of `doc` must be deleted (those still held follow in a
    /// [`Persist::Changes`]): a region's scoped policy this node no longer
    /// holds, or holds less of.
    DropDoc {
        /// The document.
        doc: DocId,
    },
    /// Every status document of `node` must be deleted (not its summary):
    /// its status is scoped to a region this node is not in.
    DropStatus {
        /// The owner.
        node: NodeId,
    },
}

/// Things the daemon wants to know.
#[derive(Debug, Clone)]
pub enum Event {
    /// The verdicts on a local [`Input::Publish`].
    Published {
        /// Trust roots refused, with the reason.
        root_errors: Vec<String>,
        /// One report per change, in order.
        reports: Vec<Report>,
    },
    /// The policy changed (new heads): the daemon re-renders this node's effective config.
    PolicyChanged,
    /// A member's liveness changed here (suspected, marked down, or alive
    /// again after either).
    Member {
        /// The member.
        node: NodeId,
        /// Its new state.
        state: MemberState,
    },
    /// A connected peer left every membership probe unanswered (it is now
    /// suspected): the daemon closes the connection so that it is dialled
    /// again; the simulator's links are its own.
    PeerUnresponsive {
        /// The peer.
        peer: NodeId,
    },
    /// A peer sent something invalid; it has been penalised.
    PeerMisbehaved {
        /// The peer.
        peer: NodeId,
        /// What it did.
        reason: String,
    },
}

#[cfg(test)]
mod tests;
