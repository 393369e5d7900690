//! Rotation on real daemons: a rotated-out key no longer governs, the root
//! never goes back (store moved aside, old --trust-root file), and a
//! conflicting copy of a held root is refused with a reason.

#[path = "daemon_support.rs"]
mod support;

use std::time::Duration;

use dcloud_crdt::root::encode_chain;
use dcloud_crdt::testkit::{self, trust_root};
use dcloud_crdt::{Bundle, SecretKey, SignedTrustRoot, TrustRoot};
use support::Fleet;

const ALL: [usize; 2] = [0, 1];

async fn root_version(f: &Fleet, i: usize) -> Option<u64> {
    f.get(i, "/v1/node")
        .await
        .and_then(|v| v["trust_root_version"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_revokes_and_the_root_never_goes_back() {
    let mut f = Fleet::new(2, 131);
    f.start_all();
    let c = f.enrol_at(0, &ALL).await;
    f.wait_applied("enrolment applied", &ALL, &Fleet::head(&c))
        .await;

    // v1 (auth, auth2) -> v2 (new key only), grandfathering the heads held now.
    let new_key = SecretKey::generate();
    let v2 = SignedTrustRoot::sign(
        TrustRoot {
            grandfathered_heads: vec![c.hash().unwrap().0],
            ..trust_root(2, &[new_key.public()], 1)
        },
        &[&f.auth, &new_key],
    );
    let v1 = f.roots[0].clone();
    let rotation = Bundle {
        roots: vec![v1.clone(), v2.clone()],
        changes: vec![],
    };
    let (status, body) = f.publish(0, rotation.encode()).await;
    assert_eq!(status, 200, "{body}");
    f.wait("both nodes hold v2", Duration::from_secs(30), async |f| {
        root_version(f, 0).await == Some(2) && root_version(f, 1).await == Some(2)
    })
    .await;

    // The rotated-out key, signing under v1 on top of the grandfathered
    // policy: refused with a reason that names the rotation.
    let old = f.sign(vec![Fleet::set_fleet("leaked.key", true.into())]);
    let (status, body) = f.publish(1, f.bundle(vec![old])).await;
    assert_ne!(status, 200, "{body}");
    let why = body["error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("superseded by the rotation to v2"), "{body}");
    let cfg = f.get(0, "/v1/config").await.unwrap();
    assert!(cfg["config"].get("leaked").is_none(), "{cfg}");
    f.policy.pop();

    // The new key governs.
    let edit = Fleet::set_fleet("after.rotation", 1.into());
    let good = testkit::sign_policy(&f.policy, [edit], 2, &[&new_key]);
    let head = Fleet::head(&good);
    let bundle = Bundle {
        roots: vec![v1.clone(), v2.clone()],
        changes: vec![good],
    };
    let (status, body) = f.publish(0, bundle.encode()).await;
    assert_eq!(status, 200, "{body}");
    f.wait_applied("the new key's change applied", &ALL, &head)
        .await;

    // A conflicting copy of the held v2 (other keys, signed by v1's auth2):
    // refused with a reason, never silently ignored.
    let intruder = SecretKey::generate();
    let other_v2 = SignedTrustRoot::sign(
        trust_root(2, &[intruder.public()], 1),
        &[&f.auth2, &intruder],
    );
    let bundle = Bundle {
        roots: vec![v1.clone(), other_v2],
        changes: vec![],
    };
    let (status, body) = f.publish(0, bundle.encode()).await;
    assert_ne!(status, 200, "{body}");
    assert!(body.to_string().contains("differs from the v2"), "{body}");

    // Root rollback: node 1's store is moved aside and it restarts with the
    // v1 file (the fleet's --trust-root is still v1): it stays at v2.
    f.kill(1);
    let store = f.nodes[1].data_dir.join("store");
    std::fs::rename(&store, store.with_extension("aside")).unwrap();
    std::fs::write(&f.trust_file, encode_chain(&[v1])).unwrap();
    f.start(1);
    f.wait("node 1 answers", Duration::from_secs(30), async |f| {
        f.get(1, "/v1/node").await.is_some()
    })
    .await;
    assert_eq!(root_version(&f, 1).await, Some(2));
    f.wait_applied("node 1 rebuilt under v2", &ALL, &head).await;
}
