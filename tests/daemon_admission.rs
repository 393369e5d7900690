//! Admission: an unenrolled node is refused right after the handshake and
//! learns nothing; a revoked node is cut off and its later status is accepted
//! nowhere.

#[path = "daemon_support.rs"]
mod support;

use std::time::Duration;

use dcloud_crdt::policy::Edit;
use support::Fleet;

const MEMBERS: [usize; 4] = [0, 1, 2, 3];

async fn metric(f: &Fleet, i: usize, needle: &str) -> u64 {
    let Ok(r) = f
        .http
        .get(format!("http://{}/metrics", f.nodes[i].api))
        .send()
        .await
    else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unenrolled_refused_and_revoked_cut_off() {
    // Nodes 0..=3 are enrolled; node 4 never is.
    let mut f = Fleet::new(5, 51);
    f.start_all();
    let c = f.enrol_at(0, &MEMBERS).await;
    let h = Fleet::head(&c);
    f.wait_applied("members applied the enrolment", &MEMBERS, &h)
        .await;
    let outsider = f.nodes[4].id.to_hex();

    // The outsider is refused: members cut it off after the handshake, it
    // never gets the policy, and its status is nowhere.
    f.wait(
        "members refused the outsider",
        Duration::from_secs(30),
        async |f| {
            metric(
                f,
                0,
                "dcloud_peers_disconnected_total{reason=\"not_admitted\"}",
            )
            .await
                > 0
        },
    )
    .await;
    let v = f.get(4, "/v1/node").await.unwrap();
    assert_eq!(v["policy_heads"], serde_json::json!([]), "{v}");
    assert_eq!(v["enrolled"], false);
    for i in MEMBERS {
        let fleet = f.get(i, "/v1/fleet").await.unwrap();
        assert_eq!(fleet["nodes"].as_array().unwrap().len(), 4, "{fleet}");
        assert!(f.get(i, &format!("/v1/nodes/{outsider}")).await.is_none());
        let peers = f.get(i, "/v1/node").await.unwrap()["peers"].clone();
        assert!(
            !peers.as_array().unwrap().iter().any(|p| *p == outsider),
            "member {i} is connected to the outsider: {peers}"
        );
    }

    // Revoke node 3: everyone cuts it off and drops its status.
    let revoked = f.nodes[3].id;
    // Which members hold a connection to it now (each will cut it off once).
    let mut connected_before = [false; 3];
    for (i, was) in connected_before.iter_mut().enumerate() {
        let peers = f.get(i, "/v1/node").await.unwrap()["peers"].clone();
        *was = peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| *p == revoked.to_hex());
    }
    let c = f.sign(vec![Edit::Revoke(revoked, "key stolen".into())]);
    let h2 = Fleet::head(&c);
    let (status, body) = f.publish(1, f.bundle(vec![c])).await;
    assert_eq!(status, 200, "{body}");
    f.wait(
        "revocation applied and node 3 cut off",
        Duration::from_secs(30),
        async |f| {
            for i in [0, 1, 2] {
                let Some(v) = f.get(i, "/v1/node").await else {
                    return false;
                };
                if v["policy_heads"] != serde_json::json!([h2]) {
                    return false;
                }
                if v["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| *p == revoked.to_hex())
                {
                    return false;
                }
                let Some(row) = f.get(i, &format!("/v1/nodes/{}", revoked.to_hex())).await else {
                    return false;
                };
                if row["revoked"] != true || row["epoch"] != 0 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // Node 3 keeps running and heartbeating; its status stays unaccepted and
    // its connections stay closed while the rest of the fleet keeps working.
    let c = f.sign(vec![Fleet::set_fleet("after.revoke", true.into())]);
    let h3 = Fleet::head(&c);
    let (status, body) = f.publish(0, f.bundle(vec![c])).await;
    assert_eq!(status, 200, "{body}");
    f.wait(
        "the rest applied the next change",
        Duration::from_secs(30),
        async |f| {
            for i in [0, 1, 2] {
                if !f.rollout_complete(i, &h3, 3).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
    for i in [0, 1, 2] {
        let row = f
            .get(i, &format!("/v1/nodes/{}", revoked.to_hex()))
            .await
            .unwrap();
        assert_eq!(
            row["epoch"], 0,
            "revoked status accepted at node {i}: {row}"
        );
        assert_eq!(row["hb"], 0, "{row}");
    }
    assert!(f.nodes[3].running());
    // Counted once per cut-off (the engine's one typed Disconnect), by each
    // member that was connected to it; blocked after, so never again.
    let mut cut = 0;
    for (i, was) in connected_before.iter().enumerate() {
        let n = metric(&f, i, "dcloud_peers_disconnected_total{reason=\"revoked\"}").await;
        // One that was not connected may have refused one dial (also once).
        assert!(
            n == 1 || (!*was && n == 0),
            "member {i} counted {n} revoked disconnects (connected before: {was})"
        );
        cut += n;
    }
    assert!(cut > 0, "no member was connected to node 3");
}
