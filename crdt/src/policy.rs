//! The policy document: fleet configuration, members and revocations.
//!
//! Layout. Every entry is one key of the automerge root map whose value is a
//! JSON text, so that two admins editing different entries never create
//! conflicting nested objects (automerge keeps only one of two concurrently
//! created maps under one key, hiding the other's content):
//!
//! | key | value |
//! | --- | --- |
//! | `fleet/<path>` | fleet-wide config value at a dotted path |
//! | `region/<region>/<path>` | override for one region |
//! | `site/<node id>/<path>` | override for one site (node) |
//! | `member/<node id>` | `{"name", "region", "labels"}` |
//! | `revoked/<node id>` | `{"reason"}`; revocation is permanent |
//! | `secret/<level key>/<path>` | a sealed secret ([`crate::secret::SealedSecret`]): ciphertext per target site, never the value |
//! | `scope/<region>` | `{"status": "region"}`: the status documents of the region's sites replicate only among its members ([`Policy::status_scope`]); other sites get their summaries |
//! | `regional/<region>/<change hash>` | `{}`: commits the fleet to one change of the region's scoped policy ([`DocId::Region`]); only committed changes apply |
//!
//! A region's scoped policy is its own document ([`RegionEditor`]), held only
//! by the active members of the region. Its keys are dotted config paths, its
//! values JSON text, exactly as a `region/<region>/<path>` entry; the
//! effective config merges them after the fleet policy's region overrides and
//! before the site's.
//!
//! Where two admins set the same key concurrently automerge keeps both values,
//! picks the same winner on every replica, and [`Policy::conflicts`] lists them.
//! The effective config of a node is the fleet tree, deep-merged with its
//! region's overrides, then with its site's.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ROOT, ReadDoc, ScalarValue, Value};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::change::{DocId, RegionId, SignedChange};
use crate::keys::{NodeId, SecretKey};
use crate::secret::{SECRET_KEY_PREFIX, SealedSecret, secret_key};

/// Largest JSON text of one policy entry.
pub const POLICY_VALUE_SIZE_MAX_BYTES: usize = 64 << 10;
/// Deepest dotted path.
pub const PATH_SEGMENTS_MAX: usize = 16;

/// A member of the fleet: one enrolled node (site).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Human name of the site.
    pub name: String,
    /// Region the site belongs to.
    pub region: String,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The level a config entry applies at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// Every node.
    Fleet,
    /// Nodes of one region.
    Region(String),
    /// One site.
    Site(NodeId),
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Level::Fleet => f.write_str("fleet"),
            Level::Region(r) => write!(f, "region {r}"),
            Level::Site(n) => write!(f, "site {}", n.short()),
        }
    }
}

/// Two or more values written concurrently under one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The document key.
    pub key: String,
    /// The value every replica shows (automerge's deterministic winner).
    pub winner: String,
    /// All values, winner included.
    pub values: Vec<String>,
}

/// The policy, materialised from its document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Fleet-wide config, by dotted path.
    pub fleet: BTreeMap<String, Json>,
    /// Per-region overrides.
    pub regions: BTreeMap<String, BTreeMap<String, Json>>,
    /// Per-site overrides.
    pub sites: BTreeMap<NodeId, BTreeMap<String, Json>>,
    /// Enrolled nodes (revoked ones included; see `revoked`).
    pub members: BTreeMap<NodeId, Member>,
    /// Revoked nodes and the reason.
    pub revoked: BTreeMap<NodeId, String>,
    /// Sealed secrets by document key (`secret/...`): ciphertext only.
    pub secrets: BTreeMap<String, SealedSecret>,
    /// Regions whose sites' status documents are region-scoped (`scope/<r>`).
    #[serde(default)]
    pub scoped: BTreeSet<String>,
    /// The changes of each region's scoped policy that the fleet policy
    /// commits to (`regional/<region>/<hash>`), by region name.
    #[serde(default)]
    pub regional: BTreeMap<String, BTreeSet<ChangeHash>>,
    /// Concurrent edits that automerge resolved.
    pub conflicts: Vec<Conflict>,
    /// Entries that could not be read (skipped), with the reason.
    pub errors: Vec<String>,
}

/// Why an edit was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    /// A path or name with characters outside `[A-Za-z0-9_-]`, an empty segment, or too deep.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// "path", "region" or "label".
        what: &'static str,
        /// The input.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The value is too large.
    #[error("value is {0} bytes of JSON, over the {POLICY_VALUE_SIZE_MAX_BYTES}-byte limit")]
    TooLarge(usize),
    /// The base snapshot does not load.
    #[error("base snapshot does not load: {0}")]
    Base(String),
    /// Unset of a path that has no value.
    #[error("{level} has no value at {path}")]
    NoSuchPath {
        /// The level.
        level: Level,
        /// The path.
        path: String,
    },
    /// Revoke or site edit of a node that is not enrolled.
    #[error("node {0} is not enrolled")]
    NotEnrolled(String),
    /// Enrolling a node that was revoked.
    #[error(
        "node {0} was revoked; a revoked key cannot be enrolled again (give the site a new key)"
    )]
    Revoked(String),
    /// A sealed secret that does not fit the policy.
    #[error("sealed secret: {0}")]
    Secret(String),
    /// Nothing to commit.
    #[error("no edits")]
    Empty,
    /// The edit would change nothing.
    #[error("{0}: nothing to change")]
    Unchanged(String),
}

/// Check a dotted config path.
pub fn check_path(path: &str) -> Result<(), EditError> {
    let bad = |reason: &str| EditError::InvalidName {
        what: "path",
        value: path.to_string(),
        reason: reason.to_string(),
    };
    if path.is_empty() {
        return Err(bad("empty"));
    }
    let segs: Vec<&str> = path.split('.').collect();
    if segs.len() > PATH_SEGMENTS_MAX {
        return Err(bad("too many segments"));
    }
    for s in segs {
        check_name_chars(s).map_err(|r| bad(&r))?;
    }
    Ok(())
}

/// Check a region name.
pub fn check_region(region: &str) -> Result<(), EditError> {
    check_name_chars(region).map_err(|reason| EditError::InvalidName {
        what: "region",
        value: region.to_string(),
        reason,
    })
}

fn check_name_chars(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty segment".into());
    }
    if s.len() > 64 {
        return Err("longer than 64 characters".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "character {c:?} is not allowed (use A-Z a-z 0-9 _ -)"
        ));
    }
    Ok(())
}

/// The document key of a config entry.
pub fn config_key(level: &Level, path: &str) -> String {
    match level {
        Level::Fleet => format!("fleet/{path}"),
        Level::Region(r) => format!("region/{r}/{path}"),
        Level::Site(n) => format!("site/{n}/{path}"),
    }
}

fn str_of(v: &Value<'_>) -> Option<String> {
    match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

impl Policy {
    /// Materialise the policy from its document.
    pub fn from_doc(doc: &Automerge) -> Policy {
        let mut p = Policy::default();
        for key in doc.keys(ROOT) {
            let all = doc.get_all(ROOT, key.as_str()).unwrap_or_default();
            let values: Vec<String> = all.iter().filter_map(|(v, _)| str_of(v)).collect();
            let Some(Some(winner)) = doc
                .get(ROOT, key.as_str())
                .ok()
                .flatten()
                .map(|(v, _)| str_of(&v))
            else {
                p.errors.push(format!("{key}: value is not text"));
                p.scope_fail_closed(&key);
                continue;
            };
            if values.len() > 1 {
                p.conflicts.push(Conflict {
                    key: key.clone(),
                    winner: winner.clone(),
                    values: values.clone(),
                });
            }
            if let Err(e) = p.absorb(&key, &winner, &values) {
                p.errors.push(format!("{key}: {e}"));
                p.scope_fail_closed(&key);
            }
        }
        p
    }

    /// A `scope/<region>` entry this build cannot read still scopes its
    /// region: a scope fails closed (the region's status stays in it), never
    /// open. The entry is also in `errors`, so `verify` and the API show it.
    fn scope_fail_closed(&mut self, key: &str) {
        if let Some(region) = key.strip_prefix(SCOPE_KEY_PREFIX)
            && check_region(region).is_ok()
        {
            self.scoped.insert(region.to_string());
        }
    }

    fn absorb(&mut self, key: &str, winner: &str, values: &[String]) -> Result<(), String> {
        let json = || serde_json::from_str::<Json>(winner).map_err(|e| e.to_string());
        let node = |s: &str| s.parse::<NodeId>().map_err(|e| e.to_string());
        if let Some(path) = key.strip_prefix("fleet/") {
            self.fleet.insert(path.to_string(), json()?);
        } else if let Some(rest) = key.strip_prefix("region/") {
            let (region, path) = rest.split_once('/').ok_or("no path")?;
            self.regions
                .entry(region.to_string())
                .or_default()
                .insert(path.to_string(), json()?);
        } else if let Some(rest) = key.strip_prefix("site/") {
            let (n, path) = rest.split_once('/').ok_or("no path")?;
            self.sites
                .entry(node(n)?)
                .or_default()
                .insert(path.to_string(), json()?);
        } else if key.starts_with(SECRET_KEY_PREFIX) {
            let sealed = SealedSecret::parse(key, winner).map_err(|e| e.to_string())?;
            self.secrets.insert(key.to_string(), sealed);
        } else if let Some(region) = key.strip_prefix(SCOPE_KEY_PREFIX) {
            check_region(region).map_err(|e| e.to_string())?;
            let v: ScopeEntry = serde_json::from_str(winner).map_err(|e| e.to_string())?;
            if v.status != "region" {
                return Err(format!(
                    "scope {:?} is not known (the one scope is \"region\")",
                    v.status
                ));
            }
            self.scoped.insert(region.to_string());
        } else if let Some(rest) = key.strip_prefix(REGIONAL_KEY_PREFIX) {
            let (region, hash) = rest.split_once('/').ok_or("no change hash")?;
            check_region(region).map_err(|e| e.to_string())?;
            let hash: ChangeHash = hash
                .parse()
                .map_err(|_| format!("{hash:?} is not a change hash"))?;
            self.regional
                .entry(region.to_string())
                .or_default()
                .insert(hash);
        } else if let Some(n) = key.strip_prefix("member/") {
            let m: Member = serde_json::from_str(winner).map_err(|e| e.to_string())?;
            self.members.insert(node(n)?, m);
        } else if let Some(n) = key.strip_prefix("revoked/") {
            // Any value, winner or not, revokes: revocation must not be lost to a conflict.
            let reason = values
                .iter()
                .filter_map(|v| serde_json::from_str::<Json>(v).ok())
                .filter_map(|j| j.get("reason").and_then(|r| r.as_str()).map(str::to_string))
                .next()
                .unwrap_or_default();
            self.revoked.insert(node(n)?, reason);
        } else {
            return Err("unknown key".into());
        }
        Ok(())
    }

    /// The region `owner`'s status document is scoped to: its region, when
    /// it is an enrolled member of a region-scoped one; `None`: the whole
    /// fleet replicates it.
    pub fn status_scope(&self, owner: &NodeId) -> Option<&str> {
        let m = self.members.get(owner)?;
        self.scoped.contains(&m.region).then_some(m.region.as_str())
    }

    /// Whether `holder` may hold (receive, store, be sent) `owner`'s status
    /// document: it is not scoped, or `holder` is an active member of its
    /// region.
    pub fn may_hold_status(&self, holder: &NodeId, owner: &NodeId) -> bool {
        match self.status_scope(owner) {
            None => true,
            Some(r) => {
                self.is_active_member(holder)
                    && self.members.get(holder).is_some_and(|m| m.region == r)
            }
        }
    }

    /// The name of the region with id `id`, if the policy knows it (a
    /// member's region, or a region with committed scoped policy).
    pub fn region_name(&self, id: &RegionId) -> Option<&str> {
        self.regional
            .keys()
            .map(String::as_str)
            .chain(self.members.values().map(|m| m.region.as_str()))
            .find(|r| RegionId::of(r) == *id)
    }

    /// Whether `holder` may hold region `region`'s scoped policy: it is an
    /// active member of that region.
    pub fn may_hold_region(&self, holder: &NodeId, region: &RegionId) -> bool {
        self.is_active_member(holder)
            && self
                .members
                .get(holder)
                .is_some_and(|m| RegionId::of(&m.region) == *region)
    }

    /// Whether any data is region-scoped: a region's status, or a region's
    /// scoped policy.
    pub fn has_scoped_data(&self) -> bool {
        !self.scoped.is_empty() || !self.regional.is_empty()
    }

    /// `node`'s region, if some of its data stays in it (its status is
    /// scoped, or it has scoped policy); `None` otherwise.
    pub fn scoped_region(&self, node: &NodeId) -> Option<&str> {
        let r = self.members.get(node)?.region.as_str();
        (self.scoped.contains(r) || self.regional.contains_key(r)).then_some(r)
    }

    /// `a` and `b` are active members of one region.
    pub fn same_region(&self, a: &NodeId, b: &NodeId) -> bool {
        self.is_active_member(a)
            && self.is_active_member(b)
            && self.members.get(a).map(|m| &m.region) == self.members.get(b).map(|m| &m.region)
    }

    /// Whether the policy commits to `hash` as a change of `region`'s scoped
    /// policy.
    pub fn commits_region_change(&self, region: &RegionId, hash: &ChangeHash) -> bool {
        self.regional
            .iter()
            .any(|(r, set)| set.contains(hash) && RegionId::of(r) == *region)
    }

    /// Enrolled and not revoked.
    pub fn is_active_member(&self, node: &NodeId) -> bool {
        self.members.contains_key(node) && !self.revoked.contains_key(node)
    }

    /// The effective config of a node: fleet, then its region, then its site.
    /// `None` if the node is not an active member.
    pub fn effective_config(&self, node: &NodeId) -> Option<Json> {
        self.effective_config_with(node, None)
    }

    /// [`Policy::effective_config`], with the node's region's scoped policy
    /// (its config entries, by dotted path) merged after the region
    /// overrides of the fleet policy and before the site's.
    pub fn effective_config_with(
        &self,
        node: &NodeId,
        regional: Option<&BTreeMap<String, Json>>,
    ) -> Option<Json> {
        let member = self.members.get(node)?;
        if self.revoked.contains_key(node) {
            return None;
        }
        let mut out = tree_of(&self.fleet);
        if let Some(r) = self.regions.get(&member.region) {
            deep_merge(&mut out, tree_of(r));
        }
        if let Some(r) = regional {
            deep_merge(&mut out, tree_of(r));
        }
        if let Some(s) = self.sites.get(node) {
            deep_merge(&mut out, tree_of(s));
        }
        Some(out)
    }

    /// The nodes whose effective config differs between `self` and `other`.
    pub fn affected_nodes(&self, other: &Policy) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .members
            .keys()
            .chain(other.members.keys())
            .copied()
            .collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .filter(|n| self.effective_config(n) != other.effective_config(n))
            .collect()
    }
}

/// Build a JSON tree from dotted paths; shorter paths are applied first so that a
/// deeper path refines a shallower object.
fn tree_of(entries: &BTreeMap<String, Json>) -> Json {
    let mut sorted: Vec<(&String, &Json)> = entries.iter().collect();
    sorted.sort_by_key(|(p, _)| (p.split('.').count(), p.as_str()));
    let mut root = Json::Object(Default::default());
    for (path, value) in sorted {
        // Wrap the value in one object per segment, innermost first.
        let mut t = value.clone();
        for s in path.split('.').rev() {
            let mut obj = serde_json::Map::new();
            obj.insert(s.to_string(), t);
            t = Json::Object(obj);
        }
        deep_merge(&mut root, t);
    }
    root
}

/// Merge `over` into `base`: objects merge key by key, anything else replaces.
pub fn deep_merge(base: &mut Json, over: Json) {
    match (base, over) {
        (Json::Object(b), Json::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(bv) => deep_merge(bv, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// One edit of the policy.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Set a config value.
    Set(Level, String, Json),
    /// Remove a config value (and everything below its path at that level).
    Unset(Level, String),
    /// Enrol a node.
    Enrol(NodeId, Member),
    /// Revoke a node.
    Revoke(NodeId, String),
    /// Put a sealed secret (at its own level and path).
    SealSecret(SealedSecret),
    /// Remove a sealed secret.
    UnsetSecret(Level, String),
    /// Scope a region's status documents to the region (true), or let the
    /// whole fleet replicate them again (false).
    ScopeStatus(String, bool),
    /// Commit the fleet to one change of a region's scoped policy (made by
    /// a [`RegionEditor`]): without it, no site applies that change.
    CommitRegional(String, ChangeHash),
}

/// Prefix of the policy keys that commit to changes of a region's scoped
/// policy.
pub const REGIONAL_KEY_PREFIX: &str = "regional/";

/// Prefix of the policy keys that scope a region's data.
pub const SCOPE_KEY_PREFIX: &str = "scope/";

/// The value of a `scope/<region>` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeEntry {
    /// What of the region stays in it: `"region"` (its status documents).
    pub status: String,
}

/// Makes signed policy changes against a base snapshot, offline.
pub struct PolicyEditor {
    doc: Automerge,
    /// The base, materialised once: edits are checked against it.
    base: Policy,
    edits: Vec<Edit>,
}

impl PolicyEditor {
    /// Start from the policy changes of a base snapshot. The changes are not
    /// verified here: the caller decides how far to trust its base (a node verifies
    /// everything it ingests; the admin tool verifies the snapshot first).
    pub fn new(base: &[SignedChange]) -> Result<Self, EditError> {
        let mut doc = Automerge::new();
        let mut changes = Vec::new();
        for sc in base.iter().filter(|c| c.doc == DocId::Policy) {
            changes.push(
                automerge::Change::from_bytes(sc.change.clone())
                    .map_err(|e| EditError::Base(e.to_string()))?,
            );
        }
        doc.apply_changes(changes)
            .map_err(|e| EditError::Base(e.to_string()))?;
        if !doc.get_missing_deps(&[]).is_empty() {
            return Err(EditError::Base("the snapshot is missing changes".into()));
        }
        Ok(PolicyEditor {
            base: Policy::from_doc(&doc),
            doc,
            edits: Vec::new(),
        })
    }

    /// The policy of the base plus nothing (before the edits).
    pub fn base_policy(&self) -> Policy {
        self.base.clone()
    }

    /// The heads of the base.
    pub fn base_heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Queue an edit, checking it against the base.
    pub fn push(&mut self, edit: Edit) -> Result<(), EditError> {
        let policy = &self.base;
        let check_level = |level: &Level| -> Result<(), EditError> {
            match level {
                Level::Fleet => Ok(()),
                Level::Region(r) => check_region(r),
                Level::Site(n) if policy.members.contains_key(n) => Ok(()),
                Level::Site(n) => Err(EditError::NotEnrolled(n.short())),
            }
        };
        match &edit {
            Edit::Set(level, path, value) => {
                check_level(level)?;
                check_path(path)?;
                let len = value.to_string().len();
                if len > POLICY_VALUE_SIZE_MAX_BYTES {
                    return Err(EditError::TooLarge(len));
                }
            }
            Edit::Unset(level, path) => {
                check_level(level)?;
                check_path(path)?;
                let prefix = config_key(level, path);
                let found = self
                    .doc
                    .keys(ROOT)
                    .any(|k| k == prefix || k.starts_with(&format!("{prefix}.")));
                if !found {
                    return Err(EditError::NoSuchPath {
                        level: level.clone(),
                        path: path.clone(),
                    });
                }
            }
            Edit::Enrol(node, m) => {
                if policy.revoked.contains_key(node) {
                    return Err(EditError::Revoked(node.short()));
                }
                check_region(&m.region)?;
                if m.name.is_empty() || m.name.len() > 128 {
                    return Err(EditError::InvalidName {
                        what: "name",
                        value: m.name.clone(),
                        reason: "must be 1 to 128 characters".into(),
                    });
                }
                for k in m.labels.keys() {
                    check_name_chars(k).map_err(|reason| EditError::InvalidName {
                        what: "label",
                        value: k.clone(),
                        reason,
                    })?;
                }
            }
            Edit::Revoke(node, _) => {
                if !policy.members.contains_key(node) {
                    return Err(EditError::NotEnrolled(node.short()));
                }
            }
            Edit::SealSecret(sealed) => {
                if sealed.v != crate::secret::SEALED_FORMAT_VERSION {
                    return Err(EditError::Secret(
                        crate::secret::SecretError::UnknownVersion(sealed.v).to_string(),
                    ));
                }
                let level = sealed
                    .level()
                    .map_err(|e| EditError::Secret(e.to_string()))?;
                check_level(&level)?;
                check_path(&sealed.path)?;
                for (id, n) in sealed.to.keys().map(|k| (k, k.parse::<NodeId>())) {
                    let n = n.map_err(|_| {
                        EditError::Secret(format!("target {id:?} is not a node id"))
                    })?;
                    if !policy.is_active_member(&n) {
                        return Err(EditError::NotEnrolled(n.short()));
                    }
                }
                let len = sealed.to_json().len();
                if len > POLICY_VALUE_SIZE_MAX_BYTES {
                    return Err(EditError::Secret(format!(
                        "sealed to {} sites it is {len} bytes of JSON, over the {POLICY_VALUE_SIZE_MAX_BYTES}-byte entry limit; seal it at a narrower level or selector",
                        sealed.to.len()
                    )));
                }
            }
            Edit::UnsetSecret(level, path) => {
                check_level(level)?;
                check_path(path)?;
                if !policy.secrets.contains_key(&secret_key(level, path)) {
                    return Err(EditError::NoSuchPath {
                        level: level.clone(),
                        path: path.clone(),
                    });
                }
            }
            Edit::CommitRegional(region, _) => check_region(region)?,
            Edit::ScopeStatus(region, on) => {
                check_region(region)?;
                if *on == policy.scoped.contains(region) {
                    return Err(EditError::Unchanged(format!(
                        "region {region}'s status is already {}",
                        if *on {
                            "region-scoped"
                        } else {
                            "replicated fleet-wide"
                        }
                    )));
                }
            }
        }
        self.edits.push(edit);
        Ok(())
    }

    /// Commit every queued edit as one change, signed by `author` under trust-root
    /// `root_version`. The automerge actor is the author's key followed by a
    /// fresh nonce ([`crate::change::edit_actor`]), so that edits by one key on
    /// one base never collide.
    pub fn finish(self, author: &SecretKey, root_version: u64) -> Result<SignedChange, EditError> {
        let actor = crate::change::edit_actor(&author.public());
        self.finish_as(author, root_version, actor)
    }

    /// [`PolicyEditor::finish`] with a chosen actor: for a deterministic
    /// simulation (nonces from its seeded generator, see
    /// [`crate::change::actor_with_nonce`]) and for tests that need a real
    /// fork. An actor must never be reused across edits.
    pub fn finish_as(
        mut self,
        author: &SecretKey,
        root_version: u64,
        actor: automerge::ActorId,
    ) -> Result<SignedChange, EditError> {
        if self.edits.is_empty() {
            return Err(EditError::Empty);
        }
        self.doc.set_actor(actor);
        let existing: Vec<String> = self.doc.keys(ROOT).collect();
        let mut tx = self.doc.transaction();
        let put = |tx: &mut automerge::transaction::Transaction<'_>, k: String, v: String| {
            tx.put(ROOT, k, v).expect("put on the root map cannot fail");
        };
        for edit in std::mem::take(&mut self.edits) {
            match edit {
                Edit::Set(level, path, value) => {
                    put(&mut tx, config_key(&level, &path), value.to_string());
                }
                Edit::Unset(level, path) => {
                    let prefix = config_key(&level, &path);
                    for k in existing
                        .iter()
                        .filter(|k| **k == prefix || k.starts_with(&format!("{prefix}.")))
                    {
                        tx.delete(ROOT, k.as_str())
                            .expect("delete on the root map cannot fail");
                    }
                }
                Edit::Enrol(node, m) => {
                    put(
                        &mut tx,
                        format!("member/{node}"),
                        serde_json::to_string(&m).expect("serialisable"),
                    );
                }
                Edit::Revoke(node, reason) => {
                    put(
                        &mut tx,
                        format!("revoked/{node}"),
                        serde_json::json!({ "reason": reason }).to_string(),
                    );
                }
                Edit::SealSecret(sealed) => {
                    let key = sealed
                        .doc_key()
                        .map_err(|e| EditError::Secret(e.to_string()))?;
                    put(&mut tx, key, sealed.to_json());
                }
                Edit::UnsetSecret(level, path) => {
                    tx.delete(ROOT, secret_key(&level, &path).as_str())
                        .expect("delete on the root map cannot fail");
                }
                Edit::ScopeStatus(region, true) => {
                    let v = ScopeEntry {
                        status: "region".into(),
                    };
                    put(
                        &mut tx,
                        format!("{SCOPE_KEY_PREFIX}{region}"),
                        serde_json::to_string(&v).expect("serialisable"),
                    );
                }
                Edit::CommitRegional(region, hash) => {
                    put(
                        &mut tx,
                        format!("{REGIONAL_KEY_PREFIX}{region}/{hash}"),
                        "{}".to_string(),
                    );
                }
                Edit::ScopeStatus(region, false) => {
                    tx.delete(ROOT, format!("{SCOPE_KEY_PREFIX}{region}").as_str())
                        .expect("delete on the root map cannot fail");
                }
            }
        }
        tx.commit();
        let change = self.doc.get_last_local_change().ok_or(EditError::Empty)?;
        Ok(SignedChange::sign(
            DocId::Policy,
            root_version,
            &change,
            author,
        ))
    }
}

/// A region's scoped policy, materialised from its document
/// ([`DocId::Region`]): config entries by dotted path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionalPolicy {
    /// Config entries by dotted path, as `region/<region>/<path>` entries.
    pub config: BTreeMap<String, Json>,
    /// Concurrent edits that automerge resolved.
    pub conflicts: Vec<Conflict>,
    /// Entries that could not be read (skipped), with the reason.
    pub errors: Vec<String>,
}

impl RegionalPolicy {
    /// Materialise a region's scoped policy from its document.
    pub fn from_doc(doc: &Automerge) -> RegionalPolicy {
        let mut p = RegionalPolicy::default();
        for key in doc.keys(ROOT) {
            let all = doc.get_all(ROOT, key.as_str()).unwrap_or_default();
            let values: Vec<String> = all.iter().filter_map(|(v, _)| str_of(v)).collect();
            let winner = doc
                .get(ROOT, key.as_str())
                .ok()
                .flatten()
                .and_then(|(v, _)| str_of(&v));
            let Some(winner) = winner else {
                p.errors.push(format!("{key}: value is not text"));
                continue;
            };
            if values.len() > 1 {
                p.conflicts.push(Conflict {
                    key: key.clone(),
                    winner: winner.clone(),
                    values: values.clone(),
                });
            }
            match check_path(&key)
                .map_err(|e| e.to_string())
                .and_then(|()| serde_json::from_str::<Json>(&winner).map_err(|e| e.to_string()))
            {
                Ok(v) => {
                    p.config.insert(key, v);
                }
                Err(e) => p.errors.push(format!("{key}: {e}")),
            }
        }
        p
    }
}

/// Makes signed changes of one region's scoped policy against a base
/// snapshot, offline. Each change must then be committed by a fleet policy
/// change ([`Edit::CommitRegional`]) to apply anywhere.
pub struct RegionEditor {
    region: String,
    doc: Automerge,
    base: RegionalPolicy,
    edits: Vec<(String, Option<Json>)>,
}

impl RegionEditor {
    /// Start from the changes of `region`'s scoped policy in a base snapshot
    /// (other documents are ignored; none at all is an empty base).
    pub fn new(region: &str, base: &[SignedChange]) -> Result<Self, EditError> {
        check_region(region)?;
        let id = DocId::Region {
            region: RegionId::of(region),
        };
        let mut doc = Automerge::new();
        let mut changes = Vec::new();
        for sc in base.iter().filter(|c| c.doc == id) {
            changes.push(
                automerge::Change::from_bytes(sc.change.clone())
                    .map_err(|e| EditError::Base(e.to_string()))?,
            );
        }
        doc.apply_changes(changes)
            .map_err(|e| EditError::Base(e.to_string()))?;
        if !doc.get_missing_deps(&[]).is_empty() {
            return Err(EditError::Base(format!(
                "the snapshot is missing changes of region {region}'s scoped policy"
            )));
        }
        Ok(RegionEditor {
            region: region.to_string(),
            base: RegionalPolicy::from_doc(&doc),
            doc,
            edits: Vec::new(),
        })
    }

    /// The region's scoped policy in the base.
    pub fn base(&self) -> &RegionalPolicy {
        &self.base
    }

    /// The hashes of every change of the base.
    pub fn base_changes(&self) -> BTreeSet<ChangeHash> {
        self.doc.get_changes(&[]).iter().map(|c| c.hash()).collect()
    }

    /// Queue setting a config value for the region's sites.
    pub fn set(&mut self, path: &str, value: Json) -> Result<(), EditError> {
        check_path(path)?;
        let len = value.to_string().len();
        if len > POLICY_VALUE_SIZE_MAX_BYTES {
            return Err(EditError::TooLarge(len));
        }
        self.edits.push((path.to_string(), Some(value)));
        Ok(())
    }

    /// Queue removing a config value (and everything below its path).
    pub fn unset(&mut self, path: &str) -> Result<(), EditError> {
        check_path(path)?;
        let found = self
            .doc
            .keys(ROOT)
            .any(|k| k == path || k.starts_with(&format!("{path}.")));
        if !found {
            return Err(EditError::NoSuchPath {
                level: Level::Region(self.region.clone()),
                path: path.to_string(),
            });
        }
        self.edits.push((path.to_string(), None));
        Ok(())
    }

    /// Commit the queued edits as one change of the region's scoped policy,
    /// signed by `author` under trust-root `root_version`.
    pub fn finish(self, author: &SecretKey, root_version: u64) -> Result<SignedChange, EditError> {
        let actor = crate::change::edit_actor(&author.public());
        self.finish_as(author, root_version, actor)
    }

    /// [`RegionEditor::finish`] with a chosen actor (see
    /// [`PolicyEditor::finish_as`]).
    pub fn finish_as(
        mut self,
        author: &SecretKey,
        root_version: u64,
        actor: automerge::ActorId,
    ) -> Result<SignedChange, EditError> {
        if self.edits.is_empty() {
            return Err(EditError::Empty);
        }
        self.doc.set_actor(actor);
        let existing: Vec<String> = self.doc.keys(ROOT).collect();
        let mut tx = self.doc.transaction();
        for (path, value) in std::mem::take(&mut self.edits) {
            match value {
                Some(v) => {
                    tx.put(ROOT, path, v.to_string())
                        .expect("put on the root map cannot fail");
                }
                None => {
                    for k in existing
                        .iter()
                        .filter(|k| **k == path || k.starts_with(&format!("{path}.")))
                    {
                        tx.delete(ROOT, k.as_str())
                            .expect("delete on the root map cannot fail");
                    }
                }
            }
        }
        tx.commit();
        let change = self.doc.get_last_local_change().ok_or(EditError::Empty)?;
        Ok(SignedChange::sign(
            DocId::Region {
                region: RegionId::of(&self.region),
            },
            root_version,
            &change,
            author,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn effective_config_merges_fleet_region_site() {
        let mut p = Policy::default();
        let n = SecretKey::from_seed([1; 32]).public();
        p.members.insert(
            n,
            Member {
                name: "a".into(),
                region: "eu".into(),
                labels: Default::default(),
            },
        );
        p.fleet.insert("net.mtu".into(), json!(1500));
        p.fleet
            .insert("net".into(), json!({"dns": "1.1.1.1", "mtu": 1400}));
        p.fleet.insert("log".into(), json!("info"));
        p.regions
            .entry("eu".into())
            .or_default()
            .insert("net.dns".into(), json!("9.9.9.9"));
        p.sites
            .entry(n)
            .or_default()
            .insert("log".into(), json!("debug"));
        assert_eq!(
            p.effective_config(&n).unwrap(),
            json!({"net": {"dns": "9.9.9.9", "mtu": 1500}, "log": "debug"})
        );
        p.revoked.insert(n, "stolen".into());
        assert_eq!(p.effective_config(&n), None);
    }

    #[test]
    fn paths_are_checked() {
        assert!(check_path("a.b-c.d_e").is_ok());
        for bad in ["", "a..b", "a/b", "a b", ".a"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_scope_entry_this_build_cannot_read_still_scopes_its_region() {
        use automerge::transaction::Transactable;
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "scope/eu", r#"{"status":"country"}"#).unwrap();
        tx.put(ROOT, "scope/us", "not json").unwrap();
        tx.put(ROOT, "scope/ap", 7_i64).unwrap();
        tx.put(ROOT, "scope/af", r#"{"status":"region"}"#).unwrap();
        tx.commit();
        let p = Policy::from_doc(&doc);
        let scoped: Vec<&str> = p.scoped.iter().map(String::as_str).collect();
        assert_eq!(scoped, ["af", "ap", "eu", "us"]);
        assert_eq!(p.errors.len(), 3, "{:?}", p.errors);
        assert!(
            p.errors
                .iter()
                .any(|e| e.contains("scope/eu") && e.contains("country"))
        );
    }
}
