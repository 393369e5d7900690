//! The status document of one node.
//!
//! Single writer: only the owner signs its changes. Each field is one key of the
//! automerge root map holding a JSON text. Because the writer is single, a
//! replica does not need a live automerge document to materialise it: each field
//! is a last-writer-wins register ordered by the automerge op counter (a Lamport
//! clock) and then the change hash, which equals sequential application for the
//! honest linear history and stays deterministic if a stolen key forks it. This
//! keeps a replica of 10,000 status documents to a few kilobytes each instead of
//! the ~14 KB a live automerge document costs.
//!
//! History is bounded: the [`StatusWriter`] starts a new epoch (a fresh document
//! holding the whole current state) every `epoch_changes_max` changes, and
//! replicas drop older epochs.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT, ReadDoc};
use serde::{Deserialize, Serialize};

use crate::change::{OwnedKind, SignedChange, edit_actor};
use crate::keys::SecretKey;

/// Every field an owned document (status or summary) may hold.
pub const STATUS_FIELDS: &[&str] = &[
    "name", "region", "addrs", "version", "health", "applied", "hb", "healthy",
];

/// The fields a summary document may hold ([`crate::DocId::Summary`]): what a site
/// in another region may learn of a site whose status is region-scoped. No
/// names, addresses, labels or health details: applied policy, whether every
/// check passes, software version and heartbeat.
pub const SUMMARY_FIELDS: &[&str] = &["version", "applied", "hb", "healthy"];

/// The fields a status document ([`crate::DocId::Status`]) may hold: all
/// but `healthy`, which only a summary states (a status's health is its
/// checks, so a status cannot claim healthy while its checks fail).
pub const STATUS_DOC_FIELDS: &[&str] = &[
    "name", "region", "addrs", "version", "health", "applied", "hb",
];

/// One health check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Passing.
    pub ok: bool,
    /// What the check saw.
    #[serde(default)]
    pub detail: String,
}

/// What policy the node has applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPolicy {
    /// Policy heads (hex change hashes) of the config the node rendered and applied.
    pub heads: Vec<String>,
    /// The error applying them, if any.
    #[serde(default)]
    pub error: Option<String>,
    /// Exit code of the apply command, if it ran.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Heads (hex) of the site's region's scoped policy in the config it
    /// applied (empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regional: Vec<String>,
    /// Changes of the region's scoped policy that the policy heads applied
    /// commit to and that the site did not hold when it applied them: 0
    /// when the config applied is whole.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub regional_missing: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A node's status, as its owner reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Site name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Listen addresses (multiaddrs).
    pub addrs: Vec<String>,
    /// Software version.
    pub version: String,
    /// Health checks by name.
    pub health: BTreeMap<String, HealthCheck>,
    /// Applied policy.
    pub applied: AppliedPolicy,
    /// Heartbeat counter: bumped at every heartbeat.
    pub hb: u64,
    /// Every health check passes: written only in a summary document (a
    /// status document holds the checks themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

impl NodeStatus {
    /// The fields as JSON texts, keyed like the document.
    pub fn to_fields(&self) -> BTreeMap<String, String> {
        let j = |v: serde_json::Value| v.to_string();
        let mut m = BTreeMap::new();
        m.insert("name".into(), j(self.name.clone().into()));
        m.insert("region".into(), j(self.region.clone().into()));
        m.insert("addrs".into(), j(serde_json::json!(self.addrs)));
        m.insert("version".into(), j(self.version.clone().into()));
        m.insert("health".into(), j(serde_json::json!(self.health)));
        m.insert("applied".into(), j(serde_json::json!(self.applied)));
        m.insert("hb".into(), j(self.hb.into()));
        if let Some(h) = self.healthy {
            m.insert("healthy".into(), j(h.into()));
        }
        m
    }

    /// What a summary document says of this status: applied policy, version,
    /// heartbeat, and whether every health check passes.
    pub fn summary(&self) -> NodeStatus {
        NodeStatus {
            version: self.version.clone(),
            applied: self.applied.clone(),
            hb: self.hb,
            healthy: Some(
                self.healthy
                    .unwrap_or_else(|| self.health.values().all(|c| c.ok)),
            ),
            ..NodeStatus::default()
        }
    }

    /// Whether every health check passes (a summary's word, else the checks').
    pub fn is_healthy(&self) -> bool {
        self.healthy
            .unwrap_or_else(|| self.health.values().all(|c| c.ok))
    }

    /// Set one field from its JSON text (`None`: deleted). A text that does not
    /// parse resets the field to its default; returns whether it parsed.
    pub fn set_field(&mut self, key: &str, value: Option<&str>) -> bool {
        fn parse<T: serde::de::DeserializeOwned + Default>(slot: &mut T, v: Option<&str>) -> bool {
            match v.map(serde_json::from_str::<T>) {
                Some(Ok(x)) => {
                    *slot = x;
                    true
                }
                Some(Err(_)) => {
                    *slot = T::default();
                    false
                }
                None => {
                    *slot = T::default();
                    true
                }
            }
        }
        match key {
            "name" => parse(&mut self.name, value),
            "region" => parse(&mut self.region, value),
            "addrs" => parse(&mut self.addrs, value),
            "version" => parse(&mut self.version, value),
            "health" => parse(&mut self.health, value),
            "applied" => parse(&mut self.applied, value),
            "hb" => parse(&mut self.hb, value),
            "healthy" => parse(&mut self.healthy, value),
            _ => false,
        }
    }

    /// Read fields back; a field that does not parse is left at its default and
    /// named in the returned list.
    pub fn from_fields<'a>(
        fields: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> (Self, Vec<String>) {
        let mut s = NodeStatus::default();
        let mut bad = Vec::new();
        for (k, v) in fields {
            if !s.set_field(k, Some(v)) {
                bad.push(k.to_string());
            }
        }
        (s, bad)
    }
}

/// Writes a node's own status document: the only place status changes are made.
///
/// A clone writes exactly what the original would (signatures and automerge
/// commits are deterministic): a simulator uses one to learn a node's first
/// change before the node starts. A daemon never clones its writer; two
/// writers of one history would fork it.
#[derive(Clone)]
pub struct StatusWriter {
    key: SecretKey,
    epoch: u32,
    doc: Automerge,
    changes_in_epoch: usize,
    fields: BTreeMap<String, String>,
    epoch_changes_max: usize,
    /// The status document, or the summary of it.
    kind: OwnedKind,
    /// Where actor nonces come from: the OS (a daemon), or a seeded generator
    /// (a deterministic simulation): `SmallRng`, which is `Clone` (unlike
    /// `StdRng`), so that a clone goes on exactly as the original would.
    nonces: Option<rand::rngs::SmallRng>,
}

/// Changes per epoch before the writer starts a new one (replicas accept up to
/// [`crate::Limits::status_epoch_changes_max`]).
pub const EPOCH_CHANGES_DEFAULT: usize = 16;

impl StatusWriter {
    /// A writer starting a fresh document at `epoch`. After a restart, pass an
    /// epoch above any this node has used (see [`StatusWriter::resume`]).
    pub fn new(key: SecretKey, epoch: u32, epoch_changes_max: usize) -> Self {
        let doc = Automerge::new().with_actor(edit_actor(&key.public()));
        StatusWriter {
            key,
            epoch,
            doc,
            changes_in_epoch: 0,
            fields: BTreeMap::new(),
            epoch_changes_max: epoch_changes_max.max(2),
            kind: OwnedKind::Status,
            nonces: None,
        }
    }

    /// The kind of document written.
    pub fn kind(&self) -> OwnedKind {
        self.kind
    }

    /// A writer of this node's summary document ([`OwnedKind::Summary`]),
    /// starting at this writer's epoch (a summary is written only when the
    /// status is, so its epochs never pass the status's, and the next life's
    /// first epoch is above both). Its actor nonces come from this writer's
    /// source (a seeded writer's stay deterministic).
    pub fn summary_writer(&mut self) -> StatusWriter {
        let mut w = StatusWriter::new(self.key.clone(), self.epoch, self.epoch_changes_max);
        w.kind = OwnedKind::Summary;
        if let Some(rng) = &mut self.nonces {
            use rand::{RngExt, SeedableRng};
            w.nonces = Some(rand::rngs::SmallRng::seed_from_u64(rng.random()));
        }
        w.doc = Automerge::new().with_actor(w.fresh_actor());
        w
    }

    /// A writer whose actor nonces come from a generator seeded with `seed`:
    /// for deterministic simulation only. A daemon must use
    /// [`StatusWriter::new`]: a node that reused a seed across lives would
    /// write two histories with one actor.
    pub fn seeded(key: SecretKey, epoch: u32, epoch_changes_max: usize, seed: u64) -> Self {
        use rand::SeedableRng;
        let mut w = StatusWriter::new(key, epoch, epoch_changes_max);
        w.nonces = Some(rand::rngs::SmallRng::seed_from_u64(seed));
        w.doc = Automerge::new().with_actor(w.fresh_actor());
        w
    }

    fn fresh_actor(&mut self) -> automerge::ActorId {
        match &mut self.nonces {
            None => edit_actor(&self.key.public()),
            Some(rng) => {
                use rand::RngExt;
                crate::change::actor_with_nonce(&self.key.public(), rng.random())
            }
        }
    }

    /// Resume the document of `epoch` from its changes (from the store, or from
    /// peers after the store was lost). If they do not load, start `epoch + 1`.
    pub fn resume(
        key: SecretKey,
        epoch: u32,
        changes: &[SignedChange],
        epoch_changes_max: usize,
    ) -> Self {
        Self::resume_kind(key, OwnedKind::Status, epoch, changes, epoch_changes_max)
    }

    /// [`StatusWriter::resume`] of a document of `kind`.
    pub fn resume_kind(
        key: SecretKey,
        kind: OwnedKind,
        epoch: u32,
        changes: &[SignedChange],
        epoch_changes_max: usize,
    ) -> Self {
        let mut w = StatusWriter::new(key.clone(), epoch, epoch_changes_max);
        w.kind = kind;
        let parsed: Result<Vec<automerge::Change>, _> = changes
            .iter()
            .map(|c| automerge::Change::from_bytes(c.change.clone()))
            .collect();
        let loaded = parsed
            .ok()
            .and_then(|cs| w.doc.apply_changes(cs).ok())
            .is_some()
            && w.doc.get_missing_deps(&[]).is_empty();
        if !loaded {
            let mut w = StatusWriter::new(key, epoch + 1, epoch_changes_max);
            w.kind = kind;
            return w;
        }
        w.changes_in_epoch = changes.len();
        // Only the fields this kind of document may hold: a new epoch's first
        // change carries every loaded field.
        let fields = match kind {
            OwnedKind::Status => STATUS_DOC_FIELDS,
            OwnedKind::Summary => SUMMARY_FIELDS,
        };
        for k in fields {
            if let Ok(Some((automerge::Value::Scalar(s), _))) = w.doc.get(ROOT, *k)
                && let automerge::ScalarValue::Str(v) = s.as_ref()
            {
                w.fields.insert((*k).to_string(), v.to_string());
            }
        }
        w
    }

    /// The epoch being written.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Whether the document being written holds the change `h`.
    pub fn knows(&self, h: &automerge::ChangeHash) -> bool {
        self.doc.get_change_meta_by_hash(h).is_some()
    }

    /// The heads of the document being written.
    pub fn heads(&self) -> Vec<automerge::ChangeHash> {
        self.doc.get_heads()
    }

    /// The status as last written.
    pub fn current(&self) -> NodeStatus {
        NodeStatus::from_fields(self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))).0
    }

    /// Write the fields of `status` that changed (all of them in a new epoch).
    /// `None` when nothing changed.
    pub fn update(&mut self, status: &NodeStatus) -> Option<SignedChange> {
        let want = match self.kind {
            OwnedKind::Status => {
                let mut f = status.to_fields();
                f.retain(|k, _| STATUS_DOC_FIELDS.contains(&k.as_str()));
                f
            }
            OwnedKind::Summary => {
                let mut f = status.summary().to_fields();
                f.retain(|k, _| SUMMARY_FIELDS.contains(&k.as_str()));
                f
            }
        };
        if self.changes_in_epoch >= self.epoch_changes_max {
            self.start_epoch();
        }
        let changed: Vec<(String, String)> = want
            .into_iter()
            .filter(|(k, v)| self.fields.get(k) != Some(v))
            .collect();
        if changed.is_empty() && self.changes_in_epoch > 0 {
            return None;
        }
        let mut tx = self.doc.transaction();
        let all = if self.changes_in_epoch == 0 {
            // A new epoch's first change holds the whole state.
            let mut all = self.fields.clone();
            all.extend(changed.iter().cloned());
            all.into_iter().collect()
        } else {
            changed
        };
        for (k, v) in &all {
            tx.put(ROOT, k.as_str(), v.as_str())
                .expect("put on the root map cannot fail");
        }
        tx.commit();
        for (k, v) in all {
            self.fields.insert(k, v);
        }
        self.changes_in_epoch += 1;
        let change = self.doc.get_last_local_change().expect("just committed");
        Some(SignedChange::sign(
            self.kind.doc(self.key.public(), self.epoch),
            0,
            &change,
            &self.key,
        ))
    }

    /// Sign a membership rumour this node may sign: its own `Alive`, or a
    /// `Suspect` it reports.
    pub fn sign_rumour(&self, rumour: crate::rumour::Rumour) -> crate::rumour::SignedRumour {
        crate::rumour::SignedRumour::sign(rumour, &self.key)
    }

    /// Bump the heartbeat counter and write it.
    pub fn heartbeat(&mut self) -> SignedChange {
        let mut s = self.current();
        s.hb += 1;
        self.update(&s).expect("the heartbeat counter changed")
    }

    /// Move past a history this writer did not write: peers hold this node's
    /// status at `seen_epoch` from an earlier life (a store lost or restored
    /// from a backup, only `node.key` kept). The writer starts epoch
    /// `seen_epoch + 1` (if it is not already past it) and returns the new
    /// epoch's first change, holding the whole current status; `None` if the
    /// writer was already past `seen_epoch`.
    pub fn move_past(&mut self, seen_epoch: u32) -> Option<SignedChange> {
        if seen_epoch < self.epoch {
            return None;
        }
        self.epoch = seen_epoch;
        self.start_epoch();
        let mut status = self.current();
        // The heartbeat counter moves too, so the change is never empty.
        status.hb += 1;
        self.update(&status)
    }

    fn start_epoch(&mut self) {
        self.epoch += 1;
        let actor = self.fresh_actor();
        self.doc = Automerge::new().with_actor(actor);
        self.changes_in_epoch = 0;
    }
}
