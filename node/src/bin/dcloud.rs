//! `dcloud`: the node daemon of every site, and its local query commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dcloud_crdt::SecretKey;
use dcloud_node::cli::{self, Query};
use dcloud_node::config::{self, RawApply, RawConfig};
use dcloud_node::{api, daemon};

/// dcloud: the control-plane daemon of a site, and queries against it.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Args)]
struct ApiArgs {
    /// Address of the node's local API.
    #[arg(long, env = "DCLOUD_API", default_value = config::API_DEFAULT, global = true)]
    api: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file; flags and DCLOUD_* variables override its keys.
    #[arg(long, short, env = "DCLOUD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (node key, store, epoch file).
    #[arg(long, env = "DCLOUD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Trust root chain file.
    #[arg(long, env = "DCLOUD_TRUST_ROOT")]
    trust_root: Option<PathBuf>,
    /// Listen multiaddr (repeat, or comma-separate).
    #[arg(long, env = "DCLOUD_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Bootstrap peer multiaddr (repeat, or comma-separate).
    #[arg(long, env = "DCLOUD_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Local API address.
    #[arg(long, env = "DCLOUD_API")]
    api: Option<String>,
    /// Heartbeat period.
    #[arg(long, env = "DCLOUD_STATUS_REFRESH_MS")]
    status_refresh_ms: Option<u64>,
    /// Discover peers on the LAN with mDNS.
    #[arg(long, env = "DCLOUD_MDNS")]
    mdns: Option<bool>,
    /// Peers to stay connected to.
    #[arg(long, env = "DCLOUD_PEERS_TARGET")]
    peers_target: Option<usize>,
    /// File the effective config is rendered to.
    #[arg(long, env = "DCLOUD_APPLY_FILE")]
    apply_file: Option<PathBuf>,
    /// Command run (by /bin/sh) after each render.
    #[arg(long, env = "DCLOUD_APPLY_COMMAND")]
    apply_command: Option<String>,
    /// Bound on the apply command's run time.
    #[arg(long, env = "DCLOUD_APPLY_TIMEOUT_MS")]
    apply_timeout_ms: Option<u64>,
    /// File the secrets sealed to this site are written to (JSON, mode 0600;
    /// default DATA_DIR/secrets.json). The apply command gets its path as
    /// DCLOUD_SECRETS_FILE.
    #[arg(long, env = "DCLOUD_APPLY_SECRETS_FILE")]
    apply_secrets_file: Option<PathBuf>,
    /// Clock skew allowed past a freshness statement's expiry.
    #[arg(long, env = "DCLOUD_FRESHNESS_SKEW_MS")]
    freshness_skew_ms: Option<u64>,
    /// How long after start a node may hold no freshness statement and still be fresh.
    #[arg(long, env = "DCLOUD_FRESHNESS_GRACE_MS")]
    freshness_grace_ms: Option<u64>,
    /// How long a node may lack policy heads a freshness statement names.
    #[arg(long, env = "DCLOUD_FRESHNESS_LAG_MAX_MS")]
    freshness_lag_max_ms: Option<u64>,
    /// Log format.
    #[arg(long, env = "DCLOUD_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the data directory and the node key; print the node id for enrolment.
    Init {
        /// Data directory.
        #[arg(long, env = "DCLOUD_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Run the daemon.
    Run(Box<RunArgs>),
    /// This node: membership, peers, policy, applied version, store.
    Status(ApiArgs),
    /// Every node: last heard, health, applied policy, how far behind.
    Fleet(ApiArgs),
    /// One node.
    Node {
        /// Node id (64 hex digits).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The policy: config, members, signers, conflicts.
    Policy(ApiArgs),
    /// This node's effective config.
    Config(ApiArgs),
    /// Who has applied a policy version (default: the current one).
    Rollout {
        /// Policy heads, comma-separated.
        #[arg(long)]
        heads: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Save the policy snapshot (the admin tool's offline base).
    Snapshot {
        /// Output file.
        #[arg(long, short)]
        out: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Publish a signed bundle at this node.
    Publish {
        /// Bundle file.
        file: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DCLOUD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn merge(args: &RunArgs) -> Result<config::Config> {
    let mut raw = match &args.config {
        Some(p) => RawConfig::from_file(p)?,
        None => RawConfig::default(),
    };
    if let Some(v) = &args.data_dir {
        raw.data_dir = Some(v.clone());
    }
    if let Some(v) = &args.trust_root {
        raw.trust_root = Some(v.clone());
    }
    if !args.listen.is_empty() {
        raw.listen = Some(args.listen.clone());
    }
    if !args.bootstrap.is_empty() {
        raw.bootstrap = Some(args.bootstrap.clone());
    }
    if let Some(v) = &args.api {
        raw.api = Some(v.clone());
    }
    if let Some(v) = args.status_refresh_ms {
        raw.engine
            .get_or_insert_default()
            .status_refresh_interval_ms = v;
    }
    if let Some(v) = args.mdns {
        raw.mdns = Some(v);
    }
    if let Some(v) = args.peers_target {
        raw.peers_target = Some(v);
    }
    if let Some(v) = args.freshness_skew_ms {
        raw.freshness_skew_ms = Some(v);
    }
    if let Some(v) = args.freshness_grace_ms {
        raw.freshness_grace_ms = Some(v);
    }
    if let Some(v) = args.freshness_lag_max_ms {
        raw.freshness_lag_max_ms = Some(v);
    }
    let apply = raw.apply.get_or_insert_with(RawApply::default);
    if let Some(v) = &args.apply_file {
        apply.file = Some(v.clone());
    }
    if let Some(v) = &args.apply_command {
        apply.command = Some(v.clone());
    }
    if let Some(v) = args.apply_timeout_ms {
        apply.timeout_ms = Some(v);
    }
    if let Some(v) = &args.apply_secrets_file {
        apply.secrets_file = Some(v.clone());
    }
    Ok(raw.validate()?)
}

/// Bound on a graceful shutdown.
const SHUTDOWN_MAX: Duration = Duration::from_secs(5);

async fn run(args: RunArgs) -> Result<()> {
    let cfg = merge(&args)?;
    let api_addr = cfg.api;
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .map_err(|source| daemon::StartError::Api {
            addr: api_addr,
            source,
        })?;
    // The address as bound (port 0 resolved): the one `Host` it answers to.
    let bound = listener
        .local_addr()
        .context("the local API's bound address")?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            api = %bound,
            "the local API listens on a non-loopback address: anyone who can reach it can read \
             the fleet's state and publish signed bundles; bind 127.0.0.1 unless a firewall \
             limits who reaches it"
        );
    }
    let (handle, actor, stop) = daemon::start(cfg).await?;
    tracing::info!(api = %bound, "local API listening");
    let (api_stop_tx, api_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, api::router(handle, bound)).with_graceful_shutdown(async {
        let _ = api_stop_rx.await;
    });
    let server = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "local API failed");
        }
    });
    let actor = tokio::spawn(actor);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        _ = term.recv() => tracing::info!("SIGTERM"),
    }
    // Stop accepting API requests, then stop the actor (it flushes the store).
    let _ = api_stop_tx.send(());
    let _ = stop.send(());
    let finished = tokio::time::timeout(SHUTDOWN_MAX, async {
        let _ = actor.await;
        let _ = server.await;
    })
    .await;
    if finished.is_err() {
        tracing::warn!("shutdown took longer than {SHUTDOWN_MAX:?}; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}

fn init(data_dir: PathBuf) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let path = config::key_path(&data_dir);
    let key = if path.exists() {
        let key = SecretKey::read_file(&path)?;
        eprintln!(
            "{} already holds a node key; keeping it",
            data_dir.display()
        );
        key
    } else {
        let key = SecretKey::generate();
        key.write_file(&path)?;
        key
    };
    println!("{}", key.public());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the daemon is one actor, and cross-thread wake-ups cost
    // more CPU than they save at this load.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let query = |q: Query, a: ApiArgs| -> ExitCode {
        match rt.block_on(cli::run(&a.api, q, a.json)) {
            Ok(p) => {
                print!("{}", p.text);
                if p.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    };
    match cli.cmd {
        Cmd::Init { data_dir } => match init(data_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", cli::describe_error(&e));
                ExitCode::FAILURE
            }
        },
        Cmd::Run(args) => {
            init_logs(args.log_format);
            match rt.block_on(run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{}", cli::describe_error(&e));
                    eprintln!("error: {}", cli::describe_error(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status(a) => query(Query::Status, a),
        Cmd::Fleet(a) => query(Query::Fleet, a),
        Cmd::Node { id, api } => query(Query::Node(id), api),
        Cmd::Policy(a) => query(Query::Policy, a),
        Cmd::Config(a) => query(Query::Config, a),
        Cmd::Rollout { heads, api } => query(Query::Rollout(heads), api),
        Cmd::Snapshot { out, api } => query(Query::Snapshot(out), api),
        Cmd::Publish { file, api } => query(Query::Publish(file), api),
    }
}
