//! Ingest throughput of signed status changes spread over many documents
//! (verify + authorise + apply), against plain `verify_strict` of the same
//! signatures in the same run.
//!
//! `cargo bench -p dcloud-crdt --bench ingest` prints criterion's figures, then
//! a line `ratio ...` = (time of verify_strict alone) / (time of full ingest):
//! above 1.0 means batch verification pays for everything else.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dcloud_crdt::verify::verify_one;
use dcloud_crdt::{Outcome, Replica, SignedChange};

#[path = "fixture.rs"]
mod fixture;

const NODES: usize = 2000;

fn verify_all_strict(changes: &[SignedChange]) {
    for sc in changes {
        let h = sc.hash().unwrap();
        let msg = dcloud_crdt::change::signing_message(&sc.doc, sc.root_version, &h);
        verify_one(&msg, &sc.sigs[0]).unwrap();
    }
}

fn ingest_all(r: &mut Replica, changes: Vec<SignedChange>) {
    let n = changes.len();
    let rep = r.ingest(changes);
    assert_eq!(rep.len(), n);
    assert!(rep.iter().all(|x| x.outcome == Outcome::Applied));
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let mut fx = fixture::Bench::new(NODES);
    let genesis = fx.genesis();
    let heartbeats = fx.heartbeats();
    let base = fx.replica();
    let mut with_genesis = fx.replica();
    ingest_all(&mut with_genesis, genesis.clone());

    let mut g = c.benchmark_group("status_ingest");
    g.throughput(Throughput::Elements(NODES as u64));
    g.sample_size(10);
    g.bench_function("verify_strict_only", |b| {
        b.iter(|| verify_all_strict(black_box(&heartbeats)))
    });
    g.bench_function("ingest_first_change_per_doc", |b| {
        b.iter_batched(
            || (fx.replica(), genesis.clone()),
            |(mut r, ch)| ingest_all(&mut r, ch),
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // The ratio, from medians of interleaved runs in this process. Heartbeats are
    // applied to documents that already hold a change (the steady state).
    let _ = base;
    let mut strict = Vec::new();
    let mut ingest = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        verify_all_strict(&heartbeats);
        strict.push(t.elapsed());
        let mut r = fx.replica();
        ingest_all(&mut r, genesis.clone());
        let batch = heartbeats.clone();
        let t = Instant::now();
        ingest_all(&mut r, batch);
        ingest.push(t.elapsed());
    }
    let (s, i) = (median(strict), median(ingest));
    println!(
        "ratio verify_strict/ingest = {:.2} ({} status changes over {} documents: verify_strict {:.1} us/change, ingest {:.1} us/change)",
        s.as_secs_f64() / i.as_secs_f64(),
        NODES,
        NODES,
        s.as_secs_f64() * 1e6 / NODES as f64,
        i.as_secs_f64() * 1e6 / NODES as f64,
    );
    drop(with_genesis);
}

criterion_group!(benches, bench);
criterion_main!(benches);
