//! SIGKILL at any instant loses nothing acknowledged, and a restarted node
//! catches up what it missed.

#[path = "daemon_support.rs"]
mod support;

use std::time::Duration;

use support::Fleet;

const ALL: [usize; 5] = [0, 1, 2, 3, 4];

async fn policy_changes(f: &Fleet, i: usize) -> Option<u64> {
    f.get(i, "/v1/policy")
        .await
        .map(|v| v["changes"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_and_restart_catches_up() {
    let mut f = Fleet::new(5, 31);
    f.start_all();
    let c = f.enrol_at(0, &ALL).await;
    let h = Fleet::head(&c);
    f.wait_applied("enrolment applied everywhere", &ALL, &h)
        .await;

    // 1. Acknowledged means durable: publish at node 2, SIGKILL it right after
    // the last 200, kill everyone else too (nothing to fetch back), restart
    // node 2 alone: it holds every change it acknowledged.
    for k in 0..10 {
        let c = f.sign(vec![Fleet::set_fleet(&format!("acked.k{k}"), k.into())]);
        let (status, body) = f.publish(2, f.bundle(vec![c])).await;
        assert_eq!(status, 200, "{body}");
    }
    for i in ALL {
        f.kill(i);
    }
    f.start(2);
    f.wait(
        "node 2 answers after SIGKILL",
        Duration::from_secs(30),
        async |f| f.get(2, "/v1/node").await.is_some(),
    )
    .await;
    assert_eq!(
        policy_changes(&f, 2).await,
        Some(11),
        "node 2 lost acknowledged changes"
    );
    let v = f.get(2, "/v1/fleet").await.unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 5);

    // 2. Catch up: restart the others; node 3 is SIGKILLed in the middle of a
    // stream of publications at node 0, then restarted.
    for i in [0, 1, 3, 4] {
        f.start(i);
    }
    f.wait(
        "the fleet holds the 11 changes",
        Duration::from_secs(30),
        async |f| {
            for i in ALL {
                if policy_changes(f, i).await != Some(11) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let mut last = String::new();
    for k in 0..20 {
        if k == 10 {
            f.kill(3);
        }
        let c = f.sign(vec![Fleet::set_fleet(&format!("stream.k{k}"), k.into())]);
        last = Fleet::head(&c);
        let (status, body) = f.publish(0, f.bundle(vec![c])).await;
        assert_eq!(status, 200, "{body}");
    }
    f.start(3);
    f.wait(
        "node 3 caught up and everyone applied the last change",
        Duration::from_secs(60),
        async |f| f.applied_everywhere(&ALL, &last).await,
    )
    .await;
    assert_eq!(policy_changes(&f, 3).await, Some(31));
    let cfg = f.get(3, "/v1/config").await.unwrap();
    assert_eq!(cfg["config"]["stream"]["k19"], 19, "{cfg}");
    assert_eq!(cfg["config"]["acked"]["k9"], 9, "{cfg}");
}
