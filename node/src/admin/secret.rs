//! Sealed secrets on the admin's side: `secret set` seals a value to every
//! target site of a base (see [`dcloud_crdt::secret`]), and the drift between
//! the sites a secret is sealed to and the sites it targets now (a site
//! enrolled since, a site revoked since) is named by `verify`, `revoke` and
//! `secret list`, with the command that re-seals.
//!
//! The admin tool cannot read a sealed value back: only its target sites can.
//! Re-sealing is `secret set` again with the value from the admin's own
//! source (a vault, a file kept offline). Whether to rotate the value after a
//! site that could read it was revoked is the admin's call: the revoked site
//! may have kept it.

use std::collections::BTreeMap;
use std::fmt;

use dcloud_crdt::secret::{SealedSecret, SecretError, seal, targets};
use dcloud_crdt::{Edit, NodeId, Policy};

use crate::admin::base::Base;
use crate::admin::edit::{EditArgError, parse_level};

/// Why `secret set` refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretArgError {
    /// A level argument.
    #[error(transparent)]
    Level(#[from] EditArgError),
    /// A selector that is not KEY=VALUE.
    #[error("selector {0:?} is not KEY=VALUE")]
    Selector(String),
    /// Sealing refused.
    #[error(transparent)]
    Seal(#[from] SecretError),
}

/// A `--label KEY=VALUE` selector list.
pub fn parse_selector(args: &[String]) -> Result<BTreeMap<String, String>, SecretArgError> {
    let mut out = BTreeMap::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| SecretArgError::Selector(a.clone()))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// What `secret set` sealed.
#[derive(Debug)]
pub struct Sealed {
    /// The edit to sign.
    pub edit: Edit,
    /// The sealed entry.
    pub sealed: SealedSecret,
    /// Its targets, with names.
    pub targets: Vec<(NodeId, String)>,
}

/// Seal `value` at `level_arg` `path` (with `selector`) to every target site
/// of `base`.
pub fn seal_edit(
    base: &Base,
    level_arg: &str,
    path: &str,
    selector: &BTreeMap<String, String>,
    value: &[u8],
) -> Result<Sealed, SecretArgError> {
    let policy = base.policy();
    let level = parse_level(level_arg, policy)?;
    let to = targets(policy, &level, selector);
    let sealed = seal(&level, path, selector, value, &to)?;
    let targets = to.iter().map(|n| (*n, name_of(policy, n))).collect();
    Ok(Sealed {
        edit: Edit::SealSecret(sealed.clone()),
        sealed,
        targets,
    })
}

fn name_of(policy: &Policy, n: &NodeId) -> String {
    policy
        .members
        .get(n)
        .map_or_else(|| n.short(), |m| format!("{} ({})", m.name, n.short()))
}

/// How the sites a secret is sealed to differ from the sites it targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// The secret's level (`fleet`, `region:R`, `site:ID`).
    pub level: String,
    /// Its path.
    pub path: String,
    /// Its selector, as `--label` arguments.
    pub selector: Vec<String>,
    /// Target sites it is not sealed to (enrolled or relabelled since): they
    /// cannot read it.
    pub missing: Vec<(NodeId, String)>,
    /// Sites it is sealed to that are revoked: they could read it.
    pub revoked: Vec<(NodeId, String)>,
    /// Sites it is sealed to that are no longer targets for another reason
    /// (moved region, labels changed, unenrolled): they could read it.
    pub departed: Vec<(NodeId, String)>,
}

impl Drift {
    /// The command that re-seals it to its current targets.
    pub fn reseal_command(&self) -> String {
        let labels: String = self
            .selector
            .iter()
            .map(|l| format!(" --label {l}"))
            .collect();
        format!(
            "dcloud-admin secret set {} {}{labels} --from-file FILE --from URL --key KEY --out reseal.bundle",
            self.level, self.path
        )
    }
}

/// The drift of every secret of `policy` whose targets changed.
pub fn drift(policy: &Policy) -> Vec<Drift> {
    let mut out = Vec::new();
    for s in policy.secrets.values() {
        let Ok(level) = s.level() else { continue };
        let now = targets(policy, &level, &s.selector);
        let sealed = s.sealed_to();
        let missing: Vec<(NodeId, String)> = now
            .iter()
            .filter(|n| !sealed.contains(n))
            .map(|n| (*n, name_of(policy, n)))
            .collect();
        let mut revoked = Vec::new();
        let mut departed = Vec::new();
        for n in sealed.iter().filter(|n| !now.contains(n)) {
            if policy.revoked.contains_key(n) {
                revoked.push((*n, name_of(policy, n)));
            } else {
                departed.push((*n, name_of(policy, n)));
            }
        }
        if missing.is_empty() && revoked.is_empty() && departed.is_empty() {
            continue;
        }
        out.push(Drift {
            level: s.level.clone(),
            path: s.path.clone(),
            selector: s.selector.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            missing,
            revoked,
            departed,
        });
    }
    out
}

/// The secrets `node` could read: those sealed to it.
pub fn readable_by<'a>(policy: &'a Policy, node: &NodeId) -> Vec<&'a SealedSecret> {
    let me = node.to_hex();
    policy
        .secrets
        .values()
        .filter(|s| s.to.contains_key(&me))
        .collect()
}

fn names(list: &[(NodeId, String)]) -> String {
    list.iter()
        .map(|(_, n)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "secret {} {}:", self.level, self.path)?;
        if !self.missing.is_empty() {
            write!(
                f,
                "\n    cannot be read by {} (a target now, not when it was sealed)",
                names(&self.missing)
            )?;
        }
        if !self.revoked.is_empty() {
            write!(
                f,
                "\n    was readable by revoked {}: re-seal it without them, and rotate the value if they may have kept it (your call)",
                names(&self.revoked)
            )?;
        }
        if !self.departed.is_empty() {
            write!(
                f,
                "\n    is still readable by {} (no longer targets)",
                names(&self.departed)
            )?;
        }
        write!(f, "\n    re-seal: {}", self.reseal_command())
    }
}

/// One line per secret of `policy`: where, to whom, digest.
pub fn list(policy: &Policy) -> Vec<String> {
    policy
        .secrets
        .values()
        .map(|s| {
            let sel = if s.selector.is_empty() {
                String::new()
            } else {
                let l: Vec<String> = s.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(" [{}]", l.join(","))
            };
            let to: Vec<String> = s.sealed_to().iter().map(|n| name_of(policy, n)).collect();
            format!(
                "secret {} {}{sel}: sealed to {} site(s) [{}], digest {}",
                s.level,
                s.path,
                to.len(),
                to.join(", "),
                s.digest()
            )
        })
        .collect()
}
