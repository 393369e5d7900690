//! The envelope codec: how every signed object dcloud writes to a file or
//! sends to a peer is framed.
//!
//! | bytes    | what                                              |
//! |----------|---------------------------------------------------|
//! | 0 or 8   | magic, per format (only a bundle file has one)    |
//! | 1        | format version                                    |
//! | the rest | the value, postcard                               |
//!
//! The formats: a signed change ([`crate::change::SignedChange`]), a bundle
//! file ([`crate::change::Bundle`]), a trust-chain file
//! ([`crate::root::encode_chain`]) and a freshness statement
//! ([`crate::freshness::SignedFreshness`]). Each names its [`Format`]; all of
//! them go through [`encode`] and [`decode`], so that every decoder checks the
//! same things in the same order: the size bound first (before any decoding
//! work, so an over-size input costs nothing), then the magic, then the
//! version (another version is refused, naming the one found and the one this
//! build reads), then the postcard body, and last that nothing trails it.

use serde::{Deserialize, Serialize};

/// One envelope format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// What the bytes are, for errors ("signed change").
    pub what: &'static str,
    /// The bytes before the version byte; empty for most formats.
    pub magic: &'static [u8],
    /// The version byte this build writes and reads (it reads no other).
    pub version: u8,
}

/// Why bytes are not an envelope of the expected format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Larger than the bound; refused before anything was decoded.
    #[error("{what} is {size} bytes, over the {max}-byte limit")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// No bytes at all.
    #[error("empty input")]
    Empty,
    /// The bytes do not start with the format's magic (and its version byte).
    #[error("not a dcloud {what} (bad magic)")]
    BadMagic {
        /// What was expected.
        what: &'static str,
    },
    /// The format version is not the one this build reads.
    #[error(
        "{what} format version {found} is not read by this build (it reads version {expected}; re-make it with this release's tools)"
    )]
    UnknownVersion {
        /// What the bytes claim to be.
        what: &'static str,
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        expected: u8,
    },
    /// The body does not decode, or bytes trail it.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Encode `value` in `format`: the magic, the version byte, then postcard.
pub fn encode<T: Serialize + ?Sized>(format: &Format, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(format.magic.len() + 1);
    out.extend_from_slice(format.magic);
    out.push(format.version);
    postcard::to_io(value, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Decode an envelope of `format`, refusing input over `size_max_bytes`
/// before looking at it (the check order is in the module docs).
pub fn decode<'a, T: Deserialize<'a>>(
    format: &Format,
    bytes: &'a [u8],
    size_max_bytes: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > size_max_bytes {
        return Err(DecodeError::TooLarge {
            what: format.what,
            size: bytes.len(),
            max: size_max_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let bad_magic = || DecodeError::BadMagic { what: format.what };
    let after_magic = bytes.strip_prefix(format.magic).ok_or_else(bad_magic)?;
    // Not empty when there is no magic (checked above): only a magic without
    // its version byte gets here with nothing left.
    let (&found, body) = after_magic.split_first().ok_or_else(bad_magic)?;
    if found != format.version {
        return Err(DecodeError::UnknownVersion {
            what: format.what,
            found,
            expected: format.version,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Format = Format {
        what: "test value",
        magic: b"",
        version: 3,
    };
    const MAGIC: Format = Format {
        what: "test file",
        magic: b"MAGIC",
        version: 1,
    };

    #[test]
    fn round_trips_with_and_without_magic() {
        let v = (7u32, "x".to_string());
        for f in [PLAIN, MAGIC] {
            let bytes = encode(&f, &v);
            assert!(bytes.starts_with(f.magic));
            assert_eq!(bytes[f.magic.len()], f.version);
            assert_eq!(
                decode::<(u32, String)>(&f, &bytes, bytes.len()),
                Ok(v.clone())
            );
        }
    }

    #[test]
    fn checks_come_in_order() {
        // Over the bound wins over everything else wrong with the bytes.
        assert_eq!(
            decode::<u8>(&MAGIC, &[0xff; 9], 8),
            Err(DecodeError::TooLarge {
                what: "test file",
                size: 9,
                max: 8
            })
        );
        assert_eq!(decode::<u8>(&MAGIC, b"", 8), Err(DecodeError::Empty));
        assert_eq!(
            decode::<u8>(&MAGIC, b"MAGIC", 8),
            Err(DecodeError::BadMagic { what: "test file" })
        );
        // A wrong magic wins over a wrong version.
        assert_eq!(
            decode::<u8>(&MAGIC, b"MAGIX\x09\x00", 8),
            Err(DecodeError::BadMagic { what: "test file" })
        );
        let err = decode::<u8>(&MAGIC, b"MAGIC\x09\x00", 8).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownVersion {
                what: "test file",
                found: 9,
                expected: 1
            }
        );
        assert!(err.to_string().contains("version 9"), "{err}");
        assert!(err.to_string().contains("reads version 1"), "{err}");
        assert!(matches!(
            decode::<u32>(&PLAIN, &[3], 8),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            decode::<u8>(&PLAIN, &[3, 1, 0, 0], 8),
            Err(DecodeError::Malformed("2 trailing bytes".into()))
        );
    }
}
