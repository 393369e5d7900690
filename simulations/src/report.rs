//! The report of a run: propagation of policy changes, traffic, convergence
//! after heal, checker verdicts. Printed as a table, written as JSON, CSV and
//! an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

/// Propagation of one policy change.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PolicyReport {
    /// A change of this region's scoped policy (tracked over the region's
    /// live honest sites only); `None`: a fleet policy change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Where it was published.
    pub origin: usize,
    /// When.
    pub published_at_ms: u64,
    /// Live honest nodes (of its region, for a regional change) holding it
    /// at the end.
    pub reached: usize,
    /// Live honest nodes (of its region, for a regional change) at the end.
    pub of: usize,
    /// Time until 50% held it.
    pub t50_ms: Option<u64>,
    /// 99%.
    pub t99_ms: Option<u64>,
    /// 99.99%.
    pub t9999_ms: Option<u64>,
    /// 100%.
    pub t100_ms: Option<u64>,
    /// The slowest shortest path from the origin over the overlay.
    pub lower_bound_ms: u64,
    /// t100 / lower bound.
    pub ratio: Option<f64>,
    /// Sorted times (since publication) at which nodes came to hold it.
    #[serde(skip)]
    pub curve: Vec<u64>,
}

/// Traffic over the measurement window, per honest node.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Traffic {
    /// Length of the window.
    pub window_ms: u64,
    /// Bytes sent per node per second.
    pub bytes_sent_per_node_s: f64,
    /// Bytes received per node per second.
    pub bytes_received_per_node_s: f64,
    /// Messages sent per node per second.
    pub messages_sent_per_node_s: f64,
    /// Messages received per node per second.
    pub messages_received_per_node_s: f64,
    /// All bytes received / bytes of changes that were new to the receiver.
    pub duplication_ratio: f64,
    /// Change bytes received / change bytes that were new (copies per change).
    pub change_copies: f64,
    /// Bytes of membership rumours that were news to the receiver, over the
    /// bytes of new changes: the part of `received_by_kind["rumours"]` that
    /// no dissemination could have spared.
    pub rumour_news: f64,
    /// Bytes of new changes received per node.
    pub new_change_bytes_per_node: f64,
    /// Bytes received by message kind, each over the bytes of new changes
    /// (they sum to `duplication_ratio`).
    pub received_by_kind: BTreeMap<String, f64>,
}

/// Everything measured in one run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Fleet size.
    pub nodes: usize,
    /// Simulated time.
    pub duration_ms: u64,
    /// Events processed.
    pub events: u64,
    /// Policy changes.
    pub policy: Vec<PolicyReport>,
    /// Traffic.
    pub traffic: Traffic,
    /// When the last fault healed.
    pub last_heal_ms: Option<u64>,
    /// From the last heal until all live nodes held identical documents.
    pub convergence_after_heal_ms: Option<u64>,
    /// After the last heal: (ms after it, live nodes not yet holding the
    /// final state), every 500 ms.
    pub heal_curve: Vec<(u64, usize)>,
    /// The last live nodes to reach the final state after the last heal
    /// (at most 8, those behind in the last sample before it), to trace
    /// with `--trace-node`.
    pub heal_last_nodes: Vec<usize>,
    /// Reconciliation rounds started, fleet-wide.
    pub anti_entropy_rounds: u64,
    /// Of those, started at once because a step went unanswered (lost).
    pub sync_retries: u64,
    /// Key ranges not listed because another peer was answering for them.
    pub sync_ranges_held: u64,
    /// Changes received by eager push (window, fleet-wide).
    pub changes_received_eager: u64,
    /// Changes received as answers to grafts, wants and reconciliation (window).
    pub changes_received_reply: u64,
    /// Of those, not new (window).
    pub reply_duplicates: u64,
    /// Grafts sent, ids (window).
    pub grafts: u64,
    /// Prunes sent (window).
    pub prunes: u64,
    /// Rejected changes by reason, fleet-wide (honest nodes).
    pub rejected: BTreeMap<String, u64>,
    /// Undecodable messages, fleet-wide.
    pub malformed_messages: u64,
    /// PeerMisbehaved events.
    pub misbehaviour_events: u64,
    /// Disconnects asked for by engines.
    pub disconnects: u64,
    /// Most changes waiting for dependencies on any honest node, at the
    /// memory checks (taken while malicious nodes act).
    pub peak_pending: usize,
    /// Most void (over-full) status epochs one honest node held at once.
    pub void_epochs: usize,
    /// Safety checker findings.
    pub safety_violations: Vec<String>,
    /// Liveness checker finding.
    pub liveness_failure: Option<String>,
    /// Where the simulator's link model and the engines' peer sets disagreed
    /// at a partition start or heal (a simulator bug).
    pub link_model_violations: Vec<String>,
    /// Requests honest nodes refused because the asker's answer budget was
    /// spent, fleet-wide (0 in a run without `want_amplifier`s).
    pub requests_refused: u64,
    /// Bytes honest nodes sent in answer to requests, fleet-wide.
    pub answer_bytes_sent: u64,
    /// Most bytes one honest node sent one `want_amplifier`.
    pub amplifier_bytes_max: Option<u64>,
    /// What the answer budget allows it (burst, refill over the run, and the
    /// most bytes one honest node sent one honest peer).
    pub amplifier_bytes_bound: Option<u64>,
    /// Honest nodes that sent a `want_amplifier` more than that.
    pub amplification_violations: Vec<String>,
    /// Failure detection (when membership runs).
    pub membership: Option<MembershipReport>,
    /// Membership checker findings (first 100).
    pub membership_violations: Vec<String>,
    /// Membership probes sent, fleet-wide (whole run).
    pub probes_sent: u64,
    /// Membership rumours whose signature was checked, fleet-wide.
    pub rumours_verified: u64,
    /// Suspicions raised, fleet-wide.
    pub suspicions_raised: u64,
    /// Refutations, fleet-wide.
    pub refutations: u64,
    /// Region scoping, when the scenario scopes regions' status or has
    /// regional policy changes.
    pub scope: Option<ScopeReport>,
}

/// What region scoping kept in the regions, and what it saved.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ScopeReport {
    /// The scoped regions.
    pub scoped_regions: Vec<String>,
    /// The regions with scoped policy changes (`regional_policy`).
    pub regional_regions: Vec<String>,
    /// Regional policy changes published.
    pub regional_changes: usize,
    /// Scope checker findings (first 100): a scoped status, or a change of
    /// a region's scoped policy, sent to or held by an honest node outside
    /// its region.
    pub leaks: Vec<String>,
    /// What the engines' last gate before the wire took out (0 when every
    /// send decision kept to the scope).
    pub gate_withheld: u64,
    /// Bytes received per site per second, over the measurement window.
    pub bytes_received_per_site_s: f64,
    /// The same with scoping off (`compare_unscoped`), same seed.
    pub unscoped_bytes_received_per_site_s: Option<f64>,
    /// 1 - scoped / unscoped.
    pub saved_fraction: Option<f64>,
    /// Bytes received per site per second by sites outside the scoped
    /// regions, and by sites inside them.
    pub outside_bytes_per_site_s: f64,
    /// See `outside_bytes_per_site_s`.
    pub inside_bytes_per_site_s: f64,
    /// The same two with scoping off.
    pub unscoped_outside_bytes_per_site_s: Option<f64>,
    /// See `unscoped_outside_bytes_per_site_s`.
    pub unscoped_inside_bytes_per_site_s: Option<f64>,
}

impl ScopeReport {
    /// Fill in the baseline's figures (the same scenario and seed, unscoped).
    pub fn compare(&mut self, unscoped: &Traffic, by_class: (f64, f64)) {
        let u = unscoped.bytes_received_per_node_s;
        self.unscoped_bytes_received_per_site_s = Some(u);
        self.saved_fraction = Some(1.0 - self.bytes_received_per_site_s / u.max(1e-9));
        self.unscoped_outside_bytes_per_site_s = Some(by_class.0);
        self.unscoped_inside_bytes_per_site_s = Some(by_class.1);
    }
}

/// How fast, and how wrongly, crashed nodes were marked down.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MembershipReport {
    /// (crashed node, live observer) pairs where the observer marked it down.
    pub detections: u64,
    /// Crash to marked down, over those pairs.
    pub detection_median_ms: Option<u64>,
    /// 99th percentile.
    pub detection_p99_ms: Option<u64>,
    /// Slowest.
    pub detection_max_ms: Option<u64>,
    /// Pairs where a live observer had not marked a crashed node down when
    /// it came back (or by the end, for a crash that lasted twice the stale
    /// bound).
    pub detection_missed: u64,
    /// Live honest nodes marked down while no partition was in force.
    pub false_downs: u64,
    /// Membership transitions, fleet-wide.
    pub member_events: u64,
    /// (crashed node, observer) pairs where the observer, having marked the
    /// node down, showed it alive again on a refutation the node signed
    /// before it crashed (held behind a cut) and had to suspect it again.
    pub late_refutations: u64,
    /// Longest such refutation shown, until suspected again.
    pub late_refutation_max_ms: Option<u64>,
}

fn ms(x: Option<u64>) -> String {
    x.map_or("-".into(), |v| format!("{v} ms"))
}

impl Report {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {}  seed {}  nodes {}  simulated {} ms  events {}",
            self.scenario, self.seed, self.nodes, self.duration_ms, self.events
        );
        let _ = writeln!(
            s,
            "{:<7} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>7}",
            "chg", "origin", "t50", "t99", "t99.99", "t100", "lower", "ratio", "reached"
        );
        for (i, p) in self.policy.iter().enumerate() {
            let _ = writeln!(
                s,
                "{:<7} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>7}",
                match &p.region {
                    Some(r) => format!("{i}@{r}"),
                    None => i.to_string(),
                },
                p.origin,
                ms(p.t50_ms),
                ms(p.t99_ms),
                ms(p.t9999_ms),
                ms(p.t100_ms),
                format!("{} ms", p.lower_bound_ms),
                p.ratio.map_or("-".into(), |r| format!("{r:.2}")),
                format!("{}/{}", p.reached, p.of)
            );
        }
        let t = &self.traffic;
        let _ = writeln!(
            s,
            "traffic over {} ms, per node per second: sent {:.0} B in {:.1} msgs, received {:.0} B in {:.1} msgs",
            t.window_ms,
            t.bytes_sent_per_node_s,
            t.messages_sent_per_node_s,
            t.bytes_received_per_node_s,
            t.messages_received_per_node_s
        );
        let _ = writeln!(
            s,
            "duplication ratio (bytes received / new change bytes): {:.2}; change copies: {:.2}; new change bytes per node: {:.0}",
            t.duplication_ratio, t.change_copies, t.new_change_bytes_per_node
        );
        let kinds: Vec<String> = t
            .received_by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        let _ = writeln!(
            s,
            "received by kind (x new change bytes): {}; of the rumours, news: {:.2}",
            kinds.join(", "),
            t.rumour_news
        );
        let _ = writeln!(
            s,
            "last heal: {}  convergence after heal: {}  anti-entropy rounds: {} ({} retries of lost steps, {} ranges held)",
            ms(self.last_heal_ms),
            ms(self.convergence_after_heal_ms),
            self.anti_entropy_rounds,
            self.sync_retries,
            self.sync_ranges_held
        );
        if !self.heal_curve.is_empty() {
            let pts: Vec<String> = self
                .heal_curve
                .iter()
                .map(|(t, n)| format!("+{t} {n}"))
                .collect();
            let _ = writeln!(
                s,
                "nodes behind after the heal (ms: nodes): {}; the last: {:?}",
                pts.join(", "),
                self.heal_last_nodes
            );
        }
        let _ = writeln!(
            s,
            "changes received: {} by eager push, {} in answers ({} not new); grafts {}, prunes {}",
            self.changes_received_eager,
            self.changes_received_reply,
            self.reply_duplicates,
            self.grafts,
            self.prunes
        );
        let _ = writeln!(
            s,
            "rejected: {:?}  malformed messages: {}  misbehaviour events: {}  disconnects: {}  peak pending: {}  void epochs: {}",
            self.rejected,
            self.malformed_messages,
            self.misbehaviour_events,
            self.disconnects,
            self.peak_pending,
            self.void_epochs
        );
        if self.safety_violations.is_empty() {
            let _ = writeln!(s, "safety: ok");
        } else {
            let _ = writeln!(
                s,
                "safety: {} VIOLATIONS, first: {}",
                self.safety_violations.len(),
                self.safety_violations[0]
            );
        }
        let _ = writeln!(
            s,
            "liveness: {}",
            self.liveness_failure.as_deref().unwrap_or("ok")
        );
        let _ = writeln!(
            s,
            "answers: {} bytes sent, {} requests refused (answer budget spent)",
            self.answer_bytes_sent, self.requests_refused
        );
        if let (Some(max), Some(bound)) = (self.amplifier_bytes_max, self.amplifier_bytes_bound) {
            let _ = writeln!(
                s,
                "amplification: most bytes sent to one want_amplifier {max} (bound {bound}): {}",
                if self.amplification_violations.is_empty() {
                    "ok".to_string()
                } else {
                    format!(
                        "{} VIOLATIONS, first: {}",
                        self.amplification_violations.len(),
                        self.amplification_violations[0]
                    )
                }
            );
        }
        if let Some(m) = &self.membership {
            let secs = (self.duration_ms as f64 / 1000.0).max(1e-3) * self.nodes.max(1) as f64;
            let _ = writeln!(
                s,
                "membership: crash to down {} pairs: median {}, p99 {}, max {}; missed {}; false downs {}; late refutations shown {} (longest {}); events {}; per node per second: {:.2} probes, {:.3} rumours verified; {} suspicions, {} refutations",
                m.detections,
                ms(m.detection_median_ms),
                ms(m.detection_p99_ms),
                ms(m.detection_max_ms),
                m.detection_missed,
                m.false_downs,
                m.late_refutations,
                ms(m.late_refutation_max_ms),
                m.member_events,
                self.probes_sent as f64 / secs,
                self.rumours_verified as f64 / secs,
                self.suspicions_raised,
                self.refutations
            );
        }
        if let Some(first) = self.membership_violations.first() {
            let _ = writeln!(
                s,
                "membership: {} VIOLATIONS, first: {first}",
                self.membership_violations.len()
            );
        }
        if let Some(sc) = &self.scope {
            let _ = writeln!(
                s,
                "scope: regions {}{}: {}; gate withheld {}; received per site {:.0} B/s (outside the scoped regions {:.0}, inside {:.0}){}",
                sc.scoped_regions.join(","),
                if sc.regional_regions.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} regional policy changes in {}",
                        sc.regional_changes,
                        sc.regional_regions.join(",")
                    )
                },
                if sc.leaks.is_empty() {
                    "no leak".to_string()
                } else {
                    format!("{} LEAKS, first: {}", sc.leaks.len(), sc.leaks[0])
                },
                sc.gate_withheld,
                sc.bytes_received_per_site_s,
                sc.outside_bytes_per_site_s,
                sc.inside_bytes_per_site_s,
                match (sc.unscoped_bytes_received_per_site_s, sc.saved_fraction) {
                    (Some(u), Some(f)) => format!(
                        "; unscoped {u:.0} B/s (outside {:.0}, inside {:.0}): {:.1}% saved",
                        sc.unscoped_outside_bytes_per_site_s.unwrap_or(0.0),
                        sc.unscoped_inside_bytes_per_site_s.unwrap_or(0.0),
                        f * 100.0
                    ),
                    _ => String::new(),
                }
            );
        }
        if self.link_model_violations.is_empty() {
            let _ = writeln!(s, "link model: ok");
        } else {
            let _ = writeln!(
                s,
                "link model: {} SIMULATOR BUGS (not engine faults), first: {}",
                self.link_model_violations.len(),
                self.link_model_violations[0]
            );
        }
        s
    }

    /// CSV of the fraction of live nodes holding each change against time.
    pub fn csv(&self) -> String {
        let mut s = String::from("change,time_ms,fraction\n");
        for (i, p) in self.policy.iter().enumerate() {
            for (k, t) in p.curve.iter().enumerate() {
                let _ = writeln!(s, "{i},{t},{:.6}", (k + 1) as f64 / p.of.max(1) as f64);
            }
        }
        s
    }

    /// Write report.json, convergence.csv and convergence.svg into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("convergence.csv"), self.csv())?;
        self.svg(&dir.join("convergence.svg"))?;
        Ok(())
    }

    /// The fraction of the fleet holding each policy change against time.
    pub fn svg(&self, path: &Path) -> anyhow::Result<()> {
        let x_max = self
            .policy
            .iter()
            .filter_map(|p| p.curve.last().copied())
            .max()
            .unwrap_or(1)
            .max(1);
        let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(0u64..x_max, 0f64..1.0)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .x_labels(6)
            .y_labels(6)
            .x_desc("ms since publication")
            .y_desc("fraction of live nodes")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let colours = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for (i, p) in self.policy.iter().enumerate() {
            let of = p.of.max(1) as f64;
            let mut pts = vec![(0u64, 0f64)];
            pts.extend(
                p.curve
                    .iter()
                    .enumerate()
                    .map(|(k, t)| (*t, (k + 1) as f64 / of)),
            );
            chart
                .draw_series(LineSeries::new(pts, colours[i % colours.len()]))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}
