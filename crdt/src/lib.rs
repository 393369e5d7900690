//! Signed, authorised CRDT documents for dcloud.
//!
//! Everything a node decides about a byte string from a stranger lives here: keys
//! and ids ([`keys`]), signature verification ([`verify`]), the signed change
//! ([`change`]), the one codec that frames every signed object ([`envelope`]),
//! the trust-root chain ([`root`]), signed freshness statements
//! ([`freshness`]), the policy and status schemas ([`policy`], [`status`]),
//! sealed secrets ([`secret`]) and the replica that verifies, authorises and
//! applies batches of changes ([`replica`]). No I/O beyond key files, no async
//! runtime, no networking.

pub mod change;
pub mod chunk;
pub mod envelope;
pub mod freshness;
pub mod hostile;
pub mod keys;
pub mod policy;
pub mod replica;
pub mod root;
pub mod rumour;
pub mod secret;
pub mod status;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod verify;

pub use automerge::ChangeHash;
pub use change::{Bundle, DocId, Limits, OwnedKind, RegionId, SignedChange};
pub use envelope::DecodeError;
pub use freshness::{FreshnessError, FreshnessStatement, SignedFreshness};
pub use keys::{KeySignature, NodeId, PublicKey, SecretKey};
pub use policy::{Edit, Level, Member, Policy, PolicyEditor, RegionEditor, RegionalPolicy};
pub use replica::{Outcome, Rejection, RejectionKind, Replica, Report};
pub use root::{RootError, SignedTrustRoot, TrustChain, TrustRoot};
pub use rumour::{Claim, Rumour, RumourError, SignedRumour};
pub use status::{NodeStatus, StatusWriter};
