//! The site-side query commands of `dcloud` (`status`, `fleet`, `node`, `policy`,
//! `config`, `rollout`, `snapshot`, `publish`): thin clients of the local API
//! that print human tables, or the API's JSON with `--json`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::view::{self, FleetView, NodeRow, NodeView, PolicyView, PublishView, RolloutView};

/// Errors of a query command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Nothing listens at the API address.
    #[error(
        "no dcloud daemon answers at {api} ({reason}); start one with `dcloud run`, or point at it with --api ADDR / DCLOUD_API"
    )]
    NoDaemon {
        /// The address tried.
        api: String,
        /// What the connection said.
        reason: String,
    },
    /// The daemon answered with an error.
    #[error("{0}")]
    Api(String),
    /// The answer was not what this version of `dcloud` expects.
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A client of one daemon's API.
pub struct Client {
    api: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the API at `api` (`host:port`).
    pub fn new(api: &str) -> Self {
        Client {
            api: api.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client builds"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    fn transport(&self, e: reqwest::Error) -> CliError {
        if e.is_connect() || e.is_timeout() {
            CliError::NoDaemon {
                api: self.api.clone(),
                reason: if e.is_timeout() {
                    "timed out".into()
                } else {
                    "connection refused".into()
                },
            }
        } else {
            CliError::Protocol(e.to_string())
        }
    }

    async fn check(&self, resp: reqwest::Response) -> Result<bytes_body::Body, CliError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        Ok(bytes_body::Body {
            status: status.as_u16(),
            bytes: bytes.to_vec(),
        })
    }

    /// GET a path; the raw JSON on success, the API's error otherwise.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, CliError> {
        let resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let body = self.check(resp).await?;
        body.json()
    }

    /// GET raw bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, CliError> {
        let resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let body = self.check(resp).await?;
        if body.status >= 400 {
            return Err(body.api_error());
        }
        Ok(body.bytes)
    }

    /// POST a bundle; the publish answer (also for 422), an error otherwise.
    pub async fn publish(&self, bundle: Vec<u8>) -> Result<serde_json::Value, CliError> {
        let resp = self
            .http
            .post(self.url("/v1/bundles"))
            .header("content-type", "application/octet-stream")
            .body(bundle)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let body = self.check(resp).await?;
        if body.status == 422 {
            return serde_json::from_slice(&body.bytes)
                .map_err(|e| CliError::Protocol(e.to_string()));
        }
        body.json()
    }
}

mod bytes_body {
    use super::CliError;

    pub(super) struct Body {
        pub(super) status: u16,
        pub(super) bytes: Vec<u8>,
    }

    impl Body {
        pub(super) fn api_error(&self) -> CliError {
            let msg = serde_json::from_slice::<serde_json::Value>(&self.bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&self.bytes).into_owned());
            CliError::Api(format!("the daemon answered {}: {msg}", self.status))
        }

        pub(super) fn json(self) -> Result<serde_json::Value, CliError> {
            if self.status >= 400 {
                return Err(self.api_error());
            }
            serde_json::from_slice(&self.bytes).map_err(|e| CliError::Protocol(e.to_string()))
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| CliError::Protocol(e.to_string()))
}

fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) if ms < 1000 => format!("{ms}ms"),
        Some(ms) if ms < 120_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m", ms / 60_000),
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(8)]
}

fn heads(list: &[String]) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        list.iter().map(|h| short(h)).collect::<Vec<_>>().join(",")
    }
}

/// Render rows as an aligned table.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `dcloud status`.
pub fn render_node(v: &NodeView) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "node        {}", v.id);
    let _ = writeln!(
        s,
        "name        {} ({})",
        if v.name.is_empty() { "-" } else { &v.name },
        if v.region.is_empty() { "-" } else { &v.region }
    );
    let state = if v.revoked {
        "REVOKED"
    } else if v.enrolled {
        "enrolled"
    } else {
        "not enrolled"
    };
    let _ = writeln!(s, "membership  {state}");
    let _ = writeln!(s, "version     {}", v.version);
    let _ = writeln!(s, "listening   {}", v.listen_addrs.join(" "));
    let _ = writeln!(s, "peers       {}", v.peers.len());
    let _ = writeln!(
        s,
        "policy      {} (trust root v{})",
        heads(&v.policy_heads),
        v.trust_root_version
    );
    let applied = match &v.applied.error {
        None => heads(&v.applied.heads),
        Some(e) => format!("{} FAILED: {e}", heads(&v.applied.heads)),
    };
    let _ = writeln!(s, "applied     {applied}");
    let store = match &v.store.error {
        None => "ok".to_string(),
        Some(e) => format!("FAILING: {e}"),
    };
    let _ = writeln!(s, "store       {store}");
    let _ = writeln!(
        s,
        "last heard  {}{}",
        ago(v.last_heard_any_ms_ago),
        if v.stale {
            " (STALE: cut off from the fleet?)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "freshness   {}{}",
        if v.policy_fresh { "fresh" } else { "NOT FRESH" },
        if v.policy_fresh_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", v.policy_fresh_reason)
        }
    );
    let _ = writeln!(s, "uptime      {}", ago(Some(v.uptime_ms)));
    s
}

fn node_state(n: &NodeRow) -> String {
    if n.revoked {
        "revoked".into()
    } else if !n.enrolled {
        "unenrolled".into()
    } else if n.applied.error.is_some() {
        "FAILED".into()
    } else if n.liveness == "down" {
        "DOWN".into()
    } else if n.liveness == "suspect" {
        "suspect".into()
    } else if n.stale {
        "stale".into()
    } else if n.up_to_date {
        "ok".into()
    } else {
        "behind".into()
    }
}

/// `dcloud fleet`.
pub fn render_fleet(v: &FleetView) -> String {
    let rows: Vec<Vec<String>> = v
        .nodes
        .iter()
        .map(|n| {
            vec![
                format!("{}{}", n.name, if n.is_self { " *" } else { "" }),
                n.region.clone(),
                short(&n.id).to_string(),
                ago(n.last_heard_ms_ago),
                if n.healthy {
                    "ok".into()
                } else {
                    "UNHEALTHY".into()
                },
                heads(&n.applied.heads),
                n.behind.to_string(),
                node_state(n),
            ]
        })
        .collect();
    let mut s = table(
        &[
            "NAME", "REGION", "ID", "HEARD", "HEALTH", "APPLIED", "BEHIND", "STATE",
        ],
        &rows,
    );
    let _ = writeln!(
        s,
        "{} nodes; policy {}",
        v.nodes.len(),
        heads(&v.policy_heads)
    );
    let summaries: Vec<&str> = v
        .nodes
        .iter()
        .filter(|n| n.source == "summary")
        .map(|n| n.name.as_str())
        .collect();
    if !summaries.is_empty() {
        let _ = writeln!(
            s,
            "{} nodes from summaries (their status stays in their region): {}",
            summaries.len(),
            summaries.join(", ")
        );
    }
    s
}

/// `dcloud node ID`.
pub fn render_row(n: &NodeRow) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "node       {}", n.id);
    let _ = writeln!(s, "name       {} ({})", n.name, n.region);
    let _ = writeln!(s, "state      {}", node_state(n));
    if n.source == "summary" {
        let _ = writeln!(
            s,
            "source     summary (region {}'s status stays in the region: no addresses or health details here)",
            n.region
        );
    }
    let _ = writeln!(s, "heard      {}", ago(n.last_heard_ms_ago));
    let _ = writeln!(
        s,
        "applied    {} (behind {})",
        heads(&n.applied.heads),
        n.behind
    );
    if let Some(e) = &n.applied.error {
        let _ = writeln!(s, "error      {e} (exit code {:?})", n.applied.exit_code);
    }
    for (k, c) in &n.health {
        let _ = writeln!(
            s,
            "health     {k}: {}{}",
            if c.ok { "ok" } else { "FAILING" },
            if c.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.detail)
            }
        );
    }
    let _ = writeln!(s, "version    {}", n.version);
    let _ = writeln!(s, "addrs      {}", n.addrs.join(" "));
    let _ = writeln!(s, "status     epoch {} heartbeat {}", n.epoch, n.hb);
    s
}

/// `dcloud policy`.
pub fn render_policy(v: &PolicyView) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "heads       {} ({} changes)", heads(&v.heads), v.changes);
    let _ = writeln!(
        s,
        "trust root  v{}, {} of {} keys",
        v.trust_root.version,
        v.trust_root.threshold,
        v.trust_root.keys.len()
    );
    let _ = writeln!(
        s,
        "signers     {}",
        v.signers
            .iter()
            .map(|k| short(k))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut rows = Vec::new();
    for (p, val) in &v.fleet {
        rows.push(vec!["fleet".into(), p.clone(), val.to_string()]);
    }
    for (r, m) in &v.regions {
        for (p, val) in m {
            rows.push(vec![format!("region {r}"), p.clone(), val.to_string()]);
        }
    }
    for (n, m) in &v.sites {
        for (p, val) in m {
            rows.push(vec![
                format!("site {}", short(n)),
                p.clone(),
                val.to_string(),
            ]);
        }
    }
    for sv in &v.secrets {
        let sel = if sv.selector.is_empty() {
            String::new()
        } else {
            let l: Vec<String> = sv
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!(" [{}]", l.join(","))
        };
        rows.push(vec![
            format!("{}{sel}", sv.level.replace(':', " ")),
            sv.path.clone(),
            format!(
                "(sealed to {} site(s), digest {})",
                sv.targets.len(),
                sv.digest
            ),
        ]);
    }
    s.push('\n');
    s.push_str(&table(&["LEVEL", "PATH", "VALUE"], &rows));
    let members: Vec<Vec<String>> = v
        .members
        .iter()
        .map(|(id, m)| {
            vec![
                m.name.clone(),
                m.region.clone(),
                short(id).to_string(),
                match v.revoked.get(id) {
                    Some(r) => format!("revoked: {r}"),
                    None => "active".into(),
                },
            ]
        })
        .collect();
    s.push('\n');
    s.push_str(&table(&["MEMBER", "REGION", "ID", "STATE"], &members));
    if !v.conflicts.is_empty() {
        s.push_str("\nconcurrent edits (every replica shows the winner):\n");
        for c in &v.conflicts {
            let _ = writeln!(
                s,
                "  {}: {} (values: {})",
                c.key,
                c.winner,
                c.values.join(" | ")
            );
        }
    }
    for e in &v.errors {
        let _ = writeln!(s, "unreadable entry: {e}");
    }
    s
}

/// `dcloud rollout`.
pub fn render_rollout(v: &RolloutView) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "policy {}: {}/{} sites applied{}{}",
        heads(&v.heads),
        v.applied,
        v.enrolled,
        if v.complete { " (complete)" } else { "" },
        if v.known {
            ""
        } else {
            " (this node does not hold that version yet)"
        }
    );
    for f in &v.failed {
        let _ = writeln!(
            s,
            "  FAILED  {} {}: {}",
            f.name,
            short(&f.id),
            f.error.as_deref().unwrap_or("")
        );
    }
    for p in &v.pending {
        let _ = writeln!(
            s,
            "  pending {} {}{}",
            p.name,
            short(&p.id),
            if p.down { " (DOWN)" } else { "" }
        );
    }
    s
}

/// `dcloud publish`.
pub fn render_publish(v: &PublishView) -> String {
    let mut s = String::new();
    for e in &v.root_errors {
        let _ = writeln!(s, "trust root refused: {e}");
    }
    for r in &v.reports {
        let _ = writeln!(
            s,
            "{:<9} {} {}{}",
            r.outcome,
            r.doc,
            r.hash.as_deref().map(short).unwrap_or("-"),
            r.reason
                .as_deref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        s,
        "{}",
        if v.accepted {
            "published".to_string()
        } else {
            format!(
                "REFUSED: {}",
                v.error.as_deref().unwrap_or("some changes were rejected")
            )
        }
    );
    s
}

/// What a query command prints, and whether it succeeded.
pub struct Printed {
    /// The text.
    pub text: String,
    /// Exit status 0.
    pub ok: bool,
}

/// A query command.
#[derive(Clone, Debug)]
pub enum Query {
    /// `status`.
    Status,
    /// `fleet`.
    Fleet,
    /// `node ID`.
    Node(String),
    /// `policy`.
    Policy,
    /// `config`.
    Config,
    /// `rollout`.
    Rollout(Option<String>),
    /// `snapshot -o FILE`.
    Snapshot(std::path::PathBuf),
    /// `publish FILE`.
    Publish(std::path::PathBuf),
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON serialises");
    s.push('\n');
    s
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::File {
        path: path.display().to_string(),
        source,
    })
}

/// Run a query against `api`, rendering JSON or a table.
pub async fn run(api: &str, q: Query, json: bool) -> Result<Printed, CliError> {
    let c = Client::new(api);
    let ok = |text| Ok(Printed { text, ok: true });
    match q {
        Query::Status => {
            let v = c.get_json("/v1/node").await?;
            // Exits non-zero when the policy is not known to be fresh (signed
            // freshness; always fresh without timestamp keys).
            let fresh = v
                .get("policy_fresh")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true);
            if json {
                return Ok(Printed {
                    text: pretty(&v),
                    ok: fresh,
                });
            }
            Ok(Printed {
                text: render_node(&parse(v)?),
                ok: fresh,
            })
        }
        Query::Fleet => {
            let v = c.get_json("/v1/fleet").await?;
            if json {
                return ok(pretty(&v));
            }
            ok(render_fleet(&parse(v)?))
        }
        Query::Node(id) => {
            let v = c.get_json(&format!("/v1/nodes/{id}")).await?;
            if json {
                return ok(pretty(&v));
            }
            ok(render_row(&parse(v)?))
        }
        Query::Policy => {
            let v = c.get_json("/v1/policy").await?;
            if json {
                return ok(pretty(&v));
            }
            ok(render_policy(&parse(v)?))
        }
        Query::Config => {
            let v = c.get_json("/v1/config").await?;
            if json {
                return ok(pretty(&v));
            }
            let cv: view::ConfigView = parse(v)?;
            let mut s = format!(
                "# effective config of {} at policy {}\n",
                short(&cv.id),
                heads(&cv.heads)
            );
            match &cv.config {
                Some(cfg) => s.push_str(&pretty(cfg)),
                None => s.push_str("# this node is not an active member: no config\n"),
            }
            ok(s)
        }
        Query::Rollout(h) => {
            let path = match h {
                Some(h) => format!("/v1/rollout?heads={h}"),
                None => "/v1/rollout".into(),
            };
            let v = c.get_json(&path).await?;
            let rv: RolloutView = parse(v.clone())?;
            let text = if json {
                pretty(&v)
            } else {
                render_rollout(&rv)
            };
            Ok(Printed {
                text,
                ok: rv.failed.is_empty(),
            })
        }
        Query::Snapshot(out) => {
            let bytes = c.get_bytes("/v1/policy/snapshot").await?;
            std::fs::write(&out, &bytes).map_err(|source| CliError::File {
                path: out.display().to_string(),
                source,
            })?;
            ok(format!(
                "wrote {} bytes of policy snapshot to {}\n",
                bytes.len(),
                out.display()
            ))
        }
        Query::Publish(file) => {
            let v = c.publish(read(&file)?).await?;
            let pv: PublishView = parse(v.clone())?;
            let text = if json {
                pretty(&v)
            } else {
                render_publish(&pv)
            };
            Ok(Printed {
                text,
                ok: pv.accepted,
            })
        }
    }
}

/// An error and its causes for the terminal, each cause once: a typed
/// error that names its cause in its own message (`"key file F: {source}"`)
/// would otherwise print it twice with anyhow's `{:#}`.
pub fn describe_error(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_of_an_error_is_described_once() {
        let e = dcloud_crdt::keys::SecretKey::read_file(Path::new("/nonexistent/k")).unwrap_err();
        let os = "No such file or directory";
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)).matches(os).count(),
            2
        );
        let e = dcloud_crdt::keys::SecretKey::read_file(Path::new("/nonexistent/k")).unwrap_err();
        let d = describe_error(&anyhow::Error::from(e).context("signing"));
        assert_eq!(d.matches(os).count(), 1, "{d}");
        assert!(d.starts_with("signing: key file /nonexistent/k: "), "{d}");
        let plain = anyhow::anyhow!("outer").context("top");
        assert_eq!(describe_error(&plain), "top: outer");
    }

    #[tokio::test]
    async fn no_daemon_is_a_clear_error() {
        // Port 9 on loopback (discard) is not served here.
        let err = run("127.0.0.1:9", Query::Status, false)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no dcloud daemon answers at 127.0.0.1:9"),
            "{err}"
        );
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
