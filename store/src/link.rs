//! Node-to-node authentication: every internal frame, request and reply, carries the sender's
//! and receiver's node ids, the sender's clock, a random nonce and an HMAC-SHA256 under the
//! key the two nodes share (`edgefabric_crypto::envelope::link_key`: static X25519 between
//! their node keys). A process without a member's node key cannot make a frame any node
//! accepts, so it can neither join raft nor speak in it, nor forward writes or reads; and a
//! node only believes replies made by the peer it asked.
//!
//! Keys: a peer's node key comes from the node's configuration (founders) or from the cluster
//! map in the metadata group (nodes added later, with the key the admin registered). Unknown
//! ids are refused.
//!
//! Replay: a frame is accepted only within `WINDOW` of the receiver's clock and only once (its
//! nonce is remembered for longer than the window). The nodes' clocks must agree to within
//! `WINDOW` (NTP does far better); a node whose clock is off is refused, and says so in its
//! log. A reply is bound to its request's nonce.
//!
//! What this does not give is confidentiality of the link: public data crosses it readable
//! (confidential data is sealed before it is proposed; site-local data stays on its site's
//! nodes) — TLS gives that (`edgefabric_crypto::tls`), and binds each connection to a member's
//! node key; these frames still authenticate every message on top of it, and stay the only
//! authentication when TLS is explicitly off.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use edgefabric_crypto::{Identity, PublicKey};
use ring::hmac;

use crate::network::Frame;
use crate::raft_store::NodeId;

/// How far a frame's time may be from the receiver's clock.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Looks a node's ed25519 key (base64, as the cluster map holds it) up by id: `None` while
/// there is no cluster map yet, `Some(None)` for a node the map does not list,
/// `Some(Some(key))` for a member (the key may be empty in maps written before keys were kept).
pub type Directory = Box<dyn Fn(NodeId) -> Option<Option<String>> + Send + Sync>;

/// A peer's node key as text, the link key derived with it, and the key's bytes.
type PeerLink = (String, hmac::Key, [u8; 32]);

pub struct LinkAuth {
    id: NodeId,
    identity: Arc<Identity>,
    /// Keys from the configuration (base64).
    configured: HashMap<NodeId, String>,
    directory: OnceLock<Directory>,
    /// Per peer: the key (base64) it was derived for, the link key and the key's bytes. Looked
    /// up per frame, so the key is compared as text: parsing it (a curve point decompression)
    /// is paid once.
    links: Mutex<HashMap<NodeId, PeerLink>>,
    seen: Mutex<Seen>,
}

/// Nonces of accepted frames, in two generations of `2 * WINDOW` each: a nonce is remembered
/// for at least `2 * WINDOW`, longer than any frame stays acceptable.
struct Seen {
    current: HashSet<(NodeId, u64)>,
    previous: HashSet<(NodeId, u64)>,
    since_ms: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("frame from node {0}, which is not a member this node knows a key for")]
    UnknownPeer(NodeId),
    #[error("frame meant for node {to}, this is node {me}")]
    WrongReceiver { to: NodeId, me: NodeId },
    #[error("frame authentication failed (not made with node {0}'s key)")]
    BadMac(NodeId),
    #[error("frame from node {from} is {skew_ms} ms off this node's clock (allowed: {window_ms} ms); check both clocks")]
    Stale { from: NodeId, skew_ms: i64, window_ms: u64 },
    #[error("frame from node {0} was already received (a replay)")]
    Replay(NodeId),
    #[error("reply does not answer this request")]
    NotOurReply,
    #[error("call ticket: expected <from>.<to>.<time_ms>.<nonce>.<hex mac>")]
    BadTicket,
    #[error("cannot derive the link key with node {0}: {1}")]
    Key(NodeId, String),
}

impl From<LinkError> for tonic::Status {
    fn from(e: LinkError) -> Self {
        tonic::Status::unauthenticated(e.to_string())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What an HMAC covers: the rpc, the link's direction, the clock, the nonce, the group and the
/// payload, each length-prefixed or fixed-size so no two frames share an input.
fn mac_input(ctx: &mut hmac::Context, rpc: &str, reply: bool, f: &Frame) {
    ctx.update(b"edgefabric-frame-v1\0");
    ctx.update(&(rpc.len() as u32).to_be_bytes());
    ctx.update(rpc.as_bytes());
    ctx.update(&[u8::from(reply)]);
    for n in [f.from, f.to, f.time_ms, f.nonce, f.group] {
        ctx.update(&n.to_be_bytes());
    }
    ctx.update(&(f.data.len() as u64).to_be_bytes());
    ctx.update(&f.data);
}

impl LinkAuth {
    pub fn new(id: NodeId, identity: Arc<Identity>, configured: HashMap<NodeId, String>) -> Self {
        LinkAuth {
            id,
            identity,
            configured,
            directory: OnceLock::new(),
            links: Mutex::new(HashMap::new()),
            seen: Mutex::new(Seen { current: HashSet::new(), previous: HashSet::new(), since_ms: now_ms() }),
        }
    }

    /// Sets where keys of nodes outside the configuration are found (once).
    pub fn set_directory(&self, d: Directory) {
        let _ = self.directory.set(d);
    }

    fn peer_key(&self, peer: NodeId) -> Option<String> {
        // Once there is a cluster map it is the one source of who is a member: a founder the
        // map no longer lists (removed) is refused even though its key is in the configuration.
        // Before the first map, the configuration's founders are the members.
        match self.directory.get().and_then(|d| d(peer)) {
            Some(Some(k)) if !k.is_empty() => Some(k),
            // Listed, by a map that kept no key for it: the configuration's key, if any.
            Some(Some(_)) => self.configured.get(&peer).cloned(),
            Some(None) => None,
            None => self.configured.get(&peer).cloned(),
        }
    }

    /// A peer's node key, as bytes (`None`: unknown, or not a key).
    pub fn peer_key_bytes(&self, peer: NodeId) -> Option<[u8; 32]> {
        self.peer(peer).ok().map(|(_, bytes)| bytes)
    }

    fn link(&self, peer: NodeId) -> Result<hmac::Key, LinkError> {
        self.peer(peer).map(|(link, _)| link)
    }

    /// The link key with `peer` and its node key's bytes, derived once per key the peer has.
    fn peer(&self, peer: NodeId) -> Result<(hmac::Key, [u8; 32]), LinkError> {
        let key = self.peer_key(peer).ok_or(LinkError::UnknownPeer(peer))?;
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, link, bytes)) = links.get(&peer) {
            if *k == key {
                return Ok((link.clone(), *bytes));
            }
        }
        let pk = PublicKey::from_base64(&key).map_err(|e| LinkError::Key(peer, e.to_string()))?;
        let secret = edgefabric_crypto::envelope::link_key(&self.identity, self.id, &pk, peer)
            .map_err(|e| LinkError::Key(peer, e.to_string()))?;
        let link = hmac::Key::new(hmac::HMAC_SHA256, secret.as_ref());
        let bytes = pk.to_bytes();
        links.insert(peer, (key, link.clone(), bytes));
        Ok((link, bytes))
    }

    fn sign(&self, rpc: &str, reply: bool, f: &mut Frame) -> Result<(), LinkError> {
        let key = self.link(f.to)?;
        let mut ctx = hmac::Context::with_key(&key);
        mac_input(&mut ctx, rpc, reply, f);
        f.mac = ctx.sign().as_ref().to_vec();
        Ok(())
    }

    fn check_mac(&self, rpc: &str, reply: bool, f: &Frame) -> Result<(), LinkError> {
        if f.to != self.id {
            return Err(LinkError::WrongReceiver { to: f.to, me: self.id });
        }
        let key = self.link(f.from)?;
        let mut ctx = hmac::Context::with_key(&key);
        mac_input(&mut ctx, rpc, reply, f);
        let want = ctx.sign();
        if !edgefabric_crypto::constant_time_eq(want.as_ref(), &f.mac) {
            return Err(LinkError::BadMac(f.from));
        }
        Ok(())
    }

    /// A request frame to `to` carrying `data`.
    pub fn request(&self, rpc: &str, to: NodeId, group: u64, data: Vec<u8>) -> Result<Frame, LinkError> {
        let nonce = u64::from_le_bytes(
            edgefabric_crypto::random_bytes::<8>().map_err(|e| LinkError::Key(to, e.to_string()))?,
        );
        let mut f = Frame { group, data, from: self.id, to, time_ms: now_ms(), nonce, mac: vec![] };
        self.sign(rpc, false, &mut f)?;
        Ok(f)
    }

    /// Checks a request: made by the member it names, for this node, fresh, and not seen before.
    pub fn accept(&self, rpc: &str, f: &Frame) -> Result<(), LinkError> {
        self.check_mac(rpc, false, f)?;
        let now = now_ms();
        let skew = now as i64 - f.time_ms as i64;
        let window = WINDOW.as_millis() as u64;
        if skew.unsigned_abs() > window {
            return Err(LinkError::Stale { from: f.from, skew_ms: skew, window_ms: window });
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_sub(seen.since_ms) > 2 * window {
            seen.previous = std::mem::take(&mut seen.current);
            seen.since_ms = now;
        }
        let id = (f.from, f.nonce);
        if seen.previous.contains(&id) || !seen.current.insert(id) {
            return Err(LinkError::Replay(f.from));
        }
        Ok(())
    }

    /// The reply to `req` (already accepted) carrying `data`.
    pub fn reply(&self, rpc: &str, req: &Frame, data: Vec<u8>) -> Result<Frame, LinkError> {
        let mut f = Frame {
            group: req.group,
            data,
            from: self.id,
            to: req.from,
            time_ms: now_ms(),
            nonce: req.nonce,
            mac: vec![],
        };
        self.sign(rpc, true, &mut f)?;
        Ok(f)
    }

    /// Checks a reply to the request sent to `to` with `nonce`: made by that peer, for it.
    pub fn accept_reply(&self, rpc: &str, to: NodeId, nonce: u64, f: &Frame) -> Result<(), LinkError> {
        if f.from != to || f.nonce != nonce {
            return Err(LinkError::NotOurReply);
        }
        self.check_mac(rpc, true, f)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// A call ticket for a request to `to`: `<from>.<to>.<time_ms>.<nonce>.<hex mac>`, sent as the
    /// `TICKET_HEADER` metadata. It lets the receiver refuse a call from a non-member by its
    /// headers, before the body (up to 64 MiB) is read and decoded (`check_ticket`). Over TLS the
    /// client certificate does that; the ticket is what bounds pre-authentication work when TLS
    /// is off. It is not replay-protected: whoever reads a plaintext link can reuse one within
    /// `WINDOW` — to make the node decode a body whose frame then fails its own MAC. The frame's
    /// MAC, window and nonce remain what authenticate the message itself.
    pub fn ticket(&self, to: NodeId) -> Result<String, LinkError> {
        let nonce = u64::from_le_bytes(
            edgefabric_crypto::random_bytes::<8>().map_err(|e| LinkError::Key(to, e.to_string()))?,
        );
        let time = now_ms();
        let mac = hmac::sign(&self.link(to)?, &ticket_input(self.id, to, time, nonce));
        Ok(format!("{}.{to}.{time}.{nonce}.{}", self.id, hex::encode(mac.as_ref())))
    }

    /// Checks a call ticket: made with the link key of the member it names, for this node, and
    /// within `WINDOW` of this node's clock.
    pub fn check_ticket(&self, ticket: &str) -> Result<NodeId, LinkError> {
        let parts: Vec<&str> = ticket.split('.').collect();
        let [from, to, time, nonce, mac] = parts.as_slice() else { return Err(LinkError::BadTicket) };
        let (Ok(from), Ok(to), Ok(time), Ok(nonce), Ok(mac)) = (
            from.parse::<NodeId>(),
            to.parse::<NodeId>(),
            time.parse::<u64>(),
            nonce.parse::<u64>(),
            hex::decode(mac),
        ) else {
            return Err(LinkError::BadTicket);
        };
        if to != self.id {
            return Err(LinkError::WrongReceiver { to, me: self.id });
        }
        let key = self.link(from)?;
        hmac::verify(&key, &ticket_input(from, to, time, nonce), &mac)
            .map_err(|_| LinkError::BadMac(from))?;
        let skew = now_ms() as i64 - time as i64;
        let window = WINDOW.as_millis() as u64;
        if skew.unsigned_abs() > window {
            return Err(LinkError::Stale { from, skew_ms: skew, window_ms: window });
        }
        Ok(from)
    }
}

/// The metadata header that carries a call ticket (`LinkAuth::ticket`).
pub const TICKET_HEADER: &str = "x-edgefabric-ticket";

fn ticket_input(from: NodeId, to: NodeId, time_ms: u64, nonce: u64) -> Vec<u8> {
    let mut v = b"edgefabric-ticket-v1\0".to_vec();
    for n in [from, to, time_ms, nonce] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn pair() -> (LinkAuth, LinkAuth) {
        let a = Arc::new(Identity::from_seed(&[1; 32]));
        let b = Arc::new(Identity::from_seed(&[2; 32]));
        let keys: HashMap<NodeId, String> =
            [(1, a.public_key().to_base64()), (2, b.public_key().to_base64())].into_iter().collect();
        (LinkAuth::new(1, a, keys.clone()), LinkAuth::new(2, b, keys))
    }

    #[test]
    fn call_tickets_name_a_member_and_this_node() {
        let (a, b) = pair();
        let t = a.ticket(2).unwrap();
        assert_eq!(b.check_ticket(&t), Ok(1));
        // For another node, altered, or malformed: refused.
        assert_eq!(a.check_ticket(&t), Err(LinkError::WrongReceiver { to: 2, me: 1 }));
        let mut bad = t.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(b.check_ticket(std::str::from_utf8(&bad).unwrap()), Err(LinkError::BadMac(1)));
        let later = t.replacen(&format!(".{}.", t.split('.').nth(2).unwrap()), ".1.", 1);
        assert_eq!(b.check_ticket(&later), Err(LinkError::BadMac(1)), "the time is covered");
        for junk in ["", "1.2.3", "x.2.3.4.00", "1.2.3.4.zz", "9.2.3.4.00"] {
            assert!(b.check_ticket(junk).is_err(), "{junk}");
        }
        assert_eq!(b.check_ticket("9.2.3.4.00"), Err(LinkError::UnknownPeer(9)));
    }

    #[test]
    fn frames_verify_once_between_the_right_nodes_only() {
        let (a, b) = pair();
        let req = a.request("vote", 2, 7, b"hello".to_vec()).unwrap();
        b.accept("vote", &req).unwrap();
        // Replayed: refused.
        assert_eq!(b.accept("vote", &req), Err(LinkError::Replay(1)));
        // The reply is bound to its request and its sender.
        let rep = b.reply("vote", &req, b"ok".to_vec()).unwrap();
        a.accept_reply("vote", 2, req.nonce, &rep).unwrap();
        let other = a.request("vote", 2, 7, b"hello".to_vec()).unwrap();
        assert_eq!(a.accept_reply("vote", 2, other.nonce, &rep), Err(LinkError::NotOurReply));
        // Any change to what the MAC covers is caught.
        for change in 0..5 {
            let mut f = a.request("vote", 2, 7, b"hello".to_vec()).unwrap();
            match change {
                0 => f.data[0] ^= 1,
                1 => f.group += 1,
                2 => f.time_ms += 1,
                3 => f.nonce ^= 1,
                _ => f.mac[0] ^= 1,
            }
            assert_eq!(b.accept("vote", &f), Err(LinkError::BadMac(1)), "change {change}");
        }
        // Another rpc's frame is not this rpc's.
        let f = a.request("read", 2, 7, b"hello".to_vec()).unwrap();
        assert_eq!(b.accept("forward", &f), Err(LinkError::BadMac(1)));
        // Meant for another node.
        let f = a.request("vote", 2, 7, vec![]).unwrap();
        assert!(matches!(a.accept("vote", &f), Err(LinkError::WrongReceiver { .. })));
    }

    #[test]
    fn an_outsider_or_an_old_frame_is_refused() {
        let (a, b) = pair();
        // A process with a key the cluster does not know, claiming to be node 1.
        let keys: HashMap<NodeId, String> =
            [(2, Identity::from_seed(&[2; 32]).public_key().to_base64())].into();
        let outsider = LinkAuth::new(1, Arc::new(Identity::from_seed(&[9; 32])), keys);
        let f = outsider.request("append_entries", 2, 1, b"entries".to_vec()).unwrap();
        assert_eq!(b.accept("append_entries", &f), Err(LinkError::BadMac(1)));
        // An id nobody registered.
        let mut f = a.request("vote", 2, 1, vec![]).unwrap();
        f.from = 9;
        assert_eq!(b.accept("vote", &f), Err(LinkError::UnknownPeer(9)));
        // Signed correctly but from a clock far off.
        let mut f = a.request("vote", 2, 1, vec![]).unwrap();
        f.time_ms -= 60_000;
        a.sign("vote", false, &mut f).unwrap();
        assert!(matches!(b.accept("vote", &f), Err(LinkError::Stale { .. })));
        // Keys from the directory (the cluster map) count too.
        let c_id = Arc::new(Identity::from_seed(&[3; 32]));
        let c_key = c_id.public_key().to_base64();
        b.set_directory(Box::new(move |id| Some((id == 3).then(|| c_key.clone()))));
        let c = LinkAuth::new(3, c_id, [(2, Identity::from_seed(&[2; 32]).public_key().to_base64())].into());
        b.accept("vote", &c.request("vote", 2, 1, vec![]).unwrap()).unwrap();
    }

    /// Once a cluster map exists, a founder it no longer lists is no member, although its key
    /// is still in every founder's configuration (found by a hostile review of issue 18).
    #[test]
    fn a_founder_removed_from_the_map_is_refused() {
        let (a, b) = pair();
        // No map yet: the configuration's founders.
        let no_map = Arc::new(AtomicBool::new(true));
        let flag = no_map.clone();
        let b_key = Identity::from_seed(&[2; 32]).public_key().to_base64();
        b.set_directory(Box::new(move |id| {
            if flag.load(Ordering::SeqCst) {
                None
            } else {
                // The map lists node 2 only: node 1 was removed.
                Some((id == 2).then(|| b_key.clone()))
            }
        }));
        b.accept("vote", &a.request("vote", 2, 1, vec![]).unwrap()).unwrap();
        let ticket = a.ticket(2).unwrap();
        b.check_ticket(&ticket).unwrap();
        no_map.store(false, Ordering::SeqCst);
        assert_eq!(
            b.accept("vote", &a.request("vote", 2, 1, vec![]).unwrap()),
            Err(LinkError::UnknownPeer(1))
        );
        assert!(b.check_ticket(&a.ticket(2).unwrap()).is_err(), "its call tickets are refused too");
        assert_eq!(b.peer_key_bytes(1), None, "and its TLS certificate matches no member");
    }
}
