//! `dcloud-sim run FILE [--seed N] [--nodes N] [--json] [--out DIR]`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dcloud_sim::{Scenario, Sim};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "dcloud-sim",
    about = "Deterministic fleet simulator for dcloud engines"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario file.
    Run {
        /// The scenario (TOML).
        file: PathBuf,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Fleet size (default: the scenario's).
        #[arg(long)]
        nodes: Option<usize>,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Write report.json, convergence.csv and convergence.svg here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print every message this node sends and receives (debugging);
        /// repeat it to trace several nodes (messages between two of them
        /// show when sent and, unless lost, when received).
        #[arg(long)]
        trace_node: Vec<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let Cmd::Run {
        file,
        seed,
        nodes,
        json,
        out,
        trace_node,
    } = Cli::parse().cmd;
    let mut sc = Scenario::load(&file)?;
    if let Some(n) = nodes {
        sc.nodes = n;
        sc.validate()?;
    }
    let seed = seed.unwrap_or(sc.seed);
    let name = sc.name.clone();
    let duration = sc.duration_ms;
    eprintln!(
        "dcloud-sim: scenario {name} ({}), seed {seed}, {} nodes",
        file.display(),
        sc.nodes
    );
    let wall = Instant::now();
    let bar = ProgressBar::new(duration);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} simulated ms")
            .context("progress template")?,
    );
    // The unscoped baseline, if the scenario asks for one (same seed).
    let baseline = sc.compare_unscoped.then(|| sc.unscoped());
    let mut sim = Sim::new(sc, seed);
    for n in trace_node {
        sim.trace(n);
    }
    let mut result = sim.run(|t| bar.set_position(t));
    bar.finish_and_clear();
    if let Some(baseline) = baseline {
        eprintln!("dcloud-sim: the same scenario and seed without scoping, for comparison");
        let b = Sim::new(baseline, seed).run(|_| {});
        let by_class = b.bytes_by_scope_class();
        if let Some(sc) = &mut result.report.scope {
            sc.compare(&b.report.traffic, by_class);
        }
    }
    let wall_s = wall.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string_pretty(&result.report)?);
    } else {
        print!("{}", result.report.table());
    }
    eprintln!("wall time: {wall_s:.1} s");
    if let Some(dir) = out {
        result.report.write(&dir)?;
        eprintln!("wrote {}", dir.display());
    }
    if !result.ok() {
        anyhow::bail!(
            "checkers failed: replay with `dcloud-sim run {} --seed {seed}`",
            file.display()
        );
    }
    Ok(())
}
