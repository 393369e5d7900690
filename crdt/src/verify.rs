//! Signature verification: batch first, strict always.
//!
//! Every signature is checked to the standard of `verify_strict`: the key must be
//! a valid point of large order, `s` must be canonical (`s < l`), and `R` must be
//! a canonically encoded point of large order. Those checks are made one by one
//! (they are cheap); the curve equation is then checked for many signatures at
//! once with `verify_batch`, which costs about 20 µs per signature instead of
//! 47 µs. When a batch fails, its members are checked with `verify_strict` one by
//! one, so that the bad signature is named and the good ones still count.

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::keys::{KeyError, KeySignature, PublicKey};

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signing key is invalid or weak.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// `s` is not reduced modulo the group order (a malleated signature).
    #[error("signature by {0} is not canonical (s >= l)")]
    NonCanonical(String),
    /// `R` is not a canonical point of large order.
    #[error("signature by {0} has a weak or non-canonical R")]
    WeakR(String),
    /// The signature does not verify.
    #[error("signature by {0} does not verify")]
    Invalid(String),
}

/// Signatures per `verify_batch` call. The speed-up levels off past about 64.
pub const BATCH_SIZE_MAX: usize = 64;

/// One signature to check.
#[derive(Debug, Clone)]
pub struct SigItem<'a> {
    /// The signed message.
    pub msg: &'a [u8],
    /// The signature and its key.
    pub sig: &'a KeySignature,
}

fn precheck(sig: &KeySignature) -> Result<(VerifyingKey, Signature), SignatureError> {
    let key = sig.key.verifying_key()?;
    let bytes = &sig.sig.0;
    let r: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
    let s: [u8; 32] = bytes[32..].try_into().expect("32 bytes");
    if Option::<Scalar>::from(Scalar::from_canonical_bytes(s)).is_none() {
        return Err(SignatureError::NonCanonical(sig.key.short()));
    }
    let compressed = CompressedEdwardsY(r);
    match compressed.decompress() {
        Some(point) if !point.is_small_order() && point.compress() == compressed => {}
        _ => return Err(SignatureError::WeakR(sig.key.short())),
    }
    Ok((key, Signature::from_bytes(bytes)))
}

/// Verify one signature strictly.
pub fn verify_one(msg: &[u8], sig: &KeySignature) -> Result<(), SignatureError> {
    let (key, signature) = precheck(sig)?;
    key.verify_strict(msg, &signature)
        .map_err(|_| SignatureError::Invalid(sig.key.short()))
}

/// Verify every signature in `sigs` over the one message `msg` (batched);
/// the first failure is the error.
pub fn verify_all(msg: &[u8], sigs: &[KeySignature]) -> Result<(), SignatureError> {
    let items: Vec<SigItem<'_>> = sigs.iter().map(|sig| SigItem { msg, sig }).collect();
    verify_many(&items).into_iter().collect()
}

/// Verify many signatures; the result at index `i` is the verdict on `items[i]`.
pub fn verify_many(items: &[SigItem<'_>]) -> Vec<Result<(), SignatureError>> {
    let mut results: Vec<Result<(), SignatureError>> = Vec::with_capacity(items.len());
    let mut ready: Vec<(usize, VerifyingKey, Signature)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match precheck(item.sig) {
            Ok((k, s)) => {
                results.push(Ok(()));
                ready.push((i, k, s));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    for chunk in ready.chunks(BATCH_SIZE_MAX) {
        let msgs: Vec<&[u8]> = chunk.iter().map(|(i, _, _)| items[*i].msg).collect();
        let sigs: Vec<Signature> = chunk.iter().map(|(_, _, s)| *s).collect();
        let keys: Vec<VerifyingKey> = chunk.iter().map(|(_, k, _)| *k).collect();
        if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
            continue;
        }
        for (i, key, sig) in chunk {
            if key.verify_strict(items[*i].msg, sig).is_err() {
                results[*i] = Err(SignatureError::Invalid(items[*i].sig.key.short()));
            }
        }
    }
    results
}

/// Count the distinct keys among `sigs` that are in `allowed`.
pub(crate) fn distinct_signers<'a>(
    sigs: impl Iterator<Item = &'a PublicKey>,
    allowed: &[PublicKey],
) -> usize {
    let mut seen: Vec<PublicKey> = Vec::new();
    for k in sigs {
        if allowed.contains(k) && !seen.contains(k) {
            seen.push(*k);
        }
    }
    seen.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    #[test]
    fn batch_names_the_bad_signature() {
        let keys: Vec<SecretKey> = (0..100u8).map(|i| SecretKey::from_seed([i; 32])).collect();
        let msgs: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10]).collect();
        let mut sigs: Vec<KeySignature> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
        sigs[70].sig.0[5] ^= 1;
        let items: Vec<SigItem<'_>> = msgs
            .iter()
            .zip(&sigs)
            .map(|(m, s)| SigItem { msg: m, sig: s })
            .collect();
        let res = verify_many(&items);
        for (i, r) in res.iter().enumerate() {
            assert_eq!(r.is_err(), i == 70, "index {i}: {r:?}");
        }
    }

    /// l = 2^252 + 27742317777372353535851937790883648493, little-endian.
    const GROUP_ORDER: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    #[test]
    fn non_canonical_s_is_refused() {
        let k = SecretKey::from_seed([3; 32]);
        let mut sig = k.sign(b"m");
        // s + l is the same scalar mod l but not canonical.
        let l: [u8; 32] = GROUP_ORDER;
        let mut carry = 0u16;
        for (i, li) in l.iter().enumerate() {
            let v = sig.sig.0[32 + i] as u16 + *li as u16 + carry;
            sig.sig.0[32 + i] = v as u8;
            carry = v >> 8;
        }
        assert!(matches!(
            verify_one(b"m", &sig),
            Err(SignatureError::NonCanonical(_))
        ));
        let items = [SigItem {
            msg: b"m",
            sig: &sig,
        }];
        assert!(matches!(
            verify_many(&items)[0],
            Err(SignatureError::NonCanonical(_))
        ));
    }
}
