//! Network namespaces for the daemon tests that need a real network between
//! nodes (`daemon_partition`, `daemon_lossy_heal`; include it beside
//! `daemon_support.rs` as `mod support`): one namespace per node,
//! each joined by a veth pair to a bridge in a hub namespace, addresses from
//! 198.18.0.0/15 (set aside for network tests; each test takes its own /24),
//! and nftables rules on the bridge for loss and splits. Everything is
//! deleted when the [`Net`] is dropped.
//!
//! Needs root, iproute2 and (for loss and splits) nftables; [`missing`] says
//! which is absent, for the test to print as its reason to skip.

#![allow(dead_code, unreachable_pub)]

use std::process::Command;

use crate::support::Fleet;

/// Run `cmd args`; its stderr as the error when it fails.
pub fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Run `ip args`.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// Load an nftables ruleset into namespace `ns`.
pub fn nft(ns: &str, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns}: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Why a namespace test cannot run here, if it cannot (`nftables`: whether
/// it needs `nft` too).
pub fn missing(nftables: bool) -> Option<String> {
    if !is_root() {
        return Some("network namespaces need root".into());
    }
    if ip(&["-V"]).is_err() {
        return Some("iproute2 (`ip`) is not installed".into());
    }
    if nftables && run("nft", &["--version"]).is_err() {
        return Some("nftables (`nft`) is not installed".into());
    }
    None
}

/// What a [`Net`] is made of.
pub struct NetSpec<'a> {
    /// Prefix of every namespace and link name (unique per run).
    pub prefix: String,
    /// The /24 of the nodes' addresses, as three octets ("198.18.7").
    pub subnet: &'a str,
    /// How many node namespaces.
    pub nodes: usize,
    /// The bridges in the hub; every node starts on the first.
    pub bridges: &'a [&'a str],
    /// When set, the root namespace joins the first bridge at this address
    /// (so the test can reach the nodes' APIs directly).
    pub host_addr: Option<&'a str>,
}

/// The namespaces, bridges and links of one run; deleted on drop.
pub struct Net {
    /// Prefix of every name.
    pub prefix: String,
    /// The hub namespace, holding the bridges.
    pub hub: String,
    /// The node namespaces, in order.
    pub nodes: Vec<String>,
    subnet: String,
    host_link: Option<String>,
}

impl Net {
    /// Build the namespaces of `spec`: node `i` at [`Net::addr`]`(i)`/24 on
    /// `{prefix}b{i}`, its peer `{prefix}a{i}` on the hub's first bridge.
    pub fn new(spec: NetSpec<'_>) -> Result<Net, String> {
        let prefix = spec.prefix;
        let mut net = Net {
            hub: format!("{prefix}h"),
            nodes: Vec::new(),
            subnet: spec.subnet.to_string(),
            host_link: None,
            prefix,
        };
        ip(&["netns", "add", &net.hub])?;
        for br in spec.bridges {
            ip(&["-n", &net.hub, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", &net.hub, "link", "set", br, "up"])?;
        }
        let first = spec.bridges[0];
        if let Some(host_addr) = spec.host_addr {
            let (r, rh) = (format!("{}r", net.prefix), format!("{}R", net.prefix));
            ip(&["link", "add", &r, "type", "veth", "peer", "name", &rh])?;
            net.host_link = Some(r.clone());
            ip(&["link", "set", &rh, "netns", &net.hub])?;
            ip(&["-n", &net.hub, "link", "set", &rh, "master", first])?;
            ip(&["-n", &net.hub, "link", "set", &rh, "up"])?;
            ip(&["addr", "add", &format!("{host_addr}/24"), "dev", &r])?;
            ip(&["link", "set", &r, "up"])?;
        }
        for i in 0..spec.nodes {
            let ns = format!("{}n{i}", net.prefix);
            ip(&["netns", "add", &ns])?;
            net.nodes.push(ns.clone());
            let (a, b) = (net.hub_port(i), format!("{}b{i}", net.prefix));
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
            ip(&["link", "set", &a, "netns", &net.hub])?;
            ip(&["link", "set", &b, "netns", &ns])?;
            ip(&["-n", &net.hub, "link", "set", &a, "master", first])?;
            ip(&["-n", &net.hub, "link", "set", &a, "up"])?;
            let addr = format!("{}/24", net.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &b])?;
            ip(&["-n", &ns, "link", "set", &b, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// The hub end of node `i`'s link (a bridge port).
    pub fn hub_port(&self, i: usize) -> String {
        format!("{}a{i}", self.prefix)
    }

    /// Put node `i`'s link on bridge `br`.
    pub fn attach(&self, i: usize, br: &str) {
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &self.hub_port(i),
            "master",
            br,
        ])
        .unwrap();
    }

    /// `"port0", "port1", …` for an nftables set of the hub ports of `nodes`.
    fn port_set(&self, nodes: impl IntoIterator<Item = usize>) -> String {
        nodes
            .into_iter()
            .map(|i| format!("\"{}\"", self.hub_port(i)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Random loss of `loss_percent` of what every node sends (TCP from
    /// `exempt_port` exempt, so a test's polling of the API is not slowed),
    /// dropped on the bridge: to the sender's TCP it is loss in the network.
    /// (A rule in the sender's own output hook would fail the send locally,
    /// which TCP retries every 500 ms without backing off: not loss.)
    pub fn lossy(&self, loss_percent: u64, exempt_port: u16) -> Result<(), String> {
        let ports = self.port_set(0..self.nodes.len());
        nft(
            &self.hub,
            &format!(
                "table bridge lossy {{
                   chain through {{
                     type filter hook forward priority 0; policy accept;
                     iifname {{ {ports} }} tcp sport {exempt_port} accept
                     iifname {{ {ports} }} numgen random mod 100 < {loss_percent} drop
                   }}
                 }}"
            ),
        )
    }

    /// Split the nodes into `a` and `b` on the bridge: frames between the
    /// sides are dropped, silently, like a network that went away.
    pub fn split(&self, a: &[usize], b: &[usize]) -> Result<(), String> {
        let (a, b) = (
            self.port_set(a.iter().copied()),
            self.port_set(b.iter().copied()),
        );
        nft(
            &self.hub,
            &format!(
                "table bridge split {{
                   chain through {{
                     type filter hook forward priority -10; policy accept;
                     iifname {{ {a} }} oifname {{ {b} }} drop
                     iifname {{ {b} }} oifname {{ {a} }} drop
                   }}
                 }}"
            ),
        )
    }

    /// Undo [`Net::split`].
    pub fn heal(&self) -> Result<(), String> {
        nft(&self.hub, "delete table bridge split")
    }
}

/// A fleet (not started) of one daemon in each namespace of `net`: node `i`
/// listens on [`Net::addr`]`(i)`, TCP port 7700, serves its API at `api(i)`,
/// and bootstraps from the nodes `boot` (other than itself).
pub fn fleet(net: &Net, api: impl Fn(usize) -> String, boot: &[usize]) -> Fleet {
    let mut f = Fleet::new(0, 1);
    for (i, ns) in net.nodes.iter().enumerate() {
        let k = f.add_node(&format!("site-{i}"), 1);
        let n = &mut f.nodes[k];
        n.ip = net.addr(i);
        n.p2p_port = 7700;
        n.api = api(i);
        n.netns = Some(ns.clone());
    }
    let boot: Vec<String> = boot.iter().map(|&b| f.nodes[b].addr()).collect();
    for n in &mut f.nodes {
        let me = n.addr();
        n.bootstrap = boot.iter().filter(|a| **a != me).cloned().collect();
    }
    f
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the links in it, and their peers.
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = ip(&["netns", "del", ns]);
        }
        if let Some(r) = &self.host_link {
            let _ = ip(&["link", "del", r]);
        }
    }
}
