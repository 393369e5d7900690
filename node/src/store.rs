//! The durable replica in sled: signed changes, trust roots and peer addresses.
//!
//! Layout (one sled database in `<data_dir>/store`):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `changes` | `DocId::to_bytes()` ++ change hash (32 bytes) | `SignedChange::encode()` |
//! | `roots` | trust-root version, big-endian u64 | postcard `SignedTrustRoot` |
//! | `peers` | node id (32 bytes) | JSON list of multiaddrs |
//! | `meta` | `format` | `dcloud-store-v1` |
//!
//! The private key is never stored here: it lives in its own 0600 file. Writes
//! become durable at [`Store::flush`]; the daemon flushes once per batch of
//! engine outputs and holds that batch's sends and acknowledgements until the
//! flush succeeds (group commit), so a change is durable before it is
//! forwarded or acknowledged.
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

use dcloud_crdt::{DocId, NodeId, SignedChange, SignedTrustRoot};

const FORMAT: &[u8] = b"dcloud-store-v1";

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
    /// Every stored change (policy first, then status).
    pub changes: Vec<SignedChange>,
    /// Stored trust roots, by version.
    pub roots: Vec<SignedTrustRoot>,
    /// Stored peer addresses.
    pub peers: Vec<(NodeId, Vec<String>)>,
    /// Where a damaged store was moved, if it was.
    pub moved_aside: Option<PathBuf>,
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
    pub fn open(path: &Path, change_max_bytes: usize) -> Result<(Store, Loaded), StoreError> {
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
        let store = Store {
            path: path.to_path_buf(),
            change_max_bytes,
            inner: Some(Inner {
                changes: tree("changes")?,
                roots: tree("roots")?,
                peers: tree("peers")?,
                db: opened.clone(),
            }),
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
        let loaded = std::panic::catch_unwind(AssertUnwindSafe(|| store.load(change_max_bytes)))
            .map_err(|_| corrupt("sled panicked while reading".into()))??;
        Ok((store, loaded))
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
                DocId::Status { .. } => status.push(sc),
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
        policy.extend(status);
        Ok(Loaded {
            changes: policy,
            roots,
            peers,
            moved_aside: None,
        })
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write changes (durable after the next [`Store::flush`]).
    pub fn put_changes(&self, changes: &[SignedChange]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for sc in changes {
            let hash = sc.hash().map_err(write_err)?;
            batch.insert(change_key(&sc.doc, &hash.0), sc.encode());
        }
        self.inner()?
            .changes
            .apply_batch(batch)
            .map_err(write_err)?;
        Ok(())
    }

    /// Write a trust root (durable after the next [`Store::flush`]).
    pub fn put_root(&self, root: &SignedTrustRoot) -> Result<(), StoreError> {
        let bytes = postcard::to_allocvec(root).map_err(write_err)?;
        self.inner()?
            .roots
            .insert(root.root.version.to_be_bytes(), bytes)
            .map_err(write_err)?;
        Ok(())
    }

    /// Delete the status changes of `node` in epochs before `epoch`.
    pub fn drop_status_before(&self, node: &NodeId, epoch: u32) -> Result<(), StoreError> {
        let mut prefix = vec![1u8];
        prefix.extend_from_slice(&node.0);
        let mut batch = sled::Batch::default();
        for item in self.inner()?.changes.scan_prefix(&prefix) {
            let (k, _) = item.map_err(write_err)?;
            if k.len() >= 37 {
                let e = u32::from_be_bytes(k[33..37].try_into().expect("4 bytes"));
                if e < epoch {
                    batch.remove(k);
                }
            }
        }
        self.inner()?
            .changes
            .apply_batch(batch)
            .map_err(write_err)?;
        Ok(())
    }

    /// Delete every status change of `node`, and its addresses.
    pub fn drop_node(&self, node: &NodeId) -> Result<(), StoreError> {
        let mut prefix = vec![1u8];
        prefix.extend_from_slice(&node.0);
        let mut batch = sled::Batch::default();
        for item in self.inner()?.changes.scan_prefix(&prefix) {
            let (k, _) = item.map_err(write_err)?;
            batch.remove(k);
        }
        self.inner()?
            .changes
            .apply_batch(batch)
            .map_err(write_err)?;
        self.inner()?.peers.remove(node.0).map_err(write_err)?;
        Ok(())
    }

    /// Remember a peer's addresses (not flushed: losing them costs a rediscovery).
    pub fn put_peer(&self, node: &NodeId, addrs: &[String]) -> Result<(), StoreError> {
        let v = serde_json::to_vec(addrs).map_err(write_err)?;
        self.inner()?.peers.insert(node.0, v).map_err(write_err)?;
        Ok(())
    }

    /// Write and flush a probe key: succeeds once the disk takes writes again.
    pub fn probe(&self) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // A payload of some size, so that a nearly full disk fails the probe.
        let mut v = now.to_be_bytes().to_vec();
        v.resize(64 << 10, 0);
        let meta = self.inner()?.db.open_tree("meta").map_err(write_err)?;
        meta.insert("probe", v).map_err(write_err)?;
        self.flush()
    }

    /// Flush everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner()?.db.flush().map_err(write_err)?;
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

    #[test]
    fn damaged_store_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        {
            let (s, loaded) = Store::open(&p, 1 << 20).unwrap();
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
