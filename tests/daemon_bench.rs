//! Benchmark over real processes (ignored by default; run it on a release
//! build):
//!
//! ```text
//! cargo test --release -p dcloud-node --test daemon_bench -- --ignored --nocapture
//! ```
//!
//! 32 `dcloud` processes on loopback. Each trial publishes one signed policy
//! change at a node and measures the time until that node's rollout view shows
//! all 32 sites reporting it applied (their status carried back to it). Then
//! one node's idle CPU and resident memory are measured over a window.

#[path = "daemon_support.rs"]
mod support;

use std::time::{Duration, Instant};

use support::Fleet;

const NODES_DEFAULT: usize = 32;
const TRIALS: usize = 12;
const IDLE_WINDOW: Duration = Duration::from_secs(20);

fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn proc_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100)
}

/// Sum over the fleet of Prometheus counters named `names` (the text format's
/// `dcloud_<name>_total` lines).
async fn fleet_counters(f: &Fleet, names: &[&str]) -> Vec<u64> {
    let mut sums = vec![0u64; names.len()];
    for n in &f.nodes {
        let Ok(r) = f.http.get(format!("http://{}/metrics", n.api)).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        for line in text.lines() {
            for (k, name) in names.iter().enumerate() {
                if let Some(v) = line.strip_prefix(&format!("dcloud_{name}_total ")) {
                    sums[k] += v.trim().parse::<f64>().unwrap_or(0.0) as u64;
                }
            }
        }
    }
    sums
}

const COUNTERS: [&str; 3] = ["messages_in", "changes_received", "changes_applied"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: 32 processes; run with --release -- --ignored --nocapture"]
async fn bench_32_nodes_publish_to_all_applied() {
    // DCLOUD_BENCH_NODES overrides the fleet size (for quick looks).
    let nodes: usize = std::env::var("DCLOUD_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(NODES_DEFAULT);
    let mut f = Fleet::new(nodes, 100);
    // DCLOUD_BENCH_CONFIG: a config file (e.g. with an [engine] section) for every node.
    let extra_config = std::env::var("DCLOUD_BENCH_CONFIG").ok();
    // A status refresh every 15 s by default (not the daemon's 10 minutes):
    // the warm-up below waits for one round of them, and the idle figures
    // stay comparable with earlier runs. DCLOUD_BENCH_STATUS_REFRESH_MS sets it.
    let heartbeat_ms: u64 = std::env::var("DCLOUD_BENCH_STATUS_REFRESH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15_000);
    for n in &mut f.nodes {
        n.status_refresh_ms = heartbeat_ms;
        if let Some(c) = &extra_config {
            n.extra = vec!["--config".into(), c.clone()];
        }
    }
    f.start_all();
    let all: Vec<usize> = (0..nodes).collect();
    f.ready(&all).await;
    let c = f.enrol_at(0, &all).await;
    let h = Fleet::head(&c);
    f.wait(
        "all 32 enrolled and applied",
        Duration::from_secs(120),
        async |f| f.rollout_complete(0, &h, nodes).await,
    )
    .await;

    // DCLOUD_BENCH_OFFSET shifts which nodes publish (0: nodes 0, 7, 14, ...).
    let offset: usize = std::env::var("DCLOUD_BENCH_OFFSET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // The fleet has formed when every node holds its peers target (8, or
    // everyone in a smaller fleet): until then nodes are still dialing,
    // handshaking and reconciling with their new peers.
    let formed = Instant::now();
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
        "fleet formed (every node has {want_peers} peers) {:.1} s after enrolment",
        formed.elapsed().as_secs_f64()
    );
    // Steady state: every node has sent a heartbeat since. The first change of
    // each node after its links formed goes eagerly over every link (one
    // dissemination tree per status owner, pruned by the duplicates of that
    // first change); in a running fleet the heartbeats do that, not a rollout.
    // A rollout right after forming measured 360 to 540 ms with 7 changes
    // received per change applied, against about 1.9 afterwards.
    f.wait_heartbeat_round(nodes, heartbeat_ms).await;
    println!(
        "steady (every node heartbeated since) {:.1} s after enrolment",
        formed.elapsed().as_secs_f64()
    );
    let mut latencies_ms: Vec<f64> = Vec::new();
    for trial in 0..TRIALS {
        let at = (trial * 7 + offset) % nodes;
        let c = f.sign(vec![Fleet::set_fleet(
            &format!("bench.k{trial}"),
            trial.into(),
        )]);
        let h = Fleet::head(&c);
        let bundle = f.bundle(vec![c]);
        let pids: Vec<u32> = f.nodes.iter().filter_map(|n| n.pid()).collect();
        let counters_before = fleet_counters(&f, &COUNTERS).await;
        let cpu_before: u64 = pids.iter().copied().map(proc_cpu_ticks).sum();
        let t0 = Instant::now();
        println!(
            "trial {trial:2}: publishing {} at node {at} at {:?}",
            &h[..8],
            std::time::SystemTime::now()
        );
        let (status, body) = f.publish(at, bundle).await;
        assert_eq!(status, 200, "{body}");
        let deadline = t0 + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut local: Vec<Option<f64>> = vec![None; nodes];
        let diag = std::env::var("DCLOUD_BENCH_DIAG").is_ok();
        loop {
            tick.tick().await;
            if diag {
                for (i, slot) in local.iter_mut().enumerate() {
                    if slot.is_none() && f.applied_everywhere(&[i], &h).await {
                        *slot = Some(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
            if f.rollout_complete(at, &h, nodes).await {
                if diag {
                    let l: Vec<String> = local
                        .iter()
                        .map(|x| x.map(|v| format!("{v:.0}")).unwrap_or("-".into()))
                        .collect();
                    println!("  local apply times (ms): {}", l.join(" "));
                }
                break;
            }
            if Instant::now() > deadline {
                f.fail(&format!("trial {trial}: all 32 applied"));
            }
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let counters: Vec<u64> = fleet_counters(&f, &COUNTERS)
            .await
            .iter()
            .zip(&counters_before)
            .map(|(a, b)| a - b)
            .collect();
        let cpu_after: u64 = pids.iter().copied().map(proc_cpu_ticks).sum();
        let fleet_cpu_ms =
            (cpu_after - cpu_before) as f64 * 1000.0 / clock_ticks_per_second() as f64;
        println!(
            "trial {trial:2}: published at node {at:2}, all {nodes} applied in {ms:7.1} ms (fleet CPU {fleet_cpu_ms:.0} ms; messages {}, changes received {}, newly applied {})",
            counters[0], counters[1], counters[2]
        );
        latencies_ms.push(ms);
    }
    let mut sorted = latencies_ms.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = (sorted[TRIALS / 2 - 1] + sorted[TRIALS / 2]) / 2.0;
    let max = *sorted.last().unwrap();
    println!(
        "publish -> all {nodes} applied over {TRIALS} trials: median {median:.1} ms, max {max:.1} ms"
    );

    // Idle: no publications; heartbeats and anti-entropy only. The window is
    // a measurement interval, not a wait for a condition.
    let pid = f.nodes[5].pid().unwrap();
    let hz = clock_ticks_per_second();
    let cpu0 = proc_cpu_ticks(pid);
    let fleet_cpu0: u64 = f
        .nodes
        .iter()
        .filter_map(|n| n.pid())
        .map(proc_cpu_ticks)
        .sum();
    let t0 = Instant::now();
    if let Ok(out) = std::env::var("DCLOUD_BENCH_PERF") {
        // Profile the idle node (perf must be installed).
        let _ = std::process::Command::new("perf")
            .args([
                "record",
                "-g",
                "-o",
                &out,
                "-p",
                &pid.to_string(),
                "--",
                "sleep",
                "10",
            ])
            .status();
    }
    tokio::time::sleep(IDLE_WINDOW.saturating_sub(t0.elapsed())).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (proc_cpu_ticks(pid) - cpu0) as f64 / hz as f64 / secs * 100.0;
    let fleet_cpu: u64 = f
        .nodes
        .iter()
        .filter_map(|n| n.pid())
        .map(proc_cpu_ticks)
        .sum();
    let fleet_cpu = (fleet_cpu - fleet_cpu0) as f64 / hz as f64 / secs * 100.0 / nodes as f64;
    let rss_mb = proc_rss_kb(pid) as f64 / 1024.0;
    let rss_all: Vec<f64> = f
        .nodes
        .iter()
        .filter_map(|n| n.pid())
        .map(|p| proc_rss_kb(p) as f64 / 1024.0)
        .collect();
    let rss_max = rss_all.iter().cloned().fold(0.0, f64::max);
    println!(
        "idle node over {secs:.0} s: CPU {cpu:.2}% of a core (fleet mean {fleet_cpu:.2}%), RSS {rss_mb:.1} MB (fleet max {rss_max:.1} MB)"
    );
    if let Ok(dir) = std::env::var("DCLOUD_BENCH_LOGS") {
        // Keep every node's log for a look at where the time went.
        std::fs::create_dir_all(&dir).unwrap();
        for n in &f.nodes {
            std::fs::write(format!("{dir}/{}.log", n.name), n.log()).unwrap();
        }
    }
    if max > 500.0 {
        println!("NOTE: max {max:.0} ms is over the 500 ms target");
    }
}
