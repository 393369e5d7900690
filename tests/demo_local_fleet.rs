//! The demo runs in CI: `examples/local_fleet.rs` is compiled into this test
//! and run against the binaries cargo built for it; its transcript is checked.

#[allow(dead_code)]
#[path = "../examples/local_fleet.rs"]
mod local_fleet;

use std::path::PathBuf;

#[test]
fn local_fleet_demo_rolls_out_and_catches_up() {
    let bins = local_fleet::Bins {
        dcloud: PathBuf::from(env!("CARGO_BIN_EXE_dcloud")),
        admin: PathBuf::from(env!("CARGO_BIN_EXE_dcloud-admin")),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut out = local_fleet::Transcript::default();
    let result = local_fleet::run(&bins, dir.path(), &mut out);
    let text = out.text();
    if let Err(e) = result {
        panic!("demo failed: {e:#}\ntranscript:\n{text}");
    }
    for expected in [
        "trust root v1: signed by",
        "all five daemons answer on their local API",
        "rollout complete: 5/5 sites applied",
        "OK: the bundle verifies and meets its threshold",
        "error: rollout incomplete after",
        "pending: site-5",
        "site-5 caught up in",
        "demo finished in",
    ] {
        assert!(
            text.contains(expected),
            "the transcript lacks {expected:?}:\n{text}"
        );
    }
    // Three rollouts waited for and completed, plus the catch-up.
    assert_eq!(
        text.matches("rollout complete: 5/5 sites applied").count(),
        4,
        "{text}"
    );
    // The fleet table, shown twice, lists every site.
    for site in ["site-1", "site-2", "site-3", "site-4", "site-5"] {
        assert!(text.matches(site).count() >= 3, "{site} missing:\n{text}");
    }
}
