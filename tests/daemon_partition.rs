//! Partitions across network namespaces: five nodes, each in its own namespace
//! on a test-made bridge (addresses from 198.18.0.0/15, set aside for network
//! tests), split 3/2 by moving two links to a second bridge; each side
//! publishes; after healing both sides converge on both changes.
//!
//! Needs root (network namespaces) and iproute2; skipped with a printed reason
//! otherwise. Everything the test creates is deleted when it ends.

#[path = "netns_support.rs"]
mod netns;
#[path = "daemon_support.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use netns::{Net, NetSpec};
use serde_json::Value;
use support::{DCLOUD, Fleet};

const N: usize = 5;

/// Run a `dcloud` query inside node `i`'s namespace.
fn query(ns: &str, args: &[&str]) -> Option<Value> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, DCLOUD])
        .args(args)
        .args(["--json", "--api", "127.0.0.1:7780"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn publish(f: &Fleet, ns: &str, bundle: Vec<u8>) -> Value {
    let file = f.dir.path().join(format!("bundle-{}.bin", rand_suffix()));
    std::fs::write(&file, bundle).unwrap();
    let v = query(ns, &["publish", file.to_str().unwrap()]).expect("publish answers");
    assert_eq!(v["accepted"], true, "{v}");
    v
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn has(policy: &Value, key: &str) -> bool {
    policy["fleet"].get(key).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_three_two_publish_both_sides_heal_converge() {
    if let Some(why) = netns::missing(false) {
        println!("SKIPPED: {why}");
        return;
    }
    let net = match Net::new(NetSpec {
        prefix: format!("dc{}", std::process::id() % 100_000),
        subnet: "198.18.0",
        nodes: N,
        bridges: &["br0", "br1"],
        host_addr: None,
    }) {
        Ok(n) => n,
        Err(e) => {
            println!("SKIPPED: cannot create network namespaces here: {e}");
            return;
        }
    };
    let mut f = netns::fleet(&net, |_| "127.0.0.1:7780".into(), &[0, 3]);
    f.start_all();
    let ns = net.nodes.clone();
    f.wait(
        "every node answers in its namespace",
        Duration::from_secs(30),
        async |_| ns.iter().all(|n| query(n, &["status"]).is_some()),
    )
    .await;

    let all: Vec<usize> = (0..N).collect();
    let mut edits: Vec<_> = all.iter().map(|i| f.enrol(*i)).collect();
    edits.push(Fleet::set_fleet("log.level", "info".into()));
    let c = f.sign(edits);
    let h = Fleet::head(&c);
    publish(&f, &ns[0], f.bundle(vec![c]));
    f.wait(
        "enrolment reaches every namespace",
        Duration::from_secs(60),
        async |_| {
            ns.iter().all(|n| {
                query(n, &["status"]).is_some_and(|v| v["policy_heads"] == serde_json::json!([h]))
            })
        },
    )
    .await;

    // Split {0,1,2} | {3,4} and publish on each side.
    net.attach(3, "br1");
    net.attach(4, "br1");
    let a = f.sign(vec![Fleet::set_fleet("side.a", true.into())]);
    // The SAME admin key edits on side B, from the same base (without `a`):
    // each edit is its own automerge actor, so the two never fork.
    let a_signed = f.policy.pop().unwrap();
    let b = f.sign(vec![Fleet::set_fleet("side.b", true.into())]);
    f.policy.push(a_signed);
    publish(&f, &ns[0], f.bundle(vec![a]));
    publish(&f, &ns[3], f.bundle(vec![b]));
    f.wait(
        "each side holds its own change only",
        Duration::from_secs(60),
        async |_| {
            (0..N).all(|i| {
                query(&ns[i], &["policy"]).is_some_and(|p| {
                    if i < 3 {
                        has(&p, "side.a") && !has(&p, "side.b")
                    } else {
                        has(&p, "side.b") && !has(&p, "side.a")
                    }
                })
            })
        },
    )
    .await;

    // Heal: both sides converge on both changes (two concurrent heads).
    net.attach(3, "br0");
    net.attach(4, "br0");
    f.wait(
        "both sides converge after healing",
        Duration::from_secs(90),
        async |_| {
            let heads: Vec<Value> = (0..N)
                .filter_map(|i| query(&ns[i], &["policy"]))
                .filter(|p| has(p, "side.a") && has(p, "side.b") && p["changes"] == 3)
                .map(|p| p["heads"].clone())
                .collect();
            heads.len() == N && heads.iter().all(|h| *h == heads[0])
        },
    )
    .await;

    // A later change on top of both applies everywhere (the rollout completes).
    let c = f.sign(vec![Fleet::set_fleet("after.heal", true.into())]);
    let h = Fleet::head(&c);
    publish(&f, &ns[4], f.bundle(vec![c]));
    f.wait(
        "a change built on both edits is applied on every site",
        Duration::from_secs(60),
        async |_| {
            ns.iter().all(|n| {
                query(n, &["status"]).is_some_and(|v| v["policy_heads"] == serde_json::json!([h]))
            })
        },
    )
    .await;
    drop(f);
    drop(net);
}
