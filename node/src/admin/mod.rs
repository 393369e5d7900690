//! The authority's signing tool, `dcloud-admin`, as a library.
//!
//! The authority is offline: it never runs a server and its private keys never
//! leave the admin's machine. Everything here works on files:
//!
//! * [`keys`]: key files and public-key arguments;
//! * [`files`]: bundle and trust-chain files (written atomically);
//! * [`trust`]: the trust root: `init` (version 1) and `rotate` (version N+1,
//!   signed by a threshold of the old keys and of the new, grandfathering the
//!   policy heads of a verified snapshot), cosigning either;
//! * [`base`]: the base snapshot an edit is made against (a bundle exported by
//!   a node, verified here before anything is signed on top of it);
//! * [`edit`]: policy edits (`set`, `unset`, `enrol`, `revoke`) signed into a
//!   bundle, and `cosign` for thresholds above one;
//! * [`sites`]: batch enrolment, a TOML file of sites checked row by row and
//!   enrolled in one signed change;
//! * [`inspect`]: `verify`: who signed a bundle, whether it meets the threshold,
//!   and the effective config of every affected site before and after;
//! * [`secret`]: `secret set` seals a value to its target sites; the drift
//!   between the sites a secret is sealed to and its targets now (enrolled
//!   since, revoked since), with the command that re-seals;
//! * [`client`] and [`publish`]: the only network step, handing a signed bundle
//!   to a node's local API and watching the rollout.
//!
//! Each operation has its own error type naming what was wrong and what to do.

pub mod base;
pub mod client;
pub mod edit;
pub mod files;
pub mod inspect;
pub mod keys;
pub mod publish;
pub mod secret;
pub mod sites;
pub mod timestamp;
pub mod trust;
