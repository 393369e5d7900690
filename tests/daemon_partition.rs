//! Partitions across network namespaces: five nodes, each in its own namespace
//! on a test-made bridge (addresses from 198.18.0.0/15, set aside for network
//! tests), split 3/2 by moving two links to a second bridge; each side
//! publishes; after healing both sides converge on both changes.
//!
//! Needs root (network namespaces) and iproute2; skipped with a printed reason
//! otherwise. Everything the test creates is deleted when it ends.

#[path = "daemon_support.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{DCLOUD, Fleet};

const N: usize = 5;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The namespaces, bridges and links of the test; deleted on drop.
struct Net {
    prefix: String,
    hub: String,
    nodes: Vec<String>,
}

impl Net {
    fn new() -> Result<Net, String> {
        let prefix = format!("dc{}", std::process::id() % 100_000);
        let mut net = Net {
            hub: format!("{prefix}h"),
            nodes: Vec::new(),
            prefix,
        };
        ip(&["netns", "add", &net.hub])?;
        for br in ["br0", "br1"] {
            ip(&["-n", &net.hub, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", &net.hub, "link", "set", br, "up"])?;
        }
        for i in 0..N {
            let ns = format!("{}n{i}", net.prefix);
            ip(&["netns", "add", &ns])?;
            net.nodes.push(ns.clone());
            let (a, b) = (net.hub_link(i), format!("{}b{i}", net.prefix));
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
            ip(&["link", "set", &a, "netns", &net.hub])?;
            ip(&["link", "set", &b, "netns", &ns])?;
            ip(&["-n", &net.hub, "link", "set", &a, "master", "br0"])?;
            ip(&["-n", &net.hub, "link", "set", &a, "up"])?;
            let addr = format!("{}/24", Net::addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &b])?;
            ip(&["-n", &ns, "link", "set", &b, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn addr(i: usize) -> String {
        format!("198.18.0.{}", i + 1)
    }

    fn hub_link(&self, i: usize) -> String {
        format!("{}a{i}", self.prefix)
    }

    /// Put node `i`'s link on bridge `br`.
    fn attach(&self, i: usize, br: &str) {
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &self.hub_link(i),
            "master",
            br,
        ])
        .unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

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
    if !is_root() {
        println!("SKIPPED: network namespaces need root");
        return;
    }
    if ip(&["-V"]).is_err() {
        println!("SKIPPED: iproute2 (`ip`) is not installed");
        return;
    }
    let net = match Net::new() {
        Ok(n) => n,
        Err(e) => {
            println!("SKIPPED: cannot create network namespaces here: {e}");
            return;
        }
    };
    let mut f = Fleet::new(0, 1);
    for i in 0..N {
        let k = f.add_node(&format!("site-{i}"), 1);
        let n = &mut f.nodes[k];
        n.ip = Net::addr(i);
        n.p2p_port = 7700;
        n.api = "127.0.0.1:7780".into();
        n.netns = Some(net.nodes[i].clone());
    }
    let boot = [f.nodes[0].addr(), f.nodes[3].addr()];
    for (i, n) in f.nodes.iter_mut().enumerate() {
        n.bootstrap = boot
            .iter()
            .filter(|a| **a != format!("/ip4/{}/tcp/7700", Net::addr(i)))
            .cloned()
            .collect();
    }
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
