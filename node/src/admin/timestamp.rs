//! The timestamp role: `dcloud-admin timestamp` signs a freshness statement
//! ("under trust root vN the newest policy heads are H; valid until T") with an
//! online timestamp key, and `root init`/`root rotate` list the timestamp keys.
//!
//! Meant for cron on an online machine: the timestamp key can sign only
//! freshness statements (never policy), so it is safe to keep online. The
//! statement is built from the policy snapshot of one or more nodes, verified
//! here (the trust chain and every policy change) before anything is signed.

use std::path::Path;
use std::time::Duration;

use dcloud_crdt::freshness::FRESHNESS_HEADS_MAX;
use dcloud_crdt::{Bundle, FreshnessStatement, PublicKey, SecretKey, SignedFreshness};
use serde::Deserialize;

use crate::admin::base::{Base, BaseError};
use crate::admin::client::REQUEST_TIMEOUT_MS;
use crate::admin::files::{self, FileError};
use crate::admin::trust::ChainFile;
use crate::view::FreshnessView;

/// Errors making, writing or posting a freshness statement.
#[derive(Debug, thiserror::Error)]
pub enum TimestampError {
    /// The snapshot does not verify.
    #[error("the policy snapshot does not verify: {0}")]
    Base(#[from] BaseError),
    /// The key is not a timestamp key of the root in force.
    #[error(
        "key {key} is not a timestamp key of trust root v{version} (its timestamp keys: {listed}); list it with `dcloud-admin root rotate --timestamp-key`"
    )]
    NotTimestampKey {
        /// The key.
        key: String,
        /// The root in force.
        version: u64,
        /// What the root lists.
        listed: String,
    },
    /// Too many heads for one statement.
    #[error(
        "the policy has {0} heads, more than the {FRESHNESS_HEADS_MAX} a statement may name; publish an edit that merges them"
    )]
    TooManyHeads(usize),
    /// The expiry is zero or absurd.
    #[error("--expires {0:?} is outside 1 s ..= 30 days")]
    BadExpiry(Duration),
    /// Bad timestamp keys or threshold for a root.
    #[error("timestamp keys: {0}")]
    BadKeys(String),
    /// Writing the file failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The node refused or did not answer.
    #[error("{url}: {reason}")]
    Post {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Sign a statement for the union of `snapshots` (bundles from nodes' `GET
/// /v1/policy/snapshot`): its trust root version and policy heads, issued at
/// `now_unix_ms`, valid for `expires`.
pub fn make(
    key: &SecretKey,
    snapshots: &[Bundle],
    expires: Duration,
    now_unix_ms: u64,
) -> Result<SignedFreshness, TimestampError> {
    if expires < Duration::from_secs(1) || expires > Duration::from_secs(30 * 86_400) {
        return Err(TimestampError::BadExpiry(expires));
    }
    let base = Base::from_bundles(snapshots)?;
    let root = base.chain().current();
    if !root.timestamp_keys.contains(&key.public()) {
        return Err(TimestampError::NotTimestampKey {
            key: key.public().short(),
            version: root.version,
            listed: if root.timestamp_keys.is_empty() {
                "none".into()
            } else {
                root.timestamp_keys
                    .iter()
                    .map(PublicKey::short)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    }
    let mut heads: Vec<[u8; 32]> = base.heads().iter().map(|h| h.0).collect();
    heads.sort();
    if heads.len() > FRESHNESS_HEADS_MAX {
        return Err(TimestampError::TooManyHeads(heads.len()));
    }
    let statement = FreshnessStatement {
        root_version: root.version,
        policy_heads: heads,
        issued_ms: now_unix_ms,
        expires_ms: now_unix_ms.saturating_add(expires.as_millis() as u64),
    };
    Ok(SignedFreshness::sign(statement, &[key]))
}

/// Parse an expiry: `90s`, `30m`, `1h`, `2d`, `500ms` (a bare number is seconds).
pub fn parse_expiry(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration (500ms, 90s, 30m, 1h, 2d)");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(bad)
}

/// Write a statement file (atomically).
pub fn write(path: &Path, st: &SignedFreshness) -> Result<(), TimestampError> {
    Ok(files::write_atomic(path, &st.encode())?)
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// `POST /v1/freshness` at the node at `url` (`http://HOST:PORT`).
pub async fn post(url: &str, st: &SignedFreshness) -> Result<FreshnessView, TimestampError> {
    let base = url.trim().trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let url = format!("{base}/v1/freshness");
    let err = |reason: String| TimestampError::Post {
        url: url.clone(),
        reason,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .no_proxy()
        .build()
        .map_err(|e| err(e.to_string()))?;
    let resp = http
        .post(&url)
        .header("content-type", "application/octet-stream")
        .body(st.encode())
        .send()
        .await
        .map_err(|e| err(format!("no dcloud daemon answering: {e}")))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let msg = serde_json::from_str::<ErrorBody>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        return Err(err(format!("answered {}: {msg}", status.as_u16())));
    }
    serde_json::from_str(&text).map_err(|e| err(format!("unexpected answer {e}: {text}")))
}

/// Set the timestamp keys of the last root of `file` (just made by `root
/// init` or `root rotate`, signed by `signers` only) and sign it again with
/// `signers`. `keys: None` keeps what the previous root listed (a rotation
/// carries the timestamp keys over unless told otherwise); `Some(&[])` lists none.
pub fn set_keys(
    file: &mut ChainFile,
    keys: Option<&[PublicKey]>,
    threshold: Option<u32>,
    signers: &[SecretKey],
) -> Result<(), TimestampError> {
    let n = file.roots.len();
    let Some(last) = file.roots.last() else {
        return Ok(());
    };
    let mut root = last.root.clone();
    let keys: Vec<PublicKey> = match keys {
        Some(k) => {
            let mut d: Vec<PublicKey> = Vec::new();
            for x in k {
                if !d.contains(x) {
                    d.push(*x);
                }
            }
            d
        }
        None if n >= 2 => file.roots[n - 2].root.timestamp_keys.clone(),
        None => Vec::new(),
    };
    let threshold = match (threshold, keys.is_empty()) {
        (_, true) => 0,
        (Some(t), false) => t,
        (None, false) if n >= 2 && keys == file.roots[n - 2].root.timestamp_keys => {
            file.roots[n - 2].root.timestamp_threshold
        }
        (None, false) => 1,
    };
    if keys.iter().any(|k| root.keys.contains(k)) {
        return Err(TimestampError::BadKeys(
            "a timestamp key must not be an authority key".into(),
        ));
    }
    if !keys.is_empty() && (threshold == 0 || threshold as usize > keys.len()) {
        return Err(TimestampError::BadKeys(format!(
            "threshold {threshold} with {} distinct timestamp keys",
            keys.len()
        )));
    }
    if root.timestamp_keys == keys && root.timestamp_threshold == threshold {
        return Ok(());
    }
    root.timestamp_keys = keys;
    root.timestamp_threshold = threshold;
    let refs: Vec<&SecretKey> = signers.iter().collect();
    file.roots[n - 1] = dcloud_crdt::SignedTrustRoot::sign(root, &refs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcloud_crdt::{SignedTrustRoot, TrustChain, TrustRoot};

    #[test]
    fn a_statement_names_the_snapshot_root_and_heads_and_only_a_timestamp_key_signs() {
        let auth = SecretKey::from_seed([1; 32]);
        let ts = SecretKey::from_seed([2; 32]);
        let root = TrustRoot {
            version: 1,
            threshold: 1,
            keys: vec![auth.public()],
            timestamp_keys: vec![ts.public()],
            timestamp_threshold: 1,
            ..Default::default()
        };
        let signed = SignedTrustRoot::sign(root, &[&auth]);
        let chain = TrustChain::from_roots(vec![signed.clone()]).unwrap();
        let snap = Bundle {
            roots: vec![signed],
            changes: vec![],
        };
        let st = make(
            &ts,
            std::slice::from_ref(&snap),
            Duration::from_secs(60),
            1_000,
        )
        .unwrap();
        st.verify(&chain).unwrap();
        assert_eq!(st.statement.expires_ms, 61_000);
        assert!(matches!(
            make(&auth, &[snap], Duration::from_secs(60), 1_000),
            Err(TimestampError::NotTimestampKey { .. })
        ));
    }

    #[test]
    fn set_keys_resigns_the_new_root_and_a_rotation_carries_keys_over() {
        let auth = SecretKey::from_seed([1; 32]);
        let ts = SecretKey::from_seed([2; 32]).public();
        let mut file = ChainFile {
            roots: vec![SignedTrustRoot::sign(
                TrustRoot {
                    version: 1,
                    threshold: 1,
                    keys: vec![auth.public()],
                    ..Default::default()
                },
                &[&auth],
            )],
        };
        set_keys(&mut file, Some(&[ts]), None, std::slice::from_ref(&auth)).unwrap();
        TrustChain::from_roots(file.roots.clone()).unwrap();
        assert_eq!(file.roots[0].root.timestamp_threshold, 1);
        let next = TrustRoot {
            version: 2,
            ..file.roots[0].root.clone()
        };
        let mut next = next;
        next.timestamp_keys.clear();
        next.timestamp_threshold = 0;
        file.roots.push(SignedTrustRoot::sign(next, &[&auth]));
        set_keys(&mut file, None, None, std::slice::from_ref(&auth)).unwrap();
        let chain = TrustChain::from_roots(file.roots.clone()).unwrap();
        assert_eq!(chain.current().timestamp_keys, vec![ts]);
        assert!(set_keys(&mut file, Some(&[auth.public()]), None, &[auth]).is_err());
    }
}
