//! Sealed secrets on real daemons, made and published with `dcloud-admin`.
//!
//! Four sites: site-0 and site-2 in region eu, site-1 in us (a relay for eu's
//! secrets: the bundle is published at it), site-3 enrolled into eu later.
//!
//! * `secret set region:eu` seals to site-0 and site-2; both write the value
//!   to their secrets file (mode 0600), and nowhere else in their data
//!   directory; the relay's whole data directory (store, write-ahead log,
//!   logs, rendered files), every API answer of every site, and `dcloud
//!   policy` hold no byte sequence of it.
//! * Enrolling site-3 into eu: `verify` (the enrol output) names the secret
//!   site-3 cannot read; site-3 gets the secret sealed after its enrolment,
//!   not the one sealed before.
//! * A bundle whose sealed value was altered in transit is refused by the
//!   node and by `verify`, like any tampered change.
//! * Revoking site-2 names the secrets it could read and how to re-seal them.

#[path = "daemon_support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{DCLOUD, Fleet, admin, admin_ok};

const DB_PASSWORD: &str = "pw-6d1f0a93c2-only-for-eu";
const API_TOKEN: &str = "tok-b84e27d1f5-after-site-3";

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

/// The files under `dir` (other than `except`) that hold `needle`.
fn holders(dir: &Path, needle: &str, except: Option<&Path>) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| Some(p.as_path()) != except)
        .filter(|p| std::fs::read(p).is_ok_and(|b| contains(&b, needle)))
        .collect()
}

fn secrets_file(f: &Fleet, i: usize) -> PathBuf {
    f.nodes[i].data_dir.join("secrets.json")
}

fn read_secrets(f: &Fleet, i: usize) -> Option<serde_json::Value> {
    let bytes = std::fs::read(secrets_file(f, i)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every API answer of node `i`, as text.
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
            .expect("GET");
        all.push_str(&String::from_utf8_lossy(&r.bytes().await.unwrap()));
    }
    for n in &f.nodes {
        if let Some(v) = f.get(i, &format!("/v1/nodes/{}", n.id)).await {
            all.push_str(&v.to_string());
        }
    }
    let out = Command::new(DCLOUD)
        .args(["policy", "--api", &f.nodes[i].api])
        .output()
        .expect("dcloud policy");
    all.push_str(&String::from_utf8_lossy(&out.stdout));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_secrets_reach_only_their_targets() {
    let mut f = Fleet::new(3, 181);
    f.start_all();
    f.ready(&[0, 1, 2]).await;
    let c = f.enrol_at(0, &[0, 1, 2]).await;
    f.wait_applied("enrolment", &[0, 1, 2], &Fleet::head(&c))
        .await;

    let (dir, key, urls) = f.admin_files();
    std::fs::write(dir.join("db.pw"), DB_PASSWORD).unwrap();
    std::fs::write(dir.join("api.tok"), API_TOKEN).unwrap();

    // Seal to region eu (site-0, site-2), publish at the us relay (site-1).
    let out = admin_ok(
        &dir,
        &[
            "secret",
            "set",
            "region:eu",
            "db.password",
            "--from-file",
            "db.pw",
            "--from",
            &urls[1],
            "--key",
            &key,
            "--out",
            "s1.bundle",
        ],
    );
    assert!(out.contains("to 2 site(s)"), "{out}");
    assert!(
        out.contains("site-0") && out.contains("site-2") && !out.contains("site-1 ("),
        "{out}"
    );
    assert!(!out.contains(DB_PASSWORD), "{out}");
    let s1 = std::fs::read(dir.join("s1.bundle")).unwrap();
    assert!(
        !contains(&s1, DB_PASSWORD),
        "the bundle holds ciphertext only"
    );
    admin_ok(
        &dir,
        &[
            "publish",
            "s1.bundle",
            "--to",
            &urls[1],
            "--wait",
            "--timeout",
            "30s",
        ],
    );

    for i in [0, 2] {
        let v = read_secrets(&f, i).expect("a target writes its secrets file");
        assert_eq!(v["db"]["password"], DB_PASSWORD, "site-{i}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(secrets_file(&f, i))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let others = holders(
            &f.nodes[i].data_dir,
            DB_PASSWORD,
            Some(&secrets_file(&f, i)),
        );
        assert!(
            others.is_empty(),
            "site-{i}: plaintext outside the secrets file: {others:?}"
        );
    }
    assert_eq!(read_secrets(&f, 1), Some(serde_json::json!({})));
    let relay = holders(&f.nodes[1].data_dir, DB_PASSWORD, None);
    assert!(relay.is_empty(), "the relay holds plaintext in {relay:?}");
    for i in 0..3 {
        let api = api_text(&f, i).await;
        assert!(!api.contains(DB_PASSWORD), "site-{i}'s API shows the value");
        assert!(!f.nodes[i].log().contains(DB_PASSWORD), "site-{i}'s log");
    }
    let policy = api_text(&f, 1).await;
    assert!(policy.contains("sealed to 2 site(s)"), "{policy}");

    // Enrol site-3 into eu: the enrol output (verify's report) names the
    // secret it cannot read.
    let late = f.add_node("site-3", 184);
    f.nodes[late].bootstrap = vec![f.nodes[0].addr()];
    f.start(late);
    f.ready(&[late]).await;
    let id3 = f.nodes[late].id.to_string();
    let out = admin_ok(
        &dir,
        &[
            "enrol", &id3, "--name", "site-3", "--region", "eu", "--from", &urls[0], "--key", &key,
            "--out", "e.bundle",
        ],
    );
    assert!(
        out.contains("this bundle changes the sites of secret region:eu db.password")
            && out.contains("cannot be read by site-3"),
        "{out}"
    );
    let verify = admin_ok(&dir, &["verify", "e.bundle", "--from", &urls[2]]);
    assert!(verify.contains("cannot be read by site-3"), "{verify}");
    assert!(
        verify.contains("re-seal: dcloud-admin secret set region:eu db.password"),
        "{verify}"
    );
    admin_ok(
        &dir,
        &[
            "publish",
            "e.bundle",
            "--to",
            &urls[0],
            "--wait",
            "--timeout",
            "30s",
        ],
    );

    // A secret sealed after the enrolment reaches site-3; the earlier one does not.
    admin_ok(
        &dir,
        &[
            "secret",
            "set",
            "region:eu",
            "api.token",
            "--from-file",
            "api.tok",
            "--from",
            &urls[0],
            "--key",
            &key,
            "--out",
            "s2.bundle",
        ],
    );
    // Tampered in transit: one hex digit of a ciphertext flipped.
    let s2 = std::fs::read(dir.join("s2.bundle")).unwrap();
    let mut bad = s2.clone();
    let at = bad
        .windows(6)
        .position(|w| w == b"\"ct\":\"")
        .expect("the bundle holds a ciphertext")
        + 6;
    bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(dir.join("bad.bundle"), &bad).unwrap();
    let (ok, text) = admin(&dir, &["publish", "bad.bundle", "--to", &urls[1]]);
    assert!(!ok, "a tampered sealed value is refused: {text}");
    let (ok, text) = admin(&dir, &["verify", "bad.bundle", "--from", &urls[1]]);
    assert!(!ok, "verify refuses it: {text}");
    let (status, body) = f.publish(1, bad).await;
    assert!(
        status != 200 || body.to_string().contains("rejected"),
        "{status} {body}"
    );

    admin_ok(
        &dir,
        &[
            "publish",
            "s2.bundle",
            "--to",
            &urls[1],
            "--wait",
            "--timeout",
            "30s",
        ],
    );
    let v3 = read_secrets(&f, late).expect("site-3 writes its secrets file");
    assert_eq!(v3["api"]["token"], API_TOKEN);
    assert!(v3.get("db").is_none(), "sealed before its enrolment: {v3}");
    assert!(holders(&f.nodes[late].data_dir, DB_PASSWORD, None).is_empty());
    for i in [0, 2] {
        assert_eq!(read_secrets(&f, i).unwrap()["api"]["token"], API_TOKEN);
    }
    assert!(holders(&f.nodes[1].data_dir, API_TOKEN, None).is_empty());

    // Revoking site-2 names what it could read and how to re-seal.
    let out = admin_ok(
        &dir,
        &[
            "revoke", "site-2", "--reason", "stolen", "--from", &urls[0], "--key", &key, "--out",
            "r.bundle",
        ],
    );
    assert!(
        out.contains("site-2 could read 2 sealed secret(s)"),
        "{out}"
    );
    assert!(out.contains("was readable by revoked site-2"), "{out}");
    assert!(out.contains("rotating the values is your call"), "{out}");
    admin_ok(
        &dir,
        &[
            "publish",
            "r.bundle",
            "--to",
            &urls[0],
            "--wait",
            "--timeout",
            "30s",
        ],
    );
    let list = admin_ok(&dir, &["secret", "list", "--from", &urls[0]]);
    assert!(
        list.contains("needs re-sealing: secret region:eu api.token"),
        "{list}"
    );
    // Re-seal: the revoked site is left out.
    let out = admin_ok(
        &dir,
        &[
            "secret",
            "set",
            "region:eu",
            "api.token",
            "--from-file",
            "api.tok",
            "--from",
            &urls[0],
            "--key",
            &key,
            "--out",
            "s3.bundle",
        ],
    );
    let sealed = out
        .lines()
        .find(|l| l.starts_with("sealed region:eu api.token to "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        sealed.contains("to 2 site(s)") && !sealed.contains("site-2"),
        "{sealed}"
    );
    for n in &f.nodes {
        assert!(!n.log().contains(DB_PASSWORD) && !n.log().contains(API_TOKEN));
    }
}
