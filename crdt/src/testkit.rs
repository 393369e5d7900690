//! Fixtures for tests and benchmarks: fixed keys, trust roots, enrolments
//! and signed policy changes, the steps every test of an authorised fleet
//! starts with. Behind the `testkit` feature, which is off by default: no
//! production build has it. This crate's tests and benchmarks, and the daemon
//! tests, turn it on as a dev-dependency.
//!
//! Built only on the public API, so a fixture can never do what a real admin
//! tool could not.

use crate::SignedChange;
use crate::keys::{NodeId, PublicKey, SecretKey};
use crate::policy::{Edit, Member, PolicyEditor, RegionEditor};
use crate::root::TrustRoot;

/// The key whose 32 seed bytes are all `seed`: the same key in every run.
pub fn seeded_key(seed: u8) -> SecretKey {
    SecretKey::from_seed([seed; 32])
}

/// Trust root `version` listing `keys` with `threshold`, and nothing else (no
/// timestamp keys, no grandfathered heads: add them with `..` struct update).
/// Sign it with [`crate::SignedTrustRoot::sign`].
pub fn trust_root(version: u64, keys: &[PublicKey], threshold: u32) -> TrustRoot {
    TrustRoot {
        version,
        threshold,
        keys: keys.to_vec(),
        ..Default::default()
    }
}

/// A member named `name` in `region`, without labels.
pub fn member(name: impl Into<String>, region: impl Into<String>) -> Member {
    Member {
        name: name.into(),
        region: region.into(),
        labels: Default::default(),
    }
}

/// The edit enrolling `node` as [`member`]`(name, region)`.
pub fn enrol(node: NodeId, name: impl Into<String>, region: impl Into<String>) -> Edit {
    Edit::Enrol(node, member(name, region))
}

/// `edits` as one policy change on top of `base`, under trust-root
/// `root_version`: authored by `signers[0]`, cosigned by the rest. Panics on
/// an invalid base or edit (a fixture's mistake, not the code under test's).
pub fn sign_policy(
    base: &[SignedChange],
    edits: impl IntoIterator<Item = Edit>,
    root_version: u64,
    signers: &[&SecretKey],
) -> SignedChange {
    let (author, cosigners) = signers.split_first().expect("at least one signer");
    let mut ed = PolicyEditor::new(base).expect("base loads");
    for e in edits {
        ed.push(e).expect("edit is valid");
    }
    let mut sc = ed.finish(author, root_version).expect("signs");
    for k in cosigners {
        sc.cosign(k).expect("the change parses");
    }
    sc
}

/// A change of region `region`'s scoped policy setting `sets` on top of
/// `base`, and the fleet policy change (on top of `policy_base`) that commits
/// to it, both under `root_version`, authored by `signers[0]` and cosigned by
/// the rest. Returns (regional change, commitment).
pub fn sign_regional(
    region: &str,
    base: &[SignedChange],
    policy_base: &[SignedChange],
    sets: &[(&str, serde_json::Value)],
    root_version: u64,
    signers: &[&SecretKey],
) -> (SignedChange, SignedChange) {
    let (author, cosigners) = signers.split_first().expect("at least one signer");
    let mut ed = RegionEditor::new(region, base).expect("base loads");
    for (p, v) in sets {
        ed.set(p, v.clone()).expect("edit is valid");
    }
    let mut sc = ed.finish(author, root_version).expect("signs");
    for k in cosigners {
        sc.cosign(k).expect("the change parses");
    }
    let hash = sc.hash().expect("the change parses");
    let commit = sign_policy(
        policy_base,
        [Edit::CommitRegional(region.to_string(), hash)],
        root_version,
        signers,
    );
    (sc, commit)
}
