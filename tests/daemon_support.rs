//! Shared fixtures of the daemon process tests: a fleet of real `dcloud`
//! processes on 127.0.0.x, an authority, signed policy bundles, and waiting
//! for conditions with deadlines. Every process is killed when the fleet is
//! dropped, whatever the test did.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dcloud_crdt::policy::{Edit, Level};
use dcloud_crdt::root::encode_chain;
use dcloud_crdt::testkit::{self, trust_root};
use dcloud_crdt::{Bundle, NodeId, SecretKey, SignedChange, SignedTrustRoot, TrustRoot};
use serde_json::Value;

/// The binary under test.
pub const DCLOUD: &str = env!("CARGO_BIN_EXE_dcloud");

/// The admin tool.
pub const DCLOUD_ADMIN: &str = env!("CARGO_BIN_EXE_dcloud-admin");

/// Run `dcloud-admin` in `dir`: whether it succeeded, and stdout then stderr.
pub fn admin(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(DCLOUD_ADMIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("dcloud-admin runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Run `dcloud-admin` in `dir`; fail the test with its output unless it succeeds.
#[track_caller]
pub fn admin_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = admin(dir, args);
    assert!(ok, "dcloud-admin {args:?} failed:\n{text}");
    text
}

/// A free TCP port on `ip`.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// One node of a test fleet.
pub struct Node {
    /// Human name.
    pub name: String,
    /// Node id.
    pub id: NodeId,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Loopback address.
    pub ip: String,
    /// libp2p TCP port.
    pub p2p_port: u16,
    /// When set, the node listens on QUIC at this UDP port instead of TCP.
    pub quic_port: Option<u16>,
    /// API address.
    pub api: String,
    /// File the effective config is rendered to.
    pub apply_file: PathBuf,
    /// Extra flags for `dcloud run`.
    pub extra: Vec<String>,
    /// Bootstrap multiaddrs.
    pub bootstrap: Vec<String>,
    /// Status refresh period (a test fleet's steady load).
    pub status_refresh_ms: u64,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    /// Its libp2p address.
    pub fn addr(&self) -> String {
        match self.quic_port {
            Some(port) => format!("/ip4/{}/udp/{port}/quic-v1", self.ip),
            None => format!("/ip4/{}/tcp/{}", self.ip, self.p2p_port),
        }
    }

    /// Is its process running?
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// The pid, when running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A fleet of `dcloud` processes with one authority key (threshold 1).
pub struct Fleet {
    /// Scratch directory (deleted at drop).
    pub dir: tempfile::TempDir,
    /// The authority key.
    pub auth: SecretKey,
    /// A second authority key (threshold stays 1): a second admin.
    pub auth2: SecretKey,
    /// The trust chain file.
    pub trust_file: PathBuf,
    /// The trust chain.
    pub roots: Vec<SignedTrustRoot>,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Every policy change signed so far (the admin's base).
    pub policy: Vec<SignedChange>,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The timestamp key the trust root lists ([`Fleet::with_timestamp_key`]
    /// only; None otherwise, and the root lists none).
    pub timestamp: Option<SecretKey>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Run `dcloud init` and return the node id it prints.
pub fn init_node(data_dir: &Path) -> NodeId {
    let out = Command::new(DCLOUD)
        .args(["init", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run dcloud init");
    assert!(out.status.success(), "dcloud init failed: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .expect("dcloud init prints a node id")
}

impl Fleet {
    /// For `dcloud-admin` runs: the fleet's directory, the authority key
    /// written there (`auth.key`), and every node's API URL.
    pub fn admin_files(&self) -> (PathBuf, String, Vec<String>) {
        let dir = self.dir.path().to_path_buf();
        let key = dir.join("auth.key");
        self.auth.write_file(&key).unwrap();
        let key = key.to_str().unwrap().to_string();
        let urls = self
            .nodes
            .iter()
            .map(|n| format!("http://{}", n.api))
            .collect();
        (dir, key, urls)
    }

    /// `n` nodes on 127.0.0.`first_ip`.. (not started). Node 0 is everyone's
    /// bootstrap peer, node 1 a second one.
    pub fn new(n: usize, first_ip: u8) -> Fleet {
        Fleet::build(n, first_ip, None)
    }

    /// [`Fleet::new`], with a trust root that also lists one timestamp key
    /// (threshold 1), kept in [`Fleet::timestamp`].
    pub fn with_timestamp_key(n: usize, first_ip: u8) -> Fleet {
        Fleet::build(n, first_ip, Some(SecretKey::generate()))
    }

    fn build(n: usize, first_ip: u8, timestamp: Option<SecretKey>) -> Fleet {
        let dir = tempfile::tempdir().expect("temp dir");
        let auth = SecretKey::generate();
        let auth2 = SecretKey::generate();
        let root = SignedTrustRoot::sign(
            TrustRoot {
                timestamp_keys: timestamp.iter().map(|k| k.public()).collect(),
                timestamp_threshold: u32::from(timestamp.is_some()),
                ..trust_root(1, &[auth.public(), auth2.public()], 1)
            },
            &[&auth],
        );
        let roots = vec![root];
        let trust_file = dir.path().join("trust-root.chain");
        std::fs::write(&trust_file, encode_chain(&roots)).unwrap();
        let mut fleet = Fleet {
            dir,
            auth,
            auth2,
            trust_file,
            roots,
            nodes: Vec::new(),
            policy: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            timestamp,
        };
        for i in 0..n {
            fleet.add_node(&format!("site-{i}"), first_ip + i as u8);
        }
        fleet.set_bootstrap();
        fleet
    }

    /// Node 0 and node 1 are everyone else's bootstrap peers.
    fn set_bootstrap(&mut self) {
        let boot: Vec<String> = self.nodes.iter().take(2).map(|n| n.addr()).collect();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            node.bootstrap = boot
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.clone())
                .collect();
        }
    }

    /// Make every node listen (and so be dialled) on QUIC only (before start).
    pub fn use_quic(&mut self) {
        for n in &mut self.nodes {
            let port = std::net::UdpSocket::bind((n.ip.as_str(), 0))
                .expect("bind a free UDP port")
                .local_addr()
                .unwrap()
                .port();
            n.quic_port = Some(port);
        }
        self.set_bootstrap();
    }

    /// Add a node (not started, not enrolled) on 127.0.0.`ip`.
    pub fn add_node(&mut self, name: &str, ip: u8) -> usize {
        let ip = format!("127.0.0.{ip}");
        let data_dir = self.dir.path().join(name);
        let id = init_node(&data_dir);
        let p2p_port = free_port(&ip);
        let api = format!("{ip}:{}", free_port(&ip));
        let apply_file = data_dir.join("applied.json");
        let log = data_dir.join("log");
        self.nodes.push(Node {
            name: name.to_string(),
            id,
            data_dir,
            ip,
            p2p_port,
            quic_port: None,
            api,
            apply_file,
            extra: Vec::new(),
            bootstrap: Vec::new(),
            status_refresh_ms: 1000,
            netns: None,
            child: None,
            log,
        });
        self.nodes.len() - 1
    }

    /// Start node `i` (appending to its log).
    pub fn start(&mut self, i: usize) {
        let trust = self.trust_file.clone();
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "{} already running", n.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let mut cmd = match &n.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, DCLOUD]);
                c
            }
            None => Command::new(DCLOUD),
        };
        cmd.arg("run")
            .arg("--data-dir")
            .arg(&n.data_dir)
            .arg("--trust-root")
            .arg(&trust)
            .arg("--listen")
            .arg(n.addr())
            .arg("--api")
            .arg(&n.api)
            .arg("--status-refresh-ms")
            .arg(n.status_refresh_ms.to_string())
            .arg("--apply-file")
            .arg(&n.apply_file);
        for b in &n.bootstrap {
            cmd.arg("--bootstrap").arg(b);
        }
        cmd.args(&n.extra)
            .env(
                "DCLOUD_LOG",
                std::env::var("DCLOUD_TEST_LOG")
                    .unwrap_or_else(|_| "info,dcloud_node=debug,libp2p=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        n.child = Some(cmd.spawn().expect("spawn dcloud run"));
    }

    /// Start every node.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM node `i` and wait (bounded) for it to exit.
    pub fn terminate(&mut self, i: usize, bound: Duration) -> Option<ExitStatus> {
        let mut c = self.nodes[i].child.take()?;
        let st = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success());
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::yield_now();
        }
    }

    /// Sign `edits` as one policy change on top of everything signed so far.
    pub fn sign(&mut self, edits: Vec<Edit>) -> SignedChange {
        let c = testkit::sign_policy(&self.policy, edits, 1, &[&self.auth]);
        self.policy.push(c.clone());
        c
    }

    /// `edits` signed on top of the policy so far by a fresh key outside the
    /// trust root (a forgery); not added to [`Fleet::policy`].
    pub fn forge(&self, edits: Vec<Edit>) -> SignedChange {
        testkit::sign_policy(&self.policy, edits, 1, &[&SecretKey::generate()])
    }

    /// An edit enrolling node `i`.
    pub fn enrol(&self, i: usize) -> Edit {
        let n = &self.nodes[i];
        let region = if i.is_multiple_of(2) { "eu" } else { "us" };
        testkit::enrol(n.id, n.name.clone(), region)
    }

    /// A fleet-level config edit.
    pub fn set_fleet(path: &str, value: Value) -> Edit {
        Edit::Set(Level::Fleet, path.to_string(), value)
    }

    /// A bundle of `changes` with the trust chain.
    pub fn bundle(&self, changes: Vec<SignedChange>) -> Vec<u8> {
        Bundle {
            roots: self.roots.clone(),
            changes,
        }
        .encode()
    }

    /// POST a bundle at node `i`: (status, body).
    pub async fn publish(&self, i: usize, bytes: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .post(format!("http://{}/v1/bundles", self.nodes[i].api))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("POST /v1/bundles");
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Wait until the APIs of `which` answer.
    pub async fn ready(&self, which: &[usize]) {
        self.wait("the APIs answer", Duration::from_secs(30), async |f| {
            for &i in which {
                if f.get(i, "/v1/node").await.is_none() {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// Enrol nodes `which` (plus a fleet value) at node `at` and return the change.
    pub async fn enrol_at(&mut self, at: usize, which: &[usize]) -> SignedChange {
        self.ready(&[at]).await;
        let mut edits: Vec<Edit> = which.iter().map(|i| self.enrol(*i)).collect();
        edits.push(Fleet::set_fleet("log.level", "info".into()));
        let c = self.sign(edits);
        let (status, body) = self.publish(at, self.bundle(vec![c.clone()])).await;
        assert_eq!(status, 200, "publish: {body}");
        c
    }

    /// GET a path of node `i`'s API, None when it does not answer.
    pub async fn get(&self, i: usize, path: &str) -> Option<Value> {
        self.get_ok(i, path).await?.json().await.ok()
    }

    /// GET a path of node `i`'s API: the response if it succeeded.
    async fn get_ok(&self, i: usize, path: &str) -> Option<reqwest::Response> {
        let r = self
            .http
            .get(format!("http://{}{path}", self.nodes[i].api))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(r)
    }

    /// Node `i`'s Prometheus counters (`/metrics`), by sample name (labels
    /// summed away); None when it does not answer.
    pub async fn metrics(&self, i: usize) -> Option<std::collections::BTreeMap<String, f64>> {
        let text = self.get_ok(i, "/metrics").await?.text().await.ok()?;
        let mut out = std::collections::BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = name.split('{').next().unwrap_or(name).to_string();
            if let Ok(v) = value.parse::<f64>() {
                *out.entry(name).or_insert(0.0) += v;
            }
        }
        Some(out)
    }

    /// Hex heads of a signed change.
    pub fn head(c: &SignedChange) -> String {
        hex::encode(c.hash().unwrap().0)
    }

    /// Whether node `i` reports a rollout of `head` complete across `expect` sites.
    pub async fn rollout_complete(&self, i: usize, head: &str, expect: usize) -> bool {
        match self.get(i, &format!("/v1/rollout?heads={head}")).await {
            Some(v) => v["complete"] == true && v["applied"] == expect as u64,
            None => false,
        }
    }

    /// Panic with the nodes' logs.
    pub fn fail(&self, what: &str) -> ! {
        let mut msg = format!("timed out waiting for: {what}\n");
        for n in &self.nodes {
            msg.push_str(&format!(
                "---- {} ({}) log tail ----\n{}\n",
                n.name,
                n.id.short(),
                n.log_tail(25)
            ));
        }
        panic!("{msg}");
    }

    /// Wait (at most 30 s) until every node of `which` applied the policy
    /// whose only head is `head`.
    pub async fn wait_applied(&self, what: &str, which: &[usize], head: &str) {
        self.wait(what, Duration::from_secs(30), async |f| {
            f.applied_everywhere(which, head).await
        })
        .await;
    }

    /// Wait until every one of `nodes` nodes has heartbeated again, as node
    /// 0's fleet view shows, since this call (a steady fleet: each owner's
    /// first change, which floods, is behind it).
    pub async fn wait_heartbeat_round(&self, nodes: usize, heartbeat_ms: u64) {
        let hbs = |v: &Value| -> std::collections::BTreeMap<String, u64> {
            v["nodes"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            (
                                r["id"].as_str().unwrap_or_default().to_string(),
                                r["hb"].as_u64().unwrap_or(0),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let hb0 = hbs(&self.get(0, "/v1/fleet").await.expect("fleet view"));
        self.wait(
            "every node heartbeats once after the fleet formed",
            Duration::from_millis(heartbeat_ms * 2 + 10_000),
            async |f| {
                let Some(v) = f.get(0, "/v1/fleet").await else {
                    return false;
                };
                let now = hbs(&v);
                now.len() == nodes
                    && now
                        .iter()
                        .all(|(id, hb)| hb0.get(id).is_some_and(|h0| hb > h0))
            },
        )
        .await;
    }

    /// Poll `cond` every 50 ms until it holds, or fail after `within`.
    pub async fn wait(
        &self,
        what: &str,
        within: Duration,
        mut cond: impl AsyncFnMut(&Fleet) -> bool,
    ) {
        let deadline = Instant::now() + within;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if cond(self).await {
                return;
            }
            if Instant::now() > deadline {
                self.fail(what);
            }
        }
    }

    /// Every node in `which` holds exactly `head` and reports it applied without error.
    pub async fn applied_everywhere(&self, which: &[usize], head: &str) -> bool {
        for &i in which {
            let Some(v) = self.get(i, "/v1/node").await else {
                return false;
            };
            let want = serde_json::json!([head]);
            if v["policy_heads"] != want
                || v["applied"]["heads"] != want
                || !v["applied"]["error"].is_null()
            {
                return false;
            }
        }
        true
    }
}
