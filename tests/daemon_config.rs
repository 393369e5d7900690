//! `dcloud run` refuses bad configuration at start, naming the file, the key
//! and the reason; flags override the file.

#[path = "daemon_support.rs"]
mod support;

use std::process::Command;

use support::{DCLOUD, init_node};

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(DCLOUD)
        .arg("run")
        .args(args)
        .env("DCLOUD_LOG", "error")
        .output()
        .expect("run dcloud");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_config_fails_at_start_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    let cfg_s = cfg.to_str().unwrap();

    std::fs::write(
        &cfg,
        "data_dir = \"/tmp/x\"\ntrust_root = \"/tmp/r\"\n[engine]\nstatus_refresh_interval_ms = 1\n",
    )
    .unwrap();
    let (ok, err) = run(&["--config", cfg_s]);
    assert!(!ok);
    assert!(
        err.contains("node.toml")
            && err.contains("`engine.status_refresh_interval_ms`")
            && err.contains("1 is outside 50..=86400000"),
        "{err}"
    );
    // The heartbeat is gone (liveness is membership's): its old key is
    // refused by name, and so is a membership key out of range.
    std::fs::write(
        &cfg,
        "data_dir = \"/tmp/x\"\ntrust_root = \"/tmp/r\"\n[engine]\nheartbeat_interval_ms = 15000\n",
    )
    .unwrap();
    let (ok, err) = run(&["--config", cfg_s]);
    assert!(!ok);
    assert!(err.contains("heartbeat_interval_ms"), "{err}");
    std::fs::write(
        &cfg,
        "data_dir = \"/tmp/x\"\ntrust_root = \"/tmp/r\"\n[engine.membership]\nprobe_attempts = 0\n",
    )
    .unwrap();
    let (ok, err) = run(&["--config", cfg_s]);
    assert!(!ok);
    assert!(
        err.contains("`engine.membership.probe_attempts`") && err.contains("0 is outside 1..=100"),
        "{err}"
    );
    // A message bound the daemon's 8 MiB frames could not carry.
    std::fs::write(
        &cfg,
        "data_dir = \"/tmp/x\"\ntrust_root = \"/tmp/r\"\n[engine.wire]\nmessage_size_max_bytes = 16777216\n",
    )
    .unwrap();
    let (ok, err) = run(&["--config", cfg_s]);
    assert!(!ok);
    assert!(
        err.contains("`engine.wire.message_size_max_bytes`")
            && err.contains("over the daemon's frame bound"),
        "{err}"
    );
    // The engine's table refuses a key it does not know, by name.
    std::fs::write(
        &cfg,
        "data_dir = \"/tmp/x\"\ntrust_root = \"/tmp/r\"\n[engine]\ngraft_timout_ms = 1\n",
    )
    .unwrap();
    let (ok, err) = run(&["--config", cfg_s]);
    assert!(!ok);
    assert!(err.contains("graft_timout_ms"), "{err}");

    std::fs::write(&cfg, "data_dir = \"/tmp/x\"\nlisten = \"not a list\"\n").unwrap();
    let (ok, err) = run(&["--config", cfg_s]);
    assert!(!ok);
    assert!(err.contains("node.toml") && err.contains("listen"), "{err}");

    std::fs::write(&cfg, "data_dir = \"/tmp/x\"\n").unwrap();
    let (ok, err) = run(&["--config", cfg_s]);
    assert!(!ok);
    assert!(err.contains("`trust_root` is required"), "{err}");

    // A flag overrides the file's (valid) value with an invalid one.
    std::fs::write(&cfg, "data_dir = \"/tmp/x\"\ntrust_root = \"/tmp/r\"\n").unwrap();
    let (ok, err) = run(&["--config", cfg_s, "--api", "nowhere"]);
    assert!(!ok);
    assert!(err.contains("`api`") && err.contains("nowhere"), "{err}");

    // No key in the data directory: says how to make one.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, err) = run(&[
        "--data-dir",
        empty.to_str().unwrap(),
        "--trust-root",
        "/nonexistent",
        "--api",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    assert!(!ok);
    assert!(err.contains("dcloud init"), "{err}");

    // A trust root file that is not one.
    let data = dir.path().join("data");
    init_node(&data);
    let bad_root = dir.path().join("root.chain");
    std::fs::write(&bad_root, b"garbage").unwrap();
    let (ok, err) = run(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--trust-root",
        bad_root.to_str().unwrap(),
        "--api",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    assert!(!ok);
    assert!(
        err.contains("trust root file") && err.contains("root.chain"),
        "{err}"
    );
}
