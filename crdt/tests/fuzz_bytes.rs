//! Arbitrary bytes from a peer never panic, and never change a replica.

mod common;

use common::{Fleet, fingerprint};
use dcloud_crdt::keys::{KeySignature, PublicKey, SignatureBytes};
use dcloud_crdt::{Bundle, DocId, Outcome, SignedChange};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(56337), ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = SignedChange::decode(&bytes, 1 << 20);
        let _ = Bundle::decode(&bytes, 1 << 20);
        let _ = dcloud_crdt::root::decode_chain(&bytes);
        let mut framed = vec![1u8];
        framed.extend_from_slice(&bytes);
        let _ = SignedChange::decode(&framed, 1 << 20);
        let mut b = b"DCBUNDLE\x01".to_vec();
        b.extend_from_slice(&bytes);
        let _ = Bundle::decode(&b, 1 << 20);
    }

    #[test]
    fn arbitrary_changes_are_rejected_without_effect(
        change in proptest::collection::vec(any::<u8>(), 0..512),
        key in any::<[u8; 32]>(),
        sig in proptest::collection::vec(any::<u8>(), 64),
        policy in any::<bool>(),
        epoch in any::<u32>(),
    ) {
        let fleet = Fleet::new(1, 1, 1);
        let mut r = fleet.replica();
        r.ingest(vec![fleet.enrolment()]);
        let before = fingerprint(&r);
        let doc = if policy { DocId::Policy } else { DocId::Status { node: PublicKey(key), epoch } };
        let sc = SignedChange {
            doc,
            root_version: 1,
            change,
            sigs: vec![KeySignature { key: PublicKey(key), sig: SignatureBytes(sig.try_into().unwrap()) }],
        };
        let rep = r.ingest(vec![sc]);
        prop_assert!(matches!(rep[0].outcome, Outcome::Rejected(_)), "{:?}", rep[0].outcome);
        prop_assert_eq!(before, fingerprint(&r));
    }
}
