//! Serf beside dcloud, in the same run (a benchmark, ignored by default; run
//! it on a release build, as root):
//!
//! ```text
//! cargo test --release -p dcloud-node --test bench_serf -- --ignored --nocapture
//! ```
//!
//! Two figures, each for 32 Serf agents (Debian's `serf`) and for 32 `dcloud`
//! daemons, every process on loopback:
//!
//! * **idle payload bytes per node per second**: `tcpdump -i lo` captures,
//!   for a fixed window, only the gossip ports (Serf's bind ports, TCP and
//!   UDP; dcloud's libp2p ports, never the local API port nor Serf's RPC
//!   port), and a small pcap reader here sums the TCP and UDP payloads (IP
//!   total length less the IP and TCP/UDP headers). Each packet on `lo` is
//!   captured once, so the sum is the bytes sent; divided by the window and
//!   by 32.
//! * **failure detection**: one process is SIGKILLed (its own pid), then every
//!   live one is polled (Serf: the `members` RPC over one kept connection per
//!   agent; dcloud: `GET /v1/fleet`) until it marks the dead one failed
//!   (Serf) or stale / down (dcloud); each live node's first such poll gives
//!   its detection time, printed as median and max.
//!
//! `serf` and `tcpdump` are installed with `apt-get install -y serf tcpdump`
//! when missing. Without `serf` the Serf half is skipped (with a message) and
//! dcloud is still measured; without `tcpdump` no bytes are counted.
//!
//! Addresses: Serf agents bind 127.0.0.1 on ports below the ephemeral range
//! (each checked free for TCP and UDP); the daemons use 127.0.0.211 to
//! 127.0.0.242, a range no other test uses. Every process (tcpdump too) is
//! killed by its own pid when the test ends, whether it passed or not.
//!
//! Knobs: `DCLOUD_BENCH_WINDOW_S` (capture window, 60),
//! `DCLOUD_BENCH_NODES` (32), `DCLOUD_BENCH_STATUS_REFRESH_MS` (the daemon's
//! default, 600000), `DCLOUD_BENCH_SKIP_SERF=1`, `DCLOUD_BENCH_SKIP_DCLOUD=1`.
//!
//! With membership (2026-12-02, the commit that added it; a simulation
//! running beside it on one core), Serf 0.8.2-dev:
//!
//! | what (32 each)                          | serf   | dcloud  | ratio  |
//! |-----------------------------------------|--------|---------|--------|
//! | idle payload B/node/s (60 s)            | 260    | 159     | 0.61x  |
//! | SIGKILL -> all live mark it: median     | 8.47 s | 4.20 s  | 0.50x  |
//! | SIGKILL -> all live mark it: max        | 8.58 s | 4.21 s  | 0.49x  |
//!
//! (The window starts 10 s after the fleet forms, so anti-entropy runs at its
//! base interval for the first 20 s of it: it backs off only 30 s after the
//! last change. An earlier run, before that rule, measured 134 B/node/s.)
//!
//! dcloud's idle segments: 37 B x3,834 and 30 B x3,254 (probes and acks with
//! their yamux and noise framing), 62 B x160 and 40 B x160 (anti-entropy
//! rounds, backed off to 12 s). Detection: the killed daemon's connections
//! close at once, its neighbours suspect it after the 1 s grace, and every
//! node marks it down 3 s later.
//!
//! Baseline before SWIM (2026-12-02, main at 6ff2ec6, 2 cores shared with
//! other builds, load about 6), Serf 0.8.2-dev (Debian 0.9.4~ds1):
//!
//! | what (32 each)                          | serf   | dcloud  | ratio  |
//! |-----------------------------------------|--------|---------|--------|
//! | idle payload B/node/s (60 s)            | 261    | 3,554   | 13.6x  |
//! | SIGKILL -> all live mark it: median     | 7.10 s | 31.82 s | 4.5x   |
//! | SIGKILL -> all live mark it: max        | 7.31 s | 31.84 s | 4.4x   |
//!
//! dcloud's bytes by TCP segment size: 303 B x10,577 (47%), 62 B x27,980
//! (25%: libp2p ping and pong, every 2 s on every connection), 45 B x25,937
//! (17%). Its detection is the stale bound (3 x heartbeat + 2 s = 47 s) less
//! the time since the victim's last heartbeat.

#[path = "daemon_support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::Fleet;

const NODES_DEFAULT: usize = 32;
const FIRST_IP: u8 = 211;
const WINDOW_DEFAULT_S: u64 = 60;
/// After every member is seen alive, before the window: the join broadcasts
/// die out.
const SETTLE: Duration = Duration::from_secs(10);
/// Which process is killed (neither a bootstrap / join target, 0 or 1).
const VICTIM: usize = 7;
const DETECT_DEADLINE: Duration = Duration::from_secs(120);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------- processes

/// Child processes killed (SIGKILL to their own pid) and reaped on drop.
#[derive(Default)]
struct Procs(Vec<Option<Child>>);

impl Procs {
    fn push(&mut self, c: Child) -> usize {
        self.0.push(Some(c));
        self.0.len() - 1
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.0[i].as_ref().map(|c| c.id())
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.0[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.0.len() {
            self.kill(i);
        }
    }
}

fn works(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have_serf() -> bool {
    works("serf", "version")
}

fn have_tcpdump() -> bool {
    works("tcpdump", "--version")
}

fn apt_install() -> bool {
    println!("running: apt-get install -y serf tcpdump");
    Command::new("apt-get")
        .args(["install", "-y", "serf", "tcpdump"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Install `serf` and `tcpdump` when missing: (serf, tcpdump) usable.
fn ensure_tools() -> (bool, bool) {
    if have_serf() && have_tcpdump() {
        return (true, true);
    }
    println!("serf or tcpdump missing");
    if !apt_install() {
        println!("apt-get install failed; running: apt-get update, then the install once more");
        let _ = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(Stdio::null())
            .status();
        if !apt_install() {
            println!("apt-get install -y serf tcpdump FAILED (not root, or no package source?)");
        }
    }
    let (s, t) = (have_serf(), have_tcpdump());
    if !s {
        println!("SKIPPING SERF: no usable `serf` binary; dcloud is still measured");
    }
    if !t {
        println!("NO BYTE COUNTS: no usable `tcpdump`; detection times are still measured");
    }
    (s, t)
}

fn serf_version() -> String {
    Command::new("serf")
        .arg("version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

// ----------------------------------------------------------------- capture

/// Payload counts of one capture.
#[derive(Clone, Debug, Default)]
struct Counts {
    packets: u64,
    tcp_packets: u64,
    udp_packets: u64,
    tcp_payload: u64,
    udp_payload: u64,
    /// Packets the reader could not place (not IPv4/IPv6 TCP/UDP).
    other: u64,
    /// Packets by (protocol, payload length), empty ones left out.
    sizes: std::collections::BTreeMap<(&'static str, u64), u64>,
}

impl Counts {
    fn payload(&self) -> u64 {
        self.tcp_payload + self.udp_payload
    }

    /// The `n` (protocol, length) pairs carrying the most bytes.
    fn top_sizes(&self, n: usize) -> String {
        let mut v: Vec<_> = self.sizes.iter().collect();
        v.sort_by_key(|((_, len), count)| std::cmp::Reverse(*len * **count));
        v.iter()
            .take(n)
            .map(|((p, len), count)| format!("{p} {len} B x{count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A running `tcpdump -i lo -w FILE FILTER`, killed on drop.
struct Capture {
    child: Option<Child>,
    file: PathBuf,
    err: PathBuf,
}

impl Capture {
    fn start(dir: &Path, name: &str, filter: &str) -> Capture {
        let file = dir.join(format!("{name}.pcap"));
        let err = dir.join(format!("{name}.tcpdump.err"));
        let child = Command::new("tcpdump")
            .args(["-i", "lo", "-n", "-s", "256", "-U", "-w"])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn tcpdump");
        let mut cap = Capture {
            child: Some(child),
            file,
            err,
        };
        // tcpdump says "listening on lo" once the capture runs.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&cap.err).unwrap_or_default();
            if text.contains("listening on") {
                break;
            }
            if let Some(c) = cap.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("tcpdump exited ({st}): {text}");
            }
            assert!(Instant::now() < deadline, "tcpdump did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        cap
    }

    /// SIGINT (tcpdump flushes and prints its drop count), wait, read the file.
    fn stop(mut self) -> Counts {
        let mut c = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.wait();
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        for line in err.lines().filter(|l| l.contains("packets")) {
            println!("  tcpdump: {line}");
        }
        read_pcap(&std::fs::read(&self.file).expect("read the pcap file"))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sum the TCP and UDP payloads of a classic pcap file (either byte order,
/// micro- or nanosecond stamps; Ethernet, Linux cooked v1/v2, null, raw).
fn read_pcap(b: &[u8]) -> Counts {
    let mut c = Counts::default();
    if b.len() < 24 {
        return c;
    }
    let magic = u32::from_le_bytes(b[0..4].try_into().unwrap());
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => panic!("not a pcap file (magic {magic:#x})"),
    };
    let u32_at = |o: usize| {
        let x: [u8; 4] = b[o..o + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(x)
        } else {
            u32::from_be_bytes(x)
        }
    };
    let linktype = u32_at(20);
    let mut o = 24;
    while o + 16 <= b.len() {
        let incl = u32_at(o + 8) as usize;
        let rec = &b[o + 16..(o + 16 + incl).min(b.len())];
        o += 16 + incl;
        c.packets += 1;
        // (offset of the IP header, ethertype if the link says it)
        let ip = match linktype {
            1 if rec.len() >= 14 => Some((14, u16::from_be_bytes([rec[12], rec[13]]))),
            113 if rec.len() >= 16 => Some((16, u16::from_be_bytes([rec[14], rec[15]]))),
            276 if rec.len() >= 20 => Some((20, u16::from_be_bytes([rec[0], rec[1]]))),
            0 => Some((4, 0)),
            12 | 101 => Some((0, 0)),
            _ => None,
        };
        let Some((off, _ethertype)) = ip else {
            c.other += 1;
            continue;
        };
        match l4_payload(&rec[off.min(rec.len())..]) {
            Some((6, n)) => {
                c.tcp_packets += 1;
                c.tcp_payload += n;
                if n > 0 {
                    *c.sizes.entry(("tcp", n)).or_default() += 1;
                }
            }
            Some((17, n)) => {
                c.udp_packets += 1;
                c.udp_payload += n;
                *c.sizes.entry(("udp", n)).or_default() += 1;
            }
            _ => c.other += 1,
        }
    }
    c
}

/// (IP protocol, transport payload length) of an IPv4 or IPv6 packet.
fn l4_payload(p: &[u8]) -> Option<(u8, u64)> {
    let (proto, l4, l4_len) = match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
            (*p.get(9)?, p.get(ihl..)?, total.checked_sub(ihl)?)
        }
        6 => {
            let len = usize::from(u16::from_be_bytes([*p.get(4)?, *p.get(5)?]));
            (*p.get(6)?, p.get(40..)?, len)
        }
        _ => return None,
    };
    let hdr = match proto {
        6 => usize::from(l4.get(12)? >> 4) * 4,
        17 => 8,
        _ => return None,
    };
    Some((proto, l4_len.checked_sub(hdr)? as u64))
}

// ------------------------------------------------------ a minimal Serf RPC

/// Just enough MessagePack for Serf's RPC (`handshake`, `members`).
#[derive(Clone, Debug)]
#[allow(dead_code)]
enum Mp {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    Arr(Vec<Mp>),
    Map(Vec<(Mp, Mp)>),
}

impl Mp {
    fn get(&self, key: &str) -> Option<&Mp> {
        match self {
            Mp::Map(kv) => kv
                .iter()
                .find(|(k, _)| matches!(k, Mp::Bytes(b) if b == key.as_bytes()))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self) -> Option<String> {
        match self {
            Mp::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Decode one value from the front of `b`: None when `b` is incomplete.
fn mp_decode(b: &[u8]) -> Result<Option<(Mp, usize)>, String> {
    fn be(b: &[u8], at: usize, n: usize) -> Option<u64> {
        let s = b.get(at..at + n)?;
        Some(s.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
    }
    macro_rules! need {
        ($e:expr) => {
            match $e {
                Some(v) => v,
                None => return Ok(None),
            }
        };
    }
    let t = *need!(b.first());
    let bytes = |at: usize, n: usize| -> Option<(Mp, usize)> {
        Some((Mp::Bytes(b.get(at..at + n)?.to_vec()), at + n))
    };
    let seq = |at: usize, n: usize, map: bool| -> Result<Option<(Mp, usize)>, String> {
        let mut at = at;
        let mut items = Vec::new();
        for _ in 0..n * if map { 2 } else { 1 } {
            let Some((v, used)) = mp_decode(&b[at..])? else {
                return Ok(None);
            };
            items.push(v);
            at += used;
        }
        let v = if map {
            let mut kv = Vec::new();
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                kv.push((k, v));
            }
            Mp::Map(kv)
        } else {
            Mp::Arr(items)
        };
        Ok(Some((v, at)))
    };
    Ok(match t {
        0x00..=0x7f => Some((Mp::Int(i64::from(t)), 1)),
        0x80..=0x8f => return seq(1, usize::from(t & 0x0f), true),
        0x90..=0x9f => return seq(1, usize::from(t & 0x0f), false),
        0xa0..=0xbf => bytes(1, usize::from(t & 0x1f)),
        0xc0 => Some((Mp::Nil, 1)),
        0xc2 => Some((Mp::Bool(false), 1)),
        0xc3 => Some((Mp::Bool(true), 1)),
        0xc4 | 0xd9 => bytes(2, need!(be(b, 1, 1)) as usize),
        0xc5 | 0xda => bytes(3, need!(be(b, 1, 2)) as usize),
        0xc6 | 0xdb => bytes(5, need!(be(b, 1, 4)) as usize),
        // ext: type byte, then data; kept as bytes.
        0xd4 => bytes(2, 1),
        0xd5 => bytes(2, 2),
        0xd6 => bytes(2, 4),
        0xd7 => bytes(2, 8),
        0xd8 => bytes(2, 16),
        0xc7 => bytes(3, need!(be(b, 1, 1)) as usize),
        0xc8 => bytes(4, need!(be(b, 1, 2)) as usize),
        0xc9 => bytes(6, need!(be(b, 1, 4)) as usize),
        0xca => Some((
            Mp::Float(f64::from(f32::from_bits(need!(be(b, 1, 4)) as u32))),
            5,
        )),
        0xcb => Some((Mp::Float(f64::from_bits(need!(be(b, 1, 8)))), 9)),
        0xcc => Some((Mp::Int(need!(be(b, 1, 1)) as i64), 2)),
        0xcd => Some((Mp::Int(need!(be(b, 1, 2)) as i64), 3)),
        0xce => Some((Mp::Int(need!(be(b, 1, 4)) as i64), 5)),
        0xcf => Some((Mp::Int(need!(be(b, 1, 8)) as i64), 9)),
        0xd0 => Some((Mp::Int(i64::from(need!(be(b, 1, 1)) as u8 as i8)), 2)),
        0xd1 => Some((Mp::Int(i64::from(need!(be(b, 1, 2)) as u16 as i16)), 3)),
        0xd2 => Some((Mp::Int(i64::from(need!(be(b, 1, 4)) as u32 as i32)), 5)),
        0xd3 => Some((Mp::Int(need!(be(b, 1, 8)) as i64), 9)),
        0xdc => return seq(3, need!(be(b, 1, 2)) as usize, false),
        0xdd => return seq(5, need!(be(b, 1, 4)) as usize, false),
        0xde => return seq(3, need!(be(b, 1, 2)) as usize, true),
        0xdf => return seq(5, need!(be(b, 1, 4)) as usize, true),
        0xe0..=0xff => Some((Mp::Int(i64::from(t as i8)), 1)),
        0xc1 => return Err("msgpack: reserved byte 0xc1".into()),
    })
}

fn mp_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 32);
    out.push(0xa0 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// One kept connection to an agent's RPC port.
struct SerfRpc {
    s: TcpStream,
    buf: Vec<u8>,
    seq: u64,
}

impl SerfRpc {
    fn connect(addr: &str) -> std::io::Result<SerfRpc> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        let mut rpc = SerfRpc {
            s,
            buf: Vec::new(),
            seq: 0,
        };
        // {"Command":"handshake","Seq":0} {"Version":1}; answered by a header only.
        let mut body = vec![0x81];
        mp_str(&mut body, "Version");
        body.push(1);
        rpc.request("handshake", Some(&body))?;
        Ok(rpc)
    }

    fn read_value(&mut self) -> std::io::Result<Mp> {
        loop {
            match mp_decode(&self.buf) {
                Ok(Some((v, used))) => {
                    self.buf.drain(..used);
                    return Ok(v);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e)),
            }
            let mut chunk = [0u8; 16384];
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Send a command; read its response header (error checked).
    fn request(&mut self, cmd: &str, body: Option<&[u8]>) -> std::io::Result<()> {
        let mut out = vec![0x82];
        mp_str(&mut out, "Command");
        mp_str(&mut out, cmd);
        mp_str(&mut out, "Seq");
        out.push(0xcf);
        out.extend_from_slice(&self.seq.to_be_bytes());
        self.seq += 1;
        if let Some(b) = body {
            out.extend_from_slice(b);
        }
        self.s.write_all(&out)?;
        let h = self.read_value()?;
        match h.get("Error").and_then(Mp::str) {
            Some(e) if e.is_empty() => Ok(()),
            Some(e) => Err(std::io::Error::other(format!("serf rpc {cmd}: {e}"))),
            None => Err(std::io::Error::other(format!(
                "serf rpc {cmd}: header {h:?}"
            ))),
        }
    }

    /// (name, status) of every member this agent knows.
    fn members(&mut self) -> std::io::Result<Vec<(String, String)>> {
        self.request("members", None)?;
        let body = self.read_value()?;
        let Some(Mp::Arr(ms)) = body.get("Members") else {
            return Err(std::io::Error::other(format!("members: {body:?}")));
        };
        Ok(ms
            .iter()
            .map(|m| {
                (
                    m.get("Name").and_then(Mp::str).unwrap_or_default(),
                    m.get("Status").and_then(Mp::str).unwrap_or_default(),
                )
            })
            .collect())
    }
}

// ----------------------------------------------------------------- figures

#[derive(Clone, Debug, Default)]
struct Figures {
    /// Idle payload counts over the window (None without tcpdump).
    idle: Option<Counts>,
    window_s: f64,
    /// Per live node: seconds from the SIGKILL until it marked the victim.
    detect_s: Vec<f64>,
    /// Live nodes that had not marked it by the deadline.
    undetected: usize,
    /// dcloud only, from the daemons' own counters over the idle window, per
    /// node per second: engine messages sent, changes applied (each one
    /// signature-checked), membership rumours signature-checked.
    engine: Option<(f64, f64, f64)>,
}

impl Figures {
    fn per_node_per_s(&self, nodes: usize) -> Option<f64> {
        self.idle
            .as_ref()
            .map(|c| c.payload() as f64 / self.window_s / nodes as f64)
    }

    fn median_max(&self) -> Option<(f64, f64)> {
        if self.detect_s.is_empty() {
            return None;
        }
        let mut v = self.detect_s.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some((median, v[n - 1]))
    }

    fn describe(&self, what: &str, nodes: usize) {
        if let (Some(c), Some(r)) = (&self.idle, self.per_node_per_s(nodes)) {
            println!(
                "{what}: idle over {:.0} s: {} packets, TCP {} B in {} packets, UDP {} B in {} packets, {} other; {r:.0} B/node/s",
                self.window_s,
                c.packets,
                c.tcp_payload,
                c.tcp_packets,
                c.udp_payload,
                c.udp_packets,
                c.other
            );
            println!("{what}: most bytes in: {}", c.top_sizes(6));
        }
        if let Some((msgs, changes, rumours)) = self.engine {
            println!(
                "{what}: idle per node per second (daemon counters): {msgs:.2} engine messages sent, {changes:.3} changes applied (signature-checked), {rumours:.3} rumours signature-checked"
            );
        }
        if let Some((m, x)) = self.median_max() {
            println!(
                "{what}: detection by {} live nodes: median {m:.2} s, max {x:.2} s{}",
                self.detect_s.len(),
                if self.undetected > 0 {
                    format!(
                        ", {} never within {} s",
                        self.undetected,
                        DETECT_DEADLINE.as_secs()
                    )
                } else {
                    String::new()
                }
            );
        }
    }
}

// ---------------------------------------------------------------- serf half

/// `n` ports on 127.0.0.1 below the ephemeral range, free for TCP (and UDP
/// when `udp`), none in `taken`.
fn low_ports(n: usize, from: u16, udp: bool, taken: &[u16]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut p = from;
    while out.len() < n {
        assert!(p < 32_000, "no free low ports");
        let free = !taken.contains(&p)
            && TcpListener::bind(("127.0.0.1", p)).is_ok()
            && (!udp || UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if free {
            out.push(p);
        }
        p += 1;
    }
    out
}

fn serf_half(nodes: usize, window: Duration, tcpdump: bool) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let base = 21_000 + (std::process::id() % 1000) as u16 * 4;
    let bind = low_ports(nodes, base, true, &[]);
    let rpc = low_ports(nodes, base + 4000, false, &bind);
    let name = |i: usize| format!("serf-{i}");
    let mut procs = Procs::default();
    let spawn = |procs: &mut Procs, i: usize| {
        let log = std::fs::File::create(dir.path().join(format!("{}.log", name(i)))).unwrap();
        let mut cmd = Command::new("serf");
        cmd.arg("agent")
            .arg(format!("-node={}", name(i)))
            .arg(format!("-bind=127.0.0.1:{}", bind[i]))
            .arg(format!("-rpc-addr=127.0.0.1:{}", rpc[i]))
            .arg("-log-level=warn");
        // Everyone joins agents 0 and 1 (as the daemons bootstrap from nodes 0 and 1).
        for j in [0, 1] {
            if j < i {
                cmd.arg(format!("-join=127.0.0.1:{}", bind[j]));
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        procs.push(cmd.spawn().expect("spawn serf agent"))
    };
    let connect = |i: usize, within: Duration| -> SerfRpc {
        let deadline = Instant::now() + within;
        loop {
            match SerfRpc::connect(&format!("127.0.0.1:{}", rpc[i])) {
                Ok(c) => return c,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "serf agent {i} RPC: {e}; log: {}",
                    std::fs::read_to_string(dir.path().join(format!("{}.log", name(i))))
                        .unwrap_or_default()
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let t_start = Instant::now();
    spawn(&mut procs, 0);
    let mut clients = vec![connect(0, Duration::from_secs(20))];
    spawn(&mut procs, 1);
    clients.push(connect(1, Duration::from_secs(20)));
    for i in 2..nodes {
        spawn(&mut procs, i);
    }
    for i in 2..nodes {
        clients.push(connect(i, Duration::from_secs(20)));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = clients.iter_mut().all(|c| {
            c.members()
                .is_ok_and(|m| m.iter().filter(|(_, s)| s == "alive").count() == nodes)
        });
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "serf: not every agent sees {nodes} alive members within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "serf: all {nodes} agents see {nodes} alive members {:.1} s after the first start",
        t_start.elapsed().as_secs_f64()
    );
    std::thread::sleep(SETTLE);

    let mut fig = Figures::default();
    if tcpdump {
        let filter = format!(
            "host 127.0.0.1 and ({})",
            bind.iter()
                .map(|p| format!("port {p}"))
                .collect::<Vec<_>>()
                .join(" or ")
        );
        let cap = Capture::start(dir.path(), "serf", &filter);
        let t0 = Instant::now();
        std::thread::sleep(window);
        fig.window_s = t0.elapsed().as_secs_f64();
        fig.idle = Some(cap.stop());
    }

    // SIGKILL the victim; poll every live agent until it says "failed".
    let victim = name(VICTIM);
    println!(
        "serf: SIGKILL {victim} (pid {})",
        procs.pid(VICTIM).unwrap()
    );
    procs.kill(VICTIM);
    let t0 = Instant::now();
    let mut seen: Vec<Option<f64>> = vec![None; nodes];
    seen[VICTIM] = Some(0.0);
    while seen.iter().any(Option::is_none) && t0.elapsed() < DETECT_DEADLINE {
        let pending: Vec<usize> = (0..nodes).filter(|&i| seen[i].is_none()).collect();
        for i in pending {
            let failed = match clients[i].members() {
                Ok(m) => m.iter().any(|(n, s)| *n == victim && s == "failed"),
                Err(e) => {
                    println!("serf: agent {i} RPC error {e}; reconnecting");
                    clients[i] = connect(i, Duration::from_secs(5));
                    false
                }
            };
            if failed {
                seen[i] = Some(t0.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, s) in seen.iter().enumerate() {
        if i == VICTIM {
            continue;
        }
        match s {
            Some(t) => fig.detect_s.push(*t),
            None => fig.undetected += 1,
        }
    }
    drop(clients);
    drop(procs);
    fig
}

// -------------------------------------------------------------- dcloud half

/// Whether a `/v1/fleet` row shows its node as not alive: today `stale` (not
/// heard within the stale bound); a membership layer may add a `down` flag,
/// `alive: false` or a `state`/`liveness` word, all taken here too.
fn marked_down(row: &Value) -> bool {
    row["stale"] == true
        || row["down"] == true
        || row["alive"] == false
        || ["state", "liveness", "membership"].iter().any(|k| {
            matches!(
                row[*k].as_str(),
                Some("down" | "failed" | "dead" | "faulty")
            )
        })
}

async fn dcloud_half(nodes: usize, window: Duration, tcpdump: bool) -> Figures {
    let mut f = Fleet::new(nodes, FIRST_IP);
    // The daemon's own default: status only on change, a signed refresh
    // every 10 minutes; liveness from membership.
    let refresh_ms = env_u64("DCLOUD_BENCH_STATUS_REFRESH_MS")
        .unwrap_or(dcloud_node::engine::EngineConfig::default().status_refresh_interval_ms);
    for n in &mut f.nodes {
        n.status_refresh_ms = refresh_ms;
    }
    let t_start = Instant::now();
    f.start_all();
    let all: Vec<usize> = (0..nodes).collect();
    f.ready(&all).await;
    let c = f.enrol_at(0, &all).await;
    let h = Fleet::head(&c);
    f.wait(
        "all enrolled and applied",
        Duration::from_secs(120),
        async |f| f.rollout_complete(0, &h, nodes).await,
    )
    .await;
    let want_peers = 8.min(nodes - 1);
    f.wait(
        "every node holds its peers target",
        Duration::from_secs(60),
        async |f| {
            for i in 0..f.nodes.len() {
                match f.get(i, "/v1/node").await {
                    Some(v) if v["peers"].as_array().map_or(0, |p| p.len()) >= want_peers => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;
    println!(
        "dcloud: {nodes} daemons enrolled, {want_peers} peers each (status refresh {refresh_ms} ms) {:.1} s after start",
        t_start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(SETTLE).await;

    let mut fig = Figures::default();
    let counters = async |f: &Fleet| {
        let mut sum = [0.0f64; 3];
        for i in 0..f.nodes.len() {
            let m = f.metrics(i).await.expect("a daemon's /metrics");
            for (k, name) in [
                "dcloud_messages_out_total",
                "dcloud_changes_applied_total",
                "dcloud_rumours_verified_total",
            ]
            .iter()
            .enumerate()
            {
                sum[k] += m.get(*name).copied().unwrap_or(0.0);
            }
        }
        sum
    };
    let before = counters(&f).await;
    let t_counters = Instant::now();
    if tcpdump {
        // Each daemon's libp2p port on its own address (an API port of one
        // address may equal a p2p port of another, so host and port together).
        let filter = f
            .nodes
            .iter()
            .map(|n| format!("(host {} and port {})", n.ip, n.p2p_port))
            .collect::<Vec<_>>()
            .join(" or ");
        let cap = Capture::start(f.dir.path(), "dcloud", &filter);
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        fig.window_s = t0.elapsed().as_secs_f64();
        fig.idle = Some(
            tokio::task::spawn_blocking(move || cap.stop())
                .await
                .unwrap(),
        );
    } else {
        tokio::time::sleep(window).await;
    }
    let after = counters(&f).await;
    let per = |k: usize| (after[k] - before[k]) / t_counters.elapsed().as_secs_f64() / nodes as f64;
    fig.engine = Some((per(0), per(1), per(2)));

    let victim = f.nodes[VICTIM].id.to_hex();
    let stale_after = f
        .get(0, "/v1/fleet")
        .await
        .map(|v| v["stale_after_ms"].clone())
        .unwrap_or_default();
    println!(
        "dcloud: SIGKILL {} (pid {}); stale bound {stale_after} ms",
        f.nodes[VICTIM].name,
        f.nodes[VICTIM].pid().unwrap()
    );
    f.kill(VICTIM);
    let t0 = Instant::now();
    let mut seen: Vec<Option<f64>> = vec![None; nodes];
    seen[VICTIM] = Some(0.0);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while seen.iter().any(Option::is_none) && t0.elapsed() < DETECT_DEADLINE {
        tick.tick().await;
        let pending: Vec<usize> = (0..nodes).filter(|&i| seen[i].is_none()).collect();
        for i in pending {
            let Some(v) = f.get(i, "/v1/fleet").await else {
                continue;
            };
            let down = v["nodes"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["id"].as_str() == Some(victim.as_str()) && marked_down(r))
            });
            if down {
                seen[i] = Some(t0.elapsed().as_secs_f64());
            }
        }
    }
    for (i, s) in seen.iter().enumerate() {
        if i == VICTIM {
            continue;
        }
        match s {
            Some(t) => fig.detect_s.push(*t),
            None => fig.undetected += 1,
        }
    }
    fig
}

// -------------------------------------------------------------------- table

fn fmt_opt(v: Option<f64>, unit: &str, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}{unit}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(d), Some(s)) if s > 0.0 => format!("{:.2}x", d / s),
        _ => "-".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: 32 serf agents and 32 daemons, tcpdump, apt-get; run with --release -- --ignored --nocapture"]
async fn bench_serf_beside_dcloud() {
    let nodes = env_u64("DCLOUD_BENCH_NODES").map_or(NODES_DEFAULT, |v| v as usize);
    assert!(
        nodes > VICTIM && usize::from(FIRST_IP) + nodes <= 255,
        "DCLOUD_BENCH_NODES must be in {}..={}",
        VICTIM + 1,
        255 - usize::from(FIRST_IP)
    );
    let window = Duration::from_secs(env_u64("DCLOUD_BENCH_WINDOW_S").unwrap_or(WINDOW_DEFAULT_S));
    let (serf, tcpdump) = ensure_tools();
    let skip_serf = std::env::var("DCLOUD_BENCH_SKIP_SERF").is_ok();
    let skip_dcloud = std::env::var("DCLOUD_BENCH_SKIP_DCLOUD").is_ok();

    let version = if serf { serf_version() } else { String::new() };
    let s = if serf && !skip_serf {
        println!("== Serf ({version}): {nodes} agents on 127.0.0.1 ==");
        let fig = tokio::task::spawn_blocking(move || serf_half(nodes, window, tcpdump))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        fig.describe("serf", nodes);
        Some(fig)
    } else {
        None
    };
    let d = if skip_dcloud {
        None
    } else {
        println!(
            "== dcloud: {nodes} daemons on 127.0.0.{FIRST_IP}..127.0.0.{} ==",
            usize::from(FIRST_IP) + nodes - 1
        );
        let fig = dcloud_half(nodes, window, tcpdump).await;
        fig.describe("dcloud", nodes);
        Some(fig)
    };

    let idle_s = s.as_ref().and_then(|f| f.per_node_per_s(nodes));
    let idle_d = d.as_ref().and_then(|f| f.per_node_per_s(nodes));
    let mm_s = s.as_ref().and_then(Figures::median_max);
    let mm_d = d.as_ref().and_then(Figures::median_max);
    let serf_col = if version.is_empty() {
        "serf".to_string()
    } else {
        format!("serf {}", version.trim_start_matches("Serf v"))
    };
    println!();
    println!(
        "bench_serf: {nodes} processes each on loopback, one run, idle window {} s",
        window.as_secs()
    );
    println!(
        "| {:<46} | {:>14} | {:>14} | {:>14} |",
        "what", serf_col, "dcloud", "dcloud / serf"
    );
    println!("|{:-<48}|{:->16}|{:->16}|{:->16}|", "", "", "", "");
    println!(
        "| {:<46} | {:>14} | {:>14} | {:>14} |",
        "idle payload B/node/s (TCP+UDP, gossip ports)",
        fmt_opt(idle_s, "", 0),
        fmt_opt(idle_d, "", 0),
        ratio(idle_d, idle_s)
    );
    println!(
        "| {:<46} | {:>14} | {:>14} | {:>14} |",
        "SIGKILL -> marked failed/stale: median",
        fmt_opt(mm_s.map(|m| m.0), " s", 2),
        fmt_opt(mm_d.map(|m| m.0), " s", 2),
        ratio(mm_d.map(|m| m.0), mm_s.map(|m| m.0))
    );
    println!(
        "| {:<46} | {:>14} | {:>14} | {:>14} |",
        "SIGKILL -> marked failed/stale: max",
        fmt_opt(mm_s.map(|m| m.1), " s", 2),
        fmt_opt(mm_d.map(|m| m.1), " s", 2),
        ratio(mm_d.map(|m| m.1), mm_s.map(|m| m.1))
    );
    for (what, fig) in [("serf", &s), ("dcloud", &d)] {
        if let Some(fig) = fig
            && fig.undetected > 0
        {
            println!(
                "NOTE: {what}: {} live nodes never marked the killed one within {} s",
                fig.undetected,
                DETECT_DEADLINE.as_secs()
            );
        }
    }
}
