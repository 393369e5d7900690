//! Five real `dcloud` processes converge on a policy published at one of them;
//! every node sees every node's status; the API and CLI answer, refuse bad
//! bundles with the reason, and SIGTERM stops a node cleanly.

#[path = "daemon_support.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::{DCLOUD, Fleet};

const ALL: [usize; 5] = [0, 1, 2, 3, 4];

fn cli(api: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(DCLOUD)
        .args(args)
        .args(["--api", api])
        .output()
        .expect("run dcloud");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_converge_and_the_api_answers() {
    let mut f = Fleet::new(5, 11);
    f.start_all();
    f.wait("every API answers", Duration::from_secs(30), async |f| {
        for i in ALL {
            if f.get(i, "/v1/node").await.is_none() {
                return false;
            }
        }
        true
    })
    .await;

    // Enrol everyone at node 0: the policy spreads, every node applies it.
    let c1 = f.enrol_at(0, &ALL).await;
    let h1 = Fleet::head(&c1);
    f.wait_applied("policy 1 applied everywhere", &ALL, &h1)
        .await;
    for n in &f.nodes {
        let rendered: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&n.apply_file).unwrap()).unwrap();
        assert_eq!(rendered, serde_json::json!({"log": {"level": "info"}}));
    }

    // Every node sees every node's status, heard recently.
    f.wait(
        "every node sees every status",
        Duration::from_secs(30),
        async |f| {
            for i in ALL {
                let Some(v) = f.get(i, "/v1/fleet").await else {
                    return false;
                };
                let nodes = v["nodes"].as_array().unwrap();
                if nodes.len() != 5 {
                    return false;
                }
                for n in nodes {
                    if n["epoch"] == 0 || n["stale"] == true || n["name"] == "" {
                        return false;
                    }
                    if n["applied"]["heads"] != serde_json::json!([h1]) {
                        return false;
                    }
                }
            }
            true
        },
    )
    .await;

    // A second change published at another node rolls out too.
    let c2 = f.sign(vec![Fleet::set_fleet("feature.x", true.into())]);
    let h2 = Fleet::head(&c2);
    let (status, body) = f.publish(3, f.bundle(vec![c2.clone()])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reports"][0]["outcome"], "applied", "{body}");
    f.wait(
        "rollout of policy 2 complete, as nodes 0 and 2 see it",
        Duration::from_secs(30),
        // Node 2 answers the CLI below: its view must be complete too.
        async |f| f.rollout_complete(0, &h2, 5).await && f.rollout_complete(2, &h2, 5).await,
    )
    .await;
    // Publishing it again is a duplicate, still 200.
    let (status, body) = f.publish(1, f.bundle(vec![c2])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reports"][0]["outcome"], "duplicate", "{body}");

    // Refusals: not a bundle; a change signed by a key outside the trust root.
    let (status, body) = f.publish(2, b"hello".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("does not decode"),
        "{body}"
    );
    let forged = f.forge(vec![Fleet::set_fleet("evil", true.into())]);
    let (status, body) = f.publish(2, f.bundle(vec![forged])).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["accepted"], false);
    assert_eq!(body["reports"][0]["outcome"], "rejected", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("rejected"),
        "{body}"
    );
    let policy = f.get(4, "/v1/policy").await.unwrap();
    assert!(policy["fleet"].get("evil").is_none(), "{policy}");
    assert_eq!(policy["fleet"]["feature.x"], true);

    // The CLI against the API.
    let api = f.nodes[2].api.clone();
    let (ok, out, err) = cli(&api, &["fleet"]);
    assert!(ok, "{err}");
    assert!(out.contains("site-0") && out.contains("site-4"), "{out}");
    assert!(out.contains("5 nodes"), "{out}");
    let (ok, out, _) = cli(&api, &["status", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["id"], f.nodes[2].id.to_hex());
    let (ok, out, _) = cli(&api, &["rollout", "--heads", &h2]);
    assert!(ok);
    assert!(out.contains("5/5 sites applied"), "{out}");
    let (ok, out, _) = cli(&api, &["config"]);
    assert!(ok);
    assert!(out.contains("\"x\": true"), "{out}");
    let (ok, out, _) = cli(&api, &["policy"]);
    assert!(ok);
    assert!(out.contains("feature.x"), "{out}");
    let snap = f.dir.path().join("snapshot.bundle");
    let (ok, _, err) = cli(&api, &["snapshot", "-o", snap.to_str().unwrap()]);
    assert!(ok, "{err}");
    let b = dcloud_crdt::Bundle::decode(&std::fs::read(&snap).unwrap(), 1 << 24).unwrap();
    assert_eq!(b.changes.len(), 2);
    let bad = f.dir.path().join("bad.bundle");
    std::fs::write(&bad, b"junk").unwrap();
    let (ok, _, err) = cli(&api, &["publish", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("does not decode"), "{err}");
    let (ok, _, err) = cli("127.0.0.1:9", &["status"]);
    assert!(!ok);
    assert!(err.contains("no dcloud daemon answers"), "{err}");
    let metrics = f
        .http
        .get(format!("http://{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("dcloud_peers"), "{metrics}");
    assert!(metrics.contains("dcloud_bytes_in_total"), "{metrics}");

    // SIGTERM: exits 0 within the bound.
    let status = f
        .terminate(4, Duration::from_secs(10))
        .expect("exits within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}
