//! A real local fleet, end to end: `cargo run --release --example local_fleet`.
//!
//! Starts five `dcloud` daemons on loopback, each with its own data directory,
//! creates an authority (a key and trust root v1), enrols the five sites, signs
//! and publishes a policy and watches it reach every site, then stops one site,
//! changes the policy without it, restarts it and watches it catch up. Every
//! step runs the real binaries, `dcloud` and `dcloud-admin`, and prints the
//! command and what it answered. Every process is stopped at the end, and also
//! on error (each daemon is killed when its handle is dropped).
//!
//! The binaries are taken from beside this example (`target/<profile>/`), built
//! first with `cargo build -p dcloud-node --bins` when cargo runs the example;
//! `DCLOUD_BIN_DIR` overrides where they are found.

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Sites in the demo fleet.
const SITES: usize = 5;
/// Bound on any one wait of the demo.
const STEP_TIMEOUT_MS: u64 = 60_000;
/// How often a condition is polled.
const POLL_INTERVAL_MS: u64 = 100;

/// Where the two binaries are.
pub(crate) struct Bins {
    pub(crate) dcloud: PathBuf,
    pub(crate) admin: PathBuf,
}

/// Everything the demo printed, so that a test can check it.
#[derive(Default)]
pub(crate) struct Transcript {
    pub(crate) lines: Vec<String>,
    pub(crate) quiet: bool,
}

impl Transcript {
    fn say(&mut self, text: impl AsRef<str>) {
        for line in text.as_ref().lines() {
            if !self.quiet {
                println!("{line}");
            }
            self.lines.push(line.to_string());
        }
    }

    fn step(&mut self, title: &str) {
        self.say("");
        self.say(format!("== {title}"));
    }

    /// The whole transcript as text.
    #[allow(dead_code)]
    pub(crate) fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// One running daemon; killed when dropped.
pub(crate) struct Site {
    pub(crate) name: String,
    pub(crate) region: &'static str,
    pub(crate) dir: PathBuf,
    pub(crate) id: String,
    pub(crate) p2p_port: u16,
    pub(crate) api_port: u16,
    pub(crate) child: Option<Child>,
    /// Command the daemon runs after rendering its config (None: render only).
    pub(crate) apply_command: Option<String>,
}

impl Site {
    pub(crate) fn api(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub(crate) fn listen(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.p2p_port)
    }

    pub(crate) fn start(
        &mut self,
        bins: &Bins,
        trust_root: &Path,
        bootstrap: &[String],
    ) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        let child = Command::new(&bins.dcloud)
            .arg("run")
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--trust-root")
            .arg(trust_root)
            .arg("--listen")
            .arg(self.listen())
            .arg("--api")
            .arg(self.api())
            .arg("--bootstrap")
            .arg(bootstrap.join(","))
            .arg("--mdns")
            .arg("false")
            .arg("--apply-file")
            .arg(self.dir.join("config.json"))
            .args(
                self.apply_command
                    .iter()
                    .flat_map(|c| ["--apply-command".to_string(), c.clone()]),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bins.dcloud.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Stop with SIGTERM, then SIGKILL if it has not exited within the bound.
    pub(crate) fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
        child.kill()?;
        child.wait()?;
        bail!("{} did not stop within 10 s of SIGTERM; killed", self.name)
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Run a command, print it and its output, fail on a non-zero exit.
fn run_cmd(out: &mut Transcript, dir: &Path, program: &Path, args: &[&str]) -> Result<String> {
    let (text, ok) = run_cmd_status(out, dir, program, args)?;
    if !ok {
        bail!("command failed: {} {}", program.display(), args.join(" "));
    }
    Ok(text)
}

/// Run a command, print it and its output; return the output and whether it succeeded.
fn run_cmd_status(
    out: &mut Transcript,
    dir: &Path,
    program: &Path,
    args: &[&str],
) -> Result<(String, bool)> {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            let a = a.replace(&format!("{}/", dir.display()), "");
            if a.contains(['"', ' ', '{']) {
                format!("'{a}'")
            } else if a.len() == 64 && a.chars().all(|c| c.is_ascii_hexdigit()) {
                format!("{}…", &a[..8])
            } else {
                a
            }
        })
        .collect();
    out.say(format!("$ {name} {}", shown.join(" ")));
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    for line in stdout.lines().chain(stderr.lines()) {
        out.say(format!("    {line}"));
    }
    Ok((stdout, output.status.success()))
}

/// Poll `check` until it returns true or the step bound passes.
pub(crate) fn wait_until(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(STEP_TIMEOUT_MS);
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {STEP_TIMEOUT_MS} ms waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

/// GET a JSON document from a node's API (None when it does not answer).
pub(crate) fn get_json(rt: &tokio::runtime::Runtime, url: &str) -> Option<serde_json::Value> {
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .ok()?;
        let resp = client.get(url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    })
}

/// The demo: every step, in order. `dir` is an empty scratch directory.
pub(crate) fn run(bins: &Bins, dir: &Path, out: &mut Transcript) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let start = Instant::now();
    let admin = bins.admin.as_path();
    let dcloud = bins.dcloud.as_path();

    out.step("1. An authority: one admin key and trust root v1 (threshold 1)");
    run_cmd(out, dir, admin, &["keygen", "--out", "admin.key"])?;
    run_cmd(
        out,
        dir,
        admin,
        &[
            "root",
            "init",
            "--key",
            "admin.key",
            "--threshold",
            "1",
            "--out",
            "trust.chain",
        ],
    )?;
    let trust = dir.join("trust.chain");

    out.step("2. Five sites: a data directory and a node key each, then the daemons");
    let ports = free_ports(2 * SITES)?;
    let mut sites: Vec<Site> = Vec::new();
    for i in 0..SITES {
        let name = format!("site-{}", i + 1);
        let site_dir = dir.join(&name);
        let id = run_cmd(
            out,
            dir,
            dcloud,
            &[
                "init",
                "--data-dir",
                site_dir.to_str().context("utf-8 path")?,
            ],
        )?
        .trim()
        .to_string();
        sites.push(Site {
            name,
            region: if i < 3 { "eu-west" } else { "us-east" },
            dir: site_dir,
            id,
            p2p_port: ports[2 * i],
            api_port: ports[2 * i + 1],
            child: None,
            apply_command: None,
        });
    }
    let addrs: Vec<String> = sites.iter().map(Site::listen).collect();
    for (i, site) in sites.iter_mut().enumerate() {
        let others: Vec<String> = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| a.clone())
            .collect();
        site.start(bins, &trust, &others)?;
        out.say(format!(
            "started {} (pid {}): p2p {}  api {}",
            site.name,
            site.child.as_ref().map_or(0, Child::id),
            site.listen(),
            site.url()
        ));
    }
    for site in &sites {
        let url = format!("{}/v1/node", site.url());
        wait_until(
            &format!("{} to answer on {}", site.name, site.url()),
            || Ok(get_json(&rt, &url).is_some()),
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{} log:\n{}", site.name, site.log_tail()))?;
    }
    out.say("all five daemons answer on their local API");

    out.step(
        "3. Enrol the five sites: one batch file, one signed change (against site-1's snapshot)",
    );
    let url1 = sites[0].url();
    // One row per site; all five are enrolled in one signed change.
    let mut sites_toml = String::new();
    for site in &sites {
        sites_toml.push_str(&format!(
            "[[site]]\nid = \"{}\"\nname = \"{}\"\nregion = \"{}\"\n\n",
            site.id, site.name, site.region
        ));
    }
    std::fs::write(dir.join("sites.toml"), &sites_toml)?;
    out.say(format!(
        "sites.toml ({} [[site]] tables: id, name, region):",
        sites.len()
    ));
    for line in sites_toml.lines().take(4) {
        let line = match line.strip_prefix("id = \"") {
            Some(id) => format!("id = \"{}…\"", &id[..8]),
            None => line.to_string(),
        };
        out.say(format!("    {line}"));
    }
    out.say("    ...");
    run_cmd(
        out,
        dir,
        admin,
        &[
            "enrol",
            "--from-file",
            "sites.toml",
            "--from",
            &url1,
            "--key",
            "admin.key",
            "--out",
            "enrol.bundle",
        ],
    )?;
    run_cmd(
        out,
        dir,
        admin,
        &[
            "publish",
            "enrol.bundle",
            "--to",
            &url1,
            "--wait",
            "--timeout",
            "60s",
        ],
    )?;

    out.step("4. Sign a policy, check what it does, publish it, watch the rollout");
    run_cmd(
        out,
        dir,
        admin,
        &[
            "set",
            "fleet",
            "log.level",
            "\"info\"",
            "--from",
            &url1,
            "--key",
            "admin.key",
            "--out",
            "log.bundle",
        ],
    )?;
    run_cmd(
        out,
        dir,
        admin,
        &[
            "publish",
            "log.bundle",
            "--to",
            &url1,
            "--wait",
            "--timeout",
            "60s",
        ],
    )?;
    run_cmd(
        out,
        dir,
        admin,
        &[
            "set",
            "region:us-east",
            "net.mtu",
            "9000",
            "--from",
            &url1,
            "--key",
            "admin.key",
            "--out",
            "mtu.bundle",
        ],
    )?;
    run_cmd(out, dir, admin, &["verify", "mtu.bundle", "--from", &url1])?;
    run_cmd(
        out,
        dir,
        admin,
        &[
            "publish",
            "mtu.bundle",
            "--to",
            &url1,
            "--wait",
            "--timeout",
            "60s",
        ],
    )?;
    let api1 = sites[0].api();
    run_cmd(out, dir, dcloud, &["fleet", "--api", &api1])?;
    run_cmd(out, dir, dcloud, &["config", "--api", &sites[4].api()])?;

    out.step("5. Stop site-5, change the policy without it");
    sites[4].stop()?;
    out.say("stopped site-5 (SIGTERM)");
    run_cmd(
        out,
        dir,
        admin,
        &[
            "set",
            "fleet",
            "feature.canary",
            "true",
            "--from",
            &url1,
            "--key",
            "admin.key",
            "--out",
            "canary.bundle",
        ],
    )?;
    let (_, ok) = run_cmd_status(
        out,
        dir,
        admin,
        &[
            "publish",
            "canary.bundle",
            "--to",
            &url1,
            "--wait",
            "--timeout",
            "3s",
        ],
    )?;
    if ok {
        bail!("the rollout completed while site-5 was stopped");
    }
    out.say("as expected: publish --wait exits non-zero while site-5 is down");

    out.step("6. Restart site-5 and watch it catch up");
    let others: Vec<String> = addrs[..SITES - 1].to_vec();
    sites[4].start(bins, &trust, &others)?;
    out.say(format!(
        "restarted site-5 (pid {})",
        sites[4].child.as_ref().map_or(0, Child::id)
    ));
    let caught_up = Instant::now();
    run_cmd(
        out,
        dir,
        admin,
        &["watch", "canary.bundle", "--to", &url1, "--timeout", "60s"],
    )?;
    let config5 = get_json(&rt, &format!("{}/v1/config", sites[4].url()))
        .context("site-5 does not answer")?;
    if config5["config"]["feature"]["canary"] != serde_json::json!(true) {
        bail!("site-5's effective config lacks the change: {config5}");
    }
    out.say(format!(
        "site-5 caught up in {} ms: its effective config is {}",
        caught_up.elapsed().as_millis(),
        config5["config"]
    ));
    run_cmd(out, dir, dcloud, &["fleet", "--api", &api1])?;

    out.step("7. Stop every daemon");
    for site in sites.iter_mut() {
        site.stop()?;
    }
    out.say(format!(
        "demo finished in {:.1} s: {SITES} daemons stopped, nothing left running",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Find the binaries beside this example, building them first when run by cargo.
#[allow(dead_code)]
fn locate_bins() -> Result<Bins> {
    if let Some(dir) = std::env::var_os("DCLOUD_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return Ok(Bins {
            dcloud: dir.join("dcloud"),
            admin: dir.join("dcloud-admin"),
        });
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/local_fleet -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot tell where the example binary lives")?
        .to_path_buf();
    if let Some(cargo) = std::env::var_os("CARGO") {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "dcloud-node", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        println!(
            "building the binaries: cargo build -p dcloud-node --bins{}",
            if release { " --release" } else { "" }
        );
        let status = cmd.status()?;
        if !status.success() {
            bail!("building the binaries failed");
        }
    }
    let bins = Bins {
        dcloud: profile_dir.join("dcloud"),
        admin: profile_dir.join("dcloud-admin"),
    };
    for b in [&bins.dcloud, &bins.admin] {
        if !b.exists() {
            bail!(
                "{} not found: run `cargo build -p dcloud-node --bins` or set DCLOUD_BIN_DIR",
                b.display()
            );
        }
    }
    Ok(bins)
}

#[allow(dead_code)]
fn main() -> ExitCode {
    let result = (|| -> Result<()> {
        let bins = locate_bins()?;
        let dir = tempfile::Builder::new().prefix("dcloud-demo-").tempdir()?;
        let mut out = Transcript::default();
        println!("working directory: {}", dir.path().display());
        run(&bins, dir.path(), &mut out)
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
