//! One test per attack: each asserts a typed rejection and an unchanged replica.

mod common;

use automerge::transaction::Transactable;
use common::{Fleet, fingerprint};
use dcloud_crdt::DecodeError;
use dcloud_crdt::keys::{KeyError, KeySignature, PublicKey, SignatureBytes};
use dcloud_crdt::testkit::{self, seeded_key};
use dcloud_crdt::verify::SignatureError;
use dcloud_crdt::{
    DocId, Edit, Level, NodeStatus, Outcome, Rejection, Replica, RootError, SecretKey,
    SignedChange, SignedTrustRoot, TrustRoot,
};
use serde_json::json;

/// A fleet of 3 authorities (threshold 2) and 3 enrolled nodes.
fn setup() -> (Fleet, Replica, SignedChange) {
    let fleet = Fleet::new(3, 2, 3);
    let mut r = fleet.replica();
    let enrol = fleet.enrolment();
    let rep = r.ingest(vec![enrol.clone()]);
    assert_eq!(rep[0].outcome, Outcome::Applied);
    (fleet, r, enrol)
}

/// Ingest one change; assert it is rejected and that the replica did not change.
fn assert_rejected(r: &mut Replica, sc: SignedChange) -> Rejection {
    let before = fingerprint(r);
    let rep = r.ingest(vec![sc]);
    let Outcome::Rejected(why) = rep[0].outcome.clone() else {
        panic!("expected a rejection, got {:?}", rep[0].outcome);
    };
    assert_eq!(
        before,
        fingerprint(r),
        "a rejected change changed the replica"
    );
    why
}

fn status_change(fleet: &Fleet, i: usize) -> SignedChange {
    let mut w = fleet.writer(i, 16);
    w.update(&NodeStatus {
        name: format!("site-{i}"),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn forged_signature_is_rejected() {
    let (fleet, mut r, enrol) = setup();
    let mut sc = fleet.set(&[enrol], "a", json!(1));
    // Claim authority 0's key, but sign with an outsider's key.
    let outsider = SecretKey::from_seed([9; 32]);
    let msg = dcloud_crdt::change::signing_message(&sc.doc, 1, &sc.hash().unwrap());
    sc.sigs[0].sig = outsider.sign(&msg).sig;
    let why = assert_rejected(&mut r, sc);
    assert!(
        matches!(why, Rejection::Signature(SignatureError::Invalid(_))),
        "{why}"
    );
}

#[test]
fn flipped_bit_in_change_bytes_is_rejected() {
    let (fleet, mut r, enrol) = setup();
    let good = fleet.set(&[enrol], "a", json!(1));
    // Every byte position: the change no longer parses, or its hash changed and
    // no signature covers it.
    for pos in (0..good.change.len()).step_by(3).chain(4..8) {
        let mut sc = good.clone();
        sc.change[pos] ^= 0x01;
        let why = assert_rejected(&mut r, sc);
        assert!(
            matches!(
                why,
                Rejection::Malformed(_)
                    | Rejection::Signature(_)
                    | Rejection::ActorNotAuthor { .. }
                    | Rejection::Schema(_)
            ),
            "byte {pos}: {why}"
        );
    }
}

#[test]
fn flipped_bit_in_signature_or_key_is_rejected() {
    let (fleet, mut r, enrol) = setup();
    let good = fleet.set(&[enrol], "a", json!(1));
    let mut sc = good.clone();
    sc.sigs[1].sig.0[10] ^= 0x40;
    let why = assert_rejected(&mut r, sc);
    assert!(matches!(why, Rejection::Signature(_)), "{why}");
    let mut sc = good.clone();
    sc.sigs[1].key.0[3] ^= 0x01;
    let why = assert_rejected(&mut r, sc);
    // The flipped key is no authority key (too few signers), or not a point.
    assert!(
        matches!(why, Rejection::Threshold { .. } | Rejection::Signature(_)),
        "{why}"
    );
}

#[test]
fn signer_not_author_is_rejected() {
    let (fleet, mut r, enrol) = setup();
    // Authored (actor) by authority 0, signed by authorities 1 and 2 only.
    let mut sc = fleet.sign_policy_by(
        &[enrol],
        vec![Edit::Set(Level::Fleet, "a".into(), json!(1))],
        &[0, 1],
    );
    sc.sigs.remove(0);
    sc.cosign(&fleet.authorities[2]).unwrap();
    let why = assert_rejected(&mut r, sc);
    assert!(matches!(why, Rejection::ActorNotAuthor { .. }), "{why}");

    // A status change whose automerge actor is node 0 but is filed as node 1's
    // document and signed by node 1.
    let mut sc = status_change(&fleet, 0);
    sc.doc = DocId::Status {
        node: fleet.node(1),
        epoch: 1,
    };
    let msg = dcloud_crdt::change::signing_message(&sc.doc, 0, &sc.hash().unwrap());
    sc.sigs = vec![fleet.nodes[1].sign(&msg)];
    let why = assert_rejected(&mut r, sc);
    assert!(matches!(why, Rejection::ActorNotAuthor { .. }), "{why}");
}

#[test]
fn weak_key_is_rejected() {
    let (_fleet, mut r, _) = setup();
    // The identity point: small order, every signature "verifies" under lax rules.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let weak = PublicKey(weak);
    let mut doc = automerge::Automerge::new().with_actor(dcloud_crdt::change::edit_actor(&weak));
    let mut tx = doc.transaction();
    tx.put(automerge::ROOT, "name", "\"x\"").unwrap();
    tx.commit();
    let change = doc.get_last_local_change().unwrap();
    // R = identity, s = 0: valid for a weak key under cofactored, non-strict checks.
    let mut sig = [0u8; 64];
    sig[0] = 1;
    let sc = SignedChange {
        doc: DocId::Status {
            node: weak,
            epoch: 1,
        },
        root_version: 0,
        change: change.raw_bytes().to_vec(),
        sigs: vec![KeySignature {
            key: weak,
            sig: SignatureBytes(sig),
        }],
    };
    let why = assert_rejected(&mut r, sc);
    assert!(
        matches!(
            why,
            Rejection::Signature(SignatureError::Key(KeyError::Weak(_)))
        ),
        "{why}"
    );
}

#[test]
fn non_canonical_signature_is_rejected() {
    let (fleet, mut r, _) = setup();
    let mut sc = status_change(&fleet, 0);
    // s + l: the same scalar, a different (malleated) encoding.
    let l: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (i, li) in l.iter().enumerate() {
        let v = sc.sigs[0].sig.0[32 + i] as u16 + *li as u16 + carry;
        sc.sigs[0].sig.0[32 + i] = v as u8;
        carry = v >> 8;
    }
    let why = assert_rejected(&mut r, sc);
    assert!(
        matches!(why, Rejection::Signature(SignatureError::NonCanonical(_))),
        "{why}"
    );
}

#[test]
fn fewer_signatures_than_threshold_is_rejected() {
    let (fleet, mut r, enrol) = setup();
    let sc = fleet.sign_policy_by(
        &[enrol],
        vec![Edit::Set(Level::Fleet, "a".into(), json!(1))],
        &[0],
    );
    let why = assert_rejected(&mut r, sc);
    assert_eq!(
        why,
        Rejection::Threshold {
            version: 1,
            got: 1,
            needed: 2
        }
    );
}

#[test]
fn one_key_signing_twice_counts_once() {
    let (fleet, mut r, enrol) = setup();
    let mut sc = fleet.sign_policy_by(
        &[enrol],
        vec![Edit::Set(Level::Fleet, "a".into(), json!(1))],
        &[0],
    );
    sc.sigs.push(sc.sigs[0]);
    let why = assert_rejected(&mut r, sc);
    assert_eq!(
        why,
        Rejection::Threshold {
            version: 1,
            got: 1,
            needed: 2
        }
    );

    // A root listing one key twice does not reach a threshold of 2 with it.
    let a = seeded_key(50);
    let root = testkit::trust_root(1, &[a.public(), a.public()], 2);
    let err = dcloud_crdt::TrustChain::from_roots(vec![SignedTrustRoot::sign(root, &[&a, &a])])
        .unwrap_err();
    assert!(matches!(err, RootError::Malformed { .. }), "{err}");
}

#[test]
fn status_written_by_another_node_is_rejected() {
    let (fleet, mut r, _) = setup();
    let mut sc = status_change(&fleet, 0);
    let msg = dcloud_crdt::change::signing_message(&sc.doc, 0, &sc.hash().unwrap());
    sc.sigs = vec![fleet.nodes[1].sign(&msg)];
    let why = assert_rejected(&mut r, sc);
    assert!(matches!(why, Rejection::NotOwner { .. }), "{why}");
}

#[test]
fn unenrolled_node_is_rejected() {
    let (_fleet, mut r, _) = setup();
    let stranger = SecretKey::from_seed([77; 32]);
    let mut w = dcloud_crdt::StatusWriter::new(stranger, 1, 16);
    let sc = w
        .update(&NodeStatus {
            name: "x".into(),
            ..Default::default()
        })
        .unwrap();
    let why = assert_rejected(&mut r, sc);
    assert!(matches!(why, Rejection::Unenrolled(_)), "{why}");
    assert!(!why.is_misbehaviour());
}

#[test]
fn revoked_node_is_rejected_and_its_status_dropped() {
    let (fleet, mut r, enrol) = setup();
    let mut w = fleet.writer(0, 16);
    let first = w
        .update(&NodeStatus {
            name: "a".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.ingest(vec![first])[0].outcome, Outcome::Applied);
    assert!(r.status(&fleet.node(0)).is_some());
    let revoke = fleet.sign_policy(
        &[enrol],
        vec![Edit::Revoke(fleet.node(0), "key stolen".into())],
    );
    assert_eq!(r.ingest(vec![revoke])[0].outcome, Outcome::Applied);
    assert!(
        r.status(&fleet.node(0)).is_none(),
        "a revoked node's status is dropped"
    );
    let later = w
        .update(&NodeStatus {
            name: "b".into(),
            ..Default::default()
        })
        .unwrap();
    let why = assert_rejected(&mut r, later);
    assert!(matches!(why, Rejection::Revoked(_)), "{why}");
    assert_eq!(r.effective_config(&fleet.node(0)), None);
}

fn next_root(
    fleet: &Fleet,
    version: u64,
    new_keys: &[&SecretKey],
    signers: &[&SecretKey],
) -> SignedTrustRoot {
    next_root_over(fleet, version, new_keys, signers, &[])
}

/// A rotation that grandfathers the policy heads `heads`.
fn next_root_over(
    fleet: &Fleet,
    version: u64,
    new_keys: &[&SecretKey],
    signers: &[&SecretKey],
    heads: &[dcloud_crdt::ChangeHash],
) -> SignedTrustRoot {
    let _ = fleet;
    let keys: Vec<PublicKey> = new_keys.iter().map(|k| k.public()).collect();
    let root = TrustRoot {
        grandfathered_heads: heads.iter().map(|h| h.0).collect(),
        ..testkit::trust_root(version, &keys, 2)
    };
    SignedTrustRoot::sign(root, signers)
}

#[test]
fn rotated_out_key_no_longer_governs() {
    // v1 (keys A) -> v2 (keys B), grandfathering the heads at rotation time.
    // A change signed by A's keys under v1 afterwards is refused, naming the
    // rotation; the grandfathered history stays valid, also for a replica that
    // receives it only after the rotation.
    let (fleet, mut r, enrol) = setup();
    let n: Vec<SecretKey> = (0..3).map(|i| seeded_key(70 + i)).collect();
    let both: Vec<&SecretKey> = fleet.authorities.iter().chain(n.iter()).collect();
    let new: Vec<&SecretKey> = n.iter().collect();
    let before_rotation = fleet.set(std::slice::from_ref(&enrol), "a", json!(1));
    assert_eq!(
        r.ingest(vec![before_rotation.clone()])[0].outcome,
        Outcome::Applied
    );
    let v2 = next_root_over(&fleet, 2, &new, &both, &r.policy_heads());
    assert_eq!(r.ingest_root(v2.clone()), Ok(true));
    assert_eq!(
        r.policy().fleet.get("a"),
        Some(&json!(1)),
        "grandfathered history kept"
    );
    let late = fleet.set(&[enrol.clone(), before_rotation.clone()], "b", json!(2));
    let why = assert_rejected(&mut r, late.clone());
    assert_eq!(
        why,
        Rejection::RotatedOut {
            version: 1,
            rotation: 2
        }
    );
    assert!(
        !why.is_misbehaviour(),
        "a relay that missed the rotation is honest"
    );
    assert!(why.to_string().contains("v2"), "{why}");

    // A replica that learns the rotation first, then the history.
    let mut fresh = fleet.replica();
    fresh.ingest_root(v2).unwrap();
    let rep = fresh.ingest(vec![enrol.clone()]);
    assert_eq!(
        rep[0].outcome,
        Outcome::Pending,
        "not yet proven grandfathered"
    );
    let rep = fresh.ingest(vec![before_rotation, late]);
    assert_eq!(rep[0].outcome, Outcome::Applied);
    assert_eq!(
        rep[1].outcome,
        Outcome::Rejected(Rejection::RotatedOut {
            version: 1,
            rotation: 2
        })
    );
    assert_eq!(fresh.policy(), r.policy());
    assert_eq!(fresh.policy_heads(), r.policy_heads());
}

#[test]
fn rotation_drops_old_changes_it_does_not_grandfather() {
    // A partition held an old-version change the rotation's author never saw.
    // Once the rotation arrives there, that change and what builds on it are
    // dropped, so both sides agree; the admin re-signs it under v2.
    let (fleet, mut a, enrol) = setup();
    let mut b = fleet.replica();
    b.ingest(vec![enrol.clone()]);
    let hidden = fleet.set(std::slice::from_ref(&enrol), "hidden", json!(true));
    let on_top = fleet.set(&[enrol.clone(), hidden.clone()], "on_top", json!(true));
    assert!(
        b.ingest(vec![hidden, on_top])
            .iter()
            .all(|x| x.outcome == Outcome::Applied)
    );
    let n: Vec<SecretKey> = (0..3).map(|i| seeded_key(80 + i)).collect();
    let both: Vec<&SecretKey> = fleet.authorities.iter().chain(n.iter()).collect();
    let new: Vec<&SecretKey> = n.iter().collect();
    let v2 = next_root_over(&fleet, 2, &new, &both, &a.policy_heads());
    a.ingest_root(v2.clone()).unwrap();
    b.ingest_root(v2).unwrap();
    assert_eq!(b.rotated_out(), 2);
    assert_eq!(b.policy().fleet.get("hidden"), None);
    assert_eq!(fingerprint(&a), fingerprint(&b));
}

#[test]
fn trust_root_rotation_attacks_are_refused() {
    let (fleet, mut r, _) = setup();
    let n: Vec<SecretKey> = (0..3).map(|i| seeded_key(60 + i)).collect();
    let new: Vec<&SecretKey> = n.iter().collect();
    let old: Vec<&SecretKey> = fleet.authorities.iter().collect();
    let both: Vec<&SecretKey> = old.iter().chain(new.iter()).copied().collect();
    let before = fingerprint(&r);

    // Skipping a version.
    let err = r
        .ingest_root(next_root(&fleet, 3, &new, &both))
        .unwrap_err();
    assert_eq!(err, RootError::NotNext { current: 1, got: 3 });
    // Signed only by the old keys.
    let err = r.ingest_root(next_root(&fleet, 2, &new, &old)).unwrap_err();
    assert!(
        matches!(err, RootError::Threshold { ref by, got: 0, .. } if by == "its own"),
        "{err}"
    );
    // Signed only by the new keys.
    let err = r.ingest_root(next_root(&fleet, 2, &new, &new)).unwrap_err();
    assert!(
        matches!(err, RootError::Threshold { ref by, got: 0, .. } if by == "v1's"),
        "{err}"
    );
    assert_eq!(before, fingerprint(&r));
    assert_eq!(r.trust().current().version, 1);

    // A proper rotation, then a rollback to v1 and a replay of v2 with other content.
    assert_eq!(r.ingest_root(next_root(&fleet, 2, &new, &both)), Ok(true));
    // Offering the held v1 again is a harmless duplicate; it never becomes current.
    assert_eq!(r.ingest_root(fleet.root.clone()), Ok(false));
    let mut chain = r.trust().clone();
    let err = chain.advance(fleet.root.clone()).unwrap_err();
    assert!(
        matches!(err, RootError::Rollback { current: 2, got: 1 }),
        "{err}"
    );
    let other_v2 = next_root(&fleet, 2, &old, &old);
    assert_eq!(
        r.ingest_root(other_v2).unwrap_err(),
        RootError::Conflict { version: 2 }
    );
    // A copy of the held v1 with a tampered signature is refused, not ignored.
    let mut tampered = fleet.root.clone();
    tampered.sigs[0].sig.0[5] ^= 1;
    assert!(matches!(
        r.ingest_root(tampered).unwrap_err(),
        RootError::Signature { .. }
    ));
    assert_eq!(r.trust().current().version, 2);

    // A bad signature on an otherwise valid root is refused outright.
    let mut bad = next_root(&fleet, 3, &old, &both);
    bad.sigs[0].sig.0[0] ^= 1;
    assert!(matches!(
        r.ingest_root(bad).unwrap_err(),
        RootError::Signature { .. }
    ));
}

#[test]
fn policy_under_rotated_root_needs_new_keys() {
    let (fleet, mut r, enrol) = setup();
    let n: Vec<SecretKey> = (0..3).map(|i| seeded_key(60 + i)).collect();
    let both: Vec<&SecretKey> = fleet.authorities.iter().chain(n.iter()).collect();
    let new: Vec<&SecretKey> = n.iter().collect();
    r.ingest_root(next_root_over(&fleet, 2, &new, &both, &r.policy_heads()))
        .unwrap();
    // Old keys claiming v2: not in v2's key set.
    let set_a = || vec![Edit::Set(Level::Fleet, "a".into(), json!(1))];
    let old = [&fleet.authorities[0], &fleet.authorities[1]];
    let sc = testkit::sign_policy(std::slice::from_ref(&enrol), set_a(), 2, &old);
    let why = assert_rejected(&mut r, sc);
    assert_eq!(
        why,
        Rejection::Threshold {
            version: 2,
            got: 0,
            needed: 2
        }
    );
    // New keys under v2: accepted.
    let sc = testkit::sign_policy(&[enrol], set_a(), 2, &[&n[0], &n[1]]);
    assert_eq!(r.ingest(vec![sc])[0].outcome, Outcome::Applied);
}

#[test]
fn oversized_change_is_rejected() {
    let (fleet, mut r, enrol) = setup();
    let big = "x".repeat(r.limits().policy_change_size_max_bytes);
    // The editor bounds one value; many values make one oversized change.
    let edits = (0..(big.len() / 60_000 + 1))
        .map(|i| Edit::Set(Level::Fleet, format!("k{i}"), json!(big[..60_000])))
        .collect();
    let sc = fleet.sign_policy(&[enrol], edits);
    let why = assert_rejected(&mut r, sc);
    assert!(matches!(why, Rejection::TooLarge { .. }), "{why}");

    // A status value over the per-field bound.
    let mut w = fleet.writer(0, 16);
    let sc = w
        .update(&NodeStatus {
            name: "y".repeat(5000),
            ..Default::default()
        })
        .unwrap();
    let why = assert_rejected(&mut r, sc);
    assert!(matches!(why, Rejection::Schema(_)), "{why}");
}

#[test]
fn too_many_signatures_is_rejected() {
    let (fleet, mut r, enrol) = setup();
    let mut sc = fleet.set(&[enrol], "a", json!(1));
    let extra = sc.sigs[1];
    while sc.sigs.len() <= r.limits().signatures_max {
        sc.sigs.push(extra);
    }
    let why = assert_rejected(&mut r, sc);
    assert!(matches!(why, Rejection::SignatureCount { .. }), "{why}");
    // A status change carries exactly its owner's signature.
    let mut sc = status_change(&fleet, 0);
    sc.sigs.push(sc.sigs[0]);
    let why = assert_rejected(&mut r, sc);
    assert!(matches!(why, Rejection::SignatureCount { .. }), "{why}");
}

#[test]
fn malformed_and_truncated_bytes_are_rejected() {
    let (fleet, mut r, enrol) = setup();
    let sc = fleet.set(&[enrol], "a", json!(1));
    let bytes = sc.encode();
    assert_eq!(SignedChange::decode(&bytes, 1 << 20).unwrap(), sc);
    for cut in [0, 1, 2, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            SignedChange::decode(&bytes[..cut], 1 << 20).is_err(),
            "cut at {cut}"
        );
    }
    // Formats 1 (before per-edit actors) and 2 (before regional policy) and
    // unknown later versions are refused.
    for v in [1u8, 2, 4] {
        let mut other = bytes.clone();
        other[0] = v;
        assert_eq!(
            SignedChange::decode(&other, 1 << 20).unwrap_err(),
            DecodeError::UnknownVersion {
                what: "signed change",
                found: v,
                expected: dcloud_crdt::change::CHANGE_FORMAT_VERSION
            }
        );
    }
    assert!(matches!(
        SignedChange::decode(&bytes, 10).unwrap_err(),
        DecodeError::TooLarge { .. }
    ));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        SignedChange::decode(&trailing, 1 << 20).unwrap_err(),
        DecodeError::Malformed(_)
    ));

    // Well-framed but the change bytes are garbage or truncated.
    for change in [
        vec![],
        vec![0x85, 0x6f, 0x4a, 0x83],
        sc.change[..sc.change.len() - 3].to_vec(),
    ] {
        let mut bad = sc.clone();
        bad.change = change;
        let why = assert_rejected(&mut r, bad);
        assert!(matches!(why, Rejection::Malformed(_)), "{why}");
    }
}

#[test]
fn status_of_unknown_epoch_order_is_buffered_not_lost() {
    let (fleet, mut r, _) = setup();
    let mut w = fleet.writer(0, 16);
    let a = w
        .update(&NodeStatus {
            name: "a".into(),
            ..Default::default()
        })
        .unwrap();
    let b = w
        .update(&NodeStatus {
            name: "b".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.ingest(vec![b.clone()])[0].outcome, Outcome::Pending);
    let rep = r.ingest(vec![a]);
    assert_eq!(rep[0].outcome, Outcome::Applied);
    assert_eq!(r.status(&fleet.node(0)).unwrap().0.name, "b");
    assert_eq!(r.ingest(vec![b])[0].outcome, Outcome::Duplicate);
}

#[test]
fn site_edit_of_unenrolled_node_is_refused_by_the_editor() {
    let (_fleet, _r, enrol) = setup();
    let mut ed = dcloud_crdt::PolicyEditor::new(&[enrol]).unwrap();
    let stranger = SecretKey::from_seed([77; 32]).public();
    let err = ed
        .push(Edit::Set(Level::Site(stranger), "a".into(), json!(1)))
        .unwrap_err();
    assert!(err.to_string().contains("not enrolled"), "{err}");
    let err = ed
        .push(testkit::enrol(stranger, "x", "bad region"))
        .unwrap_err();
    assert!(err.to_string().contains("region"), "{err}");
}

#[test]
fn forked_authority_key_is_refused_without_blaming_the_relay() {
    let (fleet, mut r, enrol) = setup();
    // Two different changes by the same authority actor (key and nonce) on the
    // same base: both have sequence number 1 for that actor. Honest tools never
    // do this (each edit draws a fresh nonce); a forked tool or key could.
    let actor = dcloud_crdt::change::edit_actor(&fleet.authorities[0].public());
    let make = |v: i64| {
        let mut ed = dcloud_crdt::PolicyEditor::new(std::slice::from_ref(&enrol)).unwrap();
        ed.push(Edit::Set(Level::Fleet, "a".into(), json!(v)))
            .unwrap();
        let mut sc = ed
            .finish_as(&fleet.authorities[0], 1, actor.clone())
            .unwrap();
        sc.cosign(&fleet.authorities[1]).unwrap();
        sc
    };
    let (a, b) = (make(1), make(2));
    assert_ne!(a.hash().unwrap(), b.hash().unwrap());
    assert_eq!(r.ingest(vec![a])[0].outcome, Outcome::Applied);
    let why = assert_rejected(&mut r, b);
    assert!(matches!(why, Rejection::Fork { seq: 1, .. }), "{why}");
    assert!(!why.is_misbehaviour());
}

#[test]
fn two_edits_by_one_key_on_one_base_both_merge() {
    // The operator's path: `dcloud-admin set ... --base S --key admin.key`
    // twice, published anywhere. Each edit is its own actor, so both apply.
    let (fleet, mut r, enrol) = setup();
    let a = fleet.set(std::slice::from_ref(&enrol), "acc.p", json!(1));
    let b = fleet.set(std::slice::from_ref(&enrol), "acc.q", json!(2));
    let mut other = fleet.replica();
    other.ingest(vec![enrol]);
    assert_eq!(r.ingest(vec![a.clone()])[0].outcome, Outcome::Applied);
    assert_eq!(r.ingest(vec![b.clone()])[0].outcome, Outcome::Applied);
    assert_eq!(other.ingest(vec![b])[0].outcome, Outcome::Applied);
    assert_eq!(other.ingest(vec![a])[0].outcome, Outcome::Applied);
    assert_eq!(fingerprint(&r), fingerprint(&other));
    assert_eq!(r.policy().fleet.get("acc.p"), Some(&json!(1)));
    assert_eq!(r.policy().fleet.get("acc.q"), Some(&json!(2)));
}

#[test]
fn actor_without_nonce_is_refused() {
    // Format 1's actor (the key alone) is refused: it is what made edits fork.
    let (fleet, mut r, enrol) = setup();
    let key = &fleet.authorities[0];
    let mut ed = dcloud_crdt::PolicyEditor::new(std::slice::from_ref(&enrol)).unwrap();
    ed.push(Edit::Set(Level::Fleet, "a".into(), json!(1)))
        .unwrap();
    let mut sc = ed
        .finish_as(key, 1, automerge::ActorId::from(key.public().0.as_slice()))
        .unwrap();
    sc.cosign(&fleet.authorities[1]).unwrap();
    let why = assert_rejected(&mut r, sc);
    assert!(matches!(why, Rejection::ActorNotAuthor { .. }), "{why}");
}

/// Every reconciliation step two replicas would take over one document, until
/// neither has anything the other lacks (bounded). Returns every report.
fn reconcile(a: &mut Replica, b: &mut Replica, doc: &DocId) -> Vec<dcloud_crdt::Report> {
    let mut all = Vec::new();
    for _ in 0..8 {
        let to_b: Vec<SignedChange> = a
            .missing_for(doc, &b.heads(doc))
            .into_iter()
            .cloned()
            .collect();
        let to_a: Vec<SignedChange> = b
            .missing_for(doc, &a.heads(doc))
            .into_iter()
            .cloned()
            .collect();
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        all.extend(b.ingest(to_b));
        all.extend(a.ingest(to_a));
    }
    all
}

fn misbehaviour(reports: &[dcloud_crdt::Report]) -> Vec<String> {
    reports
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Rejected(why) if why.is_misbehaviour() => Some(why.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn over_full_epoch_is_void_on_every_replica_whatever_the_arrival_order() {
    // Issue 10: one node signs 100 sibling changes of one status epoch and
    // hands different 64-subsets to different neighbours.
    let (fleet, mut a, enrol) = setup();
    let mut b = fleet.replica();
    b.ingest(vec![enrol.clone()]);
    let max = dcloud_crdt::Limits::default().status_epoch_changes_max;
    let all = dcloud_crdt::hostile::sibling_status_changes(&fleet.nodes[0], 1, 100, 7);
    let doc = all[0].doc;
    let to_a: Vec<SignedChange> = all[..max].to_vec();
    let mut to_b = vec![all[0].clone()];
    to_b.extend(all[all.len() - (max - 1)..].iter().cloned());
    let mut reports = a.ingest(to_a);
    reports.extend(b.ingest(to_b));
    assert_eq!(misbehaviour(&reports), Vec::<String>::new());
    reports = reconcile(&mut a, &mut b, &doc);
    assert_eq!(
        misbehaviour(&reports),
        Vec::<String>::new(),
        "an over-full epoch is no relay's fault"
    );
    assert_eq!(a.docs(), b.docs(), "the two replicas agree");
    assert!(a.status(&fleet.node(0)).is_none(), "the epoch is void");
    assert!(b.status(&fleet.node(0)).is_none(), "the epoch is void");
    // A third replica given all 101 in reverse order agrees with them.
    let mut c = fleet.replica();
    c.ingest(vec![enrol]);
    let mut rev = all.clone();
    rev.reverse();
    assert_eq!(misbehaviour(&c.ingest(rev)), Vec::<String>::new());
    assert_eq!(c.docs(), a.docs());
    // The owner's next epoch replaces the void one as usual.
    let next = dcloud_crdt::StatusWriter::new(fleet.nodes[0].clone(), 2, 16).heartbeat();
    assert_eq!(a.ingest(vec![next])[0].outcome, Outcome::Applied);
    assert_eq!(a.status(&fleet.node(0)).unwrap().1, 2);
}

#[test]
fn far_future_pending_flood_does_not_push_out_honest_pending_changes() {
    // Issue 10: 10,000 status changes of one node, each for a new epoch whose
    // first change is withheld.
    let (fleet, mut r, _) = setup();
    let mut w = fleet.writer(1, 16);
    let first = w
        .update(&NodeStatus {
            name: "first".into(),
            ..Default::default()
        })
        .unwrap();
    let second = w
        .update(&NodeStatus {
            name: "second".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.ingest(vec![second])[0].outcome, Outcome::Pending);
    let flood = dcloud_crdt::hostile::far_future_pending(&fleet.nodes[0], 2, 10_000, 5);
    for part in flood.chunks(500) {
        let reports = r.ingest(part.to_vec());
        assert_eq!(misbehaviour(&reports), Vec::<String>::new());
    }
    let per_owner = dcloud_crdt::Limits::default().pending_per_owner_max;
    assert!(
        r.stats().pending <= per_owner + 1,
        "{} changes pending, over {per_owner} of the flooder and 1 honest",
        r.stats().pending
    );
    // The honest change that waited is still there: its dependency applies it.
    assert_eq!(r.ingest(vec![first])[0].outcome, Outcome::Applied);
    assert_eq!(r.status(&fleet.node(1)).unwrap().0.name, "second");
    let promoted = r.take_promoted();
    assert_eq!(
        promoted.len(),
        1,
        "the waiting change is reported as applied"
    );
}

#[test]
fn status_epoch_far_ahead_is_refused_without_blame() {
    let (fleet, mut r, _) = setup();
    assert_eq!(
        r.ingest(vec![status_change(&fleet, 0)])[0].outcome,
        Outcome::Applied
    );
    let jump = dcloud_crdt::Limits::default().status_epoch_jump_max;
    let far = dcloud_crdt::StatusWriter::new(fleet.nodes[0].clone(), 1 + jump + 1, 16).heartbeat();
    let why = assert_rejected(&mut r, far);
    assert!(matches!(why, Rejection::EpochJump { .. }), "{why}");
    assert!(!why.is_misbehaviour());
    let near = dcloud_crdt::StatusWriter::new(fleet.nodes[0].clone(), 1 + jump, 16).heartbeat();
    assert_eq!(r.ingest(vec![near])[0].outcome, Outcome::Applied);
}

#[test]
fn rate_refusal_is_typed_blameless_and_changes_nothing() {
    let (fleet, mut r, _) = setup();
    let before = fingerprint(&r);
    let rep = r.ingest_with(vec![status_change(&fleet, 0)], &mut |_| false);
    assert!(
        matches!(
            &rep[0].outcome,
            Outcome::Rejected(Rejection::RateLimited(_))
        ),
        "{:?}",
        rep[0].outcome
    );
    assert!(!matches!(&rep[0].outcome, Outcome::Rejected(w) if w.is_misbehaviour()));
    assert_eq!(before, fingerprint(&r));
}

#[test]
fn a_rotation_that_drops_a_scope_removal_scopes_the_region_again_and_drops_its_status() {
    // Site-1 (region r1) holds site-0's (r0) status. r0 is scoped, then
    // unscoped under v1; the v2 rotation grandfathers the history up to the
    // scope, not the removal its author never saw. Once site-1 takes v2, r0
    // is scoped again: site-1 no longer holds site-0's status, and refuses it.
    let (fleet, mut r, enrol) = setup();
    r.hold_as(fleet.node(1));
    let status = status_change(&fleet, 0);
    assert_eq!(r.ingest(vec![status.clone()])[0].outcome, Outcome::Applied);
    let on = fleet.sign_policy(
        std::slice::from_ref(&enrol),
        vec![Edit::ScopeStatus("r0".into(), true)],
    );
    assert_eq!(r.ingest(vec![on.clone()])[0].outcome, Outcome::Applied);
    assert!(r.status(&fleet.node(0)).is_none(), "scoped: dropped");
    let heads_at_scope = r.policy_heads();
    let off = fleet.sign_policy(
        &[enrol.clone(), on.clone()],
        vec![Edit::ScopeStatus("r0".into(), false)],
    );
    assert_eq!(r.ingest(vec![off])[0].outcome, Outcome::Applied);
    assert_eq!(r.ingest(vec![status.clone()])[0].outcome, Outcome::Applied);
    assert!(r.status(&fleet.node(0)).is_some(), "unscoped: held again");

    let n: Vec<SecretKey> = (0..3).map(|i| seeded_key(90 + i)).collect();
    let both: Vec<&SecretKey> = fleet.authorities.iter().chain(n.iter()).collect();
    let new: Vec<&SecretKey> = n.iter().collect();
    let v2 = next_root_over(&fleet, 2, &new, &both, &heads_at_scope);
    assert_eq!(r.ingest_root(v2), Ok(true));
    assert_eq!(r.rotated_out(), 1);
    assert!(
        r.policy().scoped.contains("r0"),
        "the removal was rotated out"
    );
    assert!(
        r.status(&fleet.node(0)).is_none(),
        "site-0's status left site-1 with the rotation"
    );
    let why = assert_rejected(&mut r, status);
    assert!(matches!(why, Rejection::OutOfScope { .. }), "{why}");
}

#[test]
fn an_out_of_scope_status_is_refused_before_its_signature_is_checked() {
    // A replayer floods a site outside a scoped region with that region's
    // statuses: each is refused by a lookup, before any signature work, so
    // even one with a broken signature is refused as out of scope.
    let (fleet, mut r, enrol) = setup();
    r.hold_as(fleet.node(1));
    let on = fleet.sign_policy(&[enrol], vec![Edit::ScopeStatus("r0".into(), true)]);
    assert_eq!(r.ingest(vec![on])[0].outcome, Outcome::Applied);
    let mut forged = status_change(&fleet, 0);
    forged.sigs[0].sig = SignatureBytes([7; 64]);
    let why = assert_rejected(&mut r, forged);
    assert!(matches!(why, Rejection::OutOfScope { .. }), "{why}");
    assert!(!why.is_misbehaviour(), "{why}");
}

#[test]
fn a_status_claiming_healthy_is_refused_only_a_summary_says_it() {
    // A status's health is its checks: a status document with a `healthy`
    // field (which could say healthy while its checks fail) is refused;
    // the same change as a summary applies.
    let (fleet, mut r, _) = setup();
    let mut w = fleet.writer(0, 16).summary_writer();
    let st = NodeStatus {
        healthy: Some(true),
        ..Default::default()
    };
    let summary = w.update(&st).unwrap();
    let change = dcloud_crdt::change::parse_change(&summary.change).unwrap();
    let as_status = SignedChange::sign(
        DocId::Status {
            node: fleet.node(0),
            epoch: 1,
        },
        0,
        &change,
        &fleet.nodes[0],
    );
    let why = assert_rejected(&mut r, as_status);
    assert!(matches!(why, Rejection::Schema(_)), "{why}");
    assert!(why.to_string().contains("healthy"), "{why}");
    assert_eq!(r.ingest(vec![summary])[0].outcome, Outcome::Applied);
    assert_eq!(r.summary(&fleet.node(0)).unwrap().0.healthy, Some(true));
}

#[test]
fn a_rotation_that_drops_an_enrolment_drops_that_sites_status() {
    // A site enrolled under v1 after the snapshot the v2 rotation was made
    // from: its enrolment is rotated out, so its status (possibly of a
    // scoped region) is not kept, and is refused from then on.
    let (fleet, mut r, enrol) = setup();
    let late = seeded_key(99);
    let enrol_late = fleet.sign_policy(
        std::slice::from_ref(&enrol),
        vec![testkit::enrol(late.public(), "late", "r0")],
    );
    let heads_before = r.policy_heads();
    assert_eq!(r.ingest(vec![enrol_late])[0].outcome, Outcome::Applied);
    let mut w = dcloud_crdt::StatusWriter::new(late.clone(), 1, 16);
    let st = w
        .update(&NodeStatus {
            name: "late".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.ingest(vec![st.clone()])[0].outcome, Outcome::Applied);
    assert!(r.status(&late.public()).is_some());

    let n: Vec<SecretKey> = (0..3).map(|i| seeded_key(100 + i)).collect();
    let both: Vec<&SecretKey> = fleet.authorities.iter().chain(n.iter()).collect();
    let new: Vec<&SecretKey> = n.iter().collect();
    let v2 = next_root_over(&fleet, 2, &new, &both, &heads_before);
    assert_eq!(r.ingest_root(v2), Ok(true));
    assert!(!r.policy().members.contains_key(&late.public()));
    assert!(
        r.status(&late.public()).is_none(),
        "no longer enrolled: dropped"
    );
    let why = assert_rejected(&mut r, st);
    assert!(matches!(why, Rejection::Unenrolled(_)), "{why}");
}

#[test]
fn a_status_arriving_with_the_policy_that_admits_its_holder_applies() {
    // Site-1 (r1) is moved into the scoped region r0; the change and a
    // status of r0 arrive in one batch: the status is judged against the
    // batch's policy, so it applies.
    let (fleet, mut r, enrol) = setup();
    r.hold_as(fleet.node(1));
    let on = fleet.sign_policy(
        std::slice::from_ref(&enrol),
        vec![Edit::ScopeStatus("r0".into(), true)],
    );
    assert_eq!(r.ingest(vec![on.clone()])[0].outcome, Outcome::Applied);
    let status = status_change(&fleet, 0);
    let moved = fleet.sign_policy(
        &[enrol, on],
        vec![testkit::enrol(fleet.node(1), "site-1", "r0")],
    );
    let rep = r.ingest(vec![moved, status]);
    assert_eq!(rep[0].outcome, Outcome::Applied);
    assert_eq!(rep[1].outcome, Outcome::Applied, "{:?}", rep[1].outcome);
    assert!(r.status(&fleet.node(0)).is_some());
}
