//! `publish`: hand a signed bundle to a node and watch it roll out.
//!
//! Before anything is sent, the bundle is checked against the node's own
//! snapshot: it must verify and meet its threshold there, and it must have been
//! made against a base that is not older than the node's policy (every head the
//! node holds must be in the bundle's base, or be one of its changes). An admin
//! who signed against a stale base has not seen the policy they are changing;
//! the tool refuses, and `--allow-stale-base` publishes anyway (the edits merge
//! as concurrent CRDT edits). Then the bundle is posted, and with `--wait` the
//! node's rollout view is polled until every enrolled site reports the new
//! policy applied, or the deadline passes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use dcloud_crdt::{Bundle, ChangeHash, DocId};

use crate::admin::base::{Base, BaseError};
use crate::admin::client::{Client, ClientError, PostReply, Rollout};
use crate::admin::inspect::{Inspection, inspect, short_hash};

/// How often the rollout is polled.
pub const ROLLOUT_POLL_INTERVAL_MS: u64 = 200;

/// Errors publishing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The node could not be reached or answered an error.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The node's own snapshot does not verify.
    #[error("the node's policy snapshot does not verify: {0}")]
    NodeSnapshot(#[from] BaseError),
    /// The bundle would be refused; nothing was sent.
    #[error("the bundle does not verify against the node's policy; nothing was sent:\n  {}", .0.join("\n  "))]
    Refused(Vec<String>),
    /// The bundle was made against a base older than the node's policy.
    #[error(
        "the bundle was signed against a base older than the node's policy: the node holds {} change(s) the base did not ({}); nothing was sent. Export a fresh base (`--from {url}`), re-sign, or pass --allow-stale-base to merge it as a concurrent edit",
        .missing.len(), .missing.join(", ")
    )]
    StaleBase {
        /// Node heads the base did not hold (short hashes).
        missing: Vec<String>,
        /// The node's URL.
        url: String,
    },
    /// The node refused (part of) the bundle.
    #[error("the node refused the bundle: {0}")]
    Rejected(String),
    /// The rollout did not complete before the deadline.
    #[error(
        "rollout incomplete after {waited_ms} ms: {applied} of {enrolled} sites applied{}{}",
        if .failed.is_empty() { String::new() } else { format!("; failed: {}", .failed.join(", ")) },
        if .pending.is_empty() { String::new() } else { format!("; pending: {}", .pending.join(", ")) }
    )]
    Timeout {
        /// How long it waited.
        waited_ms: u64,
        /// Sites applied.
        applied: usize,
        /// Sites enrolled.
        enrolled: usize,
        /// Sites that failed, with the error.
        failed: Vec<String>,
        /// Sites not yet applied.
        pending: Vec<String>,
    },
}

/// A bundle checked against the node, ready to post.
#[derive(Debug)]
pub struct Checked {
    /// What the bundle does, against the node's policy.
    pub inspection: Inspection,
    /// The policy version to watch: the bundle's changes that no other change
    /// of the bundle depends on (empty for a bundle of trust roots only).
    pub heads: Vec<ChangeHash>,
}

fn deps_of(bytes: &[u8]) -> Option<(ChangeHash, Vec<ChangeHash>)> {
    let c = automerge::Change::from_bytes(bytes.to_vec()).ok()?;
    Some((c.hash(), c.deps().to_vec()))
}

/// The changes of `bundle` no other change of it depends on, and the base
/// heads it was made against (its dependencies outside the bundle).
pub fn bundle_heads(bundle: &Bundle) -> (Vec<ChangeHash>, Vec<ChangeHash>) {
    let parsed: Vec<(ChangeHash, Vec<ChangeHash>)> = bundle
        .changes
        .iter()
        .filter(|c| c.doc == DocId::Policy)
        .filter_map(|c| deps_of(&c.change))
        .collect();
    let own: HashSet<ChangeHash> = parsed.iter().map(|(h, _)| *h).collect();
    let depended: HashSet<ChangeHash> =
        parsed.iter().flat_map(|(_, d)| d.iter().copied()).collect();
    let mut heads: Vec<ChangeHash> = own
        .iter()
        .filter(|h| !depended.contains(h))
        .copied()
        .collect();
    heads.sort();
    let mut base: Vec<ChangeHash> = depended.into_iter().filter(|h| !own.contains(h)).collect();
    base.sort();
    (heads, base)
}

/// Heads of `node` that are neither in the bundle nor ancestors-or-equal of the
/// bundle's base heads: what the admin had not seen.
pub fn stale_heads(node: &Base, bundle: &Bundle) -> Vec<ChangeHash> {
    let (_, base_heads) = bundle_heads(bundle);
    let own: HashSet<ChangeHash> = bundle
        .changes
        .iter()
        .filter_map(|c| deps_of(&c.change).map(|(h, _)| h))
        .collect();
    let graph: HashMap<ChangeHash, Vec<ChangeHash>> = node
        .changes()
        .iter()
        .filter_map(|c| deps_of(&c.change))
        .collect();
    let mut seen: HashSet<ChangeHash> = HashSet::new();
    let mut stack = base_heads;
    while let Some(h) = stack.pop() {
        if seen.insert(h)
            && let Some(d) = graph.get(&h)
        {
            stack.extend(d.iter().copied());
        }
    }
    node.heads()
        .into_iter()
        .filter(|h| !own.contains(h) && !seen.contains(h))
        .collect()
}

/// Check `bundle` against the node's current policy. Sends nothing.
pub async fn check(
    client: &Client,
    bundle: &Bundle,
    allow_stale_base: bool,
) -> Result<Checked, PublishError> {
    let snapshot = client.snapshot().await?;
    let node = Base::from_bundles(std::slice::from_ref(&snapshot))?;
    let inspection = inspect(bundle, Some(&node), None)
        .map_err(|e| PublishError::Refused(vec![e.to_string()]))?;
    if !inspection.ok() {
        return Err(PublishError::Refused(inspection.problems.clone()));
    }
    // A bundle of trust roots only was made against no base: nothing of the
    // node's policy can be stale for it (whether a rotation keeps the node's
    // policy was checked above, by `inspect`).
    let has_policy = bundle.changes.iter().any(|c| c.doc == DocId::Policy);
    let stale = if has_policy {
        stale_heads(&node, bundle)
    } else {
        Vec::new()
    };
    if !stale.is_empty() && !allow_stale_base {
        return Err(PublishError::StaleBase {
            missing: stale.iter().map(short_hash).collect(),
            url: client.url().to_string(),
        });
    }
    let (heads, _) = bundle_heads(bundle);
    Ok(Checked { inspection, heads })
}

/// Post the bundle; an answer with any refusal is an error.
pub async fn post(client: &Client, bundle: &Bundle) -> Result<PostReply, PublishError> {
    let reply = client.post_bundle(bundle).await?;
    if !reply.accepted || !reply.root_errors.is_empty() {
        let mut why = reply.error.clone().unwrap_or_default();
        if why.is_empty() {
            why = reply
                .root_errors
                .iter()
                .cloned()
                .chain(reply.reports.iter().filter_map(|r| r.reason.clone()))
                .collect::<Vec<_>>()
                .join("; ");
        }
        return Err(PublishError::Rejected(why));
    }
    tracing::info!(changes = reply.reports.len(), "bundle accepted");
    Ok(reply)
}

/// The trust-root version the node holds and its policy heads, from its snapshot.
pub async fn node_state(client: &Client) -> Result<(u64, Vec<ChangeHash>), PublishError> {
    let snapshot = client.snapshot().await?;
    let node = Base::from_bundles(std::slice::from_ref(&snapshot))?;
    Ok((node.chain().current().version, node.heads()))
}

fn site_name(id: &str, name: &str) -> String {
    if name.is_empty() {
        id.chars().take(8).collect()
    } else {
        name.to_string()
    }
}

/// Poll the rollout of `heads` until it completes or `timeout` passes, calling
/// `progress` on every answer.
pub async fn wait(
    client: &Client,
    heads: &[ChangeHash],
    timeout: Duration,
    mut progress: impl FnMut(&Rollout),
) -> Result<Rollout, PublishError> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let r = client.rollout(heads).await?;
        progress(&r);
        if r.complete && r.known {
            return Ok(r);
        }
        if Instant::now() >= deadline {
            return Err(PublishError::Timeout {
                waited_ms: start.elapsed().as_millis() as u64,
                applied: r.applied,
                enrolled: r.enrolled,
                failed: r
                    .failed
                    .iter()
                    .map(|s| {
                        format!(
                            "{} ({})",
                            site_name(&s.id, &s.name),
                            s.error.as_deref().unwrap_or("error")
                        )
                    })
                    .collect(),
                pending: r
                    .pending
                    .iter()
                    .map(|s| {
                        let n = site_name(&s.id, &s.name);
                        if s.down { format!("{n} (down)") } else { n }
                    })
                    .collect(),
            });
        }
        tokio::time::sleep(Duration::from_millis(ROLLOUT_POLL_INTERVAL_MS)).await;
    }
}

/// One line describing a rollout answer.
pub fn describe(r: &Rollout) -> String {
    let mut s = format!("{}/{} sites applied", r.applied, r.enrolled);
    if !r.failed.is_empty() {
        let f: Vec<String> = r
            .failed
            .iter()
            .map(|s| {
                format!(
                    "{} ({})",
                    site_name(&s.id, &s.name),
                    s.error.as_deref().unwrap_or("error")
                )
            })
            .collect();
        s.push_str(&format!("; failed: {}", f.join(", ")));
    }
    if !r.pending.is_empty() && r.pending.len() <= 8 {
        let p: Vec<String> = r
            .pending
            .iter()
            .map(|s| site_name(&s.id, &s.name))
            .collect();
        s.push_str(&format!("; waiting for: {}", p.join(", ")));
    } else if !r.pending.is_empty() {
        s.push_str(&format!("; waiting for {} sites", r.pending.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use dcloud_crdt::{Edit, Level, PolicyEditor, SecretKey, SignedTrustRoot, TrustRoot};
    use serde_json::json;

    use super::*;

    fn set(
        base: &[dcloud_crdt::SignedChange],
        key: &SecretKey,
        v: i64,
    ) -> dcloud_crdt::SignedChange {
        let mut ed = PolicyEditor::new(base).unwrap();
        ed.push(Edit::Set(Level::Fleet, "x".into(), json!(v)))
            .unwrap();
        ed.finish(key, 1).unwrap()
    }

    /// A base of `n` linear policy changes signed by `key` (threshold 1).
    fn history(
        key: &SecretKey,
        n: usize,
    ) -> (Vec<SignedTrustRoot>, Vec<dcloud_crdt::SignedChange>) {
        let root = SignedTrustRoot::sign(
            TrustRoot {
                version: 1,
                threshold: 1,
                keys: vec![key.public()],
                ..Default::default()
            },
            &[key],
        );
        let mut changes = Vec::new();
        for i in 0..n {
            let c = set(&changes, key, i as i64);
            changes.push(c);
        }
        (vec![root], changes)
    }

    #[test]
    fn a_base_behind_the_node_is_stale_and_an_equal_one_is_not() {
        let key = SecretKey::from_seed([9; 32]);
        let (roots, changes) = history(&key, 3);
        let node = Base::from_bundles(&[Bundle {
            roots: roots.clone(),
            changes: changes.clone(),
        }])
        .unwrap();
        // Made against the node's heads: not stale.
        let fresh = Bundle {
            roots: roots.clone(),
            changes: vec![set(&changes, &key, 10)],
        };
        assert!(stale_heads(&node, &fresh).is_empty());
        let (heads, base) = bundle_heads(&fresh);
        assert_eq!(heads, vec![fresh.changes[0].hash().unwrap()]);
        assert_eq!(base, node.heads());
        // Made against the first two changes only: the third is what the admin missed.
        let old = Bundle {
            roots: roots.clone(),
            changes: vec![set(&changes[..2], &key, 11)],
        };
        assert_eq!(stale_heads(&node, &old), vec![changes[2].hash().unwrap()]);
        // Already published (the node's head is the bundle's own change): not stale.
        let mut with_it = changes.clone();
        with_it.push(fresh.changes[0].clone());
        let node2 = Base::from_bundles(&[Bundle {
            roots,
            changes: with_it,
        }])
        .unwrap();
        assert!(stale_heads(&node2, &fresh).is_empty());
    }

    #[test]
    fn a_chain_of_changes_is_watched_at_its_tip() {
        let key = SecretKey::from_seed([8; 32]);
        let (roots, changes) = history(&key, 4);
        let bundle = Bundle {
            roots,
            changes: changes[1..].to_vec(),
        };
        let (heads, base) = bundle_heads(&bundle);
        assert_eq!(heads, vec![changes[3].hash().unwrap()]);
        assert_eq!(base, vec![changes[0].hash().unwrap()]);
    }
}
