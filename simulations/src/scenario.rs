//! Scenarios: what the simulated fleet looks like and what happens to it, as
//! TOML data with a fixed seed. Every field but `name` has a default.

use std::path::Path;

use dcloud_node::engine::EngineConfig;
use serde::{Deserialize, Serialize};

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML does not describe a scenario.
    #[error("invalid scenario {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// The values are inconsistent.
    #[error("invalid scenario {name}: {reason}")]
    Invalid {
        /// Scenario name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// One link direction's behaviour.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LinkModel {
    /// Base latency of each link direction is drawn uniformly from min..=max, once.
    pub latency_min_ms: u64,
    /// See `latency_min_ms`.
    pub latency_max_ms: u64,
    /// Extra per-message delay, uniform 0..=jitter.
    pub jitter_ms: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is held back (reordered) by up to `reorder_delay_ms`.
    pub reorder: f64,
    /// See `reorder`.
    pub reorder_delay_ms: u64,
    /// Fraction of link directions that are asymmetric: their loss is
    /// `asymmetric_loss` instead of `loss` (one way only).
    pub asymmetric_fraction: f64,
    /// See `asymmetric_fraction`.
    pub asymmetric_loss: f64,
}

impl Default for LinkModel {
    fn default() -> Self {
        LinkModel {
            latency_min_ms: 20,
            latency_max_ms: 80,
            jitter_ms: 5,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay_ms: 100,
            asymmetric_fraction: 0.0,
            asymmetric_loss: 0.5,
        }
    }
}

/// A policy change published at one node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyEvent {
    /// When.
    pub at_ms: u64,
    /// Origin node (index); the next live node if it is down.
    #[serde(default)]
    pub node: usize,
}

/// A change of one region's scoped policy (`DocId::Region`), with the
/// fleet policy change that commits to it, published together at a live
/// honest site of that region (drawn from the seeded RNG).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionalEvent {
    /// When.
    pub at_ms: u64,
    /// The region (one of `r0..r{regions-1}`) whose scoped policy changes.
    pub region: String,
}

/// Periodic status updates by every (enrolled) node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StatusLoad {
    /// Each node updates its status this often (random phase); 0 never.
    pub interval_ms: u64,
    /// No updates from this time on (so that liveness can be judged); 0 = never stop.
    pub until_ms: u64,
    /// Statuses as a daemon writes them: two listen addresses and two
    /// health checks with details (what region scoping keeps in a region),
    /// not only a name and a version.
    pub detailed: bool,
}

/// A partition: a random `fraction` of the nodes is cut from the rest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// Start.
    pub from_ms: u64,
    /// Heal.
    pub until_ms: u64,
    /// Fraction of nodes on the far side.
    pub fraction: f64,
}

/// Crash and (optionally) restart of nodes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    /// Node indexes; empty picks `count` random nodes.
    #[serde(default)]
    pub nodes: Vec<usize>,
    /// How many random nodes, when `nodes` is empty.
    #[serde(default)]
    pub count: usize,
    /// When they crash.
    pub at_ms: u64,
    /// When they restart from their persisted state; none = they leave for good.
    #[serde(default)]
    pub restart_ms: Option<u64>,
    /// Whether the restart also loses the store (rebuilds from peers).
    #[serde(default)]
    pub wipe_store: bool,
}

/// Nodes that join late (churn): started at `at_ms` with an empty replica
/// holding only the bootstrap policy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// How many (the highest indexes).
    pub count: usize,
    /// When.
    pub at_ms: u64,
}

/// An enrolled node that misbehaves.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Malicious {
    /// Node index.
    pub node: usize,
    /// Amplification (issue 10): send this many requests for everything per
    /// interval to each peer, alternately a `Want` of every document it
    /// knows with no heads and a `Sync` step listing an empty key space
    /// (answered, without a budget, by every change the peer holds).
    #[serde(default)]
    pub want_amplifier: usize,
    /// Send forged and tampered changes.
    #[serde(default)]
    pub forge: bool,
    /// Replay old valid changes.
    #[serde(default)]
    pub replay: bool,
    /// Send garbage messages, this many per interval per peer.
    #[serde(default)]
    pub flood: usize,
    /// Never relay changes (but announce and reconcile as if it did).
    #[serde(default)]
    pub withhold: bool,
    /// Send a compressed (deflate) status change, the shape of a
    /// decompression bomb, to every peer.
    #[serde(default)]
    pub bomb: bool,
    /// Sign a fresh status epoch of 100 sibling changes and hand each peer a
    /// different 64-subset (the over-full epoch that split honest nodes).
    #[serde(default)]
    pub epoch_splitter: bool,
    /// Send this many status changes per interval for new far-future epochs
    /// whose first change is withheld (they can never apply).
    #[serde(default)]
    pub far_future_flood: usize,
    /// Stop acting at this time (None: until the end). Attacks that create
    /// valid documents must stop for the honest nodes to agree on them.
    #[serde(default)]
    pub until_ms: Option<u64>,
    /// How often it acts.
    #[serde(default = "default_malice_interval")]
    pub interval_ms: u64,
}

fn default_malice_interval() -> u64 {
    500
}

/// A whole scenario.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Name, for reports.
    pub name: String,
    /// Seed (a command-line `--seed` overrides it).
    pub seed: u64,
    /// Fleet size.
    pub nodes: usize,
    /// Nodes enrolled in the policy (the first ones); None = all. Unenrolled
    /// nodes relay policy but their status is refused (cheap large fleets).
    pub enrolled: Option<usize>,
    /// Start from the fleet's steady state instead of its first minute:
    /// every node begins holding the bootstrap policy and every enrolled
    /// node's first status change, as if the fleet had been up a while
    /// (the changes are signed by their owners and verified once, into one
    /// replica that every node starts from a clone of, sharing its documents
    /// until it changes them). Makes 10,000 enrolled nodes fit one process;
    /// it measures the steady state, not the first spread of status.
    pub warm_start: bool,
    /// Simulated time.
    pub duration_ms: u64,
    /// Target average overlay degree (a random ring plus random chords).
    pub degree: usize,
    /// Nodes start at a random time in 0..=start_spread_ms.
    pub start_spread_ms: u64,
    /// Traffic counters are reset at this time (measure the steady state).
    pub measure_from_ms: u64,
    /// Convergence must happen this long after the last fault heals.
    pub liveness_bound_ms: u64,
    /// How often liveness is checked.
    pub check_interval_ms: u64,
    /// Links.
    pub link: LinkModel,
    /// The engine's configuration (`[engine]`): the daemon's own
    /// `EngineConfig`, with the daemon's defaults.
    pub engine: EngineConfig,
    /// Status updates.
    pub status: StatusLoad,
    /// Policy changes.
    pub policy: Vec<PolicyEvent>,
    /// Changes of regions' scoped policy (`[[regional_policy]]`), in time
    /// order: each sets a value only that region's sites may hold (the
    /// scope checker fails the run if an honest node sends or holds it
    /// outside the region), and every live site of the region must end
    /// holding it within the liveness bound.
    pub regional_policy: Vec<RegionalEvent>,
    /// Partitions.
    pub partition: Vec<Partition>,
    /// Whether a partition also drops connections (peers see down/up); else
    /// messages are silently lost.
    pub partition_drops_connections: bool,
    /// Crashes.
    pub crash: Vec<Crash>,
    /// Late joins.
    pub join: Vec<Join>,
    /// Misbehaving nodes.
    pub malicious: Vec<Malicious>,
    /// Regions: node `i` is enrolled in region `r{i % regions}`.
    pub regions: usize,
    /// Regions whose status is scoped to the region from the start
    /// (policy `scope/<region>`): their sites' status documents must reach
    /// only their members (a checker fails the run otherwise), everyone
    /// else gets their summaries.
    pub scoped_regions: Vec<String>,
    /// Run the scenario a second time without scoping and report the
    /// bytes per site that scoping saved (`dcloud-sim run` only).
    pub compare_unscoped: bool,
    /// This run is the unscoped baseline of a `compare_unscoped` run: the
    /// policy scopes nothing (and the scope checker is off), but the
    /// report still splits traffic by the scoped regions.
    #[serde(skip)]
    pub unscoped_baseline: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "unnamed".into(),
            seed: 1,
            nodes: 20,
            enrolled: None,
            warm_start: false,
            duration_ms: 20_000,
            degree: 6,
            start_spread_ms: 100,
            measure_from_ms: 0,
            liveness_bound_ms: 5_000,
            check_interval_ms: 50,
            link: LinkModel::default(),
            engine: EngineConfig::default(),
            status: StatusLoad::default(),
            policy: Vec::new(),
            regional_policy: Vec::new(),
            partition: Vec::new(),
            partition_drops_connections: true,
            crash: Vec::new(),
            join: Vec::new(),
            malicious: Vec::new(),
            regions: 4,
            scoped_regions: Vec::new(),
            compare_unscoped: false,
            unscoped_baseline: false,
        }
    }
}

impl Scenario {
    /// Load a TOML scenario.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Parse TOML text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let sc: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.to_string(),
            source: Box::new(e),
        })?;
        sc.validate()?;
        Ok(sc)
    }

    /// Check the values hang together.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |reason: String| {
            Err(ScenarioError::Invalid {
                name: self.name.clone(),
                reason,
            })
        };
        if self.nodes < 2 {
            return bad("at least 2 nodes".into());
        }
        if let Err(e) = self.engine.validate() {
            return bad(e.to_string());
        }
        if self.link.latency_min_ms > self.link.latency_max_ms {
            return bad("latency_min_ms > latency_max_ms".into());
        }
        for p in [
            self.link.loss,
            self.link.duplicate,
            self.link.reorder,
            self.link.asymmetric_fraction,
            self.link.asymmetric_loss,
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("probability {p} outside 0..=1"));
            }
        }
        if self.check_interval_ms == 0 {
            return bad("check_interval_ms must be > 0".into());
        }
        if self.warm_start && !self.join.is_empty() {
            return bad(
                "warm_start cannot model late joiners (every node starts holding the fleet's state)"
                    .into(),
            );
        }
        if self.enrolled.is_some_and(|e| e > self.nodes) {
            return bad(format!(
                "enrolled {} exceeds the fleet of {} nodes",
                self.enrolled.unwrap_or(0),
                self.nodes
            ));
        }
        // Partitions may overlap in time: a link is cut while any active
        // partition separates its ends.
        for (i, p) in self.partition.iter().enumerate() {
            if p.until_ms <= p.from_ms {
                return bad(format!(
                    "partition {i}: until_ms {} must be after from_ms {}",
                    p.until_ms, p.from_ms
                ));
            }
            if !(0.0..1.0).contains(&p.fraction) {
                return bad(format!(
                    "partition {i}: fraction {} outside 0..1",
                    p.fraction
                ));
            }
            let far = (p.fraction * self.nodes as f64).round() as usize;
            if far == 0 || far >= self.nodes {
                return bad(format!(
                    "partition {i}: fraction {} of {} nodes leaves a side empty",
                    p.fraction, self.nodes
                ));
            }
        }
        for (i, p) in self.policy.iter().enumerate() {
            if p.node >= self.nodes {
                return bad(format!("policy {i}: node {} out of range", p.node));
            }
        }
        for (i, m) in self.malicious.iter().enumerate() {
            if m.node >= self.nodes {
                return bad(format!("malicious {i}: node {} out of range", m.node));
            }
            if self.malicious[..i].iter().any(|o| o.node == m.node) {
                return bad(format!(
                    "malicious {i}: node {} is already malicious (one entry per node)",
                    m.node
                ));
            }
            if m.interval_ms == 0 {
                return bad(format!("malicious {i}: interval_ms must be > 0"));
            }
            if m.far_future_flood > 1000 {
                return bad(format!(
                    "malicious {i}: far_future_flood {} over 1000 (one message per interval)",
                    m.far_future_flood
                ));
            }
            if self.enrolled.is_some_and(|e| m.node >= e) {
                return bad(format!(
                    "malicious {i}: node {} is not enrolled (malicious nodes are enrolled ones)",
                    m.node
                ));
            }
        }
        for (i, c) in self.crash.iter().enumerate() {
            if let Some(n) = c.nodes.iter().find(|n| **n >= self.nodes) {
                return bad(format!("crash {i}: node {n} out of range"));
            }
            let up = (0..self.nodes)
                .filter(|&n| self.join_ms(n).is_none_or(|j| j < c.at_ms))
                .count();
            if c.count > up {
                return bad(format!(
                    "crash {i}: count {} exceeds the {up} nodes up at {} ms",
                    c.count, c.at_ms
                ));
            }
            if c.restart_ms.is_some_and(|r| r <= c.at_ms) {
                return bad(format!("crash {i}: restart_ms must be after at_ms"));
            }
            if let Some(n) = c
                .nodes
                .iter()
                .find(|&&n| self.join_ms(n).is_some_and(|j| j >= c.at_ms))
            {
                return bad(format!(
                    "crash {i}: node {n} joins late, at {} ms, not before the crash at {} ms",
                    self.join_ms(*n).unwrap_or(0),
                    c.at_ms
                ));
            }
            if c.wipe_store && c.restart_ms.is_none() {
                return bad(format!(
                    "crash {i}: wipe_store needs restart_ms (a node that leaves for good has no store to wipe)"
                ));
            }
        }
        if self.regions == 0 {
            return bad("regions must be at least 1".into());
        }
        for r in &self.scoped_regions {
            let known = (0..self.regions).any(|k| *r == format!("r{k}"));
            if !known {
                return bad(format!(
                    "scoped region {r:?} is not one of the {} regions r0..r{}",
                    self.regions,
                    self.regions - 1
                ));
            }
        }
        let enrolled = self.enrolled.unwrap_or(self.nodes).min(self.nodes);
        for (i, r) in self.regional_policy.iter().enumerate() {
            if !(0..enrolled).any(|k| self.region_of(k) == r.region) {
                return bad(format!(
                    "regional_policy {i}: region {:?} has no enrolled site (regions r0..r{})",
                    r.region,
                    self.regions - 1
                ));
            }
            if i > 0 && r.at_ms < self.regional_policy[i - 1].at_ms {
                return bad(format!(
                    "regional_policy {i}: at_ms {} before the previous one's (list them in time order)",
                    r.at_ms
                ));
            }
        }
        if self.warm_start && !self.scoped_regions.is_empty() {
            return bad(
                "warm_start cannot model scoped regions (its one shared replica holds every status)"
                    .into(),
            );
        }
        if self.compare_unscoped && self.scoped_regions.is_empty() {
            return bad("compare_unscoped needs scoped_regions".into());
        }
        if self.join.iter().map(|j| j.count).sum::<usize>() >= self.nodes {
            return bad("joins must leave some nodes at the start".into());
        }
        Ok(())
    }

    /// The region node `i` is enrolled in.
    pub fn region_of(&self, i: usize) -> String {
        format!("r{}", i % self.regions.max(1))
    }

    /// Whether node `i`'s region is scoped.
    pub fn scoped(&self, i: usize) -> bool {
        !self.unscoped_baseline && self.in_scoped_region(i)
    }

    /// Whether node `i`'s region is one of `scoped_regions` (in the
    /// baseline too).
    pub fn in_scoped_region(&self, i: usize) -> bool {
        let r = self.region_of(i);
        self.scoped_regions.contains(&r)
    }

    /// Whether region `r` has scoped policy changes (`regional_policy`).
    pub fn has_regional(&self, r: &str) -> bool {
        self.regional_policy.iter().any(|e| e.region == r)
    }

    /// Whether some of region `r`'s data stays in it: its status is scoped
    /// (not in the baseline), or it has scoped policy.
    pub fn keeps_data(&self, r: &str) -> bool {
        (!self.unscoped_baseline && self.scoped_regions.iter().any(|s| s == r))
            || self.has_regional(r)
    }

    /// The regions whose sites keep some data among themselves in either
    /// run of a `compare_unscoped` pair (scoped status or scoped policy):
    /// the overlay keeps half their links inside them.
    pub fn data_regions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.scoped_regions.clone();
        for e in &self.regional_policy {
            if !v.contains(&e.region) {
                v.push(e.region.clone());
            }
        }
        v
    }

    /// This scenario's unscoped baseline (see `compare_unscoped`).
    pub fn unscoped(&self) -> Scenario {
        Scenario {
            unscoped_baseline: true,
            compare_unscoped: false,
            ..self.clone()
        }
    }

    /// When node `i` joins, if it is a late joiner (the highest indexes, in
    /// the order of the `join` entries).
    pub fn join_ms(&self, i: usize) -> Option<u64> {
        let late: usize = self.join.iter().map(|j| j.count).sum();
        let mut next = self.nodes.checked_sub(late)?;
        for j in &self.join {
            if (next..next + j.count).contains(&i) {
                return Some(j.at_ms);
            }
            next += j.count;
        }
        None
    }

    /// When the last fault ends (liveness is judged from here).
    pub fn last_heal_ms(&self) -> u64 {
        let mut t = 0;
        for p in &self.partition {
            t = t.max(p.until_ms);
        }
        for c in &self.crash {
            t = t.max(c.restart_ms.unwrap_or(c.at_ms));
        }
        for j in &self.join {
            t = t.max(j.at_ms);
        }
        for p in &self.policy {
            t = t.max(p.at_ms);
        }
        for r in &self.regional_policy {
            t = t.max(r.at_ms);
        }
        if self.status.interval_ms > 0 {
            t = t.max(if self.status.until_ms == 0 {
                u64::MAX
            } else {
                self.status.until_ms
            });
        }
        t
    }
}
