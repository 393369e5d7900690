//! A bounded inspector of raw automerge change chunks, run before automerge sees them.
//!
//! automerge 0.12 trusts its input's sizes: it inflates a compressed (deflate)
//! chunk with no bound, allocates whatever length a string in a column claims (up
//! to 1 GB) before reading it, and decodes as many ops as the run lengths of the
//! op columns claim. A few kilobytes from a stranger can therefore ask for
//! gigabytes, and all of that happens before any signature is checked.
//!
//! [`inspect`] reads a change chunk without allocating in proportion to anything
//! but its input: it checks the header, computes the change hash exactly as
//! automerge does (so a signature can be verified over the raw bytes before any
//! decoding), parses the change header fields, and walks every op column summing
//! run lengths without materialising them. It refuses everything that is not one
//! uncompressed change chunk, and every change whose columns would make automerge
//! decode more than [`CHANGE_OPS_MAX`] items. Once it accepts, automerge's
//! `Change::from_bytes` and `Change::decode` allocate O(input + ops), with ops
//! at most [`CHANGE_OPS_MAX`].
//!
//! The layout (automerge `storage/chunk.rs`, `storage/change.rs`,
//! `storage/columns`, `columnar/encoding`):
//!
//! ```text
//! chunk  := magic(85 6f 4a 83) checksum[4] type(u8) len(uLEB) body[len]
//! body   := deps(uLEB n, n x 32-byte hash) actor(uLEB len, bytes) seq(uLEB)
//!           start_op(uLEB, non-zero) time(sLEB) message(uLEB len, UTF-8)
//!           other_actors(uLEB n, n x (uLEB len, bytes))
//!           columns(uLEB n, n x (spec uLEB u32, len uLEB)) column data, extra bytes
//! hash   := SHA-256(type || uLEB(len) || body); checksum = hash[0..4]
//! ```
//!
//! A column spec is `id << 4 | deflate << 3 | type`; the type decides the
//! encoding of its data: RLE (group, actor, integer, string, value metadata),
//! delta (an RLE of signed deltas), boolean (alternating run lengths, first
//! `false`) or raw (value bytes, sliced by the metadata column).

use automerge::ChangeHash;
use sha2::{Digest, Sha256};

/// The four bytes every automerge chunk starts with.
pub const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// Chunk type byte of a document chunk.
pub const CHUNK_TYPE_DOCUMENT: u8 = 0;
/// Chunk type byte of an uncompressed change chunk: the only one accepted.
pub const CHUNK_TYPE_CHANGE: u8 = 1;
/// Chunk type byte of a deflate-compressed change chunk.
pub const CHUNK_TYPE_COMPRESSED: u8 = 2;
/// Chunk type byte of a bundle chunk.
pub const CHUNK_TYPE_BUNDLE: u8 = 3;

/// Most items (ops; or preds, for the pred columns) any op column of one change
/// may hold, counted as the sum of its run lengths.
///
/// Why this value: every op in a dcloud document is a put or delete on a root
/// map key, and every key has a prefix of at least 5 bytes plus a name
/// (`site/…`, `fleet/…`) so each op costs at least 8 bytes of key column (length
/// byte and key); the largest change is a policy change of
/// [`Limits::policy_change_size_max_bytes`](crate::Limits) = 4 MiB, so a
/// legitimate change holds at most 4 MiB / 8 B = 512 Ki ops. 1 Mi ops is twice
/// that. What automerge then allocates per op when it decodes a change is of the
/// order of 150-180 bytes (`ExpandedChange` operations), so the bound caps a change's
/// decoding at roughly 150 MiB instead of the unbounded 2^64 ops (or a
/// decompressed gigabyte) it could otherwise claim. (Measured: 176 bytes per op,
/// 176 MiB peak for a change at the bound, in
/// `crdt/tests/bomb.rs::ops_at_the_bound_cost_bounded_allocation`; see also
/// [`ops_max_for`], which bounds small changes tighter.)
pub const CHANGE_OPS_MAX: u64 = 1 << 20;

/// The op bound for a change of `len` bytes: [`CHANGE_OPS_MAX`], and no more ops
/// than bytes.
///
/// Every op in a dcloud document carries its own map key of at least 8 bytes of
/// key column, so a legitimate dcloud change has well under one op per byte
/// (measured: 17 bytes per op for a policy change of 20,000 small sets). Tying
/// the bound to the size keeps small changes cheap: a 16 KiB status change may
/// make automerge decode at most 16 Ki ops, not [`CHANGE_OPS_MAX`]. (General
/// automerge changes can have more ops than bytes, e.g. a run of list deletes;
/// [`inspect`] alone does not assume dcloud's schemas.)
pub fn ops_max_for(len: usize) -> u64 {
    CHANGE_OPS_MAX.min(len as u64)
}

/// Column id of the op action column: automerge decodes one op per item in it.
const ACTION_COLUMN_ID: u32 = 4;
/// Column id of the pred (group) columns.
const PRED_COLUMN_ID: u32 = 7;

/// Column data encodings, by the low three bits of a column spec.
const COL_GROUP: u32 = 0;
const COL_ACTOR: u32 = 1;
const COL_INTEGER: u32 = 2;
const COL_DELTA: u32 = 3;
const COL_BOOLEAN: u32 = 4;
const COL_STRING: u32 = 5;
const COL_VALUE_METADATA: u32 = 6;
const COL_VALUE: u32 = 7;
/// The deflate bit of a column spec.
const COL_DEFLATE: u32 = 0b1000;

/// Why a byte string is not an acceptable change chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The input ended inside the named field.
    #[error("change chunk truncated in {0}")]
    Truncated(&'static str),
    /// Not an automerge chunk.
    #[error("not an automerge chunk (bad magic bytes)")]
    BadMagic,
    /// A deflate-compressed change chunk: inflating it is unbounded.
    #[error(
        "compressed change chunk refused: its inflated size is unbounded; changes must be sent uncompressed"
    )]
    Compressed,
    /// A chunk of another type (document or bundle).
    #[error("{0} chunk refused: only an uncompressed change chunk is accepted")]
    NotAChange(&'static str),
    /// An unknown chunk type byte.
    #[error("unknown chunk type {0}")]
    UnknownType(u8),
    /// The header's length says the chunk ends before the input does.
    #[error("{0} trailing bytes after the change chunk")]
    TrailingBytes(usize),
    /// The header's length says the chunk ends after the input does.
    #[error("change chunk claims {declared} bytes, {available} follow the header")]
    LengthMismatch {
        /// The length in the header.
        declared: u64,
        /// The bytes that follow the header.
        available: usize,
    },
    /// The checksum is not the first four bytes of the change hash.
    #[error("checksum does not match the change")]
    Checksum,
    /// A LEB128 number that does not decode (too large, overlong, cut short).
    #[error("bad LEB128 number in {0}")]
    Leb128(&'static str),
    /// A field with an invalid value.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A deflate-compressed column: inflating it is unbounded (automerge also refuses these in a change).
    #[error("column {spec:#x} is deflate-compressed")]
    CompressedColumn {
        /// The column spec.
        spec: u32,
    },
    /// The column lengths add up to more than the chunk holds.
    #[error("column lengths add up to {total} bytes, the change has {available} after its header")]
    ColumnsOutOfRange {
        /// The sum of the column lengths (saturating).
        total: u64,
        /// The bytes left in the body.
        available: usize,
    },
    /// A column's data does not decode.
    #[error("column {spec:#x}: {what}")]
    BadColumn {
        /// The column spec.
        spec: u32,
        /// What is wrong.
        what: &'static str,
    },
    /// A column claims more items than the bound.
    #[error("column {spec:#x} claims over {max} ops (runs sum to at least {items})")]
    TooManyOps {
        /// The column spec.
        spec: u32,
        /// The items counted when the bound was passed (a lower bound of the claim).
        items: u64,
        /// The bound.
        max: u64,
    },
}

/// What [`inspect`] learnt about an acceptable change chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The change hash, as automerge computes it.
    pub hash: ChangeHash,
    /// The dependencies.
    pub deps: Vec<ChangeHash>,
    /// The author's actor id bytes.
    pub actor: Vec<u8>,
    /// Sequence number of the change for its actor.
    pub seq: u64,
    /// Counter of the first op.
    pub start_op: u64,
    /// Timestamp (milliseconds since the epoch, as the author set it).
    pub time: i64,
    /// Length of the commit message, bytes.
    pub message_len: usize,
    /// Number of other actors referenced.
    pub other_actors: usize,
    /// Number of op columns.
    pub columns: usize,
    /// The ops automerge will decode: the items in the action column.
    pub ops: u64,
    /// The preds automerge will decode: the sum of the pred group column.
    pub preds: u64,
    /// The largest item count of any column (and of the preds): everything
    /// automerge decodes from this change is bounded by it, and it is at most the
    /// `ops_max` passed to [`inspect_with`].
    pub ops_max_bound: u64,
    /// Bytes after the column data (automerge keeps them as "extra bytes").
    pub extra_bytes: usize,
}

/// Inspect a change chunk with the default bound [`CHANGE_OPS_MAX`].
pub fn inspect(bytes: &[u8]) -> Result<ChunkInfo, ChunkError> {
    inspect_with(bytes, CHANGE_OPS_MAX)
}

/// The change hash of an acceptable change chunk, from its raw bytes; no
/// automerge decoding.
pub fn change_hash(bytes: &[u8]) -> Result<ChangeHash, ChunkError> {
    inspect(bytes).map(|i| i.hash)
}

/// Inspect a change chunk, refusing any op column with more than `ops_max` items.
///
/// Allocates only the dependency list and the actor id (both bounded by the
/// input); runs in time linear in the input.
pub fn inspect_with(bytes: &[u8], ops_max: u64) -> Result<ChunkInfo, ChunkError> {
    let mut r = Reader::new(bytes);
    if r.take(4, "magic")? != CHUNK_MAGIC {
        return Err(ChunkError::BadMagic);
    }
    let checksum = r.take(4, "checksum")?;
    let type_at = r.pos;
    match r.u8("chunk type")? {
        CHUNK_TYPE_CHANGE => {}
        CHUNK_TYPE_COMPRESSED => return Err(ChunkError::Compressed),
        CHUNK_TYPE_DOCUMENT => return Err(ChunkError::NotAChange("document")),
        CHUNK_TYPE_BUNDLE => return Err(ChunkError::NotAChange("bundle")),
        other => return Err(ChunkError::UnknownType(other)),
    }
    let declared = r.uleb("chunk length")?;
    let body_at = r.pos;
    let available = bytes.len() - body_at;
    match usize::try_from(declared) {
        Ok(n) if n == available => {}
        Ok(n) if n < available => return Err(ChunkError::TrailingBytes(available - n)),
        _ => {
            return Err(ChunkError::LengthMismatch {
                declared,
                available,
            });
        }
    }
    // automerge hashes the type byte, the (canonical) length and the body; the
    // strict LEB128 reader refused overlong lengths, so the input's bytes are
    // exactly what automerge hashes.
    let digest: [u8; 32] = Sha256::digest(&bytes[type_at..]).into();
    let hash = ChangeHash(digest);
    if checksum != &digest[..4] {
        return Err(ChunkError::Checksum);
    }

    let mut r = Reader::new(&bytes[body_at..]);
    let n_deps = r.uleb("dependency count")?;
    if n_deps > (r.remaining() / 32) as u64 {
        return Err(ChunkError::Truncated("dependencies"));
    }
    let mut deps = Vec::with_capacity(n_deps as usize);
    for _ in 0..n_deps {
        let h: [u8; 32] = r
            .take(32, "dependencies")?
            .try_into()
            .expect("took 32 bytes");
        deps.push(ChangeHash(h));
    }
    let actor = r.length_prefixed("actor")?.to_vec();
    let seq = r.uleb("seq")?;
    let start_op = r.uleb("start_op")?;
    if start_op == 0 {
        return Err(ChunkError::Invalid("start_op (zero)"));
    }
    let time = r.sleb("time")?;
    let message = r.length_prefixed("message")?;
    if std::str::from_utf8(message).is_err() {
        return Err(ChunkError::Invalid("message (not UTF-8)"));
    }
    let n_other = r.uleb("other actor count")?;
    if n_other > r.remaining() as u64 {
        return Err(ChunkError::Truncated("other actors"));
    }
    for _ in 0..n_other {
        r.length_prefixed("other actors")?;
    }

    // Column metadata: read once to total the lengths, then again while walking
    // the data, so that nothing is allocated per column.
    let n_cols = r.uleb("column count")?;
    if n_cols > (r.remaining() / 2) as u64 {
        return Err(ChunkError::Truncated("column metadata"));
    }
    let meta_at = r.pos;
    let mut total: u64 = 0;
    for _ in 0..n_cols {
        let spec = r.spec()?;
        let len = r.uleb("column length")?;
        if spec & COL_DEFLATE != 0 {
            return Err(ChunkError::CompressedColumn { spec });
        }
        total = total.saturating_add(len);
    }
    let data_at = r.pos;
    if total > r.remaining() as u64 {
        return Err(ChunkError::ColumnsOutOfRange {
            total,
            available: r.remaining(),
        });
    }
    let extra_bytes = r.remaining() - total as usize;

    let mut meta = Reader::new(&r.bytes[meta_at..data_at]);
    let mut data_pos = data_at;
    let (mut ops, mut preds, mut bound) = (0u64, 0u64, 0u64);
    for _ in 0..n_cols {
        let spec = meta.spec()?;
        let len = meta.uleb("column length")? as usize;
        let data = &r.bytes[data_pos..data_pos + len];
        data_pos += len;
        let count = count_column(spec, data, ops_max)?;
        let id = spec >> 4;
        if id == ACTION_COLUMN_ID && spec & 0b111 == COL_INTEGER {
            ops = count.items;
        }
        if id == PRED_COLUMN_ID && spec & 0b111 == COL_GROUP {
            preds = count.group_sum;
        }
        bound = bound.max(count.items).max(count.group_sum);
    }

    Ok(ChunkInfo {
        hash,
        deps,
        actor,
        seq,
        start_op,
        time,
        message_len: message.len(),
        other_actors: n_other as usize,
        columns: n_cols as usize,
        ops,
        preds,
        ops_max_bound: bound,
        extra_bytes,
    })
}

/// The items in one column, and for a group column the sum of its values (the
/// items of the columns it groups).
struct ColumnCount {
    items: u64,
    group_sum: u64,
}

/// What one RLE value is.
#[derive(Clone, Copy)]
enum RleValue {
    Unsigned,
    Signed,
    String,
}

/// Count a column's items as automerge's decoders would yield them, refusing
/// more than `max` (items, or for a group column the sum of its values).
fn count_column(spec: u32, data: &[u8], max: u64) -> Result<ColumnCount, ChunkError> {
    let bad = |what| ChunkError::BadColumn { spec, what };
    let over = |items| ChunkError::TooManyOps { spec, items, max };
    let mut r = Reader::new(data);
    let (mut items, mut group_sum) = (0u64, 0u64);
    let add = |acc: &mut u64, n: u64| -> Result<(), ChunkError> {
        *acc = acc.saturating_add(n);
        if *acc > max { Err(over(*acc)) } else { Ok(()) }
    };
    let kind = match spec & 0b111 {
        COL_GROUP | COL_ACTOR | COL_INTEGER | COL_VALUE_METADATA => RleValue::Unsigned,
        COL_DELTA => RleValue::Signed,
        COL_STRING => RleValue::String,
        COL_BOOLEAN => {
            // Alternating run lengths (false first), each a uLEB128.
            while !r.is_empty() {
                let n = r.uleb_loose().map_err(|_| bad("bad boolean run length"))?;
                add(&mut items, n)?;
            }
            return Ok(ColumnCount {
                items,
                group_sum: 0,
            });
        }
        COL_VALUE => {
            // Raw bytes, sliced by the metadata column: nothing to expand.
            return Ok(ColumnCount {
                items: 0,
                group_sum: 0,
            });
        }
        _ => unreachable!("three bits"),
    };
    let is_group = spec & 0b111 == COL_GROUP;
    while !r.is_empty() {
        let count = r.sleb_loose().map_err(|_| bad("bad run length"))?;
        if count > 0 {
            // A run: one value repeated `count` times.
            let v = read_value(&mut r, kind).ok_or_else(|| bad("bad run value"))?;
            add(&mut items, count as u64)?;
            if is_group {
                add(&mut group_sum, v.saturating_mul(count as u64))?;
            }
        } else if count < 0 {
            // A literal run of `-count` values.
            let n = count.unsigned_abs();
            add(&mut items, n)?;
            for _ in 0..n {
                let v = read_value(&mut r, kind).ok_or_else(|| bad("bad literal value"))?;
                if is_group {
                    add(&mut group_sum, v)?;
                }
            }
        } else {
            // A run of nulls.
            let n = r.uleb_loose().map_err(|_| bad("bad null run length"))?;
            add(&mut items, n)?;
        }
    }
    Ok(ColumnCount { items, group_sum })
}

/// Read one RLE value; its numeric value for unsigned columns (group counts).
fn read_value(r: &mut Reader<'_>, kind: RleValue) -> Option<u64> {
    match kind {
        RleValue::Unsigned => r.uleb_loose().ok(),
        RleValue::Signed => r.sleb_loose().ok().map(|_| 0),
        RleValue::String => {
            // automerge allocates the claimed length before reading it: it must
            // be there.
            let len = r.uleb_loose().ok()?;
            if len > r.remaining() as u64 {
                return None;
            }
            let s = r.take(len as usize, "string").ok()?;
            std::str::from_utf8(s).ok()?;
            Some(0)
        }
    }
}

/// A cursor over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ChunkError> {
        if n > self.remaining() {
            return Err(ChunkError::Truncated(what));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ChunkError> {
        Ok(self.take(1, what)?[0])
    }

    fn length_prefixed(&mut self, what: &'static str) -> Result<&'a [u8], ChunkError> {
        let len = self.uleb(what)?;
        if len > self.remaining() as u64 {
            return Err(ChunkError::Truncated(what));
        }
        self.take(len as usize, what)
    }

    fn spec(&mut self) -> Result<u32, ChunkError> {
        u32::try_from(self.uleb("column spec")?).map_err(|_| ChunkError::Leb128("column spec"))
    }

    /// An unsigned LEB128 as automerge's chunk parser reads it: at most 64 bits,
    /// no overlong encodings.
    fn uleb(&mut self, what: &'static str) -> Result<u64, ChunkError> {
        let mut res: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = self.take(1, what).map_err(|_| ChunkError::Leb128(what))?[0];
            res |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                if (shift > 64 && byte > 1) || (shift > 7 && byte == 0) {
                    return Err(ChunkError::Leb128(what));
                }
                return Ok(res);
            } else if shift > 64 {
                return Err(ChunkError::Leb128(what));
            }
        }
    }

    /// A signed LEB128 as automerge's chunk parser reads it.
    fn sleb(&mut self, what: &'static str) -> Result<i64, ChunkError> {
        let mut res: i64 = 0;
        let mut shift = 0u32;
        let mut prev = 0u8;
        loop {
            let byte = self.take(1, what).map_err(|_| ChunkError::Leb128(what))?[0];
            res |= i64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                if shift > 64 && byte != 0 && byte != 0x7f {
                    return Err(ChunkError::Leb128(what));
                }
                if shift > 7
                    && ((byte == 0 && prev & 0x40 == 0) || (byte == 0x7f && prev & 0x40 != 0))
                {
                    return Err(ChunkError::Leb128(what));
                }
                if shift < 64 && byte & 0x40 != 0 {
                    res |= -1 << shift;
                }
                return Ok(res);
            } else if shift > 64 {
                return Err(ChunkError::Leb128(what));
            }
            prev = byte;
        }
    }

    /// An unsigned LEB128 as the `leb128` crate reads column data: overlong
    /// encodings accepted, at most 64 bits.
    fn uleb_loose(&mut self) -> Result<u64, ()> {
        let mut res: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = self.take(1, "column").map_err(|_| ())?[0];
            if shift == 63 && byte != 0x00 && byte != 0x01 {
                return Err(());
            }
            res |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(res);
            }
            shift += 7;
        }
    }

    /// A signed LEB128 as the `leb128` crate reads column data.
    fn sleb_loose(&mut self) -> Result<i64, ()> {
        let mut res: i64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = self.take(1, "column").map_err(|_| ())?[0];
            if shift == 63 && byte != 0x00 && byte != 0x7f {
                return Err(());
            }
            res |= i64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                if shift < 64 && byte & 0x40 != 0 {
                    res |= -1 << shift;
                }
                return Ok(res);
            }
        }
    }
}
