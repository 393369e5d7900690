//! Issue 10: a decompression bomb posted to a daemon. The bundle is about
//! 1 MiB; its change bytes are a deflate-compressed automerge change chunk
//! that inflates to 1 GiB of zeros, under a valid authority signature over
//! the bytes. Before the chunk inspector, this took a daemon from 15 MiB to
//! 3.1 GiB resident and 18 s of work before it answered 422. Now it is
//! refused before anything is inflated: 400, naming the compressed chunk; the
//! daemon's peak resident memory stays bounded, and it keeps serving (a valid
//! bundle still publishes).

#[path = "daemon_support.rs"]
mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use dcloud_crdt::chunk::{CHUNK_MAGIC, CHUNK_TYPE_COMPRESSED};
use support::Fleet;

/// Peak resident memory of a process, from /proc (Linux), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A compressed change chunk whose body inflates to `inflated` zero bytes.
fn deflate_bomb(inflated: usize) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..inflated / zeros.len() {
        enc.write_all(&zeros).unwrap();
    }
    let body = enc.finish().unwrap();
    let mut out = CHUNK_MAGIC.to_vec();
    out.extend_from_slice(&[0, 0, 0, 0]); // checksum: never reached
    out.push(CHUNK_TYPE_COMPRESSED);
    let mut len = body.len() as u64;
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(&body);
    out
}

const PEAK_RSS_BOUND: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bomb_over_http_is_refused_with_400_and_the_daemon_keeps_serving() {
    let mut f = Fleet::new(1, 191);
    f.start(0);
    f.ready(&[0]).await;
    let pid = f.nodes[0].pid().expect("the daemon's pid");
    let before = peak_rss(pid).expect("VmHWM of the daemon");

    // A real policy change's signatures, over the bomb's bytes: a valid
    // signature verifies only over the real hash, so a node that inflated
    // first would have done the damage before finding out.
    let mut bomb = f.sign(vec![f.enrol(0)]);
    f.policy.pop();
    bomb.change = deflate_bomb(1 << 30);
    let bundle = f.bundle(vec![bomb]);
    println!(
        "bomb bundle: {} bytes, inflating to 1 GiB; daemon peak RSS before {} MiB",
        bundle.len(),
        before >> 20
    );
    assert!(
        bundle.len() < 2 << 20,
        "the bomb is small: {}",
        bundle.len()
    );
    let started = Instant::now();
    let (status, body) = f.publish(0, bundle).await;
    let took = started.elapsed();
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("compressed change chunk refused"), "{body}");
    let after = peak_rss(pid).expect("VmHWM of the daemon");
    println!(
        "answered {status} in {} ms; daemon peak RSS after {} MiB (bound {} MiB)",
        took.as_millis(),
        after >> 20,
        PEAK_RSS_BOUND >> 20
    );
    assert!(
        after < PEAK_RSS_BOUND,
        "peak RSS {} MiB over {} MiB",
        after >> 20,
        PEAK_RSS_BOUND >> 20
    );

    // Still serving: the API answers and a valid bundle publishes.
    assert!(f.nodes[0].running(), "the daemon died");
    let change = f.sign(vec![f.enrol(0)]);
    let (status, body) = f.publish(0, f.bundle(vec![change.clone()])).await;
    assert_eq!(status, 200, "{body}");
    let head = Fleet::head(&change);
    f.wait(
        "the valid bundle applies",
        Duration::from_secs(30),
        async |f| {
            f.get(0, "/v1/policy").await.is_some_and(|p| {
                p["heads"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|x| x == head.as_str()))
            })
        },
    )
    .await;
    f.terminate(0, Duration::from_secs(10));
}
