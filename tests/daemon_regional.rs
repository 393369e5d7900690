//! A region's scoped policy on real daemons, with `dcloud-admin` as the
//! guide prints it (issue 14).
//!
//! Four sites: site-0 and site-2 in region eu, site-1 and site-3 in us.
//! `dcloud-admin set region:eu db.host VALUE --scoped` is signed; published
//! at a us site it is refused whole, with an error that says where to
//! publish it; published at site-0 with `--wait`, it completes once both eu
//! sites rendered it. The eu sites' rendered config has the value; no byte
//! of it is in a us site's data directory, API answers or log. A second
//! scoped edit signed against a base from a us site is refused (that base
//! cannot hold eu's scoped policy); against a base from an eu site it
//! builds on the first, and both values reach eu.

#[path = "daemon_support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Fleet, admin, admin_ok};

const DB_HOST: &str = "db-eu-4c1e9a7b-only.example";
const POOL: &str = "pool-eu-93d0f2-only";

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The files under `dir` that hold `needle`.
fn holders(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| contains(&b, needle)))
        .collect()
}

/// Everything site `i`'s API answers, as text.
async fn api_text(f: &Fleet, i: usize) -> String {
    let mut all = String::new();
    for path in [
        "/v1/node",
        "/v1/fleet",
        "/v1/policy",
        "/v1/config",
        "/v1/rollout",
        "/v1/policy/snapshot",
        "/metrics",
    ] {
        let r = f
            .http
            .get(format!("http://{}{path}", f.nodes[i].api))
            .send()
            .await
            .expect("the API answers");
        all.push_str(&String::from_utf8_lossy(&r.bytes().await.unwrap()));
    }
    all
}

fn rendered(f: &Fleet, i: usize) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(&f.nodes[i].apply_file).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regions_scoped_policy_reaches_its_sites_and_no_byte_of_it_leaves() {
    let mut f = Fleet::new(4, 211);
    f.start_all();
    f.ready(&[0, 1, 2, 3]).await;
    let c = f.enrol_at(0, &[0, 1, 2, 3]).await;
    f.wait_applied("enrolment", &[0, 1, 2, 3], &Fleet::head(&c))
        .await;
    let (dir, key, urls) = f.admin_files();
    let value = format!("\"{DB_HOST}\"");
    let out = admin_ok(
        &dir,
        &[
            "set",
            "region:eu",
            "db.host",
            &value,
            "--scoped",
            "--from",
            &urls[0],
            "--key",
            &key,
            "--out",
            "host.bundle",
        ],
    );
    assert!(
        out.contains("publish this bundle at a site of region eu"),
        "{out}"
    );
    let (ok, out) = admin(&dir, &["verify", "host.bundle", "--from", &urls[0]]);
    assert!(ok, "{out}");

    // At a us site: refused whole, saying where to publish.
    let before = f.get(1, "/v1/policy").await.expect("policy answers")["heads"].clone();
    let (ok, out) = admin(&dir, &["publish", "host.bundle", "--to", &urls[1]]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("publish the bundle at a site of region eu") && out.contains("in region us"),
        "{out}"
    );
    let after = f.get(1, "/v1/policy").await.expect("policy answers")["heads"].clone();
    assert_eq!(before, after, "nothing of the refused bundle was taken");

    // At an eu site, waited for: complete once both eu sites rendered it.
    admin_ok(
        &dir,
        &[
            "publish",
            "host.bundle",
            "--to",
            &urls[0],
            "--wait",
            "--timeout",
            "30s",
        ],
    );
    for i in [0, 2] {
        f.wait(
            &format!("site-{i} renders eu's scoped policy"),
            Duration::from_secs(30),
            async |f| rendered(f, i)["db"]["host"] == DB_HOST,
        )
        .await;
    }
    // Rollout from a us site is complete too: the eu sites' reports say
    // their region's scoped policy is whole.
    f.wait(
        "rollout complete at site-3",
        Duration::from_secs(30),
        async |f| {
            f.get(3, "/v1/rollout")
                .await
                .is_some_and(|r| r["complete"] == true)
        },
    )
    .await;

    // A second edit: a base from a us site cannot hold eu's scoped policy.
    let (ok, out) = admin(
        &dir,
        &[
            "set",
            "region:eu",
            "db.pool",
            &format!("\"{POOL}\""),
            "--scoped",
            "--from",
            &urls[1],
            "--key",
            &key,
            "--out",
            "pool.bundle",
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("take the base from a site of region eu"),
        "{out}"
    );
    admin_ok(
        &dir,
        &[
            "set",
            "region:eu",
            "db.pool",
            &format!("\"{POOL}\""),
            "--scoped",
            "--from",
            &urls[2],
            "--key",
            &key,
            "--out",
            "pool.bundle",
        ],
    );
    admin_ok(
        &dir,
        &[
            "publish",
            "pool.bundle",
            "--to",
            &urls[2],
            "--wait",
            "--timeout",
            "30s",
        ],
    );
    for i in [0, 2] {
        f.wait(
            &format!("site-{i} renders both scoped values"),
            Duration::from_secs(30),
            async |f| {
                let r = rendered(f, i);
                r["db"]["host"] == DB_HOST && r["db"]["pool"] == POOL
            },
        )
        .await;
    }
    // The us sites applied the commitments too (rollout complete), and hold
    // no byte of either value: not in their data directory, API or log.
    for i in [1, 3] {
        f.wait(
            &format!("site-{i} applied the second commitment"),
            Duration::from_secs(30),
            async |f| {
                f.get(i, "/v1/rollout")
                    .await
                    .is_some_and(|r| r["complete"] == true)
            },
        )
        .await;
        for v in [DB_HOST, POOL] {
            let held = holders(&f.nodes[i].data_dir, v);
            assert!(held.is_empty(), "site-{i} holds {v} in {held:?}");
            assert!(
                !api_text(&f, i).await.contains(v),
                "site-{i}'s API shows {v}"
            );
            assert!(!f.nodes[i].log().contains(v), "site-{i}'s log has {v}");
        }
        assert!(rendered(&f, i).get("db").is_none(), "site-{i}");
    }
    // The control: the eu sites do hold the bytes (the search can find them).
    for i in [0, 2] {
        assert!(
            !holders(&f.nodes[i].data_dir, DB_HOST).is_empty(),
            "site-{i}"
        );
        assert!(
            api_text(&f, i).await.contains(DB_HOST),
            "site-{i}'s config shows it"
        );
    }
}
