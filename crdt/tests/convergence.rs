//! Merge laws: any order, duplication and batching of delivery gives identical
//! heads, policy, status and effective config on every replica.

mod common;

use std::sync::OnceLock;

use common::{Fleet, fingerprint};
use dcloud_crdt::{Edit, Level, NodeStatus, Outcome, SecretKey, SignedChange, StatusWriter};
use proptest::prelude::*;
use serde_json::json;

struct Corpus {
    fleet: Fleet,
    changes: Vec<SignedChange>,
    reference: String,
}

fn status(name: &str, version: &str) -> NodeStatus {
    NodeStatus {
        name: name.into(),
        region: "r0".into(),
        version: version.into(),
        ..Default::default()
    }
}

fn corpus() -> &'static Corpus {
    static C: OnceLock<Corpus> = OnceLock::new();
    C.get_or_init(|| {
        let fleet = Fleet::new(3, 2, 4);
        let enrol = fleet.enrolment();
        let base = vec![enrol.clone()];
        // Two admins edit concurrently (same key, and different keys), a third revokes.
        let p1 = fleet.sign_policy_by(
            &base,
            vec![
                Edit::Set(Level::Fleet, "net.mtu".into(), json!(1500)),
                Edit::Set(Level::Region("r0".into()), "net.mtu".into(), json!(9000)),
            ],
            &[0, 1],
        );
        let p2 = fleet.sign_policy_by(
            &base,
            vec![
                Edit::Set(Level::Fleet, "net.mtu".into(), json!(1400)),
                Edit::Set(Level::Site(fleet.node(1)), "log".into(), json!("debug")),
            ],
            &[1, 2],
        );
        let p3 = fleet.sign_policy_by(
            &base,
            vec![Edit::Revoke(fleet.node(3), "retired".into())],
            &[2, 0],
        );
        let p4 = fleet.sign_policy_by(
            &[enrol.clone(), p1.clone(), p2.clone()],
            vec![Edit::Set(Level::Fleet, "dns".into(), json!(["9.9.9.9"]))],
            &[0, 2],
        );
        // One admin key, several edits on one base (each its own actor), and one
        // more on top of two of them: all merge everywhere.
        let same_key: Vec<SignedChange> = ["one.a", "one.b", "one.c"]
            .iter()
            .enumerate()
            .map(|(i, k)| {
                fleet.sign_policy_by(
                    &base,
                    vec![Edit::Set(Level::Fleet, (*k).into(), json!(i))],
                    &[0, 1],
                )
            })
            .collect();
        let on_two = fleet.sign_policy_by(
            &[enrol.clone(), same_key[0].clone(), same_key[1].clone()],
            vec![Edit::Set(Level::Fleet, "one.d".into(), json!("top"))],
            &[0, 1],
        );
        let mut changes = vec![enrol, p1, p2, p3, p4];
        changes.extend(same_key);
        changes.push(on_two);
        // Node 0 rolls its epoch (3 changes per epoch): 1, 1, 1, 2, 2.
        let mut w0 = fleet.writer(0, 3);
        for v in 0..5 {
            changes.push(w0.update(&status("site-0", &format!("1.{v}"))).unwrap());
        }
        let mut w1 = fleet.writer(1, 16);
        changes.push(w1.update(&status("site-1", "1.0")).unwrap());
        changes.push(w1.heartbeat());
        changes.push(w1.heartbeat());
        let mut w2 = fleet.writer(2, 16);
        changes.push(w2.update(&status("site-2", "2.0")).unwrap());
        let mut w3 = fleet.writer(3, 16);
        changes.push(w3.update(&status("site-3", "1.0")).unwrap());
        changes.push(w3.heartbeat());
        let mut stranger = StatusWriter::new(SecretKey::from_seed([99; 32]), 1, 16);
        changes.push(stranger.update(&status("intruder", "0")).unwrap());

        let mut r = fleet.replica();
        r.ingest(changes.clone());
        r.ingest(changes.clone());
        let reference = fingerprint(&r);
        // The reference itself is what we expect.
        assert_eq!(r.policy().revoked.len(), 1);
        for k in ["one.a", "one.b", "one.c", "one.d"] {
            assert!(r.policy().fleet.contains_key(k), "{k} merged");
        }
        assert_eq!(r.policy().conflicts.len(), 1, "{:?}", r.policy().conflicts);
        assert_eq!(r.statuses().count(), 3);
        let (s0, e0) = r.status(&fleet.node(0)).unwrap();
        assert_eq!((s0.version.as_str(), e0), ("1.4", 2));
        assert_eq!(r.status(&fleet.node(1)).unwrap().0.hb, 2);
        let cfg = r.effective_config(&fleet.node(0)).unwrap();
        assert_eq!(cfg["net"]["mtu"], json!(9000));
        assert_eq!(cfg["dns"], json!(["9.9.9.9"]));
        assert_eq!(
            r.effective_config(&fleet.node(1)).unwrap()["log"],
            json!("debug")
        );
        Corpus {
            fleet,
            changes,
            reference,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(56337), ..ProptestConfig::default() })]

    #[test]
    fn any_order_duplication_and_batching_converges(
        order in Just((0..corpus().changes.len()).collect::<Vec<usize>>()).prop_shuffle(),
        dups in proptest::collection::vec(0..corpus().changes.len(), 0..8),
        cuts in proptest::collection::vec(1usize..6, 1..20),
    ) {
        let c = corpus();
        let mut seq: Vec<usize> = order.clone();
        for (i, d) in dups.iter().enumerate() {
            seq.insert((i * 7) % (seq.len() + 1), *d);
        }
        let mut r = c.fleet.replica();
        let mut pos = 0;
        let mut k = 0;
        while pos < seq.len() {
            let n = cuts[k % cuts.len()].min(seq.len() - pos);
            let batch: Vec<SignedChange> = seq[pos..pos + n].iter().map(|i| c.changes[*i].clone()).collect();
            for rep in r.ingest(batch) {
                // Only the unenrolled intruder and the revoked node's writes may be refused.
                if let Outcome::Rejected(why) = &rep.outcome {
                    prop_assert!(!why.is_misbehaviour(), "{why}");
                }
            }
            pos += n;
            k += 1;
        }
        // One anti-entropy round: everything again, in the shuffled order.
        r.ingest(order.iter().map(|i| c.changes[*i].clone()).collect());
        prop_assert_eq!(&fingerprint(&r), &c.reference);
    }
}

#[test]
fn two_replicas_fed_in_opposite_orders_agree() {
    let c = corpus();
    let mut a = c.fleet.replica();
    let mut b = c.fleet.replica();
    for ch in &c.changes {
        a.ingest(vec![ch.clone()]);
    }
    for ch in c.changes.iter().rev() {
        b.ingest(vec![ch.clone()]);
    }
    a.ingest(c.changes.clone());
    b.ingest(c.changes.iter().rev().cloned().collect());
    assert_eq!(fingerprint(&a), fingerprint(&b));
    assert_eq!(fingerprint(&a), c.reference);
}

/// A clone of a replica shares its documents (the simulator starts a fleet
/// from clones of one replica) and copies what it changes: a change applied
/// to one, status or policy, is not seen by the other, and both stay what
/// they would be had they been built apart.
#[test]
fn a_cloned_replica_copies_what_it_changes() {
    let fleet = Fleet::new(1, 1, 3);
    let enrol = fleet.enrolment();
    let mut original = fleet.replica();
    let mut w0 = fleet.writer(0, 16);
    let first = w0.update(&status("n0", "v1")).expect("a first change");
    for r in original.ingest(vec![enrol.clone(), first.clone()]) {
        assert_eq!(r.outcome, Outcome::Applied);
    }
    let before = fingerprint(&original);
    let mut clone = original.clone();
    assert_eq!(fingerprint(&clone), before);

    // A status change and a policy change, to the clone only.
    let second = w0.update(&status("n0", "v2")).expect("a second change");
    let policy = fleet.sign_policy(
        std::slice::from_ref(&enrol),
        vec![Edit::Set(Level::Fleet, "net.mtu".into(), json!(1400))],
    );
    for r in clone.ingest(vec![second.clone(), policy.clone()]) {
        assert_eq!(r.outcome, Outcome::Applied);
    }
    assert_eq!(fingerprint(&original), before, "the original changed");
    assert_eq!(original.status(&fleet.node(0)).unwrap().0.version, "v1");
    assert_eq!(clone.status(&fleet.node(0)).unwrap().0.version, "v2");
    let mtu = |r: &dcloud_crdt::Replica| {
        r.effective_config(&fleet.node(0)).unwrap()["net"]["mtu"].clone()
    };
    assert_eq!(mtu(&clone), json!(1400));
    assert_eq!(mtu(&original), serde_json::Value::Null);

    // The clone is what a replica built apart holds.
    let mut apart = fleet.replica();
    apart.ingest(vec![enrol, first, second, policy]);
    assert_eq!(fingerprint(&clone), fingerprint(&apart));
    assert_ne!(fingerprint(&clone), before);
}
