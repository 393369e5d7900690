//! Policy edits, signed offline into bundles, and cosigning.
//!
//! An edit is made against a verified [`Base`]: the new change depends on the
//! base's heads, names the trust-root version it is signed under, and is signed
//! by the admin's key. The bundle carries the trust chain with it, so that a
//! node that has not yet seen a rotation learns it from the bundle itself. With
//! a threshold above one, the other admins add their signatures with
//! [`cosign`]; the change's bytes do not change, only its signature list grows.

use std::collections::BTreeMap;

use dcloud_crdt::policy::EditError;
use dcloud_crdt::{
    Bundle, Edit, Level, Member, NodeId, Policy, PolicyEditor, PublicKey, RegionEditor, SecretKey,
    TrustChain,
};
use serde_json::Value as Json;

use crate::admin::base::Base;

/// Why an edit argument was refused.
#[derive(Debug, thiserror::Error)]
pub enum EditArgError {
    /// The level is not `fleet`, `region:NAME` or `site:NODE`.
    #[error("level {0:?} is not one of fleet, region:NAME, site:NODE_ID_OR_NAME")]
    Level(String),
    /// No enrolled site has that id or name.
    #[error("no enrolled site is named or has id {0:?}")]
    UnknownSite(String),
    /// Several sites have that name.
    #[error("{count} sites are named {name:?}; give the node id instead")]
    AmbiguousSite {
        /// The name.
        name: String,
        /// How many match.
        count: usize,
    },
    /// The value is not JSON.
    #[error("value {value:?} is not JSON ({reason}); quote strings, for example '\"{value}\"'")]
    NotJson {
        /// The input.
        value: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A label is not `KEY=VALUE`.
    #[error("label {0:?} is not KEY=VALUE")]
    Label(String),
    /// A node id that is not a key.
    #[error("node id {0:?} is not 64 hex digits")]
    NodeId(String),
}

/// Why signing an edit failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The edit does not fit the base.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// `--scoped` at a level other than a region.
    #[error(
        "--scoped takes a region:NAME level (a region's scoped policy holds config for that region's sites), not {0}"
    )]
    ScopedLevel(String),
    /// The base lacks committed changes of the region's scoped policy.
    #[error(
        "the base holds {held} of the {committed} committed changes of region {region}'s scoped policy \
         (it was taken at a site outside the region, which never holds them); take the base from a site \
         of region {region} (--from URL, or its `dcloud snapshot`) so that this edit builds on them"
    )]
    RegionalBase {
        /// The region.
        region: String,
        /// Changes the base holds.
        held: usize,
        /// Changes the policy commits to.
        committed: usize,
    },
    /// The key is not an authority key of the root in force.
    #[error(
        "key {key} is not an authority key of trust root v{version} (its keys: {keys}); check --key"
    )]
    WrongKey {
        /// The key (short).
        key: String,
        /// The root version.
        version: u64,
        /// The root's keys (short).
        keys: String,
    },
}

/// Why cosigning failed.
#[derive(Debug, thiserror::Error)]
pub enum CosignError {
    /// The bundle holds no policy change.
    #[error("the bundle holds no policy change to cosign")]
    NoChanges,
    /// The bundle's trust chain does not verify.
    #[error("the bundle's trust chain does not verify: {0}")]
    Chain(#[from] dcloud_crdt::RootError),
    /// A change names a root the bundle does not carry.
    #[error("change {hash} is signed under trust root v{version}, which the bundle does not carry")]
    UnknownRoot {
        /// The change.
        hash: String,
        /// The version it names.
        version: u64,
    },
    /// The key is not an authority key of the change's root.
    #[error(
        "key {key} is not an authority key of trust root v{version} (its keys: {keys}); check --key"
    )]
    WrongKey {
        /// The key (short).
        key: String,
        /// The root version.
        version: u64,
        /// The root's keys (short).
        keys: String,
    },
    /// The change bytes do not parse.
    #[error("change {0} is malformed")]
    Malformed(String),
    /// The key had already signed every change.
    #[error("key {0} has already signed every change of this bundle")]
    AlreadySigned(String),
}

fn short_keys(keys: &[PublicKey]) -> String {
    keys.iter()
        .map(|k| k.short())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A site by id or by enrolled name.
pub fn resolve_site(arg: &str, policy: &Policy) -> Result<NodeId, EditArgError> {
    if let Ok(id) = arg.parse::<NodeId>() {
        return Ok(id);
    }
    let matches: Vec<NodeId> = policy
        .members
        .iter()
        .filter(|(_, m)| m.name == arg)
        .map(|(id, _)| *id)
        .collect();
    match matches.len() {
        0 => Err(EditArgError::UnknownSite(arg.to_string())),
        1 => Ok(matches[0]),
        count => Err(EditArgError::AmbiguousSite {
            name: arg.to_string(),
            count,
        }),
    }
}

/// A level argument: `fleet`, `region:NAME`, `site:NODE_ID_OR_NAME`.
pub fn parse_level(arg: &str, policy: &Policy) -> Result<Level, EditArgError> {
    if arg == "fleet" {
        return Ok(Level::Fleet);
    }
    if let Some(region) = arg.strip_prefix("region:") {
        return Ok(Level::Region(region.to_string()));
    }
    if let Some(site) = arg.strip_prefix("site:") {
        return Ok(Level::Site(resolve_site(site, policy)?));
    }
    Err(EditArgError::Level(arg.to_string()))
}

/// A JSON value argument.
pub fn parse_value(arg: &str) -> Result<Json, EditArgError> {
    serde_json::from_str(arg).map_err(|e| EditArgError::NotJson {
        value: arg.to_string(),
        reason: e.to_string(),
    })
}

/// A node id argument.
pub fn parse_node(arg: &str) -> Result<NodeId, EditArgError> {
    arg.parse::<NodeId>()
        .map_err(|_| EditArgError::NodeId(arg.to_string()))
}

/// A member from its name, region and `KEY=VALUE` labels.
pub fn member(name: &str, region: &str, labels: &[String]) -> Result<Member, EditArgError> {
    let mut map = BTreeMap::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| EditArgError::Label(l.clone()))?;
        map.insert(k.to_string(), v.to_string());
    }
    Ok(Member {
        name: name.to_string(),
        region: region.to_string(),
        labels: map,
    })
}

/// Make one signed policy change holding `edits`, against `base`, signed by
/// `key` under the root in force of `chain`, as a bundle carrying `chain`.
pub fn sign_edits(
    base: &Base,
    chain: &TrustChain,
    edits: Vec<Edit>,
    key: &SecretKey,
) -> Result<Bundle, SignError> {
    let root = chain.current();
    if !root.keys.contains(&key.public()) {
        return Err(SignError::WrongKey {
            key: key.public().short(),
            version: root.version,
            keys: short_keys(&root.keys),
        });
    }
    let mut editor = PolicyEditor::new(&base.changes())?;
    for e in edits {
        editor.push(e)?;
    }
    let change = editor.finish(key, root.version)?;
    tracing::info!(
        root_version = root.version,
        key = %key.public().short(),
        "signed a policy change"
    );
    Ok(Bundle {
        roots: chain.roots().to_vec(),
        changes: vec![change],
    })
}

/// Make one signed change of region `region`'s scoped policy setting (or,
/// for `None`, removing) each path of `edits`, against `base`, and the fleet
/// policy change that commits to it; both signed by `key` under the root in
/// force of `chain`, as one bundle carrying `chain` (commitment first).
pub fn sign_regional(
    base: &Base,
    chain: &TrustChain,
    region: &str,
    edits: Vec<(String, Option<Json>)>,
    key: &SecretKey,
) -> Result<Bundle, SignError> {
    let root = chain.current();
    if !root.keys.contains(&key.public()) {
        return Err(SignError::WrongKey {
            key: key.public().short(),
            version: root.version,
            keys: short_keys(&root.keys),
        });
    }
    let held = base.regional_changes(region);
    let missing = base.regional_missing(region);
    if missing > 0 {
        return Err(SignError::RegionalBase {
            region: region.to_string(),
            held: held.len(),
            committed: held.len() + missing,
        });
    }
    let mut editor = RegionEditor::new(region, &held)?;
    for (path, value) in edits {
        match value {
            Some(v) => editor.set(&path, v)?,
            None => editor.unset(&path)?,
        }
    }
    let change = editor.finish(key, root.version)?;
    let hash = change
        .hash()
        .map_err(|e| SignError::Edit(EditError::Base(e.to_string())))?;
    let mut policy = PolicyEditor::new(&base.changes())?;
    policy.push(Edit::CommitRegional(region.to_string(), hash))?;
    let commit = policy.finish(key, root.version)?;
    tracing::info!(
        root_version = root.version,
        key = %key.public().short(),
        region,
        "signed a change of a region's scoped policy and its commitment"
    );
    Ok(Bundle {
        roots: chain.roots().to_vec(),
        changes: vec![commit, change],
    })
}

/// Add `key`'s signature to every policy change of `bundle` it has not signed.
/// Returns how many changes it signed.
pub fn cosign(bundle: &mut Bundle, key: &SecretKey) -> Result<usize, CosignError> {
    if !bundle.changes.iter().any(|c| c.doc.is_authority()) {
        return Err(CosignError::NoChanges);
    }
    let chain = TrustChain::from_roots(bundle.roots.clone())?;
    let public = key.public();
    // Check every change before signing any, so that a refusal changes nothing.
    for c in bundle.changes.iter().filter(|c| c.doc.is_authority()) {
        let hash = c
            .hash()
            .map_err(|_| CosignError::Malformed(format!("{:?}", c)))?;
        let root = chain
            .get(c.root_version)
            .ok_or_else(|| CosignError::UnknownRoot {
                hash: hash.to_string(),
                version: c.root_version,
            })?;
        if !root.keys.contains(&public) {
            return Err(CosignError::WrongKey {
                key: public.short(),
                version: root.version,
                keys: short_keys(&root.keys),
            });
        }
    }
    let mut signed = 0;
    for c in bundle.changes.iter_mut().filter(|c| c.doc.is_authority()) {
        if c.cosign(key)
            .map_err(|_| CosignError::Malformed(format!("{:?}", c)))?
        {
            signed += 1;
        }
    }
    if signed == 0 {
        return Err(CosignError::AlreadySigned(public.short()));
    }
    Ok(signed)
}
