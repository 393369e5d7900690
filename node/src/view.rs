//! The JSON shapes of the local API (documented in `docs/api.md`) and how they
//! are computed from a replica. The `dcloud` CLI deserialises the same types.

use std::collections::{BTreeMap, HashSet};

use dcloud_crdt::policy::Conflict;
use dcloud_crdt::status::{AppliedPolicy, HealthCheck};
use dcloud_crdt::{ChangeHash, Member, NodeId, Replica};
use serde::{Deserialize, Serialize};

use crate::engine::{Liveness, MemberState, Millis};

/// The store's state, as `/v1/node` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreView {
    /// Writes succeed.
    pub ok: bool,
    /// The last write error, while writes fail.
    pub error: Option<String>,
}

/// `GET /v1/node`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeView {
    /// This node's id.
    pub id: String,
    /// Enrolled name.
    pub name: String,
    /// Enrolled region.
    pub region: String,
    /// Software version.
    pub version: String,
    /// In the policy's members.
    pub enrolled: bool,
    /// In the policy's revocations.
    pub revoked: bool,
    /// Where it listens.
    pub listen_addrs: Vec<String>,
    /// Connected, admitted peers.
    pub peers: Vec<String>,
    /// Policy heads held.
    pub policy_heads: Vec<String>,
    /// Trust root version in force.
    pub trust_root_version: u64,
    /// Epoch of its own status document.
    pub status_epoch: u32,
    /// What it applied.
    pub applied: AppliedPolicy,
    /// Store health.
    pub store: StoreView,
    /// Since any peer's change was last received.
    pub last_heard_any_ms_ago: Option<u64>,
    /// No peer heard within the stale bound.
    pub stale: bool,
    /// Since the daemon started.
    pub uptime_ms: u64,
    /// The policy is known to be current: false when the trust root lists
    /// timestamp keys and this node's newest freshness statement is missing,
    /// expired, or names policy heads it has lacked too long.
    #[serde(default = "yes")]
    pub policy_fresh: bool,
    /// Why `policy_fresh` is what it is.
    #[serde(default)]
    pub policy_fresh_reason: String,
}

fn yes() -> bool {
    true
}

/// `POST /v1/freshness` answer (a valid statement).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FreshnessView {
    /// Newer than the one held: kept and forwarded.
    pub kept: bool,
    /// What happened.
    pub message: String,
    /// The node's verdict after it.
    pub policy_fresh: bool,
    /// Why.
    pub policy_fresh_reason: String,
}

/// One node of the fleet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRow {
    /// Id.
    pub id: String,
    /// Name (enrolment, else its status).
    pub name: String,
    /// Region.
    pub region: String,
    /// Enrolled.
    pub enrolled: bool,
    /// Revoked.
    pub revoked: bool,
    /// The node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Since it was last heard from directly here (a message over a link,
    /// or a status change of its own).
    pub last_heard_ms_ago: Option<u64>,
    /// Membership's view: `alive`, `suspect`, `down`, or `unknown` (never
    /// heard of).
    pub liveness: String,
    /// Since membership's state for it last changed (none: never suspected).
    pub liveness_ms_ago: Option<u64>,
    /// Down, or never heard of (with membership off: no status change
    /// within the stale bound).
    pub stale: bool,
    /// Health checks it reports.
    pub health: BTreeMap<String, HealthCheck>,
    /// Every check passes.
    pub healthy: bool,
    /// The policy it applied.
    pub applied: AppliedPolicy,
    /// Policy changes held here that its applied heads do not cover.
    pub behind: u64,
    /// Behind is 0 and no apply error.
    pub up_to_date: bool,
    /// Its software version.
    pub version: String,
    /// Its listen addresses.
    pub addrs: Vec<String>,
    /// Its status epoch (0 when no status).
    pub epoch: u32,
    /// Its heartbeat counter.
    pub hb: u64,
    /// Where the row comes from: `status` (its status document), `summary`
    /// (its region's status is scoped to the region, and this node is not
    /// in it: applied policy, healthy, version and heartbeat only; no
    /// addresses or health details), or `none` (nothing heard of it yet).
    #[serde(default)]
    pub source: String,
}

/// What this replica knows a node reports of itself: its status, else its
/// summary (a site of a scoped region seen from outside it); the epoch, and
/// which of the two.
pub fn reported<'a>(
    replica: &'a Replica,
    n: &NodeId,
) -> Option<(&'a dcloud_crdt::NodeStatus, u32, &'static str)> {
    replica
        .status(n)
        .map(|(s, e)| (s, e, "status"))
        .or_else(|| replica.summary(n).map(|(s, e)| (s, e, "summary")))
}

/// `GET /v1/fleet`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetView {
    /// Policy heads held here.
    pub policy_heads: Vec<String>,
    /// The stale bound.
    pub stale_after_ms: u64,
    /// Every node.
    pub nodes: Vec<NodeRow>,
}

/// The trust root in force.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RootView {
    /// Version.
    pub version: u64,
    /// Signatures needed.
    pub threshold: u32,
    /// Authority keys.
    pub keys: Vec<String>,
}

/// `GET /v1/policy`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyView {
    /// Heads.
    pub heads: Vec<String>,
    /// Policy changes held.
    pub changes: usize,
    /// The trust root in force.
    pub trust_root: RootView,
    /// Authority keys that signed any held policy change.
    pub signers: Vec<String>,
    /// Fleet config by dotted path.
    pub fleet: BTreeMap<String, serde_json::Value>,
    /// Region overrides.
    pub regions: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Site overrides, by node id.
    pub sites: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Members by node id.
    pub members: BTreeMap<String, Member>,
    /// Revoked nodes and why.
    pub revoked: BTreeMap<String, String>,
    /// Sealed secrets: where, to whom, and a digest of the sealed entry;
    /// never a value.
    #[serde(default)]
    pub secrets: Vec<SecretView>,
    /// Concurrent edits.
    pub conflicts: Vec<Conflict>,
    /// Entries that could not be read.
    pub errors: Vec<String>,
}

/// `GET /v1/config`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigView {
    /// This node.
    pub id: String,
    /// Policy heads it was resolved at.
    pub heads: Vec<String>,
    /// The effective config; null when not an active member.
    pub config: Option<serde_json::Value>,
    /// What was applied.
    pub applied: AppliedPolicy,
}

/// A site in a rollout.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolloutSite {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Apply error, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Exit code, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Membership holds it down here (a pending site that will not apply
    /// until it is back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub down: bool,
}

/// `GET /v1/rollout`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutView {
    /// The version asked about.
    pub heads: Vec<String>,
    /// This node holds every given head.
    pub known: bool,
    /// Active members.
    pub enrolled: usize,
    /// Active members that applied it without error.
    pub applied: usize,
    /// applied == enrolled.
    pub complete: bool,
    /// Not yet applied.
    pub pending: Vec<RolloutSite>,
    /// Applied with an error (or failing on a later version).
    pub failed: Vec<RolloutSite>,
}

/// One change's verdict in a publish.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportView {
    /// Document.
    pub doc: String,
    /// Change hash, when it parsed.
    pub hash: Option<String>,
    /// applied, duplicate, pending, stale, rejected.
    pub outcome: String,
    /// Why it was rejected.
    pub reason: Option<String>,
}

/// `POST /v1/bundles` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishView {
    /// Nothing was rejected.
    pub accepted: bool,
    /// The first refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Trust roots refused.
    pub root_errors: Vec<String>,
    /// One per change.
    pub reports: Vec<ReportView>,
    /// Some change's bytes are not a well-formed, bounded change (malformed,
    /// oversized, compressed, over-signed): the request itself is bad, and the
    /// API answers 400 rather than 422.
    #[serde(default)]
    pub malformed: bool,
}

/// Hex of change hashes.
pub fn hex_heads(heads: &[ChangeHash]) -> Vec<String> {
    heads.iter().map(|h| hex::encode(h.0)).collect()
}

/// Parse hex change hashes.
pub fn parse_heads(list: &[String]) -> Result<Vec<ChangeHash>, String> {
    list.iter()
        .map(|s| {
            let mut b = [0u8; 32];
            hex::decode_to_slice(s.trim(), &mut b)
                .map_err(|_| format!("{s:?} is not a change hash (64 hex digits)"))?;
            Ok(ChangeHash(b))
        })
        .collect()
}

/// The policy changes held that are not ancestors of (or equal to) `heads`.
/// Unknown heads are ignored (they are ahead of this node).
pub fn policy_missing(replica: &Replica, heads: &[ChangeHash]) -> HashSet<ChangeHash> {
    let doc = replica.policy_doc();
    let known: Vec<ChangeHash> = heads
        .iter()
        .filter(|h| doc.get_change_meta_by_hash(h).is_some())
        .copied()
        .collect();
    doc.get_changes_meta(&known)
        .into_iter()
        .map(|m| m.hash)
        .collect()
}

/// Inputs to a fleet view besides the replica.
pub struct FleetCtx<'a> {
    /// This node.
    pub me: NodeId,
    /// Driver clock now.
    pub now_ms: Millis,
    /// Local time each node was last heard from directly (a message over a
    /// link, or a status change of its own).
    pub last_heard: &'a dyn Fn(&NodeId) -> Option<Millis>,
    /// What membership holds about each node.
    pub liveness: &'a dyn Fn(&NodeId) -> Option<Liveness>,
    /// Membership runs (liveness comes from it); else from status changes.
    pub membership: bool,
    /// With membership, a node membership holds nothing against is still
    /// shown `unknown` (stale) when nothing of it (not even its 10-minute
    /// status refresh) was heard for this long: one that died unseen (no
    /// neighbour left to suspect it) does not stay alive for ever.
    pub heard_within_ms: u64,
    /// The stale bound (see `EngineConfig::stale_after_ms`).
    pub stale_after_ms: u64,
}

/// Every node, as this replica sees it.
pub fn fleet(replica: &Replica, ctx: &FleetCtx<'_>) -> FleetView {
    let policy = replica.policy();
    let mut ids: Vec<NodeId> = policy.members.keys().copied().collect();
    for (n, _, _) in replica.statuses() {
        if !policy.members.contains_key(n) {
            ids.push(*n);
        }
    }
    let mut nodes: Vec<NodeRow> = ids.iter().map(|n| row(replica, ctx, n)).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    FleetView {
        policy_heads: hex_heads(&replica.policy_heads()),
        stale_after_ms: ctx.stale_after_ms,
        nodes,
    }
}

/// One node's row.
pub fn row(replica: &Replica, ctx: &FleetCtx<'_>, n: &NodeId) -> NodeRow {
    let policy = replica.policy();
    let member = policy.members.get(n);
    let status = reported(replica, n);
    let (st, epoch, source) = match status {
        Some((s, e, src)) => (s.clone(), e, src),
        None => (Default::default(), 0, "none"),
    };
    let is_self = *n == ctx.me;
    let last_heard_ms_ago = if is_self {
        Some(0)
    } else {
        (ctx.last_heard)(n).map(|t| ctx.now_ms.saturating_sub(t))
    };
    let live = if is_self { None } else { (ctx.liveness)(n) };
    let unheard = last_heard_ms_ago.is_none_or(|a| a > ctx.heard_within_ms);
    let (liveness, stale) = match live.map(|l| l.state) {
        _ if is_self => ("alive", false),
        Some(MemberState::Alive) if unheard => ("unknown", true),
        Some(s) => (s.label(), s == MemberState::Down),
        // Membership holds nothing: nobody suspected it. Alive if it was
        // ever heard of (directly or by its status), else unknown.
        None if ctx.membership => {
            if unheard {
                ("unknown", true)
            } else {
                ("alive", false)
            }
        }
        None => {
            let stale = last_heard_ms_ago.is_none_or(|a| a > ctx.stale_after_ms);
            (if stale { "unknown" } else { "alive" }, stale)
        }
    };
    let liveness_ms_ago = live.map(|l| ctx.now_ms.saturating_sub(l.since));
    let applied_heads = parse_heads(&st.applied.heads).unwrap_or_default();
    let behind = if status.is_some() {
        policy_missing(replica, &applied_heads).len() as u64
    } else {
        replica.policy_changes().len() as u64
    };
    NodeRow {
        id: n.to_hex(),
        name: member
            .map(|m| m.name.clone())
            .unwrap_or_else(|| st.name.clone()),
        region: member
            .map(|m| m.region.clone())
            .unwrap_or_else(|| st.region.clone()),
        enrolled: member.is_some(),
        revoked: policy.revoked.contains_key(n),
        is_self,
        last_heard_ms_ago,
        liveness: liveness.to_string(),
        liveness_ms_ago,
        stale,
        healthy: st.is_healthy(),
        health: st.health,
        up_to_date: behind == 0 && st.applied.error.is_none() && st.applied.regional_missing == 0,
        applied: st.applied,
        behind,
        version: st.version,
        addrs: st.addrs,
        epoch,
        hb: st.hb,
        source: source.to_string(),
    }
}

/// One sealed secret as the API shows it: never its value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecretView {
    /// The policy entry.
    pub key: String,
    /// `fleet`, `region:NAME`, `site:NODE_ID`.
    pub level: String,
    /// Dotted path.
    pub path: String,
    /// Labels a target must carry.
    pub selector: BTreeMap<String, String>,
    /// The sealing's id.
    pub id: String,
    /// Node ids it is sealed to.
    pub targets: Vec<String>,
    /// Digest of the sealed entry (not of the value).
    pub digest: String,
}

/// The sealed secrets of `p`, as shown.
pub fn secrets(p: &dcloud_crdt::Policy) -> Vec<SecretView> {
    p.secrets
        .iter()
        .map(|(k, s)| SecretView {
            key: k.clone(),
            level: s.level.clone(),
            path: s.path.clone(),
            selector: s.selector.clone(),
            id: s.id.clone(),
            targets: s.to.keys().cloned().collect(),
            digest: s.digest(),
        })
        .collect()
}

/// The policy view.
pub fn policy(replica: &Replica) -> PolicyView {
    let p = replica.policy();
    let root = replica.trust().current();
    let mut signers: Vec<String> = replica
        .policy_changes()
        .iter()
        .flat_map(|c| c.sigs.iter().map(|s| s.key.to_hex()))
        .collect();
    signers.sort();
    signers.dedup();
    PolicyView {
        heads: hex_heads(&replica.policy_heads()),
        changes: replica.policy_changes().len(),
        trust_root: RootView {
            version: root.version,
            threshold: root.threshold,
            keys: root.keys.iter().map(|k| k.to_hex()).collect(),
        },
        signers,
        fleet: p.fleet.clone(),
        regions: p.regions.clone(),
        sites: p
            .sites
            .iter()
            .map(|(k, v)| (k.to_hex(), v.clone()))
            .collect(),
        members: p
            .members
            .iter()
            .map(|(k, v)| (k.to_hex(), v.clone()))
            .collect(),
        revoked: p
            .revoked
            .iter()
            .map(|(k, v)| (k.to_hex(), v.clone()))
            .collect(),
        secrets: secrets(p),
        conflicts: p.conflicts.clone(),
        errors: p.errors.clone(),
    }
}

/// Rollout of `heads` across active members.
pub fn rollout(
    replica: &Replica,
    heads: &[ChangeHash],
    liveness: &dyn Fn(&NodeId) -> Option<Liveness>,
) -> RolloutView {
    let policy = replica.policy();
    let doc = replica.policy_doc();
    let known = heads
        .iter()
        .all(|h| doc.get_change_meta_by_hash(h).is_some());
    let mut view = RolloutView {
        heads: hex_heads(heads),
        known,
        enrolled: 0,
        applied: 0,
        complete: false,
        pending: Vec::new(),
        failed: Vec::new(),
    };
    for (n, m) in &policy.members {
        if policy.revoked.contains_key(n) {
            continue;
        }
        view.enrolled += 1;
        let down = liveness(n).is_some_and(|l| l.state == MemberState::Down);
        let site = |error: Option<String>, exit_code: Option<i32>| RolloutSite {
            id: n.to_hex(),
            name: m.name.clone(),
            error,
            exit_code,
            down,
        };
        let Some((st, _, _)) = reported(replica, n) else {
            view.pending.push(site(None, None));
            continue;
        };
        let applied_heads = parse_heads(&st.applied.heads).unwrap_or_default();
        // Covered: every asked head is among or below the applied heads.
        let direct: HashSet<&ChangeHash> = applied_heads.iter().collect();
        let covered = heads.iter().all(|h| direct.contains(h))
            || (known && {
                let missing = policy_missing(replica, &applied_heads);
                heads.iter().all(|h| !missing.contains(h))
            });
        match (&st.applied.error, covered) {
            (Some(e), _) => view
                .failed
                .push(site(Some(e.clone()), st.applied.exit_code)),
            // Its region's scoped policy, committed by these heads, is
            // not all there yet.
            (None, true) if st.applied.regional_missing > 0 => view.pending.push(site(None, None)),
            (None, true) => view.applied += 1,
            (None, false) => view.pending.push(site(None, None)),
        }
    }
    view.complete = view.enrolled > 0 && view.applied == view.enrolled;
    view
}
