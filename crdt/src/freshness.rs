//! Signed freshness: TUF's timestamp role for policy.
//!
//! A node whose peers keep talking but withhold new policy (a freeze attack)
//! cannot tell that it is behind from the policy alone: every change it holds
//! is validly signed. A [`FreshnessStatement`] closes that gap. An online
//! machine holding a *timestamp key* (listed in [`TrustRoot::timestamp_keys`])
//! signs, every few minutes, "under trust root v`root_version` the newest
//! policy heads are `policy_heads`; issued at `issued_ms`, valid until
//! `expires_ms`". Nodes gossip the newest valid statement; a node whose newest
//! statement has expired, or that lacks heads a statement names for too long,
//! reports itself not fresh.
//!
//! A timestamp key can sign only freshness statements. Its signatures cover a
//! message that starts with [`FRESHNESS_CONTEXT`], which no policy change
//! signature does, and the replica counts only [`TrustRoot::keys`] (never the
//! timestamp keys) towards a policy change's threshold; the trust root refuses
//! a key listed in both sets.
//!
//! [`FreshnessStatement::verify`] checks signatures against the root the
//! statement names; expiry is a separate check ([`FreshnessStatement::expired`])
//! because it needs a wall clock, which this crate does not read.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, DecodeError, Format};
use crate::keys::{KeySignature, PublicKey, SecretKey};
use crate::root::{TrustChain, TrustRoot};
use crate::verify::{SignatureError, distinct_signers, verify_all};

/// Domain separation for freshness signatures.
pub const FRESHNESS_CONTEXT: &[u8] = b"dcloud/freshness/v1\0";

/// Version byte of the encoded [`SignedFreshness`].
pub const FRESHNESS_FORMAT_VERSION: u8 = 1;

/// Largest encoded statement accepted.
pub const FRESHNESS_SIZE_MAX_BYTES: usize = 64 << 10;

/// The envelope of a statement: a version byte, no magic.
const FRESHNESS_FORMAT: Format = Format {
    what: "freshness statement",
    magic: b"",
    version: FRESHNESS_FORMAT_VERSION,
};

/// Most policy heads one statement may name.
pub const FRESHNESS_HEADS_MAX: usize = 256;

/// Most signatures on one statement.
pub const FRESHNESS_SIGNATURES_MAX: usize = 64;

/// The content of a freshness statement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreshnessStatement {
    /// The trust-root version whose timestamp keys sign it (the newest root
    /// the signer knew).
    pub root_version: u64,
    /// The policy heads (automerge change hashes) the signer saw as newest.
    pub policy_heads: Vec<[u8; 32]>,
    /// When it was made, unix milliseconds.
    pub issued_ms: u64,
    /// When it stops vouching for freshness, unix milliseconds.
    pub expires_ms: u64,
}

/// A freshness statement with its signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedFreshness {
    /// The statement.
    pub statement: FreshnessStatement,
    /// Signatures over [`FreshnessStatement::signing_message`].
    pub sigs: Vec<KeySignature>,
}

/// Why a freshness statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreshnessError {
    /// The statement names a root version the chain does not hold.
    #[error("freshness statement names trust root v{version}, which this node does not hold")]
    UnknownRoot {
        /// The version named.
        version: u64,
    },
    /// The named root lists no timestamp keys.
    #[error(
        "trust root v{version} configures no timestamp keys; freshness statements are not used"
    )]
    NoTimestampKeys {
        /// The version named.
        version: u64,
    },
    /// Not enough distinct valid signatures from the root's timestamp keys.
    #[error(
        "freshness statement has {got} valid signatures from trust root v{version}'s timestamp keys, needs {needed}"
    )]
    Threshold {
        /// The version named.
        version: u64,
        /// Distinct timestamp-key signatures found.
        got: usize,
        /// The root's timestamp threshold.
        needed: usize,
    },
    /// A signature is invalid.
    #[error("freshness statement: {0}")]
    Signature(#[from] SignatureError),
    /// Over a count bound, or expiring before it was issued.
    #[error("freshness statement is malformed: {0}")]
    Malformed(String),
}

impl FreshnessStatement {
    /// The bytes signatures cover: the context, then postcard.
    pub fn signing_message(&self) -> Vec<u8> {
        let mut m = FRESHNESS_CONTEXT.to_vec();
        postcard::to_io(self, &mut m).expect("writing to a Vec cannot fail");
        m
    }

    /// The ordering by which a node keeps "the newest" statement.
    pub fn order_key(&self) -> (u64, u64) {
        (self.issued_ms, self.root_version)
    }
}

impl SignedFreshness {
    /// Sign a statement with several timestamp keys.
    pub fn sign(statement: FreshnessStatement, keys: &[&SecretKey]) -> Self {
        let msg = statement.signing_message();
        SignedFreshness {
            sigs: keys.iter().map(|k| k.sign(&msg)).collect(),
            statement,
        }
    }

    /// Whether it has expired at `now_ms` (unix ms), allowing `skew_ms` of
    /// clock disagreement between signer and node.
    pub fn expired(&self, now_ms: u64, skew_ms: u64) -> bool {
        now_ms > self.statement.expires_ms.saturating_add(skew_ms)
    }

    /// Check that a threshold of distinct timestamp keys of the root the
    /// statement names signed it. Every signature must verify (a tampered
    /// statement is refused, not counted down). Expiry is not checked here.
    pub fn verify(&self, chain: &TrustChain) -> Result<(), FreshnessError> {
        let s = &self.statement;
        if s.policy_heads.len() > FRESHNESS_HEADS_MAX {
            return Err(FreshnessError::Malformed(format!(
                "more than {FRESHNESS_HEADS_MAX} policy heads"
            )));
        }
        if self.sigs.len() > FRESHNESS_SIGNATURES_MAX {
            return Err(FreshnessError::Malformed(format!(
                "more than {FRESHNESS_SIGNATURES_MAX} signatures"
            )));
        }
        if s.expires_ms < s.issued_ms {
            return Err(FreshnessError::Malformed(
                "expires before it was issued".into(),
            ));
        }
        let root: &TrustRoot = chain
            .get(s.root_version)
            .ok_or(FreshnessError::UnknownRoot {
                version: s.root_version,
            })?;
        if root.timestamp_keys.is_empty() || root.timestamp_threshold == 0 {
            return Err(FreshnessError::NoTimestampKeys {
                version: root.version,
            });
        }
        verify_all(&s.signing_message(), &self.sigs)?;
        let got = distinct_signers(self.sigs.iter().map(|s| &s.key), &root.timestamp_keys);
        let needed = root.timestamp_threshold as usize;
        if got < needed {
            return Err(FreshnessError::Threshold {
                version: root.version,
                got,
                needed,
            });
        }
        Ok(())
    }

    /// Encode: one version byte, then the fields (postcard).
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(&FRESHNESS_FORMAT, self)
    }

    /// Decode, refusing input over [`FRESHNESS_SIZE_MAX_BYTES`], another
    /// version, and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        envelope::decode(&FRESHNESS_FORMAT, bytes, FRESHNESS_SIZE_MAX_BYTES)
    }

    /// The signers' keys (for logs).
    pub fn signers(&self) -> Vec<PublicKey> {
        self.sigs.iter().map(|s| s.key).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{DocId, Limits};
    use crate::policy::{Edit, Level, PolicyEditor};
    use crate::replica::{Outcome, Rejection, Replica};
    use crate::root::SignedTrustRoot;

    fn key(i: u8) -> SecretKey {
        SecretKey::from_seed([i; 32])
    }

    /// Authorities 1, 2 (threshold 1); timestamp keys 10, 11 with `ts_threshold`.
    fn chain(ts_threshold: u32) -> TrustChain {
        let root = TrustRoot {
            version: 1,
            threshold: 1,
            keys: vec![key(1).public(), key(2).public()],
            timestamp_keys: vec![key(10).public(), key(11).public()],
            timestamp_threshold: ts_threshold,
            ..Default::default()
        };
        TrustChain::from_roots(vec![SignedTrustRoot::sign(root, &[&key(1)])]).unwrap()
    }

    fn statement() -> FreshnessStatement {
        FreshnessStatement {
            root_version: 1,
            policy_heads: vec![[7; 32]],
            issued_ms: 1_000,
            expires_ms: 61_000,
        }
    }

    #[test]
    fn a_threshold_of_timestamp_keys_verifies_and_round_trips() {
        let c = chain(2);
        let s = SignedFreshness::sign(statement(), &[&key(10), &key(11)]);
        s.verify(&c).unwrap();
        let bytes = s.encode();
        assert_eq!(SignedFreshness::decode(&bytes).unwrap(), s);
        assert!(!s.expired(61_000, 0));
        assert!(s.expired(61_001, 0));
        assert!(!s.expired(100_000, 60_000));
    }

    #[test]
    fn one_key_signing_twice_does_not_meet_a_threshold_of_two() {
        let c = chain(2);
        let mut s = SignedFreshness::sign(statement(), &[&key(10)]);
        s.sigs.push(s.sigs[0]);
        assert_eq!(
            s.verify(&c),
            Err(FreshnessError::Threshold {
                version: 1,
                got: 1,
                needed: 2
            })
        );
    }

    #[test]
    fn a_tampered_statement_is_refused() {
        let c = chain(1);
        let good = SignedFreshness::sign(statement(), &[&key(10)]);
        for tamper in [
            |s: &mut FreshnessStatement| s.expires_ms += 1,
            |s: &mut FreshnessStatement| s.issued_ms += 1,
            |s: &mut FreshnessStatement| s.policy_heads[0][0] ^= 1,
        ] {
            let mut bad = good.clone();
            tamper(&mut bad.statement);
            assert!(
                matches!(bad.verify(&c), Err(FreshnessError::Signature(_))),
                "{:?}",
                bad.verify(&c)
            );
        }
    }

    #[test]
    fn authority_and_outsider_keys_do_not_count() {
        let c = chain(1);
        for k in [key(1), key(99)] {
            let s = SignedFreshness::sign(statement(), &[&k]);
            assert!(
                matches!(s.verify(&c), Err(FreshnessError::Threshold { got: 0, .. })),
                "{:?}",
                s.verify(&c)
            );
        }
    }

    #[test]
    fn unknown_root_and_no_timestamp_keys_are_refused() {
        let c = chain(1);
        let mut st = statement();
        st.root_version = 2;
        let s = SignedFreshness::sign(st, &[&key(10)]);
        assert_eq!(
            s.verify(&c),
            Err(FreshnessError::UnknownRoot { version: 2 })
        );
        let root = TrustRoot {
            version: 1,
            threshold: 1,
            keys: vec![key(1).public()],
            ..Default::default()
        };
        let plain = TrustChain::from_roots(vec![SignedTrustRoot::sign(root, &[&key(1)])]).unwrap();
        let s = SignedFreshness::sign(statement(), &[&key(10)]);
        assert_eq!(
            s.verify(&plain),
            Err(FreshnessError::NoTimestampKeys { version: 1 })
        );
    }

    #[test]
    fn decode_refuses_bad_version_trailing_bytes_and_oversize() {
        let s = SignedFreshness::sign(statement(), &[&key(10)]);
        let mut bytes = s.encode();
        assert_eq!(SignedFreshness::decode(&[]), Err(DecodeError::Empty));
        let mut v = bytes.clone();
        v[0] = 2;
        assert_eq!(
            SignedFreshness::decode(&v),
            Err(DecodeError::UnknownVersion {
                what: "freshness statement",
                found: 2,
                expected: FRESHNESS_FORMAT_VERSION
            })
        );
        bytes.push(0);
        assert!(matches!(
            SignedFreshness::decode(&bytes),
            Err(DecodeError::Malformed(_))
        ));
        let big = vec![FRESHNESS_FORMAT_VERSION; FRESHNESS_SIZE_MAX_BYTES + 1];
        assert!(matches!(
            SignedFreshness::decode(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_freshness_signature_is_not_a_policy_signature() {
        // The same key signing the same 32 bytes in the two contexts gives
        // different messages: a statement's signature can never be replayed as
        // a change's.
        let st = statement();
        let h = automerge::ChangeHash(st.policy_heads[0]);
        let change_msg = crate::change::signing_message(&DocId::Policy, 1, &h);
        assert_ne!(st.signing_message(), change_msg);
        assert!(st.signing_message().starts_with(FRESHNESS_CONTEXT));
    }

    #[test]
    fn a_timestamp_key_trying_to_sign_policy_is_refused() {
        let mut r = Replica::new(chain(1), Limits::default());
        let mut ed = PolicyEditor::new(&[]).unwrap();
        ed.push(Edit::Set(Level::Fleet, "a".into(), serde_json::json!(1)))
            .unwrap();
        let sc = ed.finish(&key(10), 1).unwrap();
        let rep = r.ingest(vec![sc]);
        assert!(
            matches!(
                rep[0].outcome,
                Outcome::Rejected(Rejection::Threshold { got: 0, .. })
                    | Outcome::Rejected(Rejection::ActorNotAuthor { .. })
            ),
            "{:?}",
            rep[0].outcome
        );
        assert!(r.policy_heads().is_empty());
    }
}
