//! Deciding whom to dial, at which addresses, and how often: the daemon's
//! dialing without I/O, so that its bounds can be tested.
//!
//! The addresses of a member come from what the member claims (its signed
//! status, identify) and from the addresses this node reached it at. A claim
//! is the peer's word only: a node could list a thousand addresses, or the
//! address of a host it wants the fleet to flood. So:
//!
//! * only well-formed addresses are dialled: `/ip4|ip6/<addr>/tcp/<port>` or
//!   `/ip4|ip6/<addr>/udp/<port>/quic-v1`, optionally ending in the peer's
//!   own `/p2p/<id>`; no unspecified, multicast or broadcast address, no port
//!   0, nothing else (no DNS: the daemon has no resolver);
//! * duplicates are taken once, and at most [`ADDRS_PER_DIAL_MAX`] addresses
//!   are tried per dial: the one this node reached the peer at (or its first)
//!   always, the other places going round the rest from dial to dial; only
//!   the first [`CLAIMS_SCANNED_MAX`] claimed ones are looked at;
//! * each peer is redialled with jittered exponential backoff
//!   ([`REDIAL_BACKOFF_MIN_MS`] to [`REDIAL_BACKOFF_MAX_MS`]; bootstrap
//!   addresses up to [`BOOTSTRAP_BACKOFF_MAX_MS`]), reset when the
//!   peer talks to us; when some peer that was not up connects (a partition
//!   healed), every backed-off peer is due again, at most once per
//!   [`KICK_MIN_INTERVAL_MS`];
//! * all member dials share a token bucket of connection attempts (one token
//!   per address tried): [`DIAL_BURST`] at once, refilled at
//!   [`DIAL_RATE_PER_S`] a second. Bootstrap peers, which the operator
//!   configured, have their own backoff and are not counted.
//!
//! Whatever is refused or left out is counted by reason
//! (`dcloud_dial_addrs_ignored_total`).

use std::collections::{HashMap, HashSet};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::engine::Millis;

/// First redial delay.
pub const REDIAL_BACKOFF_MIN_MS: u64 = 500;
/// Longest redial delay of a member. Short, so that a healed partition is
/// found within seconds (a 30 s bound left a 7-node fleet under 20% loss
/// without a link across for 8 to 9 s after the heal, in 2 runs of 5); the
/// dial budget, not the backoff, bounds what dialing costs.
pub const REDIAL_BACKOFF_MAX_MS: u64 = 4_000;
/// Longest redial delay of a bootstrap address: configured at every node, so
/// a bootstrap peer that is down is dialled by the whole fleet.
pub const BOOTSTRAP_BACKOFF_MAX_MS: u64 = 30_000;
/// Most addresses tried in one dial of a peer.
pub const ADDRS_PER_DIAL_MAX: usize = 4;
/// Claimed addresses looked at per dial (the rest are over the limit
/// without being parsed).
pub const CLAIMS_SCANNED_MAX: usize = 16;
/// After the network changed, a peer is dialled again no sooner than this
/// after its last dial.
pub const KICK_MIN_INTERVAL_MS: u64 = 2_000;
/// Connection attempts (one per address) the dial budget holds...
pub const DIAL_BURST: u32 = 16;
/// ...and regains per second.
pub const DIAL_RATE_PER_S: u32 = 8;

/// Why an address of a peer is not dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Ignored {
    /// Not a multiaddr.
    #[error("not a multiaddr")]
    Malformed,
    /// A multiaddr of a shape this daemon does not dial.
    #[error("not an ip4/ip6 tcp or quic-v1 address")]
    Unsupported,
    /// Unspecified, multicast or broadcast address, or port 0.
    #[error("not a unicast address")]
    NotUnicast,
    /// Names another peer (`/p2p/<other>`).
    #[error("names another peer")]
    OtherPeer,
    /// Listed already.
    #[error("duplicate")]
    Duplicate,
    /// Over [`ADDRS_PER_DIAL_MAX`].
    #[error("over the addresses-per-dial bound")]
    OverLimit,
}

impl Ignored {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Ignored::Malformed => "malformed",
            Ignored::Unsupported => "unsupported",
            Ignored::NotUnicast => "not_unicast",
            Ignored::OtherPeer => "other_peer",
            Ignored::Duplicate => "duplicate",
            Ignored::OverLimit => "over_limit",
        }
    }
}

/// Check one address of `peer`: the address to dial (without `/p2p`), or why not.
pub fn check_addr(addr: &Multiaddr, peer: &PeerId) -> Result<Multiaddr, Ignored> {
    let mut it = addr.iter();
    let mut out = Multiaddr::empty();
    match it.next() {
        Some(Protocol::Ip4(ip)) => {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                return Err(Ignored::NotUnicast);
            }
            out.push(Protocol::Ip4(ip));
        }
        Some(Protocol::Ip6(ip)) => {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(Ignored::NotUnicast);
            }
            out.push(Protocol::Ip6(ip));
        }
        _ => return Err(Ignored::Unsupported),
    }
    match it.next() {
        Some(Protocol::Tcp(port)) => {
            if port == 0 {
                return Err(Ignored::NotUnicast);
            }
            out.push(Protocol::Tcp(port));
        }
        Some(Protocol::Udp(port)) => {
            if port == 0 {
                return Err(Ignored::NotUnicast);
            }
            if it.next() != Some(Protocol::QuicV1) {
                return Err(Ignored::Unsupported);
            }
            out.push(Protocol::Udp(port));
            out.push(Protocol::QuicV1);
        }
        _ => return Err(Ignored::Unsupported),
    }
    match it.next() {
        None => {}
        Some(Protocol::P2p(id)) if id == *peer => {}
        Some(Protocol::P2p(_)) => return Err(Ignored::OtherPeer),
        Some(_) => return Err(Ignored::Unsupported),
    }
    if it.next().is_some() {
        return Err(Ignored::Unsupported);
    }
    Ok(out)
}

/// Parse and check a claimed address (a string from a status document).
pub fn check_claim(s: &str, peer: &PeerId) -> Result<Multiaddr, Ignored> {
    let addr: Multiaddr = s.parse().map_err(|_| Ignored::Malformed)?;
    check_addr(&addr, peer)
}

/// The addresses of one dial of `peer`, and what was left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AddrPlan {
    /// At most [`ADDRS_PER_DIAL_MAX`], well-formed, distinct.
    pub addrs: Vec<Multiaddr>,
    /// Every address left out, with why.
    pub ignored: Vec<Ignored>,
}

/// Plan the addresses of one dial: `known` (where this node reached or heard
/// of the peer, most trusted first), then `claimed` (its signed status).
/// The first address is always tried; the other places go round the rest of
/// the list, moving on with each `turn` (the dials since the peer last talked
/// to us), so that successive dials try every address a peer lists.
pub fn plan_addrs(peer: &PeerId, known: &[Multiaddr], claimed: &[String], turn: usize) -> AddrPlan {
    let mut plan = AddrPlan::default();
    let mut seen: HashSet<Multiaddr> = HashSet::new();
    let scanned = claimed.len().min(CLAIMS_SCANNED_MAX);
    let checked = known
        .iter()
        .map(|a| check_addr(a, peer))
        .chain(claimed[..scanned].iter().map(|s| check_claim(s, peer)));
    let mut valid: Vec<Multiaddr> = Vec::new();
    for c in checked {
        match c {
            Err(why) => plan.ignored.push(why),
            Ok(a) if seen.contains(&a) => plan.ignored.push(Ignored::Duplicate),
            Ok(a) => {
                seen.insert(a.clone());
                valid.push(a);
            }
        }
    }
    if let Some((first, rest)) = valid.split_first_mut() {
        plan.addrs.push(first.clone());
        let room = (ADDRS_PER_DIAL_MAX - 1).min(rest.len());
        if room > 0 {
            rest.rotate_left((turn * room) % rest.len());
            plan.addrs.extend(rest[..room].iter().cloned());
        }
        plan.ignored
            .extend(std::iter::repeat_n(Ignored::OverLimit, rest.len() - room));
    }
    // Not even parsed: a long list costs nothing past its head.
    plan.ignored.extend(std::iter::repeat_n(
        Ignored::OverLimit,
        claimed.len() - scanned,
    ));
    plan
}

/// Jittered exponential backoff of one peer's redials.
#[derive(Debug, Clone)]
pub struct Redial {
    next_at: Millis,
    backoff_ms: u64,
    max_ms: u64,
    /// When it was last dialled.
    last_at: Option<Millis>,
    /// Dials since it last talked to us.
    turn: usize,
}

impl Default for Redial {
    fn default() -> Self {
        Redial {
            next_at: 0,
            backoff_ms: REDIAL_BACKOFF_MIN_MS,
            max_ms: REDIAL_BACKOFF_MAX_MS,
            last_at: None,
            turn: 0,
        }
    }
}

impl Redial {
    /// The backoff of a bootstrap address (up to [`BOOTSTRAP_BACKOFF_MAX_MS`]).
    pub fn bootstrap() -> Self {
        Redial {
            max_ms: BOOTSTRAP_BACKOFF_MAX_MS,
            ..Redial::default()
        }
    }

    /// May it be dialled now?
    pub fn due(&self, now: Millis) -> bool {
        now >= self.next_at
    }

    /// It was dialled at `now`: the next dial waits the backoff plus up to a
    /// quarter of it, and the backoff doubles (up to the bound).
    pub fn dialed(&mut self, now: Millis, rng: &mut impl rand::Rng) {
        let jitter = rng.next_u64() % (self.backoff_ms / 4 + 1);
        self.last_at = Some(now);
        self.turn = self.turn.wrapping_add(1);
        self.next_at = now + self.backoff_ms + jitter;
        self.backoff_ms = (self.backoff_ms * 2).min(self.max_ms);
    }

    /// It talked to us: the next failure starts the backoff over.
    pub fn reset(&mut self) {
        self.backoff_ms = REDIAL_BACKOFF_MIN_MS;
        self.turn = 0;
    }

    /// The network changed (see [`Dialer::network_changed`]): due again
    /// [`KICK_MIN_INTERVAL_MS`] after its last dial at the latest. The
    /// backoff itself stays, for when this try fails too.
    pub fn kick(&mut self) {
        let soon = self.last_at.map_or(0, |t| t + KICK_MIN_INTERVAL_MS);
        self.next_at = self.next_at.min(soon);
    }
}

/// A token bucket of connection attempts.
#[derive(Debug, Clone)]
pub struct DialBudget {
    /// Tokens, in thousandths.
    milli: u64,
    at: Millis,
    burst: u32,
    rate_per_s: u32,
}

impl DialBudget {
    /// A full bucket of `burst` tokens regaining `rate_per_s` a second.
    pub fn new(burst: u32, rate_per_s: u32) -> Self {
        DialBudget {
            milli: u64::from(burst) * 1000,
            at: 0,
            burst,
            rate_per_s,
        }
    }

    fn refill(&mut self, now: Millis) {
        let dt = now.saturating_sub(self.at);
        self.at = self.at.max(now);
        self.milli =
            (self.milli + dt * u64::from(self.rate_per_s)).min(u64::from(self.burst) * 1000);
    }

    /// Take `n` tokens at `now` if the bucket holds them.
    pub fn take(&mut self, now: Millis, n: u32) -> bool {
        self.refill(now);
        let need = u64::from(n) * 1000;
        if self.milli >= need {
            self.milli -= need;
            true
        } else {
            false
        }
    }
}

/// A member this node could dial.
#[derive(Debug)]
pub struct Candidate<'a> {
    /// Its peer id.
    pub peer: PeerId,
    /// Where this node reached or heard of it (most trusted first).
    pub known: &'a [Multiaddr],
    /// What its signed status claims.
    pub claimed: &'a [String],
}

/// One dial to make.
#[derive(Debug, PartialEq, Eq)]
pub struct Dial {
    /// The peer.
    pub peer: PeerId,
    /// Its addresses (one connection attempt each).
    pub addrs: Vec<Multiaddr>,
}

/// What one round of planning decided.
#[derive(Debug, Default)]
pub struct Round {
    /// The dials to make.
    pub dials: Vec<Dial>,
    /// Addresses left out of those dials, with why.
    pub ignored: Vec<Ignored>,
    /// Dials put off because the budget was spent.
    pub deferred: usize,
}

/// The dialing state of member peers.
#[derive(Debug)]
pub struct Dialer {
    redial: HashMap<PeerId, Redial>,
    budget: DialBudget,
}

impl Default for Dialer {
    fn default() -> Self {
        Dialer::new(DIAL_BURST, DIAL_RATE_PER_S)
    }
}

/// Peers whose backoff state is kept at most (it starts over when full).
const REDIAL_STATE_MAX: usize = 4096;

impl Dialer {
    /// A dialer with its own budget.
    pub fn new(burst: u32, rate_per_s: u32) -> Self {
        Dialer {
            redial: HashMap::new(),
            budget: DialBudget::new(burst, rate_per_s),
        }
    }

    /// The peer talked to us: reset its backoff.
    pub fn reset(&mut self, peer: &PeerId) {
        if let Some(r) = self.redial.get_mut(peer) {
            r.reset();
        }
    }

    /// A peer that was not up connected: the network may have healed (a
    /// partition ended, a link came back). Every peer waiting out a backoff
    /// is due again (at most once per [`KICK_MIN_INTERVAL_MS`] each; the
    /// budget still bounds the attempts), instead of each waiting up to
    /// [`REDIAL_BACKOFF_MAX_MS`] to find out.
    pub fn network_changed(&mut self) {
        for r in self.redial.values_mut() {
            r.kick();
        }
    }

    /// Choose up to `want` dials among `candidates` (peers not connected and
    /// not blocked): those whose backoff is over and that have a dialable
    /// address, in random order, while the budget lasts.
    pub fn plan<'a>(
        &mut self,
        now: Millis,
        candidates: impl IntoIterator<Item = Candidate<'a>>,
        want: usize,
        rng: &mut impl rand::Rng,
    ) -> Round {
        use rand::seq::SliceRandom;
        let mut round = Round::default();
        if want == 0 {
            return round;
        }
        let mut due: Vec<Candidate<'a>> = candidates
            .into_iter()
            .filter(|c| self.redial.get(&c.peer).is_none_or(|r| r.due(now)))
            .collect();
        due.shuffle(rng);
        for c in due {
            if round.dials.len() >= want {
                break;
            }
            let turn = self.redial.get(&c.peer).map_or(0, |r| r.turn);
            let plan = plan_addrs(&c.peer, c.known, c.claimed, turn);
            if plan.addrs.is_empty() {
                continue;
            }
            if !self.budget.take(now, plan.addrs.len() as u32) {
                round.deferred += 1;
                continue;
            }
            if self.redial.len() >= REDIAL_STATE_MAX && !self.redial.contains_key(&c.peer) {
                self.redial.clear();
            }
            self.redial.entry(c.peer).or_default().dialed(now, rng);
            round.ignored.extend(plan.ignored);
            round.dials.push(Dial {
                peer: c.peer,
                addrs: plan.addrs,
            });
        }
        round
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn peer(seed: u8) -> PeerId {
        let key = dcloud_crdt::SecretKey::from_seed([seed; 32]);
        crate::net::peer_id(&key.public()).unwrap()
    }

    fn thousand(peer: &PeerId) -> Vec<String> {
        let mut v: Vec<String> = (0..1000u32)
            .map(|k| format!("/ip4/10.{}.{}.1/tcp/7700", k / 250, k % 250))
            .collect();
        // Garbage, other shapes, duplicates, another peer's id.
        v[1] = "not an address".into();
        v[2] = "/ip4/0.0.0.0/tcp/7700".into();
        v[3] = "/dns4/example.org/tcp/7700".into();
        v[4] = v[0].clone();
        v[5] = format!("/ip4/10.9.9.9/tcp/1/p2p/{}", self::peer(200));
        v[6] = format!("/ip4/10.9.9.8/tcp/1/p2p/{peer}");
        v[7] = "/ip4/224.0.0.1/udp/7700/quic-v1".into();
        v[8] = "/ip4/10.9.9.7/udp/7700".into();
        v
    }

    #[test]
    fn well_formed_addresses_only() {
        let p = peer(1);
        let ok = |s: &str| check_claim(s, &p).map(|a| a.to_string());
        assert_eq!(
            ok("/ip4/192.0.2.1/tcp/7700"),
            Ok("/ip4/192.0.2.1/tcp/7700".into())
        );
        assert_eq!(
            ok(&format!("/ip4/192.0.2.1/udp/7700/quic-v1/p2p/{p}")),
            Ok("/ip4/192.0.2.1/udp/7700/quic-v1".into())
        );
        assert_eq!(
            ok("/ip6/2001:db8::1/tcp/7700"),
            Ok("/ip6/2001:db8::1/tcp/7700".into())
        );
        assert_eq!(ok("garbage"), Err(Ignored::Malformed));
        assert_eq!(ok("/ip4/0.0.0.0/tcp/7700"), Err(Ignored::NotUnicast));
        assert_eq!(
            ok("/ip4/255.255.255.255/tcp/7700"),
            Err(Ignored::NotUnicast)
        );
        assert_eq!(ok("/ip6/ff02::1/tcp/7700"), Err(Ignored::NotUnicast));
        assert_eq!(ok("/ip4/192.0.2.1/tcp/0"), Err(Ignored::NotUnicast));
        assert_eq!(ok("/dns4/example.org/tcp/7700"), Err(Ignored::Unsupported));
        assert_eq!(ok("/ip4/192.0.2.1/udp/7700"), Err(Ignored::Unsupported));
        assert_eq!(ok("/ip4/192.0.2.1/tcp/7700/ws"), Err(Ignored::Unsupported));
        assert_eq!(
            ok(&format!("/ip4/192.0.2.1/tcp/7700/p2p/{}", peer(2))),
            Err(Ignored::OtherPeer)
        );
        assert_eq!(
            ok(&format!("/ip4/192.0.2.1/tcp/7700/p2p/{p}/p2p/{p}")),
            Err(Ignored::Unsupported)
        );
    }

    #[test]
    fn a_status_with_a_thousand_addresses_gives_one_dial_of_at_most_four() {
        let p = peer(1);
        let claimed = thousand(&p);
        let known: Vec<Multiaddr> = vec!["/ip4/10.0.0.1/tcp/7700".parse().unwrap()];
        let plan = plan_addrs(&p, &known, &claimed, 0);
        assert_eq!(plan.addrs.len(), ADDRS_PER_DIAL_MAX);
        // The address it was reached at first; claimed ones after, deduplicated.
        assert_eq!(plan.addrs[0], known[0]);
        assert_eq!(plan.addrs[1].to_string(), "/ip4/10.9.9.8/tcp/1");
        let distinct: HashSet<_> = plan.addrs.iter().collect();
        assert_eq!(distinct.len(), plan.addrs.len());
        assert_eq!(plan.addrs.len() + plan.ignored.len(), 1001);
        let count = |w: Ignored| plan.ignored.iter().filter(|i| **i == w).count();
        assert_eq!(count(Ignored::Malformed), 1);
        assert_eq!(count(Ignored::NotUnicast), 2);
        assert_eq!(count(Ignored::Unsupported), 2);
        assert_eq!(count(Ignored::OtherPeer), 1);
        // known[0] listed again as v[0], and v[4] the same once more.
        assert_eq!(count(Ignored::Duplicate), 2);

        let mut d = Dialer::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let round = d.plan(
            0,
            [Candidate {
                peer: p,
                known: &known,
                claimed: &claimed,
            }],
            8,
            &mut rng,
        );
        assert_eq!(round.dials.len(), 1);
        assert_eq!(round.dials[0].addrs.len(), ADDRS_PER_DIAL_MAX);
        assert_eq!(round.ignored.len(), 1001 - ADDRS_PER_DIAL_MAX);
    }

    /// Many members, each claiming 1,000 addresses, none answering, planned
    /// every tick for ten minutes: connection attempts stay within the budget
    /// over every window, and each peer is redialled no faster than its backoff.
    #[test]
    fn dials_over_time_stay_under_the_rate() {
        let peers: Vec<PeerId> = (1..=64).map(peer).collect();
        let claims: Vec<Vec<String>> = peers.iter().map(thousand).collect();
        let mut d = Dialer::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let tick = 500;
        let mut attempts: Vec<(Millis, usize)> = Vec::new();
        let mut per_peer: HashMap<PeerId, Vec<Millis>> = HashMap::new();
        for step in 0..1200u64 {
            let now = step * tick;
            let cands = peers.iter().zip(&claims).map(|(p, c)| Candidate {
                peer: *p,
                known: &[],
                claimed: c,
            });
            let round = d.plan(now, cands, 8, &mut rng);
            for dial in round.dials {
                assert!(dial.addrs.len() <= ADDRS_PER_DIAL_MAX);
                attempts.push((now, dial.addrs.len()));
                per_peer.entry(dial.peer).or_default().push(now);
            }
        }
        let total: usize = attempts.iter().map(|a| a.1).sum();
        let secs = 1200 * tick / 1000;
        let bound = DIAL_BURST as u64 + DIAL_RATE_PER_S as u64 * secs;
        assert!(total as u64 <= bound, "{total} attempts over {secs} s");
        // Every 10-second window: at most the burst plus ten seconds of rate.
        for (start, _) in &attempts {
            let window: usize = attempts
                .iter()
                .filter(|(t, _)| *t >= *start && *t < start + 10_000)
                .map(|a| a.1)
                .sum();
            assert!(
                window as u64 <= DIAL_BURST as u64 + 10 * DIAL_RATE_PER_S as u64,
                "{window} attempts in the 10 s from {start} ms"
            );
        }
        // Per peer: no two dials closer than the backoff of the earlier one.
        for times in per_peer.values() {
            let mut backoff = REDIAL_BACKOFF_MIN_MS;
            for w in times.windows(2) {
                assert!(w[1] - w[0] >= backoff, "{times:?}");
                backoff = (backoff * 2).min(REDIAL_BACKOFF_MAX_MS);
            }
        }
        // The budget is used, not starved: the long-run rate is close to it.
        assert!(total as u64 >= bound / 2, "{total} attempts over {secs} s");
    }

    #[test]
    fn successive_dials_try_every_listed_address() {
        let p = peer(1);
        let claimed: Vec<String> = (1..=10)
            .map(|k| format!("/ip4/10.0.0.{k}/tcp/7700"))
            .collect();
        let mut tried: HashSet<String> = HashSet::new();
        for turn in 0..3 {
            let plan = plan_addrs(&p, &[], &claimed, turn);
            assert_eq!(plan.addrs.len(), ADDRS_PER_DIAL_MAX);
            assert_eq!(plan.addrs[0].to_string(), claimed[0], "the first always");
            tried.extend(plan.addrs.iter().map(|a| a.to_string()));
        }
        assert_eq!(tried.len(), 10, "{tried:?}");
    }

    #[test]
    fn a_new_connection_makes_backed_off_peers_due_again() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut r = Redial::default();
        let mut now = 0;
        for _ in 0..10 {
            r.dialed(now, &mut rng);
            now = r.next_at;
        }
        // Backed off to the bound: not due for most of REDIAL_BACKOFF_MAX_MS.
        r.dialed(now, &mut rng);
        assert!(!r.due(now + REDIAL_BACKOFF_MAX_MS - 1));
        r.kick();
        assert!(!r.due(now + KICK_MIN_INTERVAL_MS - 1));
        assert!(r.due(now + KICK_MIN_INTERVAL_MS));
        // The backoff stays for the next failure.
        r.dialed(now + KICK_MIN_INTERVAL_MS, &mut rng);
        assert!(!r.due(now + KICK_MIN_INTERVAL_MS + REDIAL_BACKOFF_MAX_MS - 1));
    }

    #[test]
    fn a_spent_budget_defers_dials_and_refills() {
        let mut b = DialBudget::new(4, 2);
        assert!(b.take(0, 4));
        assert!(!b.take(0, 1));
        assert!(!b.take(499, 1));
        assert!(b.take(500, 1));
        assert!(b.take(10_000, 4));
        assert!(!b.take(10_000, 1));
    }
}
