//! Signed freshness on real daemons: a statement signed by the trust root's
//! timestamp key, published at one node, reaches the other; both report
//! `policy_fresh`; once it expires both report not fresh (reason: expired),
//! `dcloud status` exits non-zero and the gauge reads 0; a new statement made
//! by `dcloud-admin timestamp` clears it. A statement signed by an authority
//! key is refused.

#[path = "daemon_support.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dcloud_crdt::{FreshnessStatement, SecretKey, SignedChange, SignedFreshness};
use serde_json::Value;
use support::{DCLOUD, Fleet};

const ALL: [usize; 2] = [0, 1];
const DCLOUD_ADMIN: &str = env!("CARGO_BIN_EXE_dcloud-admin");

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn statement(key: &SecretKey, head: &SignedChange, valid_ms: u64) -> SignedFreshness {
    let now = unix_ms();
    SignedFreshness::sign(
        FreshnessStatement {
            root_version: 1,
            policy_heads: vec![head.hash().unwrap().0],
            issued_ms: now,
            expires_ms: now + valid_ms,
        },
        &[key],
    )
}

async fn post(f: &Fleet, i: usize, st: &SignedFreshness) -> (u16, Value) {
    let r = f
        .http
        .post(format!("http://{}/v1/freshness", f.nodes[i].api))
        .header("content-type", "application/octet-stream")
        .body(st.encode())
        .send()
        .await
        .expect("POST /v1/freshness");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// (policy_fresh, reason) of node `i`.
async fn fresh(f: &Fleet, i: usize) -> Option<(bool, String)> {
    let v = f.get(i, "/v1/node").await?;
    Some((
        v["policy_fresh"].as_bool()?,
        v["policy_fresh_reason"].as_str()?.to_string(),
    ))
}

fn status_exit_ok(f: &Fleet, i: usize) -> bool {
    Command::new(DCLOUD)
        .args(["status", "--api", &f.nodes[i].api])
        .output()
        .expect("run dcloud status")
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_statement_makes_both_nodes_not_fresh_and_a_new_one_clears_it() {
    let mut f = Fleet::with_timestamp_key(2, 161);
    let ts = f.timestamp.clone().expect("a timestamp key");
    for n in &mut f.nodes {
        n.extra = ["--freshness-skew-ms", "0", "--freshness-grace-ms", "600000"]
            .map(String::from)
            .to_vec();
    }
    f.start_all();
    let c = f.enrol_at(0, &ALL).await;
    f.wait_applied("enrolment applied", &ALL, &Fleet::head(&c))
        .await;

    // A statement signed by an authority key is refused, naming the threshold.
    let forged = statement(&f.auth, &c, 60_000);
    let (status, body) = post(&f, 0, &forged).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timestamp keys"),
        "{body}"
    );

    // A statement valid for 5 s, published at node 0, reaches node 1.
    let short = statement(&ts, &c, 5_000);
    let (status, body) = post(&f, 0, &short).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kept"], true, "{body}");
    f.wait(
        "both nodes fresh on the statement",
        Duration::from_secs(20),
        async |f| {
            for i in ALL {
                match fresh(f, i).await {
                    Some((true, why)) if why.contains("holds every policy head") => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;
    assert!(status_exit_ok(&f, 1), "dcloud status exits 0 when fresh");

    // Once it expires (skew 0), both say so.
    f.wait(
        "both nodes not fresh: expired",
        Duration::from_secs(20),
        async |f| {
            for i in ALL {
                match fresh(f, i).await {
                    Some((false, why)) if why.contains("expired") => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;
    assert!(
        !status_exit_ok(&f, 0),
        "dcloud status exits non-zero when not fresh"
    );
    assert!(
        !status_exit_ok(&f, 1),
        "dcloud status exits non-zero when not fresh"
    );
    let metrics = f
        .http
        .get(format!("http://{}/metrics", f.nodes[1].api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("dcloud_policy_fresh 0"), "{metrics}");
    // The fleet view shows it: node 0's status carries a failing check.
    f.wait(
        "node 1 sees node 0's policy_fresh check fail",
        Duration::from_secs(20),
        async |f| {
            let Some(row) = f
                .get(1, &format!("/v1/nodes/{}", f.nodes[0].id.to_hex()))
                .await
            else {
                return false;
            };
            row["health"]["policy_fresh"]["ok"] == false
        },
    )
    .await;

    // A new statement, made by the admin tool from node 0's snapshot and
    // posted at node 1, clears it on both.
    let ts_file = f.dir.path().join("ts.key");
    ts.write_file(&ts_file).unwrap();
    let out = Command::new(DCLOUD_ADMIN)
        .arg("timestamp")
        .arg("--key")
        .arg(&ts_file)
        .args(["--from", &f.nodes[0].api])
        .args(["--expires", "1h"])
        .args(["--to", &f.nodes[1].api])
        .arg("--out")
        .arg(f.dir.path().join("fresh.stmt"))
        .output()
        .expect("run dcloud-admin timestamp");
    assert!(out.status.success(), "dcloud-admin timestamp: {out:?}");
    f.wait(
        "both nodes fresh again",
        Duration::from_secs(20),
        async |f| {
            for i in ALL {
                if !matches!(fresh(f, i).await, Some((true, _))) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    assert!(status_exit_ok(&f, 0));
    let file = std::fs::read(f.dir.path().join("fresh.stmt")).unwrap();
    let st = SignedFreshness::decode(&file).unwrap();
    assert_eq!(st.statement.policy_heads, vec![c.hash().unwrap().0]);
}
