//! The reconciliation index: every document a replica holds, keyed by a
//! uniformly spread 64-bit key, with a 128-bit fingerprint of (document, heads)
//! per entry. A range's fingerprint is the XOR of its entries' and its count,
//! so two nodes compare the whole key space with one fingerprint and descend
//! only into the ranges that differ (range-based set reconciliation, as in
//! Aljoscha Meyer's "Range-Based Set Reconciliation" and iroh-docs' `ranger`).
//!
//! A status document is keyed by its owner, not by its epoch: the entry of a
//! node whose epoch moved on is replaced, and two nodes holding different
//! epochs of one status document see one differing entry.

use std::sync::Arc;

use dcloud_crdt::{ChangeHash, DocId, NodeId, OwnedKind};

use super::Millis;
use super::wire::Item;

/// Index key: the spread key, then the owner (None for the policy) to keep
/// entries apart should two owners' keys collide.
pub(crate) type Key = (u64, Option<NodeId>);

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) doc: DocId,
    pub(crate) heads: Arc<[ChangeHash]>,
    pub(crate) fp: u128,
    /// When this node last changed the entry (its local clock).
    pub(crate) updated_at: Millis,
}

/// The index of one replica: a persistent map, so that a clone (a simulated
/// fleet's replicas started from one state, see [`super::IndexSnapshot`])
/// shares every entry it has not changed.
#[derive(Clone, Default, Debug)]
pub(crate) struct DocIndex {
    entries: imbl::OrdMap<Key, Entry>,
    total_fp: u128,
}

pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small 128-bit hash of byte strings (not cryptographic: heads are already
/// SHA-256 outputs chosen by their signers, see the module notes in `mod.rs`).
struct Hasher128 {
    a: u64,
    b: u64,
}

impl Hasher128 {
    fn new(seed: u64) -> Self {
        Hasher128 {
            a: mix64(seed ^ 0x243f_6a88_85a3_08d3),
            b: mix64(seed ^ 0x1319_8a2e_0370_7344),
        }
    }
    fn word(&mut self, w: u64) {
        self.a = mix64(self.a ^ w);
        self.b = mix64(self.b.wrapping_add(w).rotate_left(23) ^ self.a);
    }
    fn bytes(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.word(u64::from_le_bytes(w));
        }
        self.word(bytes.len() as u64);
    }
    fn finish(self) -> u128 {
        ((mix64(self.a ^ self.b.rotate_left(7)) as u128) << 64) | mix64(self.b ^ self.a) as u128
    }
}

/// The index key of a document.
pub(crate) fn key_of(doc: &DocId) -> Key {
    match doc {
        DocId::Policy => (0, None),
        DocId::Region { region } => {
            let mut h = Hasher128::new(4);
            h.bytes(&region.0);
            ((h.finish() as u64).max(1), None)
        }
        DocId::Status { node, .. } | DocId::Summary { node, .. } => {
            // A summary spreads by another seed: a node's status and its
            // summary are two entries.
            let seed = if matches!(doc, DocId::Status { .. }) {
                1
            } else {
                3
            };
            let mut h = Hasher128::new(seed);
            h.bytes(&node.0);
            // Key 0 is the policy's; owners spread over the rest.
            ((h.finish() as u64).max(1), Some(*node))
        }
    }
}

/// The fingerprint of a document and its sorted heads.
pub(crate) fn fingerprint(doc: &DocId, heads: &[ChangeHash]) -> u128 {
    let mut h = Hasher128::new(2);
    h.bytes(&doc.to_bytes());
    for x in heads {
        h.bytes(&x.0);
    }
    h.finish()
}

impl DocIndex {
    /// Set a document's heads (sorted); empty heads remove the entry.
    pub(crate) fn set(&mut self, doc: DocId, mut heads: Vec<ChangeHash>, now: Millis) {
        let key = key_of(&doc);
        if let Some(old) = self.entries.remove(&key) {
            self.total_fp ^= old.fp;
        }
        if heads.is_empty() {
            return;
        }
        heads.sort();
        let fp = fingerprint(&doc, &heads);
        self.total_fp ^= fp;
        self.entries.insert(
            key,
            Entry {
                doc,
                heads: heads.into(),
                fp,
                updated_at: now,
            },
        );
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Remove every entry of `node` (its status and its summary).
    pub(crate) fn remove_node(&mut self, node: &NodeId) {
        for kind in [OwnedKind::Status, OwnedKind::Summary] {
            self.remove(&kind.doc(*node, 0));
        }
    }

    /// Remove `doc`'s entry (whatever its epoch).
    pub(crate) fn remove(&mut self, doc: &DocId) {
        if let Some(old) = self.entries.remove(&key_of(doc)) {
            self.total_fp ^= old.fp;
        }
    }

    /// Every entry.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Entries with keys in `lo..=hi`.
    pub(crate) fn range(&self, lo: u64, hi: u64) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries
            .range((lo, None)..)
            .take_while(move |(k, _)| k.0 <= hi)
    }

    /// The entry count and fingerprint of `lo..=hi` (folded to 64 bits).
    pub(crate) fn range_fp(&self, lo: u64, hi: u64) -> (u32, u64) {
        let fold = |x: u128| (x as u64) ^ ((x >> 64) as u64);
        if lo == 0 && hi == u64::MAX {
            return (self.entries.len() as u32, fold(self.total_fp));
        }
        let (mut count, mut fp) = (0u32, 0u128);
        for (_, e) in self.range(lo, hi) {
            count += 1;
            fp ^= e.fp;
        }
        (count, fold(fp))
    }

    /// The entry for `doc`'s key (whatever its epoch).
    pub(crate) fn get(&self, doc: &DocId) -> Option<&Entry> {
        self.entries.get(&key_of(doc))
    }

    /// Items of `lo..=hi`.
    pub(crate) fn items(&self, lo: u64, hi: u64) -> Vec<Item> {
        self.range(lo, hi)
            .map(|(_, e)| Item {
                doc: e.doc,
                heads: e.heads.iter().map(|h| h.0).collect(),
            })
            .collect()
    }
}

/// Split `lo..=hi` into at most `parts` contiguous ranges of near-equal width.
pub(crate) fn split(lo: u64, hi: u64, parts: u64) -> Vec<(u64, u64)> {
    let width = (hi - lo) as u128 + 1;
    let parts = (parts as u128).clamp(1, width);
    let step = width / parts;
    let mut out = Vec::with_capacity(parts as usize);
    let mut start = lo as u128;
    for i in 0..parts {
        let end = if i + 1 == parts {
            hi as u128
        } else {
            start + step - 1
        };
        out.push((start as u64, end as u64));
        start = end + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_range_exactly() {
        for (lo, hi, parts) in [(0, u64::MAX, 16), (5, 9, 16), (7, 7, 4), (0, 100, 3)] {
            let s = split(lo, hi, parts);
            assert_eq!(s.first().unwrap().0, lo);
            assert_eq!(s.last().unwrap().1, hi);
            for w in s.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0);
            }
            assert!(s.len() as u64 <= parts);
        }
    }
}
