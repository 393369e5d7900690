//! A small fleet for tests: authorities, a trust root, nodes and their enrolment.
#![allow(dead_code)]

use dcloud_crdt::testkit::{self, seeded_key, trust_root};
use dcloud_crdt::{
    Edit, Level, Limits, NodeId, PublicKey, Replica, SecretKey, SignedChange, SignedTrustRoot,
    StatusWriter, TrustChain,
};

pub(crate) struct Fleet {
    pub(crate) authorities: Vec<SecretKey>,
    pub(crate) threshold: u32,
    pub(crate) root: SignedTrustRoot,
    pub(crate) nodes: Vec<SecretKey>,
}

impl Fleet {
    /// `n_auth` authorities with `threshold`, and `n_nodes` nodes (not yet enrolled).
    pub(crate) fn new(n_auth: u8, threshold: u32, n_nodes: u8) -> Self {
        let authorities: Vec<SecretKey> = (0..n_auth).map(|i| seeded_key(100 + i)).collect();
        let keys: Vec<PublicKey> = authorities.iter().map(|k| k.public()).collect();
        let signers: Vec<&SecretKey> = authorities.iter().collect();
        let root = SignedTrustRoot::sign(trust_root(1, &keys, threshold), &signers);
        let nodes = (0..n_nodes).map(|i| seeded_key(i + 1)).collect();
        Fleet {
            authorities,
            threshold,
            root,
            nodes,
        }
    }

    pub(crate) fn chain(&self) -> TrustChain {
        TrustChain::from_roots(vec![self.root.clone()]).expect("valid root")
    }

    pub(crate) fn replica(&self) -> Replica {
        Replica::new(self.chain(), Limits::default())
    }

    pub(crate) fn node(&self, i: usize) -> NodeId {
        self.nodes[i].public()
    }

    /// Sign a policy change with the first `threshold` authorities.
    pub(crate) fn sign_policy(&self, base: &[SignedChange], edits: Vec<Edit>) -> SignedChange {
        self.sign_policy_by(
            base,
            edits,
            &(0..self.threshold as usize).collect::<Vec<_>>(),
        )
    }

    /// Sign a policy change authored by `signers[0]` and cosigned by the rest.
    pub(crate) fn sign_policy_by(
        &self,
        base: &[SignedChange],
        edits: Vec<Edit>,
        signers: &[usize],
    ) -> SignedChange {
        let signers: Vec<&SecretKey> = signers.iter().map(|&i| &self.authorities[i]).collect();
        testkit::sign_policy(base, edits, 1, &signers)
    }

    /// One change enrolling every node, regions r0/r1 alternating.
    pub(crate) fn enrolment(&self) -> SignedChange {
        let edits = (0..self.nodes.len())
            .map(|i| testkit::enrol(self.node(i), format!("site-{i}"), format!("r{}", i % 2)))
            .collect();
        self.sign_policy(&[], edits)
    }

    /// A status writer for node `i`.
    pub(crate) fn writer(&self, i: usize, epoch_changes_max: usize) -> StatusWriter {
        StatusWriter::new(self.nodes[i].clone(), 1, epoch_changes_max)
    }

    pub(crate) fn set(
        &self,
        base: &[SignedChange],
        path: &str,
        v: serde_json::Value,
    ) -> SignedChange {
        self.sign_policy(base, vec![Edit::Set(Level::Fleet, path.into(), v)])
    }
}

/// Everything observable about a replica, for "nothing changed" and "identical" checks.
pub(crate) fn fingerprint(r: &Replica) -> String {
    let mut s = format!("{:?}\n{:?}\n", r.docs(), r.policy());
    for (n, st, e) in r.statuses() {
        s.push_str(&format!("{n}:{e}:{st:?}\n"));
        s.push_str(&format!("{:?}\n", r.effective_config(n)));
    }
    s.push_str(&format!("{:?}", r.stats()));
    s
}
