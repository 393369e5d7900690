//! Small scenarios of every fault kind, several seeds each, asserting the
//! safety and liveness checkers. Deterministic: virtual time, fixed seeds.

use std::path::PathBuf;

use dcloud_sim::{Scenario, run};

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Run `name` with its own seed and `extra` more, failing with the seed.
fn check(name: &str, extra: &[u64]) {
    let sc = scenario(name);
    let mut seeds = vec![sc.seed];
    seeds.extend_from_slice(extra);
    for seed in seeds {
        println!("scenario {name} seed {seed}");
        let r = run(sc.clone(), seed);
        assert!(
            r.ok(),
            "scenario {name} failed with seed {seed} (replay: dcloud-sim run simulations/scenarios/{name}.toml --seed {seed}):\n{}",
            r.report.table()
        );
        for p in &r.report.policy {
            assert_eq!(
                p.reached, p.of,
                "{name} seed {seed}: a policy change did not reach every live node"
            );
        }
        // Honest catch-up (heals, restarts, wiped stores) never hits the
        // answer budget: only an amplifier is refused.
        if !sc.malicious.iter().any(|m| m.want_amplifier > 0) {
            assert_eq!(
                r.report.requests_refused, 0,
                "{name} seed {seed}: an honest request was refused"
            );
        }
    }
}

#[test]
fn smoke() {
    check("smoke", &[1, 2]);
}

#[test]
fn lossy_duplicating_reordering_asymmetric_links() {
    check("ci-lossy", &[3, 4]);
}

#[test]
fn partition_with_dropped_connections() {
    check("ci-partition", &[5, 6]);
}

#[test]
fn overlapping_partitions_restore_every_link() {
    // Failed before the simulator modelled concurrent partitions: the links
    // only the first one cut stayed down in the engines' view.
    check("ci-overlap-pair", &[1, 2, 3]);
}

#[test]
fn three_overlapping_partitions_with_every_other_fault() {
    check("ci-overlap", &[1, 2, 3]);
}

#[test]
fn agreement_soon_after_the_last_heal_under_loss() {
    // Issue 11 item 2: two partitions one after the other, 15% loss, 5%
    // duplication, 10% reordering, 10% of directions at 60% loss, within
    // the 3 anti-entropy intervals (4.5 s) of the last heal. Never
    // converged on seed 2 once (10.5 s, 3.25 s, 5.9 s on the others).
    check("ci-heal-lossy", &[1, 2, 3]);
}

#[test]
fn silent_partition_is_repaired_by_anti_entropy() {
    check("ci-silent-partition", &[7, 8]);
}

#[test]
fn crash_restart_and_wiped_store() {
    check("ci-crash", &[9, 10]);
}

#[test]
fn warm_start_under_crashes_restarts_and_loss() {
    check("ci-warm", &[15]);
}

#[test]
fn churn() {
    check("ci-churn", &[11, 12]);
}

#[test]
fn malicious_nodes_are_contained() {
    let sc = scenario("ci-malicious");
    check("ci-malicious", &[13]);
    let r = run(sc, 14);
    assert!(r.ok());
    // The forger and the flooder were noticed and cut off.
    assert!(r.report.misbehaviour_events > 0);
    assert!(r.report.malformed_messages > 0);
    assert!(r.report.disconnects > 0);
    assert!(r.report.rejected.values().sum::<u64>() > 0);
    // Issue 10: the epoch splitter's over-full epoch was voided (no honest
    // node blamed or cut off another: that is a safety violation, checked by
    // r.ok()), the far-future flood stayed within the pending bound, and the
    // splitter's changes over the per-owner rate were refused without blame.
    assert!(r.report.void_epochs > 0, "no epoch was voided");
    let limits = dcloud_crdt::Limits::default();
    assert!(r.report.peak_pending <= limits.pending_changes_max);
    assert!(
        r.report
            .rejected
            .get("rate_limited")
            .is_some_and(|n| *n > 0)
    );
    assert!(r.report.rejected.get("malformed").is_some_and(|n| *n > 0));
    // The amplifier was refused, and what honest nodes sent it is bounded
    // (the checker in `r.ok()`); it asked for about 20 whole replicas per
    // peer every 100 ms.
    assert!(r.report.requests_refused > 0);
    let (max, bound) = (
        r.report.amplifier_bytes_max.unwrap(),
        r.report.amplifier_bytes_bound.unwrap(),
    );
    println!("most bytes to the amplifier {max}, bound {bound}");
    assert!(max <= bound);
}

/// Issue 14: two of four regions keep their status inside, under every
/// fault kind; the scope checker (in `r.ok()`) fails a run where an honest
/// node hands the network a byte of a scoped status for a site outside its
/// region, or comes to hold one.
#[test]
fn scoped_regions_keep_their_status_under_every_fault() {
    check("ci-regions", &[1, 2, 3]);
    let r = run(scenario("ci-regions"), 4);
    assert!(r.ok(), "{}", r.report.table());
    let scope = r.report.scope.expect("a scoped scenario reports its scope");
    assert!(scope.leaks.is_empty());
    // Every send decision kept to the scope: the last gate stopped nothing.
    assert_eq!(scope.gate_withheld, 0);
    // The replayer in r1 did send its region's status out: refused there.
    assert!(
        r.report
            .rejected
            .get("out_of_scope")
            .is_some_and(|n| *n > 0)
    );
    // Sites outside the scoped regions receive less than those inside.
    assert!(scope.outside_bytes_per_site_s < scope.inside_bytes_per_site_s);
}

#[test]
fn same_seed_same_run() {
    let sc = scenario("ci-lossy");
    let a = run(sc.clone(), 99);
    let b = run(sc.clone(), 99);
    assert_eq!(a.report, b.report);
    assert_eq!(
        serde_json::to_string(&a.report).unwrap(),
        serde_json::to_string(&b.report).unwrap()
    );
    let c = run(sc, 100);
    assert_ne!(
        a.report.events, c.report.events,
        "another seed, another run"
    );
}

#[test]
fn liveness_checker_catches_a_fleet_that_cannot_converge() {
    // Every message is lost: the policy change stays at its origin.
    let mut sc = scenario("smoke");
    sc.link.loss = 1.0;
    sc.status.interval_ms = 0;
    let r = run(sc, 1);
    assert!(!r.ok());
    assert!(r.liveness.is_some());
    assert!(r.safety.is_empty());
    assert_eq!(r.report.policy[0].reached, 1);
}

#[test]
fn scenarios_parse_and_bad_ones_are_refused() {
    for entry in
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios")).unwrap()
    {
        let path = entry.unwrap().path();
        Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    assert!(Scenario::parse("name = \"x\"\nnodes = 1\n", "inline").is_err());
    assert!(Scenario::parse("name = \"x\"\nbogus = 1\n", "inline").is_err());
    assert!(
        Scenario::parse(
            "name = \"x\"\n[[partition]]\nfrom_ms = 5\nuntil_ms = 1\nfraction = 0.5\n",
            "inline"
        )
        .is_err()
    );
    // What the simulator cannot model is refused, by name.
    let refused = |body: &str, why: &str| {
        let text = format!("name = \"x\"\nnodes = 10\n{body}");
        match Scenario::parse(&text, "inline") {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => assert!(e.to_string().contains(why), "{body}: {e}"),
        }
    };
    refused(
        "warm_start = true\n[[join]]\nat_ms = 100\ncount = 2\n",
        "warm_start cannot model late joiners",
    );
    refused(
        "[[partition]]\nfrom_ms = 5\nuntil_ms = 5\nfraction = 0.5\n",
        "partition 0: until_ms 5 must be after from_ms 5",
    );
    refused(
        "[[partition]]\nfrom_ms = 1\nuntil_ms = 5\nfraction = 0.01\n",
        "partition 0: fraction 0.01 of 10 nodes leaves a side empty",
    );
    refused(
        "[[partition]]\nfrom_ms = 1\nuntil_ms = 5\nfraction = 1.0\n",
        "partition 0: fraction 1 outside 0..1",
    );
    refused(
        "[[policy]]\nat_ms = 1\nnode = 10\n",
        "policy 0: node 10 out of range",
    );
    refused(
        "[[crash]]\nnodes = [12]\nat_ms = 1\n",
        "crash 0: node 12 out of range",
    );
    refused(
        "[[crash]]\nnodes = [1]\nat_ms = 1\nwipe_store = true\n",
        "crash 0: wipe_store needs restart_ms",
    );
    refused(
        "[[join]]\ncount = 2\nat_ms = 50\n[[crash]]\nnodes = [9]\nat_ms = 10\n",
        "crash 0: node 9 joins late",
    );
    refused(
        "[[join]]\ncount = 2\nat_ms = 50\n[[crash]]\ncount = 9\nat_ms = 10\n",
        "crash 0: count 9 exceeds the 8 nodes up at 10 ms",
    );
    refused(
        "[[malicious]]\nnode = 1\nflood = 1\n[[malicious]]\nnode = 1\nforge = true\n",
        "malicious 1: node 1 is already malicious",
    );
    refused(
        "[[malicious]]\nnode = 1\nflood = 1\ninterval_ms = 0\n",
        "malicious 0: interval_ms must be > 0",
    );
    refused(
        "enrolled = 5\n[[malicious]]\nnode = 7\nforge = true\n",
        "malicious 0: node 7 is not enrolled",
    );
    refused(
        "enrolled = 11\n",
        "enrolled 11 exceeds the fleet of 10 nodes",
    );
    refused("check_interval_ms = 0\n", "check_interval_ms must be > 0");
    // The engine's table is the daemon's EngineConfig: validated the same way.
    refused(
        "[engine]\nanti_entropy_interval_ms = 0\n",
        "`engine.anti_entropy_interval_ms`: 0 is outside 50..=600000",
    );
    assert!(
        Scenario::parse("name = \"x\"\n[engine]\ngraft_timout_ms = 1\n", "inline")
            .unwrap_err()
            .to_string()
            .contains("graft_timout_ms")
    );
    // With no [engine] table a scenario runs the daemon's defaults.
    assert_eq!(
        Scenario::parse("name = \"x\"\n", "inline").unwrap().engine,
        dcloud_node::engine::EngineConfig::default()
    );
    // Overlapping partitions are valid.
    Scenario::parse(
        "name = \"x\"\nnodes = 10\n\
         [[partition]]\nfrom_ms = 1\nuntil_ms = 50\nfraction = 0.3\n\
         [[partition]]\nfrom_ms = 20\nuntil_ms = 80\nfraction = 0.3\n",
        "inline",
    )
    .expect("overlapping partitions");
}
