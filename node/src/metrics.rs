//! Prometheus metrics of the daemon, served at `/metrics`.
//!
//! Every metric is a cheap atomic: the daemon's actor updates them in place and
//! the API encodes the registry on request.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    /// Connected, admitted peers.
    pub peers: Gauge,
    /// Changes received from peers (each change of each message).
    pub changes_received: Counter,
    /// Changes newly applied to the replica.
    pub changes_applied: Counter,
    /// Changes rejected, by reason.
    pub changes_rejected: Family<Labels, Counter>,
    /// Engine bytes received.
    pub bytes_in: Counter,
    /// Engine bytes sent.
    pub bytes_out: Counter,
    /// Engine messages received.
    pub messages_in: Counter,
    /// Engine messages sent.
    pub messages_out: Counter,
    /// Engine messages dropped unsent (a peer's send queue was full).
    pub messages_dropped: Counter,
    /// Anti-entropy rounds started.
    pub anti_entropy_rounds: Counter,
    /// Changes held.
    pub replica_changes: Gauge,
    /// Bytes of changes held.
    pub replica_bytes: Gauge,
    /// Status documents held.
    pub replica_status_docs: Gauge,
    /// Status documents of sites in a region scoped to itself, which this
    /// site is not in, dropped here since the daemon started.
    pub scope_dropped: Gauge,
    /// Scoped status documents the engine's last gate took out of a message
    /// to a site outside their region since start (0 unless a send decision
    /// missed the scope).
    pub scope_withheld: Gauge,
    /// With this site's region scoped: admitted peers of its region (0 with
    /// none scoped).
    pub scope_region_peers: Gauge,
    /// Peers disconnected by this node, by reason.
    pub peers_disconnected: Family<Labels, Counter>,
    /// Membership transitions seen here, by new state (suspect, down, alive).
    pub member_events: Family<Labels, Counter>,
    /// Members held suspect here.
    pub members_suspect: Gauge,
    /// Membership rumours whose signature was checked here (news only).
    pub rumours_verified: Counter,
    /// Members held down here.
    pub members_down: Gauge,
    /// Apply command runs, by result.
    pub apply_runs: Family<Labels, Counter>,
    /// 1 when the store accepts writes.
    pub store_ok: Gauge,
    /// 1 when the policy is known to be fresh (always 1 without timestamp keys).
    pub policy_fresh: Gauge,
    /// Dials of members started.
    pub dials: Counter,
    /// Dials of members put off because the dial budget was spent.
    pub dials_deferred: Counter,
    /// Peer addresses not dialled or not remembered, by reason.
    pub dial_addrs_ignored: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dcloud");
        let m = Metrics {
            registry: Registry::default(),
            peers: Gauge::default(),
            changes_received: Counter::default(),
            changes_applied: Counter::default(),
            changes_rejected: Family::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            messages_dropped: Counter::default(),
            anti_entropy_rounds: Counter::default(),
            replica_changes: Gauge::default(),
            replica_bytes: Gauge::default(),
            replica_status_docs: Gauge::default(),
            scope_dropped: Gauge::default(),
            scope_withheld: Gauge::default(),
            scope_region_peers: Gauge::default(),
            peers_disconnected: Family::default(),
            member_events: Family::default(),
            members_suspect: Gauge::default(),
            rumours_verified: Counter::default(),
            members_down: Gauge::default(),
            apply_runs: Family::default(),
            store_ok: Gauge::default(),
            policy_fresh: Gauge::default(),
            dials: Counter::default(),
            dials_deferred: Counter::default(),
            dial_addrs_ignored: Family::default(),
        };
        let r = &mut registry;
        r.register("peers", "Connected, admitted peers", m.peers.clone());
        r.register(
            "changes_received",
            "Changes received from peers",
            m.changes_received.clone(),
        );
        r.register(
            "changes_applied",
            "Changes newly applied to the replica",
            m.changes_applied.clone(),
        );
        r.register(
            "changes_rejected",
            "Changes rejected, by reason",
            m.changes_rejected.clone(),
        );
        r.register("bytes_in", "Engine bytes received", m.bytes_in.clone());
        r.register("bytes_out", "Engine bytes sent", m.bytes_out.clone());
        r.register(
            "messages_in",
            "Engine messages received",
            m.messages_in.clone(),
        );
        r.register(
            "messages_out",
            "Engine messages sent",
            m.messages_out.clone(),
        );
        r.register(
            "messages_dropped",
            "Engine messages dropped unsent because a peer's send queue was full",
            m.messages_dropped.clone(),
        );
        r.register(
            "anti_entropy_rounds",
            "Anti-entropy rounds started",
            m.anti_entropy_rounds.clone(),
        );
        r.register(
            "replica_changes",
            "Changes held in the replica",
            m.replica_changes.clone(),
        );
        r.register(
            "replica_bytes",
            "Bytes of changes held in the replica",
            m.replica_bytes.clone(),
        );
        r.register(
            "replica_status_docs",
            "Status documents held",
            m.replica_status_docs.clone(),
        );
        r.register(
            "peers_disconnected",
            "Peers disconnected by this node, by reason",
            m.peers_disconnected.clone(),
        );
        r.register(
            "member_events",
            "Membership transitions seen here, by new state",
            m.member_events.clone(),
        );
        r.register(
            "scope_dropped",
            "Status documents of another region's scoped sites dropped here since start",
            m.scope_dropped.clone(),
        );
        r.register(
            "scope_region_peers",
            "With this site's region scoped: admitted peers of its region",
            m.scope_region_peers.clone(),
        );
        r.register(
            "scope_withheld",
            "Scoped status documents the last gate took out of a message to a site outside their region since start",
            m.scope_withheld.clone(),
        );
        r.register(
            "rumours_verified",
            "Membership rumours whose signature was checked here (news only)",
            m.rumours_verified.clone(),
        );
        r.register(
            "members_suspect",
            "Members held suspect here",
            m.members_suspect.clone(),
        );
        r.register(
            "members_down",
            "Members held down here",
            m.members_down.clone(),
        );
        r.register(
            "apply_runs",
            "Policy applications, by result",
            m.apply_runs.clone(),
        );
        r.register(
            "store_ok",
            "1 when the store accepts writes",
            m.store_ok.clone(),
        );
        r.register(
            "policy_fresh",
            "1 when this node's policy is known to be current (signed freshness; 1 without timestamp keys)",
            m.policy_fresh.clone(),
        );
        r.register("dials", "Dials of members started", m.dials.clone());
        r.register(
            "dials_deferred",
            "Dials of members put off because the dial budget was spent",
            m.dials_deferred.clone(),
        );
        r.register(
            "dial_addrs_ignored",
            "Peer addresses (claimed in status documents, identify or mDNS) not dialled or not remembered, by reason",
            m.dial_addrs_ignored.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Count a rejection.
    pub fn rejected(&self, reason: &str, count: u64) {
        self.changes_rejected
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc_by(count);
    }

    /// Count a membership transition.
    pub fn member_event(&self, state: &str) {
        self.member_events
            .get_or_create(&vec![("state".to_string(), state.to_string())])
            .inc();
    }

    /// Count a disconnection.
    pub fn disconnected(&self, reason: &str) {
        self.peers_disconnected
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    /// Count an apply run.
    pub fn applied(&self, result: &str) {
        self.apply_runs
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
    }

    /// Count an address left out of a dial (or not remembered).
    pub fn dial_addr_ignored(&self, reason: &str) {
        self.dial_addrs_ignored
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_prefix() {
        let m = Metrics::new();
        m.changes_received.inc();
        m.rejected("signature", 1);
        let text = m.encode();
        assert!(text.contains("dcloud_changes_received_total 1"), "{text}");
        assert!(
            text.contains("dcloud_changes_rejected_total{reason=\"signature\"} 1"),
            "{text}"
        );
    }
}
