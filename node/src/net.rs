//! The libp2p side: the swarm's behaviour, the engine's wire protocol, and the
//! mapping between node ids and peer ids.
//!
//! Transports are TCP (noise + yamux) and QUIC. The engine's messages travel on
//! `/dcloud/engine/6`: one long-lived stream per direction and peer (see
//! [`crate::links`]), carrying length-prefixed frames (a 4-byte big-endian
//! length, then the bytes) bounded by [`FRAME_SIZE_MAX_BYTES`]. A frame
//! announced over the bound ends the stream before its body is read; the
//! daemon then disconnects and penalises the sender. (Version 1 was
//! request-response, one stream per message.)
//!
//! A node's libp2p identity is its dcloud key: an ed25519 key whose public half
//! is the [`NodeId`], so the peer id known after the noise/TLS handshake says
//! which node is on the other end.

use std::collections::HashMap;
use std::io;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use dcloud_crdt::{NodeId, PublicKey, SecretKey};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, identify, identity, mdns,
    noise, ping, tcp, yamux,
};

/// The engine protocol's name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/dcloud/engine/6");
/// The largest engine frame accepted or sent.
pub const FRAME_SIZE_MAX_BYTES: usize = crate::config::FRAME_SIZE_MAX_BYTES;
/// Established connections in all.
pub const CONNECTIONS_MAX: u32 = 256;
/// Incoming connections still in their handshake.
pub const PENDING_INCOMING_MAX: u32 = 64;
/// Idle connections are kept this long (the engine's timers keep used ones busy).
pub const IDLE_CONNECTION_TIMEOUT_MS: u64 = 120_000;
/// Every connection is pinged this often when membership is off...
pub const PING_INTERVAL_MS: u64 = 2_000;
/// ...and this often when it is on: the engine's probes find a dead
/// connection first (the daemon closes it on
/// [`crate::engine::Event::PeerUnresponsive`]), and a ping every 2 s on every
/// link would cost more than membership itself. This is only the backstop.
pub const PING_INTERVAL_MEMBERSHIP_MS: u64 = 300_000;
/// Identify is sent again this often (its default, 5 minutes, would cost
/// more than the whole idle budget on a thin link; addresses change rarely).
pub const IDENTIFY_INTERVAL_MS: u64 = 3_600_000;
/// ...and a ping unanswered for this long fails; the daemon closes a
/// connection at the second failure in a row (libp2p reports no sooner), so
/// a dead connection is closed within about 2 × (interval + timeout). At 20%
/// loss each way a ping needs five lost transmissions in a row to take this
/// long (TCP's retransmission timeout starts at 200 ms and doubles).
pub const PING_TIMEOUT_MS: u64 = 5_000;

/// Errors building the swarm.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The node key does not make a libp2p identity.
    #[error("node key: {0}")]
    Key(String),
    /// A transport could not be built.
    #[error("transport: {0}")]
    Transport(String),
    /// The mDNS service could not start.
    #[error("mdns: {0}")]
    Mdns(String),
}

/// The bytes of one length-prefixed frame.
pub fn encode_frame(bytes: &[u8]) -> io::Result<Vec<u8>> {
    if u32::try_from(bytes.len()).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    let mut out = Vec::with_capacity(4 + bytes.len());
    push_frame(&mut out, bytes);
    Ok(out)
}

/// Append one length-prefixed frame to `buf` (`bytes` within the frame bound,
/// which is far below 4 GiB).
pub fn push_frame(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The daemon's network behaviour.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Bounds on connections (checked before anything else).
    pub limits: connection_limits::Behaviour,
    /// Peers refused outright (revoked, misbehaving).
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Learn peers' listen addresses and protocols.
    pub identify: identify::Behaviour,
    /// Keep connections alive and measure them.
    pub ping: ping::Behaviour,
    /// Streams of the engine protocol (see [`crate::links`]).
    pub streams: libp2p_stream::Behaviour,
    /// LAN discovery, when enabled.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// The libp2p keypair of a node key.
pub fn keypair(key: &SecretKey) -> Result<identity::Keypair, NetError> {
    identity::Keypair::ed25519_from_bytes(key.seed_bytes())
        .map_err(|e| NetError::Key(e.to_string()))
}

/// Conversions remembered: each one decompresses a curve point (about 10 µs),
/// and the daemon converts on every message sent and received.
struct IdCache {
    to_peer: HashMap<NodeId, Option<PeerId>>,
    to_node: HashMap<PeerId, Option<NodeId>>,
}

/// Most conversions remembered each way (the cache starts over when full, so
/// peers that come and go cannot grow it).
const ID_CACHE_MAX: usize = 4096;

static IDS: LazyLock<Mutex<IdCache>> = LazyLock::new(|| {
    Mutex::new(IdCache {
        to_peer: HashMap::new(),
        to_node: HashMap::new(),
    })
});

/// The peer id of a node.
pub fn peer_id(node: &NodeId) -> Option<PeerId> {
    let mut ids = IDS.lock().expect("not poisoned");
    if let Some(p) = ids.to_peer.get(node) {
        return *p;
    }
    let p = identity::ed25519::PublicKey::try_from_bytes(&node.0)
        .ok()
        .map(|pk| identity::PublicKey::from(pk).to_peer_id());
    if ids.to_peer.len() >= ID_CACHE_MAX {
        ids.to_peer.clear();
    }
    ids.to_peer.insert(*node, p);
    p
}

/// The node id of a peer, when its peer id embeds an ed25519 key.
pub fn node_id(peer: &PeerId) -> Option<NodeId> {
    let mut ids = IDS.lock().expect("not poisoned");
    if let Some(n) = ids.to_node.get(peer) {
        return *n;
    }
    let n = node_id_uncached(peer);
    if ids.to_node.len() >= ID_CACHE_MAX {
        ids.to_node.clear();
    }
    ids.to_node.insert(*peer, n);
    n
}

fn node_id_uncached(peer: &PeerId) -> Option<NodeId> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    Some(PublicKey(ed.to_bytes()))
}

/// Build the swarm for a node key.
pub fn build_swarm(
    key: &SecretKey,
    mdns_enabled: bool,
    ping_interval_ms: u64,
) -> Result<Swarm<Behaviour>, NetError> {
    let kp = keypair(key)?;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_quic()
        .with_behaviour(|kp| {
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_established(Some(CONNECTIONS_MAX))
                .with_max_pending_incoming(Some(PENDING_INCOMING_MAX))
                .with_max_established_per_peer(Some(2));
            let mdns = if mdns_enabled {
                Some(
                    mdns::tokio::Behaviour::new(mdns::Config::default(), kp.public().to_peer_id())
                        .map_err(|e| Box::new(NetError::Mdns(e.to_string())))?,
                )
            } else {
                None
            };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                blocked: allow_block_list::Behaviour::default(),
                identify: identify::Behaviour::new(
                    identify::Config::new("/dcloud/1".into(), kp.public())
                        .with_agent_version(format!("dcloud/{}", env!("CARGO_PKG_VERSION")))
                        // No address cache: it would add every address a
                        // peer claims to each dial of it; the daemon picks
                        // dial addresses itself (`dial.rs`).
                        .with_cache_size(0)
                        .with_interval(Duration::from_millis(IDENTIFY_INTERVAL_MS)),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(Duration::from_millis(ping_interval_ms))
                        .with_timeout(Duration::from_millis(PING_TIMEOUT_MS)),
                ),
                streams: libp2p_stream::Behaviour::new(),
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_millis(IDLE_CONNECTION_TIMEOUT_MS))
        })
        .build();
    Ok(swarm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_and_peer_ids_agree() {
        let key = SecretKey::from_seed([3; 32]);
        let kp = keypair(&key).unwrap();
        let pid = kp.public().to_peer_id();
        assert_eq!(peer_id(&key.public()), Some(pid));
        assert_eq!(node_id(&pid), Some(key.public()));
    }

    #[test]
    fn a_frame_is_its_length_then_its_bytes() {
        assert_eq!(encode_frame(&[7, 8]).unwrap(), vec![0, 0, 0, 2, 7, 8]);
    }
}
