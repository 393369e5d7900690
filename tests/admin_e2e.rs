//! `dcloud-admin` against real daemons: sign, cosign to a threshold of two,
//! verify, publish and wait for the rollout; every bad input refused with its
//! reason and no change on any node; the API's rejected POST cases.

#[allow(dead_code)]
#[path = "../examples/local_fleet.rs"]
mod local_fleet;

use std::path::{Path, PathBuf};
use std::process::Command;

use dcloud_crdt::testkit;
use dcloud_crdt::{Bundle, Edit, SecretKey};
use local_fleet::{Bins, Site, free_ports, get_json, wait_until};
use serde_json::Value;

#[path = "admin_support.rs"]
mod support;

use support::{admin, ok, refused};

/// A fleet of real daemons sharing one trust chain file.
struct Fleet {
    rt: tokio::runtime::Runtime,
    sites: Vec<Site>,
}

impl Fleet {
    fn start(dir: &Path, n: usize, chain: &Path) -> Fleet {
        Fleet::start_with(dir, n, chain, &[])
    }

    /// `apply_commands[i]`: the apply command of site i+1 (None: render only).
    fn start_with(dir: &Path, n: usize, chain: &Path, apply_commands: &[Option<String>]) -> Fleet {
        let bins = Bins {
            dcloud: PathBuf::from(env!("CARGO_BIN_EXE_dcloud")),
            admin: PathBuf::from(env!("CARGO_BIN_EXE_dcloud-admin")),
        };
        let ports = free_ports(2 * n).unwrap();
        let mut sites = Vec::new();
        for i in 0..n {
            let site_dir = dir.join(format!("site-{}", i + 1));
            let out = Command::new(&bins.dcloud)
                .args(["init", "--data-dir"])
                .arg(&site_dir)
                .output()
                .unwrap();
            assert!(out.status.success());
            sites.push(Site {
                name: format!("site-{}", i + 1),
                region: "eu",
                dir: site_dir,
                id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
                p2p_port: ports[2 * i],
                api_port: ports[2 * i + 1],
                child: None,
                apply_command: apply_commands.get(i).cloned().flatten(),
            });
        }
        let addrs: Vec<String> = sites.iter().map(Site::listen).collect();
        for (i, s) in sites.iter_mut().enumerate() {
            let others: Vec<String> = addrs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.clone())
                .collect();
            s.start(&bins, chain, &others).unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for s in &sites {
            let url = format!("{}/v1/node", s.url());
            wait_until("the API", || Ok(get_json(&rt, &url).is_some()))
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", s.name, s.log_tail()));
        }
        Fleet { rt, sites }
    }

    fn url(&self) -> String {
        self.sites[0].url()
    }

    /// Every node's policy heads.
    fn heads(&self) -> Vec<Value> {
        self.sites
            .iter()
            .map(|s| {
                get_json(&self.rt, &format!("{}/v1/policy", s.url()))
                    .expect("policy answers")["heads"]
                    .clone()
            })
            .collect()
    }

    /// Wait until every node holds the same, given policy heads.
    fn converged_on(&self, heads: &Value) {
        wait_until("every node to hold the policy", || {
            Ok(self.heads().iter().all(|h| h == heads))
        })
        .unwrap();
    }

    fn post(&self, body: Vec<u8>) -> (u16, Value) {
        let url = format!("{}/v1/bundles", self.url());
        self.rt.block_on(async {
            let resp = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }
}

/// Authority keys a, b, c; trust root v1 needs two of them.
fn authority(d: &Path) {
    for k in ["a", "b", "c", "d"] {
        ok(d, &["keygen", "--out", &format!("{k}.key")]);
    }
    ok(
        d,
        &[
            "root",
            "init",
            "--key",
            "a.key",
            "--key",
            "b.key",
            "--authority",
            "c.key.pub",
            "--threshold",
            "2",
            "--out",
            "chain",
        ],
    );
}

#[test]
fn threshold_two_edits_are_cosigned_verified_published_and_rolled_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    authority(d);
    let fleet = Fleet::start(d, 3, &d.join("chain"));
    let url = fleet.url();
    let empty = fleet.heads()[0].clone();

    // Enrol the three sites. The first is signed by a only: publish refuses
    // it before sending anything, and no node changes.
    ok(d, &["snapshot", "--from", &url, "--out", "base"]);
    let mut bases = vec!["--base".to_string(), "base".to_string()];
    let mut files = Vec::new();
    for (i, s) in fleet.sites.iter().enumerate() {
        let file = format!("enrol-{}", s.name);
        let mut args: Vec<String> = ["enrol", &s.id, "--name", &s.name, "--region", "eu"]
            .map(String::from)
            .to_vec();
        args.extend(bases.clone());
        args.extend(["--key", "a.key", "--out", &file].map(String::from));
        ok(d, &args.iter().map(String::as_str).collect::<Vec<_>>());
        if i == 0 {
            refused(
                d,
                &["publish", &file, "--to", &url, "--wait"],
                "signed by 1 distinct keys of trust root v1, needs 2",
            );
            assert!(fleet.heads().iter().all(|h| *h == empty), "a node changed");
        }
        // The second admin checks what they sign, then cosigns.
        let o = admin(d, &["verify", &file, "--from", &url, "--base", "base"]);
        assert!(
            o.stdout.contains("threshold: NOT met (1 of 2"),
            "{}",
            o.text()
        );
        ok(d, &["cosign", &file, "--key", "c.key"]);
        bases.extend(["--base".to_string(), file.clone()]);
        files.push(file);
    }
    let mut publish: Vec<String> = vec!["publish".into()];
    publish.extend(files.clone());
    publish.extend(["--to", &url, "--wait", "--timeout", "60s"].map(String::from));
    let publish: Vec<&str> = publish.iter().map(String::as_str).collect();
    let text = ok(
        d,
        &[
            "verify", &files[2], "--base", "base", "--base", &files[0], "--base", &files[1],
        ],
    );
    assert!(text.contains("OK: the bundle verifies"), "{text}");
    let text = ok(d, &publish);
    assert!(
        text.contains("rollout complete: 3/3 sites applied"),
        "{text}"
    );

    // A config change, fetched, signed, cosigned, verified, published.
    ok(d, &["snapshot", "--from", &url, "--out", "old-base"]);
    ok(
        d,
        &[
            "set",
            "fleet",
            "log.level",
            "\"debug\"",
            "--from",
            &url,
            "--key",
            "b.key",
            "--out",
            "log",
        ],
    );
    ok(d, &["cosign", "log", "--key", "a.key"]);
    let text = ok(d, &["verify", "log", "--from", &url]);
    assert!(text.contains("sites affected: 3"), "{text}");
    assert!(
        text.contains(r#"after:  {"log":{"level":"debug"}}"#),
        "{text}"
    );
    let text = ok(
        d,
        &["publish", "log", "--to", &url, "--wait", "--timeout", "60s"],
    );
    assert!(text.contains("rollout complete: 3/3"), "{text}");
    for s in &fleet.sites {
        let c = get_json(&fleet.rt, &format!("{}/v1/config", s.url())).unwrap();
        assert_eq!(c["config"]["log"]["level"], "debug", "{}: {c}", s.name);
    }
    let current = fleet.heads()[0].clone();
    fleet.converged_on(&current);

    // Bad inputs against a running fleet: each refused, no node changes.
    ok(
        d,
        &[
            "set", "fleet", "x", "1", "--base", "old-base", "--key", "a.key", "--key", "b.key",
            "--out", "stale",
        ],
    );
    refused(
        d,
        &["publish", "stale", "--to", &url],
        "older than the node's policy",
    );
    refused(
        d,
        &[
            "set", "fleet", "x", "yes", "--from", &url, "--key", "a.key", "--out", "nj",
        ],
        "is not JSON",
    );
    refused(
        d,
        &[
            "set", "fleet", "x", "1", "--from", &url, "--key", "d.key", "--out", "wk",
        ],
        "not an authority key",
    );
    refused(
        d,
        &[
            "set", "fleet", "x", "1", "--from", &url, "--key", "nope.key", "--out", "nk",
        ],
        "nope.key",
    );
    let mut forged = Bundle::decode(&std::fs::read(d.join("log")).unwrap(), 1 << 20).unwrap();
    ok(
        d,
        &[
            "set", "fleet", "y", "2", "--from", &url, "--key", "a.key", "--key", "b.key", "--out",
            "y",
        ],
    );
    forged = {
        let mut y = Bundle::decode(&std::fs::read(d.join("y")).unwrap(), 1 << 20).unwrap();
        y.changes[0].sigs[1].sig.0[33] ^= 1;
        let _ = forged;
        y
    };
    std::fs::write(d.join("forged"), forged.encode()).unwrap();
    refused(d, &["publish", "forged", "--to", &url], "does not verify");
    refused(
        d,
        &["publish", "garbage-that-does-not-exist", "--to", &url],
        "garbage-that-does-not-exist",
    );
    assert!(
        fleet.heads().iter().all(|h| *h == current),
        "a node changed"
    );
    assert!(!d.join("nj").exists() && !d.join("wk").exists() && !d.join("nk").exists());

    // The stale bundle can still be merged deliberately, as a concurrent edit.
    let text = ok(
        d,
        &[
            "publish",
            "stale",
            "--to",
            &url,
            "--allow-stale-base",
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert!(text.contains("rollout complete: 3/3"), "{text}");

    // Revoke site-3 by name: the rollout then counts two sites.
    ok(
        d,
        &[
            "revoke",
            "site-3",
            "--reason",
            "decommissioned",
            "--from",
            &url,
            "--key",
            "a.key",
            "--key",
            "c.key",
            "--out",
            "rev",
        ],
    );
    let text = ok(
        d,
        &["publish", "rev", "--to", &url, "--wait", "--timeout", "60s"],
    );
    assert!(text.contains("rollout complete: 2/2"), "{text}");

    // Signed by a and c under v1, before the rotation below drops a.
    ok(
        d,
        &[
            "set", "fleet", "w", "4", "--from", &url, "--key", "a.key", "--key", "c.key", "--out",
            "old-keys",
        ],
    );
    // Rotate: v2 = {b, c, d}, threshold 2, signed by b and c (old and new).
    ok(
        d,
        &[
            "root",
            "rotate",
            "--chain",
            "chain",
            "--new-key",
            "b.key.pub",
            "--new-key",
            "c.key.pub",
            "--new-key",
            "d.key.pub",
            "--threshold",
            "2",
            "--key",
            "b.key",
            "--key",
            "c.key",
            "--from",
            &url,
            "--out",
            "chain2",
        ],
    );
    refused(
        d,
        &[
            "set", "fleet", "z", "3", "--from", &url, "--chain", "chain2", "--key", "a.key",
            "--out", "z",
        ],
        "not an authority key of trust root v2",
    );
    ok(
        d,
        &[
            "set", "fleet", "z", "3", "--from", &url, "--chain", "chain2", "--key", "d.key",
            "--key", "b.key", "--out", "z",
        ],
    );
    let text = ok(d, &["verify", "z", "--from", &url]);
    assert!(text.contains("rotation: trust root v2"), "{text}");
    let text = ok(
        d,
        &["publish", "z", "--to", &url, "--wait", "--timeout", "60s"],
    );
    assert!(text.contains("rollout complete: 2/2"), "{text}");
    // After the rotation, a change signed under the superseded root that the
    // rotation does not grandfather (it was never published) is refused.
    refused(
        d,
        &["publish", "old-keys", "--to", &url, "--allow-stale-base"],
        "superseded by the rotation to v2",
    );
    let node = get_json(&fleet.rt, &format!("{}/v1/node", fleet.sites[1].url())).unwrap();
    assert_eq!(node["trust_root_version"], 2, "{node}");
}

/// Enrol sites 0 and 1 (eu) under `names`, signed by a and b: bundles `e1`
/// and `e2` (the second on top of the first), not yet published.
fn enrol_both(d: &Path, fleet: &Fleet, names: [&str; 2]) {
    let url = fleet.url();
    for (i, (name, out)) in names.iter().zip(["e1", "e2"]).enumerate() {
        let mut args = vec![
            "enrol",
            &fleet.sites[i].id,
            "--name",
            name,
            "--region",
            "eu",
            "--from",
            &url,
        ];
        if i == 1 {
            args.extend(["--base", "e1"]);
        }
        args.extend(["--key", "a.key", "--key", "b.key", "--out", out]);
        ok(d, &args);
    }
}

#[test]
fn rejected_posts_are_answered_with_the_reason_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    authority(d);
    let fleet = Fleet::start(d, 2, &d.join("chain"));
    let url = fleet.url();
    // Enrol both sites (a and b sign).
    enrol_both(d, &fleet, ["one", "two"]);
    let text = ok(
        d,
        &[
            "publish",
            "e1",
            "e2",
            "--to",
            &url,
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert!(text.contains("rollout complete: 2/2"), "{text}");
    let heads = fleet.heads()[0].clone();
    fleet.converged_on(&heads);

    let snapshot = Bundle::decode(&std::fs::read(d.join("e2")).unwrap(), 1 << 20).unwrap();
    let roots = snapshot.roots.clone();
    let base: Vec<_> = Bundle::decode(&std::fs::read(d.join("e1")).unwrap(), 1 << 20)
        .unwrap()
        .changes
        .into_iter()
        .chain(snapshot.changes.clone())
        .collect();
    let read = |k: &str| SecretKey::read_file(&d.join(k)).unwrap();
    let change = |signers: &[&SecretKey]| {
        let edit = Edit::Set(dcloud_crdt::Level::Fleet, "x".into(), serde_json::json!(1));
        testkit::sign_policy(&base, [edit], 1, signers)
    };
    let (a, b, dkey) = (read("a.key"), read("b.key"), read("d.key"));

    // Not a bundle.
    let (status, body) = fleet.post(b"hello".to_vec());
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("does not decode"),
        "{body}"
    );
    // One signature of two.
    let one = Bundle {
        roots: roots.clone(),
        changes: vec![change(&[&a])],
    };
    let (status, body) = fleet.post(one.encode());
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("needs 2"),
        "{body}"
    );
    // The same key twice counts once.
    let mut twice = change(&[&a]);
    twice.sigs.push(twice.sigs[0]);
    let (status, body) = fleet.post(
        Bundle {
            roots: roots.clone(),
            changes: vec![twice],
        }
        .encode(),
    );
    assert_eq!(status, 422, "{body}");
    // A key outside the trust root.
    let (status, body) = fleet.post(
        Bundle {
            roots: roots.clone(),
            changes: vec![change(&[&dkey, &a])],
        }
        .encode(),
    );
    assert_eq!(status, 422, "{body}");
    // A forged signature.
    let mut forged = change(&[&a, &b]);
    forged.sigs[1].sig.0[10] ^= 1;
    let (status, body) = fleet.post(
        Bundle {
            roots: roots.clone(),
            changes: vec![forged],
        }
        .encode(),
    );
    assert_eq!(status, 422, "{body}");
    // Named: "signature by <key> does not verify" (or has a weak R).
    assert!(
        body["error"].as_str().unwrap().contains("signature by"),
        "{body}"
    );
    // Tampered change bytes under valid signatures: no longer a well-formed
    // change (its checksum fails), so the request itself is bad: 400, named.
    let mut tampered = change(&[&a, &b]);
    let last = tampered.change.len() - 1;
    tampered.change[last] ^= 1;
    let (status, body) = fleet.post(
        Bundle {
            roots: roots.clone(),
            changes: vec![tampered],
        }
        .encode(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("malformed change"),
        "{body}"
    );
    // A trust root v2 signed only by keys outside v1.
    let rogue =
        dcloud_crdt::SignedTrustRoot::sign(testkit::trust_root(2, &[dkey.public()], 1), &[&dkey]);
    let mut rogue_roots = roots.clone();
    rogue_roots.push(rogue);
    let (status, body) = fleet.post(
        Bundle {
            roots: rogue_roots,
            changes: vec![],
        }
        .encode(),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["root_errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{body}"
    );

    // Nothing changed anywhere; the nodes still run and agree.
    assert!(fleet.heads().iter().all(|h| *h == heads), "a node changed");
    for s in &fleet.sites {
        let node = get_json(&fleet.rt, &format!("{}/v1/node", s.url())).unwrap();
        assert_eq!(node["trust_root_version"], 1, "{node}");
    }
    // And a well-formed bundle still goes through.
    let (status, body) = fleet.post(
        Bundle {
            roots,
            changes: vec![change(&[&a, &b])],
        }
        .encode(),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_site_failing_to_apply_is_named_and_publish_wait_fails() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    authority(d);
    let fleet = Fleet::start_with(d, 2, &d.join("chain"), &[None, Some("exit 3".to_string())]);
    let url = fleet.url();
    enrol_both(d, &fleet, ["good", "broken"]);
    let o = admin(
        d,
        &[
            "publish",
            "e1",
            "e2",
            "--to",
            &url,
            "--wait",
            "--timeout",
            "5s",
        ],
    );
    assert!(!o.ok, "{}", o.text());
    assert!(
        o.stderr.contains("rollout incomplete") && o.stderr.contains("1 of 2 sites applied"),
        "{}",
        o.text()
    );
    assert!(o.stderr.contains("failed: broken ("), "{}", o.text());
    assert!(o.stdout.contains("failed: broken ("), "{}", o.text());
}

/// Write `sites.toml` enrolling every site of the fleet (region eu).
fn sites_file(d: &Path, fleet: &Fleet) {
    let mut text = String::new();
    for s in &fleet.sites {
        text.push_str(&format!(
            "[[site]]\nid = \"{}\"\nname = \"{}\"\nregion = \"eu\"\n\n",
            s.id, s.name
        ));
    }
    std::fs::write(d.join("sites.toml"), text).unwrap();
}

/// Wait until every node holds trust root `version`.
fn all_hold_root(fleet: &Fleet, version: u64) {
    wait_until(&format!("every node to hold trust root v{version}"), || {
        Ok(fleet.sites.iter().all(|s| {
            get_json(&fleet.rt, &format!("{}/v1/node", s.url()))
                .is_some_and(|n| n["trust_root_version"] == version)
        }))
    })
    .unwrap();
}

/// The rotation exactly as README.md and docs/operator-guide.md give it:
/// `root rotate --from URL` records the policy it keeps, `root bundle` and
/// `publish --wait` publish it (a bundle of roots only has no base to be
/// stale against), enrolments survive, the old key alone is refused naming
/// the rotation, the new key governs, and a conflicting v2 is refused.
#[test]
fn documented_rotation_keeps_the_policy_and_revokes_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["keygen", "--out", "alice.key"]);
    ok(
        d,
        &[
            "root",
            "init",
            "--key",
            "alice.key",
            "--threshold",
            "1",
            "--out",
            "trust.chain",
        ],
    );
    std::fs::copy(d.join("trust.chain"), d.join("v1.chain")).unwrap();
    let fleet = Fleet::start(d, 2, &d.join("trust.chain"));
    let url = fleet.url();
    sites_file(d, &fleet);
    ok(
        d,
        &[
            "enrol",
            "--from-file",
            "sites.toml",
            "--from",
            &url,
            "--key",
            "alice.key",
            "--out",
            "enrol.bundle",
        ],
    );
    let text = ok(
        d,
        &[
            "publish",
            "enrol.bundle",
            "--to",
            &url,
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert!(text.contains("rollout complete: 2/2"), "{text}");
    // Saved before the rotation: the old key signs against it below.
    ok(d, &["snapshot", "--from", &url, "--out", "before.bundle"]);

    // A rotation that does not name the policy it keeps is refused.
    ok(d, &["keygen", "--out", "bob.key"]);
    let o = admin(
        d,
        &[
            "root",
            "rotate",
            "--chain",
            "trust.chain",
            "--new-key",
            "bob.key.pub",
            "--threshold",
            "1",
            "--key",
            "alice.key",
            "--key",
            "bob.key",
            "--out",
            "trust.chain",
        ],
    );
    assert!(!o.ok, "{}", o.text());
    assert!(
        o.stderr
            .contains("a rotation must name the policy it keeps"),
        "{}",
        o.text()
    );
    assert_eq!(
        std::fs::read(d.join("trust.chain")).unwrap(),
        std::fs::read(d.join("v1.chain")).unwrap(),
        "the chain file changed although the rotation was refused"
    );
    let text = ok(
        d,
        &[
            "root",
            "rotate",
            "--chain",
            "trust.chain",
            "--new-key",
            "bob.key.pub",
            "--threshold",
            "1",
            "--key",
            "alice.key",
            "--key",
            "bob.key",
            "--from",
            &url,
            "--out",
            "trust.chain",
        ],
    );
    assert!(text.contains("grandfathered: 1 policy head(s)"), "{text}");
    assert!(text.contains("covering the 1 policy change(s)"), "{text}");
    ok(
        d,
        &[
            "root",
            "bundle",
            "--chain",
            "trust.chain",
            "--out",
            "root.bundle",
        ],
    );
    let text = ok(
        d,
        &[
            "publish",
            "root.bundle",
            "--to",
            &url,
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert!(text.contains("holds trust root v2"), "{text}");
    assert!(text.contains("rollout complete: 2/2"), "{text}");
    all_hold_root(&fleet, 2);
    // The enrolments were kept: both sites are still members everywhere.
    for s in &fleet.sites {
        let p = get_json(&fleet.rt, &format!("{}/v1/policy", s.url())).unwrap();
        assert_eq!(
            p["members"].as_object().unwrap().len(),
            2,
            "{}: {p}",
            s.name
        );
    }
    // Publishing the same rotation again changes nothing and succeeds.
    ok(d, &["publish", "root.bundle", "--to", &url]);

    // The old key alone, under v1 (against the saved snapshot): refused,
    // by the tool and by the node, naming the rotation.
    ok(
        d,
        &[
            "set",
            "fleet",
            "log.level",
            "\"debug\"",
            "--base",
            "before.bundle",
            "--key",
            "alice.key",
            "--out",
            "old.bundle",
        ],
    );
    let o = admin(d, &["publish", "old.bundle", "--to", &url, "--wait"]);
    assert!(!o.ok, "{}", o.text());
    assert!(
        o.stderr.contains("superseded by the rotation to v2"),
        "{}",
        o.text()
    );
    let (status, body) = fleet.post(std::fs::read(d.join("old.bundle")).unwrap());
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("superseded by the rotation to v2"),
        "{body}"
    );
    // Nor can the old key sign against the current policy.
    let o = admin(
        d,
        &[
            "set",
            "fleet",
            "log.level",
            "\"debug\"",
            "--from",
            &url,
            "--key",
            "alice.key",
            "--out",
            "old2.bundle",
        ],
    );
    assert!(!o.ok, "{}", o.text());
    assert!(
        o.stderr.contains("not an authority key of trust root v2"),
        "{}",
        o.text()
    );

    // The new key governs.
    ok(
        d,
        &[
            "set",
            "fleet",
            "log.level",
            "\"info\"",
            "--from",
            &url,
            "--key",
            "bob.key",
            "--out",
            "log.bundle",
        ],
    );
    let text = ok(
        d,
        &[
            "publish",
            "log.bundle",
            "--to",
            &url,
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert!(text.contains("rollout complete: 2/2"), "{text}");
    for s in &fleet.sites {
        let c = get_json(&fleet.rt, &format!("{}/v1/config", s.url())).unwrap();
        assert_eq!(c["config"]["log"]["level"], "info", "{}: {c}", s.name);
    }

    // A second, different v2 (made from the v1 chain): refused with a
    // non-zero exit by the tool, and by the node itself.
    ok(d, &["keygen", "--out", "mallory.key"]);
    ok(
        d,
        &[
            "root",
            "rotate",
            "--chain",
            "v1.chain",
            "--new-key",
            "mallory.key.pub",
            "--threshold",
            "1",
            "--key",
            "alice.key",
            "--key",
            "mallory.key",
            "--base",
            "before.bundle",
            "--out",
            "other.chain",
        ],
    );
    ok(
        d,
        &[
            "root",
            "bundle",
            "--chain",
            "other.chain",
            "--out",
            "other.bundle",
        ],
    );
    let heads = fleet.heads()[0].clone();
    let o = admin(d, &["publish", "other.bundle", "--to", &url, "--wait"]);
    assert!(!o.ok, "{}", o.text());
    assert!(o.stderr.contains("trust root v2 differs"), "{}", o.text());
    let (status, body) = fleet.post(std::fs::read(d.join("other.bundle")).unwrap());
    assert_eq!(status, 422, "{body}");
    assert!(
        body["root_errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("conflicting")),
        "{body}"
    );
    assert!(fleet.heads().iter().all(|h| *h == heads), "a node changed");
    all_hold_root(&fleet, 2);
}

/// One thousand sites in one signed change: the file is checked, signed and
/// published at once, and every site becomes a member.
#[test]
fn a_thousand_sites_are_enrolled_in_one_bundle() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    authority(d);
    let fleet = Fleet::start(d, 1, &d.join("chain"));
    let url = fleet.url();
    let mut text = String::from("# generated\n");
    let mut ids = vec![fleet.sites[0].id.clone()];
    for i in 1..N {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        ids.push(SecretKey::from_seed(seed).public().to_string());
    }
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!(
            "\n[[site]]\nid = \"{id}\"\nname = \"site-{i:04}\"\nregion = \"r{}\"\nlabels = {{ rack = \"{}\" }}\n",
            i % 7,
            i % 40
        ));
    }
    std::fs::write(d.join("sites.toml"), text).unwrap();
    let start = std::time::Instant::now();
    let out = ok(
        d,
        &[
            "enrol",
            "--from-file",
            "sites.toml",
            "--from",
            &url,
            "--key",
            "a.key",
            "--key",
            "b.key",
            "--out",
            "sites.bundle",
        ],
    );
    let signed_ms = start.elapsed().as_millis();
    assert!(
        out.contains(&format!(
            "enrolled {N} site(s) from sites.toml in one change"
        )),
        "{}",
        out.lines().last().unwrap_or_default()
    );
    let bundle = Bundle::decode(&std::fs::read(d.join("sites.bundle")).unwrap(), 64 << 20).unwrap();
    assert_eq!(bundle.changes.len(), 1);
    let size = bundle.encode().len();
    let start = std::time::Instant::now();
    ok(d, &["publish", "sites.bundle", "--to", &url]);
    wait_until("the node to list every site", || {
        Ok(get_json(&fleet.rt, &format!("{url}/v1/policy"))
            .is_some_and(|p| p["members"].as_object().is_some_and(|m| m.len() == N)))
    })
    .unwrap();
    let published_ms = start.elapsed().as_millis();
    let p = get_json(&fleet.rt, &format!("{url}/v1/policy")).unwrap();
    for id in &ids {
        assert!(p["members"].get(id).is_some(), "{id} is not a member");
    }
    println!(
        "batch enrolment: {N} sites signed in one change in {signed_ms} ms (dcloud-admin enrol --from-file, --from a node, two keys), bundle {size} bytes, published and listed by the node in {published_ms} ms"
    );
    // Enrolling the same file again is refused by line: the first site is a member.
    let o = admin(
        d,
        &[
            "enrol",
            "--from-file",
            "sites.toml",
            "--from",
            &url,
            "--key",
            "a.key",
            "--out",
            "again.bundle",
        ],
    );
    assert!(!o.ok, "{}", o.text());
    assert!(
        o.stderr.contains("sites.toml line 4: node") && o.stderr.contains("already enrolled"),
        "{}",
        o.text()
    );
    assert!(!d.join("again.bundle").exists());
}

/// Two edits by one key against one base, published at two different nodes,
/// merge (each edit has its own automerge actor): both reach every node, and
/// a later `publish --wait` completes.
#[test]
fn two_edits_by_one_key_on_one_base_merge_across_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    authority(d);
    let fleet = Fleet::start(d, 3, &d.join("chain"));
    let url = fleet.url();
    sites_file(d, &fleet);
    ok(
        d,
        &[
            "enrol",
            "--from-file",
            "sites.toml",
            "--from",
            &url,
            "--key",
            "a.key",
            "--key",
            "b.key",
            "--out",
            "enrol",
        ],
    );
    let text = ok(
        d,
        &[
            "publish",
            "enrol",
            "--to",
            &url,
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert!(text.contains("rollout complete: 3/3"), "{text}");
    let heads = fleet.heads()[0].clone();
    fleet.converged_on(&heads);
    ok(d, &["snapshot", "--from", &url, "--out", "base"]);
    for (path, value, out) in [("a", "1", "edit-a"), ("b", "2", "edit-b")] {
        ok(
            d,
            &[
                "set", "fleet", path, value, "--base", "base", "--key", "a.key", "--key", "b.key",
                "--out", out,
            ],
        );
    }
    ok(d, &["publish", "edit-a", "--to", &fleet.sites[0].url()]);
    // By now site-2 may already hold edit-a, which edit-b's base lacks: it is
    // merged as the concurrent edit it is.
    ok(
        d,
        &[
            "publish",
            "edit-b",
            "--to",
            &fleet.sites[1].url(),
            "--allow-stale-base",
        ],
    );
    wait_until("both edits on every node", || {
        Ok(fleet.sites.iter().all(|s| {
            get_json(&fleet.rt, &format!("{}/v1/policy", s.url())).is_some_and(|p| {
                p["fleet"]["a"] == 1
                    && p["fleet"]["b"] == 2
                    && p["heads"].as_array().is_some_and(|h| h.len() == 2)
            })
        }))
    })
    .unwrap();
    let both = fleet.heads()[0].clone();
    fleet.converged_on(&both);
    let text = ok(
        d,
        &[
            "set",
            "fleet",
            "c",
            "3",
            "--from",
            &fleet.sites[2].url(),
            "--key",
            "a.key",
            "--key",
            "b.key",
            "--out",
            "edit-c",
        ],
    );
    assert!(text.contains("would apply"), "{text}");
    let text = ok(
        d,
        &[
            "publish",
            "edit-c",
            "--to",
            &fleet.sites[2].url(),
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert!(text.contains("rollout complete: 3/3"), "{text}");
    for s in &fleet.sites {
        let c = get_json(&fleet.rt, &format!("{}/v1/config", s.url())).unwrap();
        assert_eq!(
            (&c["config"]["a"], &c["config"]["b"], &c["config"]["c"]),
            (
                &serde_json::json!(1),
                &serde_json::json!(2),
                &serde_json::json!(3)
            ),
            "{}: {c}",
            s.name
        );
    }
}
