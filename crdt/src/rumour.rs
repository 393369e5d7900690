//! Signed membership rumours: what SWIM gossips, signed so that a node can
//! only speak for itself ("I am alive at incarnation i") or for what it saw
//! ("I suspect X at incarnation i").
//!
//! A rumour is small (about 100 bytes for `Alive`, 135 for `Suspect`) and
//! self-contained: the signer is the subject for `Alive` and the named
//! reporter for `Suspect`, and the signature covers a context string and the
//! postcard encoding of the rumour. Only the subject can lift a suspicion
//! about itself (a higher-incarnation `Alive`), so a malicious member can
//! make others suspect a live node for a moment but never keep a dead node
//! alive, nor speak in another member's name.

use serde::{Deserialize, Serialize};

use crate::keys::{KeySignature, NodeId, SecretKey, SignatureBytes};
use crate::verify::{SignatureError, verify_one};

/// Domain separation for rumour signatures.
pub const RUMOUR_CONTEXT: &[u8] = b"dcloud/membership-rumour/v1\0";

/// What a rumour says about its subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Claim {
    /// The subject says it is alive (signed by the subject).
    Alive,
    /// `reporter` could not reach the subject (signed by the reporter).
    Suspect {
        /// Who suspects.
        reporter: NodeId,
    },
}

/// A membership rumour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rumour {
    /// The member it is about.
    pub subject: NodeId,
    /// The subject's incarnation it is about: a subject refutes a suspicion
    /// with `Alive` at a higher one.
    pub incarnation: u64,
    /// Alive or suspect.
    pub claim: Claim,
}

/// A rumour and its signer's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedRumour {
    /// The rumour.
    pub rumour: Rumour,
    /// By [`Rumour::signer`], over [`Rumour::signing_message`].
    pub sig: SignatureBytes,
}

/// Why a rumour is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RumourError {
    /// A node cannot suspect itself.
    #[error("membership rumour: {0} suspects itself")]
    SelfSuspicion(String),
    /// The signature does not verify.
    #[error("membership rumour: {0}")]
    Signature(#[from] SignatureError),
}

impl Rumour {
    /// Who must sign it: the subject for `Alive`, the reporter for `Suspect`.
    pub fn signer(&self) -> NodeId {
        match self.claim {
            Claim::Alive => self.subject,
            Claim::Suspect { reporter } => reporter,
        }
    }

    /// The bytes the signature covers: the context, then postcard.
    pub fn signing_message(&self) -> Vec<u8> {
        let mut m = RUMOUR_CONTEXT.to_vec();
        postcard::to_io(self, &mut m).expect("writing to a Vec cannot fail");
        m
    }

    /// SHA-256 of [`Rumour::signing_message`]: names what the rumour says
    /// (not its signature), for announcements of rumours held.
    pub fn id(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(self.signing_message()).into()
    }
}

impl SignedRumour {
    /// Sign `rumour` with `key`, which must be the rumour's signer's.
    pub fn sign(rumour: Rumour, key: &SecretKey) -> Self {
        assert_eq!(
            key.public(),
            rumour.signer(),
            "a rumour is signed by its subject (alive) or its reporter (suspect)"
        );
        SignedRumour {
            sig: key.sign(&rumour.signing_message()).sig,
            rumour,
        }
    }

    /// Check the signature (strictly) and that nobody suspects itself.
    pub fn verify(&self) -> Result<(), RumourError> {
        if let Claim::Suspect { reporter } = self.rumour.claim
            && reporter == self.rumour.subject
        {
            return Err(RumourError::SelfSuspicion(reporter.short()));
        }
        let sig = KeySignature {
            key: self.rumour.signer(),
            sig: self.sig,
        };
        verify_one(&self.rumour.signing_message(), &sig)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_seed([b; 32])
    }

    #[test]
    fn alive_and_suspect_verify_and_tampering_is_refused() {
        let a = key(1);
        let b = key(2);
        let alive = SignedRumour::sign(
            Rumour {
                subject: a.public(),
                incarnation: 7,
                claim: Claim::Alive,
            },
            &a,
        );
        alive.verify().unwrap();
        let suspect = SignedRumour::sign(
            Rumour {
                subject: a.public(),
                incarnation: 7,
                claim: Claim::Suspect {
                    reporter: b.public(),
                },
            },
            &b,
        );
        suspect.verify().unwrap();
        // A higher incarnation under the old signature: refused.
        let mut forged = alive;
        forged.rumour.incarnation = 8;
        assert!(matches!(forged.verify(), Err(RumourError::Signature(_))));
        // b's suspicion re-labelled as a's own Alive: refused.
        let mut relabelled = suspect;
        relabelled.rumour.claim = Claim::Alive;
        assert!(matches!(
            relabelled.verify(),
            Err(RumourError::Signature(_))
        ));
        // A self-suspicion is refused by name even when signed.
        let own = Rumour {
            subject: a.public(),
            incarnation: 1,
            claim: Claim::Suspect {
                reporter: a.public(),
            },
        };
        let signed = SignedRumour::sign(own, &a);
        assert!(matches!(
            signed.verify(),
            Err(RumourError::SelfSuspicion(_))
        ));
    }

    #[test]
    #[should_panic(expected = "signed by its subject")]
    fn signing_in_another_name_panics() {
        let a = key(1);
        let b = key(2);
        SignedRumour::sign(
            Rumour {
                subject: a.public(),
                incarnation: 1,
                claim: Claim::Alive,
            },
            &b,
        );
    }

    #[test]
    fn sizes_are_small() {
        let a = key(1);
        let b = key(2);
        let alive = SignedRumour::sign(
            Rumour {
                subject: a.public(),
                incarnation: 5 << 32,
                claim: Claim::Alive,
            },
            &a,
        );
        let suspect = SignedRumour::sign(
            Rumour {
                subject: a.public(),
                incarnation: 5 << 32,
                claim: Claim::Suspect {
                    reporter: b.public(),
                },
            },
            &b,
        );
        let la = postcard::to_allocvec(&alive).unwrap().len();
        let ls = postcard::to_allocvec(&suspect).unwrap().len();
        assert!(la <= 110, "alive rumour is {la} bytes");
        assert!(ls <= 142, "suspect rumour is {ls} bytes");
    }
}
