//! Validly signed but hostile status changes, as one stolen site key could
//! make them: for the tests and for the simulator's malicious nodes, so that
//! both attack with the same bytes. Nothing here is used by an honest node.

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};

use crate::change::{DocId, SignedChange, actor_with_nonce};
use crate::keys::SecretKey;

fn nonce(seed: u64, i: u64) -> [u8; 16] {
    let mut n = [0u8; 16];
    n[..8].copy_from_slice(&seed.to_le_bytes());
    n[8..].copy_from_slice(&i.to_le_bytes());
    n
}

fn status_doc(key: &SecretKey, epoch: u32) -> DocId {
    DocId::Status {
        node: key.public(),
        epoch,
    }
}

fn commit(doc: &mut Automerge, field: &str, value: &str) -> automerge::Change {
    let mut tx = doc.transaction();
    tx.put(ROOT, field, value)
        .expect("put on the root map cannot fail");
    tx.commit();
    doc.get_last_local_change().expect("just committed")
}

/// An over-full status epoch: a first change, then `siblings` changes that
/// each depend only on it (all valid, all signed by `key`). Handing different
/// subsets of at most [`crate::Limits::status_epoch_changes_max`] to different
/// neighbours is the "epoch splitter" attack. Returns the first change first.
pub fn sibling_status_changes(
    key: &SecretKey,
    epoch: u32,
    siblings: usize,
    seed: u64,
) -> Vec<SignedChange> {
    let doc_id = status_doc(key, epoch);
    let mut base = Automerge::new().with_actor(actor_with_nonce(&key.public(), nonce(seed, 0)));
    let first = commit(&mut base, "name", "splitter");
    let mut out = vec![SignedChange::sign(doc_id, 0, &first, key)];
    for i in 0..siblings {
        let mut fork = base
            .fork()
            .with_actor(actor_with_nonce(&key.public(), nonce(seed, 1 + i as u64)));
        let c = commit(&mut fork, "hb", &i.to_string());
        out.push(SignedChange::sign(doc_id, 0, &c, key));
    }
    out
}

/// `count` status changes of `key`, one each for the epochs `from_epoch`,
/// `from_epoch + 1`, ..., each depending on a first change of its epoch that
/// is withheld (never returned): changes that can never apply, the "far-future
/// pending flood".
pub fn far_future_pending(
    key: &SecretKey,
    from_epoch: u32,
    count: usize,
    seed: u64,
) -> Vec<SignedChange> {
    (0..count)
        .map(|i| {
            let epoch = from_epoch.saturating_add(i as u32);
            let mut doc =
                Automerge::new().with_actor(actor_with_nonce(&key.public(), nonce(seed, i as u64)));
            commit(&mut doc, "name", "withheld");
            let second = commit(&mut doc, "hb", "1");
            SignedChange::sign(status_doc(key, epoch), 0, &second, key)
        })
        .collect()
}

/// A status change of `key` whose bytes are a compressed (deflate) automerge
/// chunk, validly signed over the change's hash: the shape of a decompression
/// bomb (a large one inflates a few MiB into gigabytes). Replicas refuse
/// compressed change chunks from the network before inflating anything.
pub fn compressed_status_change(key: &SecretKey, epoch: u32, seed: u64) -> SignedChange {
    let mut doc = Automerge::new().with_actor(actor_with_nonce(&key.public(), nonce(seed, 0)));
    let filler = "0".repeat(4000);
    let mut change = commit(&mut doc, "health", &filler);
    let mut sc = SignedChange::sign(status_doc(key, epoch), 0, &change, key);
    sc.change = change.bytes().into_owned();
    sc
}
