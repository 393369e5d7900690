//! A fleet of realistic signed status changes, shared by the benchmarks.
#![allow(dead_code)]

use std::collections::BTreeMap;

use dcloud_crdt::status::{AppliedPolicy, HealthCheck};
use dcloud_crdt::testkit;
use dcloud_crdt::{
    Edit, Limits, Member, NodeStatus, Replica, SecretKey, SignedChange, SignedTrustRoot,
    StatusWriter, TrustChain,
};

pub(crate) struct Bench {
    pub(crate) chain: TrustChain,
    pub(crate) policy: Vec<SignedChange>,
    pub(crate) writers: Vec<StatusWriter>,
}

/// A status as a real site reports it.
pub(crate) fn realistic_status(i: usize, hb: u64) -> NodeStatus {
    let mut health = BTreeMap::new();
    for (name, ok) in [
        ("disk", true),
        ("apply", true),
        ("peers", !i.is_multiple_of(17)),
    ] {
        health.insert(
            name.to_string(),
            HealthCheck {
                ok,
                detail: if ok {
                    "ok".into()
                } else {
                    "2 of 8 peers reachable".into()
                },
            },
        );
    }
    NodeStatus {
        name: format!("site-{i:05}"),
        region: format!("region-{}", i % 12),
        addrs: vec![
            format!("/ip4/10.{}.{}.7/tcp/7700", i / 250 % 250, i % 250),
            format!("/ip4/10.{}.{}.7/udp/7700/quic-v1", i / 250 % 250, i % 250),
        ],
        version: "dcloud 0.1.0".into(),
        health,
        applied: AppliedPolicy {
            heads: vec!["4b1c7e0a9d2f3b8c6e5a1d0f9b8c7a6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a".into()],
            error: None,
            exit_code: Some(0),
            ..Default::default()
        },
        hb,
        healthy: None,
    }
}

impl Bench {
    /// An authority and `n` enrolled nodes (enrolled in changes of 1,000).
    pub(crate) fn new(n: usize) -> Bench {
        let auth = testkit::seeded_key(200);
        let root = SignedTrustRoot::sign(testkit::trust_root(1, &[auth.public()], 1), &[&auth]);
        let chain = TrustChain::from_roots(vec![root]).unwrap();
        let keys: Vec<SecretKey> = (0..n)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                SecretKey::from_seed(seed)
            })
            .collect();
        let mut policy: Vec<SignedChange> = Vec::new();
        for (c, ks) in keys.chunks(1000).enumerate() {
            let edits = ks.iter().enumerate().map(|(j, k)| {
                let i = c * 1000 + j;
                let mut labels = BTreeMap::new();
                labels.insert("tier".to_string(), (i % 3).to_string());
                let member = testkit::member(format!("site-{i:05}"), format!("region-{}", i % 12));
                Edit::Enrol(k.public(), Member { labels, ..member })
            });
            policy.push(testkit::sign_policy(&policy, edits, 1, &[&auth]));
        }
        let writers = keys
            .into_iter()
            .map(|k| StatusWriter::new(k, 1, 16))
            .collect();
        Bench {
            chain,
            policy,
            writers,
        }
    }

    /// A replica holding the policy.
    pub(crate) fn replica(&self) -> Replica {
        let mut r = Replica::new(self.chain.clone(), Limits::default());
        r.ingest(self.policy.clone());
        r
    }

    /// One full status change per node.
    pub(crate) fn genesis(&mut self) -> Vec<SignedChange> {
        self.writers
            .iter_mut()
            .enumerate()
            .map(|(i, w)| w.update(&realistic_status(i, 0)).unwrap())
            .collect()
    }

    /// One heartbeat change per node.
    pub(crate) fn heartbeats(&mut self) -> Vec<SignedChange> {
        self.writers.iter_mut().map(|w| w.heartbeat()).collect()
    }
}
