//! Memory of a replica holding 10,000 realistic status documents and a policy
//! with 10,000 members. Target: <= 64 MB.
//!
//! `cargo bench -p dcloud-crdt --bench memory` prints the live heap bytes the
//! replica holds (counted by a wrapping allocator, inputs dropped) and the
//! process's resident set.
// A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards
// to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

#[path = "fixture.rs"]
mod fixture;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    // `cargo bench` passes flags such as --bench; nothing to parse.
    const NODES: usize = 10_000;
    // Changes per status document: 9 is the average over an epoch of the
    // writer's default 16; DCLOUD_BENCH_CHANGES_PER_DOC=16 measures the worst case.
    let per_doc: usize = std::env::var("DCLOUD_BENCH_CHANGES_PER_DOC")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let heartbeats = per_doc.saturating_sub(1);
    let mut fx = fixture::Bench::new(NODES);
    let mut changes = fx.genesis();
    for _ in 0..heartbeats {
        changes.extend(fx.heartbeats());
    }
    let policy = fx.policy.clone();
    let chain = fx.chain.clone();
    drop(fx);
    let before = LIVE.load(Ordering::Relaxed);
    let mut r = dcloud_crdt::Replica::new(chain, dcloud_crdt::Limits::default());
    r.ingest(policy);
    let after_policy = LIVE.load(Ordering::Relaxed);
    for chunk in changes.chunks(4096) {
        r.ingest(chunk.to_vec());
    }
    drop(changes);
    let after = LIVE.load(Ordering::Relaxed);
    let stats = r.stats();
    assert_eq!(stats.status_docs, NODES);
    assert_eq!(r.policy().members.len(), NODES);
    let mb = |b: isize| b as f64 / (1 << 20) as f64;
    println!(
        "replica: {} members, {} status docs, {} changes ({} per status doc)",
        r.policy().members.len(),
        stats.status_docs,
        stats.changes,
        per_doc
    );
    println!(
        "heap held by the policy: {:.1} MB",
        mb(after_policy - before)
    );
    println!(
        "heap held by the replica: {:.1} MB (target <= 64 MB)",
        mb(after - before)
    );
    println!(
        "process resident set: {:.1} MB",
        rss_bytes() as f64 / (1 << 20) as f64
    );
}
