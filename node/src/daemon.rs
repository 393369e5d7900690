//! The daemon: one actor that owns the libp2p swarm, the replication engine and
//! the store, and runs one `tokio::select!` loop.
//!
//! Everything else talks to it through [`Handle`] (a bounded channel of
//! [`Command`]s with `oneshot` replies): the local API, and through the API the
//! `dcloud` CLI. The loop reacts to
//!
//! * swarm events: connections (admission happens here, right after the
//!   handshake, when the peer id is known), engine frames, failures;
//! * the engine's timers;
//! * API commands;
//! * results of the applier task (rendering the effective config and running
//!   the apply command, which never blocks this loop);
//! * a one-second tick: dialing bootstrap and known peers with backoff,
//!   lifting temporary blocks, probing a failed store, refreshing gauges;
//! * shutdown (SIGTERM/SIGINT via [`run`]).
//!
//! Engine outputs are carried out in order; a `Persist` is flushed to sled
//! before any later output of the same call, and when it fails the later
//! sends of that call are dropped (anti-entropy repairs them once the store
//! takes writes again).
//!
//! Admission: a peer must be an enrolled, non-revoked member of the policy this
//! node holds. The one exception is the bootstrap of a new node: while this
//! node holds no policy at all (no members), it admits any peer so that it can
//! fetch the policy that enrols it; its peers, which hold that policy, admit it
//! only once it is enrolled. When the policy changes, connected peers are
//! checked again, and revoked peers are cut off and blocked.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dcloud_crdt::root::{TrustChain, decode_chain};
use dcloud_crdt::status::HealthCheck;
use dcloud_crdt::{
    Bundle, ChangeHash, DocId, Limits, NodeId, NodeStatus, Outcome, OwnedKind, Rejection,
    SecretKey, SignedFreshness,
};
use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns, ping};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::apply::{Applier, ApplyInput, ApplyRequest, ApplyResult};
use crate::config::Config;
use crate::dial::{Candidate, Dialer, Redial};
use crate::engine::{
    DisconnectReason, Engine, Event, Input, MemberState, Millis, Output, Persist, Stored,
};
use crate::freshness::{self, FreshnessTracker, Verdict};
use crate::links::{LinkEvent, Links, SendError};
use crate::metrics::Metrics;
use crate::net::{self, Behaviour, BehaviourEvent};
use crate::store::{EpochFile, Store, StoreError};
use crate::trustfile::TrustFile;
use crate::view::{self, FleetCtx, PublishView, ReportView, StoreView};

/// Commands queued from the API to the actor.
pub const COMMAND_QUEUE_MAX: usize = 64;
/// How long a misbehaving peer stays blocked.
pub const MISBEHAVIOUR_BLOCK_MS: u64 = 60_000;
/// Ready swarm events (and, separately, inbound frames) taken before one
/// group-commit flush.
pub const READY_BATCH_MAX: usize = 64;
/// Housekeeping period (dialing, unblocking, store probes, gauges).
pub const TICK_MS: u64 = 500;
/// How often a failed store is probed (and reopened) to see whether it takes writes again.
pub const STORE_RETRY_MS: u64 = 2_000;
/// Largest bundle accepted by the API.
pub const BUNDLE_SIZE_MAX_BYTES: usize = 16 << 20;
/// Most addresses remembered per peer (where this node reached it first,
/// then what it claims over identify), and listed in this node's status.
pub const ADDRS_PER_PEER_MAX: usize = 8;

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node key could not be read.
    #[error("{0} (create one with `dcloud init --data-dir DIR`)")]
    Key(#[from] dcloud_crdt::keys::KeyFileError),
    /// The trust root file could not be read or does not verify.
    #[error("trust root file {path}: {reason}")]
    TrustRoot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store could not be opened, even after moving it aside.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The durable trust chain could not be read, or disagrees.
    #[error(transparent)]
    TrustFile(#[from] crate::trustfile::TrustFileError),
    /// The network could not be set up.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// The engine cannot start from the store.
    #[error(transparent)]
    Restore(#[from] crate::engine::RestoreError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The API address could not be bound.
    #[error("cannot serve the local API on {addr}: {source} (is another dcloud running?)")]
    Api {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Why a publish was refused outright.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The store does not take writes.
    #[error("this node is not accepting changes: {0}")]
    Unavailable(String),
    /// Verified and applied to the in-memory replica, but the store failed to
    /// write it: it is written when the store recovers, and the node may pass
    /// it on (anti-entropy) before then; a restart before recovery loses it
    /// here. Publishing the same bundle again is harmless.
    #[error(
        "the store failed to write this bundle ({0}): its changes are held in this node's memory, \
         are written once the store recovers and may reach the fleet before then; if this daemon \
         stops first they are lost here, so publish the bundle again once the node accepts \
         changes (a repeat is harmless)"
    )]
    NotDurable(String),
    /// The daemon is shutting down or busy.
    #[error("the daemon did not answer: {0}")]
    Gone(String),
    /// The bundle carries another region's scoped policy, which this site
    /// may not hold: nothing of the bundle was taken.
    #[error(
        "this bundle carries the scoped policy of region {region}, which only that region's sites hold; \
         this site is {here}: nothing was published, publish the bundle at a site of region {region}"
    )]
    OutsideRegion {
        /// The region of the scoped policy (its name, or its id).
        region: String,
        /// Where this site is ("in region X", or "not an active member").
        here: String,
    },
}

/// Where a publish verdict goes.
type PublishReply = oneshot::Sender<Result<PublishView, PublishError>>;

/// A request to the actor.
pub enum Command {
    /// `/v1/node`.
    Node(oneshot::Sender<view::NodeView>),
    /// `/v1/fleet`.
    Fleet(oneshot::Sender<view::FleetView>),
    /// `/v1/nodes/{id}`.
    NodeRow(NodeId, oneshot::Sender<Option<view::NodeRow>>),
    /// `/v1/policy`.
    Policy(oneshot::Sender<view::PolicyView>),
    /// `/v1/policy/snapshot`.
    Snapshot(oneshot::Sender<Vec<u8>>),
    /// `/v1/config`.
    Config(oneshot::Sender<view::ConfigView>),
    /// `/v1/rollout` (None: current heads).
    Rollout(Option<Vec<ChangeHash>>, oneshot::Sender<view::RolloutView>),
    /// `POST /v1/bundles`.
    Publish(Bundle, oneshot::Sender<Result<PublishView, PublishError>>),
    /// `POST /v1/freshness`: an encoded [`dcloud_crdt::SignedFreshness`];
    /// `Err` names why it was refused.
    Freshness(
        Vec<u8>,
        oneshot::Sender<Result<view::FreshnessView, String>>,
    ),
}

/// The cloneable handle to the actor.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    /// Metrics (read directly: atomics).
    pub metrics: Arc<Metrics>,
}

impl Handle {
    /// Send a command built around a reply channel and wait for the answer.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, PublishError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .try_send(make(tx))
            .map_err(|e| PublishError::Gone(format!("command queue: {e}")))?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| PublishError::Gone("timed out after 30 s".into()))?
            .map_err(|_| PublishError::Gone("the daemon is shutting down".into()))
    }
}

struct Bootstrap {
    addr: Multiaddr,
    peer: Option<PeerId>,
    redial: Redial,
}

/// The policy state a config is rendered at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ApplyAt {
    heads: Vec<String>,
    regional: Vec<String>,
    regional_missing: u32,
}

/// What the applier was last asked, and what it last finished.
#[derive(Default)]
struct ApplyState {
    /// What the latest request applies (policy heads, and the heads of the
    /// region's scoped policy and how many of its committed changes are
    /// missing), and its input (config, sealed secrets; None: not a member).
    target: Option<(ApplyAt, Option<ApplyInput>)>,
    /// The input of the last successful run.
    done_config: Option<ApplyInput>,
    /// A request is running.
    busy: bool,
    /// What the status reports.
    applied: dcloud_crdt::status::AppliedPolicy,
}

/// The actor.
struct Daemon {
    cfg: Config,
    me: NodeId,
    started: Instant,
    engine: Engine,
    swarm: Swarm<Behaviour>,
    /// The store and what waits for its next flush (group commit).
    dur: Durable,
    /// Connections, dials and addresses.
    net: Mesh,
    metrics: Arc<Metrics>,
    rng: rand::rngs::StdRng,
    queue: VecDeque<Input>,
    last_status: Option<NodeStatus>,
    applier: Applier,
    apply: ApplyState,
    /// Since when heads a freshness statement names have been missing.
    freshness: FreshnessTracker,
    /// The latest freshness verdict.
    freshness_verdict: Verdict,
}

/// The daemon's durable state and its group commit: what was written since
/// the last flush, and the sends, reply and policy event waiting for it.
struct Durable {
    store: Store,
    epoch_file: EpochFile,
    trust_file: TrustFile,
    /// Why the store refuses writes (until it takes them again).
    store_error: Option<String>,
    store_retry_at: Millis,
    /// The verdict on a local publish, from the engine's `Published`.
    publish_reply: Option<oneshot::Sender<Result<PublishView, PublishError>>>,
    persist_failed_in_call: bool,
    /// Written to sled since the last flush.
    dirty: bool,
    /// Of those writes, some were not this node's own status.
    dirty_foreign: bool,
    /// Sends waiting for the flush that makes their changes durable.
    held_sends: Vec<(NodeId, Vec<u8>)>,
    /// A publish verdict waiting for that flush.
    held_reply: Option<(PublishReply, Result<PublishView, PublishError>)>,
    /// The policy changed but is not durable yet: the applier is told after
    /// the flush (see `on_event`).
    policy_change_held: bool,
}

/// The daemon's view of the mesh: who is up, the streams, dials, addresses.
struct Mesh {
    /// Admitted peers with at least one connection (the engine knows them).
    up: HashSet<PeerId>,
    /// The engine streams to admitted peers.
    links: Links,
    bootstrap: Vec<Bootstrap>,
    /// Backoff and budget of dials to members.
    dialer: Dialer,
    /// Dials of members still under way (libp2p refuses a second one).
    dialing: HashMap<PeerId, libp2p::swarm::ConnectionId>,
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    blocked_until: HashMap<PeerId, Option<Millis>>,
    listen_addrs: Vec<Multiaddr>,
    /// This site's region is scoped and it knew no address of another site
    /// of it (warned once, until a link inside the region comes up).
    region_isolated: bool,
}

fn now_ms(started: Instant) -> Millis {
    started.elapsed().as_millis() as Millis
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

fn p2p_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// Read the trust-root chain file.
pub fn read_trust_chain(path: &std::path::Path) -> Result<TrustChain, StartError> {
    let err = |reason: String| StartError::TrustRoot {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let roots = decode_chain(&bytes).map_err(|e| err(format!("does not decode: {e}")))?;
    TrustChain::from_roots(roots).map_err(|e| err(format!("does not verify: {e}")))
}

/// Start the daemon. Returns the handle for the API and a future that runs the
/// actor until `shutdown` resolves (then flushes and returns).
pub async fn start(
    cfg: Config,
) -> Result<
    (
        Handle,
        impl Future<Output = ()> + use<>,
        oneshot::Sender<()>,
    ),
    StartError,
> {
    let key = SecretKey::read_file(&cfg.key_path())?;
    let me = key.public();
    let started = Instant::now();
    let (dur, engine, first, peers) = Durable::open(&cfg, &key)?;
    let (swarm, net, link_rx) = Mesh::open(&cfg, &key, peers)?;
    let metrics = Arc::new(Metrics::new());
    let (applier, apply_rx) = Applier::spawn(cfg.apply.clone(), key.clone());
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE_MAX);
    let mut d = Daemon {
        cfg,
        me,
        started,
        engine,
        swarm,
        dur,
        net,
        metrics: metrics.clone(),
        rng: rand::rngs::StdRng::from_rng(&mut rand::rng()),
        queue: VecDeque::new(),
        last_status: None,
        applier,
        apply: ApplyState::default(),
        freshness: FreshnessTracker::default(),
        freshness_verdict: Verdict {
            fresh: true,
            reason: String::new(),
            code: "",
        },
    };
    d.update_freshness();
    d.metrics.store_ok.set(1);
    d.carry_out(first);
    d.policy_changed();
    d.drain();
    d.commit();
    let (stop_tx, stop_rx) = oneshot::channel();
    let handle = Handle { tx, metrics };
    Ok((handle, d.run(rx, apply_rx, link_rx, stop_rx), stop_tx))
}

impl Durable {
    /// Open the store and the files beside it, raise the trust chain from
    /// them, and restore the engine: a new status epoch above every one this
    /// node used. Also the peer addresses the store remembers.
    #[allow(clippy::type_complexity)]
    fn open(
        cfg: &Config,
        key: &SecretKey,
    ) -> Result<(Durable, Engine, Vec<Output>, Vec<(NodeId, Vec<String>)>), StartError> {
        let me = key.public();
        let mut chain = read_trust_chain(&cfg.trust_root)?;
        let limits = Limits::default();
        let (mut store, loaded) = Store::open(
            &cfg.data_dir.join("store"),
            limits.encoded_change_size_max_bytes(),
        )?;
        if let Some(aside) = &loaded.moved_aside {
            tracing::warn!(moved_to = %aside.display(), "started with an empty store; rebuilding from peers");
        }
        // The root never goes back: the durable trust-chain file (outside the
        // store) raises an older --trust-root file, and must agree with it.
        let mut trust_file = TrustFile::open(&cfg.data_dir.join("trust-chain"))?;
        let given = chain.current().version;
        trust_file.raise_chain(&mut chain)?;
        if chain.current().version > given {
            tracing::info!(
                given,
                held = chain.current().version,
                "the trust-root file is older than the chain this node holds; the newer chain stays in force"
            );
        }
        // A new status epoch at every start, above anything this node ever
        // wrote (the epoch file survives a lost store), so its status never
        // goes back.
        let mut epoch_file = EpochFile::open(&cfg.data_dir.join("status-epoch"))?;
        let unclean = loaded.unclean;
        let (engine, first, restored) = Engine::restore(
            cfg.engine.clone(),
            Stored {
                key: key.clone(),
                chain,
                roots: loaded.roots,
                changes: loaded.changes,
                limits,
                epoch_floor: epoch_file.get(),
                actor_seed: None,
            },
            0,
        )?;
        epoch_file.raise(restored.epoch)?;
        let replica = engine.replica();
        if restored.roots_ignored > 0 {
            tracing::warn!(
                count = restored.roots_ignored,
                "stored trust roots do not extend the chain; ignored"
            );
        }
        trust_file.record(replica.trust())?;
        tracing::info!(
            node = %me,
            stored = restored.changes,
            refused = restored.refused,
            epoch = restored.epoch,
            policy_heads = ?view::hex_heads(&replica.policy_heads()),
            "replica restored from the store"
        );
        if unclean {
            // The last run did not stop cleanly: deletions it deferred to a
            // checkpoint may be lost. Issue them again (old epochs, revoked nodes).
            for node in replica.policy().members.keys() {
                for kind in [OwnedKind::Status, OwnedKind::Summary] {
                    if let Some(epoch) = replica.owned_epoch(node, kind) {
                        store.drop_status_before(node, kind, epoch)?;
                    }
                }
            }
            for node in replica.policy().revoked.keys() {
                store.drop_node(node)?;
            }
        }
        let dur = Durable {
            store,
            epoch_file,
            trust_file,
            store_error: None,
            store_retry_at: 0,
            publish_reply: None,
            persist_failed_in_call: false,
            dirty: false,
            dirty_foreign: false,
            held_sends: Vec::new(),
            held_reply: None,
            policy_change_held: false,
        };
        Ok((dur, engine, first, loaded.peers))
    }
}

impl Mesh {
    /// Build the swarm, start the engine streams, listen, and remember the
    /// stored peer addresses and the bootstrap peers.
    fn open(
        cfg: &Config,
        key: &SecretKey,
        peers: Vec<(NodeId, Vec<String>)>,
    ) -> Result<(Swarm<Behaviour>, Mesh, mpsc::Receiver<LinkEvent>), StartError> {
        let ping_ms = if cfg.engine.membership.enabled {
            net::PING_INTERVAL_MEMBERSHIP_MS
        } else {
            net::PING_INTERVAL_MS
        };
        let mut swarm = net::build_swarm(key, cfg.mdns, ping_ms)?;
        let (links, link_rx) = Links::start(
            swarm.behaviour().streams.new_control(),
            net::FRAME_SIZE_MAX_BYTES,
        )
        .map_err(|e| net::NetError::Transport(e.to_string()))?;
        for addr in &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| StartError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        let mut addrs: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (node, list) in peers {
            if let Some(pid) = net::peer_id(&node) {
                let parsed: Vec<Multiaddr> = list.iter().filter_map(|a| a.parse().ok()).collect();
                addrs.insert(pid, parsed);
            }
        }
        let bootstrap = cfg
            .bootstrap
            .iter()
            .map(|a| Bootstrap {
                addr: a.clone(),
                peer: p2p_of(a),
                redial: Redial::bootstrap(),
            })
            .collect();
        let mesh = Mesh {
            up: HashSet::new(),
            links,
            bootstrap,
            dialer: Dialer::default(),
            dialing: HashMap::new(),
            addrs,
            blocked_until: HashMap::new(),
            listen_addrs: Vec::new(),
            region_isolated: false,
        };
        Ok((swarm, mesh, link_rx))
    }
}

impl Daemon {
    fn now(&self) -> Millis {
        now_ms(self.started)
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut apply_rx: mpsc::Receiver<ApplyResult>,
        mut link_rx: mpsc::Receiver<LinkEvent>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self.engine.poll_timeout();
            let sleep_until = next_timer
                .map(|at| self.started + Duration::from_millis(at))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = &mut stop => break,
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                Some(ev) = link_rx.recv() => self.on_link(ev),
                Some(cmd) = commands.recv() => self.on_command(cmd),
                Some(res) = apply_rx.recv() => self.on_applied(res),
                _ = tokio::time::sleep_until(sleep_until), if next_timer.is_some() => self.fire_timers(),
                _ = tick.tick() => self.on_tick(),
            }
            self.drain();
            // Take whatever else is ready before paying for one flush.
            for _ in 0..READY_BATCH_MAX {
                match futures::FutureExt::now_or_never(self.swarm.select_next_some()) {
                    Some(ev) => {
                        self.on_swarm(ev);
                        self.drain();
                    }
                    None => break,
                }
            }
            for _ in 0..READY_BATCH_MAX {
                match link_rx.try_recv() {
                    Ok(ev) => {
                        self.on_link(ev);
                        self.drain();
                    }
                    Err(_) => break,
                }
            }
            self.commit();
        }
        tracing::info!("shutting down: flushing the store and closing connections");
        if let Err(e) = self.dur.store.checkpoint(true) {
            tracing::error!(error = %e, "final flush failed");
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    /// Group commit: flush what was written, then carry out the sends and
    /// acknowledgements that waited for it. A failed flush drops them.
    fn commit(&mut self) {
        if !self.dur.dirty {
            return;
        }
        self.dur.dirty = false;
        let foreign = std::mem::replace(&mut self.dur.dirty_foreign, false);
        let sends = std::mem::take(&mut self.dur.held_sends);
        let reply = self.dur.held_reply.take();
        let t0 = std::time::Instant::now();
        let flushed = self.dur.store.flush();
        tracing::trace!(
            flush_us = t0.elapsed().as_micros() as u64,
            sends = sends.len(),
            "store flushed"
        );
        match flushed {
            Ok(()) => {
                for (to, bytes) in sends {
                    self.send(to, bytes);
                }
                if let Some((tx, result)) = reply {
                    let _ = tx.send(result);
                }
                // Only if what was written is in the store: a write that
                // failed in this batch (the store refuses writes now) was not
                // flushed; recovery rewrites the replica, then releases it.
                if self.dur.store_error.is_none()
                    && std::mem::take(&mut self.dur.policy_change_held)
                {
                    self.policy_changed();
                }
            }
            Err(e) => {
                self.store_failed(e);
                if !foreign {
                    // Only this node's own status: it may go out unstored (see
                    // `carry_out`), so the fleet learns the store is failing.
                    for (to, bytes) in sends {
                        self.send(to, bytes);
                    }
                }
                if let Some((tx, _)) = reply {
                    let _ = tx.send(Err(PublishError::NotDurable(
                        self.dur.store_error.clone().unwrap_or_default(),
                    )));
                }
                self.drain();
            }
        }
    }

    /// Feed queued inputs to the engine until none are left.
    fn drain(&mut self) {
        let mut budget = 10_000;
        while let Some(input) = self.queue.pop_front() {
            let now = self.now();
            let out = self.engine.handle(input, now);
            self.carry_out(out);
            budget -= 1;
            if budget == 0 {
                tracing::error!("engine input loop did not settle; dropping the rest");
                self.queue.clear();
            }
        }
    }

    fn feed(&mut self, input: Input) {
        self.queue.push_back(input);
        self.drain();
    }

    fn fire_timers(&mut self) {
        let now = self.now();
        if self.engine.poll_timeout().is_some_and(|at| at <= now) {
            let rounds = self.engine.stats().anti_entropy_rounds;
            let out = self.engine.handle_timeout(now, &mut self.rng);
            self.metrics.anti_entropy_rounds.inc_by(
                self.engine
                    .stats()
                    .anti_entropy_rounds
                    .saturating_sub(rounds),
            );
            self.carry_out(out);
        }
    }

    fn carry_out(&mut self, outputs: Vec<Output>) {
        self.dur.persist_failed_in_call = false;
        for out in outputs {
            match out {
                Output::Persist(p) => {
                    // Only this node's own status may still go out unstored: its
                    // epoch restarts above it after a restart, so nothing that
                    // was sent can be contradicted later.
                    let own_only = matches!(&p, Persist::Changes(cs) if cs.iter().all(
                        |c| matches!(c.doc, DocId::Status { node, .. } if node == self.me)));
                    self.dur.dirty = true;
                    self.dur.dirty_foreign |= !own_only;
                    if let Err(e) = self.persist(p) {
                        let tolerable = own_only && matches!(e, StoreError::Write(_));
                        self.store_failed(e);
                        if !tolerable {
                            self.dur.persist_failed_in_call = true;
                        }
                    }
                }
                // After a failed write, the sends of this call are dropped.
                Output::Send { .. } if self.dur.persist_failed_in_call => {}
                Output::Send { to, bytes } if self.dur.dirty => {
                    self.dur.held_sends.push((to, bytes))
                }
                Output::Send { to, bytes } => self.send(to, bytes),
                Output::Disconnect { peer, reason } => self.disconnect(peer, reason),
                Output::Event(ev) => self.on_event(ev),
            }
        }
    }

    /// Carry out the engine's [`Output::Disconnect`]: counted once, by reason.
    fn disconnect(&mut self, peer: NodeId, reason: DisconnectReason) {
        let Some(pid) = net::peer_id(&peer) else {
            return;
        };
        self.metrics.disconnected(reason.label());
        match &reason {
            DisconnectReason::Revoked => {
                tracing::info!(peer = %peer.short(), "peer is revoked: cutting it off for good");
                self.block(pid, None);
            }
            DisconnectReason::Misbehaved { offence } => {
                tracing::warn!(peer = %peer.short(), %offence, "disconnecting and blocking a misbehaving peer");
                let until = self.now() + MISBEHAVIOUR_BLOCK_MS;
                self.block(pid, Some(until));
            }
            DisconnectReason::NotAdmitted => {
                tracing::info!(peer = %peer.short(), "disconnecting a peer the policy does not admit");
                self.close_peer(pid);
            }
        }
    }

    fn persist(&mut self, p: Persist) -> Result<(), StoreError> {
        match p {
            Persist::Changes(changes) => {
                // The epoch file first: it must never be behind what was written.
                let own_max = changes
                    .iter()
                    .filter_map(|c| match c.doc {
                        DocId::Status { node, epoch } if node == self.me => Some(epoch),
                        _ => None,
                    })
                    .max();
                if let Some(e) = own_max {
                    self.dur.epoch_file.raise(e)?;
                }
                self.dur.store.put_changes(&changes)
            }
            Persist::Root(root) => {
                // The durable chain file first: it must never be behind.
                self.dur.trust_file.record(self.engine.replica().trust())?;
                self.dur.store.put_root(&root)
            }
            Persist::DropStatusBefore { node, kind, epoch } => {
                self.dur.store.drop_status_before(&node, kind, epoch)
            }
            Persist::DropNode { node } => self.dur.store.drop_node(&node),
            Persist::DropStatus { node } => self.dur.store.drop_status(&node),
            Persist::DropDoc { doc } => self.dur.store.drop_doc(&doc),
        }
    }

    fn store_failed(&mut self, e: StoreError) {
        if self.dur.store_error.is_none() {
            tracing::error!(error = %e, "the store cannot write: not accepting new changes until it can (reads keep working)");
        }
        self.dur.store_error = Some(e.to_string());
        self.metrics.store_ok.set(0);
        self.refresh_status();
    }

    fn try_recover_store(&mut self, now: Millis) {
        if self.dur.store_error.is_none() || now < self.dur.store_retry_at {
            return;
        }
        self.dur.store_retry_at = now + STORE_RETRY_MS;
        // sled refuses every write after an I/O error until it is reopened.
        let result = self.dur.store.probe().or_else(|_| {
            self.dur.store.reopen()?;
            self.dur.store.probe()
        });
        let result = result.and_then(|()| {
            let all: Vec<_> = self.engine.replica().all_changes().cloned().collect();
            for chunk in all.chunks(512) {
                self.dur.store.put_changes(chunk)?;
            }
            for root in self.engine.replica().trust().roots() {
                self.dur.store.put_root(root)?;
            }
            // Straight into sled: the whole replica need not pass the log.
            self.dur.store.checkpoint(true)
        });
        match result {
            Ok(()) => {
                tracing::info!("the store takes writes again; accepting changes");
                self.dur.store_error = None;
                self.metrics.store_ok.set(1);
                self.refresh_status();
                if std::mem::take(&mut self.dur.policy_change_held) {
                    self.policy_changed();
                }
            }
            Err(e) => self.dur.store_error = Some(e.to_string()),
        }
    }

    fn send(&mut self, to: NodeId, bytes: Vec<u8>) {
        let Some(pid) = net::peer_id(&to) else {
            return;
        };
        if !self.net.up.contains(&pid) {
            return;
        }
        let len = bytes.len() as u64;
        match self.net.links.send(pid, bytes) {
            Ok(()) => {
                self.metrics.messages_out.inc();
                self.metrics.bytes_out.inc_by(len);
            }
            Err(e @ (SendError::Reopening | SendError::Full)) => {
                tracing::debug!(peer = %to.short(), error = %e, "dropping a message (anti-entropy repairs it)");
                self.metrics.messages_dropped.inc();
            }
            Err(SendError::NotUp) => {}
            Err(e @ SendError::TooLarge(_)) => {
                tracing::error!(peer = %to.short(), error = %e, "message not sent");
                self.metrics.messages_dropped.inc();
            }
        }
    }

    fn block(&mut self, pid: PeerId, until: Option<Millis>) {
        self.net.blocked_until.insert(pid, until);
        self.swarm.behaviour_mut().blocked.block_peer(pid);
        // Nothing more to it, even before its connections are reported closed.
        self.net.links.close(&pid);
    }

    /// A connected, admitted peer becomes known to the engine (once).
    fn peer_up(&mut self, pid: PeerId, node: NodeId) {
        if self.net.up.insert(pid) {
            tracing::debug!(peer = %pid, "peer up");
            // The network may have healed: try the peers that are backing
            // off now rather than at the end of their backoff.
            self.net.dialer.network_changed();
            for b in &mut self.net.bootstrap {
                b.redial.kick();
            }
            self.net.links.open(pid);
            self.metrics.peers.set(self.net.up.len() as i64);
            self.feed(Input::PeerUp { peer: node });
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Published {
                root_errors,
                reports,
            } => {
                let reply = self.dur.publish_reply.take();
                let result = if self.dur.persist_failed_in_call {
                    Err(PublishError::NotDurable(
                        self.dur.store_error.clone().unwrap_or_default(),
                    ))
                } else {
                    Ok(publish_view(root_errors, &reports))
                };
                for r in &reports {
                    match &r.outcome {
                        Outcome::Applied => {
                            self.metrics.changes_applied.inc();
                        }
                        Outcome::Rejected(rej) => self.metrics.rejected(rej.kind().label(), 1),
                        _ => {}
                    }
                }
                if let Some(tx) = reply {
                    if self.dur.dirty && result.is_ok() {
                        self.dur.held_reply = Some((tx, result));
                    } else {
                        let _ = tx.send(result);
                    }
                }
            }
            // The applier acts on the policy only once it is durable (the
            // engine's contract): held until the group commit's flush, or
            // until a failed store takes writes again.
            Event::PolicyChanged if self.dur.dirty || self.dur.store_error.is_some() => {
                self.dur.policy_change_held = true;
            }
            Event::PolicyChanged => self.policy_changed(),
            Event::PeerMisbehaved { peer, reason } => {
                tracing::warn!(peer = %peer.short(), %reason, "peer misbehaved");
            }
            Event::Member { node, state } => {
                self.metrics.member_event(state.label());
                let (_, suspect, down) = self.engine.membership().counts();
                self.metrics.members_suspect.set(suspect as i64);
                self.metrics.members_down.set(down as i64);
                match state {
                    MemberState::Alive => {
                        tracing::info!(node = %node.short(), "member alive again")
                    }
                    MemberState::Suspect => {
                        tracing::info!(node = %node.short(), "member suspected")
                    }
                    MemberState::Down => tracing::warn!(node = %node.short(), "member down"),
                }
            }
            Event::PeerUnresponsive { peer } => {
                // The engine's probes went unanswered: the connection is dead
                // (a partition, a peer gone without a FIN) or too slow to
                // use; closing it lets the dialer try again.
                if let Some(pid) = net::peer_id(&peer) {
                    tracing::info!(peer = %peer.short(), "closing a connection whose peer stopped answering probes");
                    self.metrics.disconnected("unresponsive");
                    self.close_peer(pid);
                }
            }
        }
    }

    /// A bundle holding a region's scoped policy that this site may not
    /// hold is refused whole, before any of it is taken: a site outside the
    /// region would take the commitment and drop the change, leaving the
    /// region's sites owed a change nobody of theirs holds.
    fn outside_region(&self, bundle: &Bundle) -> Option<PublishError> {
        let policy = self.engine.replica().policy();
        // The bundle's own commitments name regions the site may not know yet.
        let mut names: Vec<String> = policy.regional.keys().cloned().collect();
        for c in bundle.changes.iter().filter(|c| c.doc == DocId::Policy) {
            if let Ok(ch) = dcloud_crdt::change::parse_change(&c.change) {
                for op in ch.decode().operations {
                    if let automerge::legacy::Key::Map(k) = op.key
                        && let Some(rest) = k.strip_prefix(dcloud_crdt::policy::REGIONAL_KEY_PREFIX)
                        && let Some((r, _)) = rest.split_once('/')
                    {
                        names.push(r.to_string());
                    }
                }
            }
        }
        for c in &bundle.changes {
            let DocId::Region { region } = c.doc else {
                continue;
            };
            if policy.may_hold_region(&self.me, &region) {
                continue;
            }
            let name = names
                .iter()
                .find(|n| dcloud_crdt::RegionId::of(n) == region)
                .cloned()
                .unwrap_or_else(|| format!("with id {}", region.short()));
            let here = match policy.members.get(&self.me) {
                Some(m) if policy.is_active_member(&self.me) => format!("in region {}", m.region),
                _ => "not an active member".to_string(),
            };
            return Some(PublishError::OutsideRegion { region: name, here });
        }
        None
    }

    /// Whether the engine admits a peer (its rule; see `engine` docs).
    fn admitted(&self, node: &NodeId) -> Result<(), DisconnectReason> {
        if *node == self.me {
            return Err(DisconnectReason::NotAdmitted);
        }
        self.engine.admits(node)
    }

    fn close_peer(&mut self, pid: PeerId) {
        self.net.links.close(&pid);
        let _ = self.swarm.disconnect_peer_id(pid);
    }

    /// The policy changed and is durable: re-render. (The engine has already
    /// disconnected the peers it no longer admits.)
    fn policy_changed(&mut self) {
        // Re-render this node's effective config when it changed.
        let replica = self.engine.replica();
        let region = replica
            .policy()
            .members
            .get(&self.me)
            .map(|m| m.region.clone())
            .unwrap_or_default();
        let at = ApplyAt {
            heads: view::hex_heads(&replica.policy_heads()),
            regional: view::hex_heads(&replica.heads(&DocId::Region {
                region: dcloud_crdt::RegionId::of(&region),
            })),
            regional_missing: replica.regional_missing(&region) as u32,
        };
        let config = ApplyInput::of(replica, &self.me);
        let same_target = self
            .apply
            .target
            .as_ref()
            .is_some_and(|(a, c)| *a == at && *c == config);
        if !same_target {
            self.apply.target = Some((at.clone(), config.clone()));
            match &config {
                None => {
                    self.apply.applied = Default::default();
                    self.apply.done_config = None;
                }
                Some(c)
                    if !self.apply.busy
                        && self.apply.done_config.as_ref() == Some(c)
                        && self.apply.applied.error.is_none() =>
                {
                    // Same config under new heads: nothing to run again.
                    self.apply.applied.heads = at.heads;
                    self.apply.applied.regional = at.regional;
                    self.apply.applied.regional_missing = at.regional_missing;
                }
                Some(c) => {
                    self.apply.busy = true;
                    self.applier.submit(ApplyRequest {
                        heads: at.heads,
                        regional: at.regional,
                        input: c.clone(),
                    });
                }
            }
        }
        self.refresh_status();
    }

    fn on_applied(&mut self, res: ApplyResult) {
        let target = self.apply.target.clone();
        let Some((at, Some(config))) = target else {
            self.apply.busy = false;
            return;
        };
        if res.heads != at.heads || res.regional != at.regional {
            // A newer request is queued behind this one (or supersedes it).
            if let Some(e) = &res.error {
                tracing::warn!(error = %e, "applying an older policy failed");
            }
            return;
        }
        self.apply.busy = false;
        match &res.error {
            None => {
                tracing::info!(heads = ?res.heads, exit_code = ?res.exit_code, "policy applied");
                self.metrics.applied("ok");
                self.apply.done_config = Some(config);
            }
            Some(e) => {
                tracing::error!(error = %e, exit_code = ?res.exit_code, "applying policy failed");
                self.metrics.applied("error");
                self.apply.done_config = None;
            }
        }
        self.apply.applied = dcloud_crdt::status::AppliedPolicy {
            heads: res.heads,
            error: res.error,
            exit_code: res.exit_code,
            regional: res.regional,
            regional_missing: at.regional_missing,
        };
        self.refresh_status();
    }

    fn desired_status(&self) -> NodeStatus {
        let replica = self.engine.replica();
        let member = replica.policy().members.get(&self.me);
        let hb = replica.status(&self.me).map(|(s, _)| s.hb).unwrap_or(0);
        let mut health = BTreeMap::new();
        health.insert(
            "store".to_string(),
            HealthCheck {
                ok: self.dur.store_error.is_none(),
                detail: self.dur.store_error.clone().unwrap_or_default(),
            },
        );
        health.insert(
            "apply".to_string(),
            HealthCheck {
                ok: self.apply.applied.error.is_none(),
                detail: self.apply.applied.error.clone().unwrap_or_default(),
            },
        );
        // Only fleets with timestamp keys report it: without them the status
        // is what it always was.
        if !replica.trust().current().timestamp_keys.is_empty() {
            let v = &self.freshness_verdict;
            health.insert(
                "policy_fresh".to_string(),
                HealthCheck {
                    ok: v.fresh,
                    detail: if v.fresh {
                        String::new()
                    } else {
                        v.code.to_string()
                    },
                },
            );
        }
        let mut addrs: Vec<String> = self
            .net
            .listen_addrs
            .iter()
            .take(ADDRS_PER_PEER_MAX)
            .map(|a| a.to_string())
            .collect();
        addrs.sort();
        NodeStatus {
            name: member.map(|m| m.name.clone()).unwrap_or_default(),
            region: member.map(|m| m.region.clone()).unwrap_or_default(),
            addrs,
            version: env!("CARGO_PKG_VERSION").to_string(),
            health,
            applied: self.apply.applied.clone(),
            hb,
            healthy: None,
        }
    }

    /// Write this node's status if anything but the heartbeat changed.
    fn refresh_status(&mut self) {
        let want = self.desired_status();
        let same = self.last_status.as_ref().is_some_and(|s| {
            let mut s = s.clone();
            s.hb = want.hb;
            s == want
        });
        if !same {
            self.last_status = Some(want.clone());
            self.queue.push_back(Input::SetStatus(want));
        }
    }

    fn on_command(&mut self, cmd: Command) {
        if self.update_freshness() {
            self.refresh_status();
        }
        let now = self.now();
        let stale_after_ms = self.cfg.engine.stale_after_ms();
        let engine = &self.engine;
        let last_heard = |n: &NodeId| engine.last_heard(n);
        let liveness = |n: &NodeId| engine.liveness(n);
        let ctx = FleetCtx {
            me: self.me,
            now_ms: now,
            last_heard: &last_heard,
            liveness: &liveness,
            membership: self.cfg.engine.membership.enabled,
            heard_within_ms: self.cfg.engine.heard_within_ms(),
            stale_after_ms,
        };
        let replica = engine.replica();
        match cmd {
            Command::Node(tx) => {
                let policy = replica.policy();
                let member = policy.members.get(&self.me);
                let last_any = replica
                    .statuses()
                    .filter(|(n, _, _)| **n != self.me)
                    .filter_map(|(n, _, _)| engine.last_heard(n))
                    .max();
                let last_heard_any_ms_ago = last_any.map(|t| now.saturating_sub(t));
                let mut peers: Vec<String> = self
                    .net
                    .up
                    .iter()
                    .filter_map(net::node_id)
                    .map(|n| n.to_hex())
                    .collect();
                peers.sort();
                let fleet_size = policy.members.len();
                let _ = tx.send(view::NodeView {
                    id: self.me.to_hex(),
                    name: member.map(|m| m.name.clone()).unwrap_or_default(),
                    region: member.map(|m| m.region.clone()).unwrap_or_default(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    enrolled: member.is_some(),
                    revoked: policy.revoked.contains_key(&self.me),
                    listen_addrs: self
                        .net
                        .listen_addrs
                        .iter()
                        .map(|a| a.to_string())
                        .collect(),
                    peers,
                    policy_heads: view::hex_heads(&replica.policy_heads()),
                    trust_root_version: replica.trust().current().version,
                    status_epoch: replica.status(&self.me).map(|(_, e)| e).unwrap_or(0),
                    applied: self.apply.applied.clone(),
                    store: StoreView {
                        ok: self.dur.store_error.is_none(),
                        error: self.dur.store_error.clone(),
                    },
                    last_heard_any_ms_ago,
                    stale: fleet_size > 1
                        && last_heard_any_ms_ago.is_none_or(|a| a > stale_after_ms),
                    uptime_ms: now,
                    policy_fresh: self.freshness_verdict.fresh,
                    policy_fresh_reason: self.freshness_verdict.reason.clone(),
                });
            }
            Command::Fleet(tx) => {
                let _ = tx.send(view::fleet(replica, &ctx));
            }
            Command::NodeRow(n, tx) => {
                let known = replica.policy().members.contains_key(&n)
                    || view::reported(replica, &n).is_some();
                let _ = tx.send(known.then(|| view::row(replica, &ctx, &n)));
            }
            Command::Policy(tx) => {
                let _ = tx.send(view::policy(replica));
            }
            Command::Snapshot(tx) => {
                let bundle = Bundle {
                    roots: replica.trust().roots().to_vec(),
                    changes: replica.authority_changes(),
                };
                let _ = tx.send(bundle.encode());
            }
            Command::Config(tx) => {
                let _ = tx.send(view::ConfigView {
                    id: self.me.to_hex(),
                    heads: view::hex_heads(&replica.policy_heads()),
                    config: replica.effective_config(&self.me),
                    applied: self.apply.applied.clone(),
                });
            }
            Command::Rollout(heads, tx) => {
                let heads = heads.unwrap_or_else(|| replica.policy_heads());
                let _ = tx.send(view::rollout(replica, &heads, &liveness));
            }
            Command::Publish(bundle, tx) => {
                if let Some(e) = &self.dur.store_error {
                    let _ = tx.send(Err(PublishError::Unavailable(e.clone())));
                    return;
                }
                if let Some(e) = self.outside_region(&bundle) {
                    tracing::warn!(error = %e, "refused a bundle from the local API");
                    let _ = tx.send(Err(e));
                    return;
                }
                let n = bundle.changes.len();
                tracing::info!(
                    changes = n,
                    roots = bundle.roots.len(),
                    "publishing a bundle from the local API"
                );
                self.dur.publish_reply = Some(tx);
                self.feed(Input::Publish {
                    roots: bundle.roots,
                    changes: bundle.changes,
                });
                if let Some(tx) = self.dur.publish_reply.take() {
                    let _ = tx.send(Err(PublishError::Gone("the engine gave no verdict".into())));
                }
            }
            Command::Freshness(bytes, tx) => {
                let st = match SignedFreshness::decode(&bytes) {
                    Ok(st) => st,
                    Err(e) => {
                        let _ = tx.send(Err(format!("freshness statement does not decode: {e}")));
                        return;
                    }
                };
                if let Err(e) = st.verify(replica.trust()) {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
                let current = replica.trust().current().version;
                if st.statement.root_version < current {
                    let _ = tx.send(Err(format!(
                        "freshness statement is under trust root v{}, older than v{current} in force; sign it under v{current}",
                        st.statement.root_version
                    )));
                    return;
                }
                tracing::info!(
                    issued_ms = st.statement.issued_ms,
                    expires_ms = st.statement.expires_ms,
                    "freshness statement from the local API"
                );
                let already = self.engine.freshness() == Some(&st);
                self.feed(Input::Freshness { statement: bytes });
                let kept = !already && self.engine.freshness() == Some(&st);
                let newest = self.engine.freshness().map(|f| f.statement.issued_ms);
                if self.update_freshness() {
                    self.refresh_status();
                }
                let _ = tx.send(Ok(view::FreshnessView {
                    kept,
                    message: if kept {
                        "kept; forwarded to peers".into()
                    } else {
                        format!(
                            "valid, but not newer than the statement held (issued_ms {})",
                            newest.unwrap_or(0)
                        )
                    },
                    policy_fresh: self.freshness_verdict.fresh,
                    policy_fresh_reason: self.freshness_verdict.reason.clone(),
                }));
            }
        }
    }

    fn on_tick(&mut self) {
        let now = self.now();
        // Lift expired temporary blocks.
        let expired: Vec<PeerId> = self
            .net
            .blocked_until
            .iter()
            .filter(|(_, until)| until.is_some_and(|u| u <= now))
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            self.net.blocked_until.remove(&p);
            self.swarm.behaviour_mut().blocked.unblock_peer(p);
        }
        self.try_recover_store(now);
        if self.dur.store_error.is_none()
            && let Err(e) = self.dur.store.checkpoint(false)
        {
            self.store_failed(e);
        }
        self.dial(now);
        let stats = self.engine.replica().stats();
        self.metrics.replica_changes.set(stats.changes as i64);
        self.metrics.replica_bytes.set(stats.change_bytes as i64);
        self.metrics
            .replica_status_docs
            .set(stats.status_docs as i64);
        self.metrics.peers.set(self.net.up.len() as i64);
        let es = self.engine.stats();
        self.metrics.scope_dropped.set(es.scope_dropped as i64);
        self.metrics.scope_withheld.set(es.scope_withheld as i64);
        if self.update_freshness() {
            self.refresh_status();
        }
    }

    /// Recompute the freshness verdict (wall clock for expiry, this daemon's
    /// monotonic clock for the grace period and lag). True when it changed
    /// (fresh or not, or its code).
    fn update_freshness(&mut self) -> bool {
        let now = self.now();
        let replica = self.engine.replica();
        let v = self.freshness.verdict(
            replica.trust().current(),
            self.engine.freshness(),
            |h| replica.get(&DocId::Policy, &ChangeHash(*h)).is_some(),
            now,
            freshness::unix_ms(),
            &self.cfg.freshness,
        );
        let changed =
            (v.fresh, v.code) != (self.freshness_verdict.fresh, self.freshness_verdict.code);
        if changed && !v.fresh {
            tracing::warn!(reason = %v.reason, "policy is not known to be fresh");
        } else if changed {
            tracing::info!(reason = %v.reason, "policy freshness");
        }
        self.metrics.policy_fresh.set(i64::from(v.fresh));
        self.freshness_verdict = v;
        changed
    }

    fn dial(&mut self, now: Millis) {
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        for i in 0..self.net.bootstrap.len() {
            let b = &self.net.bootstrap[i];
            if b.peer
                .is_some_and(|p| connected.contains(&p) || self.net.blocked_until.contains_key(&p))
            {
                continue;
            }
            if !b.redial.due(now) {
                continue;
            }
            let opts = match b.peer {
                Some(p) => DialOpts::peer_id(p)
                    .addresses(vec![without_p2p(&b.addr)])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .allocate_new_port()
                    .build(),
                None => DialOpts::unknown_peer_id()
                    .address(b.addr.clone())
                    .allocate_new_port()
                    .build(),
            };
            let addr = b.addr.clone();
            self.net.bootstrap[i].redial.dialed(now, &mut self.rng);
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%addr, error = %e, "bootstrap dial refused");
            }
        }
        // Keep up to peers_target admitted peers, dialing members we know
        // addresses of (bounded and rate-limited: see `dial.rs`).
        let target = self.cfg.peers_target;
        let replica = self.engine.replica();
        let policy = replica.policy();
        // A region whose status is scoped to it must stay connected inside
        // itself (its status travels only over links between its members):
        // at least half of the links are kept to members of the region.
        let my_region = policy.status_scope(&self.me).map(str::to_string);
        let in_region = |n: &NodeId| {
            my_region.is_some() && policy.members.get(n).map(|m| &m.region) == my_region.as_ref()
        };
        let region_min = if my_region.is_some() {
            target.div_ceil(2)
        } else {
            0
        };
        let region_up = self
            .net
            .up
            .iter()
            .filter_map(net::node_id)
            .filter(|n| in_region(n))
            .count();
        self.metrics.scope_region_peers.set(region_up as i64);
        if region_up > 0 {
            self.net.region_isolated = false;
        }
        let want_region = region_min.saturating_sub(region_up);
        if self.net.up.len() >= target && want_region == 0 {
            return;
        }
        let mut members: Vec<(PeerId, &NodeId)> = Vec::new();
        for (n, _) in policy.members.iter() {
            if *n == self.me || !policy.is_active_member(n) {
                continue;
            }
            let Some(pid) = net::peer_id(n) else { continue };
            if connected.contains(&pid)
                || self.net.blocked_until.contains_key(&pid)
                || self.net.dialing.contains_key(&pid)
            {
                continue;
            }
            members.push((pid, n));
        }
        let no_addrs: Vec<Multiaddr> = Vec::new();
        let no_claims: Vec<String> = Vec::new();
        let candidate = |(pid, n): &(PeerId, &NodeId)| Candidate {
            peer: *pid,
            known: self.net.addrs.get(pid).unwrap_or(&no_addrs),
            claimed: replica
                .status(n)
                .map(|(s, _)| &s.addrs)
                .unwrap_or(&no_claims),
        };
        // Members of this node's scoped region first, then anyone.
        let (ours, others): (Vec<_>, Vec<_>) = members.iter().partition(|(_, n)| in_region(n));
        // The addresses of a scoped region's sites travel only in their
        // status, which only the region's sites hold: a site that reached
        // none of them cannot learn where they are from anyone else.
        if region_up == 0
            && !ours.is_empty()
            && !self.net.region_isolated
            && ours.iter().all(|c| {
                let c = candidate(c);
                c.known.is_empty() && c.claimed.is_empty()
            })
        {
            self.net.region_isolated = true;
            tracing::warn!(
                region = my_region.as_deref().unwrap_or_default(),
                "this site's region is scoped and it knows no address of another site of its region (their addresses travel only inside the region): give it one of them as --bootstrap, or enable mDNS"
            );
        }
        let mut dials = Vec::new();
        let mut first =
            self.net
                .dialer
                .plan(now, ours.iter().map(&candidate), want_region, &mut self.rng);
        let want = target
            .saturating_sub(self.net.up.len())
            .saturating_sub(first.dials.len());
        let dialled: HashSet<PeerId> = first.dials.iter().map(|d| d.peer).collect();
        let rest = ours
            .iter()
            .chain(others.iter())
            .filter(|(pid, _)| !dialled.contains(pid));
        let round = self
            .net
            .dialer
            .plan(now, rest.map(candidate), want, &mut self.rng);
        dials.append(&mut first.dials);
        for why in first.ignored.iter().chain(&round.ignored) {
            self.metrics.dial_addr_ignored(why.label());
        }
        self.metrics
            .dials_deferred
            .inc_by((first.deferred + round.deferred) as u64);
        dials.extend(round.dials);
        for d in dials {
            self.metrics.dials.inc();
            let opts = DialOpts::peer_id(d.peer)
                .addresses(d.addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                // A fresh source port: reusing the listen port would give a
                // restarted node the 4-tuple of its old connection, still in
                // TIME_WAIT, and every redial would fail with EADDRINUSE.
                .allocate_new_port()
                .build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.net.dialing.insert(d.peer, id);
                }
                Err(e) => tracing::debug!(peer = %d.peer, error = %e, "dial refused"),
            }
        }
    }

    fn dial_ended(&mut self, peer: Option<PeerId>, id: libp2p::swarm::ConnectionId) {
        if let Some(p) = peer
            && self.net.dialing.get(&p) == Some(&id)
        {
            self.net.dialing.remove(&p);
        }
    }

    /// Remember an address of `pid`: `reached` when this node connected to
    /// it there (kept first), else a claim (identify, mDNS), kept only when
    /// well-formed and while there is room.
    fn remember_addr(&mut self, pid: PeerId, addr: Multiaddr, reached: bool) {
        let addr = match crate::dial::check_addr(&addr, &pid) {
            Ok(a) => a,
            Err(why) => {
                self.metrics.dial_addr_ignored(why.label());
                return;
            }
        };
        let list = self.net.addrs.entry(pid).or_default();
        match list.iter().position(|a| *a == addr) {
            Some(0) => return,
            Some(i) if reached => {
                list.remove(i);
                list.insert(0, addr);
            }
            Some(_) => return,
            None if reached => {
                list.insert(0, addr);
                list.truncate(ADDRS_PER_PEER_MAX);
            }
            None if list.len() < ADDRS_PER_PEER_MAX => list.push(addr),
            None => {
                self.metrics
                    .dial_addr_ignored(crate::dial::Ignored::OverLimit.label());
                return;
            }
        }
        let strings: Vec<String> = list.iter().map(|a| a.to_string()).collect();
        if let Some(n) = net::node_id(&pid) {
            let _ = self.dur.store.put_peer(&n, &strings);
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if !self.net.listen_addrs.contains(&address) {
                    self.net.listen_addrs.push(address);
                }
                self.refresh_status();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.net.listen_addrs.retain(|a| *a != address);
                self.refresh_status();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.dial_ended(Some(peer_id), connection_id);
                let node = net::node_id(&peer_id);
                let Some(node) = node else {
                    self.metrics
                        .disconnected(DisconnectReason::NotAdmitted.label());
                    self.swarm.close_connection(connection_id);
                    return;
                };
                if let Err(reason) = self.admitted(&node) {
                    // Counted, logged and carried out as the engine's own
                    // disconnect would be (a revoked peer is kept away).
                    self.swarm.close_connection(connection_id);
                    self.disconnect(node, reason);
                    return;
                }
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    let plain = without_p2p(address);
                    for b in &mut self.net.bootstrap {
                        if without_p2p(&b.addr) == plain {
                            b.peer = Some(peer_id);
                        }
                    }
                    self.remember_addr(peer_id, address.clone(), true);
                }
                self.peer_up(peer_id, node);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } if num_established == 0 && self.net.up.remove(&peer_id) => {
                tracing::debug!(peer = %peer_id, "peer down");
                self.metrics.peers.set(self.net.up.len() as i64);
                self.net.links.close(&peer_id);
                if let Some(n) = net::node_id(&peer_id) {
                    self.feed(Input::PeerDown { peer: n });
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if self.net.up.contains(&peer_id) => {
                for a in info.listen_addrs.into_iter().take(ADDRS_PER_PEER_MAX) {
                    self.remember_addr(peer_id, a, false);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (pid, addr) in list {
                    self.remember_addr(pid, addr, false);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            })) => {
                // libp2p reports only the second failure in a row: the
                // connection is dead (a partition, a peer gone without a
                // FIN) or too slow to use. TCP would keep it "up" for many
                // minutes, and while it is up nobody dials the peer again.
                tracing::info!(%peer, %error, "closing a connection that stopped answering pings");
                self.metrics.disconnected("unresponsive");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
                self.dial_ended(peer_id, connection_id);
            }
            _ => {}
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        let (peer, request) = match ev {
            LinkEvent::Frame { peer, bytes, .. } => (peer, bytes),
            LinkEvent::Oversized { peer, len } => {
                tracing::warn!(%peer, len, max = net::FRAME_SIZE_MAX_BYTES,
                    "peer sent an oversized frame; disconnecting and blocking it");
                self.metrics.disconnected("bad_frame");
                let until = self.now() + MISBEHAVIOUR_BLOCK_MS;
                self.block(peer, Some(until));
                return;
            }
        };
        if self.net.blocked_until.contains_key(&peer) {
            return;
        }
        if !self.net.up.contains(&peer) {
            // Its stream can be handed over before the swarm reports the
            // connection: admit it now rather than drop its first messages.
            match net::node_id(&peer) {
                Some(n) if self.swarm.is_connected(&peer) && self.admitted(&n).is_ok() => {
                    self.peer_up(peer, n);
                }
                _ => return,
            }
        }
        // The peer talks to us: it admitted us; reset its redial backoff.
        self.net.dialer.reset(&peer);
        for b in &mut self.net.bootstrap {
            if b.peer == Some(peer) {
                b.redial.reset();
            }
        }
        self.metrics.messages_in.inc();
        self.metrics.bytes_in.inc_by(request.len() as u64);
        if self.dur.store_error.is_some() {
            // Not accepting changes: the peer's anti-entropy retries later.
            return;
        }
        let Some(from) = net::node_id(&peer) else {
            return;
        };
        tracing::trace!(peer = %from.short(), bytes = request.len(), "engine message");
        let before = self.engine.stats();
        self.feed(Input::Message {
            from,
            bytes: request,
        });
        let after = self.engine.stats();
        self.metrics
            .changes_applied
            .inc_by(after.changes_applied.saturating_sub(before.changes_applied));
        let received = (after.changes_applied - before.changes_applied.min(after.changes_applied))
            + after
                .duplicates_received
                .saturating_sub(before.duplicates_received)
            + after.stale_received.saturating_sub(before.stale_received)
            + after.changes_pending.saturating_sub(before.changes_pending);
        let mut rejected = 0;
        for (k, v) in &after.rejected {
            let d = v.saturating_sub(before.rejected.get(k).copied().unwrap_or(0));
            if d > 0 {
                rejected += d;
                self.metrics.rejected(k.label(), d);
            }
        }
        self.metrics.changes_received.inc_by(received + rejected);
        self.metrics.rumours_verified.inc_by(
            after
                .rumours_verified
                .saturating_sub(before.rumours_verified),
        );
    }
}

fn publish_view(root_errors: Vec<String>, reports_in: &[dcloud_crdt::Report]) -> PublishView {
    let mut error = root_errors.first().cloned();
    let reports: Vec<ReportView> = reports_in
        .iter()
        .map(|r| {
            let hash = r.hash.map(|h| hex::encode(h.0));
            let (outcome, reason) = match &r.outcome {
                Outcome::Applied => ("applied", None),
                Outcome::Duplicate => ("duplicate", None),
                Outcome::Pending => ("pending", None),
                Outcome::Stale => ("stale", None),
                Outcome::Rejected(rej) => ("rejected", Some(rej.to_string())),
            };
            if let (None, Some(why)) = (&error, &reason) {
                error = Some(format!(
                    "change {} of {} rejected: {why}",
                    hash.as_deref().map(|h| &h[..8]).unwrap_or("(unparsed)"),
                    r.doc
                ));
            }
            ReportView {
                doc: r.doc.to_string(),
                hash,
                outcome: outcome.to_string(),
                reason,
            }
        })
        .collect();
    let malformed = reports_in.iter().any(|r| {
        matches!(
            r.outcome,
            Outcome::Rejected(
                Rejection::Malformed(_)
                    | Rejection::TooLarge { .. }
                    | Rejection::SignatureCount { .. }
            )
        )
    });
    PublishView {
        accepted: error.is_none(),
        error,
        root_errors,
        reports,
        malformed,
    }
}
