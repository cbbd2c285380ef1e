//! Quiet groups: an idle raft group stops ticking, so a node with a thousand idle shards does
//! not send a thousand groups' heartbeats (as CockroachDB quiesces idle ranges and TiKV
//! hibernates idle regions).
//!
//! How a group goes quiet. Once a second this node's loop looks at the groups it leads. One
//! whose log has not moved for [`IDLE`], whose every entry is applied here and matched by every
//! follower and learner, whose members all answer pings and are all recorded as having
//! replicated it (`MarkSeen`), and whose membership is not joint, goes quiet: the leader turns
//! its raft ticker off (no heartbeats, no timers) and asks each follower, in one `Quiesce` call
//! per peer (from its own task, with a short timeout, one round at a time), to do the same. A
//! follower agrees only if the caller is the group's leader in the term given and its own log
//! ends, applied, at the index given; otherwise the leader wakes the group again.
//!
//! What wakes a group (raft ticking again, heartbeats and election timers as before):
//! - on the leader: a proposal or membership change made here ([`Group::wake`]); its log moving
//!   for any other reason (checked every third `heartbeat`); losing leadership;
//! - on a follower: an append carrying entries, or any message from another leader or term
//!   (a heartbeat of the same leader, as a linearizable read sends, keeps it quiet); a vote it
//!   grants (not one it refuses: a stale candidate must not wake followers into campaigning);
//!   a snapshot; a different leader or term in raft's view (`server_metrics`); a forwarded
//!   write or read-index call to the leader that gets no answer; a `Wake` from the leader whose
//!   raft stopped for the group (its node still pings, so silence would never show it);
//! - the leader's node falling silent: every node sends each peer a small authenticated `Ping`
//!   every two `heartbeat`s, and a follower that has not heard from its quiet group's leader
//!   (any request from it counts) for `election_timeout_max` wakes the group (after a random
//!   part of the election timeout's spread, so its followers do not all campaign at once),
//!   which campaigns at its next tick (its election timer ran out long ago). Only what the
//!   peer *sent* counts (not its answers), so a node whose outgoing links are cut is seen as
//!   gone, as raft's own heartbeats would show;
//! - a peer restarting (its ping carries a boot nonce): the quiet groups this node leads with
//!   it as a member wake, so the restarted follower gets heartbeats before its election timer
//!   runs out, and those it led wake here, so their followers elect a new leader.
//!
//! Safety does not depend on any of this: quiescence only switches raft's timers off and on
//! (`Raft::runtime_config().tick`), never its votes or its log. A group that stays quiet too
//! long is only unavailable until it wakes; a group woken too early only heartbeats.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{ServerState, Vote};

use crate::error::{Error, Result};
use crate::log::GroupId;
use crate::network::call;
use crate::node::{Group, Node};
use crate::raft_store::NodeId;

static RESTARTS: crate::node::LogBudget = crate::node::LogBudget::new();

/// How long a group's log must stand still before its leader quiets it.
pub const IDLE: Duration = Duration::from_secs(2);

/// A replica's quiescence, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    /// Quiet as the leader, with the log ending at `index`.
    Leader {
        index: u64,
    },
    /// Quiet as a follower of `leader` in `term`.
    Follower {
        leader: NodeId,
        term: u64,
    },
}

/// Per-group quiescence state (held by [`Group`]).
pub(crate) struct Quiet {
    /// `state != Active`, readable without the lock on the write path.
    quiet: AtomicBool,
    state: Mutex<State>,
    /// The last log index the idle check saw, and since when it has not moved.
    idle: Mutex<(Option<u64>, Instant)>,
}

impl Default for Quiet {
    fn default() -> Self {
        Quiet {
            quiet: AtomicBool::new(false),
            state: Mutex::new(State::Active),
            idle: Mutex::new((None, Instant::now())),
        }
    }
}

impl Quiet {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Group {
    pub fn is_quiet(&self) -> bool {
        self.quiet.quiet.load(Ordering::Acquire)
    }

    /// Makes the group tick again (a no-op when it is active). Cheap when active: one load.
    pub(crate) fn wake(&self) {
        if !self.is_quiet() {
            return;
        }
        let mut s = self.quiet.lock();
        if *s != State::Active {
            *s = State::Active;
            self.quiet.quiet.store(false, Ordering::Release);
            *self.quiet.idle.lock().unwrap_or_else(|p| p.into_inner()) = (None, Instant::now());
            self.raft.runtime_config().tick(true);
            tracing::debug!(group = self.id, "group woke");
        }
    }

    /// An append arrived for this replica: a quiet follower stays quiet only for a heartbeat
    /// (no entries) of the leader and term it went quiet under.
    pub(crate) fn on_append(&self, vote: &Vote<NodeId>, has_entries: bool) {
        if !self.is_quiet() {
            return;
        }
        let keep = match *self.quiet.lock() {
            State::Follower { leader, term } => {
                !has_entries
                    && vote.is_committed()
                    && vote.leader_id().voted_for() == Some(leader)
                    && vote.leader_id().get_term() == term
            }
            _ => false,
        };
        if !keep {
            self.wake();
        }
    }

    /// raft's view changed (`server_metrics`): a quiet follower whose leader or term is no
    /// longer the one it went quiet under wakes.
    pub(crate) fn on_view(&self, leader: Option<NodeId>, term: u64) {
        if !self.is_quiet() {
            return;
        }
        let stale = match *self.quiet.lock() {
            State::Follower { leader: l, term: t } => leader != Some(l) || term != t,
            State::Leader { .. } => false,
            State::Active => false,
        };
        if stale {
            self.wake();
        }
    }

    /// Quiets this replica if it still is what the check saw. Returns whether it did.
    fn quiet_as(&self, state: State) -> bool {
        let mut s = self.quiet.lock();
        if *s != State::Active {
            return false;
        }
        self.raft.runtime_config().tick(false);
        *s = state;
        self.quiet.quiet.store(true, Ordering::Release);
        true
    }

    fn quiet_state(&self) -> State {
        *self.quiet.lock()
    }
}

/// One group a leader asks a follower to quiet: (group, term, last log index).
pub type QuiesceItem = (GroupId, u64, u64);

/// What this node knows of each peer's liveness.
#[derive(Default)]
struct PeerLive {
    addr: String,
    /// When the peer last sent this node an authenticated request (any internal call).
    heard: Option<Instant>,
    /// The peer's boot nonce (changes with every start of its process).
    boot: Option<u64>,
    /// Seen silent for longer than the election timeout (and not heard since).
    silent: bool,
    /// When a restart of it was last acted on (a member sending a new boot nonce with every
    /// ping must not make this node scan its groups every time).
    restarted: Option<Instant>,
    /// A ping to it is out (a cut peer's takes up to its timeout).
    pinging: bool,
}

/// The node-level liveness that quiet groups rely on instead of their own heartbeats.
pub(crate) struct Liveness {
    /// Random per process start.
    boot: u64,
    peers: Mutex<HashMap<NodeId, PeerLive>>,
    /// A round of `Quiesce` asks is out.
    asking: AtomicBool,
}

impl Liveness {
    pub(crate) fn new() -> Self {
        let mut b = [0u8; 8];
        // Only needs to differ between starts; the clock is the fallback.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
            b = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64))
            .to_le_bytes();
        }
        Liveness {
            boot: u64::from_le_bytes(b),
            peers: Mutex::new(HashMap::new()),
            asking: AtomicBool::new(false),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, PeerLive>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An authenticated request from `peer` arrived.
    pub(crate) fn heard(&self, peer: NodeId) {
        if let Some(p) = self.peers().get_mut(&peer) {
            p.heard = Some(Instant::now());
            p.silent = false;
        }
    }

    /// Records `peer`'s boot nonce (from its ping, or its answer to ours); true if it changed:
    /// the peer restarted.
    fn boot_of(&self, peer: NodeId, boot: u64, at_most_every: Duration) -> bool {
        let mut peers = self.peers();
        let Some(p) = peers.get_mut(&peer) else { return false };
        let restarted =
            p.boot.is_some_and(|b| b != boot) && p.restarted.is_none_or(|t| t.elapsed() >= at_most_every);
        if restarted {
            p.restarted = Some(Instant::now());
        }
        p.boot = Some(boot);
        restarted
    }
}

impl Node {
    /// Every `heartbeat`: wake groups whose leader fell silent; every other: ping peers; every
    /// third: wake quiet leaders whose log moved; every second:
    /// quiet idle groups this node leads, and check every quiet group against raft's view.
    pub(crate) async fn quiesce_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut tick = tokio::time::interval(self.opts.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let per_pass = (Duration::from_secs(1).as_millis() / self.opts.heartbeat.as_millis().max(1)).max(1);
        let mut n: u128 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            // The first pass runs at once: it learns the peers, and a restarted node's first
            // ping is what wakes the quiet groups it follows before its election timer runs out.
            if n.is_multiple_of(per_pass) {
                self.quiesce_pass().await;
            }
            if n.is_multiple_of(2) {
                self.ping_peers();
            }
            self.wake_for_silent_peers();
            // A quiet leader's log moving without a wake (a proposal that raced the quieting)
            // is rare, and its followers' timers need well over a second to run out.
            if n.is_multiple_of(3) {
                self.check_quiet_leaders();
            }
            n += 1;
        }
    }

    /// Sends `Ping` to each peer (one out at a time per peer). Its answer only carries the
    /// peer's boot nonce: liveness counts what a peer sends, and the peer's own pings to this
    /// node are what show it alive here.
    fn ping_peers(self: &Arc<Self>) {
        let due: Vec<(NodeId, String)> = self
            .liveness
            .peers()
            .iter_mut()
            .filter(|(_, p)| !p.pinging)
            .map(|(id, p)| {
                p.pinging = true;
                (*id, p.addr.clone())
            })
            .collect();
        for (id, addr) in due {
            let n = self.clone();
            tokio::spawn(async move {
                if let Ok(peer) = n.channels.client(id, &addr) {
                    let r = call::<_, u64, Error, _, _>(
                        peer,
                        0,
                        &n.liveness.boot,
                        n.opts.election_timeout_min,
                        "ping",
                        |mut c, f| async move { c.ping(f).await },
                    )
                    .await;
                    if let Ok(Ok(boot)) = r {
                        if n.liveness.boot_of(id, boot, n.opts.election_timeout_max) {
                            n.peer_restarted(id);
                        }
                    }
                }
                if let Some(p) = n.liveness.peers().get_mut(&id) {
                    p.pinging = false;
                }
            });
        }
    }

    /// The `Ping` handler: `boot` is the caller's boot nonce; answers with this node's.
    pub(crate) fn on_ping(&self, from: NodeId, boot: u64) -> u64 {
        self.liveness.heard(from);
        if self.liveness.boot_of(from, boot, self.opts.election_timeout_max) {
            self.peer_restarted(from);
        }
        self.liveness.boot
    }

    /// Wakes the quiet groups this node leads with `peer` as a member (so the restarted peer
    /// gets heartbeats again before its election timer runs out) and those `peer` led (its
    /// followers elect). Not the groups where both are followers: waking a follower of a quiet
    /// leader would start an election for nothing.
    fn peer_restarted(&self, peer: NodeId) {
        if let Some(suppressed) = RESTARTS.allow() {
            tracing::info!(
                peer,
                suppressed,
                "peer restarted: waking the quiet groups it shares with this node"
            );
        }
        for g in self.all_groups() {
            let wake = match g.quiet_state() {
                State::Active => false,
                State::Follower { leader, .. } => leader == peer,
                State::Leader { .. } => {
                    g.raft.metrics().borrow().membership_config.membership().get_node(&peer).is_some()
                }
            };
            if wake {
                g.wake();
            }
        }
    }

    /// Wakes quiet groups led by a peer not heard from for `election_timeout_max` (pings go
    /// every two heartbeats, so that is several missed in a row: a false alarm costs an
    /// election, since a woken follower of a quiet leader hears no heartbeats).
    fn wake_for_silent_peers(&self) {
        let now = Instant::now();
        let silent: Vec<NodeId> = {
            let mut peers = self.liveness.peers();
            peers
                .iter_mut()
                .filter(|(_, p)| {
                    !p.silent
                        && p.heard.is_none_or(|t| now.duration_since(t) > self.opts.election_timeout_max)
                })
                .map(|(id, p)| {
                    p.silent = true;
                    *id
                })
                .collect()
        };
        if silent.is_empty() {
            return;
        }
        // Every follower of a silent leader notices at about the same time, and a woken one
        // campaigns at its first tick (its election timer ran out long ago): waking them all at
        // once would split the vote. Each waits a random part of the election timeout's spread
        // first, as raft's randomized timeouts would have spread them.
        let spread = self.opts.election_timeout_max.saturating_sub(self.opts.election_timeout_min);
        let mut woken = 0usize;
        for g in self.all_groups() {
            if let State::Follower { leader, .. } = g.quiet_state() {
                if silent.contains(&leader) {
                    woken += 1;
                    let delay = spread.mul_f64(jitter());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        g.wake();
                    });
                }
            }
        }
        if woken > 0 {
            tracing::info!(groups = woken, peers = ?silent, "quiet groups' leader fell silent: waking them");
        }
    }

    /// A quiet leader whose log moved (a proposal that raced the quiescing, a membership
    /// change) or that lost leadership wakes at once, before any follower's timer could run out.
    fn check_quiet_leaders(self: &Arc<Self>) {
        let me = self.opts.id;
        // Quiet groups whose raft stopped here (a storage error, say): their followers, quiet,
        // would go on hearing this node's pings and never elect; they are told to wake.
        let mut stopped: BTreeMap<NodeId, Vec<GroupId>> = BTreeMap::new();
        {
            // Under the groups' read lock, without copying the list: this runs often, over
            // every hosted group.
            let groups = self.groups_read();
            for g in groups.values() {
                if !g.is_quiet() {
                    continue;
                }
                if let State::Leader { index } = g.quiet_state() {
                    let (moved, dead, followers) = {
                        let m = g.raft.metrics();
                        let m = m.borrow();
                        let dead = m.running_state.is_err() || m.state == ServerState::Shutdown;
                        let followers: Vec<NodeId> = if dead {
                            m.membership_config
                                .membership()
                                .nodes()
                                .map(|(id, _)| *id)
                                .filter(|id| *id != me)
                                .collect()
                        } else {
                            vec![]
                        };
                        (m.state != ServerState::Leader || m.last_log_index != Some(index), dead, followers)
                    };
                    if moved || dead {
                        g.wake();
                    }
                    for f in followers {
                        stopped.entry(f).or_default().push(g.id);
                    }
                }
            }
        }
        for (peer, groups) in stopped {
            let addr = self.liveness.peers().get(&peer).map(|p| p.addr.clone());
            let Some(addr) = addr else { continue };
            let n = self.clone();
            tokio::spawn(async move {
                tracing::warn!(
                    peer,
                    groups = groups.len(),
                    "raft stopped for quiet groups led here: telling the followers to wake"
                );
                if let Ok(client) = n.channels.client(peer, &addr) {
                    let _ = call::<_, (), Error, _, _>(
                        client,
                        0,
                        &groups,
                        n.opts.election_timeout_min,
                        "wake",
                        |mut c, f| async move { c.wake(f).await },
                    )
                    .await;
                }
            });
        }
    }

    /// The `Wake` handler: the groups `from` led quietly and can no longer lead wake here.
    pub(crate) fn on_wake(&self, from: NodeId, groups: &[GroupId]) -> Result<()> {
        if groups.len() > self.groups_read().len() {
            return Err(Error::invalid("wake", "more groups named than this node hosts"));
        }
        for id in groups {
            if let Some(g) = self.group(*id) {
                if matches!(g.quiet_state(), State::Follower { leader, .. } if leader == from) {
                    g.wake();
                }
            }
        }
        Ok(())
    }

    /// Refreshes the peer list, checks quiet followers against raft's view, and quiets the
    /// idle groups this node leads.
    async fn quiesce_pass(self: &Arc<Self>) {
        let me = self.opts.id;
        let now = Instant::now();
        // Peers heard from lately: a group with a member that is not answering stays awake
        // (asking it would only wait, and its replica may need the group's heartbeats).
        let responsive: std::collections::BTreeSet<NodeId> = self
            .liveness
            .peers()
            .iter()
            .filter(|(_, p)| p.heard.is_some_and(|t| now.duration_since(t) <= self.opts.election_timeout_min))
            .map(|(id, _)| *id)
            .collect();
        // One round of asks at a time (they run in their own task, so this loop's pings and
        // silence checks never wait on a slow peer).
        let may_quiet = !self.liveness.asking.load(Ordering::Acquire);
        let mut members: BTreeMap<NodeId, String> = BTreeMap::new();
        let mut asks: BTreeMap<NodeId, Vec<QuiesceItem>> = BTreeMap::new();
        let mut quieted: Vec<(Arc<Group>, Vec<NodeId>)> = vec![];
        for g in self.all_groups() {
            let (candidate, followers, term, index) = {
                let m = g.raft.metrics();
                let m = m.borrow();
                let membership = m.membership_config.membership();
                for (id, node) in membership.nodes() {
                    if *id != me && !members.contains_key(id) {
                        members.insert(*id, node.addr.clone());
                    }
                }
                if let State::Follower { leader, term } = g.quiet_state() {
                    if m.current_leader != Some(leader) || m.current_term != term || !following(m.state) {
                        g.wake();
                    }
                    continue;
                }
                if g.is_quiet() || m.state != ServerState::Leader || g.is_rejoining() {
                    continue;
                }
                let index = m.last_log_index;
                let mut idle = g.quiet.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.0 != index {
                    *idle = (index, now);
                    continue;
                }
                let settled = may_quiet
                    && now.duration_since(idle.1) >= IDLE
                    && index.is_some()
                    && membership.nodes().all(|(id, _)| *id == me || responsive.contains(id))
                    && m.last_applied.map(|l| l.index) == index
                    && membership.get_joint_config().len() == 1
                    && m.replication.as_ref().is_some_and(|rep| {
                        membership.nodes().filter(|(id, _)| **id != me).all(|(id, _)| {
                            rep.get(id).is_some_and(|matched| matched.map(|l| l.index) == index)
                        })
                    });
                let followers: Vec<NodeId> =
                    membership.nodes().map(|(id, _)| *id).filter(|id| *id != me).collect();
                (settled, followers, m.current_term, index.unwrap_or(0))
            };
            // Every member must be recorded as having replicated the group (`MarkSeen`, which
            // data-loss detection relies on) before it goes quiet: the reconcile pass does not
            // record members of quiet groups.
            let seen = candidate && {
                let applied = g.raft.metrics().borrow().last_applied.map(|l| l.index);
                let seen = g.seen(applied);
                followers.iter().chain(std::iter::once(&me)).all(|id| seen.iter().any(|(s, _)| s == id))
            };
            if !seen {
                continue;
            }
            if !g.quiet_as(State::Leader { index }) {
                continue;
            }
            for f in &followers {
                asks.entry(*f).or_default().push((g.id, term, index));
            }
            quieted.push((g, followers));
        }
        {
            let mut peers = self.liveness.peers();
            peers.retain(|id, _| members.contains_key(id));
            for (id, addr) in &members {
                let p = peers.entry(*id).or_default();
                if p.heard.is_none() {
                    // Not heard from yet: count from now, not from never.
                    p.heard = Some(now);
                }
                p.addr.clone_from(addr);
            }
        }
        if asks.is_empty() {
            return;
        }
        self.liveness.asking.store(true, Ordering::Release);
        let n = self.clone();
        tokio::spawn(async move {
            n.ask_to_quiesce(asks, members, quieted).await;
            n.liveness.asking.store(false, Ordering::Release);
        });
    }

    /// Asks each follower peer once, for all its groups; a group stays quiet only if every
    /// follower of it agreed within a short timeout.
    async fn ask_to_quiesce(
        self: &Arc<Self>,
        asks: BTreeMap<NodeId, Vec<QuiesceItem>>,
        members: BTreeMap<NodeId, String>,
        quieted: Vec<(Arc<Group>, Vec<NodeId>)>,
    ) {
        let timeout = self.opts.election_timeout_min;
        let calls = asks.into_iter().map(|(peer, items)| {
            let n = self.clone();
            let addr = members.get(&peer).cloned().unwrap_or_default();
            async move {
                let answer = match n.channels.client(peer, &addr) {
                    Ok(client) => call::<_, Vec<bool>, Error, _, _>(
                        client,
                        0,
                        &items,
                        timeout,
                        "quiesce",
                        |mut c, f| async move { c.quiesce(f).await },
                    )
                    .await
                    .ok()
                    .and_then(|r| r.ok()),
                    Err(_) => None,
                };
                let answer =
                    answer.filter(|a| a.len() == items.len()).unwrap_or_else(|| vec![false; items.len()]);
                (
                    peer,
                    items.into_iter().zip(answer).filter(|(_, ok)| !ok).map(|(i, _)| i.0).collect::<Vec<_>>(),
                )
            }
        });
        let refused: Vec<(NodeId, Vec<GroupId>)> = futures::future::join_all(calls).await;
        let refused: std::collections::BTreeSet<GroupId> =
            refused.into_iter().flat_map(|(_, gs)| gs).collect();
        let mut quiet = 0;
        for (g, _) in quieted {
            if refused.contains(&g.id) {
                g.wake();
            } else {
                quiet += 1;
            }
        }
        if quiet > 0 {
            tracing::debug!(groups = quiet, "quieted idle groups");
        }
    }

    /// The `Quiesce` handler (on a follower): for each item, quiets the group if `from` leads
    /// it in that term and this replica's log ends at that index.
    pub(crate) fn on_quiesce(&self, from: NodeId, items: &[QuiesceItem]) -> Result<Vec<bool>> {
        let hosted = self.groups_read().len();
        if items.len() > hosted {
            return Err(Error::invalid(
                "quiesce",
                format!("{} groups named, but this node hosts {hosted}", items.len()),
            ));
        }
        Ok(items
            .iter()
            .map(|&(group, term, index)| {
                let Some(g) = self.group(group) else { return false };
                if g.is_rejoining() {
                    return false;
                }
                let agrees = {
                    let m = g.raft.metrics();
                    let m = m.borrow();
                    following(m.state)
                        && m.current_leader == Some(from)
                        && m.current_term == term
                        && m.last_log_index == Some(index)
                        // Applied too: the entry that carries the final commit index is sent
                        // once, and a quiet group sends no heartbeat to make up for its loss.
                        && m.last_applied.map(|l| l.index) == Some(index)
                };
                agrees
                    && (g.quiet_as(State::Follower { leader: from, term })
                        || g.quiet_state() == State::Follower { leader: from, term })
            })
            .collect())
    }

    /// Quiet groups among those hosted here (for `/metrics`).
    pub fn quiet_groups(&self) -> usize {
        self.all_groups().iter().filter(|g| g.is_quiet()).count()
    }
}

/// A replica that follows a leader: a voter, or a learner (which has no election timer, but
/// quieting it lets the group it is in go quiet).
fn following(state: ServerState) -> bool {
    matches!(state, ServerState::Follower | ServerState::Learner)
}

/// A uniform draw from [0, 1) (not secret: it only spreads elections out).
fn jitter() -> f64 {
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(l: &Liveness, peer: NodeId) {
        l.peers().insert(peer, PeerLive { addr: "127.0.0.1:1".into(), ..Default::default() });
    }

    #[test]
    fn a_new_boot_nonce_is_a_restart_once_per_window_and_only_for_a_known_peer() {
        let l = Liveness::new();
        let window = Duration::from_secs(60);
        // A node outside the membership (not in the peer list) is never recorded.
        assert!(!l.boot_of(9, 1, window));
        assert!(l.peers().get(&9).is_none());
        known(&l, 2);
        assert!(!l.boot_of(2, 1, window), "the first nonce seen is not a restart");
        assert!(!l.boot_of(2, 1, window), "the same nonce again is not a restart");
        assert!(l.boot_of(2, 2, window), "a different nonce is");
        // A member sending a new nonce with every ping is acted on once per window.
        assert!(!l.boot_of(2, 3, window));
        assert!(!l.boot_of(2, 4, window));
        assert_eq!(l.peers()[&2].boot, Some(4), "the latest nonce is kept");
        assert!(l.boot_of(2, 5, Duration::ZERO), "past the window it counts again");
    }

    #[test]
    fn hearing_from_a_peer_clears_its_silence_and_strangers_are_ignored() {
        let l = Liveness::new();
        known(&l, 2);
        l.peers().get_mut(&2).unwrap().silent = true;
        l.heard(2);
        let (silent, heard) = {
            let peers = l.peers();
            (peers[&2].silent, peers[&2].heard.is_some())
        };
        assert!(!silent && heard);
        l.heard(7);
        assert!(l.peers().get(&7).is_none(), "a request from a non-member adds no peer");
    }

    #[test]
    fn jitter_is_a_fraction() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
        let distinct: std::collections::BTreeSet<u64> = (0..20).map(|_| jitter().to_bits()).collect();
        assert!(distinct.len() > 1, "jitter must vary");
    }

    #[test]
    fn boot_nonces_differ_between_starts() {
        assert_ne!(Liveness::new().boot, Liveness::new().boot);
    }
}
