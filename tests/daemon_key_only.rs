//! A site comes back with only its `node.key` (the one thing the guide says
//! cannot be rebuilt): its status must move past the history its peers still
//! hold from its earlier life, so that every site sees it fresh and a rollout
//! published after its return completes for it.

#[path = "daemon_support.rs"]
mod support;

use std::time::Duration;

use support::Fleet;

const ALL: [usize; 3] = [0, 1, 2];

async fn epoch(f: &Fleet, i: usize) -> Option<u64> {
    f.get(i, "/v1/node")
        .await
        .and_then(|v| v["status_epoch"].as_u64())
}

async fn seen_fresh_by_all(f: &Fleet, node: usize, min_epoch: u64) -> bool {
    let id = f.nodes[node].id.to_string();
    for i in ALL {
        let Some(v) = f.get(i, "/v1/fleet").await else {
            return false;
        };
        let fresh = v["nodes"].as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["id"] == id.as_str()
                    && r["stale"] == false
                    && r["epoch"].as_u64().is_some_and(|e| e >= min_epoch)
                    && r["last_heard_ms_ago"].as_u64().is_some_and(|a| a < 2_500)
            })
        });
        if !fresh {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_back_with_only_its_key_is_seen_and_completes_rollouts() {
    let mut f = Fleet::new(3, 111);
    f.start_all();
    let c = f.enrol_at(0, &ALL).await;
    f.wait_applied("enrolment applied everywhere", &ALL, &Fleet::head(&c))
        .await;
    // Node 2 writes several epochs: each start begins a new one.
    for _ in 0..3 {
        assert!(f.terminate(2, Duration::from_secs(10)).is_some());
        f.start(2);
        f.wait("node 2 back", Duration::from_secs(30), async |f| {
            f.get(2, "/v1/node").await.is_some()
        })
        .await;
    }
    let old_epoch = epoch(&f, 2).await.expect("node 2 answers");
    assert!(old_epoch >= 4, "epoch {old_epoch}");
    f.wait(
        "nodes 0 and 1 hear node 2 at its epoch",
        Duration::from_secs(30),
        async |f| seen_fresh_by_all(f, 2, old_epoch).await,
    )
    .await;

    // Replace its data directory by one holding only node.key.
    f.kill(2);
    let dir = f.nodes[2].data_dir.clone();
    let key = std::fs::read(dir.join("node.key")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("node.key"), key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("node.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    f.start(2);
    f.wait(
        "node 2 moves past its earlier epochs",
        Duration::from_secs(30),
        async |f| epoch(f, 2).await.is_some_and(|e| e > old_epoch),
    )
    .await;
    f.wait(
        "every site sees node 2 fresh again, past its earlier epochs",
        Duration::from_secs(20),
        async |f| seen_fresh_by_all(f, 2, old_epoch + 1).await,
    )
    .await;
    let c = f.sign(vec![Fleet::set_fleet("after.return", 1.into())]);
    let head = Fleet::head(&c);
    let (status, body) = f.publish(0, f.bundle(vec![c])).await;
    assert_eq!(status, 200, "{body}");
    f.wait(
        "the rollout after node 2's return completes, seen from node 0",
        Duration::from_secs(30),
        async |f| f.rollout_complete(0, &head, 3).await,
    )
    .await;
}
