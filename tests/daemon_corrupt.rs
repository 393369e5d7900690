//! A corrupted store is moved aside (never deleted), the node rebuilds its
//! replica from its peers, and its status epoch does not go backwards.

#[path = "daemon_support.rs"]
mod support;

use std::time::Duration;

use support::Fleet;

const ALL: [usize; 3] = [0, 1, 2];

async fn epoch_seen_by(f: &Fleet, at: usize, of: usize) -> u64 {
    f.get(at, &format!("/v1/nodes/{}", f.nodes[of].id.to_hex()))
        .await
        .map(|v| v["epoch"].as_u64().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_store_is_moved_aside_and_rebuilt() {
    let mut f = Fleet::new(3, 91);
    f.start_all();
    let c = f.enrol_at(0, &ALL).await;
    let c2 = f.sign(vec![Fleet::set_fleet("db.size", 42.into())]);
    let h = Fleet::head(&c2);
    let (status, body) = f.publish(1, f.bundle(vec![c2])).await;
    assert_eq!(status, 200, "{body}");
    f.wait(
        "policy applied everywhere",
        Duration::from_secs(30),
        async |f| f.applied_everywhere(&ALL, &h).await && epoch_seen_by(f, 0, 2).await > 0,
    )
    .await;
    let _ = c;
    let epoch_before = epoch_seen_by(&f, 0, 2).await;

    // Stop node 2 and scribble over every file of its store.
    let st = f.terminate(2, Duration::from_secs(10)).expect("stops");
    assert!(st.success());
    let store = f.nodes[2].data_dir.join("store");
    let mut scribbled = 0;
    for e in std::fs::read_dir(&store).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            let len = e.metadata().unwrap().len().max(4096) as usize;
            std::fs::write(e.path(), vec![0x5Au8; len]).unwrap();
            scribbled += 1;
        }
    }
    assert!(scribbled > 0);

    f.start(2);
    f.wait_applied("node 2 rebuilt from its peers", &[2], &h)
        .await;
    let aside: Vec<_> = std::fs::read_dir(&f.nodes[2].data_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("store.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged store is kept aside");
    assert!(f.nodes[2].log().contains("moving it aside"));
    let v = f.get(2, "/v1/policy").await.unwrap();
    assert_eq!(v["changes"], 2);
    assert_eq!(v["fleet"]["db.size"], 42);
    // Its status continues at a higher epoch, accepted by the others.
    f.wait(
        "node 2's new status epoch reaches node 0",
        Duration::from_secs(30),
        async |f| epoch_seen_by(f, 0, 2).await > epoch_before,
    )
    .await;
    f.wait(
        "node 0 sees every site applied",
        Duration::from_secs(30),
        async |f| f.rollout_complete(0, &h, 3).await,
    )
    .await;
}
