//! TLS listeners: TCP connections accepted here, handshakes run concurrently (each bounded in
//! time, and in number), and finished TLS streams handed to axum (REST) or tonic (gRPC). The
//! certificates and the client-certificate policy come from `edgefabric_crypto::tls`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The longest a client may take to finish its handshake, counted from its accept (waiting for
/// its source's turn included); a slow one must not hold a slot. A TLS 1.3 handshake is one
/// round trip plus the certificates, so even a slow uplink takes well under a second.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes run at once for one source (an IPv4 address, an IPv6 /64); the source's other
/// new connections wait their turn. So one host opening idle connections only delays its own
/// handshakes, and a client host opening hundreds at once (a load generator, a NAT) is served
/// a few at a time, milliseconds each.
const HANDSHAKES_PER_SOURCE: usize = 8;
/// New connections one source may have waiting or in handshake; past it, its connections are
/// closed at once (the client retries).
const PENDING_PER_SOURCE: usize = 512;
/// New connections waiting or in handshake at once per listener, from all sources: the work a
/// node does for connections that have not yet proven anything is bounded. The accept loop
/// itself never stops, so nobody can make the listener deaf by holding connections open.
const PENDING_TOTAL: usize = 4096;

/// The source a connection is counted under: IPv4 address, or the /64 an IPv6 host can pick
/// its addresses from.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// New connections not yet through their handshake, in all and per source (with the source's
/// handshake turns).
#[derive(Default)]
struct Pending {
    total: usize,
    by_source: HashMap<IpAddr, (usize, Arc<Semaphore>)>,
}

/// One new connection's place; given back when dropped.
struct Slot {
    pending: Arc<Mutex<Pending>>,
    source: IpAddr,
    turns: Arc<Semaphore>,
}

impl Slot {
    fn take(pending: &Arc<Mutex<Pending>>, addr: &SocketAddr) -> Option<Slot> {
        let source = source_of(addr.ip());
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.total >= PENDING_TOTAL {
            return None;
        }
        let (n, turns) =
            p.by_source.entry(source).or_insert_with(|| (0, Arc::new(Semaphore::new(HANDSHAKES_PER_SOURCE))));
        if *n >= PENDING_PER_SOURCE {
            return None;
        }
        *n += 1;
        let turns = turns.clone();
        p.total += 1;
        Some(Slot { pending: pending.clone(), source, turns })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.total = p.total.saturating_sub(1);
        if let Some((n, _)) = p.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                p.by_source.remove(&self.source);
            }
        }
    }
}

/// Accepts on `listener`, runs the TLS handshakes, and yields the finished connections. The
/// accept task ends when the receiver is dropped.
pub fn accept(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let pending = Arc::new(Mutex::new(Pending::default()));
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(slot) = Slot::take(&pending, &addr) else {
                tracing::debug!(peer = %addr, "too many new connections waiting for a handshake; closed");
                drop(tcp);
                continue;
            };
            // No Nagle: raft and client replies are small, and Nagle with delayed ACKs adds ~40 ms.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = async {
                    let _turn = slot.turns.acquire().await;
                    acceptor.accept(tcp).await
                };
                let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
                drop(slot);
                match done {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, addr)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %addr, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// A TLS listener for `axum::serve`.
pub struct Listener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl Listener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Listener { rx: accept(listener, config), local })
    }
}

impl axum::serve::Listener for Listener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The finished connections as the stream tonic serves.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    let rx = accept(listener, config);
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|(s, _)| (Ok(s), rx)) })
}

/// The address a REST request came from, for rate limits (`axum::extract::ConnectInfo`), over
/// TLS or plaintext alike.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, PlainListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// The address a REST request came from, from its extensions (absent when the router runs
/// without connection info, as in unit tests).
pub fn peer_ip(ext: &axum::http::Extensions) -> Option<IpAddr> {
    ext.get::<axum::extract::ConnectInfo<PeerAddr>>().map(|c| c.0 .0.ip())
}

/// A plaintext REST listener (`[tls] enabled = false`, `--dev`): TCP with no Nagle.
pub struct PlainListener(pub TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        // No Nagle: replies are small, and Nagle with delayed ACKs adds ~40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        (tcp, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_hosts_and_ipv6_prefixes() {
        let at = |s: &str| source_of(s.parse::<SocketAddr>().unwrap().ip());
        assert_eq!(at("10.0.0.7:1"), at("10.0.0.7:2"));
        assert_ne!(at("10.0.0.7:1"), at("10.0.0.8:1"));
        // One /64 is one source: a host picks addresses from it freely.
        assert_eq!(at("[2001:db8:1:2:aaaa::1]:1"), at("[2001:db8:1:2:bbbb::9]:1"));
        assert_ne!(at("[2001:db8:1:2::1]:1"), at("[2001:db8:1:3::1]:1"));
        assert_eq!(at("[::ffff:10.0.0.7]:1"), at("10.0.0.7:5"));
    }

    #[test]
    fn a_source_gets_its_share_of_places_and_gives_them_back() {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let mine: Vec<Slot> = (0..PENDING_PER_SOURCE).map(|_| Slot::take(&pending, &a).unwrap()).collect();
        assert!(Slot::take(&pending, &a).is_none(), "a source past its share is refused");
        let other = Slot::take(&pending, &b).expect("another source still gets a place");
        // One source's connections share its handshake turns; another's has turns of its own.
        assert!(Arc::ptr_eq(&mine[0].turns, &mine[1].turns));
        assert!(!Arc::ptr_eq(&mine[0].turns, &other.turns));
        assert_eq!(mine[0].turns.available_permits(), HANDSHAKES_PER_SOURCE);
        drop(mine);
        drop(other);
        let p = pending.lock().unwrap();
        assert_eq!((p.total, p.by_source.len()), (0, 0));
    }
}
