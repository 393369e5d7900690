//! Engine configuration: every interval, fanout and bound, with units last.

use super::wire::WireLimits;

/// How the engine disseminates and reconciles. [`Default`] gives production values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Reconcile with one random neighbour this often (jittered by up to a tenth).
    pub anti_entropy_interval_ms: u64,
    /// Write a heartbeat into this node's status this often; 0 never does.
    pub heartbeat_interval_ms: u64,
    /// Gather lazy announcements for this long before sending them.
    pub lazy_flush_interval_ms: u64,
    /// How long an announced change may stay missing before it is grafted.
    pub graft_timeout_ms: u64,
    /// How long a graft may go unanswered before the next announcer is asked.
    pub graft_retry_ms: u64,
    /// PlumTree (eager tree plus lazy announcements). False floods every change
    /// eagerly to every peer (for comparison; costs a copy per link).
    pub plumtree: bool,
    /// Push policy changes eagerly to every peer (they are rare, small and
    /// urgent; the tree would add a graft delay for every origin but the tree's
    /// root). Status changes always follow PlumTree when `plumtree` is set.
    pub policy_flood: bool,
    /// A reconciliation step that expects an answer (every step but the
    /// last; a peer in sync answers with an empty step) and gets none from
    /// the peer within this time was lost: this node reconciles again at once
    /// with another peer rather than at the next interval.
    pub sync_retry_ms: u64,
    /// After listing the documents of a key range to one peer that showed it
    /// holds changes this node lacks there (the peer answers with them), this
    /// node does not list that range
    /// to any peer again until the answer comes or this time passes: after a
    /// heal, one missing change comes from one neighbour, not from all.
    pub sync_hold_ms: u64,
    /// Most key ranges held so (older holds are dropped first).
    pub sync_holds_max: usize,
    /// Anti-entropy does not send changes of a document this node changed
    /// within this time (they are most likely still in flight through the
    /// tree); the next round does if they are still missing.
    pub sync_settle_ms: u64,
    /// How long a disseminated change is remembered by short id (to answer
    /// grafts and recognise announcements).
    pub recent_keep_ms: u64,
    /// Most changes remembered by short id.
    pub recent_max: usize,
    /// A peer whose penalty reaches this is disconnected.
    pub penalty_max: u32,
    /// Penalty for one invalid change or malformed message.
    pub penalty_per_offence: u32,
    /// Penalty for a request (`Want`, `Graft`, `Sync`) that arrives when the
    /// peer's answer budget is already spent (mild: a request answered in
    /// part, because the budget ran out while answering it, costs nothing).
    pub penalty_per_refusal: u32,
    /// A peer's penalty decays by this much per second, so that a rare
    /// offence (a corrupt frame now and then) never adds up to a disconnect.
    pub penalty_decay_per_s: u32,
    /// Work (index entries scanned, documents and short ids looked up,
    /// changes collected) this node does in answer to one peer's `Want`,
    /// `Graft` and `Sync` requests, at most in one burst: a token bucket per
    /// peer, full when the peer connects. Once it is empty the peer's requests
    /// are not answered (see `penalty_per_refusal`) until it refills.
    pub answer_work_burst_lookups: u64,
    /// The work bucket refills at this rate.
    pub answer_work_refill_lookups_per_s: u64,
    /// Bytes this node sends in answer to one peer's requests (changes,
    /// reconciliation steps, trust roots), at most in one burst (a token
    /// bucket per peer, like the work budget).
    pub answer_burst_bytes: u64,
    /// The bytes bucket refills at this rate.
    pub answer_refill_bytes_per_s: u64,
    /// Bounds on decoded messages (also respected by what this engine sends).
    pub wire: WireLimits,
    /// Target size of one message of changes.
    pub batch_size_max_bytes: usize,
    /// Ranges a differing range is split into per reconciliation step (at most 64).
    pub sync_fanout: u64,
    /// A differing range with at most this many documents is listed, not split.
    pub sync_items_threshold: u32,
    /// Deepest reconciliation step; deeper steps list their items.
    pub sync_depth_max: u8,
    /// Most change bytes sent in answer to one reconciliation step.
    pub sync_send_max_bytes: usize,
    /// Most lazy announcements queued for one peer (older ones are dropped;
    /// anti-entropy repairs what they would have announced).
    pub lazy_queue_max: usize,
    /// Most owners one peer may be pruned for (one tree per status owner).
    pub pruned_origins_max: usize,
    /// Peers whose connection went down whose pruned owners are remembered,
    /// so that a link that comes back (a heal) keeps its place in the trees
    /// instead of flooding every owner's changes until pruned again.
    pub pruned_memory_peers_max: usize,
    /// Most announced-but-missing changes tracked for grafting.
    pub missing_max: usize,
    /// Most peers remembered as announcers of one missing change.
    pub announcers_max: usize,
    /// Most of this node's own status changes kept while it is not yet enrolled.
    pub own_unpublished_max: usize,
    /// Status changes of one owner applied at once before its rate bound
    /// applies (an epoch's worth: a node catching up receives a whole epoch).
    pub status_owner_burst: u64,
    /// Status changes of one owner applied per second beyond the burst;
    /// changes over the rate are refused without blame to the relay
    /// (`rate_limited`) and come again with anti-entropy. 0: no bound.
    pub status_owner_refill_per_s: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            anti_entropy_interval_ms: 1_500,
            heartbeat_interval_ms: 60_000,
            lazy_flush_interval_ms: 50,
            graft_timeout_ms: 400,
            graft_retry_ms: 400,
            plumtree: true,
            policy_flood: true,
            sync_retry_ms: 400,
            sync_hold_ms: 400,
            sync_holds_max: 1024,
            sync_settle_ms: 1_000,
            recent_keep_ms: 120_000,
            recent_max: 1 << 16,
            penalty_max: 100,
            penalty_per_offence: 25,
            penalty_per_refusal: 10,
            penalty_decay_per_s: 1,
            // An honest round over a 10,000-document index after a heal scans
            // it about once per level (3 levels) and lists the small ranges:
            // ~40,000 lookups. The burst allows five such rounds at once, the
            // refill more than one per anti-entropy interval.
            answer_work_burst_lookups: 200_000,
            answer_work_refill_lookups_per_s: 50_000,
            // Two whole answers of one step (`sync_send_max_bytes`) at once,
            // then 1 MiB/s: a store rebuilt from 6 peers after a wipe gets 6 MiB/s.
            answer_burst_bytes: 8 << 20,
            answer_refill_bytes_per_s: 1 << 20,
            wire: WireLimits {
                message_size_max_bytes: 8 << 20,
                changes_per_message_max: 1024,
                ids_per_message_max: 1024,
                ranges_per_message_max: 256,
                items_per_message_max: 4096,
                heads_per_doc_max: 64,
                roots_per_message_max: 64,
            },
            batch_size_max_bytes: 256 << 10,
            sync_fanout: 16,
            sync_items_threshold: 8,
            sync_depth_max: 20,
            sync_send_max_bytes: 4 << 20,
            lazy_queue_max: 4096,
            pruned_origins_max: 1 << 16,
            pruned_memory_peers_max: 64,
            missing_max: 8192,
            announcers_max: 4,
            own_unpublished_max: 64,
            status_owner_burst: 64,
            status_owner_refill_per_s: 1,
        }
    }
}
