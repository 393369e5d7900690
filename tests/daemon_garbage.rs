//! A peer that sends garbage, oversized frames or forged changes is
//! disconnected (and kept away for a while), and the fleet keeps converging.
//!
//! "Mallory" is an enrolled node key driven by a bare libp2p swarm in the
//! test (the daemon's own behaviour), writing raw bytes on an engine stream.

#[path = "daemon_support.rs"]
mod support;

use std::time::{Duration, Instant};

use dcloud_crdt::policy::Edit;
use dcloud_crdt::testkit;
use dcloud_crdt::{DocId, SecretKey, SignedChange};
use dcloud_node::engine::Message;
use dcloud_node::engine::wire::Push;
use dcloud_node::net;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use support::Fleet;

const NODES: [usize; 3] = [0, 1, 2];

/// Drive mallory's swarm until `done` says so, or panic at the deadline.
async fn drive(
    swarm: &mut Swarm<net::Behaviour>,
    what: &str,
    within: Duration,
    mut done: impl FnMut(&SwarmEvent<net::BehaviourEvent>) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, swarm.select_next_some()).await {
            Ok(ev) => {
                if done(&ev) {
                    return;
                }
            }
            Err(_) => panic!("mallory timed out waiting for: {what}"),
        }
    }
}

async fn connect(swarm: &mut Swarm<net::Behaviour>, addr: &str, peer: PeerId) {
    let addr: Multiaddr = addr.parse().unwrap();
    swarm.dial(addr).unwrap();
    drive(
        swarm,
        "connection established",
        Duration::from_secs(20),
        |ev| matches!(ev, SwarmEvent::ConnectionEstablished { peer_id, .. } if *peer_id == peer),
    )
    .await;
}

/// Open an engine stream to `peer` and write `bytes` on it, driving the swarm
/// meanwhile. The stream is returned so that it stays open until the daemon
/// acts. A write that fails because the daemon already closed the connection
/// is fine: that is what the test waits for next.
async fn send_raw(
    swarm: &mut Swarm<net::Behaviour>,
    peer: PeerId,
    bytes: Vec<u8>,
) -> Option<libp2p::Stream> {
    let mut control = swarm.behaviour().streams.new_control();
    let write = async move {
        let mut s = control
            .open_stream(peer, net::PROTOCOL)
            .await
            .map_err(std::io::Error::other)?;
        s.write_all(&bytes).await?;
        s.flush().await?;
        Ok::<_, std::io::Error>(s)
    };
    tokio::pin!(write);
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = &mut write => return r.ok(),
            _ = swarm.select_next_some() => {}
            _ = &mut deadline => panic!("mallory timed out writing to {peer}"),
        }
    }
}

/// Frames, each length-prefixed, back to back.
fn frames(msgs: &[Vec<u8>]) -> Vec<u8> {
    msgs.iter()
        .flat_map(|m| net::encode_frame(m).unwrap())
        .collect()
}

async fn wait_closed(swarm: &mut Swarm<net::Behaviour>, peer: PeerId, what: &str) {
    drive(swarm, what, Duration::from_secs(20), |ev| {
        matches!(ev, SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if *peer_id == peer)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_forged_senders_are_cut_off() {
    let mut f = Fleet::new(3, 71);
    f.start_all();
    let mallory = SecretKey::generate();
    let mut edits: Vec<Edit> = NODES.iter().map(|i| f.enrol(*i)).collect();
    edits.push(testkit::enrol(mallory.public(), "mallory", "eu"));
    let c = f.sign(edits);
    let h = Fleet::head(&c);
    f.ready(&NODES).await;
    let (status, body) = f.publish(0, f.bundle(vec![c])).await;
    assert_eq!(status, 200, "{body}");
    f.wait("enrolment applied", Duration::from_secs(30), async |f| {
        f.applied_everywhere(&NODES, &h).await
    })
    .await;

    let mut swarm = net::build_swarm(&mallory, false, net::PING_INTERVAL_MS).unwrap();
    let peer = |i: usize| net::peer_id(&f.nodes[i].id).unwrap();

    // 1. Garbage frames at node 0: penalised until disconnected.
    let p0 = peer(0);
    connect(&mut swarm, &f.nodes[0].addr(), p0).await;
    let garbage: Vec<Vec<u8>> = (0..8u8).map(|k| vec![0xEE ^ k; 300]).collect();
    let _s0 = send_raw(&mut swarm, p0, frames(&garbage)).await;
    wait_closed(&mut swarm, p0, "node 0 cuts off the garbage sender").await;
    // While blocked, node 0 refuses it at once.
    swarm
        .dial(f.nodes[0].addr().parse::<Multiaddr>().unwrap())
        .unwrap();
    drive(
        &mut swarm,
        "node 0 refuses the blocked peer",
        Duration::from_secs(20),
        |ev| {
            matches!(ev, SwarmEvent::ConnectionClosed { peer_id, .. } if *peer_id == p0)
                || matches!(ev, SwarmEvent::OutgoingConnectionError { .. })
        },
    )
    .await;

    // 2. An oversized frame at node 1: refused before its body is read.
    let p1 = peer(1);
    connect(&mut swarm, &f.nodes[1].addr(), p1).await;
    // Only the header: the daemon must act on the announced length alone.
    let header = ((net::FRAME_SIZE_MAX_BYTES + 1) as u32)
        .to_be_bytes()
        .to_vec();
    let _s1 = send_raw(&mut swarm, p1, header).await;
    wait_closed(&mut swarm, p1, "node 1 cuts off the oversized sender").await;

    // 3. Forged policy changes (signed by a key outside the trust root) at node 2.
    let p2 = peer(2);
    connect(&mut swarm, &f.nodes[2].addr(), p2).await;
    // One forger key, each change on top of the one before.
    let forger = SecretKey::generate();
    let mut forged: Vec<SignedChange> = Vec::new();
    for k in 0..6 {
        let base: Vec<SignedChange> = f.policy.iter().chain(&forged).cloned().collect();
        let edit = Fleet::set_fleet(&format!("forged.k{k}"), k.into());
        forged.push(testkit::sign_policy(&base, [edit], 1, &[&forger]));
    }
    let msgs: Vec<Vec<u8>> = forged
        .iter()
        .map(|c| {
            assert_eq!(c.doc, DocId::Policy);
            Message::Changes {
                push: Push::Eager,
                changes: vec![c.clone()],
            }
            .encode()
        })
        .collect();
    let _s2 = send_raw(&mut swarm, p2, frames(&msgs)).await;
    wait_closed(&mut swarm, p2, "node 2 cuts off the forger").await;

    // The fleet keeps converging, and nothing forged was taken.
    let c = f.sign(vec![Fleet::set_fleet("after.attack", true.into())]);
    let h2 = Fleet::head(&c);
    let (status, body) = f.publish(2, f.bundle(vec![c])).await;
    assert_eq!(status, 200, "{body}");
    f.wait_applied("the fleet applied the next change", &NODES, &h2)
        .await;
    for i in NODES {
        let p = f.get(i, "/v1/policy").await.unwrap();
        assert!(p["fleet"].get("forged.k0").is_none(), "{p}");
        assert_eq!(p["changes"], 2);
    }
    let metrics = |i: usize| {
        let url = format!("http://{}/metrics", f.nodes[i].api);
        let http = f.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert!(metrics(0).await.contains("reason=\"misbehaviour\""));
    assert!(metrics(1).await.contains("reason=\"bad_frame\""));
    let m2 = metrics(2).await;
    assert!(m2.contains("reason=\"misbehaviour\""), "{m2}");
    assert!(m2.contains("dcloud_changes_rejected_total{reason="), "{m2}");
}
