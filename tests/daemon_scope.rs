//! Region-scoped status on real daemons, with `dcloud-admin` as the guide
//! prints it (issue 14).
//!
//! Four sites: site-0 and site-2 in region eu, site-1 and site-3 in us.
//! `dcloud-admin scope eu --status region` is signed against a snapshot of
//! site-0 and published at site-1 (outside eu) with `--wait`, which
//! completes from the eu sites' summaries. Then, from a us site, the fleet
//! view shows the eu sites from their summaries (applied policy, healthy;
//! no addresses, no health details), `dcloud fleet` says so, and a later
//! change published at site-3 with `--wait` completes; inside eu, each site
//! still sees the other's whole status.

#[path = "daemon_support.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::{DCLOUD, Fleet, admin_ok};

/// Node `at`'s row of node `of` in `/v1/fleet`.
async fn row(f: &Fleet, at: usize, of: usize) -> Option<serde_json::Value> {
    let v = f.get(at, "/v1/fleet").await?;
    let id = f.nodes[of].id.to_hex();
    v["nodes"]
        .as_array()?
        .iter()
        .find(|r| r["id"] == id.as_str())
        .cloned()
}

/// A row read from the site's whole status (with its addresses).
fn whole(r: &serde_json::Value) -> bool {
    r["source"] == "status" && !r["addrs"].as_array().unwrap().is_empty()
}

/// Wait until node `at`'s row of node `of` satisfies `ok`.
async fn wait_row(
    f: &Fleet,
    at: usize,
    of: usize,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) {
    f.wait(
        &format!("site-{at} {what} site-{of}"),
        Duration::from_secs(30),
        async |f| row(f, at, of).await.is_some_and(|r| ok(&r)),
    )
    .await;
}

/// Wait until node `at`'s metric `name` satisfies `ok` (metrics are set
/// once a second).
async fn wait_metric(f: &Fleet, at: usize, name: &str, ok: impl Fn(f64) -> bool) {
    f.wait(
        &format!("site-{at}'s {name}"),
        Duration::from_secs(10),
        async |f| {
            f.metrics(at)
                .await
                .and_then(|m| m.get(name).copied())
                .is_some_and(&ok)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_regions_status_stays_in_it_and_the_fleet_view_and_rollout_still_work() {
    let mut f = Fleet::new(4, 201);
    f.start_all();
    f.ready(&[0, 1, 2, 3]).await;
    let c = f.enrol_at(0, &[0, 1, 2, 3]).await;
    f.wait_applied("enrolment", &[0, 1, 2, 3], &Fleet::head(&c))
        .await;
    // Before: each us site holds each eu site's whole status.
    for (us, eu) in [(1, 0), (1, 2), (3, 0), (3, 2)] {
        wait_row(&f, us, eu, "sees the status of", whole).await;
    }

    let (dir, key, urls) = f.admin_files();
    let out = admin_ok(
        &dir,
        &[
            "scope",
            "eu",
            "--status",
            "region",
            "--from",
            &urls[0],
            "--key",
            &key,
            "--out",
            "scope.bundle",
        ],
    );
    assert!(out.contains("stay in the region"), "{out}");
    let verify = admin_ok(&dir, &["verify", "scope.bundle", "--from", &urls[0]]);
    assert!(
        verify.contains("scope eu"),
        "verify names the scope: {verify}"
    );
    // Published outside eu, and waited for: complete once every site
    // applied it, eu's from their summaries.
    admin_ok(
        &dir,
        &[
            "publish",
            "scope.bundle",
            "--to",
            &urls[1],
            "--wait",
            "--timeout",
            "30s",
        ],
    );

    for (us, eu) in [(1, 0), (1, 2), (3, 0), (3, 2)] {
        wait_row(&f, us, eu, "shows from its summary", |r| {
            r["source"] == "summary"
                && r["addrs"].as_array().is_some_and(|a| a.is_empty())
                && r["health"].as_object().is_some_and(|h| h.is_empty())
                && r["healthy"] == true
                && r["up_to_date"] == true
                && r["region"] == "eu"
        })
        .await;
        let one = f
            .get(us, &format!("/v1/nodes/{}", f.nodes[eu].id))
            .await
            .expect("the node row answers");
        assert_eq!(one["source"], "summary", "{one}");
    }
    // Inside eu, the whole status; us sites are not scoped: everyone sees them whole.
    for (at, of) in [(0, 2), (2, 0), (0, 1), (2, 3)] {
        wait_row(&f, at, of, "sees the whole status of", whole).await;
    }
    let out = Command::new(DCLOUD)
        .args(["fleet", "--api", &f.nodes[3].api])
        .output()
        .expect("dcloud fleet");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("2 nodes from summaries")
            && text.contains("site-0")
            && text.contains("site-2"),
        "{text}"
    );

    // A change published in us, waited for there: eu's progress comes from
    // the summaries.
    admin_ok(
        &dir,
        &[
            "set",
            "fleet",
            "log.level",
            "\"debug\"",
            "--from",
            &urls[3],
            "--key",
            &key,
            "--out",
            "set.bundle",
        ],
    );
    admin_ok(
        &dir,
        &[
            "publish",
            "set.bundle",
            "--to",
            &urls[3],
            "--wait",
            "--timeout",
            "30s",
        ],
    );
    let rollout = f.get(3, "/v1/rollout").await.expect("rollout answers");
    assert_eq!(rollout["complete"], true, "{rollout}");
    // The scope made site-1 and site-3 drop the eu statuses they held
    // (the metric is set once a second), and no send had to be withheld.
    for us in [1, 3] {
        wait_metric(&f, us, "dcloud_scope_dropped", |d| d >= 2.0).await;
        let m = f.metrics(us).await.expect("metrics");
        assert_eq!(
            m.get("dcloud_scope_withheld").copied(),
            Some(0.0),
            "site-{us}"
        );
        // us is not scoped: no region links are counted there.
        assert_eq!(
            m.get("dcloud_scope_region_peers").copied(),
            Some(0.0),
            "site-{us}"
        );
    }
    // The eu sites count their link to each other.
    for eu in [0, 2] {
        wait_metric(&f, eu, "dcloud_scope_region_peers", |n| n >= 1.0).await;
    }
}
