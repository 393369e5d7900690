//! The base snapshot an edit is made against.
//!
//! A node exports its trust chain and every policy change it holds as a bundle
//! (`GET /v1/policy/snapshot`, or `dcloud snapshot -o FILE`). Before signing
//! anything on top of it, the admin tool verifies it exactly as a node would,
//! in a scratch [`Replica`]: a base that does not verify is refused, so an admin
//! never builds on changes the authority did not sign. Several bases may be
//! given (a snapshot, then bundles signed since but not yet published); their
//! union is the base.

use dcloud_crdt::replica::Outcome;
use dcloud_crdt::root::RootError;
use dcloud_crdt::{
    Bundle, ChangeHash, DocId, Limits, Policy, Rejection, Replica, SignedChange, SignedTrustRoot,
    TrustChain,
};

/// Why a base snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// No trust root in any base.
    #[error("the base holds no trust root; export it from a node (`dcloud snapshot -o FILE`)")]
    NoRoots,
    /// Two bases disagree on a root version.
    #[error("the bases hold two different trust roots v{0}")]
    RootConflict(u64),
    /// The trust chain does not verify.
    #[error("the base's trust chain does not verify: {0}")]
    Chain(#[from] RootError),
    /// A change of the base does not verify or is not authorised.
    #[error("base change {hash} does not verify: {reason}")]
    Rejected {
        /// The change (hex, or "?" when it did not parse).
        hash: String,
        /// Why.
        reason: Rejection,
    },
    /// Changes of the base depend on changes it does not hold.
    #[error("the base is incomplete: {0} change(s) depend on changes it does not hold")]
    Incomplete(usize),
    /// The admin's trust chain and the base's do not share history.
    #[error(
        "the base trusts a different authority: its trust root v{version} differs from the one in your chain file"
    )]
    ChainMismatch {
        /// The first version that differs.
        version: u64,
    },
}

/// A verified base snapshot.
pub struct Base {
    roots: Vec<SignedTrustRoot>,
    replica: Replica,
}

impl std::fmt::Debug for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Base")
            .field("root_version", &self.replica.trust().current().version)
            .field("heads", &self.heads())
            .finish()
    }
}

/// Merge the roots of several bundles into one chain, oldest first.
pub fn merge_roots<'a>(
    sets: impl IntoIterator<Item = &'a [SignedTrustRoot]>,
) -> Result<Vec<SignedTrustRoot>, BaseError> {
    let mut by_version: std::collections::BTreeMap<u64, SignedTrustRoot> = Default::default();
    for set in sets {
        for r in set {
            match by_version.get_mut(&r.root.version) {
                Some(held) if held.root != r.root => {
                    return Err(BaseError::RootConflict(r.root.version));
                }
                Some(held) => {
                    // Same root: keep every signature either copy carries.
                    for s in &r.sigs {
                        if !held.sigs.iter().any(|h| h.key == s.key) {
                            held.sigs.push(*s);
                        }
                    }
                }
                None => {
                    by_version.insert(r.root.version, r.clone());
                }
            }
        }
    }
    Ok(by_version.into_values().collect())
}

impl Base {
    /// Verify the union of `bundles` as a base.
    pub fn from_bundles(bundles: &[Bundle]) -> Result<Base, BaseError> {
        let roots = merge_roots(bundles.iter().map(|b| b.roots.as_slice()))?;
        if roots.is_empty() {
            return Err(BaseError::NoRoots);
        }
        let chain = TrustChain::from_roots(roots.clone())?;
        let mut replica = Replica::new(chain, Limits::default());
        let changes: Vec<SignedChange> = bundles
            .iter()
            .flat_map(|b| b.changes.iter())
            .filter(|c| c.doc.is_authority())
            .cloned()
            .collect();
        let mut pending = 0;
        for report in replica.ingest(changes) {
            match report.outcome {
                Outcome::Applied | Outcome::Duplicate => {}
                Outcome::Pending => pending += 1,
                Outcome::Stale => {}
                Outcome::Rejected(reason) => {
                    return Err(BaseError::Rejected {
                        hash: report.hash.map_or("?".into(), |h| h.to_string()),
                        reason,
                    });
                }
            }
        }
        if pending > 0 {
            return Err(BaseError::Incomplete(pending));
        }
        Ok(Base { roots, replica })
    }

    /// The verified trust chain of the base.
    pub fn chain(&self) -> &TrustChain {
        self.replica.trust()
    }

    /// The trust roots of the base, oldest first.
    pub fn roots(&self) -> &[SignedTrustRoot] {
        &self.roots
    }

    /// The policy of the base.
    pub fn policy(&self) -> &Policy {
        self.replica.policy()
    }

    /// The policy heads of the base, sorted.
    pub fn heads(&self) -> Vec<ChangeHash> {
        let mut h = self.replica.policy_heads();
        h.sort();
        h
    }

    /// Every policy change of the base, in applicable order.
    pub fn changes(&self) -> Vec<SignedChange> {
        self.replica.policy_changes()
    }

    /// Every policy change of the base, then every change of a region's
    /// scoped policy it holds.
    pub fn authority_changes(&self) -> Vec<SignedChange> {
        self.replica.authority_changes()
    }

    /// The changes of region `region`'s scoped policy the base holds.
    pub fn regional_changes(&self, region: &str) -> Vec<SignedChange> {
        self.replica.regional_changes(region)
    }

    /// How many changes of `region`'s scoped policy the base's policy
    /// commits to that the base does not hold (it was taken at a site
    /// outside the region).
    pub fn regional_missing(&self, region: &str) -> usize {
        self.replica.regional_missing(region)
    }

    /// Whether the base holds a change.
    pub fn contains(&self, h: &ChangeHash) -> bool {
        self.replica.contains(&DocId::Policy, h)
    }

    /// The chain to sign under: the base's, or the admin's own chain file when
    /// it extends the base's (a rotation not yet published). Either must be a
    /// prefix of the other.
    pub fn signing_chain(&self, own: Option<&TrustChain>) -> Result<TrustChain, BaseError> {
        let Some(own) = own else {
            return Ok(self.chain().clone());
        };
        for (a, b) in own.roots().iter().zip(self.chain().roots()) {
            if a.root != b.root {
                return Err(BaseError::ChainMismatch {
                    version: a.root.version,
                });
            }
        }
        if own.roots().len() >= self.chain().roots().len() {
            Ok(own.clone())
        } else {
            Ok(self.chain().clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use dcloud_crdt::{SecretKey, TrustRoot};

    use super::*;

    fn root(version: u64, key: &SecretKey) -> SignedTrustRoot {
        SignedTrustRoot::sign(
            TrustRoot {
                version,
                threshold: 1,
                keys: vec![key.public()],
                ..Default::default()
            },
            &[key],
        )
    }

    #[test]
    fn roots_merge_by_version_and_conflicts_are_refused() {
        let (a, b) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
        let v1 = root(1, &a);
        let v2 = root(2, &b);
        let merged = merge_roots([vec![v2.clone()].as_slice(), &[v1.clone(), v2.clone()]]).unwrap();
        assert_eq!(merged, vec![v1.clone(), v2]);
        let other_v1 = root(1, &b);
        assert!(matches!(
            merge_roots([[v1].as_slice(), &[other_v1]]),
            Err(BaseError::RootConflict(1))
        ));
    }

    #[test]
    fn a_base_without_roots_or_with_missing_changes_is_refused() {
        assert!(matches!(
            Base::from_bundles(&[Bundle::default()]),
            Err(BaseError::NoRoots)
        ));
        let a = SecretKey::from_seed([1; 32]);
        let mut ed = dcloud_crdt::PolicyEditor::new(&[]).unwrap();
        ed.push(dcloud_crdt::Edit::Set(
            dcloud_crdt::Level::Fleet,
            "x".into(),
            serde_json::json!(1),
        ))
        .unwrap();
        let first = ed.finish(&a, 1).unwrap();
        let mut ed = dcloud_crdt::PolicyEditor::new(std::slice::from_ref(&first)).unwrap();
        ed.push(dcloud_crdt::Edit::Set(
            dcloud_crdt::Level::Fleet,
            "x".into(),
            serde_json::json!(2),
        ))
        .unwrap();
        let second = ed.finish(&a, 1).unwrap();
        let only_second = Bundle {
            roots: vec![root(1, &a)],
            changes: vec![second],
        };
        assert!(matches!(
            Base::from_bundles(&[only_second]),
            Err(BaseError::Incomplete(1))
        ));
    }
}
