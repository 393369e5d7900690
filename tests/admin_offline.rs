//! `dcloud-admin` offline: keys, the trust root, signed edits, cosigning and
//! verification, and every bad input answered with its error and no output
//! written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use dcloud_crdt::Bundle;

#[path = "admin_support.rs"]
mod support;

use support::{admin, ok};

/// Runs `args`, expects failure with `needle` in the error, and checks that
/// `out` (the file the command would write) was not written.
#[track_caller]
fn refused(dir: &Path, args: &[&str], needle: &str, out: Option<&str>) {
    let before = out.and_then(|f| std::fs::read(dir.join(f)).ok());
    support::refused(dir, args, needle);
    if let Some(f) = out {
        assert_eq!(
            std::fs::read(dir.join(f)).ok(),
            before,
            "{f} changed although the command was refused"
        );
    }
}

/// Three authority keys a, b, c; trust root v1 needs 2 of them; an empty base.
fn authority(dir: &Path) -> PathBuf {
    for k in ["a", "b", "c"] {
        ok(dir, &["keygen", "--out", &format!("{k}.key")]);
    }
    let text = ok(
        dir,
        &[
            "root",
            "init",
            "--key",
            "a.key",
            "--authority",
            "b.key.pub",
            "--authority",
            "c.key.pub",
            "--threshold",
            "2",
            "--out",
            "chain",
        ],
    );
    assert!(text.contains("INCOMPLETE"), "{text}");
    // Incomplete: it cannot be used yet.
    refused(
        dir,
        &["root", "bundle", "--chain", "chain", "--out", "base"],
        "not fully signed",
        Some("base"),
    );
    let text = ok(
        dir,
        &["root", "cosign", "--chain", "chain", "--key", "b.key"],
    );
    assert!(text.contains("2 of 2 own: complete"), "{text}");
    ok(
        dir,
        &["root", "bundle", "--chain", "chain", "--out", "base"],
    );
    dir.join("base")
}

fn node_id(dir: &Path, name: &str) -> String {
    ok(dir, &["keygen", "--out", name])
        .lines()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let public = node_id(d, "k");
    assert_eq!(public.len(), 64);
    let mode = std::fs::metadata(d.join("k")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(d.join("k.pub")).unwrap().trim(),
        public
    );
    refused(
        d,
        &["keygen", "--out", "k"],
        "refusing to overwrite",
        Some("k"),
    );
}

#[test]
fn threshold_two_edit_is_signed_cosigned_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    authority(d);
    let n1 = node_id(d, "n1.key");
    let n2 = node_id(d, "n2.key");
    // One signature of two: written, but verify says it is not ready.
    let text = ok(
        d,
        &[
            "enrol",
            &n1,
            "--name",
            "paris-1",
            "--region",
            "eu",
            "--label",
            "tier=edge",
            "--base",
            "base",
            "--key",
            "a.key",
            "--out",
            "e1",
        ],
    );
    assert!(
        text.contains("1 more authority signature(s) needed"),
        "{text}"
    );
    let o = admin(d, &["verify", "e1", "--base", "base"]);
    assert!(!o.ok);
    assert!(
        o.stdout.contains("threshold: NOT met (1 of 2"),
        "{}",
        o.text()
    );
    assert!(o.stderr.contains("does not verify"), "{}", o.text());
    // The second admin cosigns; now it verifies and shows what it does.
    let text = ok(d, &["cosign", "e1", "--key", "b.key"]);
    assert!(text.contains("signed 1 change(s)"), "{text}");
    let text = ok(d, &["verify", "e1", "--base", "base", "--chain", "chain"]);
    assert!(text.contains("threshold: met (2 of 2"), "{text}");
    assert!(text.contains("paris-1"), "{text}");
    assert!(text.contains("before: (not an active member)"), "{text}");
    // Cosigning twice with the same key is refused and changes nothing.
    refused(
        d,
        &["cosign", "e1", "--key", "b.key"],
        "already signed",
        Some("e1"),
    );
    // Chained edits: enrol a second site, then a site-level override by name,
    // signed by two keys at once.
    ok(
        d,
        &[
            "enrol", &n2, "--name", "rome-1", "--region", "eu", "--base", "base", "--base", "e1",
            "--key", "a.key", "--key", "c.key", "--out", "e2",
        ],
    );
    ok(
        d,
        &[
            "set",
            "region:eu",
            "net.mtu",
            "9000",
            "--base",
            "base",
            "--base",
            "e1",
            "--base",
            "e2",
            "--key",
            "b.key",
            "--key",
            "c.key",
            "--out",
            "s1",
        ],
    );
    let text = ok(
        d,
        &[
            "set",
            "site:paris-1",
            "net.mtu",
            "1400",
            "--base",
            "base",
            "--base",
            "e1",
            "--base",
            "e2",
            "--base",
            "s1",
            "--key",
            "a.key",
            "--key",
            "b.key",
            "--out",
            "s2",
        ],
    );
    assert!(text.contains(r#"before: {"net":{"mtu":9000}}"#), "{text}");
    assert!(text.contains(r#"after:  {"net":{"mtu":1400}}"#), "{text}");
    assert!(text.contains("sites affected: 1"), "{text}");
    let text = ok(
        d,
        &[
            "unset",
            "region:eu",
            "net",
            "--base",
            "base",
            "--base",
            "e1",
            "--base",
            "e2",
            "--base",
            "s1",
            "--base",
            "s2",
            "--key",
            "a.key",
            "--key",
            "b.key",
            "--out",
            "u1",
        ],
    );
    assert!(
        text.contains("region eu net.mtu: 9000 -> (unset)"),
        "{text}"
    );
    let text = ok(
        d,
        &[
            "revoke", "rome-1", "--reason", "stolen", "--base", "base", "--base", "e1", "--base",
            "e2", "--key", "a.key", "--key", "b.key", "--out", "r1",
        ],
    );
    assert!(text.contains("after:  (not an active member)"), "{text}");
}

#[test]
fn keys_are_rotated_with_thresholds_of_old_and_new() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    authority(d);
    node_id(d, "d.key");
    node_id(d, "x.key");
    // v2 = {b, c, d}, threshold 2: b alone is not enough for either side.
    let text = ok(
        d,
        &[
            "root",
            "rotate",
            "--chain",
            "chain",
            "--new-key",
            "b.key.pub",
            "--new-key",
            "c.key.pub",
            "--new-key",
            "d.key.pub",
            "--threshold",
            "2",
            "--key",
            "b.key",
            "--base",
            "base",
            "--out",
            "chain2",
        ],
    );
    assert!(text.contains("INCOMPLETE"), "{text}");
    assert!(text.contains("grandfathered: 0 policy head(s)"), "{text}");
    refused(
        d,
        &["root", "show", "--chain", "chain2"],
        "not fully signed",
        None,
    );
    // A key of neither root cannot cosign.
    refused(
        d,
        &["root", "cosign", "--chain", "chain2", "--key", "x.key"],
        "not an authority key",
        Some("chain2"),
    );
    let text = ok(
        d,
        &["root", "cosign", "--chain", "chain2", "--key", "c.key"],
    );
    assert!(text.contains("complete"), "{text}");
    ok(d, &["root", "show", "--chain", "chain2"]);
    // Edits under v2, carried with the new root; a (dropped) cannot sign them.
    let n1 = node_id(d, "n1.key");
    refused(
        d,
        &[
            "enrol", &n1, "--name", "a", "--region", "eu", "--base", "base", "--chain", "chain2",
            "--key", "a.key", "--out", "e",
        ],
        "not an authority key of trust root v2",
        Some("e"),
    );
    ok(
        d,
        &[
            "enrol", &n1, "--name", "a", "--region", "eu", "--base", "base", "--chain", "chain2",
            "--key", "d.key", "--key", "c.key", "--out", "e",
        ],
    );
    let text = ok(d, &["verify", "e", "--base", "base"]);
    assert!(text.contains("rotation: trust root v2"), "{text}");
    assert!(text.contains("signed under trust root v2"), "{text}");
    // A change signed under v1 after the rotation (v2 grandfathers nothing of
    // it): refused once v2 is known, naming the rotation.
    ok(
        d,
        &[
            "set", "fleet", "x", "1", "--base", "base", "--key", "a.key", "--key", "b.key",
            "--out", "old",
        ],
    );
    ok(
        d,
        &["root", "bundle", "--chain", "chain2", "--out", "root2"],
    );
    let o = admin(d, &["verify", "old", "--base", "base", "--base", "root2"]);
    assert!(!o.ok, "{}", o.text());
    assert!(
        o.stdout.contains("superseded by the rotation to v2"),
        "{}",
        o.text()
    );
    // Threshold zero or above the key count is refused at once.
    refused(
        d,
        &[
            "root",
            "rotate",
            "--chain",
            "chain2",
            "--new-key",
            "d.key.pub",
            "--threshold",
            "2",
            "--key",
            "d.key",
            "--base",
            "base",
            "--out",
            "chain3",
        ],
        "threshold 2 with 1 distinct key",
        Some("chain3"),
    );
    // A rotation must name the policy it keeps.
    refused(
        d,
        &[
            "root",
            "rotate",
            "--chain",
            "chain2",
            "--new-key",
            "d.key.pub",
            "--threshold",
            "1",
            "--key",
            "d.key",
            "--out",
            "chain3",
        ],
        "a rotation must name the policy it keeps: pass --from URL of a node that holds the whole policy, or --base FILE",
        Some("chain3"),
    );
    // The kept heads are shown by `root show`.
    ok(
        d,
        &[
            "root",
            "rotate",
            "--chain",
            "chain2",
            "--new-key",
            "d.key.pub",
            "--threshold",
            "1",
            "--key",
            "d.key",
            "--key",
            "c.key",
            "--base",
            "base",
            "--base",
            "e",
            "--out",
            "chain3",
        ],
    );
    let text = ok(d, &["root", "show", "--chain", "chain3"]);
    assert!(
        text.contains("trust root v3: threshold 1 of 1 keys")
            && text.contains("grandfathers 1 policy head(s)"),
        "{text}"
    );
}

#[test]
fn a_sites_file_with_a_bad_row_is_named_by_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    authority(d);
    let ids: Vec<String> = (0..4).map(|i| node_id(d, &format!("n{i}.key"))).collect();
    let row = |id: &str, name: &str| {
        format!("[[site]]\nid = \"{id}\"\nname = \"{name}\"\nregion = \"eu\"\n\n")
    };
    let enrol = [
        "enrol",
        "--from-file",
        "sites.toml",
        "--base",
        "base",
        "--key",
        "a.key",
        "--out",
        "sites.bundle",
    ];
    // Each row is 5 lines; row k's id is on line 5k+2 (k from 0).
    let cases: Vec<(String, usize, &str)> = vec![
        (
            format!(
                "{}{}[[site]]\nid = \"zz\"\nname = \"x\"\nregion = \"eu\"\n",
                row(&ids[0], "a"),
                row(&ids[1], "b")
            ),
            12,
            "is not 64 hex digits",
        ),
        (
            format!(
                "{}{}{}",
                row(&ids[0], "a"),
                row(&ids[1], "b"),
                row(&ids[0], "c")
            ),
            12,
            "listed twice (first on line 2)",
        ),
        (
            format!(
                "{}{}{}",
                row(&ids[0], "a"),
                row(&ids[1], "b"),
                row(&ids[2], "a")
            ),
            13,
            "given twice (first on line 3)",
        ),
        (
            format!(
                "{}{}",
                row(&ids[0], "a"),
                row(&ids[1], "b").replace("\"eu\"", "\"e/u\"")
            ),
            9,
            "invalid region",
        ),
        (
            format!(
                "{}[[site]]\nid = \"{}\"\nname = \"b\"\nregion = \"eu\"\nlabels = {{ \"t ier\" = \"x\" }}\n",
                row(&ids[0], "a"),
                ids[1]
            ),
            10,
            "invalid label",
        ),
        (
            format!(
                "{}[[site]]\nid = \"{}\"\nname = \"b\"\nzone = \"eu\"\n",
                row(&ids[0], "a"),
                ids[1]
            ),
            9,
            "zone",
        ),
    ];
    for (text, line, needle) in cases {
        std::fs::write(d.join("sites.toml"), &text).unwrap();
        let o = admin(d, &enrol);
        assert!(!o.ok, "{}\n{text}", o.text());
        assert!(
            o.stderr.contains(&format!("sites.toml line {line}: ")) && o.stderr.contains(needle),
            "expected line {line} and {needle:?}:\n{}\n{text}",
            o.text()
        );
        assert!(
            !d.join("sites.bundle").exists(),
            "a bundle was written:\n{text}"
        );
    }
    // A missing field names the row's table.
    std::fs::write(
        d.join("sites.toml"),
        format!(
            "{}[[site]]\nid = \"{}\"\nname = \"b\"\n",
            row(&ids[0], "a"),
            ids[1]
        ),
    )
    .unwrap();
    let o = admin(d, &enrol);
    assert!(
        !o.ok && o.stderr.contains("sites.toml line ") && o.stderr.contains("region"),
        "{}",
        o.text()
    );
    assert!(!d.join("sites.bundle").exists());
    // A good file: one change enrolling all four; a revoked site is refused by line.
    let good: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| row(id, &format!("s{i}")))
        .collect();
    std::fs::write(d.join("sites.toml"), &good).unwrap();
    let text = ok(d, &[&enrol[..], &["--key", "b.key"]].concat());
    assert!(
        text.contains("enrolled 4 site(s) from sites.toml in one change"),
        "{text}"
    );
    let b = Bundle::decode(&std::fs::read(d.join("sites.bundle")).unwrap(), 1 << 20).unwrap();
    assert_eq!(b.changes.len(), 1);
    ok(
        d,
        &[
            "revoke",
            &ids[3],
            "--reason",
            "lost",
            "--base",
            "base",
            "--base",
            "sites.bundle",
            "--key",
            "a.key",
            "--key",
            "b.key",
            "--out",
            "rev",
        ],
    );
    std::fs::write(d.join("more.toml"), row(&ids[3], "again")).unwrap();
    let o = admin(
        d,
        &[
            "enrol",
            "--from-file",
            "more.toml",
            "--base",
            "base",
            "--base",
            "sites.bundle",
            "--base",
            "rev",
            "--key",
            "a.key",
            "--out",
            "more.bundle",
        ],
    );
    assert!(!o.ok, "{}", o.text());
    assert!(
        o.stderr.contains("more.toml line 2: node") && o.stderr.contains("was revoked"),
        "{}",
        o.text()
    );
    assert!(!d.join("more.bundle").exists());
    // A rotation made from a snapshot without the enrolments would drop them:
    // verify (and publish) refuse it against a base that holds them.
    ok(
        d,
        &[
            "root",
            "rotate",
            "--chain",
            "chain",
            "--new-key",
            "b.key.pub",
            "--threshold",
            "1",
            "--key",
            "a.key",
            "--key",
            "b.key",
            "--base",
            "base",
            "--out",
            "chain-x",
        ],
    );
    ok(d, &["root", "bundle", "--chain", "chain-x", "--out", "rx"]);
    let o = admin(
        d,
        &["verify", "rx", "--base", "base", "--base", "sites.bundle"],
    );
    assert!(!o.ok, "{}", o.text());
    assert!(
        o.stdout.contains("does not grandfather 1 policy change(s)"),
        "{}",
        o.text()
    );
    // The single-site form still works, and cannot be mixed with a file.
    ok(
        d,
        &[
            "enrol", &ids[2], "--name", "solo", "--region", "eu", "--base", "base", "--key",
            "a.key", "--out", "solo",
        ],
    );
    let o = admin(
        d,
        &[
            "enrol",
            &ids[2],
            "--from-file",
            "sites.toml",
            "--base",
            "base",
            "--key",
            "a.key",
            "--out",
            "mixed",
        ],
    );
    assert!(
        !o.ok && o.stderr.contains("cannot be used with"),
        "{}",
        o.text()
    );
}

#[test]
fn bad_inputs_are_refused_with_their_reason_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    authority(d);
    let n1 = node_id(d, "n1.key");
    let base = ["--base", "base"];
    let enrol = |key: &str| -> Vec<String> {
        let mut v: Vec<String> = ["enrol", &n1, "--name", "p", "--region", "eu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(base.iter().map(|s| s.to_string()));
        v.extend(["--key".into(), key.into(), "--out".into(), "out".into()]);
        v
    };
    let run = |args: Vec<String>, needle: &str| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(d, &a, needle, Some("out"));
        assert!(!d.join("out").exists());
    };
    // Unreadable key.
    run(enrol("missing.key"), "missing.key");
    // A key others can read.
    node_id(d, "loose.key");
    std::fs::set_permissions(d.join("loose.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    run(enrol("loose.key"), "chmod 600");
    // Not a key file.
    std::fs::write(d.join("junk.key"), "hello\n").unwrap();
    std::fs::set_permissions(d.join("junk.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    run(enrol("junk.key"), "malformed");
    // A key that is not an authority key.
    run(enrol("n1.key"), "not an authority key of trust root v1");
    // A value that is not JSON.
    run(
        [
            "set",
            "fleet",
            "log.level",
            "info",
            "--base",
            "base",
            "--key",
            "a.key",
            "--out",
            "out",
        ]
        .map(String::from)
        .to_vec(),
        "is not JSON",
    );
    // A bad level, path, unknown site, unset of nothing.
    run(
        [
            "set", "planet", "x", "1", "--base", "base", "--key", "a.key", "--out", "out",
        ]
        .map(String::from)
        .to_vec(),
        "is not one of fleet",
    );
    run(
        [
            "set", "fleet", "a/b", "1", "--base", "base", "--key", "a.key", "--out", "out",
        ]
        .map(String::from)
        .to_vec(),
        "invalid path",
    );
    run(
        [
            "set",
            "site:nowhere",
            "x",
            "1",
            "--base",
            "base",
            "--key",
            "a.key",
            "--out",
            "out",
        ]
        .map(String::from)
        .to_vec(),
        "no enrolled site",
    );
    run(
        [
            "unset", "fleet", "x", "--base", "base", "--key", "a.key", "--out", "out",
        ]
        .map(String::from)
        .to_vec(),
        "has no value at x",
    );
    // No base, a base that is not a bundle.
    run(
        ["set", "fleet", "x", "1", "--key", "a.key", "--out", "out"]
            .map(String::from)
            .to_vec(),
        "no base given",
    );
    std::fs::write(d.join("garbage"), b"not a bundle").unwrap();
    run(
        [
            "set", "fleet", "x", "1", "--base", "garbage", "--key", "a.key", "--out", "out",
        ]
        .map(String::from)
        .to_vec(),
        "not a valid bundle",
    );
    // A base carrying a change with a forged signature does not verify.
    ok(
        d,
        &[
            "set", "fleet", "x", "1", "--base", "base", "--key", "a.key", "--key", "b.key",
            "--out", "good",
        ],
    );
    let mut b = Bundle::decode(&std::fs::read(d.join("good")).unwrap(), 1 << 20).unwrap();
    b.changes[0].sigs[0].sig.0[40] ^= 1;
    std::fs::write(d.join("forged"), b.encode()).unwrap();
    run(
        [
            "set", "fleet", "y", "1", "--base", "base", "--base", "forged", "--key", "a.key",
            "--out", "out",
        ]
        .map(String::from)
        .to_vec(),
        "does not verify",
    );
    // verify names the forged signature; cosign of it is refused before signing.
    let o = admin(d, &["verify", "forged", "--base", "base"]);
    assert!(!o.ok);
    assert!(o.stdout.contains("INVALID"), "{}", o.text());
    // Another authority's bundle does not verify against our chain.
    let other = tempfile::tempdir().unwrap();
    authority(other.path());
    ok(
        other.path(),
        &[
            "set", "fleet", "x", "2", "--base", "base", "--key", "a.key", "--key", "b.key",
            "--out", "theirs",
        ],
    );
    std::fs::copy(other.path().join("theirs"), d.join("theirs")).unwrap();
    let o = admin(d, &["verify", "theirs", "--chain", "chain"]);
    assert!(!o.ok, "{}", o.text());
    assert!(o.text().contains("differs"), "{}", o.text());
    // Publishing to a node that does not run.
    let o = admin(d, &["publish", "good", "--to", "http://127.0.0.1:9"]);
    assert!(!o.ok);
    assert!(
        o.stderr.contains("no dcloud daemon answering"),
        "{}",
        o.text()
    );
}
