//! The durable replica in sled: signed changes, trust roots and peer addresses.
//!
//! Layout (one sled database in `<data_dir>/store`):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `changes` | `DocId::to_bytes()` ++ change hash (32 bytes) | `SignedChange::encode()` |
//! | `roots` | trust-root version, big-endian u64 | postcard `SignedTrustRoot` |
//! | `peers` | node id (32 bytes) | JSON list of multiaddrs |
//! | `meta` | `format` | `dcloud-store-v4` |
//!
//! The private key is never stored here: it lives in its own 0600 file. Writes
//! become durable at [`Store::flush`]; the daemon flushes once per batch of
//! engine outputs and holds that batch's sends and acknowledgements until the
//! flush succeeds (group commit), so a change is durable before it is
//! forwarded or acknowledged.
//!
//! A flush of new changes only does not flush sled: it appends the changes to
//! a write-ahead log beside the store (`<data_dir>/store.wal`) and syncs that
//! file. sled's own flush hands the write to its I/O thread pool, which wakes
//! every idle pool thread each time; at one flush per received change that was
//! most of a busy node's CPU. sled is flushed, and the log emptied, at a
//! checkpoint ([`Store::checkpoint`]: every [`WAL_CHECKPOINT_MS`] or
//! [`WAL_CHECKPOINT_BYTES`], and at shutdown), and at once after any other
//! kind of write (roots, deletions), so the log only ever holds changes
//! written after everything sled has made durable. Opening the store replays
//! the log into sled. A log record is `[u32 length][u32 crc32][encoded
//! change]`; a torn or damaged tail (a crash during an append, whose flush
//! never returned) is cut off at the first bad record.
//!
//! Opening checks integrity: sled's own checks, the format marker, and every
//! entry decoding and matching its key. A store that fails is moved aside
//! (renamed to `store.corrupt-<unix seconds>`, never deleted) and a fresh one is
//! opened; the daemon then rebuilds the replica from its peers. Beside the store,
//! the `status-epoch` file remembers the highest status epoch this node has
//! written, so that its status never goes backwards after such a rebuild.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use dcloud_crdt::{DocId, NodeId, OwnedKind, SignedChange, SignedTrustRoot};

/// Version 2: changes of signed-change format 2 (per-edit actors), trust
/// roots with grandfathered heads and timestamp keys. Version 3: summary
/// documents too (`DocId::Summary`, key prefix 2), which a version-2 build
/// cannot read.
const FORMAT: &[u8] = b"dcloud-store-v4";

/// Checkpoint when the write-ahead log is about this old (and not empty; each
/// interval is drawn within a quarter either side, so that a fleet started at
/// once does not checkpoint in step)...
pub const WAL_CHECKPOINT_MS: u64 = 10_000;
/// ...or this large.
pub const WAL_CHECKPOINT_BYTES: u64 = 4 << 20;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store directory could not be opened or created.
    #[error("store {path}: cannot open: {reason}")]
    Open {
        /// The store directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Another process (or an instance still closing) holds the store's lock.
    #[error("store {path} is in use (is another dcloud running on this data directory?)")]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// An entry failed the integrity check.
    #[error("store {path}: integrity check failed: {reason}")]
    Corrupt {
        /// The store directory.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A write or flush failed (the disk may be full).
    #[error("store write failed: {0}; not accepting new changes until it succeeds")]
    Write(String),
    /// Moving a bad store aside failed.
    #[error("cannot move the damaged store {from} to {to}: {source}")]
    MoveAside {
        /// The store.
        from: PathBuf,
        /// The new name.
        to: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The durable trust-chain file could not be written.
    #[error(transparent)]
    TrustChain(#[from] crate::trustfile::TrustFileError),
    /// The epoch file could not be read or written.
    #[error("epoch file {path}: {reason}")]
    Epoch {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// What was in the store when it was opened.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every stored change (policy first, then regions' scoped policies, then
    /// status).
    pub changes: Vec<SignedChange>,
    /// Stored trust roots, by version.
    pub roots: Vec<SignedTrustRoot>,
    /// Stored peer addresses.
    pub peers: Vec<(NodeId, Vec<String>)>,
    /// Where a damaged store was moved, if it was.
    pub moved_aside: Option<PathBuf>,
    /// Changes replayed from the write-ahead log (already in `changes`).
    pub replayed: usize,
    /// The log was not empty: the last run did not stop cleanly, and
    /// deletions it deferred may be lost (the caller issues them again).
    pub unclean: bool,
}

/// A write held for the next checkpoint.
enum Deferred {
    /// Insert a change entry.
    Put(Vec<u8>, Vec<u8>),
    /// Remove every change entry of one document (its `DocId::to_bytes`).
    DropDoc(Vec<u8>),
    /// Remove a node's status entries: of epochs before `before`, or all of
    /// them and its addresses (None).
    DropStatus {
        node: NodeId,
        before: Option<u32>,
        /// First key bytes of the documents dropped ([`OwnedKind::prefix`]).
        kinds: &'static [u8],
        /// Forget the node's addresses too (revocation).
        forget: bool,
    },
}

/// How long opening waits for a store another instance holds.
pub const LOCK_WAIT_MS: u64 = 2_000;

/// Most deferred writes held before a checkpoint is forced.
pub const DEFERRED_MAX: usize = 16_384;

/// The write-ahead log of changes not yet flushed to sled.
struct Wal {
    path: PathBuf,
    file: std::fs::File,
    /// Bytes of whole records in the file.
    len: u64,
    /// Records written to sled but not yet to the file.
    pending: Vec<u8>,
    /// A write failed part-way and the tail could not be cut: only a
    /// checkpoint (which empties the file) may write again.
    torn: bool,
    /// When the log is next due to be emptied.
    due_at: std::time::Instant,
}

fn next_checkpoint() -> std::time::Instant {
    let ms = rand::random_range(WAL_CHECKPOINT_MS * 3 / 4..=WAL_CHECKPOINT_MS * 5 / 4);
    std::time::Instant::now() + std::time::Duration::from_millis(ms)
}

impl Wal {
    fn open(path: &Path) -> Result<Wal, StoreError> {
        let err = |e| file_err(path, e);
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        if !existed && let Some(dir) = path.parent() {
            // The new file's directory entry must survive a power loss too.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        let len = file.metadata().map_err(err)?.len();
        Ok(Wal {
            path: path.to_path_buf(),
            file,
            len,
            pending: Vec::new(),
            torn: false,
            due_at: next_checkpoint(),
        })
    }

    fn push(&mut self, encoded: &[u8]) {
        self.pending
            .extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        self.pending
            .extend_from_slice(&crc32fast::hash(encoded).to_be_bytes());
        self.pending.extend_from_slice(encoded);
    }

    /// Append the pending records and sync them.
    fn sync(&mut self) -> Result<(), StoreError> {
        use std::io::Write as _;
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self
            .file
            .write_all(&self.pending)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += self.pending.len() as u64;
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                // Cut off what part of the records made it, so that later
                // appends do not sit behind a torn record.
                if self.file.set_len(self.len).is_err() {
                    self.torn = true;
                }
                Err(file_err(&self.path, e))
            }
        }
    }

    /// Empty the log (everything in it is durable in sled).
    fn empty(&mut self) -> Result<(), StoreError> {
        let err = |e| file_err(&self.path, e);
        self.file.set_len(0).map_err(err)?;
        // From here the file is empty whatever the sync says.
        self.len = 0;
        self.pending.clear();
        self.file.sync_data().map_err(err)?;
        self.torn = false;
        self.due_at = next_checkpoint();
        Ok(())
    }
}

/// What the records of a log parse to.
struct ParsedWal {
    /// The changes of the whole, valid records at its start.
    changes: Vec<SignedChange>,
    /// The length of those records.
    good: usize,
    /// What follows them is a torn append (an incomplete record, or zeros),
    /// not damage to a complete record.
    torn: bool,
}

/// Parse the records of a log.
fn parse_wal(bytes: &[u8], change_max_bytes: usize) -> ParsedWal {
    let mut changes = Vec::new();
    let mut at = 0;
    let incomplete = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break false;
        }
        if rest.len() < 8 {
            break true;
        }
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > change_max_bytes {
            break false;
        }
        let Some(body) = rest.get(8..8 + len) else {
            break true;
        };
        if crc32fast::hash(body) != crc {
            break false;
        }
        let Ok(sc) = SignedChange::decode(body, change_max_bytes) else {
            break false;
        };
        changes.push(sc);
        at += 8 + len;
    };
    ParsedWal {
        changes,
        good: at,
        torn: incomplete || bytes[at..].iter().all(|b| *b == 0),
    }
}

/// The open sled database and its trees.
struct Inner {
    db: sled::Db,
    changes: sled::Tree,
    roots: sled::Tree,
    peers: sled::Tree,
}

/// The sled store.
pub struct Store {
    path: PathBuf,
    change_max_bytes: usize,
    /// None only while [`Store::reopen`] runs.
    inner: Option<Inner>,
    wal: Wal,
    /// Writes not yet given to sled (at the next checkpoint): the changes of
    /// the log, and deletions.
    unflushed: Vec<Deferred>,
    /// Something other than changes was written since sled's last flush.
    sled_dirty: bool,
}

/// A failed write to a file of the store (the log).
fn file_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Write(format!("{}: {e}", path.display()))
}

fn write_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

/// The key of a change.
fn change_key(doc: &DocId, hash: &[u8; 32]) -> Vec<u8> {
    let mut k = doc.to_bytes();
    k.extend_from_slice(hash);
    k
}

impl Store {
    /// Open the store at `path`, moving a damaged one aside and starting fresh.
    /// `change_max_bytes` bounds an entry (the replica's limit).
    /// A store held by another instance is waited for up to
    /// [`LOCK_WAIT_MS`] (sled releases its lock when the last of its threads
    /// lets go of a closed database, which can lag the close a little).
    pub fn open(path: &Path, change_max_bytes: usize) -> Result<(Store, Loaded), StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(LOCK_WAIT_MS);
        loop {
            match Self::open_or_move_aside(path, change_max_bytes) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_or_move_aside(
        path: &Path,
        change_max_bytes: usize,
    ) -> Result<(Store, Loaded), StoreError> {
        match Self::open_checked(path, change_max_bytes) {
            Ok(ok) => Ok(ok),
            Err(e @ (StoreError::Open { .. } | StoreError::Corrupt { .. })) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let name = format!(
                    "{}.corrupt-{secs}",
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "store".into())
                );
                let to = path.with_file_name(name);
                tracing::error!(error = %e, moved_to = %to.display(),
                    "the store is damaged; moving it aside and rebuilding the replica from peers");
                std::fs::rename(path, &to).map_err(|source| StoreError::MoveAside {
                    from: path.to_path_buf(),
                    to: to.clone(),
                    source,
                })?;
                let (store, mut loaded) = Self::open_checked(path, change_max_bytes)?;
                loaded.moved_aside = Some(to);
                Ok((store, loaded))
            }
            Err(e) => Err(e),
        }
    }

    fn open_checked(path: &Path, change_max_bytes: usize) -> Result<(Store, Loaded), StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        // A full disk is not damage: moving the store aside would lose nothing
        // but would pile copies onto the full disk at every retry. Report it as
        // a write failure, which the daemon retries until space returns.
        let sled_err = |e: sled::Error| match &e {
            sled::Error::Io(io)
                if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) =>
            {
                StoreError::Write(format!("cannot open {}: {io}", path.display()))
            }
            // A lock held elsewhere is not damage either: moving the store
            // aside would take it from under its owner.
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked {
                    path: path.to_path_buf(),
                }
            }
            _ => open_err(e.to_string()),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let fresh = !path.exists();
        // sled can panic on some damaged files instead of returning an error.
        let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
            sled::Config::new()
                .path(path)
                .cache_capacity(8 << 20)
                .flush_every_ms(None)
                .open()
        }))
        .map_err(|_| open_err("sled panicked while opening".into()))?
        .map_err(sled_err)?;
        let tree = |name: &str| opened.open_tree(name).map_err(sled_err);
        let mut store = Store {
            path: path.to_path_buf(),
            change_max_bytes,
            inner: Some(Inner {
                changes: tree("changes")?,
                roots: tree("roots")?,
                peers: tree("peers")?,
                db: opened.clone(),
            }),
            wal: Wal::open(&path.with_extension("wal"))?,
            unflushed: Vec::new(),
            sled_dirty: false,
        };
        let meta = tree("meta")?;
        let inner = store.inner.as_ref().expect("just opened");
        match meta.get("format").map_err(|e| corrupt(e.to_string()))? {
            Some(v) if v.as_ref() == FORMAT => {}
            Some(v) => {
                return Err(corrupt(format!(
                    "format marker is {:?}, expected {:?}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT)
                )));
            }
            None if fresh || inner.changes.is_empty() && inner.roots.is_empty() => {
                meta.insert("format", FORMAT).map_err(sled_err)?;
                opened.flush().map_err(sled_err)?;
            }
            None => return Err(corrupt("format marker missing".into())),
        }
        let mut loaded =
            std::panic::catch_unwind(AssertUnwindSafe(|| store.load(change_max_bytes)))
                .map_err(|_| corrupt("sled panicked while reading".into()))??;
        loaded.unclean = store.wal.len > 0;
        loaded.replayed = store.replay_wal(&mut loaded.changes)?;
        Ok((store, loaded))
    }

    /// Queue the log's changes that sled lacks for the next checkpoint (they
    /// stay in the log until then, so opening needs no disk space). A torn
    /// tail is cut off; a damaged record (complete, but its checksum or
    /// encoding is wrong) moves the whole log aside and keeps the records
    /// before it.
    fn replay_wal(&mut self, loaded: &mut Vec<SignedChange>) -> Result<usize, StoreError> {
        let path = self.wal.path.clone();
        let io = |e| file_err(&path, e);
        let bytes = std::fs::read(&path).map_err(io)?;
        if bytes.is_empty() {
            return Ok(0);
        }
        let parsed = parse_wal(&bytes, self.change_max_bytes);
        if parsed.good < bytes.len() && parsed.torn {
            tracing::warn!(
                wal = %path.display(),
                cut_bytes = bytes.len() - parsed.good,
                "the write-ahead log ends in a torn record (a crash during an append that was never acknowledged); cutting it off"
            );
            self.wal.file.set_len(parsed.good as u64).map_err(io)?;
            self.wal.file.sync_data().map_err(io)?;
        } else if parsed.good < bytes.len() {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = path.with_extension(format!("wal.corrupt-{secs}"));
            tracing::error!(
                wal = %path.display(),
                moved_to = %aside.display(),
                at_byte = parsed.good,
                "the write-ahead log has a damaged record; moving it aside and keeping the records before it (peers resend the rest)"
            );
            std::fs::rename(&path, &aside).map_err(|source| StoreError::MoveAside {
                from: path.clone(),
                to: aside.clone(),
                source,
            })?;
            self.wal = Wal::open(&path)?;
            self.wal.pending = bytes[..parsed.good].to_vec();
            self.wal.sync()?;
        }
        self.wal.len = parsed.good as u64;
        let mut replayed = Vec::new();
        for sc in parsed.changes {
            let Ok(hash) = sc.hash() else { continue };
            let key = change_key(&sc.doc, &hash.0);
            if !self
                .inner()?
                .changes
                .contains_key(&key)
                .map_err(write_err)?
            {
                self.unflushed.push(Deferred::Put(key, sc.encode()));
                replayed.push(sc);
            }
        }
        let n = replayed.len();
        if n > 0 {
            tracing::info!(changes = n, "replayed changes from the write-ahead log");
        }
        // Policy first, as `load` orders them.
        loaded.extend(replayed);
        loaded.sort_by_key(|c| match c.doc {
            DocId::Policy => 0,
            DocId::Region { .. } => 1,
            _ => 2,
        });
        Ok(n)
    }

    fn inner(&self) -> Result<&Inner, StoreError> {
        self.inner
            .as_ref()
            .ok_or_else(|| StoreError::Write("the store is closed".into()))
    }

    /// Close and open the database again (after a write error, sled refuses
    /// every later write until reopened). A store that no longer passes its
    /// checks is moved aside like at start; the caller rewrites its replica.
    pub fn reopen(&mut self) -> Result<(), StoreError> {
        self.inner = None;
        let (fresh, _) = Store::open(&self.path, self.change_max_bytes)?;
        *self = fresh;
        Ok(())
    }

    fn load(&self, change_max_bytes: usize) -> Result<Loaded, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let inner = self.inner()?;
        let mut policy = Vec::new();
        let mut regional = Vec::new();
        let mut status = Vec::new();
        for item in inner.changes.iter() {
            let (k, v) = item.map_err(|e| corrupt(e.to_string()))?;
            let sc = SignedChange::decode(&v, change_max_bytes)
                .map_err(|e| corrupt(format!("change entry does not decode: {e}")))?;
            let hash = sc
                .hash()
                .map_err(|e| corrupt(format!("change entry is not an automerge change: {e}")))?;
            if change_key(&sc.doc, &hash.0) != k.as_ref() {
                return Err(corrupt(format!(
                    "change entry {} does not match its key",
                    hex::encode(hash.0)
                )));
            }
            match sc.doc {
                DocId::Policy => policy.push(sc),
                DocId::Region { .. } => regional.push(sc),
                DocId::Status { .. } | DocId::Summary { .. } => status.push(sc),
            }
        }
        let mut roots = Vec::new();
        for item in inner.roots.iter() {
            let (k, v) = item.map_err(|e| corrupt(e.to_string()))?;
            let root: SignedTrustRoot = postcard::from_bytes(&v)
                .map_err(|e| corrupt(format!("trust root entry does not decode: {e}")))?;
            if k.as_ref() != root.root.version.to_be_bytes() {
                return Err(corrupt("trust root entry does not match its key".into()));
            }
            roots.push(root);
        }
        let mut peers = Vec::new();
        for item in inner.peers.iter() {
            let (k, v) = item.map_err(|e| corrupt(e.to_string()))?;
            let id: [u8; 32] = k
                .as_ref()
                .try_into()
                .map_err(|_| corrupt("peer entry key is not 32 bytes".into()))?;
            let addrs: Vec<String> = serde_json::from_slice(&v)
                .map_err(|e| corrupt(format!("peer entry does not decode: {e}")))?;
            peers.push((dcloud_crdt::PublicKey(id), addrs));
        }
        policy.extend(regional);
        policy.extend(status);
        Ok(Loaded {
            changes: policy,
            roots,
            peers,
            moved_aside: None,
            replayed: 0,
            unclean: false,
        })
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write changes (durable after the next [`Store::flush`]; in sled's
    /// tree after the next checkpoint).
    pub fn put_changes(&mut self, changes: &[SignedChange]) -> Result<(), StoreError> {
        self.inner()?;
        for sc in changes {
            let hash = sc.hash().map_err(write_err)?;
            let encoded = sc.encode();
            self.wal.push(&encoded);
            self.unflushed
                .push(Deferred::Put(change_key(&sc.doc, &hash.0), encoded));
        }
        Ok(())
    }

    /// Carry out in sled, in order, the writes held for the next checkpoint.
    /// They stay held until sled has flushed them (see [`Store::checkpoint`]);
    /// applying them again after a failure gives the same result.
    fn apply_unflushed(&self) -> Result<(), StoreError> {
        let inner = self.inner()?;
        let mut batch = sled::Batch::default();
        for op in &self.unflushed {
            match op {
                Deferred::Put(k, v) => batch.insert(k.as_slice(), v.as_slice()),
                Deferred::DropDoc(prefix) => {
                    inner
                        .changes
                        .apply_batch(std::mem::take(&mut batch))
                        .map_err(write_err)?;
                    for item in inner.changes.scan_prefix(prefix) {
                        let (k, _) = item.map_err(write_err)?;
                        batch.remove(k);
                    }
                }
                Deferred::DropStatus {
                    node,
                    before,
                    kinds,
                    forget,
                } => {
                    // Earlier puts first: the scan must see them.
                    inner
                        .changes
                        .apply_batch(std::mem::take(&mut batch))
                        .map_err(write_err)?;
                    for kind in kinds.iter() {
                        let mut prefix = vec![*kind];
                        prefix.extend_from_slice(&node.0);
                        for item in inner.changes.scan_prefix(&prefix) {
                            let (k, _) = item.map_err(write_err)?;
                            let epoch = k
                                .get(33..37)
                                .map(|e| u32::from_be_bytes(e.try_into().expect("4 bytes")));
                            if before.is_none_or(|b| epoch.is_some_and(|e| e < b)) {
                                batch.remove(k);
                            }
                        }
                    }

                    if *forget {
                        inner.peers.remove(node.0).map_err(write_err)?;
                    }
                }
            }
        }
        inner.changes.apply_batch(batch).map_err(write_err)
    }

    /// Write a trust root (durable after the next [`Store::flush`]).
    pub fn put_root(&mut self, root: &SignedTrustRoot) -> Result<(), StoreError> {
        self.sled_dirty = true;
        let bytes = postcard::to_allocvec(root).map_err(write_err)?;
        self.inner()?
            .roots
            .insert(root.root.version.to_be_bytes(), bytes)
            .map_err(write_err)?;
        Ok(())
    }

    /// Delete the status changes of `node` in epochs before `epoch` (at the
    /// next checkpoint: a deletion lost in a crash only brings back changes
    /// the replica drops again when it loads them).
    pub fn drop_status_before(
        &mut self,
        node: &NodeId,
        kind: OwnedKind,
        epoch: u32,
    ) -> Result<(), StoreError> {
        self.inner()?;
        self.unflushed.push(Deferred::DropStatus {
            node: *node,
            before: Some(epoch),
            kinds: match kind {
                OwnedKind::Status => &[1],
                OwnedKind::Summary => &[2],
            },
            forget: false,
        });
        Ok(())
    }

    /// Delete every status change of `node`, not its summary nor its
    /// addresses: its status is scoped to a region this site is not in.
    pub fn drop_status(&mut self, node: &NodeId) -> Result<(), StoreError> {
        self.inner()?;
        self.unflushed.push(Deferred::DropStatus {
            node: *node,
            before: None,
            kinds: &[1],
            forget: false,
        });
        Ok(())
    }

    /// Delete every change of `doc` (a region's scoped policy this site no
    /// longer holds, or holds less of): at the next checkpoint, in order
    /// with the writes before and after it.
    pub fn drop_doc(&mut self, doc: &DocId) -> Result<(), StoreError> {
        self.inner()?;
        self.unflushed.push(Deferred::DropDoc(doc.to_bytes()));
        Ok(())
    }

    /// Delete every status change of `node`, and its addresses (at the next
    /// checkpoint, as [`Store::drop_status_before`]).
    pub fn drop_node(&mut self, node: &NodeId) -> Result<(), StoreError> {
        self.inner()?;
        self.unflushed.push(Deferred::DropStatus {
            node: *node,
            before: None,
            kinds: &[1, 2],
            forget: true,
        });
        Ok(())
    }

    /// Remember a peer's addresses (not flushed: losing them costs a rediscovery).
    pub fn put_peer(&self, node: &NodeId, addrs: &[String]) -> Result<(), StoreError> {
        let v = serde_json::to_vec(addrs).map_err(write_err)?;
        self.inner()?.peers.insert(node.0, v).map_err(write_err)?;
        Ok(())
    }

    /// Write and flush a probe key: succeeds once the disk takes writes again.
    pub fn probe(&mut self) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // A payload of some size, so that a nearly full disk fails the probe.
        let mut v = now.to_be_bytes().to_vec();
        v.resize(64 << 10, 0);
        let meta = self.inner()?.db.open_tree("meta").map_err(write_err)?;
        meta.insert("probe", v).map_err(write_err)?;
        self.checkpoint(true)
    }

    /// Make everything written so far durable: new changes go to the
    /// write-ahead log; any other write flushes sled itself.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.sled_dirty
            || self.wal.torn
            || self.wal.len + self.wal.pending.len() as u64 >= WAL_CHECKPOINT_BYTES
            || self.unflushed.len() >= DEFERRED_MAX
        {
            return self.checkpoint(true);
        }
        self.inner()?;
        self.wal.sync()
    }

    /// Flush sled and empty the write-ahead log, when `force` or when the log
    /// is due ([`WAL_CHECKPOINT_MS`], [`WAL_CHECKPOINT_BYTES`]).
    pub fn checkpoint(&mut self, force: bool) -> Result<(), StoreError> {
        let wal_used =
            self.wal.len > 0 || !self.wal.pending.is_empty() || !self.unflushed.is_empty();
        let due = wal_used
            && (self.wal.len >= WAL_CHECKPOINT_BYTES
                || std::time::Instant::now() >= self.wal.due_at);
        if !(force || due) {
            return Ok(());
        }
        self.apply_unflushed()?;
        self.inner()?.db.flush().map_err(write_err)?;
        // Durable in sled: only now may they leave memory and the log.
        self.unflushed.clear();
        self.sled_dirty = false;
        if wal_used || self.wal.torn {
            self.wal.empty()?;
        }
        Ok(())
    }

    /// Bytes on disk, as sled counts them.
    pub fn size_on_disk(&self) -> u64 {
        self.inner
            .as_ref()
            .and_then(|i| i.db.size_on_disk().ok())
            .unwrap_or(0)
    }
}

/// The file beside the store that remembers the highest status epoch written.
pub struct EpochFile {
    path: PathBuf,
    value: u32,
}

impl EpochFile {
    /// Read it (0 when missing). A file that does not parse is an error: the
    /// operator must look, since guessing low could send the status backwards.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |reason: String| StoreError::Epoch {
            path: path.to_path_buf(),
            reason,
        };
        let value = match std::fs::read_to_string(path) {
            Ok(s) => s
                .trim()
                .parse::<u32>()
                .map_err(|e| err(format!("{:?} is not a number: {e}", s.trim())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(EpochFile {
            path: path.to_path_buf(),
            value,
        })
    }

    /// The highest epoch recorded.
    pub fn get(&self) -> u32 {
        self.value
    }

    /// Record `epoch` if it is higher, durably (write temp, fsync, rename).
    pub fn raise(&mut self, epoch: u32) -> Result<(), StoreError> {
        if epoch <= self.value {
            return Ok(());
        }
        let err = |e: std::io::Error| StoreError::Epoch {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(format!("{epoch}\n").as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        // The rename is durable only once its directory is: without this, a
        // power loss can bring back the older epoch the node already signed past.
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        self.value = epoch;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_file_only_goes_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status-epoch");
        let mut f = EpochFile::open(&p).unwrap();
        assert_eq!(f.get(), 0);
        f.raise(5).unwrap();
        f.raise(3).unwrap();
        assert_eq!(EpochFile::open(&p).unwrap().get(), 5);
    }

    fn heartbeats(n: usize) -> Vec<SignedChange> {
        let mut w =
            dcloud_crdt::StatusWriter::new(dcloud_crdt::SecretKey::from_seed([4; 32]), 1, 64);
        (0..n).map(|_| w.heartbeat()).collect()
    }

    #[test]
    fn flushed_changes_are_in_the_log_and_replayed_into_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        let changes = heartbeats(5);
        let (mut s, _) = Store::open(&p, 1 << 20).unwrap();
        s.put_changes(&changes[..3]).unwrap();
        s.flush().unwrap();
        s.put_changes(&changes[3..]).unwrap();
        s.flush().unwrap();
        // The log alone carries them: give it to a store whose sled is empty
        // (as after a crash before any checkpoint).
        let q = dir.path().join("other");
        std::fs::copy(p.with_extension("wal"), q.with_extension("wal")).unwrap();
        let wal_len = std::fs::metadata(q.with_extension("wal")).unwrap().len();
        let (mut q_store, loaded) = Store::open(&q, 1 << 20).unwrap();
        assert_eq!(loaded.replayed, 5);
        assert!(loaded.unclean);
        assert_eq!(loaded.changes, changes);
        // Still in the log until sled has them (opening needs no space)...
        assert_eq!(
            std::fs::metadata(q.with_extension("wal")).unwrap().len(),
            wal_len
        );
        q_store.checkpoint(true).unwrap();
        drop(q_store);
        // ...and in sled after the checkpoint.
        let (_q, loaded) = Store::open(&q, 1 << 20).unwrap();
        assert_eq!((loaded.replayed, loaded.unclean), (0, false));
        // (sled returns them in key order)
        let sorted = |mut v: Vec<SignedChange>| {
            v.sort_by_key(|c| c.encode());
            v
        };
        assert_eq!(sorted(loaded.changes), sorted(changes.clone()));
        // A checkpoint empties the log and the changes stay in sled.
        s.checkpoint(true).unwrap();
        assert_eq!(std::fs::metadata(p.with_extension("wal")).unwrap().len(), 0);
        drop(s);
        let (_s, loaded) = Store::open(&p, 1 << 20).unwrap();
        assert_eq!(loaded.replayed, 0);
        assert_eq!(loaded.changes.len(), 5);
    }

    #[test]
    fn a_torn_log_tail_is_cut_off_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        let changes = heartbeats(3);
        {
            let (mut s, _) = Store::open(&p, 1 << 20).unwrap();
            s.put_changes(&changes).unwrap();
            s.flush().unwrap();
        }
        let wal = p.with_extension("wal");
        let mut bytes = std::fs::read(&wal).unwrap();
        let whole = bytes.len();
        // A crash in the middle of appending a fourth record: cut off.
        bytes.extend_from_slice(&[0, 0, 1, 0, 9, 9]);
        let parsed = parse_wal(&bytes, 1 << 20);
        assert_eq!(
            (parsed.changes.len(), parsed.good, parsed.torn),
            (3, whole, true)
        );
        let q = dir.path().join("torn");
        std::fs::write(q.with_extension("wal"), &bytes).unwrap();
        let (_q, loaded) = Store::open(&q, 1 << 20).unwrap();
        assert_eq!(loaded.changes, changes);
        assert_eq!(
            std::fs::metadata(q.with_extension("wal")).unwrap().len(),
            whole as u64
        );

        // A flipped byte inside the second record: damage, not a torn
        // append. The log is moved aside and the first record kept.
        bytes.truncate(whole);
        let second_end = whole - (whole / 3);
        bytes[second_end - 3] ^= 0x40;
        let parsed = parse_wal(&bytes, 1 << 20);
        assert_eq!((parsed.changes.len(), parsed.torn), (1, false));
        let q = dir.path().join("damaged");
        std::fs::write(q.with_extension("wal"), &bytes).unwrap();
        let (_q, loaded) = Store::open(&q, 1 << 20).unwrap();
        assert_eq!(loaded.changes, changes[..1].to_vec());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("damaged.wal.corrupt-")
            })
            .collect();
        assert_eq!(aside.len(), 1, "the damaged log is kept aside");
        assert_eq!(std::fs::read(aside[0].path()).unwrap(), bytes);
    }

    #[test]
    fn deferred_deletions_apply_in_order_at_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        let node = dcloud_crdt::SecretKey::from_seed([4; 32]).public();
        let changes = heartbeats(2);
        let (mut s, _) = Store::open(&p, 1 << 20).unwrap();
        s.put_changes(&changes).unwrap();
        s.drop_status_before(&node, OwnedKind::Status, 1).unwrap(); // epoch 1 stays
        s.flush().unwrap();
        s.checkpoint(true).unwrap();
        drop(s);
        let (mut s, loaded) = Store::open(&p, 1 << 20).unwrap();
        assert_eq!(loaded.changes.len(), 2);
        s.drop_node(&node).unwrap();
        s.checkpoint(true).unwrap();
        drop(s);
        let (_s, loaded) = Store::open(&p, 1 << 20).unwrap();
        assert!(loaded.changes.is_empty());
    }

    #[test]
    fn a_store_in_use_is_refused_not_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        let (mut held, _) = Store::open(&p, 1 << 20).unwrap();
        held.put_changes(&heartbeats(1)).unwrap();
        held.checkpoint(true).unwrap();
        let err = Store::open(&p, 1 << 20).err().expect("the store is in use");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another dcloud"), "{err}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains("corrupt")), "{names:?}");
        drop(held);
        let (_s, loaded) = Store::open(&p, 1 << 20).unwrap();
        assert_eq!(loaded.changes.len(), 1);
    }

    #[test]
    fn damaged_store_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        {
            let (mut s, loaded) = Store::open(&p, 1 << 20).unwrap();
            assert!(loaded.moved_aside.is_none());
            s.put_peer(
                &dcloud_crdt::PublicKey([9; 32]),
                &["/ip4/127.0.0.1/tcp/1".into()],
            )
            .unwrap();
            s.flush().unwrap();
        }
        {
            let (_s, loaded) = Store::open(&p, 1 << 20).unwrap();
            assert_eq!(loaded.peers.len(), 1);
        }
        // Overwrite every file of the database with garbage.
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::write(e.path(), vec![0xA5u8; 4096]).unwrap();
            }
        }
        let (_s, loaded) = Store::open(&p, 1 << 20).unwrap();
        let aside = loaded.moved_aside.expect("moved aside");
        assert!(aside.exists());
        assert!(loaded.peers.is_empty());
    }
}
