//! Membership over real daemons, as an operator sees it: a SIGKILLed site is
//! shown `down` by every live site (`dcloud fleet`'s liveness, and a pending
//! rollout names it down), with no heartbeat (the status refresh is the
//! daemon's 10 minutes); when it starts again it is shown alive everywhere.
//! Prints the crash-to-down time of each live site.

#[path = "daemon_support.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Fleet;

const N: usize = 5;
const VICTIM: usize = 3;

fn liveness(v: &Value, id: &str) -> Option<String> {
    v["nodes"].as_array()?.iter().find_map(|r| {
        (r["id"].as_str() == Some(id)).then(|| r["liveness"].as_str().unwrap_or("").to_string())
    })
}

/// Wait until every node in `live` shows `id` alive.
async fn wait_all_alive(f: &Fleet, live: &[usize], id: &str, what: &str) {
    f.wait(what, Duration::from_secs(30), async |f| {
        for &i in live {
            let Some(v) = f.get(i, "/v1/fleet").await else {
                return false;
            };
            if liveness(&v, id).as_deref() != Some("alive") {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_site_is_shown_down_everywhere_and_alive_when_back() {
    let mut f = Fleet::new(N, 251);
    let refresh = dcloud_node::engine::EngineConfig::default().status_refresh_interval_ms;
    for n in &mut f.nodes {
        n.status_refresh_ms = refresh;
    }
    f.start_all();
    let all: Vec<usize> = (0..N).collect();
    f.ready(&all).await;
    let c = f.enrol_at(0, &all).await;
    f.wait_applied("enrolment applied everywhere", &all, &Fleet::head(&c))
        .await;
    let victim = f.nodes[VICTIM].id.to_hex();
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != VICTIM).collect();
    wait_all_alive(&f, &live, &victim, "every site shows the victim alive").await;

    f.kill(VICTIM);
    let t0 = Instant::now();
    let mut seen: Vec<Option<f64>> = vec![None; N];
    f.wait(
        "every live site shows the killed one down",
        Duration::from_secs(30),
        async |f| {
            for &i in &live {
                if seen[i].is_some() {
                    continue;
                }
                if let Some(v) = f.get(i, "/v1/fleet").await
                    && liveness(&v, &victim).as_deref() == Some("down")
                {
                    seen[i] = Some(t0.elapsed().as_secs_f64());
                }
            }
            live.iter().all(|&i| seen[i].is_some())
        },
    )
    .await;
    let times: Vec<String> = live
        .iter()
        .map(|&i| format!("{:.2} s", seen[i].unwrap()))
        .collect();
    println!("SIGKILL -> shown down, per live site: {}", times.join(", "));
    // The fleet view says it; the node is not stale itself, only the victim.
    let v = f.get(0, "/v1/fleet").await.unwrap();
    let row = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"].as_str() == Some(victim.as_str()))
        .unwrap()
        .clone();
    assert_eq!(row["stale"], true, "{row}");
    // A rollout published now is pending on the victim, which it names down.
    let c = f.sign(vec![Fleet::set_fleet("while.down", 1.into())]);
    let head = Fleet::head(&c);
    let (status, body) = f.publish(0, f.bundle(vec![c])).await;
    assert_eq!(status, 200, "{body}");
    f.wait_applied("the change applied on the live sites", &live, &head)
        .await;
    // The live sites' applied status reaches node 0 soon after they apply.
    let path = format!("/v1/rollout?heads={head}");
    f.wait(
        "node 0's rollout is pending on the victim alone",
        Duration::from_secs(30),
        async |f| {
            f.get(0, &path).await.is_some_and(|r| {
                r["pending"]
                    .as_array()
                    .is_some_and(|p| p.len() == 1 && p[0]["id"].as_str() == Some(victim.as_str()))
            })
        },
    )
    .await;
    let r = f.get(0, &path).await.expect("rollout");
    assert_eq!(r["pending"][0]["down"], true, "{r}");

    // Back: alive everywhere, and the rollout completes.
    f.start(VICTIM);
    wait_all_alive(
        &f,
        &live,
        &victim,
        "every site shows the restarted one alive",
    )
    .await;
    f.wait(
        "the rollout completes with the restarted site",
        Duration::from_secs(30),
        async |f| f.rollout_complete(0, &head, N).await,
    )
    .await;
}
