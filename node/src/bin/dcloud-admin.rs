//! `dcloud-admin`: the authority's signing tool.
//!
//! Offline except for `--from` (fetch a base snapshot from a node) and
//! `publish`. Private keys never leave this machine: the tool reads them from
//! their files, signs, and writes bundle files. See `docs/operator-guide.md`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use dcloud_crdt::{Bundle, ChangeHash, Edit, PublicKey, SecretKey, TrustChain};
use dcloud_node::admin::base::{Base, merge_roots};
use dcloud_node::admin::client::Client;
use dcloud_node::admin::inspect::{inspect, short_hash};
use dcloud_node::admin::trust::ChainFile;
use dcloud_node::admin::{edit, files, keys, publish, secret, sites, timestamp, trust};

/// Print a line to stdout; a closed pipe (`dcloud-admin ... | head`) ends the
/// program quietly instead of panicking (outputs are written before they are
/// reported, so nothing is left half done).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

#[derive(Parser)]
#[command(
    name = "dcloud-admin",
    version,
    about = "The dcloud authority's offline signing tool"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate an authority key: FILE (secret, mode 0600) and FILE.pub.
    Keygen {
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Manage the trust root (the authority keys nodes trust, and the threshold).
    #[command(subcommand)]
    Root(RootCmd),
    /// Enrol a node (site) in the fleet, or many at once with --from-file.
    Enrol {
        /// The node's id (its public key, shown by `dcloud status` or `dcloud id`).
        #[arg(required_unless_present = "from_file")]
        node: Option<String>,
        /// Site name.
        #[arg(long, required_unless_present = "from_file")]
        name: Option<String>,
        /// Region.
        #[arg(long, required_unless_present = "from_file")]
        region: Option<String>,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// A TOML file of `[[site]]` tables (id, name, region, optional
        /// labels), all enrolled in one signed change.
        #[arg(long, conflicts_with_all = ["node", "name", "region", "labels"])]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Revoke a node, permanently: it is cut off and its status dropped.
    Revoke {
        /// Node id or enrolled name.
        node: String,
        /// Why (kept in the policy).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Set a config value: LEVEL is fleet, region:NAME or site:NODE_ID_OR_NAME.
    Set {
        /// fleet, region:NAME or site:NODE_ID_OR_NAME.
        level: String,
        /// Dotted path, for example log.level.
        path: String,
        /// A JSON value: 1500, true, "info" (quoted), {"a": 1}.
        value: String,
        /// Keep the entry in the region (LEVEL region:NAME only): it goes
        /// into the region's scoped policy, which only the region's sites
        /// hold; the rest of the fleet holds a commitment to it (a hash),
        /// never its bytes. Take the base from a site of the region and
        /// publish there.
        #[arg(long)]
        scoped: bool,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Sealed secrets: values only their target sites can read.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Keep a region's site status in the region (`--status region`): its
    /// sites' status documents (addresses, health details) replicate only
    /// among its members, and every other site gets a signed summary
    /// (applied policy, healthy, version). `--status fleet` undoes it.
    Scope {
        /// The region.
        region: String,
        /// `region` (kept in the region) or `fleet` (replicated to every site).
        #[arg(long, value_parser = ["region", "fleet"])]
        status: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Remove a config value (and everything below its path at that level).
    Unset {
        /// fleet, region:NAME or site:NODE_ID_OR_NAME.
        level: String,
        /// Dotted path.
        path: String,
        /// Remove it from the region's scoped policy (see `set --scoped`).
        #[arg(long)]
        scoped: bool,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Add your signature to every policy change of a bundle.
    Cosign {
        /// The bundle.
        bundle: PathBuf,
        /// Your authority key file.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the cosigned bundle (default: in place).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show who signed a bundle, whether it meets the threshold, and what it changes.
    Verify {
        /// The bundle.
        bundle: PathBuf,
        #[command(flatten)]
        base: BaseArgs,
        /// Your trust chain file, to check the bundle against your own trust root.
        #[arg(long)]
        chain: Option<PathBuf>,
    },
    /// Hand signed bundles to a node, which gossips them to the fleet.
    Publish {
        /// The bundle(s): several are merged and posted at once (for example a
        /// chain of edits, each signed against the one before).
        #[arg(required = true)]
        bundles: Vec<PathBuf>,
        /// The node's local API, for example http://127.0.0.1:7780.
        #[arg(long)]
        to: String,
        /// Wait until every enrolled site has applied it.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits: 60s, 500ms, 2m.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
        /// Publish even if the bundle was signed against a base older than the node's policy.
        #[arg(long)]
        allow_stale_base: bool,
    },
    /// Wait for a published bundle's policy to be applied by every enrolled site.
    Watch {
        /// The bundle.
        bundle: PathBuf,
        /// The node's local API, for example http://127.0.0.1:7780.
        #[arg(long)]
        to: String,
        /// How long to wait: 60s, 500ms, 2m.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Sign a freshness statement with a timestamp key (for cron on an online machine).
    Timestamp(TimestampArgs),
    /// Save a node's policy snapshot (trust chain and policy changes) as a base file.
    Snapshot {
        /// The node's local API, for example http://127.0.0.1:7780.
        #[arg(long)]
        from: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Seal a value to every target site (LEVEL: fleet, region:NAME,
    /// site:NODE_ID_OR_NAME; narrowed by --label). Setting it again re-seals
    /// it to the targets of the base.
    Set {
        /// fleet, region:NAME or site:NODE_ID_OR_NAME.
        level: String,
        /// Dotted path in the sites' secrets file, for example db.password.
        path: String,
        /// The file holding the value (its exact bytes, UTF-8).
        #[arg(long)]
        from_file: PathBuf,
        /// Only sites carrying this label KEY=VALUE (repeatable: all of them).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Remove a sealed secret.
    Unset {
        /// fleet, region:NAME or site:NODE_ID_OR_NAME.
        level: String,
        /// Dotted path.
        path: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// List the sealed secrets of a base: where, to whom, digest, and which
    /// need re-sealing.
    List {
        #[command(flatten)]
        base: BaseArgs,
    },
}

#[derive(Subcommand)]
enum RootCmd {
    /// Create trust root v1.
    Init {
        /// Authority key files that sign it now (repeatable).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Further authority keys (hex or FILE.pub) that will cosign (repeatable).
        #[arg(long = "authority")]
        others: Vec<String>,
        /// Distinct authority signatures each policy change needs.
        #[arg(long)]
        threshold: u32,
        /// The chain file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        ts: RootTimestampArgs,
    },
    /// Append the next trust root version (rotate the authority keys).
    Rotate {
        /// The current chain file.
        #[arg(long)]
        chain: PathBuf,
        /// Every key of the new root: hex, FILE.pub or key file (repeatable).
        #[arg(long = "new-key", required = true)]
        new_keys: Vec<String>,
        /// The new threshold.
        #[arg(long)]
        threshold: u32,
        /// Key files that sign the rotation (old and new keys; repeatable).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The policy the rotation keeps (its heads are grandfathered; every
        /// other change signed under an older root is refused once the fleet
        /// holds the new one): --from a node that holds the whole policy,
        /// and/or --base FILE (a saved snapshot, plus unpublished bundles to keep).
        #[command(flatten)]
        base: BaseArgs,
        /// The chain file to write (may be the same as --chain).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        ts: RootTimestampArgs,
    },
    /// Add your signature to the last root of a chain file.
    Cosign {
        /// The chain file.
        #[arg(long)]
        chain: PathBuf,
        /// Your key file.
        #[arg(long)]
        key: PathBuf,
        /// Where to write it (default: in place).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show a chain file.
    Show {
        /// The chain file.
        #[arg(long)]
        chain: PathBuf,
    },
    /// Write a bundle carrying the chain, to publish a rotation to the fleet.
    Bundle {
        /// The chain file.
        #[arg(long)]
        chain: PathBuf,
        /// The bundle to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct BaseArgs {
    /// A base snapshot file (`dcloud-admin snapshot`, `dcloud snapshot`) or an
    /// unpublished bundle signed since; repeatable: their union is the base.
    #[arg(long = "base")]
    base: Vec<PathBuf>,
    /// Fetch the base snapshot from a node's local API (--base files, if
    /// any, are added to it).
    #[arg(long)]
    from: Option<String>,
}

#[derive(Args)]
struct SignArgs {
    #[command(flatten)]
    base: BaseArgs,
    /// Authority key file(s): the first signs, any others cosign.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// Your trust chain file, when it is newer than the base's (a rotation not yet published).
    #[arg(long)]
    chain: Option<PathBuf>,
    /// The bundle file to write.
    #[arg(long)]
    out: PathBuf,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (60s, 500ms, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration (60s, 500ms, 2m)")),
    }
}

fn read_keys(paths: &[PathBuf]) -> Result<Vec<SecretKey>> {
    paths
        .iter()
        .map(|p| keys::read_secret(p).map_err(anyhow::Error::from))
        .collect()
}

fn read_bundle(path: &Path) -> Result<Bundle> {
    Ok(files::read_bundle(path)?)
}

async fn load_base(args: &BaseArgs) -> Result<Base> {
    if args.from.is_none() && args.base.is_empty() {
        bail!("no base given: pass --base FILE (a snapshot) or --from http://127.0.0.1:PORT");
    }
    let mut bundles = Vec::new();
    if let Some(url) = &args.from {
        let client = Client::new(url)?;
        bundles.push(client.snapshot().await?);
    }
    for p in &args.base {
        bundles.push(read_bundle(p)?);
    }
    Ok(Base::from_bundles(&bundles)?)
}

fn read_own_chain(path: &Option<PathBuf>) -> Result<Option<TrustChain>> {
    match path {
        None => Ok(None),
        Some(p) => Ok(Some(
            ChainFile::read(p)?
                .verified()
                .with_context(|| format!("trust chain {}", p.display()))?,
        )),
    }
}

async fn sign(sign: &SignArgs, make: impl FnOnce(&Base) -> Result<Vec<Edit>>) -> Result<()> {
    sign_with(sign, |base, chain, key| {
        let edits = make(base)?;
        Ok(edit::sign_edits(base, chain, edits, key)?)
    })
    .await
}

/// A change of region `level`'s scoped policy (`--scoped`), and its
/// commitment.
async fn sign_scoped(
    sign: &SignArgs,
    level: &str,
    edit: (String, Option<serde_json::Value>),
) -> Result<()> {
    let Some(region) = level.strip_prefix("region:") else {
        return Err(edit::SignError::ScopedLevel(level.to_string()).into());
    };
    dcloud_crdt::policy::check_region(region)?;
    sign_with(sign, |base, chain, key| {
        Ok(edit::sign_regional(base, chain, region, vec![edit], key)?)
    })
    .await?;
    say!(
        "region {region}: the entry stays in the region; publish this bundle at a site of region {region} (sites elsewhere refuse it)"
    );
    Ok(())
}

async fn sign_with(
    sign: &SignArgs,
    make: impl FnOnce(&Base, &TrustChain, &SecretKey) -> Result<Bundle>,
) -> Result<()> {
    // Read the keys first: a bad key changes nothing, not even the network.
    let signers = read_keys(&sign.keys)?;
    let own = read_own_chain(&sign.chain)?;
    let base = load_base(&sign.base).await?;
    let chain = base.signing_chain(own.as_ref())?;
    let mut bundle = make(&base, &chain, &signers[0])?;
    for k in &signers[1..] {
        edit::cosign(&mut bundle, k)?;
    }
    let report = inspect(&bundle, Some(&base), None)?;
    files::write_bundle(&sign.out, &bundle)?;
    say!("{report}");
    say!("wrote {}", sign.out.display());
    if let Some(c) = report.changes.iter().find(|c| !c.meets_threshold()) {
        let needed = c
            .threshold
            .unwrap_or(0)
            .saturating_sub(c.distinct_authority);
        say!(
            "next: {needed} more authority signature(s) needed: dcloud-admin cosign {} --key KEY",
            sign.out.display()
        );
    }
    Ok(())
}

fn parse_public_keys(args: &[String]) -> Result<Vec<PublicKey>> {
    args.iter()
        .map(|a| keys::parse_public(a).map_err(anyhow::Error::from))
        .collect()
}

async fn root_cmd(cmd: RootCmd) -> Result<()> {
    match cmd {
        RootCmd::Init {
            keys: key_files,
            others,
            threshold,
            out,
            ts,
        } => {
            let signers = read_keys(&key_files)?;
            let others = parse_public_keys(&others)?;
            if out.exists() {
                bail!(
                    "{} already exists; refusing to overwrite a trust chain",
                    out.display()
                );
            }
            let (mut file, progress) = trust::init(&signers, &others, threshold)?;
            ts.apply(&mut file, &signers)?;
            file.write(&out)?;
            print_root(&file);
            say!("{progress}");
            say!("wrote {}", out.display());
        }
        RootCmd::Rotate {
            chain,
            new_keys,
            threshold,
            keys: key_files,
            base,
            out,
            ts,
        } => {
            let signers = read_keys(&key_files)?;
            let new_keys = parse_public_keys(&new_keys)?;
            let mut file = ChainFile::read(&chain)?;
            if base.from.is_none() && base.base.is_empty() {
                bail!(
                    "a rotation must name the policy it keeps: pass --from URL of a node that holds the whole policy, or --base FILE"
                );
            }
            let base = load_base(&base).await?;
            let heads = trust::kept_heads(&file, &base)?;
            let progress = trust::rotate(&mut file, &new_keys, threshold, &signers, &heads)?;
            ts.apply(&mut file, &signers)?;
            file.write(&out)?;
            print_root(&file);
            let v = file.roots.last().map_or(0, |r| r.root.version);
            let shown: Vec<String> = heads.iter().map(short_hash).collect();
            say!(
                "grandfathered: {} policy head(s) [{}], covering the {} policy change(s) of the snapshot; any other change signed under v{} or older is refused once a node holds v{v}",
                heads.len(),
                shown.join(", "),
                base.changes().len(),
                v - 1
            );
            say!("{progress}");
            if !progress.complete() {
                say!(
                    "cosign with: dcloud-admin root cosign --chain {} --key KEY",
                    out.display()
                );
            }
            say!("wrote {}", out.display());
        }
        RootCmd::Cosign { chain, key, out } => {
            let key = keys::read_secret(&key)?;
            let mut file = ChainFile::read(&chain)?;
            let progress = file.cosign(&key)?;
            let out = out.unwrap_or(chain);
            file.write(&out)?;
            say!("{progress}");
            say!("wrote {}", out.display());
        }
        RootCmd::Show { chain } => {
            let file = ChainFile::read(&chain)?;
            print_root(&file);
            say!("{}", file.last_progress());
            file.verified()?;
        }
        RootCmd::Bundle { chain, out } => {
            let file = ChainFile::read(&chain)?;
            let verified = file.verified()?;
            let bundle = Bundle {
                roots: verified.roots().to_vec(),
                changes: Vec::new(),
            };
            files::write_bundle(&out, &bundle)?;
            say!(
                "wrote {} (trust chain v1 to v{})",
                out.display(),
                verified.current().version
            );
        }
    }
    Ok(())
}

async fn secret_cmd(cmd: SecretCmd) -> Result<()> {
    match cmd {
        SecretCmd::Set {
            level,
            path,
            from_file,
            labels,
            sign: s,
        } => {
            let selector = secret::parse_selector(&labels)?;
            let value = std::fs::read(&from_file)
                .with_context(|| format!("cannot read {}", from_file.display()))?;
            let mut shown = String::new();
            sign(&s, |base| {
                let sealed = secret::seal_edit(base, &level, &path, &selector, &value)?;
                let to: Vec<&str> = sealed.targets.iter().map(|(_, n)| n.as_str()).collect();
                shown = format!(
                    "sealed {} {} to {} site(s): {} (digest {})",
                    sealed.sealed.level,
                    sealed.sealed.path,
                    to.len(),
                    to.join(", "),
                    sealed.sealed.digest()
                );
                Ok(vec![sealed.edit])
            })
            .await?;
            say!("{shown}");
        }
        SecretCmd::Unset {
            level,
            path,
            sign: s,
        } => {
            sign(&s, |base| {
                let level = edit::parse_level(&level, base.policy())?;
                Ok(vec![Edit::UnsetSecret(level, path)])
            })
            .await?;
        }
        SecretCmd::List { base } => {
            let base = load_base(&base).await?;
            let lines = secret::list(base.policy());
            if lines.is_empty() {
                say!("no sealed secrets");
            }
            for l in lines {
                say!("{l}");
            }
            for d in secret::drift(base.policy()) {
                say!("needs re-sealing: {d}");
            }
        }
    }
    Ok(())
}

fn print_root(file: &ChainFile) {
    for r in &file.roots {
        let keys: Vec<String> = r.root.keys.iter().map(|k| k.short()).collect();
        let kept = if r.root.version > 1 {
            format!(
                "; grandfathers {} policy head(s)",
                r.root.grandfathered_heads.len()
            )
        } else {
            String::new()
        };
        say!(
            "trust root v{}: threshold {} of {} keys [{}]{kept}",
            r.root.version,
            r.root.threshold,
            r.root.keys.len(),
            keys.join(", ")
        );
    }
}

/// Read several bundles as one: roots merged, changes in the order given.
fn read_bundles(paths: &[PathBuf]) -> Result<Bundle> {
    let bundles = paths
        .iter()
        .map(|p| read_bundle(p))
        .collect::<Result<Vec<_>>>()?;
    let roots = merge_roots(bundles.iter().map(|b| b.roots.as_slice()))?;
    Ok(Bundle {
        roots,
        changes: bundles.into_iter().flat_map(|b| b.changes).collect(),
    })
}

async fn publish_cmd(
    paths: &[PathBuf],
    to: &str,
    wait: bool,
    timeout: Duration,
    allow_stale_base: bool,
) -> Result<()> {
    let bundle = read_bundles(paths)?;
    let client = Client::new(to)?;
    let checked = publish::check(&client, &bundle, allow_stale_base).await?;
    let reply = publish::post(&client, &bundle).await?;
    for r in &reply.reports {
        let h = r.hash.as_deref().map_or("?", |h| &h[..h.len().min(12)]);
        say!("change {h}: {}", r.outcome);
    }
    say!("published to {}", client.url());
    if !checked.heads.is_empty() {
        return if wait {
            watch(&client, &checked.heads, timeout).await
        } else {
            Ok(())
        };
    }
    // Trust roots only: the node must now hold the newest, and with --wait
    // every site must hold the policy the rotation kept.
    let newest = bundle
        .roots
        .iter()
        .map(|r| r.root.version)
        .max()
        .unwrap_or(0);
    let (held, heads) = publish::node_state(&client).await?;
    if held < newest {
        bail!("the node still holds trust root v{held} after publishing v{newest}");
    }
    say!(
        "{} holds trust root v{held}; peers learn it by gossip (`dcloud status` shows the version a site holds)",
        client.url()
    );
    if wait && !heads.is_empty() {
        watch(&client, &heads, timeout).await?;
    }
    Ok(())
}

async fn watch_cmd(path: &Path, to: &str, timeout: Duration) -> Result<()> {
    let bundle = read_bundle(path)?;
    let client = Client::new(to)?;
    let (heads, _) = publish::bundle_heads(&bundle);
    if heads.is_empty() {
        bail!("{} holds no policy change to watch", path.display());
    }
    watch(&client, &heads, timeout).await
}

async fn watch(client: &Client, heads: &[ChangeHash], timeout: Duration) -> Result<()> {
    let heads_text: Vec<String> = heads.iter().map(short_hash).collect();
    say!("waiting for rollout of policy {}", heads_text.join(","));
    let start = std::time::Instant::now();
    let tty = std::io::stderr().is_terminal();
    // Drawn from the first answer on (before it, the number of sites is unknown).
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} sites applied {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let mut drawing = false;
    let mut last = String::new();
    let result = publish::wait(client, heads, timeout, |r| {
        bar.set_length(r.enrolled as u64);
        bar.set_position(r.applied as u64);
        if tty && !drawing {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(100));
            drawing = true;
        }
        let line = publish::describe(r);
        bar.set_message(
            line.split_once("; ")
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default(),
        );
        if !tty && line != last {
            // Not a terminal (a script, CI, the demo): one line per change of state.
            say!("rollout: {line}");
        }
        last = line;
    })
    .await;
    bar.finish_and_clear();
    let r = result?;
    say!(
        "rollout complete: {}/{} sites applied in {} ms",
        r.applied,
        r.enrolled,
        start.elapsed().as_millis()
    );
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Keygen { out } => {
            let public = keys::keygen(&out)?;
            say!("{public}");
            say!(
                "wrote {} (secret, mode 0600) and {}",
                out.display(),
                keys::public_path(&out).display()
            );
        }
        Cmd::Root(cmd) => root_cmd(cmd).await?,
        Cmd::Enrol {
            node,
            name,
            region,
            labels,
            from_file: Some(path),
            sign: s,
        } => {
            let _ = (node, name, region, labels);
            // The whole file is checked before anything is fetched or signed.
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let file = path.display().to_string();
            let rows = sites::parse(&file, &text)?;
            let start = std::time::Instant::now();
            sign(&s, |base| {
                Ok(sites::enrol_edits(&file, &rows, base.policy())?)
            })
            .await?;
            say!(
                "enrolled {} site(s) from {} in one change ({} ms)",
                rows.len(),
                file,
                start.elapsed().as_millis()
            );
        }
        Cmd::Enrol {
            node,
            name,
            region,
            labels,
            from_file: None,
            sign: s,
        } => {
            let (Some(node), Some(name), Some(region)) = (node, name, region) else {
                bail!("enrol needs NODE_ID --name NAME --region REGION, or --from-file FILE");
            };
            let id = edit::parse_node(&node)?;
            let member = edit::member(&name, &region, &labels)?;
            sign(&s, |_| Ok(vec![Edit::Enrol(id, member)])).await?;
        }
        Cmd::Revoke {
            node,
            reason,
            sign: s,
        } => {
            let mut exposed = Vec::new();
            sign(&s, |base| {
                let id = edit::resolve_site(&node, base.policy())?;
                for sec in secret::readable_by(base.policy(), &id) {
                    exposed.push(format!("{} {}", sec.level, sec.path));
                }
                Ok(vec![Edit::Revoke(id, reason)])
            })
            .await?;
            if !exposed.is_empty() {
                say!(
                    "{node} could read {} sealed secret(s): {}",
                    exposed.len(),
                    exposed.join(", ")
                );
                say!(
                    "re-seal each to the remaining sites with `dcloud-admin secret set LEVEL PATH --from-file FILE ...` against a base holding this revocation (see `dcloud-admin secret list`); rotating the values is your call: the site may have kept them"
                );
            }
        }
        Cmd::Secret(cmd) => secret_cmd(cmd).await?,
        Cmd::Scope {
            region,
            status,
            sign: s,
        } => {
            let on = status == "region";
            sign(&s, |_| Ok(vec![Edit::ScopeStatus(region.clone(), on)])).await?;
            if on {
                say!(
                    "region {region}'s site status will stay in the region: sites elsewhere drop what they hold of it once they apply this, and keep a summary (applied policy, healthy, version)"
                );
            }
        }
        Cmd::Set {
            level,
            path,
            value,
            scoped,
            sign: s,
        } => {
            // A value that is not JSON is refused before anything is read or fetched.
            let value = edit::parse_value(&value)?;
            if scoped {
                return sign_scoped(&s, &level, (path, Some(value))).await;
            }
            sign(&s, |base| {
                let level = edit::parse_level(&level, base.policy())?;
                Ok(vec![Edit::Set(level, path, value)])
            })
            .await?;
        }
        Cmd::Unset {
            level,
            path,
            scoped,
            sign: s,
        } => {
            if scoped {
                return sign_scoped(&s, &level, (path, None)).await;
            }
            sign(&s, |base| {
                let level = edit::parse_level(&level, base.policy())?;
                Ok(vec![Edit::Unset(level, path)])
            })
            .await?;
        }
        Cmd::Cosign { bundle, key, out } => {
            let key = keys::read_secret(&key)?;
            let mut b = read_bundle(&bundle)?;
            let n = edit::cosign(&mut b, &key)?;
            let out = out.unwrap_or(bundle);
            files::write_bundle(&out, &b)?;
            say!("signed {n} change(s) with {}", key.public().short());
            say!("{}", inspect(&b, None, None)?);
            say!("wrote {}", out.display());
        }
        Cmd::Verify {
            bundle,
            base,
            chain,
        } => {
            let b = read_bundle(&bundle)?;
            let own = read_own_chain(&chain)?;
            let base = if base.base.is_empty() && base.from.is_none() {
                None
            } else {
                Some(load_base(&base).await?)
            };
            let report = inspect(&b, base.as_ref(), own.as_ref())?;
            say!("{report}");
            if !report.ok() {
                bail!(
                    "{} does not verify: {}",
                    bundle.display(),
                    report.problems.join("; ")
                );
            }
        }
        Cmd::Publish {
            bundles,
            to,
            wait,
            timeout,
            allow_stale_base,
        } => publish_cmd(&bundles, &to, wait, timeout, allow_stale_base).await?,
        Cmd::Watch {
            bundle,
            to,
            timeout,
        } => watch_cmd(&bundle, &to, timeout).await?,
        Cmd::Timestamp(args) => timestamp_cmd(args).await?,
        Cmd::Snapshot { from, out } => {
            let client = Client::new(&from)?;
            let snap = client.snapshot().await?;
            Base::from_bundles(std::slice::from_ref(&snap))?;
            files::write_bundle(&out, &snap)?;
            say!(
                "wrote {} ({} trust root(s), {} policy change(s))",
                out.display(),
                snap.roots.len(),
                snap.changes.len()
            );
        }
    }
    Ok(())
}

/// `root init` / `root rotate`: the timestamp keys of the new root.
#[derive(Args)]
struct RootTimestampArgs {
    /// A timestamp key (hex or FILE.pub; repeatable): it may sign only
    /// freshness statements. A rotation keeps the previous root's unless given.
    #[arg(long = "timestamp-key")]
    timestamp_keys: Vec<String>,
    /// Distinct timestamp-key signatures a freshness statement needs (default 1).
    #[arg(long)]
    timestamp_threshold: Option<u32>,
    /// List no timestamp keys (turns signed freshness off).
    #[arg(long, conflicts_with = "timestamp_keys")]
    no_timestamp_keys: bool,
}

impl RootTimestampArgs {
    fn apply(&self, file: &mut ChainFile, signers: &[SecretKey]) -> Result<()> {
        let keys = parse_public_keys(&self.timestamp_keys)?;
        let keys = if self.no_timestamp_keys {
            Some(&[][..])
        } else if keys.is_empty() {
            None
        } else {
            Some(&keys[..])
        };
        timestamp::set_keys(file, keys, self.timestamp_threshold, signers)?;
        if let Some(last) = file.roots.last()
            && !last.root.timestamp_keys.is_empty()
        {
            let listed: Vec<String> = last.root.timestamp_keys.iter().map(|k| k.short()).collect();
            say!(
                "trust root v{}: timestamp keys [{}], threshold {}",
                last.root.version,
                listed.join(", "),
                last.root.timestamp_threshold
            );
        }
        Ok(())
    }
}

/// `timestamp`.
#[derive(Args)]
struct TimestampArgs {
    /// The timestamp key file.
    #[arg(long)]
    key: PathBuf,
    /// Node API(s) whose policy snapshot the statement vouches for (repeatable:
    /// the union of their heads).
    #[arg(long, required = true)]
    from: Vec<String>,
    /// How long it vouches: 90s, 30m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = timestamp::parse_expiry)]
    expires: Duration,
    /// Write the statement to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Post it to this node's API (which gossips it to the fleet).
    #[arg(long)]
    to: Option<String>,
}

async fn timestamp_cmd(a: TimestampArgs) -> Result<()> {
    if a.out.is_none() && a.to.is_none() {
        bail!("give --out FILE, --to URL, or both");
    }
    let key = keys::read_secret(&a.key)?;
    let mut snaps = Vec::new();
    for url in &a.from {
        snaps.push(Client::new(url)?.snapshot().await?);
    }
    let st = timestamp::make(&key, &snaps, a.expires, dcloud_node::freshness::unix_ms())?;
    say!(
        "freshness statement: trust root v{}, {} policy head(s), expires_ms {}",
        st.statement.root_version,
        st.statement.policy_heads.len(),
        st.statement.expires_ms
    );
    if let Some(out) = &a.out {
        timestamp::write(out, &st)?;
        say!("wrote {}", out.display());
    }
    if let Some(to) = &a.to {
        let v = timestamp::post(to, &st).await?;
        say!("{to}: {}", v.message);
        if !v.policy_fresh {
            say!("{to}: not fresh yet: {}", v.policy_fresh_reason);
        }
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DCLOUD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {}", dcloud_node::cli::describe_error(&e));
        std::process::exit(1);
    }
}
