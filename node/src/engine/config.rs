//! Engine configuration: every interval, fanout and bound, with units last.
//!
//! One configuration for every driver: the daemon reads it as the `[engine]`
//! table of its config file, the simulator as the `[engine]` table of a
//! scenario, both with these defaults (the ones the daemon runs). Unknown keys
//! are refused; [`EngineConfig::validate`] says what is out of range, and
//! [`super::Engine::new`] asserts it.

use serde::{Deserialize, Serialize};

use super::membership::MembershipConfig;
use super::wire::WireLimits;

/// A configuration value out of range: names the key and says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`engine.{field}`: {reason}")]
pub struct EngineConfigError {
    /// The key (without the `engine.` prefix).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// How the engine disseminates and reconciles. [`Default`] gives production values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Reconcile with one random neighbour this often (jittered by up to a tenth).
    pub anti_entropy_interval_ms: u64,
    /// While rounds find the replicas equal, the interval doubles up to this
    /// (idle cost); a round that finds a difference, a new change or a new
    /// connection brings it back to `anti_entropy_interval_ms`.
    pub anti_entropy_idle_max_ms: u64,
    /// The back-off starts only this long after the last new change or new
    /// connection: while changes move, a neighbour may lack one this node
    /// cannot know it lacks, and rounds stay at the base interval.
    pub anti_entropy_idle_after_ms: u64,
    /// Sign this node's status again this often even when nothing in it
    /// changed (a refresh counter), so that its signed view is never very
    /// old; 0 never does. Status changes go out at once whenever the status
    /// changes; liveness comes from membership, not from these.
    pub status_refresh_interval_ms: u64,
    /// Membership and failure detection (`[engine.membership]`).
    pub membership: MembershipConfig,
    /// Gather lazy announcements for this long before sending them.
    pub lazy_flush_interval_ms: u64,
    /// How long an announced change may stay missing before it is grafted.
    pub graft_timeout_ms: u64,
    /// How long a graft may go unanswered before the next announcer is asked.
    pub graft_retry_ms: u64,
    /// How many times each announcer of a change still missing is asked, in
    /// turn (a graft or its answer may be lost). After the first pass over
    /// them, reconciliation is also brought forward.
    pub graft_passes: u32,
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
    /// Most ranges the first step of an active round fingerprints (at most
    /// `wire.ranges_per_message_max`): enough that each holds about half
    /// `sync_items_threshold` documents, so that the peer lists differing
    /// ones at once. A round every step of which can be lost completes more
    /// often in fewer steps. A round while idle sends one fingerprint of
    /// everything.
    pub sync_first_parts_max: u64,
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
            anti_entropy_idle_max_ms: 12_000,
            anti_entropy_idle_after_ms: 30_000,
            status_refresh_interval_ms: 600_000,
            membership: MembershipConfig::default(),
            // Announcements only repair a broken tree; batching them for
            // 100 ms instead of 10 ms cut a 32-node fleet's CPU per rollout by
            // about a third (docs/daemon.md, benchmark).
            lazy_flush_interval_ms: 100,
            graft_timeout_ms: 150,
            graft_retry_ms: 300,
            graft_passes: 3,
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
            wire: WireLimits::default(),
            batch_size_max_bytes: 256 << 10,
            sync_fanout: 16,
            sync_items_threshold: 8,
            sync_first_parts_max: 128,
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

impl EngineConfig {
    /// How long a member may go unheard (no message over a link, no status
    /// change, not even its refresh) before it is shown `unknown` even
    /// though nobody suspects it: two refreshes and a minute.
    pub fn heard_within_ms(&self) -> u64 {
        self.status_refresh_interval_ms
            .saturating_mul(2)
            .saturating_add(60_000)
    }

    /// How long a live node can go without hearing any peer directly before
    /// it is shown cut off (`stale`), and, with membership off, how long a
    /// member can go without a status change before it is: with membership,
    /// a probe period, every resend, and a suspicion's timeout; without,
    /// three status refreshes and 2 s.
    pub fn stale_after_ms(&self) -> u64 {
        let m = &self.membership;
        if m.enabled {
            m.probe_interval_ms
                + m.probe_retry_ms * u64::from(m.probe_attempts)
                + m.suspicion_timeout_ms
        } else {
            self.status_refresh_interval_ms.saturating_mul(3) + 2_000
        }
    }

    /// Check every value: an interval of zero where the engine would spin, a
    /// bound of zero where nothing could pass, a fanout the wire cannot carry.
    pub fn validate(&self) -> Result<(), EngineConfigError> {
        fn ranged(field: &'static str, v: u64, lo: u64, hi: u64) -> Result<(), EngineConfigError> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(EngineConfigError {
                    field,
                    reason: format!("{v} is outside {lo}..={hi}"),
                })
            }
        }
        let c = self;
        ranged(
            "anti_entropy_interval_ms",
            c.anti_entropy_interval_ms,
            50,
            600_000,
        )?;
        ranged(
            "anti_entropy_idle_max_ms",
            c.anti_entropy_idle_max_ms,
            c.anti_entropy_interval_ms,
            600_000,
        )?;
        ranged(
            "anti_entropy_idle_after_ms",
            c.anti_entropy_idle_after_ms,
            0,
            86_400_000,
        )?;
        if c.status_refresh_interval_ms != 0 {
            ranged(
                "status_refresh_interval_ms",
                c.status_refresh_interval_ms,
                50,
                86_400_000,
            )?;
        }
        let m = &c.membership;
        ranged(
            "membership.probe_interval_ms",
            m.probe_interval_ms,
            10,
            600_000,
        )?;
        ranged("membership.probe_retry_ms", m.probe_retry_ms, 10, 600_000)?;
        ranged(
            "membership.probe_attempts",
            u64::from(m.probe_attempts),
            1,
            100,
        )?;
        ranged(
            "membership.suspicion_timeout_ms",
            m.suspicion_timeout_ms,
            10,
            3_600_000,
        )?;
        ranged("membership.link_grace_ms", m.link_grace_ms, 0, 3_600_000)?;
        ranged(
            "membership.suspicion_timeout_max_ms",
            m.suspicion_timeout_max_ms,
            m.suspicion_timeout_ms,
            3_600_000,
        )?;
        ranged(
            "membership.suspicion_confirmations",
            u64::from(m.suspicion_confirmations),
            1,
            16,
        )?;
        ranged(
            "lazy_flush_interval_ms",
            c.lazy_flush_interval_ms,
            1,
            10_000,
        )?;
        ranged("graft_timeout_ms", c.graft_timeout_ms, 1, 60_000)?;
        ranged("graft_retry_ms", c.graft_retry_ms, 1, 60_000)?;
        ranged("graft_passes", u64::from(c.graft_passes), 1, 16)?;
        // Below a round trip, every step would be retried with another peer
        // at once: rounds by the hundred per second.
        ranged("sync_retry_ms", c.sync_retry_ms, 50, 600_000)?;
        ranged("sync_hold_ms", c.sync_hold_ms, 0, 600_000)?;
        ranged("sync_settle_ms", c.sync_settle_ms, 0, 600_000)?;
        ranged("recent_keep_ms", c.recent_keep_ms, 0, 86_400_000)?;
        ranged(
            "penalty_max",
            u64::from(c.penalty_max),
            1,
            u64::from(u32::MAX),
        )?;
        // An offence must cost something (else the defence is off), and one
        // refused request must not be enough to disconnect an honest peer.
        ranged(
            "penalty_per_offence",
            u64::from(c.penalty_per_offence),
            1,
            u64::from(c.penalty_max),
        )?;
        ranged(
            "penalty_per_refusal",
            u64::from(c.penalty_per_refusal),
            0,
            u64::from(c.penalty_max) - 1,
        )?;
        ranged("sync_fanout", c.sync_fanout, 2, 64)?;
        ranged("sync_depth_max", u64::from(c.sync_depth_max), 1, 64)?;
        ranged(
            "sync_items_threshold",
            u64::from(c.sync_items_threshold),
            1,
            1 << 20,
        )?;
        let w = &c.wire;
        // One message must hold the largest change a replica accepts, with
        // room for its framing: else a valid change could never be sent.
        let change_max = dcloud_crdt::Limits::default().encoded_change_size_max_bytes() + (1 << 10);
        ranged(
            "wire.message_size_max_bytes",
            w.message_size_max_bytes as u64,
            change_max as u64,
            1 << 30,
        )?;
        for (field, v) in [
            ("wire.changes_per_message_max", w.changes_per_message_max),
            ("wire.ids_per_message_max", w.ids_per_message_max),
            ("wire.ranges_per_message_max", w.ranges_per_message_max),
            ("wire.items_per_message_max", w.items_per_message_max),
            ("wire.heads_per_doc_max", w.heads_per_doc_max),
            ("wire.roots_per_message_max", w.roots_per_message_max),
            ("wire.rumours_per_message_max", w.rumours_per_message_max),
        ] {
            ranged(field, v as u64, 1, 1 << 24)?;
        }
        ranged("sync_first_parts_max", c.sync_first_parts_max, 1, 1 << 16)?;
        if c.sync_first_parts_max as usize > w.ranges_per_message_max {
            return Err(EngineConfigError {
                field: "sync_first_parts_max",
                reason: format!(
                    "{} is more than wire.ranges_per_message_max ({})",
                    c.sync_first_parts_max, w.ranges_per_message_max
                ),
            });
        }
        // A split step must fit one message.
        if c.sync_fanout as usize > w.ranges_per_message_max {
            return Err(EngineConfigError {
                field: "sync_fanout",
                reason: format!(
                    "{} is more than wire.ranges_per_message_max ({})",
                    c.sync_fanout, w.ranges_per_message_max
                ),
            });
        }
        for (field, v, hi) in [
            // Batches are filled by an estimate of each change's encoded
            // size: half the message bound leaves room for its error.
            (
                "batch_size_max_bytes",
                c.batch_size_max_bytes,
                w.message_size_max_bytes / 2,
            ),
            ("sync_send_max_bytes", c.sync_send_max_bytes, usize::MAX),
            ("lazy_queue_max", c.lazy_queue_max, usize::MAX),
            ("pruned_origins_max", c.pruned_origins_max, usize::MAX),
            ("missing_max", c.missing_max, usize::MAX),
            ("announcers_max", c.announcers_max, usize::MAX),
            ("recent_max", c.recent_max, usize::MAX),
            ("sync_holds_max", c.sync_holds_max, usize::MAX),
        ] {
            if v == 0 || v > hi {
                return Err(EngineConfigError {
                    field,
                    reason: format!("{v} is outside 1..={hi}"),
                });
            }
        }
        ranged(
            "answer_work_burst_lookups",
            c.answer_work_burst_lookups,
            1,
            u64::MAX,
        )?;
        ranged("answer_burst_bytes", c.answer_burst_bytes, 1, u64::MAX)?;
        // A budget that never refills would starve honest peers for good.
        ranged(
            "answer_work_refill_lookups_per_s",
            c.answer_work_refill_lookups_per_s,
            1,
            u64::MAX,
        )?;
        ranged(
            "answer_refill_bytes_per_s",
            c.answer_refill_bytes_per_s,
            1,
            u64::MAX,
        )?;
        ranged("status_owner_burst", c.status_owner_burst, 1, u64::MAX)?;
        Ok(())
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = EngineConfig::default();
        c.validate().unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<EngineConfig>(&text).unwrap(), c);
        // Every field has a default: an empty table is the default.
        assert_eq!(serde_json::from_str::<EngineConfig>("{}").unwrap(), c);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = serde_json::from_str::<EngineConfig>(r#"{"graft_timout_ms": 1}"#).unwrap_err();
        assert!(err.to_string().contains("graft_timout_ms"), "{err}");
        let c = EngineConfig {
            anti_entropy_interval_ms: 0,
            ..EngineConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "anti_entropy_interval_ms");
        assert!(
            err.to_string()
                .contains("`engine.anti_entropy_interval_ms`: 0 is outside"),
            "{err}"
        );
        let c = EngineConfig {
            sync_fanout: 65,
            ..EngineConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "sync_fanout");
        // Values that pass a range check alone but break the engine: a
        // message too small for the largest change, a batch as large as a
        // message, budgets that never refill, one refusal that disconnects,
        // no cost for an offence, retries faster than a round trip.
        let d = EngineConfig::default;
        for (c, field) in [
            (
                EngineConfig {
                    wire: WireLimits {
                        message_size_max_bytes: 64 << 10,
                        ..WireLimits::default()
                    },
                    ..d()
                },
                "wire.message_size_max_bytes",
            ),
            (
                EngineConfig {
                    batch_size_max_bytes: 8 << 20,
                    ..d()
                },
                "batch_size_max_bytes",
            ),
            (
                EngineConfig {
                    answer_refill_bytes_per_s: 0,
                    ..d()
                },
                "answer_refill_bytes_per_s",
            ),
            (
                EngineConfig {
                    answer_work_refill_lookups_per_s: 0,
                    ..d()
                },
                "answer_work_refill_lookups_per_s",
            ),
            (
                EngineConfig {
                    penalty_per_refusal: 100,
                    ..d()
                },
                "penalty_per_refusal",
            ),
            (
                EngineConfig {
                    penalty_per_offence: 0,
                    ..d()
                },
                "penalty_per_offence",
            ),
            (
                EngineConfig {
                    sync_retry_ms: 1,
                    ..d()
                },
                "sync_retry_ms",
            ),
        ] {
            assert_eq!(c.validate().unwrap_err().field, field);
        }
    }
}
