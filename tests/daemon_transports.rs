//! The transports and log format the other tests do not use: a fleet that
//! listens on QUIC only converges, and a node started with `--log-format json`
//! writes one JSON object per log line.
//!
//! (mDNS is not tested: multicast does not reach across loopback addresses,
//! and a test of it needs network namespaces with multicast routes.)

#[path = "daemon_support.rs"]
mod support;

use support::Fleet;

const ALL: [usize; 3] = [0, 1, 2];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_only_fleet_converges_and_json_logs_parse() {
    let mut f = Fleet::new(3, 91);
    f.use_quic();
    f.nodes[2].extra = vec!["--log-format".into(), "json".into()];
    f.start_all();
    f.ready(&ALL).await;
    let c = f.enrol_at(0, &ALL).await;
    let h = Fleet::head(&c);
    f.wait_applied("enrolment applied everywhere over QUIC", &ALL, &h)
        .await;
    let c = f.sign(vec![Fleet::set_fleet("over.quic", true.into())]);
    let h = Fleet::head(&c);
    let (status, body) = f.publish(2, f.bundle(vec![c])).await;
    assert_eq!(status, 200, "{body}");
    f.wait_applied("a change published at node 2 applied everywhere", &ALL, &h)
        .await;
    for i in ALL {
        let v = f.get(i, "/v1/node").await.unwrap();
        let listen: Vec<&str> = v["listen_addrs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(
            !listen.is_empty() && listen.iter().all(|a| a.ends_with("/quic-v1")),
            "node {i} listens on {listen:?}"
        );
        assert!(!v["peers"].as_array().unwrap().is_empty(), "node {i}: {v}");
    }

    // Node 2's log: every line a JSON object with a level and a message.
    let log = f.nodes[2].log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "too few log lines: {log}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("policy applied")),
        "no apply in the log: {log}"
    );
}
