//! The freshness verdict: is this node's policy known to be current?
//!
//! The engine keeps the newest valid [`SignedFreshness`] (signed by the trust
//! root's timestamp keys; see `dcloud_crdt::freshness`). Whether that statement
//! still vouches for this node needs two clocks, which is why it is decided
//! here and not in the (clock-free) engine:
//!
//! * the **wall clock** (unix ms) for expiry, because `expires_ms` is the
//!   signer's wall-clock time; `skew_ms` allows for clocks that disagree;
//! * the daemon's **monotonic clock** for the grace period after start and for
//!   how long heads the statement names have been missing, so that a wall
//!   clock stepped by NTP cannot shorten or stretch them.
//!
//! A node is not fresh when (a) the root lists timestamp keys and no valid
//! statement arrived within `grace_ms` of start, (b) its newest statement has
//! expired (beyond `skew_ms`) or is under an older trust root than the one in
//! force, or (c) it has lacked policy heads the statement names for longer than
//! `lag_max_ms`. A root without timestamp keys is always fresh.

use dcloud_crdt::{SignedFreshness, TrustRoot};

use crate::engine::Millis;

/// Bounds of the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreshnessConfig {
    /// Clock disagreement allowed past a statement's expiry.
    pub skew_ms: u64,
    /// How long after start a node may hold no statement and still be fresh.
    pub grace_ms: u64,
    /// How long the node may lack heads a statement names.
    pub lag_max_ms: u64,
}

impl Default for FreshnessConfig {
    fn default() -> Self {
        FreshnessConfig {
            skew_ms: 60_000,
            grace_ms: 120_000,
            lag_max_ms: 300_000,
        }
    }
}

/// Fresh or not, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The policy is known to be current.
    pub fresh: bool,
    /// Why (for people; changes as time passes).
    pub reason: String,
    /// Why, as a stable code (for the status health check and metrics):
    /// `no_timestamp_keys`, `grace`, `fresh`, `catching_up` (fresh), or
    /// `no_statement`, `old_root`, `expired`, `lagging` (not fresh).
    pub code: &'static str,
}

impl Verdict {
    fn with(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}

/// Remembers since when heads named by the held statement have been missing.
#[derive(Debug, Default)]
pub struct FreshnessTracker {
    /// (the statement's order key, monotonic time the lack was first seen).
    lacking_since: Option<((u64, u64), Millis)>,
}

impl FreshnessTracker {
    /// The verdict now. `now` is the daemon's monotonic time since start,
    /// `unix_ms` the wall clock; `has` says whether a policy change is applied.
    pub fn verdict(
        &mut self,
        root: &TrustRoot,
        held: Option<&SignedFreshness>,
        has: impl Fn(&[u8; 32]) -> bool,
        now: Millis,
        unix_ms: u64,
        cfg: &FreshnessConfig,
    ) -> Verdict {
        let v = |fresh: bool, reason: String| Verdict {
            fresh,
            reason,
            code: "",
        };
        if root.timestamp_keys.is_empty() {
            self.lacking_since = None;
            return v(true, "no timestamp keys in the trust root".into()).with("no_timestamp_keys");
        }
        let Some(st) = held else {
            self.lacking_since = None;
            if now < cfg.grace_ms {
                return v(
                    true,
                    format!(
                        "no freshness statement yet (grace period: {} s after start)",
                        cfg.grace_ms / 1000
                    ),
                )
                .with("grace");
            }
            return v(
                false,
                format!(
                    "no valid freshness statement received within {} s of start",
                    cfg.grace_ms / 1000
                ),
            )
            .with("no_statement");
        };
        let s = &st.statement;
        if s.root_version < root.version {
            return v(
                false,
                format!(
                    "the newest freshness statement is under trust root v{}, older than v{} in force",
                    s.root_version, root.version
                ),
            )
            .with("old_root");
        }
        if st.expired(unix_ms, cfg.skew_ms) {
            return v(
                false,
                format!(
                    "the newest freshness statement expired {} s ago (expires_ms {}, clock skew allowed {} s): policy may be withheld",
                    unix_ms.saturating_sub(s.expires_ms) / 1000,
                    s.expires_ms,
                    cfg.skew_ms / 1000
                ),
            )
            .with("expired");
        }
        let lacking = s.policy_heads.iter().filter(|h| !has(h)).count();
        if lacking == 0 {
            self.lacking_since = None;
            return v(
                true,
                format!(
                    "holds every policy head of a freshness statement valid for {} s more",
                    s.expires_ms.saturating_sub(unix_ms) / 1000
                ),
            )
            .with("fresh");
        }
        let key = s.order_key();
        let since = match self.lacking_since {
            Some((k, t)) if k == key => t,
            _ => {
                self.lacking_since = Some((key, now));
                now
            }
        };
        let for_ms = now.saturating_sub(since);
        if for_ms > cfg.lag_max_ms {
            v(
                false,
                format!(
                    "lacks {lacking} policy heads named by the freshness statement for {} s (bound {} s): policy may be withheld",
                    for_ms / 1000,
                    cfg.lag_max_ms / 1000
                ),
            )
            .with("lagging")
        } else {
            v(
                true,
                format!(
                    "catching up: lacks {lacking} policy heads named by the freshness statement"
                ),
            )
            .with("catching_up")
        }
    }
}

/// The wall clock, unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcloud_crdt::{FreshnessStatement, SecretKey};

    fn root(ts: bool) -> TrustRoot {
        TrustRoot {
            version: 2,
            threshold: 1,
            keys: vec![SecretKey::from_seed([1; 32]).public()],
            timestamp_keys: if ts {
                vec![SecretKey::from_seed([2; 32]).public()]
            } else {
                vec![]
            },
            timestamp_threshold: u32::from(ts),
            ..Default::default()
        }
    }

    fn st(root_version: u64, expires_ms: u64) -> SignedFreshness {
        SignedFreshness::sign(
            FreshnessStatement {
                root_version,
                policy_heads: vec![[9; 32]],
                issued_ms: 1,
                expires_ms,
            },
            &[&SecretKey::from_seed([2; 32])],
        )
    }

    const CFG: FreshnessConfig = FreshnessConfig {
        skew_ms: 1_000,
        grace_ms: 10_000,
        lag_max_ms: 5_000,
    };

    #[test]
    fn no_timestamp_keys_is_always_fresh() {
        let mut t = FreshnessTracker::default();
        let v = t.verdict(&root(false), None, |_| false, 1 << 40, 1 << 40, &CFG);
        assert!(v.fresh);
        assert_eq!(v.reason, "no timestamp keys in the trust root");
    }

    #[test]
    fn no_statement_is_fresh_only_within_the_grace_period() {
        let mut t = FreshnessTracker::default();
        assert!(t.verdict(&root(true), None, |_| true, 9_999, 0, &CFG).fresh);
        let v = t.verdict(&root(true), None, |_| true, 10_000, 0, &CFG);
        assert!(!v.fresh && v.reason.contains("no valid freshness statement"));
    }

    #[test]
    fn expiry_allows_the_skew() {
        let mut t = FreshnessTracker::default();
        let s = st(2, 100_000);
        assert!(
            t.verdict(&root(true), Some(&s), |_| true, 0, 101_000, &CFG)
                .fresh
        );
        let v = t.verdict(&root(true), Some(&s), |_| true, 0, 101_001, &CFG);
        assert!(!v.fresh && v.reason.contains("expired"), "{v:?}");
    }

    #[test]
    fn a_statement_under_an_older_root_is_not_fresh() {
        let mut t = FreshnessTracker::default();
        let v = t.verdict(&root(true), Some(&st(1, u64::MAX)), |_| true, 0, 0, &CFG);
        assert!(!v.fresh && v.reason.contains("older than v2"), "{v:?}");
    }

    #[test]
    fn lacking_named_heads_past_the_bound_is_not_fresh() {
        let mut t = FreshnessTracker::default();
        let s = st(2, u64::MAX / 2);
        assert!(
            t.verdict(&root(true), Some(&s), |_| false, 1_000, 0, &CFG)
                .fresh
        );
        assert!(
            t.verdict(&root(true), Some(&s), |_| false, 6_000, 0, &CFG)
                .fresh
        );
        let v = t.verdict(&root(true), Some(&s), |_| false, 6_001, 0, &CFG);
        assert!(
            !v.fresh && v.reason.contains("lacks 1 policy heads"),
            "{v:?}"
        );
        // Catching up clears it.
        assert!(
            t.verdict(&root(true), Some(&s), |_| true, 7_000, 0, &CFG)
                .fresh
        );
        assert!(
            t.verdict(&root(true), Some(&s), |_| false, 8_000, 0, &CFG)
                .fresh
        );
    }
}
