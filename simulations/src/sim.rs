//! The simulator proper: a virtual-time event queue driving real engines.
//!
//! One seeded RNG decides everything (link latencies, loss, the overlay, the
//! engines' choices), events are ordered by (time, insertion sequence), and no
//! hash-ordered iteration reaches the outputs, so a seed replays a run exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use dcloud_crdt::change::actor_with_nonce;
use dcloud_crdt::hostile;
use dcloud_crdt::status::EPOCH_CHANGES_DEFAULT;
use dcloud_crdt::{
    ChangeHash, DocId, Edit, Level, Limits, Member, NodeId, NodeStatus, Outcome, PolicyEditor,
    RegionEditor, RegionId, Replica, SecretKey, SignedChange, SignedTrustRoot, StatusWriter,
    TrustChain, TrustRoot,
};
use dcloud_node::engine::wire::{Item, Message, Push, RangeItems};
use dcloud_node::engine::{
    Engine, EngineConfig, EngineStats, Event, IndexSnapshot, Input, MemberState, Output, Persist,
    Stored,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::report::{MembershipReport, PolicyReport, Report, ScopeReport, Traffic};
use crate::scenario::Scenario;

/// Written into a health detail of each site's detailed status, followed by
/// the site's index (5 digits): the scope checker searches every honest
/// send for it, so a scoped status's bytes are found in any message.
const SCOPE_MARKER_TEXT: &str = "DCSIM-SITE-DETAILS-";

/// Written into the value each regional policy change sets, followed by
/// the region's name, `-`, and the change's index (5 digits) and `.`: the
/// scope checker searches every honest send for it, so a region's scoped
/// policy is found in any message to a site outside the region.
const REGIONAL_MARKER_TEXT: &str = "DCSIM-REGIONAL-";

/// One change of a region's scoped policy (`regional_policy`), signed once
/// at the start, with the fleet policy change that commits to it.
struct RegionalChange {
    region: String,
    /// The config path it sets (`sim.regional<j>`), and the value (a
    /// string holding the change's marker).
    path: String,
    value: serde_json::Value,
    /// The fleet policy change committing to `change`.
    commitment: SignedChange,
    /// The change of the region's scoped policy.
    change: SignedChange,
    /// What the publication carries besides, as an operator's push would:
    /// the earlier commitments and the earlier changes of this region (the
    /// new ones are made on top of them).
    deps: Vec<SignedChange>,
}

/// The marker of regional change `j` of `region` (see
/// [`REGIONAL_MARKER_TEXT`]).
fn regional_marker(region: &str, j: usize) -> String {
    format!("{REGIONAL_MARKER_TEXT}{region}-{j:05}.")
}

/// The authority's trust chain, the bootstrap policy every node is
/// provisioned with (enrolling the first `enrolled` nodes), and the policy
/// changes under measurement, each on top of the previous (one authority
/// actor makes no concurrent changes), signed once and shared.
struct FleetPolicy {
    chain: TrustChain,
    bootstrap: SignedChange,
    policy_changes: Vec<SignedChange>,
    regional: Vec<RegionalChange>,
}

fn fleet_policy(sc: &Scenario, keys: &[SecretKey], nonces: &mut StdRng) -> FleetPolicy {
    let n = sc.nodes;
    let authority = SecretKey::from_seed([0xa1; 32]);
    let root = TrustRoot {
        version: 1,
        threshold: 1,
        keys: vec![authority.public()],
        ..Default::default()
    };
    let chain = TrustChain::from_roots(vec![SignedTrustRoot::sign(root, &[&authority])])
        .expect("a self-signed first root");
    let enrolled_count = sc.enrolled.unwrap_or(n).min(n);
    let mut ed = PolicyEditor::new(&[]).expect("empty base");
    ed.push(Edit::Set(
        Level::Fleet,
        "sim.bootstrap".into(),
        serde_json::json!(true),
    ))
    .expect("valid edit");
    for (i, k) in keys.iter().take(enrolled_count).enumerate() {
        ed.push(Edit::Enrol(
            k.public(),
            Member {
                name: format!("n{i}"),
                region: sc.region_of(i),
                labels: Default::default(),
            },
        ))
        .expect("valid enrolment");
    }
    if !sc.unscoped_baseline {
        for r in &sc.scoped_regions {
            ed.push(Edit::ScopeStatus(r.clone(), true))
                .expect("valid scope");
        }
    }
    let bootstrap = ed
        .finish_as(
            &authority,
            1,
            actor_with_nonce(&authority.public(), nonces.random()),
        )
        .expect("signed bootstrap");
    // Policy changes under measurement, each on top of the previous (one
    // authority actor makes no concurrent changes), signed once and shared.
    let mut base = vec![bootstrap.clone()];
    let mut policy_changes = Vec::new();
    for (i, _) in sc.policy.iter().enumerate() {
        let mut ed = PolicyEditor::new(&base).expect("valid base");
        ed.push(Edit::Set(
            Level::Fleet,
            format!("sim.change{i}"),
            serde_json::json!(i),
        ))
        .expect("valid edit");
        let c = ed
            .finish_as(
                &authority,
                1,
                actor_with_nonce(&authority.public(), nonces.random()),
            )
            .expect("signed");
        base.push(c.clone());
        policy_changes.push(c);
    }
    // Regional policy changes: each region's on top of its earlier ones,
    // each commitment on top of the earlier commitments (and concurrent
    // with the policy changes above, by another actor), so that the
    // publication of one never waits for a change published elsewhere.
    let mut commitments: Vec<SignedChange> = Vec::new();
    let mut by_region: BTreeMap<String, Vec<SignedChange>> = BTreeMap::new();
    let mut regional = Vec::new();
    for (j, e) in sc.regional_policy.iter().enumerate() {
        let earlier = by_region.entry(e.region.clone()).or_default();
        let mut red = RegionEditor::new(&e.region, earlier).expect("valid regional base");
        let path = format!("sim.regional{j}");
        let value = serde_json::json!(regional_marker(&e.region, j));
        red.set(&path, value.clone()).expect("valid regional edit");
        let change = red
            .finish_as(
                &authority,
                1,
                actor_with_nonce(&authority.public(), nonces.random()),
            )
            .expect("signed");
        let mut pbase = vec![bootstrap.clone()];
        pbase.extend(commitments.iter().cloned());
        let mut ed = PolicyEditor::new(&pbase).expect("valid base");
        ed.push(Edit::CommitRegional(
            e.region.clone(),
            change.hash().expect("parses"),
        ))
        .expect("valid commitment");
        let commitment = ed
            .finish_as(
                &authority,
                1,
                actor_with_nonce(&authority.public(), nonces.random()),
            )
            .expect("signed");
        let mut deps = commitments.clone();
        deps.extend(earlier.iter().cloned());
        commitments.push(commitment.clone());
        earlier.push(change.clone());
        regional.push(RegionalChange {
            region: e.region.clone(),
            path,
            value,
            commitment,
            change,
            deps,
        });
    }
    FleetPolicy {
        chain,
        bootstrap,
        policy_changes,
        regional,
    }
}

/// Build a warm start: one replica holding the bootstrap policy and the first
/// status change of each of the first `enrolled` nodes, written by clones of
/// the writers the nodes will start with (so that each node's own first
/// change is the one already held, and none floods at start).
fn warm_start(
    keys: &[SecretKey],
    enrolled: usize,
    chain: &TrustChain,
    bootstrap: &SignedChange,
    nonces: &mut StdRng,
) -> Warm {
    let mut replica = Replica::new(chain.clone(), Limits::default());
    let applied = replica.ingest(vec![bootstrap.clone()]);
    assert!(
        applied.iter().all(|r| r.outcome == Outcome::Applied),
        "the bootstrap applies: {applied:?}"
    );
    let mut writers = Vec::with_capacity(keys.len());
    let mut changes = Vec::with_capacity(enrolled);
    for (i, k) in keys.iter().enumerate() {
        // Epoch 1, as `Engine::restore` starts an empty store.
        let w = StatusWriter::seeded(k.clone(), 1, EPOCH_CHANGES_DEFAULT, nonces.random());
        if i < enrolled {
            changes.push(w.clone().heartbeat());
        }
        writers.push(Some(w));
    }
    for chunk in changes.chunks(512) {
        for r in replica.ingest(chunk.to_vec()) {
            assert_eq!(r.outcome, Outcome::Applied, "a warm status change applies");
        }
    }
    let index = IndexSnapshot::of(&replica, 0);
    Warm {
        replica,
        index,
        writers,
        changes: Arc::new(changes),
    }
}

/// The overlay: a random ring (so it is connected) plus random chords up to
/// the scenario's degree, each link direction with its base latency and loss.
#[allow(clippy::type_complexity)]
fn overlay(sc: &Scenario, rng: &mut StdRng) -> (Vec<Vec<usize>>, HashMap<(usize, usize), LinkDir>) {
    let n = sc.nodes;
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    let mut edges: BTreeSet<(usize, usize)> = BTreeSet::new();
    for w in 0..n {
        let (a, b) = (order[w], order[(w + 1) % n]);
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    }
    // A scoped region's status (and a region's scoped policy) travels only
    // between its members: each such region gets a ring of its own, so
    // that it is connected inside itself (as the daemon keeps half its
    // links inside such a region).
    let data_regions = sc.data_regions();
    for r in &data_regions {
        let members: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| sc.region_of(i) == *r)
            .collect();
        for w in 0..members.len() {
            let (a, b) = (members[w], members[(w + 1) % members.len()]);
            if a != b {
                edges.insert((a.min(b), a.max(b)));
            }
        }
    }
    let chords = sc.degree.saturating_sub(2) / 2;
    let members_of: BTreeMap<String, Vec<usize>> = data_regions
        .iter()
        .map(|r| {
            (
                r.clone(),
                (0..n).filter(|&i| sc.region_of(i) == *r).collect(),
            )
        })
        .collect();
    for a in 0..n {
        for k in 0..chords {
            // Half the chords of a member of a scoped region stay in it.
            let b = match members_of.get(&sc.region_of(a)) {
                Some(m) if k % 2 == 0 => m[rng.random_range(0..m.len())],
                _ => rng.random_range(0..n),
            };
            if a != b {
                edges.insert((a.min(b), a.max(b)));
            }
        }
    }
    let mut adj = vec![Vec::new(); n];
    let mut links = HashMap::new();
    let lm = &sc.link;
    for &(a, b) in &edges {
        adj[a].push(b);
        adj[b].push(a);
        for (x, y) in [(a, b), (b, a)] {
            let latency_ms = rng.random_range(lm.latency_min_ms..=lm.latency_max_ms);
            let loss = if rng.random_bool(lm.asymmetric_fraction) {
                lm.asymmetric_loss
            } else {
                lm.loss
            };
            links.insert((x, y), LinkDir { latency_ms, loss });
        }
    }
    (adj, links)
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
        incarnation: u32,
    },
    /// The engine's deadline ([`Engine::poll_timeout`]) as it was when
    /// this event was queued; stale if it has moved since.
    Timer {
        node: usize,
        incarnation: u32,
    },
    Start(usize),
    Crash {
        node: usize,
        restart_ms: Option<u64>,
        wipe: bool,
    },
    Restart {
        node: usize,
        wipe: bool,
    },
    PartitionStart(usize),
    PartitionEnd(usize),
    Publish(usize),
    /// Publish regional policy change `j` (and its commitment).
    PublishRegional(usize),
    Status(usize),
    Malice(usize),
    ResetCounters,
    Check,
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// One direction of one overlay link.
#[derive(Clone, Copy, Debug)]
struct LinkDir {
    latency_ms: u64,
    loss: f64,
}

/// What a crashed node finds on disk when it restarts.
#[derive(Default)]
struct Store {
    roots: Vec<SignedTrustRoot>,
    changes: BTreeMap<DocId, Vec<SignedChange>>,
    /// The warm start's status changes, when this node started warm (see
    /// [`Warm`]), shared rather than copied per store (the bootstrap policy
    /// every node is provisioned with anyway).
    base: Option<Arc<Vec<SignedChange>>>,
}

/// A warm start ([`Scenario::warm_start`]): the replica every node starts
/// from a clone of, its index, and each node's status writer, which has
/// written (in a clone) the first change the replica holds for it.
struct Warm {
    replica: Replica,
    index: IndexSnapshot,
    writers: Vec<Option<StatusWriter>>,
    /// The status changes it holds (the bootstrap aside).
    changes: Arc<Vec<SignedChange>>,
}

struct Slot {
    key: SecretKey,
    engine: Option<Engine>,
    incarnation: u32,
    /// The engine's deadline an `Ev::Timer` is queued for.
    deadline: Option<u64>,
    store: Option<Store>,
    /// Policy heads last seen (safety: never go backwards).
    heads: Vec<ChangeHash>,
    status_seq: u64,
    malicious: Option<usize>,
    started: bool,
    /// Counters at the last reset, and those of earlier incarnations.
    stats_base: EngineStats,
    stats_dead: EngineStats,
    honest: bool,
}

/// A fault the checkers found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

/// The result of one run.
pub struct RunResult {
    /// Figures.
    pub report: Report,
    /// Safety violations (empty on a correct run).
    pub safety: Vec<Violation>,
    /// Why liveness failed, if it did.
    pub liveness: Option<Violation>,
    /// Where the simulator's own link model and the engines' peer sets
    /// disagreed (a simulator bug, not an engine one; empty on a correct run).
    pub model: Vec<Violation>,
    /// Membership checker findings (live nodes marked down, crashed ones
    /// never marked down or shown alive again); empty on a correct run.
    pub membership: Vec<Violation>,
    /// Honest nodes that sent a `want_amplifier` more than their answer
    /// budget allows (empty on a correct run).
    pub amplification: Vec<Violation>,
    /// Scope checker findings (a scoped status sent to or held by an
    /// honest node outside its region); empty on a correct run.
    pub scope: Vec<Violation>,
}

impl RunResult {
    /// Whether every checker passed.
    pub fn ok(&self) -> bool {
        self.safety.is_empty()
            && self.liveness.is_none()
            && self.model.is_empty()
            && self.membership.is_empty()
            && self.amplification.is_empty()
            && self.scope.is_empty()
    }

    /// Bytes received per site per second over the window by sites outside
    /// the scenario's scoped regions, and by sites inside them.
    pub fn bytes_by_scope_class(&self) -> (f64, f64) {
        self.report.scope.as_ref().map_or((0.0, 0.0), |s| {
            (s.outside_bytes_per_site_s, s.inside_bytes_per_site_s)
        })
    }
}

struct Tracked {
    hash: ChangeHash,
    origin: usize,
    published_at: Option<u64>,
    held_at: Vec<Option<u64>>,
    /// A change of this region's scoped policy: tracked over its sites only.
    region: Option<String>,
}

/// A simulated fleet.
pub struct Sim {
    sc: Scenario,
    seed: u64,
    rng: StdRng,
    /// Actor nonces (a stream of its own, so they do not shift `rng`).
    nonces: StdRng,
    warm: Option<Warm>,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    slots: Vec<Slot>,
    index: HashMap<NodeId, usize>,
    adj: Vec<Vec<usize>>,
    links: HashMap<(usize, usize), LinkDir>,
    /// Links an engine disconnected (misbehaviour, revocation): down for good.
    down_links: BTreeSet<(usize, usize)>,
    /// Partitions now in force (indexes into `partitions`). With `cut` the
    /// single source of truth for what the partitions do to a link.
    active: BTreeSet<usize>,
    /// Each partition's far side.
    partitions: Vec<Vec<bool>>,
    /// The link model and the engines' peer sets disagreed (a simulator bug).
    model: Vec<Violation>,
    chain: TrustChain,
    limits: Limits,
    config: EngineConfig,
    bootstrap: SignedChange,
    policy_changes: Vec<SignedChange>,
    /// Regional policy changes (`regional_policy`); tracked after the
    /// policy changes, two entries each: the commitment, then the change.
    regional: Vec<RegionalChange>,
    authorised: HashSet<ChangeHash>,
    enrolled: Vec<bool>,
    tracked: Vec<Tracked>,
    forged: Vec<SignedChange>,
    safety: Vec<Violation>,
    converged_at: Option<u64>,
    /// How the fleet differed when the liveness bound passed.
    liveness_diag: Option<String>,
    /// After the last heal, at each check: the time and each live honest
    /// node's digest (for the convergence curve).
    heal_samples: Vec<(u64, Vec<(usize, u64)>)>,
    /// Scope checker: honest sends of a scoped status (changes, index
    /// items, short ids) to a node outside its region, and honest nodes
    /// outside a region that came to hold its scoped status.
    scope_leaks: Vec<Violation>,
    /// Short ids of scoped status changes, by owner (to recognise them in
    /// announcements and grafts).
    scoped_ids: HashMap<[u8; 8], usize>,
    /// Short ids of regional policy changes, by region.
    regional_ids: HashMap<[u8; 8], String>,
    /// The scenario's regions by id.
    region_names: HashMap<RegionId, String>,
    /// Whether honest sends are searched for scoped data (scoped status
    /// outside the baseline, or regional policy).
    scope_checked: bool,
    last_heal: u64,
    events: u64,
    misbehaved_events: u64,
    /// When each node last crashed (cleared when it starts again).
    crashed_at: Vec<Option<u64>>,
    /// When each node last started.
    started_at: Vec<u64>,
    /// First time each live node marked a crashed one down: (subject,
    /// observer) -> ms after the crash, for the crash in progress.
    detections: HashMap<(usize, usize), u64>,
    /// Detection times of crashes that ended (the node started again).
    detection_samples: Vec<u64>,
    /// The incarnation each crashed node had reached when it crashed: no
    /// `Alive` of its last life is above it.
    crash_incarnation: Vec<u64>,
    /// The incarnation at which each live observer last marked a crashed
    /// node down: (subject, observer) -> incarnation.
    down_incarnation: HashMap<(usize, usize), u64>,
    /// Observers showing a crashed node alive again on a refutation of its
    /// last life that reached them after their down mark (above the
    /// incarnation they marked down, and signed before the crash): (subject,
    /// observer) -> since when, until they suspect it again.
    relapses: HashMap<(usize, usize), u64>,
    /// How many such late refutations were shown, and how long each was
    /// shown before the observer suspected the node again.
    late_refutations: u64,
    relapse_samples: Vec<u64>,
    /// Observers that had not marked a crashed node down when it started again.
    detection_missed: u64,
    /// Live honest nodes marked down while no partition was in force.
    false_downs: u64,
    /// When a partition last started or ended.
    partition_changed_at: u64,
    /// Membership checker findings: live nodes marked down, crashed ones
    /// never marked down or shown alive again while down.
    membership_findings: Vec<Violation>,
    /// Membership transitions, fleet-wide.
    member_events: u64,
    disconnects: u64,
    malice_ticks: u64,
    /// Most void status epochs held by one honest node at a memory check.
    void_seen: usize,
    /// Most changes pending on any honest node at a memory check.
    peak_pending: usize,
    counters_reset_at: u64,
    trace: BTreeSet<usize>,
    /// Bytes honest nodes handed to the network for a `want_amplifier`
    /// (sender, amplifier), and for honest peers (sender, receiver).
    amplifier_bytes: BTreeMap<(usize, usize), u64>,
    honest_link_bytes: BTreeMap<(usize, usize), u64>,
}

fn key_for(i: usize) -> SecretKey {
    let mut seed = [0x5a; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    SecretKey::from_seed(seed)
}

fn add_stats(a: &mut EngineStats, b: &EngineStats) {
    a.messages_sent += b.messages_sent;
    a.bytes_sent += b.bytes_sent;
    a.messages_received += b.messages_received;
    a.bytes_received += b.bytes_received;
    a.changes_applied += b.changes_applied;
    a.changes_pending += b.changes_pending;
    a.duplicates_received += b.duplicates_received;
    a.stale_received += b.stale_received;
    a.eager_changes_received += b.eager_changes_received;
    a.reply_changes_received += b.reply_changes_received;
    a.reply_duplicates_received += b.reply_duplicates_received;
    for (k, v) in &b.rejected {
        *a.rejected.entry(*k).or_default() += v;
    }
    a.anti_entropy_rounds += b.anti_entropy_rounds;
    a.malformed_messages += b.malformed_messages;
    a.change_bytes_received += b.change_bytes_received;
    a.new_change_bytes_received += b.new_change_bytes_received;
    a.announcements_sent += b.announcements_sent;
    a.grafts_sent += b.grafts_sent;
    a.prunes_sent += b.prunes_sent;
    a.requests_refused += b.requests_refused;
    a.answers_cut_short += b.answers_cut_short;
    a.answer_bytes_sent += b.answer_bytes_sent;
    a.answer_lookups += b.answer_lookups;
    a.sync_retries += b.sync_retries;
    a.sync_ranges_held += b.sync_ranges_held;
    a.probes_sent += b.probes_sent;
    a.rumours_verified += b.rumours_verified;
    a.suspicions_raised += b.suspicions_raised;
    a.refutations += b.refutations;
    a.new_rumour_bytes_received += b.new_rumour_bytes_received;
    a.scope_withheld += b.scope_withheld;
    a.scope_dropped += b.scope_dropped;
    for (k, v) in &b.bytes_received_by_kind {
        *a.bytes_received_by_kind.entry(k).or_default() += v;
    }
}

fn sub_stats(a: &EngineStats, b: &EngineStats) -> EngineStats {
    let mut r = a.clone();
    r.messages_sent -= b.messages_sent.min(r.messages_sent);
    r.bytes_sent -= b.bytes_sent.min(r.bytes_sent);
    r.messages_received -= b.messages_received.min(r.messages_received);
    r.bytes_received -= b.bytes_received.min(r.bytes_received);
    r.change_bytes_received -= b.change_bytes_received.min(r.change_bytes_received);
    r.new_change_bytes_received -= b.new_change_bytes_received.min(r.new_change_bytes_received);
    r.duplicates_received -= b.duplicates_received.min(r.duplicates_received);
    r.eager_changes_received -= b.eager_changes_received.min(r.eager_changes_received);
    r.reply_changes_received -= b.reply_changes_received.min(r.reply_changes_received);
    r.reply_duplicates_received -= b.reply_duplicates_received.min(r.reply_duplicates_received);
    r.grafts_sent -= b.grafts_sent.min(r.grafts_sent);
    r.prunes_sent -= b.prunes_sent.min(r.prunes_sent);
    r.new_rumour_bytes_received -= b.new_rumour_bytes_received.min(r.new_rumour_bytes_received);
    for (k, v) in r.bytes_received_by_kind.iter_mut() {
        *v -= b
            .bytes_received_by_kind
            .get(k)
            .copied()
            .unwrap_or(0)
            .min(*v);
    }
    r
}

impl Sim {
    /// Build the fleet of `sc` with `seed` (keys, overlay, links, signed changes).
    pub fn new(sc: Scenario, seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        // Actor nonces come from their own seeded stream (a daemon draws them
        // from the OS), so that a seed replays a run exactly.
        let mut nonces = StdRng::seed_from_u64(seed ^ 0x6e6f_6e63_6573);
        let n = sc.nodes;
        let keys: Vec<SecretKey> = (0..n).map(key_for).collect();
        let enrolled_count = sc.enrolled.unwrap_or(n).min(n);
        let FleetPolicy {
            chain,
            bootstrap,
            policy_changes,
            regional,
        } = fleet_policy(&sc, &keys, &mut nonces);
        let mut base = vec![bootstrap.clone()];
        base.extend(policy_changes.iter().cloned());
        for rc in &regional {
            base.push(rc.commitment.clone());
            base.push(rc.change.clone());
        }
        let mut authorised: HashSet<ChangeHash> = HashSet::new();
        for c in &base {
            authorised.insert(c.hash().expect("parses"));
        }
        let mut tracked: Vec<Tracked> = policy_changes
            .iter()
            .zip(&sc.policy)
            .map(|(c, p)| Tracked {
                hash: c.hash().expect("parses"),
                origin: p.node.min(n - 1),
                published_at: None,
                held_at: vec![None; n],
                region: None,
            })
            .collect();
        let mut regional_ids = HashMap::new();
        for rc in &regional {
            let h = rc.change.hash().expect("parses");
            regional_ids.insert(dcloud_node::engine::wire::short_id(&h), rc.region.clone());
            for (c, region) in [
                (&rc.commitment, None),
                (&rc.change, Some(rc.region.clone())),
            ] {
                tracked.push(Tracked {
                    hash: c.hash().expect("parses"),
                    origin: 0,
                    published_at: None,
                    held_at: vec![None; n],
                    region,
                });
            }
        }
        let region_names = (0..sc.regions)
            .map(|k| (RegionId::of(&format!("r{k}")), format!("r{k}")))
            .collect();
        let scope_checked = (!sc.scoped_regions.is_empty() && !sc.unscoped_baseline)
            || !sc.regional_policy.is_empty();
        let (adj, links) = overlay(&sc, &mut rng);
        let config = sc.engine.clone();
        let warm = sc
            .warm_start
            .then(|| warm_start(&keys, enrolled_count, &chain, &bootstrap, &mut nonces));
        let mut needs_store = vec![false; n];
        let mut crash_plan = Vec::new();
        for c in &sc.crash {
            let mut nodes = c.nodes.clone();
            while nodes.len() < c.count {
                let x = rng.random_range(0..n);
                // Not a late joiner that is not up yet (draw again).
                if !nodes.contains(&x) && sc.join_ms(x).is_none_or(|j| j < c.at_ms) {
                    nodes.push(x);
                }
            }
            for x in nodes {
                needs_store[x] = true;
                crash_plan.push((c.at_ms, x, c.restart_ms, c.wipe_store));
            }
        }
        let slots = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Slot {
                key: k.clone(),
                engine: None,
                incarnation: 0,
                deadline: None,
                store: needs_store[i].then(Store::default),
                heads: Vec::new(),
                status_seq: 0,
                malicious: sc.malicious.iter().position(|m| m.node == i),
                started: false,
                stats_base: EngineStats::default(),
                stats_dead: EngineStats::default(),
                honest: !sc.malicious.iter().any(|m| m.node == i),
            })
            .collect();
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.public(), i))
            .collect();
        let partitions = sc
            .partition
            .iter()
            .map(|p| {
                let far = (p.fraction * n as f64).round() as usize;
                let mut ids: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    let j = rng.random_range(0..=i);
                    ids.swap(i, j);
                }
                let mut side = vec![false; n];
                for &i in ids.iter().take(far) {
                    side[i] = true;
                }
                side
            })
            .collect();
        let last_heal = sc.last_heal_ms();
        let mut sim = Sim {
            seed,
            rng,
            nonces,
            warm,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slots,
            index,
            adj,
            links,
            down_links: BTreeSet::new(),
            active: BTreeSet::new(),
            partitions,
            model: Vec::new(),
            chain,
            limits: Limits::default(),
            config,
            bootstrap,
            policy_changes,
            regional,
            authorised,
            enrolled: (0..n).map(|i| i < enrolled_count).collect(),
            tracked,
            forged: Vec::new(),
            safety: Vec::new(),
            converged_at: None,
            liveness_diag: None,
            heal_samples: Vec::new(),
            scope_leaks: Vec::new(),
            scoped_ids: HashMap::new(),
            regional_ids,
            region_names,
            scope_checked,
            last_heal,
            events: 0,
            misbehaved_events: 0,
            crashed_at: vec![None; sc.nodes],
            started_at: vec![0; sc.nodes],
            detections: HashMap::new(),
            detection_samples: Vec::new(),
            crash_incarnation: vec![0; sc.nodes],
            down_incarnation: HashMap::new(),
            relapses: HashMap::new(),
            late_refutations: 0,
            relapse_samples: Vec::new(),
            detection_missed: 0,
            false_downs: 0,
            partition_changed_at: 0,
            membership_findings: Vec::new(),
            member_events: 0,
            disconnects: 0,
            malice_ticks: 0,
            void_seen: 0,
            peak_pending: 0,
            counters_reset_at: 0,
            trace: BTreeSet::new(),
            amplifier_bytes: BTreeMap::new(),
            honest_link_bytes: BTreeMap::new(),
            sc,
        };
        sim.schedule_plan(crash_plan);
        sim
    }

    /// Print every message node `node` receives and sends (to stderr); more
    /// than one node may be traced.
    pub fn trace(&mut self, node: usize) {
        self.trace.insert(node);
    }

    fn describe(&self, bytes: &[u8]) -> String {
        match Message::decode(bytes, &self.config.wire) {
            Ok(Message::Changes { push, changes }) => format!(
                "Changes {push:?} {:?}",
                changes
                    .iter()
                    .map(|c| format!(
                        "{}:{}",
                        c.doc,
                        c.hash()
                            .map(|h| h.to_string()[..8].to_string())
                            .unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
            ),
            // Every listed document with its heads (8 hex digits each), and
            // the fingerprinted ranges by count: what a round compared.
            Ok(Message::Sync {
                depth,
                splits,
                items,
                ..
            }) => format!(
                "Sync depth {depth}, {} ranges fingerprinted, listed: {:?}",
                splits.iter().map(|s| s.parts.len()).sum::<usize>(),
                items
                    .iter()
                    .map(|ri| format!(
                        "{:016x}-{:016x}{} [{}]",
                        ri.lo,
                        ri.hi,
                        if ri.reply { " (answer me)" } else { "" },
                        ri.items
                            .iter()
                            .map(|it| format!(
                                "{}@{}",
                                it.doc,
                                it.heads
                                    .iter()
                                    .map(|h| ChangeHash(*h).to_string()[..8].to_string())
                                    .collect::<Vec<_>>()
                                    .join("+")
                            ))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ))
                    .collect::<Vec<_>>()
            ),
            Ok(m) => format!("{m:?}").chars().take(300).collect(),
            Err(e) => format!("undecodable: {e}"),
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn schedule_plan(&mut self, crash_plan: Vec<(u64, usize, Option<u64>, bool)>) {
        let n = self.sc.nodes;
        let late: usize = self.sc.join.iter().map(|j| j.count).sum();
        let mut next_late = n - late;
        let joins = self.sc.join.clone();
        for j in joins {
            for _ in 0..j.count {
                self.push(j.at_ms, Ev::Start(next_late));
                next_late += 1;
            }
        }
        for i in 0..n - late {
            let t = self.rng.random_range(0..=self.sc.start_spread_ms);
            self.push(t, Ev::Start(i));
        }
        for (at, node, restart_ms, wipe) in crash_plan {
            self.push(
                at,
                Ev::Crash {
                    node,
                    restart_ms,
                    wipe,
                },
            );
        }
        for i in 0..self.sc.partition.len() {
            let p = self.sc.partition[i].clone();
            self.push(p.from_ms, Ev::PartitionStart(i));
            self.push(p.until_ms, Ev::PartitionEnd(i));
        }
        for i in 0..self.sc.policy.len() {
            let at = self.sc.policy[i].at_ms;
            self.push(at, Ev::Publish(i));
        }
        for j in 0..self.sc.regional_policy.len() {
            let at = self.sc.regional_policy[j].at_ms;
            self.push(at, Ev::PublishRegional(j));
        }
        if self.sc.status.interval_ms > 0 {
            for i in 0..n {
                if self.enrolled[i] {
                    let t = self.rng.random_range(0..self.sc.status.interval_ms);
                    self.push(self.sc.start_spread_ms + t, Ev::Status(i));
                }
            }
        }
        for m in 0..self.sc.malicious.len() {
            let at = self.sc.start_spread_ms + self.sc.malicious[m].interval_ms;
            self.push(at, Ev::Malice(m));
        }
        if self.sc.measure_from_ms > 0 {
            self.push(self.sc.measure_from_ms, Ev::ResetCounters);
        }
        let first_check = if self.last_heal == u64::MAX {
            u64::MAX
        } else {
            self.last_heal
        };
        if first_check < self.sc.duration_ms {
            self.push(first_check, Ev::Check);
        }
    }

    /// Run to the end; `progress` is called with the simulated time now and then.
    pub fn run(mut self, mut progress: impl FnMut(u64)) -> RunResult {
        self.advance(self.sc.duration_ms, &mut progress);
        self.now = self.sc.duration_ms;
        progress(self.now);
        self.finish()
    }

    /// Carry out every event up to and including time `until`.
    fn advance(&mut self, until: u64, progress: &mut impl FnMut(u64)) {
        let mut next_tick = 0;
        while let Some(Reverse(q)) = self.queue.peek() {
            if q.at > until {
                break;
            }
            let Some(Reverse(q)) = self.queue.pop() else {
                break;
            };
            self.now = q.at;
            self.events += 1;
            if self.now >= next_tick {
                progress(self.now);
                next_tick = self.now + 250;
            }
            self.dispatch(q.ev);
        }
    }

    fn live(&self, i: usize) -> bool {
        self.slots[i].engine.is_some()
    }

    /// Whether some active partition separates `a` and `b` (messages between
    /// them are lost, and with `partition_drops_connections` the connection
    /// is down).
    fn cut(&self, a: usize, b: usize) -> bool {
        self.active
            .iter()
            .any(|&p| self.partitions[p][a] != self.partitions[p][b])
    }

    /// Whether the connection a-b should be up (as far as the links go; both
    /// ends must also be live).
    fn connected(&self, a: usize, b: usize) -> bool {
        let severed = self.down_links.contains(&(a.min(b), a.max(b)));
        let partitioned = self.sc.partition_drops_connections && self.cut(a, b);
        !severed && !partitioned
    }

    /// The peers `a`'s engine should have: live overlay neighbours over
    /// connected links.
    fn expected_peers(&self, a: usize) -> BTreeSet<usize> {
        self.adj[a]
            .iter()
            .copied()
            .filter(|&b| self.live(b) && self.connected(a, b))
            .collect()
    }

    /// The link model against every live engine's peer set, at a partition
    /// start or heal. A mismatch is a simulator bug, reported with the seed.
    fn check_links(&mut self, what: &str) {
        let mut bad = Vec::new();
        for a in 0..self.sc.nodes {
            let Some(engine) = &self.slots[a].engine else {
                continue;
            };
            let have: BTreeSet<usize> = engine
                .peers()
                .iter()
                .filter_map(|p| self.index.get(p).copied())
                .collect();
            let want = self.expected_peers(a);
            if have != want {
                let missing: Vec<usize> = want.difference(&have).copied().collect();
                let extra: Vec<usize> = have.difference(&want).copied().collect();
                bad.push(format!("node {a} lacks {missing:?}, has extra {extra:?}"));
            }
        }
        if !bad.is_empty() {
            let v = Violation(format!(
                "simulator link model and engine peers disagree at {} ({} ms, seed {}) on {} nodes; first: {}",
                what,
                self.now,
                self.seed,
                bad.len(),
                bad[0]
            ));
            eprintln!("dcloud-sim: SIMULATOR BUG: {}", v.0);
            self.model.push(v);
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                to,
                from,
                bytes,
                incarnation,
            } => {
                if self.slots[to].incarnation != incarnation || !self.live(to) {
                    return;
                }
                let from_id = self.slots[from].key.public();
                if self.trace.contains(&to) {
                    eprintln!("{} ms: {to} <- {from}: {}", self.now, self.describe(&bytes));
                }
                self.input(
                    to,
                    Input::Message {
                        from: from_id,
                        bytes,
                    },
                );
            }
            Ev::Timer { node, incarnation } => {
                let slot = &mut self.slots[node];
                if slot.incarnation != incarnation || slot.deadline != Some(self.now) {
                    return;
                }
                slot.deadline = None;
                let Some(engine) = slot.engine.as_mut() else {
                    return;
                };
                let outs = engine.handle_timeout(self.now, &mut self.rng);
                self.process(node, outs);
            }
            Ev::Start(i) => self.start(i, false),
            Ev::Crash {
                node,
                restart_ms,
                wipe,
            } => {
                self.crash(node);
                if let Some(r) = restart_ms {
                    self.push(r, Ev::Restart { node, wipe });
                }
            }
            Ev::Restart { node, wipe } => self.start(node, wipe),
            Ev::PartitionStart(p) => {
                self.set_partition(p, true);
                self.check_links(&format!("the start of partition {p}"));
            }
            Ev::PartitionEnd(p) => {
                self.set_partition(p, false);
                self.check_links(&format!("the end of partition {p}"));
            }
            Ev::Publish(p) => {
                let n = self.sc.nodes;
                let origin = (0..n)
                    .map(|k| (self.tracked[p].origin + k) % n)
                    .find(|&i| self.live(i) && self.slots[i].honest);
                if let Some(o) = origin {
                    self.tracked[p].origin = o;
                    self.tracked[p].published_at = Some(self.now);
                    let c = self.policy_changes[p].clone();
                    self.input(
                        o,
                        Input::Publish {
                            roots: Vec::new(),
                            changes: vec![c],
                        },
                    );
                }
            }
            Ev::PublishRegional(j) => self.publish_regional(j),
            Ev::Status(i) => {
                let st = &self.sc.status;
                if st.until_ms != 0 && self.now >= st.until_ms {
                    return;
                }
                let interval = st.interval_ms;
                if self.live(i) {
                    self.slots[i].status_seq += 1;
                    let mut status = NodeStatus {
                        name: format!("n{i}"),
                        region: self.sc.region_of(i),
                        version: format!("build-{}", self.slots[i].status_seq),
                        ..NodeStatus::default()
                    };
                    if st.detailed {
                        // A daemon's version rarely moves; its details do.
                        status.version = "dcloud-sim".into();
                        let seq = self.slots[i].status_seq;
                        status.addrs = vec![
                            format!("/ip4/198.18.{}.{}/tcp/7700", i / 250, i % 250),
                            format!("/ip4/198.18.{}.{}/udp/7700/quic-v1", i / 250, i % 250),
                        ];
                        // The marker the scope checker looks for in the
                        // bytes of every honest send: this site's details.
                        let marker = format!("{}{i:05}.", SCOPE_MARKER_TEXT);
                        for (check, detail) in [
                            ("disk", format!("/var 41% used, {} GiB free", 100 + seq % 7)),
                            ("apply", format!("rendered config in {} ms", 20 + seq % 13)),
                            ("site", marker),
                        ] {
                            status.health.insert(
                                check.to_string(),
                                dcloud_crdt::status::HealthCheck { ok: true, detail },
                            );
                        }
                    }
                    self.input(i, Input::SetStatus(status));
                }
                self.push(self.now + interval, Ev::Status(i));
            }
            Ev::Malice(m) => {
                self.malice(m);
                self.check_memory();
                let at = self.now + self.sc.malicious[m].interval_ms;
                if self.sc.malicious[m].until_ms.is_none_or(|u| at <= u) {
                    self.push(at, Ev::Malice(m));
                }
            }
            Ev::ResetCounters => {
                self.counters_reset_at = self.now;
                for s in &mut self.slots {
                    let mut total = s.stats_dead.clone();
                    if let Some(e) = &s.engine {
                        add_stats(&mut total, &e.stats());
                    }
                    s.stats_base = total;
                }
            }
            Ev::Check => self.check_liveness(),
        }
    }

    /// Publish regional policy change `j` with its commitment (and what
    /// they are made on top of) at a live honest site of its region, drawn
    /// from the seeded RNG; if none is up, try again in 100 ms.
    fn publish_regional(&mut self, j: usize) {
        let region = self.regional[j].region.clone();
        let sites: Vec<usize> = (0..self.sc.nodes)
            .filter(|&i| {
                self.live(i)
                    && self.slots[i].honest
                    && self.enrolled[i]
                    && self.sc.region_of(i) == region
            })
            .collect();
        if sites.is_empty() {
            self.push(self.now + 100, Ev::PublishRegional(j));
            return;
        }
        let o = sites[self.rng.random_range(0..sites.len())];
        let k = self.sc.policy.len() + 2 * j;
        for t in &mut self.tracked[k..k + 2] {
            t.origin = o;
            t.published_at = Some(self.now);
        }
        let rc = &self.regional[j];
        // Policy first (the replica applies it first anyway).
        let mut changes: Vec<SignedChange> = rc
            .deps
            .iter()
            .filter(|c| c.doc == DocId::Policy)
            .cloned()
            .collect();
        changes.push(rc.commitment.clone());
        changes.extend(rc.deps.iter().filter(|c| c.doc != DocId::Policy).cloned());
        changes.push(rc.change.clone());
        self.input(
            o,
            Input::Publish {
                roots: Vec::new(),
                changes,
            },
        );
    }

    /// Partition `p` starts (or ends). Exactly the links whose state changes
    /// go down (or come back up) in the engines' view: those `p` cuts that
    /// were up until now (or that no other active partition still cuts).
    fn set_partition(&mut self, p: usize, on: bool) {
        let drops = self.sc.partition_drops_connections;
        let side = self.partitions[p].clone();
        // The links `p` separates that are up (at a start) or down (at an
        // end) before the change: the candidates for flipping.
        let mut flips = BTreeSet::new();
        if drops {
            for a in 0..self.sc.nodes {
                for &b in &self.adj[a] {
                    if a < b && side[a] != side[b] && self.connected(a, b) == on {
                        flips.insert((a, b));
                    }
                }
            }
        }
        if on {
            self.active.insert(p);
        } else {
            self.active.remove(&p);
        }
        self.partition_changed_at = self.now;
        // Without dropped connections only the network's view (`cut`) changes.
        for a in 0..self.sc.nodes {
            for bi in 0..self.adj[a].len() {
                let b = self.adj[a][bi];
                // Still there, both ends live, and its state did change (an
                // input earlier in this loop may have disconnected it).
                if !flips.contains(&(a.min(b), a.max(b)))
                    || !self.live(a)
                    || !self.live(b)
                    || self.connected(a, b) == on
                {
                    continue;
                }
                let peer = self.slots[b].key.public();
                let input = if on {
                    Input::PeerDown { peer }
                } else {
                    Input::PeerUp { peer }
                };
                self.input(a, input);
            }
        }
    }

    fn start(&mut self, i: usize, wipe: bool) {
        if self.live(i) {
            return;
        }
        if let Some(t) = self.crashed_at[i] {
            self.close_detection(i, t);
            self.crashed_at[i] = None;
        }
        self.started_at[i] = self.now;
        let key = self.slots[i].key.clone();
        if wipe && let Some(store) = &mut self.slots[i].store {
            *store = Store::default();
        }
        let warm_writer = match &mut self.warm {
            Some(w) if !self.slots[i].started => w.writers[i].take(),
            _ => None,
        };
        let (engine, outs) = if let (Some(writer), Some(w)) = (warm_writer, &self.warm) {
            // A warm start: the fleet's steady state, shared.
            let (engine, outs) = Engine::with_index(
                self.config.clone(),
                w.replica.clone(),
                writer,
                self.now,
                w.index.clone(),
            );
            if self.enrolled[i] {
                let own = DocId::Status {
                    node: key.public(),
                    epoch: 1,
                };
                assert_eq!(
                    engine.replica().heads(&own),
                    w.replica.heads(&own),
                    "node {i}'s first change is the one its warm start holds"
                );
            }
            if let Some(store) = &mut self.slots[i].store {
                store.base = Some(w.changes.clone());
            }
            (engine, outs)
        } else {
            // Every node is provisioned with the bootstrap policy; the rest
            // is what its store kept.
            let mut changes = vec![self.bootstrap.clone()];
            let mut roots = Vec::new();
            if let Some(store) = &self.slots[i].store {
                roots = store.roots.clone();
                if let Some(base) = &store.base {
                    changes.extend(base.iter().cloned());
                }
                changes.extend(store.changes.values().flatten().cloned());
            }
            let nonce_seed = self.nonces.random();
            let (engine, outs, _restored) = Engine::restore(
                self.config.clone(),
                Stored {
                    key,
                    chain: self.chain.clone(),
                    roots,
                    changes,
                    limits: self.limits.clone(),
                    epoch_floor: 0,
                    actor_seed: Some(nonce_seed),
                },
                self.now,
            )
            .expect("epochs start at 1 in the simulator");
            (engine, outs)
        };
        let replica = engine.replica();
        // Safety across restarts: the policy read back from the store never
        // goes behind what the node had applied.
        if self.slots[i].started && !wipe {
            let lost = self.slots[i]
                .heads
                .iter()
                .filter(|h| !replica.contains(&DocId::Policy, h))
                .count();
            if lost > 0 {
                self.safety.push(Violation(format!(
                    "node {i} restarted without policy it had applied ({lost} heads lost) at {} ms",
                    self.now
                )));
            }
        }
        let mut heads = replica.policy_heads();
        heads.sort();
        let slot = &mut self.slots[i];
        slot.engine = Some(engine);
        slot.started = true;
        slot.heads = heads;
        slot.deadline = None;
        self.process(i, outs);
        for bi in 0..self.adj[i].len() {
            let b = self.adj[i][bi];
            if self.live(b) && self.connected(i, b) {
                let (pi, pb) = (self.slots[i].key.public(), self.slots[b].key.public());
                self.input(i, Input::PeerUp { peer: pb });
                self.input(b, Input::PeerUp { peer: pi });
            }
        }
    }

    fn crash(&mut self, i: usize) {
        let Some(engine) = self.slots[i].engine.take() else {
            return;
        };
        let st = engine.stats();
        add_stats(&mut self.slots[i].stats_dead, &st);
        self.crash_incarnation[i] = engine.membership().incarnation();
        self.slots[i].incarnation += 1;
        self.slots[i].deadline = None;
        self.crashed_at[i] = Some(self.now);
        let me = self.slots[i].key.public();
        for bi in 0..self.adj[i].len() {
            let b = self.adj[i][bi];
            if self.live(b) {
                self.input(b, Input::PeerDown { peer: me });
            }
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let Some(engine) = self.slots[i].engine.as_mut() else {
            return;
        };
        let outs = engine.handle(input, self.now);
        self.process(i, outs);
    }

    /// Queue an `Ev::Timer` for node `i`'s engine deadline if it moved (the
    /// engine owns its timers; the simulator keeps one deadline per node).
    fn arm(&mut self, i: usize) {
        let Some(at) = self.slots[i].engine.as_ref().and_then(|e| e.poll_timeout()) else {
            self.slots[i].deadline = None;
            return;
        };
        let at = at.max(self.now);
        if self.slots[i].deadline == Some(at) {
            return;
        }
        self.slots[i].deadline = Some(at);
        let incarnation = self.slots[i].incarnation;
        self.push(
            at,
            Ev::Timer {
                node: i,
                incarnation,
            },
        );
    }

    fn process(&mut self, i: usize, outs: Vec<Output>) {
        self.process_outputs(i, outs);
        self.arm(i);
    }

    fn process_outputs(&mut self, i: usize, outs: Vec<Output>) {
        for o in outs {
            match o {
                Output::Send { to, bytes } => self.send(i, to, bytes),
                Output::Persist(p) => self.persist(i, p),
                Output::Disconnect { peer, reason } => {
                    self.disconnects += 1;
                    if let Some(&b) = self.index.get(&peer) {
                        if self.slots[i].honest
                            && self.slots[b].honest
                            && self.enrolled[i]
                            && self.enrolled[b]
                        {
                            self.safety.push(Violation(format!(
                                "honest node {i} disconnected honest node {b} at {} ms: {reason}",
                                self.now
                            )));
                        }
                        let key = (i.min(b), i.max(b));
                        if self.down_links.insert(key) && self.live(b) {
                            let me = self.slots[i].key.public();
                            self.input(b, Input::PeerDown { peer: me });
                        }
                    }
                }
                Output::Event(e) => self.event(i, e),
            }
        }
    }

    fn event(&mut self, i: usize, e: Event) {
        match e {
            Event::PolicyChanged => {
                let Some(engine) = &self.slots[i].engine else {
                    return;
                };
                let r = engine.replica();
                let lost = self.slots[i]
                    .heads
                    .iter()
                    .filter(|h| !r.contains(&DocId::Policy, h))
                    .count();
                if lost > 0 {
                    self.safety.push(Violation(format!(
                        "node {i}: applied policy went backwards at {} ms",
                        self.now
                    )));
                }
                let mut heads = r.policy_heads();
                heads.sort();
                self.slots[i].heads = heads;
            }
            Event::PeerMisbehaved { peer, reason } => {
                self.misbehaved_events += 1;
                if let Some(&b) = self.index.get(&peer)
                    && self.slots[i].honest
                    && self.slots[b].honest
                {
                    self.safety.push(Violation(format!(
                        "honest node {i} blamed honest node {b} at {} ms: {reason}",
                        self.now
                    )));
                }
            }
            Event::Published { .. } => {}
            Event::PeerUnresponsive { .. } => {}
            Event::Member { node, state } => {
                self.member_events += 1;
                let Some(&b) = self.index.get(&node) else {
                    return;
                };
                let inc = self.slots[i]
                    .engine
                    .as_ref()
                    .and_then(|e| e.liveness(&node))
                    .map(|l| l.incarnation);
                if std::env::var("SIM_DEBUG_MEMBER").is_ok_and(|v| v == b.to_string()) {
                    eprintln!(
                        "t={} observer={i} subject={b} {state:?} inc={inc:?}",
                        self.now
                    );
                }
                if !self.slots[i].honest {
                    return;
                }
                let held = inc.unwrap_or(0);
                if !self.live(b) && state != MemberState::Alive {
                    // Suspected again after a late refutation: resolved.
                    if let Some(t) = self.relapses.remove(&(b, i)) {
                        self.end_relapse(b, i, t, "until");
                    }
                }
                if state != MemberState::Down {
                    // A crashed node's refutation cannot come: only a
                    // rumour of its last life, or a forgery, shows it alive.
                    // One of its last life above the incarnation marked
                    // down here is a refutation this observer had not
                    // heard (it was behind a cut): SWIM must take it (it
                    // cannot tell it from a live node's), and the observer
                    // must suspect the node again. Anything else is a
                    // fault.
                    if state == MemberState::Alive
                        && !self.live(b)
                        && self.detections.contains_key(&(b, i))
                    {
                        let down = self.down_incarnation.get(&(b, i)).copied().unwrap_or(0);
                        if held > down && held <= self.crash_incarnation[b] {
                            self.late_refutations += 1;
                            self.relapses.entry((b, i)).or_insert(self.now);
                        } else if self.membership_findings.len() < 100 {
                            self.membership_findings.push(Violation(format!(
                                "node {i} shows crashed node {b} alive again at {} ms, at incarnation {held} (marked down at {down}; it crashed at {})",
                                self.now, self.crash_incarnation[b]
                            )));
                        }
                    }
                    return;
                }
                let settle = 2 * self.config.membership.suspicion_timeout_max_ms;
                match self.crashed_at[b] {
                    Some(t) if !self.live(b) => {
                        self.detections.entry((b, i)).or_insert(self.now - t);
                        self.down_incarnation.insert((b, i), held);
                    }
                    // A node that started again within two suspicion
                    // timeouts may be marked down by a suspicion of its
                    // last life still in flight; its refutation follows.
                    // Nor within two of a partition's start or end: marks
                    // of the far side land then.
                    _ if self.active.is_empty()
                        && self.slots[b].honest
                        && self.now > self.started_at[b] + settle
                        && self.now > self.partition_changed_at + settle =>
                    {
                        self.false_downs += 1;
                        if self.membership_findings.len() < 100 {
                            self.membership_findings.push(Violation(format!(
                                "node {i} marked live node {b} down at {} ms",
                                self.now
                            )));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn persist(&mut self, i: usize, p: Persist) {
        match p {
            Persist::Changes(cs) => {
                for c in &cs {
                    self.check_safety(i, c);
                    self.check_scope_held(i, c);
                }
                if let Some(store) = &mut self.slots[i].store {
                    for c in cs {
                        store.changes.entry(c.doc).or_default().push(c);
                    }
                }
            }
            Persist::Root(r) => {
                if let Some(store) = &mut self.slots[i].store {
                    store.roots.push(r);
                }
            }
            Persist::DropStatusBefore { node, kind, epoch } => {
                if let Some(store) = &mut self.slots[i].store {
                    store.changes.retain(|d, _| {
                        !d.owned()
                            .is_some_and(|(n, e, k)| n == node && k == kind && e < epoch)
                    });
                }
            }
            Persist::DropNode { node } => {
                if let Some(store) = &mut self.slots[i].store {
                    store
                        .changes
                        .retain(|d, _| d.owned().is_none_or(|(n, _, _)| n != node));
                }
            }
            Persist::DropDoc { doc } => {
                if let Some(store) = &mut self.slots[i].store {
                    store.changes.remove(&doc);
                }
            }
            Persist::DropStatus { node } => {
                // Scoping from the start: an honest node never held it.
                if self.slots[i].honest && self.scope_leaks.len() < 100 {
                    self.scope_leaks.push(Violation(format!(
                        "node {i} dropped the scoped status of {} it should never have held",
                        node.short()
                    )));
                }
                if let Some(store) = &mut self.slots[i].store {
                    store
                        .changes
                        .retain(|d, _| !matches!(d, DocId::Status { node: n, .. } if *n == node));
                }
            }
        }
    }

    /// A change a node now holds must be authorised: a policy change the
    /// authority signed, or a status change of an enrolled node signed by it.
    fn check_safety(&mut self, i: usize, c: &SignedChange) {
        if !self.slots[i].honest {
            return;
        }
        match c.doc {
            DocId::Policy | DocId::Region { .. } => {
                let Ok(h) = c.hash() else {
                    self.safety.push(Violation(format!(
                        "node {i} holds an unparsable policy change"
                    )));
                    return;
                };
                if !self.authorised.contains(&h) {
                    self.safety.push(Violation(format!(
                        "node {i} holds unauthorised policy change {h} at {} ms",
                        self.now
                    )));
                }
                for t in &mut self.tracked {
                    if t.hash == h && t.held_at[i].is_none() {
                        t.held_at[i] = Some(self.now);
                    }
                }
            }
            DocId::Status { node, .. } | DocId::Summary { node, .. } => {
                let owner_ok = self.index.get(&node).is_some_and(|&o| self.enrolled[o]);
                let signed_ok = c.sigs.len() == 1 && c.sigs[0].key == node;
                if !owner_ok || !signed_ok || self.forged.contains(c) {
                    self.safety.push(Violation(format!(
                        "node {i} holds an unauthorised status change of {} at {} ms",
                        node.short(),
                        self.now
                    )));
                }
            }
        }
    }

    /// Whether node `to` may hold region `region`'s scoped policy: it is
    /// enrolled in that region.
    fn may_hold_region(&self, to: usize, region: &str) -> bool {
        self.enrolled[to] && self.sc.region_of(to) == region
    }

    /// The name of region `id` (`None`: not one of the scenario's).
    fn region_name(&self, id: &RegionId) -> Option<&str> {
        self.region_names.get(id).map(String::as_str)
    }

    /// Whether node `to` may hold the status of node `owner`.
    fn may_hold(&self, to: usize, owner: usize) -> bool {
        !self.sc.scoped(owner)
            || (self.enrolled[to] && self.sc.region_of(to) == self.sc.region_of(owner))
    }

    /// The scope checker, at the wire: an honest node hands the network
    /// nothing of a scoped status for a node outside its region, nor of a
    /// region's scoped policy for a node outside that region: no change,
    /// no (document, heads) item, no short id of one of its changes, no
    /// byte of its marker.
    fn check_scope_sent(&mut self, from: usize, to: usize, bytes: &[u8]) {
        // What the message names: changes, items and short ids of scoped
        // statuses and of regional policy (when it decodes)...
        let mut named: BTreeMap<usize, &'static str> = BTreeMap::new();
        let mut regions: BTreeMap<String, &'static str> = BTreeMap::new();
        if let Ok(msg) = Message::decode(bytes, &self.config.wire) {
            let mut docs: Vec<DocId> = Vec::new();
            let mut ids: Vec<[u8; 8]> = Vec::new();
            match &msg {
                Message::Changes { changes, .. } => docs.extend(changes.iter().map(|c| c.doc)),
                Message::Want { items } => docs.extend(items.iter().map(|i| i.doc)),
                Message::Sync { items, .. } => {
                    docs.extend(items.iter().flat_map(|ri| ri.items.iter().map(|i| i.doc)))
                }
                Message::IHave { ids: s } | Message::Graft { ids: s } => ids.extend(s.iter()),
                _ => {}
            }
            let owners = docs
                .iter()
                .filter_map(|d| match d {
                    DocId::Status { node, .. } => self.index.get(node).copied(),
                    _ => None,
                })
                .chain(ids.iter().filter_map(|s| self.scoped_ids.get(s).copied()));
            for o in owners {
                named.insert(o, msg.kind());
            }
            let held_regions = docs
                .iter()
                .filter_map(|d| match d {
                    DocId::Region { region } => Some(
                        self.region_name(region)
                            .map_or_else(|| format!("id {}", region.short()), str::to_string),
                    ),
                    _ => None,
                })
                .chain(ids.iter().filter_map(|s| self.regional_ids.get(s).cloned()));
            for r in held_regions {
                regions.insert(r, msg.kind());
            }
        }
        // ...and any byte of a scoped site's details, whatever the message:
        // the marker in a health detail of its detailed status, then its index.
        let m = SCOPE_MARKER_TEXT.as_bytes();
        for at in memchr::memmem::find_iter(bytes, m) {
            if let Some(o) = bytes
                .get(at + m.len()..at + m.len() + 5)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse::<usize>().ok())
                .filter(|o| *o < self.slots.len())
            {
                named.entry(o).or_insert("bytes of the details");
            }
        }
        // ...and any byte of a regional policy value: its marker, then the
        // region's name up to `-`.
        let m = REGIONAL_MARKER_TEXT.as_bytes();
        for at in memchr::memmem::find_iter(bytes, m) {
            let rest = &bytes[at + m.len()..bytes.len().min(at + m.len() + 24)];
            if let Some(r) = rest
                .iter()
                .position(|&b| b == b'-')
                .and_then(|end| std::str::from_utf8(&rest[..end]).ok())
            {
                regions.entry(r.to_string()).or_insert("bytes of the value");
            }
        }
        for (r, what) in regions {
            if !self.may_hold_region(to, &r) && self.scope_leaks.len() < 100 {
                self.scope_leaks.push(Violation(format!(
                    "node {from} sent node {to} ({}) {what} of region {r}'s scoped policy at {} ms",
                    self.sc.region_of(to),
                    self.now
                )));
            }
        }
        for (o, what) in named {
            if !self.may_hold(to, o) && self.scope_leaks.len() < 100 {
                self.scope_leaks.push(Violation(format!(
                    "node {from} sent node {to} ({}) {what} of node {o}'s status, scoped to {}, at {} ms",
                    self.sc.region_of(to),
                    self.sc.region_of(o),
                    self.now
                )));
            }
        }
    }

    /// The scope checker, at the store: an honest node outside a scoped
    /// region never holds its status, nor outside a region its scoped
    /// policy; the owner's changes are remembered by short id for the wire
    /// check.
    fn check_scope_held(&mut self, i: usize, c: &SignedChange) {
        if let DocId::Region { region } = c.doc {
            let name = self
                .region_name(&region)
                .map_or_else(|| format!("id {}", region.short()), str::to_string);
            if self.slots[i].honest
                && !self.may_hold_region(i, &name)
                && self.scope_leaks.len() < 100
            {
                self.scope_leaks.push(Violation(format!(
                    "node {i} ({}) holds a change of region {name}'s scoped policy at {} ms",
                    self.sc.region_of(i),
                    self.now
                )));
            }
            return;
        }
        let DocId::Status { node, .. } = c.doc else {
            return;
        };
        let Some(&owner) = self.index.get(&node) else {
            return;
        };
        if !self.sc.scoped(owner) {
            return;
        }
        if owner == i
            && let Ok(h) = c.hash()
        {
            let mut s = [0u8; 8];
            s.copy_from_slice(&h.0[..8]);
            self.scoped_ids.insert(s, owner);
        }
        if self.slots[i].honest && !self.may_hold(i, owner) && self.scope_leaks.len() < 100 {
            self.scope_leaks.push(Violation(format!(
                "node {i} ({}) holds a status change of node {owner}, scoped to {}, at {} ms",
                self.sc.region_of(i),
                self.sc.region_of(owner),
                self.now
            )));
        }
    }

    fn send(&mut self, from: usize, to: NodeId, bytes: Vec<u8>) {
        let Some(&to) = self.index.get(&to) else {
            return;
        };
        if self.trace.contains(&from) {
            eprintln!("{} ms: {from} -> {to}: {}", self.now, self.describe(&bytes));
        }
        if self.slots[from].honest && self.scope_checked {
            self.check_scope_sent(from, to, &bytes);
        }
        if self.slots[from].honest {
            let to_amplifier = self.slots[to]
                .malicious
                .is_some_and(|m| self.sc.malicious[m].want_amplifier > 0);
            let len = bytes.len() as u64;
            if to_amplifier {
                *self.amplifier_bytes.entry((from, to)).or_default() += len;
            } else if self.slots[to].honest {
                *self.honest_link_bytes.entry((from, to)).or_default() += len;
            }
        }
        if let Some(m) = self.slots[from].malicious
            && self.sc.malicious[m].withhold
            && matches!(
                Message::decode(&bytes, &self.config.wire),
                Ok(Message::Changes { .. })
            )
        {
            return;
        }
        self.transmit(from, to, bytes);
    }

    /// The network: latency, loss, duplication, reordering, partitions.
    fn transmit(&mut self, from: usize, to: usize, mut bytes: Vec<u8>) {
        let Some(link) = self.links.get(&(from, to)).copied() else {
            return;
        };
        if !self.connected(from, to) || !self.live(to) || self.cut(from, to) {
            return;
        }
        let lm = &self.sc.link;
        let (jitter, reorder, reorder_delay, dup) =
            (lm.jitter_ms, lm.reorder, lm.reorder_delay_ms, lm.duplicate);
        if self.rng.random_bool(link.loss) {
            return;
        }
        let copies = if self.rng.random_bool(dup) { 2 } else { 1 };
        let incarnation = self.slots[to].incarnation;
        for c in 0..copies {
            let mut delay = link.latency_ms + self.rng.random_range(0..=jitter);
            if self.rng.random_bool(reorder) {
                delay += self.rng.random_range(0..=reorder_delay);
            }
            let bytes = if c + 1 == copies {
                std::mem::take(&mut bytes)
            } else {
                bytes.clone()
            };
            self.push(
                self.now + delay,
                Ev::Deliver {
                    to,
                    from,
                    bytes,
                    incarnation,
                },
            );
        }
    }

    /// A malicious node acts: forged and tampered changes, replays, garbage.
    fn malice(&mut self, m: usize) {
        let spec = self.sc.malicious[m].clone();
        let i = spec.node;
        if !self.live(i) {
            return;
        }
        let peers: Vec<usize> = self.adj[i]
            .iter()
            .copied()
            .filter(|&b| self.connected(i, b))
            .collect();
        let key = self.slots[i].key.clone();
        let mut batch: Vec<SignedChange> = Vec::new();
        if spec.forge {
            // A policy change signed by a node key.
            let mut ed = PolicyEditor::new(std::slice::from_ref(&self.bootstrap)).expect("base");
            ed.push(Edit::Set(
                Level::Fleet,
                format!("evil.{}", self.now),
                serde_json::json!("owned"),
            ))
            .expect("edit");
            let actor = actor_with_nonce(&key.public(), self.nonces.random());
            batch.push(ed.finish_as(&key, 1, actor).expect("signed"));
            // A status change of another node, signed by this one.
            let victim = (i + 1) % self.sc.nodes;
            let mut w = StatusWriter::seeded(
                key.clone(),
                1_000 + self.now as u32,
                4,
                self.nonces.random(),
            );
            let mut c = w.heartbeat();
            c.doc = DocId::Status {
                node: self.slots[victim].key.public(),
                epoch: 1_000 + self.now as u32,
            };
            batch.push(c);
            // A real policy change with one byte flipped.
            let mut t = self.bootstrap.clone();
            let mid = t.change.len() / 2;
            t.change[mid] ^= 0x40;
            batch.push(t);
            self.forged.extend(batch.iter().cloned());
        }
        if spec.want_amplifier > 0
            && let Some(e) = &self.slots[i].engine
        {
            let items: Vec<Item> = e
                .replica()
                .docs()
                .into_iter()
                .map(|(doc, _)| Item {
                    doc,
                    heads: Vec::new(),
                })
                .collect();
            let want = Message::Want { items }.encode();
            let sync = Message::Sync {
                root_version: 1,
                depth: 0,
                splits: Vec::new(),
                items: vec![RangeItems {
                    lo: 0,
                    hi: u64::MAX,
                    items: Vec::new(),
                    reply: true,
                }],
            }
            .encode();
            let asks: Vec<Vec<u8>> = (0..spec.want_amplifier)
                .map(|k| {
                    if k % 2 == 0 {
                        want.clone()
                    } else {
                        sync.clone()
                    }
                })
                .collect();
            for &b in &peers {
                for ask in &asks {
                    self.transmit(i, b, ask.clone());
                }
            }
        }
        if spec.replay
            && let Some(e) = &self.slots[i].engine
        {
            batch.extend(e.replica().all_changes().take(16).cloned());
        }
        // Epochs of the hostile status documents: above this node's own
        // (within the replicas' jump bound), a fresh one each time.
        self.malice_ticks += 1;
        let tick = self.malice_ticks as u32;
        if spec.bomb {
            batch.push(hostile::compressed_status_change(
                &key,
                100 + tick,
                self.nonces.random(),
            ));
        }
        if spec.far_future_flood > 0 {
            let from = 200_000 + tick * spec.far_future_flood as u32;
            batch.extend(hostile::far_future_pending(
                &key,
                from,
                spec.far_future_flood,
                self.nonces.random(),
            ));
        }
        let mut per_peer: Vec<Vec<SignedChange>> = vec![Vec::new(); peers.len()];
        if spec.epoch_splitter {
            let max = self.limits.status_epoch_changes_max;
            let all = hostile::sibling_status_changes(&key, 100 + tick, 100, self.nonces.random());
            for (j, subset) in per_peer.iter_mut().enumerate() {
                let off = 1 + (j * 17) % (all.len() - max);
                subset.push(all[0].clone());
                subset.extend(all[off..off + max - 1].iter().cloned());
            }
        }
        let mut msgs: Vec<Vec<u8>> = Vec::new();
        if !batch.is_empty() {
            msgs.push(
                Message::Changes {
                    push: Push::Eager,
                    changes: batch,
                }
                .encode(),
            );
        }
        for _ in 0..spec.flood {
            let len = self.rng.random_range(1..64usize);
            let mut junk: Vec<u8> = (0..len).map(|_| self.rng.random::<u8>()).collect();
            junk[0] = 1;
            msgs.push(junk);
        }
        for (j, b) in peers.into_iter().enumerate() {
            for msg in &msgs {
                self.transmit(i, b, msg.clone());
            }
            let own = std::mem::take(&mut per_peer[j]);
            if !own.is_empty() {
                let msg = Message::Changes {
                    push: Push::Eager,
                    changes: own,
                }
                .encode();
                self.transmit(i, b, msg);
            }
        }
    }

    /// Memory bound: every honest replica holds at most
    /// `status_epoch_changes_max + 1` changes per status document (the +1 is
    /// the evidence of a void epoch) and at most the pending bound; recorded
    /// as peaks for the report, and a violation past the bound.
    fn check_memory(&mut self) {
        let per_doc = self.limits.status_epoch_changes_max + 1;
        for i in 0..self.slots.len() {
            let Some(e) = &self.slots[i].engine else {
                continue;
            };
            if !self.slots[i].honest {
                continue;
            }
            let r = e.replica();
            let st = r.stats();
            let status_changes = st.status_changes;
            self.peak_pending = self.peak_pending.max(st.pending);
            self.void_seen = self.void_seen.max(st.void_epochs);
            let bound_pending = self.limits.pending_changes_max;
            if st.pending > bound_pending || status_changes > per_doc * st.status_docs {
                self.safety.push(Violation(format!(
                    "node {i} at {} ms holds {} status changes over {} documents and {} pending: over the bounds ({per_doc} per document, {bound_pending} pending)",
                    self.now, status_changes, st.status_docs, st.pending
                )));
            }
        }
    }

    fn digest(&self, i: usize) -> u64 {
        let engine = self.slots[i].engine.as_ref().expect("live");
        let (count, fp) = engine.state_fingerprint();
        fp ^ u64::from(count).rotate_left(32)
    }

    /// The digest of what every node holds alike: all but scoped status.
    fn shared_digest(&self, i: usize) -> u64 {
        let engine = self.slots[i].engine.as_ref().expect("live");
        let (count, fp) = engine.shared_fingerprint();
        fp ^ u64::from(count).rotate_left(32)
    }

    /// The nodes that must hold the same documents as node `i`: its
    /// region's members if some of the region's data stays in it (scoped
    /// status, or scoped policy), else every node outside such regions.
    /// Nodes of different classes agree on `shared_digest`.
    fn class_of(&self, i: usize) -> Option<String> {
        let r = self.sc.region_of(i);
        (self.enrolled[i] && self.sc.keeps_data(&r)).then_some(r)
    }

    /// Which nodes differ from the majority, and how (with scoped regions:
    /// in the shared documents, else within the first class that differs).
    fn divergence(&self, live: &[usize]) -> String {
        let mut by_shared: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for &i in live {
            by_shared.entry(self.shared_digest(i)).or_default().push(i);
        }
        let mut classes: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for &i in live {
            classes.entry(self.class_of(i)).or_default().push(i);
        }
        if by_shared.len() > 1 || classes.len() > 1 {
            let odd_class = classes.iter().find(|(_, v)| {
                let d = self.digest(v[0]);
                v.iter().any(|&i| self.digest(i) != d)
            });
            let (what, group): (String, Vec<usize>) = match odd_class {
                Some((c, v)) if by_shared.len() == 1 => (
                    format!("within class {}", c.as_deref().unwrap_or("unscoped")),
                    v.clone(),
                ),
                _ => ("in the shared documents".into(), live.to_vec()),
            };
            if what.starts_with("within") {
                return format!("{what}: {}", self.divergence_of(&group, |i| self.digest(i)));
            }
            return format!(
                "{what}: {}",
                self.divergence_of(&group, |i| self.shared_digest(i))
            );
        }
        self.divergence_of(live, |i| self.digest(i))
    }

    fn divergence_of(&self, live: &[usize], digest: impl Fn(usize) -> u64) -> String {
        let mut by_digest: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for &i in live {
            by_digest.entry(digest(i)).or_default().push(i);
        }
        let majority = by_digest
            .values()
            .max_by_key(|v| v.len())
            .cloned()
            .unwrap_or_default();
        let odd: Vec<usize> = by_digest
            .values()
            .filter(|v| **v != majority)
            .flatten()
            .copied()
            .collect();
        let detail = match (majority.first(), odd.first()) {
            (Some(&m), Some(&o)) => self.difference(m, o),
            _ => String::new(),
        };
        format!(
            "{} distinct states among {} nodes; odd nodes {:?}; {}",
            by_digest.len(),
            live.len(),
            &odd[..odd.len().min(10)],
            detail
        )
    }

    /// The first document on which nodes `a` and `b` differ, for the report.
    fn difference(&self, a: usize, b: usize) -> String {
        let docs = |i: usize| -> BTreeMap<DocId, Vec<ChangeHash>> {
            self.slots[i]
                .engine
                .as_ref()
                .map(|e| e.replica().docs().into_iter().collect())
                .unwrap_or_default()
        };
        let (da, db) = (docs(a), docs(b));
        for (d, h) in &da {
            if db.get(d) != Some(h) {
                let ra = self.slots[a].engine.as_ref().map(|e| e.replica());
                let rb = self.slots[b].engine.as_ref().map(|e| e.replica());
                let knows = |r: Option<&Replica>, hs: &[ChangeHash]| {
                    r.is_some_and(|r| hs.iter().all(|x| r.contains(d, x)))
                };
                let hb = db.get(d).cloned().unwrap_or_default();
                return format!(
                    "node {a} holds {d} with heads {h:?}, node {b} {hb:?}; {a} knows {b}'s: {}, {b} knows {a}'s: {}; pending {} / {}",
                    knows(ra, &hb),
                    knows(rb, h),
                    ra.map_or(0, |r| r.stats().pending),
                    rb.map_or(0, |r| r.stats().pending),
                );
            }
        }
        for d in db.keys() {
            if !da.contains_key(d) {
                return format!("node {b} holds {d}, node {a} lacks it");
            }
        }
        "no difference in documents".into()
    }

    /// After the last heal, how many live honest nodes did not yet hold the
    /// final state, at each check (every 500 ms of it, and the last).
    fn heal_curve(&self) -> Vec<(u64, usize)> {
        let n = self.heal_samples.len();
        self.heal_behind()
            .into_iter()
            .enumerate()
            .filter(|(k, (t, _))| *k + 1 == n || t.is_multiple_of(500))
            .map(|(_, (t, behind))| (t, behind.len()))
            .collect()
    }

    /// The nodes behind in the last heal sample before the final state
    /// (at most 8).
    fn heal_last_nodes(&self) -> Vec<usize> {
        let mut out = self
            .heal_behind()
            .into_iter()
            .rev()
            .map(|(_, behind)| behind)
            .find(|b| !b.is_empty())
            .unwrap_or_default();
        out.truncate(8);
        out
    }

    /// Each heal sample: (ms after the last heal, the live nodes not yet
    /// holding the final state). Each node is judged against the final
    /// state of its class (with scoped regions, the classes end in
    /// different states): that of the class's first node in the last sample.
    fn heal_behind(&self) -> Vec<(u64, Vec<usize>)> {
        let Some((_, last)) = self.heal_samples.last() else {
            return Vec::new();
        };
        let mut finals: HashMap<Option<String>, u64> = HashMap::new();
        for &(i, d) in last {
            finals.entry(self.class_of(i)).or_insert(d);
        }
        self.heal_samples
            .iter()
            .map(|(t, ds)| {
                let behind = ds
                    .iter()
                    .filter(|(i, d)| finals.get(&self.class_of(*i)) != Some(d))
                    .map(|(i, _)| *i)
                    .collect();
                (t - self.last_heal, behind)
            })
            .collect()
    }

    /// All of `live` hold the same shared documents, and the nodes of
    /// each class (see `class_of`) the same documents.
    fn agree(&self, live: &[usize]) -> bool {
        let shared = live.first().map(|&i| self.shared_digest(i));
        if !live.iter().all(|&i| Some(self.shared_digest(i)) == shared) {
            return false;
        }
        let mut by_class: BTreeMap<Option<String>, u64> = BTreeMap::new();
        for &i in live {
            let d = self.digest(i);
            if *by_class.entry(self.class_of(i)).or_insert(d) != d {
                return false;
            }
        }
        true
    }

    /// Liveness: all live honest nodes hold identical documents (with
    /// scoped regions: identical shared documents, and identical documents
    /// within each class).
    fn check_liveness(&mut self) {
        if self.converged_at.is_some() {
            return;
        }
        let live: Vec<usize> = (0..self.sc.nodes)
            .filter(|&i| self.live(i) && self.slots[i].honest)
            .collect();
        let digests: Vec<(usize, u64)> = live
            .iter()
            .map(|&i| (i, self.digest(i) ^ self.shared_digest(i).rotate_left(17)))
            .collect();
        if self.last_heal != u64::MAX && self.now >= self.last_heal {
            self.heal_samples.push((self.now, digests.clone()));
        }
        let gap = self.regional_gap(&live);
        if gap.is_none() && self.agree(&live) {
            self.converged_at = Some(self.now);
            return;
        }
        if self.liveness_diag.is_none() && self.now >= self.last_heal + self.sc.liveness_bound_ms {
            self.liveness_diag = Some(gap.unwrap_or_else(|| self.divergence(&live)));
        }
        self.push(self.now + self.sc.check_interval_ms, Ev::Check);
    }

    /// Regional liveness: the first live honest site in `live` that does
    /// not hold every change of its region's scoped policy its policy
    /// commits to, or whose effective config lacks the value of a
    /// published regional change; `None` when there is none.
    fn regional_gap(&self, live: &[usize]) -> Option<String> {
        let k0 = self.sc.policy.len();
        for (j, rc) in self.regional.iter().enumerate() {
            if self.tracked[k0 + 2 * j].published_at.is_none() {
                continue;
            }
            let pointer = format!("/{}", rc.path.replace('.', "/"));
            for &i in live {
                if !self.may_hold_region(i, &rc.region) {
                    continue;
                }
                let Some(e) = &self.slots[i].engine else {
                    continue;
                };
                let r = e.replica();
                let missing = r.regional_missing(&rc.region);
                if missing > 0 {
                    return Some(format!(
                        "node {i} ({}) misses {missing} committed changes of its region's scoped policy",
                        rc.region
                    ));
                }
                let me = self.slots[i].key.public();
                let value = r
                    .effective_config(&me)
                    .and_then(|c| c.pointer(&pointer).cloned());
                if value.as_ref() != Some(&rc.value) {
                    return Some(format!(
                        "node {i} ({})'s effective config has {value:?} at {}, not regional change {j}'s {}",
                        rc.region, rc.path, rc.value
                    ));
                }
            }
        }
        None
    }

    /// A crashed node starts again (or the run ends): its detection times
    /// become samples, and each live honest observer that never marked it
    /// down a miss.
    fn close_detection(&mut self, b: usize, crashed: u64) {
        // A crash shorter than twice the stale bound need not be detected
        // by everyone: only the detections made count.
        let long = self.now >= crashed + self.config.stale_after_ms() * 2;
        for o in 0..self.sc.nodes {
            // Observers live over the whole crash.
            if o == b
                || !self.slots[o].honest
                || !self.live(o)
                || !self.enrolled[o]
                || self.started_at[o] > crashed
            {
                continue;
            }
            match self.detections.remove(&(b, o)) {
                Some(ms) => self.detection_samples.push(ms),
                None if long => {
                    let held = self.slots[o]
                        .engine
                        .as_ref()
                        .and_then(|e| e.liveness(&self.slots[b].key.public()));
                    // Already held down before it crashed (from across a
                    // partition): nothing to detect.
                    if held.is_some_and(|l| l.state == MemberState::Down) {
                        continue;
                    }
                    // Suspected and counting down (a suspicion that reached
                    // it late, after a heal): in progress, not missed.
                    if held.is_some_and(|l| l.state == MemberState::Suspect) {
                        continue;
                    }
                    self.detection_missed += 1;
                    if self.config.membership.enabled && self.membership_findings.len() < 100 {
                        self.membership_findings.push(Violation(format!(
                            "node {o} never marked node {b}, crashed at {crashed} ms, down (by {} ms; it holds {held:?})",
                            self.now
                        )));
                    }
                }
                None => {}
            }
        }
        self.detections.retain(|(s, _), _| *s != b);
        self.down_incarnation.retain(|(s, _), _| *s != b);
        // Late refutations still shown: an observer must suspect the node
        // again within two suspicion timeouts.
        let mut open: Vec<(usize, u64)> = self
            .relapses
            .iter()
            .filter(|((s, _), _)| *s == b)
            .map(|((_, o), t)| (*o, *t))
            .collect();
        open.sort_unstable();
        for (o, t) in open {
            self.relapses.remove(&(b, o));
            let bound = 2 * self.config.membership.suspicion_timeout_max_ms;
            if self.live(o) && self.now > t + bound {
                self.end_relapse(b, o, t, "and had not suspected it again by");
            }
        }
    }

    /// Observer `o` stopped showing crashed node `b` alive on a late
    /// refutation shown since `t` (suspected again, or `b` came back): a
    /// sample, and a finding if that took over two suspicion timeouts.
    fn end_relapse(&mut self, b: usize, o: usize, t: u64, ended: &str) {
        self.relapse_samples.push(self.now - t);
        let bound = 2 * self.config.membership.suspicion_timeout_max_ms;
        if self.now > t + bound && self.membership_findings.len() < 100 {
            self.membership_findings.push(Violation(format!(
                "node {o} showed crashed node {b} alive from {t} ms (a late refutation of its last life) {ended} {} ms",
                self.now
            )));
        }
    }

    fn finish(mut self) -> RunResult {
        let n = self.sc.nodes;
        // Crashes still in force at the end: those that lasted long enough
        // to be detected (twice the stale bound) count; shorter ones only
        // by the detections made.
        for b in 0..n {
            if let Some(t) = self.crashed_at[b] {
                self.close_detection(b, t);
            }
        }
        let membership = self.config.membership.enabled.then(|| {
            let mut v = self.detection_samples.clone();
            v.sort_unstable();
            let q = |f: f64| -> Option<u64> {
                (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * f).round() as usize])
            };
            MembershipReport {
                detections: v.len() as u64,
                detection_median_ms: q(0.5),
                detection_p99_ms: q(0.99),
                detection_max_ms: v.last().copied(),
                detection_missed: self.detection_missed,
                false_downs: self.false_downs,
                member_events: self.member_events,
                late_refutations: self.late_refutations,
                late_refutation_max_ms: self.relapse_samples.iter().max().copied(),
            }
        });
        let honest_live: Vec<usize> = (0..n)
            .filter(|&i| self.live(i) && self.slots[i].honest)
            .collect();
        // The checks above use the engines' own fingerprints; confirm them
        // once against the replicas' documents.
        let docs_differ = self.converged_at.is_some() && {
            let docs = |i: usize| self.slots[i].engine.as_ref().map(|e| e.replica().docs());
            let shared = |i: usize| {
                docs(i).map(|ds| {
                    ds.into_iter()
                        .filter(|(d, _)| match d {
                            DocId::Status { node, .. } => {
                                self.index.get(node).is_none_or(|&o| !self.sc.scoped(o))
                            }
                            DocId::Region { .. } => false,
                            _ => true,
                        })
                        .collect::<Vec<_>>()
                })
            };
            let first = honest_live.first().and_then(|&i| shared(i));
            let mut by_class: BTreeMap<Option<String>, usize> = BTreeMap::new();
            honest_live.iter().any(|&i| {
                let c = *by_class.entry(self.class_of(i)).or_insert(i);
                shared(i) != first || docs(i) != docs(c)
            })
        };
        // Liveness.
        let regional_gap = self
            .converged_at
            .and_then(|_| self.regional_gap(&honest_live));
        let liveness = if docs_differ {
            Some(Violation(format!(
                "engine fingerprints agree but replicas differ at the end: {}",
                self.divergence(&honest_live)
            )))
        } else if let Some(gap) = regional_gap {
            Some(Violation(format!(
                "a region's scoped policy is incomplete at the end: {gap}"
            )))
        } else if self.last_heal == u64::MAX {
            None
        } else if self.last_heal + self.sc.liveness_bound_ms > self.sc.duration_ms {
            Some(Violation(format!(
                "the run ends before the liveness bound ({} + {} ms)",
                self.last_heal, self.sc.liveness_bound_ms
            )))
        } else {
            match self.converged_at {
                Some(t) if t <= self.last_heal + self.sc.liveness_bound_ms => None,
                Some(t) => Some(Violation(format!(
                    "converged {} ms after the last heal, over the {} ms bound; at the bound: {}",
                    t - self.last_heal,
                    self.sc.liveness_bound_ms,
                    self.liveness_diag.as_deref().unwrap_or("-")
                ))),
                None => Some(Violation(format!(
                    "live nodes did not converge within {} ms of the last heal: {}",
                    self.sc.liveness_bound_ms,
                    self.divergence(&honest_live)
                ))),
            }
        };
        // Policy propagation.
        let mut policy = Vec::new();
        for t in &self.tracked {
            let Some(t0) = t.published_at else {
                continue;
            };
            // A regional change over its region's sites only.
            let over: Vec<usize> = honest_live
                .iter()
                .copied()
                .filter(|&i| t.region.as_ref().is_none_or(|r| self.may_hold_region(i, r)))
                .collect();
            let mut times: Vec<u64> = over
                .iter()
                .filter_map(|&i| t.held_at[i].map(|x| x.saturating_sub(t0)))
                .collect();
            times.sort();
            let of = over.len();
            let pct = |q: f64| -> Option<u64> {
                let need = ((q * of as f64).ceil() as usize).max(1);
                times.get(need - 1).copied()
            };
            let lower = self.lower_bound(t.origin, &over, t.region.as_deref());
            let t100 = if times.len() == of {
                times.last().copied()
            } else {
                None
            };
            policy.push(PolicyReport {
                region: t.region.clone(),
                origin: t.origin,
                published_at_ms: t0,
                reached: times.len(),
                of,
                t50_ms: pct(0.5),
                t99_ms: pct(0.99),
                t9999_ms: pct(0.9999),
                t100_ms: t100,
                lower_bound_ms: lower,
                ratio: t100.map(|x| x as f64 / lower.max(1) as f64),
                curve: times,
            });
        }
        // Traffic over the measurement window.
        let mut window = EngineStats::default();
        let mut total = EngineStats::default();
        let mut counted = 0usize;
        // (bytes, sites) received outside and inside the scoped regions.
        let mut classes = [(0u64, 0usize); 2];
        for (i, s) in self.slots.iter().enumerate() {
            if !s.honest || !s.started {
                continue;
            }
            let mut all = s.stats_dead.clone();
            if let Some(e) = &s.engine {
                add_stats(&mut all, &e.stats());
            }
            let w = sub_stats(&all, &s.stats_base);
            let c = &mut classes[usize::from(self.sc.in_scoped_region(i))];
            c.0 += w.bytes_received;
            c.1 += 1;
            add_stats(&mut window, &w);
            add_stats(&mut total, &all);
            counted += 1;
        }
        let secs = (self.sc.duration_ms - self.counters_reset_at).max(1) as f64 / 1000.0;
        let per = |x: u64| x as f64 / counted.max(1) as f64 / secs;
        let traffic = Traffic {
            window_ms: self.sc.duration_ms - self.counters_reset_at,
            bytes_sent_per_node_s: per(window.bytes_sent),
            bytes_received_per_node_s: per(window.bytes_received),
            messages_sent_per_node_s: per(window.messages_sent),
            messages_received_per_node_s: per(window.messages_received),
            duplication_ratio: window.bytes_received as f64
                / window.new_change_bytes_received.max(1) as f64,
            change_copies: window.change_bytes_received as f64
                / window.new_change_bytes_received.max(1) as f64,
            rumour_news: window.new_rumour_bytes_received as f64
                / window.new_change_bytes_received.max(1) as f64,
            new_change_bytes_per_node: window.new_change_bytes_received as f64
                / counted.max(1) as f64,
            received_by_kind: window
                .bytes_received_by_kind
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        *v as f64 / window.new_change_bytes_received.max(1) as f64,
                    )
                })
                .collect(),
        };
        // Amplification: what an honest node sends a peer that asks for
        // everything, over and over, is bounded by its answer budget (burst
        // and refill over the run) plus what it sends any honest peer anyway.
        let amplifier_bytes_max = self.amplifier_bytes.values().max().copied();
        let amplifier_bytes_bound = amplifier_bytes_max.map(|_| {
            let c = &self.config;
            c.answer_burst_bytes
                + c.answer_refill_bytes_per_s * self.sc.duration_ms / 1000
                + self.honest_link_bytes.values().max().copied().unwrap_or(0)
        });
        let mut amplification = Vec::new();
        if let (Some(max), Some(bound)) = (amplifier_bytes_max, amplifier_bytes_bound) {
            for (&(from, to), &bytes) in &self.amplifier_bytes {
                if bytes > bound {
                    amplification.push(Violation(format!(
                        "honest node {from} sent {bytes} bytes to want_amplifier {to}, over the bound {bound} (max {max})"
                    )));
                }
            }
        }
        let class_rate = |c: (u64, usize)| c.0 as f64 / c.1.max(1) as f64 / secs;
        let mut regional_regions: Vec<String> = self
            .sc
            .regional_policy
            .iter()
            .map(|e| e.region.clone())
            .collect();
        regional_regions.sort();
        regional_regions.dedup();
        let scope =
            (!self.sc.scoped_regions.is_empty() || !regional_regions.is_empty()).then(|| {
                ScopeReport {
                    scoped_regions: self.sc.scoped_regions.clone(),
                    regional_regions,
                    regional_changes: self
                        .tracked
                        .iter()
                        .filter(|t| t.region.is_some() && t.published_at.is_some())
                        .count(),
                    leaks: self.scope_leaks.iter().map(|v| v.0.clone()).collect(),
                    gate_withheld: total.scope_withheld,
                    bytes_received_per_site_s: traffic.bytes_received_per_node_s,
                    unscoped_bytes_received_per_site_s: None,
                    saved_fraction: None,
                    outside_bytes_per_site_s: class_rate(classes[0]),
                    inside_bytes_per_site_s: class_rate(classes[1]),
                    unscoped_outside_bytes_per_site_s: None,
                    unscoped_inside_bytes_per_site_s: None,
                }
            });
        let report = Report {
            scope,
            scenario: self.sc.name.clone(),
            seed: self.seed,
            nodes: n,
            duration_ms: self.sc.duration_ms,
            events: self.events,
            policy,
            traffic,
            last_heal_ms: (self.last_heal != u64::MAX).then_some(self.last_heal),
            convergence_after_heal_ms: self.converged_at.map(|t| t - self.last_heal),
            heal_curve: self.heal_curve(),
            heal_last_nodes: self.heal_last_nodes(),
            anti_entropy_rounds: total.anti_entropy_rounds,
            sync_retries: total.sync_retries,
            sync_ranges_held: total.sync_ranges_held,
            changes_received_eager: window.eager_changes_received,
            changes_received_reply: window.reply_changes_received,
            reply_duplicates: window.reply_duplicates_received,
            grafts: window.grafts_sent,
            prunes: window.prunes_sent,
            rejected: total
                .rejected
                .iter()
                .map(|(k, v)| (k.label().to_string(), *v))
                .collect(),
            malformed_messages: total.malformed_messages,
            misbehaviour_events: self.misbehaved_events,
            disconnects: self.disconnects,
            peak_pending: self.peak_pending,
            void_epochs: self.void_seen,
            safety_violations: self.safety.iter().map(|v| v.0.clone()).collect(),
            liveness_failure: liveness.as_ref().map(|v| v.0.clone()),
            link_model_violations: self.model.iter().map(|v| v.0.clone()).collect(),
            requests_refused: total.requests_refused,
            answer_bytes_sent: total.answer_bytes_sent,
            amplifier_bytes_max,
            amplifier_bytes_bound,
            amplification_violations: amplification.iter().map(|v| v.0.clone()).collect(),
            membership,
            membership_violations: self
                .membership_findings
                .iter()
                .map(|v| v.0.clone())
                .collect(),
            probes_sent: total.probes_sent,
            rumours_verified: total.rumours_verified,
            suspicions_raised: total.suspicions_raised,
            refutations: total.refutations,
        };
        self.safety.truncate(100);
        RunResult {
            report,
            safety: self.safety,
            liveness,
            model: self.model,
            membership: self.membership_findings,
            amplification,
            scope: self.scope_leaks,
        }
    }

    /// The slowest shortest path (by base link latency) from `origin` to the
    /// nodes in `to` (through sites of region `within` only, if given: a
    /// region's scoped policy travels only between them): no protocol can
    /// beat it.
    fn lower_bound(&self, origin: usize, to: &[usize], within: Option<&str>) -> u64 {
        let n = self.sc.nodes;
        let mut dist = vec![u64::MAX; n];
        let mut heap = BinaryHeap::new();
        dist[origin] = 0;
        heap.push(Reverse((0u64, origin)));
        while let Some(Reverse((d, a))) = heap.pop() {
            if d > dist[a] {
                continue;
            }
            for &b in &self.adj[a] {
                if within.is_some_and(|r| !self.may_hold_region(b, r)) {
                    continue;
                }
                let nd = d + self.links[&(a, b)].latency_ms;
                if nd < dist[b] {
                    dist[b] = nd;
                    heap.push(Reverse((nd, b)));
                }
            }
        }
        to.iter()
            .map(|&i| dist[i])
            .filter(|d| *d != u64::MAX)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The link checker catches a link model that the engines were not told
    /// about (here: a link taken down behind their backs).
    #[test]
    fn link_checker_reports_a_model_mismatch_with_the_seed() {
        let sc = Scenario::parse(
            "name = \"t\"\nnodes = 12\nduration_ms = 3000\n\
             [[partition]]\nfrom_ms = 1000\nuntil_ms = 2000\nfraction = 0.3\n",
            "inline",
        )
        .expect("valid");
        let mut sim = Sim::new(sc.clone(), 42);
        sim.advance(1500, &mut |_| {});
        sim.check_links("a healthy run");
        assert!(sim.model.is_empty(), "{:?}", sim.model);
        let (a, b) = (0..sim.sc.nodes)
            .flat_map(|a| sim.adj[a].iter().map(move |&b| (a, b)))
            .find(|&(a, b)| sim.connected(a, b) && sim.live(a) && sim.live(b))
            .expect("an up link");
        sim.down_links.insert((a.min(b), a.max(b)));
        sim.check_links("a tampered model");
        assert_eq!(sim.model.len(), 1);
        assert!(sim.model[0].0.contains("seed 42"), "{}", sim.model[0].0);
        // The same at a heal, through a whole run.
        let mut sim = Sim::new(sc, 42);
        sim.advance(1500, &mut |_| {});
        sim.down_links.insert((a.min(b), a.max(b)));
        let r = sim.run(|_| {});
        assert!(!r.ok());
        assert!(
            r.model[0].0.contains("end of partition 0"),
            "{}",
            r.model[0].0
        );
    }

    /// The membership checker: a crashed node shown alive again at the
    /// incarnation an observer marked it down at is a violation; shown at
    /// one above it that the node reached before it crashed, a late
    /// refutation, counted, which fails the run if the observer does not
    /// suspect the node again within two suspicion timeouts.
    #[test]
    fn membership_checker_tells_a_late_refutation_from_a_fault() {
        let sc = Scenario::parse("name = \"t\"\nnodes = 12\nduration_ms = 120000\n", "inline")
            .expect("valid");
        let mut sim = Sim::new(sc, 5);
        sim.advance(2_000, &mut |_| {});
        let b = 3;
        sim.crash(b);
        let bound = 2 * sim.config.membership.suspicion_timeout_max_ms;
        sim.advance(4_000 + bound, &mut |_| {});
        assert!(
            sim.membership_findings.is_empty(),
            "{:?}",
            sim.membership_findings
        );
        let o = (0..12)
            .find(|&o| sim.detections.contains_key(&(b, o)))
            .expect("an observer marked the crashed node down");
        let node = sim.slots[b].key.public();
        let held = sim.slots[o]
            .engine
            .as_ref()
            .and_then(|e| e.liveness(&node))
            .expect("held")
            .incarnation;
        assert_eq!(sim.down_incarnation.get(&(b, o)), Some(&held));
        // Alive at the incarnation marked down: a fault.
        sim.event(
            o,
            Event::Member {
                node,
                state: MemberState::Alive,
            },
        );
        assert_eq!(sim.membership_findings.len(), 1);
        assert!(
            sim.membership_findings[0].0.contains("alive again")
                && sim.membership_findings[0]
                    .0
                    .contains(&format!("at incarnation {held}")),
            "{}",
            sim.membership_findings[0].0
        );
        assert_eq!(sim.late_refutations, 0);
        // Above the one marked down, within the node's last life: late.
        sim.down_incarnation.insert((b, o), held - 1);
        sim.crash_incarnation[b] = held;
        sim.event(
            o,
            Event::Member {
                node,
                state: MemberState::Alive,
            },
        );
        assert_eq!(sim.membership_findings.len(), 1, "not a violation");
        assert_eq!(sim.late_refutations, 1);
        // Above anything the node signed: a fault.
        sim.crash_incarnation[b] = held - 1;
        sim.down_incarnation.insert((b, o), held - 2);
        sim.event(
            o,
            Event::Member {
                node,
                state: MemberState::Alive,
            },
        );
        assert_eq!(sim.membership_findings.len(), 2);
        // The late refutation is still shown two suspicion timeouts on,
        // when the node starts again: the run fails.
        let now = sim.now;
        sim.advance(now + bound + 1_000, &mut |_| {});
        sim.start(b, false);
        assert_eq!(sim.membership_findings.len(), 3);
        assert!(
            sim.membership_findings[2]
                .0
                .contains("had not suspected it again"),
            "{}",
            sim.membership_findings[2].0
        );
    }

    /// The scope checker catches an honest node handing the network a
    /// scoped status, or its short id, for a site outside its region.
    #[test]
    fn scope_checker_reports_a_scoped_status_sent_outside_its_region() {
        let sc = Scenario::parse(
            "name = \"t\"\nnodes = 12\nduration_ms = 8000\nscoped_regions = [\"r0\"]\n\
             [status]\ninterval_ms = 500\nuntil_ms = 2000\ndetailed = true\n",
            "inline",
        )
        .expect("valid");
        let mut sim = Sim::new(sc.clone(), 7);
        sim.advance(2500, &mut |_| {});
        assert!(sim.scope_leaks.is_empty(), "{:?}", sim.scope_leaks);
        let owner = sim.slots[0].key.public();
        let change = sim.slots[0]
            .engine
            .as_ref()
            .expect("live")
            .replica()
            .all_changes()
            .find(|c| matches!(c.doc, DocId::Status { node, .. } if node == owner))
            .cloned()
            .expect("node 0 wrote its status");
        // Node 4 is in r0 too: no leak. Node 2 is in r2: a leak.
        let (inside, outside) = (sim.slots[4].key.public(), sim.slots[2].key.public());
        let msg = Message::Changes {
            push: Push::Reply,
            changes: vec![change.clone()],
        }
        .encode();
        sim.send(0, inside, msg.clone());
        assert!(sim.scope_leaks.is_empty(), "{:?}", sim.scope_leaks);
        sim.send(0, outside, msg);
        assert_eq!(sim.scope_leaks.len(), 1, "{:?}", sim.scope_leaks);
        assert!(sim.scope_leaks[0].0.contains("scoped to r0"));
        let id = dcloud_node::engine::wire::short_id(&change.hash().expect("parses"));
        sim.send(0, outside, Message::IHave { ids: vec![id] }.encode());
        assert_eq!(sim.scope_leaks.len(), 2, "{:?}", sim.scope_leaks);
        // Any bytes of its details, in whatever message (here not even one
        // that decodes): found by the marker.
        let mut raw = b"junk".to_vec();
        raw.extend_from_slice(format!("{SCOPE_MARKER_TEXT}00000.").as_bytes());
        sim.send(0, outside, raw.clone());
        assert_eq!(sim.scope_leaks.len(), 3, "{:?}", sim.scope_leaks);
        assert!(sim.scope_leaks[2].0.contains("bytes of the details"));
        sim.send(0, inside, raw);
        assert_eq!(sim.scope_leaks.len(), 3, "inside the region: no leak");
        let r = sim.run(|_| {});
        assert!(!r.ok(), "a leak fails the run");
        // Without the injection the same run passes.
        let r = Sim::new(sc, 7).run(|_| {});
        assert!(r.ok(), "{}", r.report.table());
        assert!(r.report.scope.expect("scoped").leaks.is_empty());
    }
}
