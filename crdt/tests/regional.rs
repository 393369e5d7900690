//! A region's scoped policy (`DocId::Region`): held only by the sites of its
//! region, applied only where the fleet policy commits to it, and dropped
//! wherever that stops being so (a rotation, a site leaving the region).

mod common;

use common::{Fleet, fingerprint};
use dcloud_crdt::keys::SignatureBytes;
use dcloud_crdt::testkit::{self, seeded_key};
use dcloud_crdt::{
    DocId, Edit, Outcome, RegionId, Rejection, Replica, SecretKey, SignedChange, SignedTrustRoot,
    TrustRoot,
};
use serde_json::json;

/// 3 authorities (threshold 2), 3 sites: 0 and 2 in r0, 1 in r1.
fn setup() -> (Fleet, SignedChange) {
    let fleet = Fleet::new(3, 2, 3);
    let enrol = fleet.enrolment();
    (fleet, enrol)
}

fn signers(fleet: &Fleet) -> Vec<&SecretKey> {
    fleet.authorities.iter().take(2).collect()
}

/// A replica of site `i` holding the enrolment.
fn site(fleet: &Fleet, enrol: &SignedChange, i: usize) -> Replica {
    let mut r = fleet.replica();
    r.hold_as(fleet.node(i));
    assert_eq!(r.ingest(vec![enrol.clone()])[0].outcome, Outcome::Applied);
    r
}

fn rejected(r: &mut Replica, batch: Vec<SignedChange>, at: usize) -> Rejection {
    let before = fingerprint(r);
    let rep = r.ingest(batch);
    let Outcome::Rejected(why) = rep[at].outcome.clone() else {
        panic!("expected a rejection, got {:?}", rep[at].outcome);
    };
    assert_eq!(
        before,
        fingerprint(r),
        "a rejected change changed the replica"
    );
    why
}

#[test]
fn a_regions_scoped_policy_applies_in_it_once_committed_and_nowhere_else() {
    let (fleet, enrol) = setup();
    let (change, commit) = testkit::sign_regional(
        "r0",
        &[],
        std::slice::from_ref(&enrol),
        &[("db.password_hint", json!("blue"))],
        1,
        &signers(&fleet),
    );
    // Site 0 (r0): without its commitment the change is refused, no blame.
    let mut s0 = site(&fleet, &enrol, 0);
    let why = rejected(&mut s0, vec![change.clone()], 0);
    assert!(matches!(why, Rejection::Uncommitted { .. }), "{why}");
    assert!(!why.is_misbehaviour());
    // With it (in one batch, in either order) both apply, and the value is
    // in site 0's effective config, after the region's fleet overrides.
    let rep = s0.ingest(vec![change.clone(), commit.clone()]);
    assert!(rep.iter().all(|r| r.outcome == Outcome::Applied), "{rep:?}");
    assert_eq!(
        s0.effective_config(&fleet.node(0)).unwrap()["db"]["password_hint"],
        json!("blue")
    );
    assert_eq!(s0.regional_missing("r0"), 0);
    assert_eq!(s0.regional_changes("r0"), vec![change.clone()]);
    let doc = DocId::Region {
        region: RegionId::of("r0"),
    };
    assert!(s0.docs().iter().any(|(d, _)| *d == doc));

    // Site 1 (r1) takes the commitment but refuses the change itself, and
    // its config does not have the value.
    let mut s1 = site(&fleet, &enrol, 1);
    assert_eq!(s1.ingest(vec![commit.clone()])[0].outcome, Outcome::Applied);
    let why = rejected(&mut s1, vec![change.clone()], 0);
    assert!(
        matches!(why, Rejection::NotInRegion { ref region } if region == "r0"),
        "{why}"
    );
    assert!(!why.is_misbehaviour());
    assert!(s1.regional("r0").is_none());
    assert!(!s1.docs().iter().any(|(d, _)| *d == doc));
    assert_eq!(s1.effective_config(&fleet.node(1)).unwrap(), json!({}));
    // The commitments are fleet-wide: any site can tell how many changes
    // of r0's scoped policy exist (not what they say).
    assert_eq!(s1.regional_missing("r0"), 1);
}

#[test]
fn an_out_of_region_or_uncommitted_change_is_refused_before_its_signature_is_checked() {
    let (fleet, enrol) = setup();
    let (change, commit) = testkit::sign_regional(
        "r0",
        &[],
        std::slice::from_ref(&enrol),
        &[("a", json!(1))],
        1,
        &signers(&fleet),
    );
    let mut forged = change.clone();
    forged.sigs[0].sig = SignatureBytes([7; 64]);
    // Outside the region: refused as such, broken signature or not.
    let mut s1 = site(&fleet, &enrol, 1);
    s1.ingest(vec![commit.clone()]);
    let why = rejected(&mut s1, vec![forged.clone()], 0);
    assert!(matches!(why, Rejection::NotInRegion { .. }), "{why}");
    // Inside, uncommitted: refused as such.
    let mut s0 = site(&fleet, &enrol, 0);
    let why = rejected(&mut s0, vec![forged.clone()], 0);
    assert!(matches!(why, Rejection::Uncommitted { .. }), "{why}");
    // Inside, committed: now the signature is checked, and fails.
    s0.ingest(vec![commit]);
    let why = rejected(&mut s0, vec![forged], 0);
    assert!(matches!(why, Rejection::Signature(_)), "{why}");
    assert!(why.is_misbehaviour());
}

#[test]
fn a_tampered_committed_change_is_refused() {
    // Any bit changed changes the hash: the tampered change is no longer the
    // one committed to.
    let (fleet, enrol) = setup();
    let (change, commit) = testkit::sign_regional(
        "r0",
        &[],
        std::slice::from_ref(&enrol),
        &[("a", json!("secret-value"))],
        1,
        &signers(&fleet),
    );
    let mut s0 = site(&fleet, &enrol, 0);
    s0.ingest(vec![commit]);
    let mut tampered = change.clone();
    let at = tampered.change.len() - 3;
    tampered.change[at] ^= 1;
    let rep = s0.ingest(vec![tampered]);
    assert!(matches!(rep[0].outcome, Outcome::Rejected(_)), "{rep:?}");
    assert!(s0.regional("r0").is_none());
    assert_eq!(s0.ingest(vec![change])[0].outcome, Outcome::Applied);
}

#[test]
fn an_authority_signed_change_with_a_key_that_is_not_a_path_is_refused() {
    use automerge::transaction::Transactable;
    let (fleet, enrol) = setup();
    let mut doc = automerge::Automerge::new();
    doc.set_actor(dcloud_crdt::change::edit_actor(
        &fleet.authorities[0].public(),
    ));
    let mut tx = doc.transaction();
    tx.put(automerge::ROOT, "member/x", "{}").unwrap();
    tx.commit();
    let raw = doc.get_last_local_change().unwrap();
    let doc_id = DocId::Region {
        region: RegionId::of("r0"),
    };
    let mut sc = SignedChange::sign(doc_id, 1, &raw, &fleet.authorities[0]);
    sc.cosign(&fleet.authorities[1]).unwrap();
    let commit = fleet.sign_policy(
        std::slice::from_ref(&enrol),
        vec![Edit::CommitRegional("r0".into(), raw.hash())],
    );
    let mut s0 = site(&fleet, &enrol, 0);
    s0.ingest(vec![commit]);
    let why = rejected(&mut s0, vec![sc], 0);
    assert!(matches!(why, Rejection::Schema(_)), "{why}");
}

#[test]
fn a_rotation_that_drops_a_commitment_drops_the_change_and_its_value() {
    // A regional change committed under v1 after the v2 rotation's snapshot
    // (the rotated-out keys' last word) stops governing once v2 is held: the
    // commitment is rotated out, the change with it, and the value leaves
    // the effective config. Offered again, the change is uncommitted.
    let (fleet, enrol) = setup();
    let mut s0 = site(&fleet, &enrol, 0);
    let heads_at_rotation = s0.policy_heads();
    let (change, commit) = testkit::sign_regional(
        "r0",
        &[],
        std::slice::from_ref(&enrol),
        &[("a", json!(1))],
        1,
        &signers(&fleet),
    );
    let rep = s0.ingest(vec![commit, change.clone()]);
    assert!(rep.iter().all(|r| r.outcome == Outcome::Applied), "{rep:?}");
    assert_eq!(s0.effective_config(&fleet.node(0)).unwrap()["a"], json!(1));

    let n: Vec<SecretKey> = (0..3).map(|i| seeded_key(90 + i)).collect();
    let both: Vec<&SecretKey> = fleet.authorities.iter().chain(n.iter()).collect();
    let keys: Vec<_> = n.iter().map(|k| k.public()).collect();
    let v2 = SignedTrustRoot::sign(
        TrustRoot {
            grandfathered_heads: heads_at_rotation.iter().map(|h| h.0).collect(),
            ..testkit::trust_root(2, &keys, 2)
        },
        &both,
    );
    assert_eq!(s0.ingest_root(v2), Ok(true));
    assert_eq!(s0.rotated_out(), 1);
    assert!(s0.regional("r0").is_none_or(|p| p.config.is_empty()));
    assert_eq!(s0.effective_config(&fleet.node(0)).unwrap(), json!({}));
    let why = rejected(&mut s0, vec![change], 0);
    assert!(matches!(why, Rejection::Uncommitted { .. }), "{why}");
}

#[test]
fn a_site_moved_out_of_the_region_drops_its_scoped_policy() {
    let (fleet, enrol) = setup();
    let (change, commit) = testkit::sign_regional(
        "r0",
        &[],
        std::slice::from_ref(&enrol),
        &[("a", json!(1))],
        1,
        &signers(&fleet),
    );
    let mut s0 = site(&fleet, &enrol, 0);
    s0.ingest(vec![commit.clone(), change.clone()]);
    assert!(s0.regional("r0").is_some());
    let moved = fleet.sign_policy(
        &[enrol.clone(), commit],
        vec![testkit::enrol(fleet.node(0), "site-0", "r1")],
    );
    assert_eq!(s0.ingest(vec![moved])[0].outcome, Outcome::Applied);
    assert!(s0.regional("r0").is_none(), "left with the site");
    let why = rejected(&mut s0, vec![change], 0);
    assert!(matches!(why, Rejection::NotInRegion { .. }), "{why}");
}

#[test]
fn concurrent_regional_edits_from_one_base_both_apply() {
    // One admin, two edits of r0 from the same base: both commit, both apply
    // on every site of r0 in either order, and the sites agree.
    let (fleet, enrol) = setup();
    let s = signers(&fleet);
    let base = std::slice::from_ref(&enrol);
    let (a, ca) = testkit::sign_regional("r0", &[], base, &[("a", json!(1))], 1, &s);
    let (b, cb) = testkit::sign_regional("r0", &[], base, &[("b", json!(2))], 1, &s);
    let mut s0 = site(&fleet, &enrol, 0);
    let mut s2 = site(&fleet, &enrol, 2);
    s0.ingest(vec![ca.clone(), a.clone(), cb.clone(), b.clone()]);
    s2.ingest(vec![b, cb]);
    s2.ingest(vec![ca, a]);
    let c0 = s0.effective_config(&fleet.node(0)).unwrap();
    assert_eq!(c0, json!({"a": 1, "b": 2}));
    assert_eq!(s0.regional("r0"), s2.regional("r0"));
    assert_eq!(
        s0.heads(&DocId::Region {
            region: RegionId::of("r0")
        })
        .len(),
        2
    );
}
