//! `verify`: what a bundle is and what it would do.
//!
//! For each trust root the bundle carries: whether it extends the chain and
//! who signed it. For each change: every signature checked strictly, which
//! signers are authority keys of the root the change names, whether that makes
//! the threshold, and the verdict a node would give (from a scratch
//! [`Replica`] holding the base). Then the effect: the policy entries that
//! change, and the effective config of every affected site before and after.
//! The effect is shown even for a change that still lacks cosignatures, so
//! that every cosigner can see what they are signing.

use std::collections::BTreeMap;
use std::fmt;

use automerge::Automerge;
use dcloud_crdt::change::signing_message;
use dcloud_crdt::replica::Outcome;
use dcloud_crdt::verify::verify_one;
use dcloud_crdt::{
    Bundle, ChangeHash, DocId, Limits, NodeId, Policy, PublicKey, Rejection, Replica, SignedChange,
    TrustChain,
};
use serde_json::Value as Json;

use crate::admin::base::Base;
use crate::admin::secret::{Drift, drift};
use crate::admin::trust::{RootProgress, progress};

/// One signature on a change.
#[derive(Clone, Debug)]
pub struct SignatureInfo {
    /// Who signed.
    pub key: PublicKey,
    /// Why it does not verify (None: it verifies).
    pub invalid: Option<String>,
    /// Whether the key is an authority key of the root the change names.
    pub authority: bool,
}

/// One change of the bundle.
#[derive(Clone, Debug)]
pub struct ChangeInfo {
    /// Its document.
    pub doc: DocId,
    /// Its hash (None: it does not parse).
    pub hash: Option<ChangeHash>,
    /// The trust-root version it is signed under.
    pub root_version: u64,
    /// Its signatures.
    pub signatures: Vec<SignatureInfo>,
    /// Distinct authority keys with a valid signature.
    pub distinct_authority: usize,
    /// The threshold of the root it names (None: the root is unknown).
    pub threshold: Option<usize>,
    /// What a node holding the base would do with it.
    pub outcome: Outcome,
}

impl ChangeInfo {
    /// Signed by enough distinct authority keys.
    pub fn meets_threshold(&self) -> bool {
        self.threshold.is_some_and(|t| self.distinct_authority >= t)
    }
}

/// One site whose effective config changes.
#[derive(Clone, Debug)]
pub struct SiteEffect {
    /// The site.
    pub node: NodeId,
    /// Its name (after the change, else before).
    pub name: String,
    /// Effective config before (None: not an active member).
    pub before: Option<Json>,
    /// Effective config after.
    pub after: Option<Json>,
}

/// One policy entry that changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryChange {
    /// The entry, for example `fleet log.level` or `member 5c1f0a2b`.
    pub key: String,
    /// Its JSON text before (None: unset).
    pub before: Option<String>,
    /// Its JSON text after (None: unset).
    pub after: Option<String>,
}

/// The report of `verify`.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// Where the trust anchor came from.
    pub anchor: String,
    /// The trust roots the bundle carries beyond the base's, with their signing state.
    pub new_roots: Vec<RootProgress>,
    /// Every change.
    pub changes: Vec<ChangeInfo>,
    /// Policy entries that change.
    pub entries: Vec<EntryChange>,
    /// Sites whose effective config changes.
    pub sites: Vec<SiteEffect>,
    /// Sealed secrets whose target sites differ from the sites they are
    /// sealed to after the bundle, and whether the bundle made that so.
    pub secret_drift: Vec<(Drift, bool)>,
    /// Whether effects were computed (a base was given).
    pub has_base: bool,
    /// Everything that stops the bundle from being accepted, in words.
    pub problems: Vec<String>,
}

impl Inspection {
    /// Ready to publish: every root and change verifies and meets its threshold.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Why a bundle could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Neither the bundle nor a base carries a usable trust anchor.
    #[error("no trust chain to verify against: {0}")]
    NoChain(String),
}

/// Inspect `bundle`, against `base` when given, else against `own` (the admin's
/// chain file), else against the bundle's own chain (which proves only that
/// the bundle is self-consistent).
pub fn inspect(
    bundle: &Bundle,
    base: Option<&Base>,
    own: Option<&TrustChain>,
) -> Result<Inspection, InspectError> {
    let mut problems = Vec::new();
    let (mut chain, anchor) = match (base, own) {
        (Some(b), _) => (b.chain().clone(), "the base snapshot".to_string()),
        (None, Some(c)) => (c.clone(), "your trust chain file".to_string()),
        (None, None) => {
            let first = bundle.roots.first().cloned().ok_or_else(|| {
                InspectError::NoChain("the bundle carries no trust root; pass --base".into())
            })?;
            let c = TrustChain::from_roots(vec![first])
                .map_err(|e| InspectError::NoChain(e.to_string()))?;
            (
                c,
                "the bundle's own trust root v1 (pass --base or --chain to check it against yours)"
                    .to_string(),
            )
        }
    };
    // Trust roots beyond the chain's.
    let mut new_roots = Vec::new();
    for r in &bundle.roots {
        match chain.get(r.root.version) {
            Some(held) if *held == r.root => continue,
            Some(_) => {
                problems.push(format!(
                    "trust root v{} differs from the one {} holds",
                    r.root.version, anchor
                ));
                continue;
            }
            None => {}
        }
        let p = progress(Some(chain.current()), r);
        if let Err(e) = chain.advance(r.clone()) {
            problems.push(e.to_string());
        }
        new_roots.push(p);
    }
    // A scratch replica holding the base: what a node would say.
    let mut scratch = Replica::new(chain.clone(), Limits::default());
    if let Some(b) = base {
        let reports = scratch.ingest(b.authority_changes());
        // A rotation the bundle carries drops every change of the base signed
        // under an older root that it does not grandfather.
        let dropped: Vec<String> = reports
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Rejected(Rejection::RotatedOut { .. })))
            .map(|r| r.hash.map_or("?".to_string(), |h| short_hash(&h)))
            .collect();
        if !dropped.is_empty() {
            let shown: Vec<&str> = dropped.iter().take(8).map(String::as_str).collect();
            problems.push(format!(
                "the rotation to trust root v{} does not grandfather {} policy change(s) {anchor} holds ({}{}): publishing it would drop them; rotate again from a snapshot that holds them (`dcloud-admin root rotate --from URL`)",
                chain.current().version,
                dropped.len(),
                shown.join(", "),
                if dropped.len() > shown.len() { ", ..." } else { "" }
            ));
        }
    }
    let reports = scratch.ingest(bundle.changes.clone());
    let mut changes = Vec::new();
    for (sc, report) in bundle.changes.iter().zip(reports) {
        let info = change_info(sc, &chain, report.hash, report.outcome);
        let name = info.hash.map_or("?".to_string(), |h| short_hash(&h));
        let current = chain.current().version;
        match &info.outcome {
            Outcome::Rejected(r) => problems.push(format!("change {name} rejected: {r}")),
            // Nodes still hold superseded roots (to verify history), so they
            // would accept it; but a new change must not lean on keys the
            // authority has rotated out.
            Outcome::Applied | Outcome::Pending
                if sc.doc == DocId::Policy && sc.root_version < current =>
            {
                problems.push(format!(
                    "change {name} is signed under trust root v{}, superseded by v{current}; sign it under v{current} (--chain)",
                    sc.root_version
                ))
            }
            Outcome::Pending if base.is_some() => problems.push(format!(
                "change {name} depends on changes the base does not hold"
            )),
            _ => {}
        }
        changes.push(info);
    }
    if bundle.changes.is_empty() && bundle.roots.is_empty() {
        problems.push("the bundle is empty".into());
    }
    let (entries, sites, secret_drift) = match base {
        Some(b) => effects(b, bundle),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    Ok(Inspection {
        anchor,
        new_roots,
        changes,
        entries,
        sites,
        secret_drift,
        has_base: base.is_some(),
        problems,
    })
}

fn change_info(
    sc: &SignedChange,
    chain: &TrustChain,
    hash: Option<ChangeHash>,
    outcome: Outcome,
) -> ChangeInfo {
    let root = match sc.doc {
        DocId::Policy | DocId::Region { .. } => chain.get(sc.root_version),
        DocId::Status { .. } | DocId::Summary { .. } => None,
    };
    let msg = hash.map(|h| signing_message(&sc.doc, sc.root_version, &h));
    let mut signatures = Vec::new();
    let mut distinct: Vec<PublicKey> = Vec::new();
    for s in &sc.sigs {
        let invalid = match &msg {
            Some(m) => verify_one(m, s).err().map(|e| e.to_string()),
            None => Some("the change does not parse".into()),
        };
        let authority = root.is_some_and(|r| r.keys.contains(&s.key));
        if invalid.is_none() && authority && !distinct.contains(&s.key) {
            distinct.push(s.key);
        }
        signatures.push(SignatureInfo {
            key: s.key,
            invalid,
            authority,
        });
    }
    ChangeInfo {
        doc: sc.doc,
        hash,
        root_version: sc.root_version,
        signatures,
        distinct_authority: distinct.len(),
        threshold: root.map(|r| r.threshold as usize),
        outcome,
    }
}

/// The policy of the base with the bundle's policy changes applied, whether or
/// not they are fully signed yet (the preview a cosigner needs).
fn preview(base: &Base, bundle: &Bundle) -> Policy {
    let mut doc = Automerge::new();
    let parsed: Vec<automerge::Change> = base
        .changes()
        .iter()
        .chain(bundle.changes.iter().filter(|c| c.doc == DocId::Policy))
        .filter_map(|c| automerge::Change::from_bytes(c.change.clone()).ok())
        .collect();
    if doc.apply_changes(parsed).is_err() {
        return base.policy().clone();
    }
    Policy::from_doc(&doc)
}

type Effects = (Vec<EntryChange>, Vec<SiteEffect>, Vec<(Drift, bool)>);

fn effects(base: &Base, bundle: &Bundle) -> Effects {
    let before = base.policy();
    let after = preview(base, bundle);
    let mut entries = Vec::new();
    diff_map(&flatten(before), &flatten(&after), &mut entries);
    let sites = before
        .affected_nodes(&after)
        .into_iter()
        .map(|node| SiteEffect {
            node,
            name: after
                .members
                .get(&node)
                .or_else(|| before.members.get(&node))
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            before: before.effective_config(&node),
            after: after.effective_config(&node),
        })
        .collect();
    let was = drift(before);
    let secret_drift = drift(&after)
        .into_iter()
        .map(|d| {
            let new = !was.contains(&d);
            (d, new)
        })
        .collect();
    (entries, sites, secret_drift)
}

/// Every entry of a policy as document key -> JSON text.
fn flatten(p: &Policy) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (path, v) in &p.fleet {
        out.insert(format!("fleet {path}"), v.to_string());
    }
    for (region, m) in &p.regions {
        for (path, v) in m {
            out.insert(format!("region {region} {path}"), v.to_string());
        }
    }
    for (node, m) in &p.sites {
        let name = p.members.get(node).map_or(node.short(), |m| m.name.clone());
        for (path, v) in m {
            out.insert(format!("site {name} {path}"), v.to_string());
        }
    }
    for (node, m) in &p.members {
        out.insert(
            format!("member {}", node.short()),
            serde_json::to_string(m).expect("serialisable"),
        );
    }
    for (node, reason) in &p.revoked {
        out.insert(format!("revoked {}", node.short()), format!("{reason:?}"));
    }
    for region in &p.scoped {
        out.insert(
            format!("scope {region}"),
            "status stays in the region".to_string(),
        );
    }
    // A sealed secret shows where it goes, never its ciphertext.
    for s in p.secrets.values() {
        let to: Vec<String> = s
            .sealed_to()
            .iter()
            .map(|n| p.members.get(n).map_or(n.short(), |m| m.name.clone()))
            .collect();
        let sel: Vec<String> = s.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.insert(
            format!("secret {} {}", s.level, s.path),
            format!(
                "(sealed{} to [{}], digest {})",
                if sel.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", sel.join(","))
                },
                to.join(", "),
                s.digest()
            ),
        );
    }
    out
}

fn diff_map(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    out: &mut Vec<EntryChange>,
) {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for k in keys {
        let (b, a) = (before.get(k), after.get(k));
        if b != a {
            out.push(EntryChange {
                key: k.clone(),
                before: b.cloned(),
                after: a.cloned(),
            });
        }
    }
}

/// The first 12 hex digits of a change hash.
pub fn short_hash(h: &ChangeHash) -> String {
    h.to_string()[..12].to_string()
}

fn json_or_none(v: &Option<Json>) -> String {
    match v {
        Some(j) => j.to_string(),
        None => "(not an active member)".into(),
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "trust anchor: {}", self.anchor)?;
        for r in &self.new_roots {
            writeln!(f, "rotation: {r}")?;
        }
        for c in &self.changes {
            let name = c.hash.map_or("?".to_string(), |h| short_hash(&h));
            writeln!(
                f,
                "change {name} ({}, signed under trust root v{}):",
                c.doc, c.root_version
            )?;
            for s in &c.signatures {
                let state = match (&s.invalid, s.authority) {
                    (Some(e), _) => format!("INVALID: {e}"),
                    (None, true) => "valid, authority key".into(),
                    (None, false) => {
                        format!("valid, but NOT a key of trust root v{}", c.root_version)
                    }
                };
                writeln!(f, "  signed by {}  {state}", s.key.short())?;
            }
            match c.threshold {
                Some(t) if c.meets_threshold() => writeln!(
                    f,
                    "  threshold: met ({} of {t} distinct authority keys)",
                    c.distinct_authority
                )?,
                Some(t) => writeln!(
                    f,
                    "  threshold: NOT met ({} of {t} distinct authority keys; cosign with `dcloud-admin cosign BUNDLE --key KEY`)",
                    c.distinct_authority
                )?,
                None => writeln!(
                    f,
                    "  threshold: unknown (trust root v{} not held)",
                    c.root_version
                )?,
            }
            let verdict = match &c.outcome {
                Outcome::Applied => "would apply".to_string(),
                Outcome::Duplicate => "already in the base".to_string(),
                Outcome::Pending => "waits for changes not in the base".to_string(),
                Outcome::Stale => "stale".to_string(),
                Outcome::Rejected(r) => format!("rejected: {r}"),
            };
            writeln!(f, "  verdict: {verdict}")?;
        }
        if self.has_base {
            if self.entries.is_empty() {
                writeln!(f, "policy entries changed: none")?;
            } else {
                writeln!(f, "policy entries changed:")?;
                for e in &self.entries {
                    writeln!(
                        f,
                        "  {}: {} -> {}",
                        e.key,
                        e.before.as_deref().unwrap_or("(unset)"),
                        e.after.as_deref().unwrap_or("(unset)")
                    )?;
                }
            }
            if self.sites.is_empty() {
                writeln!(f, "sites affected: none")?;
            } else {
                writeln!(f, "sites affected: {}", self.sites.len())?;
                for s in &self.sites {
                    writeln!(f, "  {} ({})", s.name, s.node.short())?;
                    writeln!(f, "    before: {}", json_or_none(&s.before))?;
                    writeln!(f, "    after:  {}", json_or_none(&s.after))?;
                }
            }
            for (d, new) in &self.secret_drift {
                let tag = if *new {
                    "this bundle changes the sites of"
                } else {
                    "already drifted:"
                };
                writeln!(f, "{tag} {d}")?;
            }
        } else {
            writeln!(f, "effects: not computed (pass --base FILE or --from URL)")?;
        }
        if self.ok() {
            write!(f, "OK: the bundle verifies and meets its threshold")
        } else {
            write!(f, "NOT READY:")?;
            for p in &self.problems {
                write!(f, "\n  {p}")?;
            }
            Ok(())
        }
    }
}
