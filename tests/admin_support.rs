//! What the `dcloud-admin` tests share: running the tool and reading its output.

use std::path::Path;
use std::process::Command;

/// What one run of `dcloud-admin` printed.
pub(crate) struct Out {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run `dcloud-admin args` in `dir`.
pub(crate) fn admin(dir: &Path, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_dcloud-admin"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("dcloud-admin runs");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Run `dcloud-admin args`, expect it to fail with `needle` in its error.
#[track_caller]
pub(crate) fn refused(dir: &Path, args: &[&str], needle: &str) {
    let o = admin(dir, args);
    assert!(!o.ok, "dcloud-admin {args:?} succeeded:\n{}", o.text());
    assert!(
        o.stderr.contains(needle),
        "dcloud-admin {args:?}: expected {needle:?} in:\n{}",
        o.text()
    );
}

/// Run `dcloud-admin args`, expect success, return its stdout.
#[track_caller]
pub(crate) fn ok(dir: &Path, args: &[&str]) -> String {
    let o = admin(dir, args);
    assert!(o.ok, "dcloud-admin {args:?} failed:\n{}", o.text());
    o.stdout
}
