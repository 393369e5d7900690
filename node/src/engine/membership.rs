//! Membership and failure detection: SWIM's rules (Das, Gupta, Motivala,
//! "SWIM", DSN 2002; the Lifeguard refinements of Serf/memberlist; foca's
//! state rules as the reference) run on the engine's existing mesh.
//!
//! Who is in the fleet is not discovered: the signed policy says it. What
//! membership adds is *liveness* at a cost that does not grow with the fleet:
//!
//! * **Probing.** Every [`MembershipConfig::probe_interval_ms`] a node sends a
//!   `Probe` to one random connected neighbour over the engine stream and
//!   expects its `Ack`. A probe left unanswered is sent again every
//!   [`MembershipConfig::probe_retry_ms`]; after
//!   [`MembershipConfig::probe_attempts`] sends without an answer, the node
//!   suspects that neighbour. A connection that goes down and does not come
//!   back within [`MembershipConfig::link_grace_ms`] is suspected too (a
//!   SIGKILL or a crash closes it at once). Each node is probed about once a
//!   period in all, whatever the size of the fleet.
//! * **Suspicion.** The suspecter signs `Suspect{subject, incarnation}` and
//!   floods it to its peers; every node that adopts it floods it on once.
//!   A node that holds a suspicion for [`MembershipConfig::suspicion_timeout_ms`]
//!   without hearing a refutation marks the subject down itself (no second
//!   broadcast: every node has its own timer).
//! * **Refutation.** A node that hears it is suspected signs
//!   `Alive{itself, higher incarnation}` and floods it; that overrides the
//!   suspicion, and a down mark, everywhere it reaches. Only the subject can
//!   sign its own `Alive`: a member can make others suspect a live node for a
//!   moment, never keep a dead node alive nor speak in another's name.
//! * **Incarnations** are `epoch << 32 | refutations`: the status epoch
//!   already rises at every restart (it is durable), so a restarted node
//!   speaks above everything said about its earlier life.
//! * **Repair.** Rumours lost in flight are repaired when a connection comes
//!   up: each side sends the suspicions it holds (a heal or a restart
//!   brings a suspected node the rumour it must refute). A rumour is checked
//!   against what is held before its signature is: only news is verified.
//!
//! This module is the pure state (no I/O, no clock, no rng); the engine
//! drives it, signs and sends.

use std::collections::{BTreeSet, HashMap};

use dcloud_crdt::{Claim, NodeId, Rumour, SignedRumour};
use serde::{Deserialize, Serialize};

use super::Millis;

/// Membership timings and bounds (`[engine.membership]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// Run failure detection (probes and rumours). Off, liveness is only the
    /// time since a node's last status change.
    pub enabled: bool,
    /// Probe one random neighbour this often.
    pub probe_interval_ms: u64,
    /// Send an unanswered probe again after this long.
    pub probe_retry_ms: u64,
    /// Sends of one probe without an answer before the neighbour is suspected.
    pub probe_attempts: u32,
    /// A suspicion confirmed by `suspicion_confirmations` distinct reporters
    /// and not refuted within this time marks its subject down.
    pub suspicion_timeout_ms: u64,
    /// The timeout of a suspicion with a single reporter (a lossy link, most
    /// likely, where a crash has every neighbour report at once): it falls
    /// to `suspicion_timeout_ms` as confirmations arrive (Lifeguard's rule:
    /// by the log of their count).
    pub suspicion_timeout_max_ms: u64,
    /// Distinct reporters that bring a suspicion's timeout to its minimum
    /// (and the most that are counted and forwarded).
    pub suspicion_confirmations: u32,
    /// A lost connection not back within this time makes the peer suspect.
    pub link_grace_ms: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            enabled: true,
            probe_interval_ms: 1_000,
            // Eight sends 400 ms apart: at 10% loss each way a probe and its
            // answer are lost together with probability 0.19, eight times
            // in a row 1.7e-6, so a 10,000-node fleet raises a false
            // suspicion about once a minute (each costs every node a
            // suspicion and a refutation); with five it was 2 a second.
            probe_retry_ms: 400,
            probe_attempts: 8,
            suspicion_timeout_ms: 3_000,
            suspicion_timeout_max_ms: 9_000,
            suspicion_confirmations: 3,
            link_grace_ms: 1_000,
        }
    }
}

/// A member's state as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// No suspicion held (or refuted).
    Alive,
    /// Suspected, not yet refuted; down when the suspicion times out.
    Suspect,
    /// Suspected and not refuted in time.
    Down,
}

impl MemberState {
    /// `alive`, `suspect`, `down`.
    pub fn label(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// What this node holds about one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Alive, suspect or down.
    pub state: MemberState,
    /// The member's incarnation this state is about.
    pub incarnation: u64,
    /// Local time the state was entered.
    pub since: Millis,
}

#[derive(Clone, Debug)]
struct Entry {
    incarnation: u64,
    state: MemberState,
    since: Millis,
    /// The rumour that set this state (a suspicion, or the subject's Alive).
    rumour: SignedRumour,
    /// The subject's latest `Alive` held (the proof that it announced an
    /// incarnation, sent ahead of a suspicion at that incarnation).
    alive: Option<SignedRumour>,
    /// Distinct reporters of the suspicion held (its confirmations).
    reporters: Vec<NodeId>,
    /// When the suspicion held times out (0: none).
    deadline: Millis,
}

impl MembershipConfig {
    /// A suspicion's timeout with `reporters` distinct reporters.
    pub fn suspicion_timeout(&self, reporters: usize) -> u64 {
        let k = self.suspicion_confirmations.max(1) as f64;
        let n = (reporters.max(1) as f64).min(k);
        let frac = if k <= 1.0 { 1.0 } else { n.ln() / k.ln() };
        let (lo, hi) = (
            self.suspicion_timeout_ms,
            self.suspicion_timeout_max_ms.max(self.suspicion_timeout_ms),
        );
        hi - ((hi - lo) as f64 * frac) as u64
    }
}

/// What adopting a rumour means for the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adopted {
    /// It changed what this node holds: flood it on.
    News,
    /// Nothing new.
    Known,
    /// It suspects this node: refute (sign `Alive` at this incarnation and
    /// flood it).
    Refute(u64),
    /// An old suspicion of this node: the sender has not heard the
    /// refutation; send it this node's current `Alive`.
    Remind,
}

/// The membership table of one node.
#[derive(Clone, Debug)]
pub struct Membership {
    me: NodeId,
    incarnation: u64,
    /// This node's latest signed `Alive` (once it refuted, or was asked).
    own_alive: Option<SignedRumour>,
    entries: HashMap<NodeId, Entry>,
    /// Suspicions by deadline.
    deadlines: BTreeSet<(Millis, NodeId)>,
    /// Reporters counted per suspicion.
    confirmations_max: usize,
    /// Suspicions to echo at half their timeout, by when.
    echoes: BTreeSet<(Millis, NodeId)>,
    /// Entries in each state (alive, suspect, down), kept as they change so
    /// that [`Membership::counts`] is O(1) (a daemon reads it per event).
    tally: [usize; 3],
}

/// The first member of a queue by time, taken off it if due at `now`.
fn pop_due(queue: &mut BTreeSet<(Millis, NodeId)>, now: Millis) -> Option<NodeId> {
    let &(at, node) = queue.first()?;
    if at > now {
        return None;
    }
    queue.pop_first();
    Some(node)
}

fn slot(s: MemberState) -> usize {
    match s {
        MemberState::Alive => 0,
        MemberState::Suspect => 1,
        MemberState::Down => 2,
    }
}

/// The incarnation a node starts at in status epoch `epoch`.
pub fn incarnation_of_epoch(epoch: u32) -> u64 {
    u64::from(epoch) << 32
}

impl Membership {
    /// A table for `me`, at incarnation `incarnation`.
    pub fn new(me: NodeId, incarnation: u64) -> Self {
        Membership {
            me,
            incarnation,
            own_alive: None,
            entries: HashMap::new(),
            deadlines: BTreeSet::new(),
            echoes: BTreeSet::new(),
            tally: [0; 3],
            confirmations_max: MembershipConfig::default().suspicion_confirmations as usize,
        }
    }

    /// Count (and forward) at most this many reporters per suspicion.
    pub fn set_confirmations(&mut self, k: u32) {
        self.confirmations_max = k.max(1) as usize;
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Raise this node's incarnation to at least `inc` (a new status epoch).
    pub fn raise_incarnation(&mut self, inc: u64) {
        if inc > self.incarnation {
            self.incarnation = inc;
            self.own_alive = None;
        }
    }

    /// This node's current signed `Alive`, if one was signed at its current
    /// incarnation.
    pub fn own_alive(&self) -> Option<&SignedRumour> {
        self.own_alive
            .as_ref()
            .filter(|r| r.rumour.incarnation == self.incarnation)
    }

    /// Keep this node's newly signed `Alive`.
    pub fn set_own_alive(&mut self, r: SignedRumour) {
        debug_assert_eq!(r.rumour.subject, self.me);
        self.incarnation = self.incarnation.max(r.rumour.incarnation);
        self.own_alive = Some(r);
    }

    /// What this node holds about `node` (`None`: nothing was ever said).
    pub fn liveness(&self, node: &NodeId) -> Option<Liveness> {
        self.entries.get(node).map(|e| Liveness {
            state: e.state,
            incarnation: e.incarnation,
            since: e.since,
        })
    }

    /// The incarnation of `node` this node knows (0 if none).
    pub fn known_incarnation(&self, node: &NodeId) -> u64 {
        self.entries.get(node).map_or(0, |e| e.incarnation)
    }

    /// Whether `node` is held suspect or down.
    pub fn is_suspected(&self, node: &NodeId) -> bool {
        self.entries
            .get(node)
            .is_some_and(|e| e.state != MemberState::Alive)
    }

    /// Members held suspect or down, with the rumour that says so (for a
    /// connection that comes up).
    pub fn suspicions(&self) -> Vec<SignedRumour> {
        let mut v: Vec<SignedRumour> = self
            .entries
            .values()
            .filter(|e| e.state != MemberState::Alive)
            .map(|e| e.rumour)
            .collect();
        v.sort_by_key(|r| r.rumour.subject);
        v
    }

    /// Counts of members held in each state: (alive, suspect, down).
    pub fn counts(&self) -> (usize, usize, usize) {
        debug_assert_eq!(self.tally, {
            let mut t = [0; 3];
            for e in self.entries.values() {
                t[slot(e.state)] += 1;
            }
            t
        });
        (self.tally[0], self.tally[1], self.tally[2])
    }

    /// Keep the tally as an entry goes from `old` to `new` (None: absent).
    fn recount(&mut self, old: Option<MemberState>, new: Option<MemberState>) {
        if let Some(o) = old {
            self.tally[slot(o)] -= 1;
        }
        if let Some(n) = new {
            self.tally[slot(n)] += 1;
        }
    }

    /// What adopting `r` would do, judged before its signature is checked
    /// (only news is worth a verification). Does not change anything.
    pub fn judge(&self, r: &Rumour) -> Adopted {
        if r.subject == self.me {
            return match r.claim {
                Claim::Suspect { .. } if r.incarnation >= self.incarnation => {
                    Adopted::Refute(r.incarnation.saturating_add(1))
                }
                Claim::Suspect { .. } => Adopted::Remind,
                // Its own (flooded back to it, or signed by another instance
                // on the same key): the driver raises its incarnation
                // quietly; refuting would make two instances outbid each
                // other for ever.
                Claim::Alive => Adopted::Known,
            };
        }
        let Some(e) = self.entries.get(&r.subject) else {
            return Adopted::News;
        };
        let news = match r.claim {
            Claim::Alive => r.incarnation > e.incarnation,
            Claim::Suspect { reporter } => {
                r.incarnation > e.incarnation
                    || (r.incarnation == e.incarnation && e.state == MemberState::Alive)
                    // A confirmation: another reporter of the suspicion held.
                    || (r.incarnation == e.incarnation
                        && e.state == MemberState::Suspect
                        && e.reporters.len() < self.confirmations_max
                        && !e.reporters.contains(&reporter))
            }
        };
        if news { Adopted::News } else { Adopted::Known }
    }

    /// Adopt a rumour about another member that [`Membership::judge`] called
    /// news and whose signature verified. True if the state changed.
    pub fn adopt(&mut self, r: SignedRumour, now: Millis, cfg: &MembershipConfig) -> bool {
        debug_assert_ne!(r.rumour.subject, self.me);
        if self.judge(&r.rumour) != Adopted::News {
            return false;
        }
        let subject = r.rumour.subject;
        let old = self.entries.get(&subject).cloned();
        if let Some(old) = &old
            && old.state == MemberState::Suspect
        {
            self.deadlines.remove(&(old.deadline, subject));
            if r.rumour.claim == Claim::Alive {
                self.echoes.retain(|(_, n)| *n != subject);
            }
        }
        let state = match r.rumour.claim {
            Claim::Alive => MemberState::Alive,
            Claim::Suspect { .. } => MemberState::Suspect,
        };
        let same = old
            .as_ref()
            .is_some_and(|o| o.state == state && o.incarnation == r.rumour.incarnation);
        let since = match &old {
            Some(o) if o.state == state => o.since,
            _ => now,
        };
        let alive = match r.rumour.claim {
            Claim::Alive => Some(r),
            Claim::Suspect { .. } => old.as_ref().and_then(|e| e.alive),
        };
        let mut reporters = match &old {
            Some(o) if same => o.reporters.clone(),
            _ => Vec::new(),
        };
        let mut deadline = 0;
        if let Claim::Suspect { reporter } = r.rumour.claim {
            if !reporters.contains(&reporter) {
                reporters.push(reporter);
            }
            deadline = since + cfg.suspicion_timeout(reporters.len());
            self.deadlines.insert((deadline, subject));
            if since == now {
                self.echoes
                    .insert((now + cfg.suspicion_timeout_ms / 2, subject));
            }
        }
        self.recount(old.as_ref().map(|o| o.state), Some(state));
        self.entries.insert(
            subject,
            Entry {
                incarnation: r.rumour.incarnation,
                state,
                since,
                // The first suspicion is kept (the one sent on).
                rumour: if same { old.map_or(r, |o| o.rumour) } else { r },
                alive,
                reporters,
                deadline,
            },
        );
        true
    }

    /// The suspicion held of `node`, if it is suspect or down.
    pub fn suspicion_of(&self, node: &NodeId) -> Option<SignedRumour> {
        self.entries
            .get(node)
            .filter(|e| e.state != MemberState::Alive)
            .map(|e| e.rumour)
    }

    /// The subject's latest `Alive` held, if any.
    pub fn alive_of(&self, node: &NodeId) -> Option<&SignedRumour> {
        self.entries.get(node).and_then(|e| e.alive.as_ref())
    }

    /// The highest incarnation `node` itself announced here (0: none).
    pub fn announced_incarnation(&self, node: &NodeId) -> u64 {
        self.alive_of(node).map_or(0, |a| a.rumour.incarnation)
    }

    /// Suspicions past their timeout at `now` become down marks, unless
    /// `heard_since(node, t)` says this node heard from the subject itself
    /// since the suspicion began at `t` (a message over a link, or a new
    /// change it signed): then the suspicion waits another timeout and is
    /// returned in `nudge`, to be sent to the subject so that it refutes (its
    /// refutation was lost). Returns (down, nudge).
    pub fn expire(
        &mut self,
        now: Millis,
        cfg: &MembershipConfig,
        mut heard_since: impl FnMut(&NodeId, Millis) -> bool,
    ) -> (Vec<NodeId>, Vec<SignedRumour>) {
        let mut down = Vec::new();
        let mut nudge = Vec::new();
        while let Some(node) = pop_due(&mut self.deadlines, now) {
            if let Some(e) = self.entries.get_mut(&node)
                && e.state == MemberState::Suspect
            {
                if heard_since(&node, e.since) {
                    e.since = now;
                    e.deadline = now + cfg.suspicion_timeout(e.reporters.len());
                    self.deadlines.insert((e.deadline, node));
                    nudge.push(e.rumour);
                } else {
                    e.state = MemberState::Down;
                    e.since = now;
                    down.push(node);
                    self.tally[slot(MemberState::Suspect)] -= 1;
                    self.tally[slot(MemberState::Down)] += 1;
                }
            }
        }
        (down, nudge)
    }

    /// Suspicions still held at half their timeout, due at `now`: the
    /// driver echoes each to a few peers, one of which answers with the
    /// subject's refutation if it holds one (a low-degree node on lossy
    /// links can lose every copy of a flood).
    pub fn echoes_due(&mut self, now: Millis) -> Vec<SignedRumour> {
        let mut due = Vec::new();
        while let Some(node) = pop_due(&mut self.echoes, now) {
            if let Some(e) = self.entries.get(&node)
                && e.state == MemberState::Suspect
            {
                due.push(e.rumour);
            }
        }
        due
    }

    /// The next suspicion deadline or echo.
    pub fn next_deadline(&self) -> Option<Millis> {
        let d = self.deadlines.first().map(|(at, _)| *at);
        let e = self.echoes.first().map(|(at, _)| *at);
        match (d, e) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forget `node` (revoked, or no longer a member).
    pub fn forget(&mut self, node: &NodeId) {
        if let Some(e) = self.entries.remove(node) {
            self.recount(Some(e.state), None);
            self.deadlines.retain(|(_, n)| n != node);
            self.echoes.retain(|(_, n)| n != node);
        }
    }

    /// A reporter has been revoked: its word no longer counts. A suspicion
    /// it raised (the rumour held and sent on is its own) is withdrawn: the
    /// subject is alive again at the incarnation held (with its own `Alive`,
    /// if one is held) or forgotten, so that a suspicion by a remaining
    /// member is news again. A suspicion it only confirmed loses that
    /// confirmation. Down marks already reached stay (the subject's next
    /// `Alive` clears them). Returns the subjects whose suspicion was
    /// withdrawn.
    pub fn withdraw_reporter(&mut self, reporter: &NodeId) -> Vec<NodeId> {
        let mut withdrawn = Vec::new();
        for (subject, e) in self.entries.iter_mut() {
            if e.state != MemberState::Suspect || !e.reporters.contains(reporter) {
                continue;
            }
            e.reporters.retain(|r| r != reporter);
            let raised =
                matches!(e.rumour.rumour.claim, Claim::Suspect { reporter: r } if r == *reporter);
            if raised || e.reporters.is_empty() {
                withdrawn.push(*subject);
            }
        }
        for subject in &withdrawn {
            let e = self.entries.get(subject).expect("just seen").clone();
            self.deadlines.remove(&(e.deadline, *subject));
            self.echoes.retain(|(_, n)| n != subject);
            self.recount(
                Some(MemberState::Suspect),
                e.alive.map(|_| MemberState::Alive),
            );
            match e.alive {
                Some(alive) => {
                    self.entries.insert(
                        *subject,
                        Entry {
                            state: MemberState::Alive,
                            rumour: alive,
                            reporters: Vec::new(),
                            deadline: 0,
                            ..e
                        },
                    );
                }
                None => {
                    self.entries.remove(subject);
                }
            }
        }
        withdrawn
    }

    /// Members with an entry (for pruning against the policy).
    pub fn members(&self) -> Vec<NodeId> {
        self.entries.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcloud_crdt::SecretKey;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_seed([b; 32])
    }

    fn alive(k: &SecretKey, inc: u64) -> SignedRumour {
        SignedRumour::sign(
            Rumour {
                subject: k.public(),
                incarnation: inc,
                claim: Claim::Alive,
            },
            k,
        )
    }

    fn suspect(subject: &SecretKey, by: &SecretKey, inc: u64) -> SignedRumour {
        SignedRumour::sign(
            Rumour {
                subject: subject.public(),
                incarnation: inc,
                claim: Claim::Suspect {
                    reporter: by.public(),
                },
            },
            by,
        )
    }

    #[test]
    fn a_revoked_reporters_suspicion_is_withdrawn() {
        let cfg = MembershipConfig::default();
        let (me, x, y, z, w) = (key(1), key(2), key(3), key(4), key(5));
        let mut m = Membership::new(me.public(), incarnation_of_epoch(1));
        m.set_confirmations(3);
        // x suspected by y (revoked later), confirmed by z.
        assert!(m.adopt(suspect(&x, &y, 0), 100, &cfg));
        assert!(m.adopt(suspect(&x, &z, 0), 120, &cfg));
        // w suspected by z, confirmed by y.
        assert!(m.adopt(alive(&w, 5), 100, &cfg));
        assert!(m.adopt(suspect(&w, &z, 5), 130, &cfg));
        assert!(m.adopt(suspect(&w, &y, 5), 140, &cfg));
        assert_eq!(m.withdraw_reporter(&y.public()), vec![x.public()]);
        // x's suspicion is gone (no Alive was held: forgotten), and never
        // runs to down; a remaining member's suspicion is news again.
        assert!(m.liveness(&x.public()).is_none());
        assert_eq!(m.judge(&suspect(&x, &z, 0).rumour), Adopted::News);
        // w stays suspect on z's word alone, and runs to down.
        assert!(m.is_suspected(&w.public()));
        let (down, _) = m.expire(100_000, &cfg, |_, _| false);
        assert_eq!(down, vec![w.public()]);
        // Withdrawn where an Alive was held: alive again at it.
        let mut m = Membership::new(me.public(), incarnation_of_epoch(1));
        assert!(m.adopt(alive(&x, 7), 100, &cfg));
        assert!(m.adopt(suspect(&x, &y, 7), 110, &cfg));
        assert_eq!(m.withdraw_reporter(&y.public()), vec![x.public()]);
        let l = m.liveness(&x.public()).expect("held");
        assert_eq!((l.state, l.incarnation), (MemberState::Alive, 7));
        let (down, _) = m.expire(100_000, &cfg, |_, _| false);
        assert!(down.is_empty());
    }

    #[test]
    fn suspicion_times_out_to_down_unless_refuted() {
        let cfg = MembershipConfig::default();
        let (me, x, y) = (key(1), key(2), key(3));
        let mut m = Membership::new(me.public(), incarnation_of_epoch(1));
        let s = suspect(&x, &y, 0);
        assert_eq!(m.judge(&s.rumour), Adopted::News);
        assert!(m.adopt(s, 100, &cfg));
        assert_eq!(
            m.judge(&s.rumour),
            Adopted::Known,
            "the same suspicion twice"
        );
        // One reporter: the longest timeout (an echo comes half way).
        let t1 = cfg.suspicion_timeout(1);
        assert_eq!(t1, cfg.suspicion_timeout_max_ms);
        assert_eq!(m.next_deadline(), Some(100 + cfg.suspicion_timeout_ms / 2));
        assert_eq!(m.echoes_due(100 + cfg.suspicion_timeout_ms / 2), vec![s]);
        assert_eq!(m.next_deadline(), Some(100 + t1));
        let never = |_: &NodeId, _: Millis| false;
        assert!(m.expire(100 + t1 - 1, &cfg, never).0.is_empty());
        assert_eq!(m.expire(100 + t1, &cfg, never).0, vec![x.public()]);
        assert_eq!(m.liveness(&x.public()).unwrap().state, MemberState::Down);
        assert_eq!(m.suspicions(), vec![s]);
        // Another suspicion at the same incarnation changes nothing.
        assert_eq!(m.judge(&suspect(&x, &me, 0).rumour), Adopted::Known);
        // The subject's Alive at a higher incarnation lifts the down mark.
        let a = alive(&x, 1);
        assert_eq!(m.judge(&a.rumour), Adopted::News);
        assert!(m.adopt(a, 5_000, &cfg));
        let l = m.liveness(&x.public()).unwrap();
        assert_eq!(
            (l.state, l.incarnation, l.since),
            (MemberState::Alive, 1, 5_000)
        );
        assert!(m.suspicions().is_empty());
        // A replay of the old Alive or the old suspicion: nothing.
        assert_eq!(m.judge(&alive(&x, 0).rumour), Adopted::Known);
        assert_eq!(m.judge(&s.rumour), Adopted::Known);
        // A suspicion at the new incarnation: news again.
        assert_eq!(m.judge(&suspect(&x, &y, 1).rumour), Adopted::News);
    }

    #[test]
    fn confirmations_shorten_a_suspicion_to_its_minimum() {
        let cfg = MembershipConfig::default();
        let (me, x, y, z, w) = (key(1), key(2), key(3), key(4), key(5));
        let mut m = Membership::new(me.public(), 0);
        m.adopt(suspect(&x, &y, 0), 0, &cfg);
        assert_eq!(
            m.judge(&suspect(&x, &y, 0).rumour),
            Adopted::Known,
            "same reporter"
        );
        assert_eq!(
            m.judge(&suspect(&x, &z, 0).rumour),
            Adopted::News,
            "a confirmation"
        );
        m.adopt(suspect(&x, &z, 0), 10, &cfg);
        m.adopt(suspect(&x, &w, 0), 20, &cfg);
        assert_eq!(
            m.judge(&suspect(&x, &me, 0).rumour),
            Adopted::Known,
            "counted up to the bound only"
        );
        assert!(cfg.suspicion_timeout(2) < cfg.suspicion_timeout(1));
        assert_eq!(cfg.suspicion_timeout(3), cfg.suspicion_timeout_ms);
        let never = |_: &NodeId, _: Millis| false;
        assert!(
            m.expire(cfg.suspicion_timeout_ms - 1, &cfg, never)
                .0
                .is_empty()
        );
        assert_eq!(
            m.expire(cfg.suspicion_timeout_ms, &cfg, never).0,
            vec![x.public()]
        );
    }

    #[test]
    fn a_refutation_cancels_the_deadline() {
        let cfg = MembershipConfig::default();
        let (me, x, y) = (key(1), key(2), key(3));
        let mut m = Membership::new(me.public(), 0);
        m.adopt(suspect(&x, &y, 4), 0, &cfg);
        m.adopt(alive(&x, 5), 10, &cfg);
        assert_eq!(m.next_deadline(), None);
        assert!(m.expire(u64::MAX / 2, &cfg, |_, _| false).0.is_empty());
        assert_eq!(m.liveness(&x.public()).unwrap().state, MemberState::Alive);
    }

    #[test]
    fn a_node_refutes_suspicions_of_itself_and_reminds_of_old_ones() {
        let (me, y) = (key(1), key(3));
        let inc = incarnation_of_epoch(3);
        let mut m = Membership::new(me.public(), inc);
        assert_eq!(
            m.judge(&suspect(&me, &y, inc).rumour),
            Adopted::Refute(inc + 1)
        );
        m.set_own_alive(alive(&me, inc + 1));
        assert_eq!(m.incarnation(), inc + 1);
        assert_eq!(m.judge(&suspect(&me, &y, inc).rumour), Adopted::Remind);
        assert!(m.own_alive().is_some());
        // Its own Alive flooded back to it, or one of another instance on
        // the same key: known (no refutation loop; the driver raises).
        assert_eq!(m.judge(&alive(&me, inc + 1).rumour), Adopted::Known);
        assert_eq!(m.judge(&alive(&me, inc + 5).rumour), Adopted::Known);
        // A restart: a new epoch is above every refutation of the last one.
        m.raise_incarnation(incarnation_of_epoch(4));
        assert!(m.own_alive().is_none());
        assert_eq!(m.judge(&suspect(&me, &y, inc + 1).rumour), Adopted::Remind);
    }

    #[test]
    fn suspicion_at_the_known_incarnation_of_an_alive_member_is_news() {
        let cfg = MembershipConfig::default();
        let (me, x, y) = (key(1), key(2), key(3));
        let mut m = Membership::new(me.public(), 0);
        m.adopt(alive(&x, 9), 0, &cfg);
        assert_eq!(m.judge(&suspect(&x, &y, 9).rumour), Adopted::News);
        assert_eq!(m.judge(&suspect(&x, &y, 8).rumour), Adopted::Known);
        assert_eq!(m.counts(), (1, 0, 0));
        m.forget(&x.public());
        assert!(m.liveness(&x.public()).is_none());
    }
}
