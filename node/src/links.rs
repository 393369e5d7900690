//! Long-lived engine streams: one outbound stream per admitted peer, carrying
//! length-prefixed frames (see [`net::encode_frame`]) for as long as the peer
//! is up.
//!
//! A request-response exchange per engine message cost a new yamux stream, a
//! protocol negotiation, an acknowledgement and a timeout timer for every
//! announcement and every change; on a busy fleet that overhead, not the
//! replication work, used most of the CPU. Here a message costs one frame, and
//! the frames queued for a peer while its writer was busy go out in one write.
//!
//! The tasks (all on the daemon's runtime):
//!
//! * a writer per peer: opens the stream, then writes whatever its bounded
//!   queue holds. The daemon's [`Links::send`] never waits: when the queue is
//!   full the message is dropped and counted (anti-entropy repairs it), and
//!   when the writer has died (stream reset) it is started again once.
//! * one acceptor: takes inbound streams of [`net::PROTOCOL`] and starts a
//!   reader for each, at most [`INBOUND_STREAMS_PER_PEER_MAX`] per peer.
//! * a reader per inbound stream: reads frames within the bound and hands them
//!   to the daemon over one bounded channel. When that channel is full the
//!   reader waits, so a peer that sends faster than the daemon ingests is
//!   slowed down by yamux flow control instead of growing a queue. A frame
//!   announced over the bound is reported (the daemon blocks the sender) and
//!   its body is never read.
//!
//! Admission is the daemon's: it opens writers only to admitted peers, closes
//! connections of the others right after the handshake, and ignores frames
//! from peers it has not admitted.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::sync::mpsc;

use crate::net;

/// Messages queued for one peer's writer before more are dropped...
pub const SEND_QUEUE_PER_PEER_MAX: usize = 256;
/// ...or bytes of them.
pub const SEND_QUEUE_PER_PEER_MAX_BYTES: usize = 16 << 20;
/// Frames (from all peers) read but not yet taken by the daemon...
pub const INBOUND_QUEUE_MAX: usize = 1024;
/// ...or bytes of them (a reader waits for room before it reads a frame's
/// body, so this bounds what peers can make this node hold).
pub const INBOUND_QUEUE_MAX_BYTES: usize = 64 << 20;
/// Opening a stream, or one write, may take this long; then the stream is
/// given up (and opened again by the next message).
pub const STREAM_IO_TIMEOUT_MS: u64 = 10_000;
/// Inbound engine streams one peer may hold open (one per connection, with room
/// for a stream being replaced).
pub const INBOUND_STREAMS_PER_PEER_MAX: usize = 4;
/// Most bytes of queued frames gathered into one write.
pub const WRITE_BATCH_MAX_BYTES: usize = 256 << 10;
/// A peer's stream is opened again at most this often (a peer that refuses
/// the protocol, e.g. one running another protocol version, would otherwise
/// cost a negotiation per message).
pub const REOPEN_MIN_INTERVAL_MS: u64 = 1_000;

/// What the stream tasks hand to the daemon.
#[derive(Debug)]
pub enum LinkEvent {
    /// A frame from `peer`.
    Frame {
        /// The sender.
        peer: PeerId,
        /// Its bytes.
        bytes: Vec<u8>,
        /// Its share of [`INBOUND_QUEUE_MAX_BYTES`], given back when dropped.
        budget: Budget,
    },
    /// `peer` announced a frame over the bound; its stream was dropped unread.
    Oversized {
        /// The sender.
        peer: PeerId,
        /// The announced length.
        len: usize,
    },
}

/// A frame's share of the inbound byte budget.
#[derive(Debug)]
pub struct Budget(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// Why a message was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// No writer: the peer is not up.
    #[error("no stream to this peer")]
    NotUp,
    /// The peer's queue is full.
    #[error("the send queue of this peer is full")]
    Full,
    /// The stream to this peer broke less than [`REOPEN_MIN_INTERVAL_MS`] ago.
    #[error("the stream to this peer broke; it is opened again shortly")]
    Reopening,
    /// The message is over the frame bound.
    #[error("message of {0} bytes is over the frame bound")]
    TooLarge(usize),
}

/// The daemon's handle on one peer's writer.
struct Writer {
    tx: mpsc::Sender<Vec<u8>>,
    /// Bytes queued and not yet written.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// The daemon's side of the streams.
pub struct Links {
    control: libp2p_stream::Control,
    writers: HashMap<PeerId, Writer>,
    /// When each peer's writer was last started.
    opened_at: HashMap<PeerId, std::time::Instant>,
    frame_max_bytes: usize,
}

impl Links {
    /// Register the engine protocol on `control` and start the acceptor.
    /// Frames arrive on the returned receiver.
    pub fn start(
        mut control: libp2p_stream::Control,
        frame_max_bytes: usize,
    ) -> Result<(Links, mpsc::Receiver<LinkEvent>), libp2p_stream::AlreadyRegistered> {
        let incoming = control.accept(net::PROTOCOL)?;
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE_MAX);
        let budget = Arc::new(tokio::sync::Semaphore::new(INBOUND_QUEUE_MAX_BYTES));
        tokio::spawn(accept(incoming, tx, budget, frame_max_bytes));
        Ok((
            Links {
                control,
                writers: HashMap::new(),
                opened_at: HashMap::new(),
                frame_max_bytes,
            },
            rx,
        ))
    }

    /// Start a writer to `peer` (it just came up), unless one runs.
    pub fn open(&mut self, peer: PeerId) {
        if self.writers.get(&peer).is_some_and(|w| !w.tx.is_closed()) {
            return;
        }
        let (tx, rx) = mpsc::channel(SEND_QUEUE_PER_PEER_MAX);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(write(self.control.clone(), peer, rx, queued.clone()));
        self.writers.insert(peer, Writer { tx, queued });
        self.opened_at.insert(peer, std::time::Instant::now());
    }

    /// Stop the writer to `peer` (it went down or was cut off).
    pub fn close(&mut self, peer: &PeerId) {
        self.writers.remove(peer);
        self.opened_at.remove(peer);
    }

    /// Queue `bytes` for `peer` without waiting.
    pub fn send(&mut self, peer: PeerId, bytes: Vec<u8>) -> Result<(), SendError> {
        let len = bytes.len();
        if len > self.frame_max_bytes {
            return Err(SendError::TooLarge(len));
        }
        let closed = self
            .writers
            .get(&peer)
            .ok_or(SendError::NotUp)?
            .tx
            .is_closed();
        if closed {
            // The stream broke (reset, or the connection it was on closed
            // while another stays up, or the peer refused it): open a new
            // one, at most once a second.
            let recent = self.opened_at.get(&peer).is_some_and(|t| {
                t.elapsed() < std::time::Duration::from_millis(REOPEN_MIN_INTERVAL_MS)
            });
            if recent {
                return Err(SendError::Reopening);
            }
            tracing::debug!(%peer, "engine stream closed; opening a new one");
            self.writers.remove(&peer);
            self.open(peer);
        }
        let w = &self.writers[&peer];
        if w.queued.load(Ordering::Relaxed) + len > SEND_QUEUE_PER_PEER_MAX_BYTES {
            return Err(SendError::Full);
        }
        w.tx.try_send(bytes).map_err(|_| SendError::Full)?;
        w.queued.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
}

async fn write(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut rx: mpsc::Receiver<Vec<u8>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
) {
    let timeout = std::time::Duration::from_millis(STREAM_IO_TIMEOUT_MS);
    // Closed before it started: do not open (libp2p-stream would dial a
    // peer that is gone).
    if rx.is_closed() {
        return;
    }
    let mut stream =
        match tokio::time::timeout(timeout, control.open_stream(peer, net::PROTOCOL)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "cannot open an engine stream");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "opening an engine stream timed out");
                return;
            }
        };
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        net::push_frame(&mut buf, &first);
        let mut taken = first.len();
        while buf.len() < WRITE_BATCH_MAX_BYTES {
            match rx.try_recv() {
                Ok(more) => {
                    taken += more.len();
                    net::push_frame(&mut buf, &more);
                }
                Err(_) => break,
            }
        }
        queued.fetch_sub(taken, Ordering::Relaxed);
        let written = async {
            stream.write_all(&buf).await?;
            stream.flush().await
        };
        match tokio::time::timeout(timeout, written).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "engine stream failed");
                return;
            }
            Err(_) => {
                // The peer stopped reading: give the stream up (it is reset
                // when dropped); the next message opens a new one.
                tracing::debug!(%peer, "engine stream write timed out");
                return;
            }
        }
    }
    let _ = stream.close().await;
}

async fn accept(
    mut incoming: libp2p_stream::IncomingStreams,
    tx: mpsc::Sender<LinkEvent>,
    budget: Arc<tokio::sync::Semaphore>,
    frame_max_bytes: usize,
) {
    let open: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    while let Some((peer, stream)) = incoming.next().await {
        {
            let mut open = open.lock().expect("not poisoned");
            let n = open.entry(peer).or_default();
            if *n >= INBOUND_STREAMS_PER_PEER_MAX {
                tracing::debug!(%peer, "too many engine streams from one peer; dropping one");
                continue;
            }
            *n += 1;
        }
        let open = open.clone();
        let tx = tx.clone();
        let budget = budget.clone();
        tokio::spawn(async move {
            read(peer, stream, &tx, &budget, frame_max_bytes).await;
            let mut open = open.lock().expect("not poisoned");
            if let Some(n) = open.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&peer);
                }
            }
        });
    }
}

async fn read(
    peer: PeerId,
    mut stream: Stream,
    tx: &mpsc::Sender<LinkEvent>,
    budget: &Arc<tokio::sync::Semaphore>,
    max: usize,
) {
    use futures::AsyncReadExt;
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            let _ = tx.send(LinkEvent::Oversized { peer, len }).await;
            return;
        }
        // Room for the body first: when the daemon is behind, this reader
        // waits and yamux flow control slows the sender.
        let Ok(permit) = budget.clone().acquire_many_owned(len.max(1) as u32).await else {
            return;
        };
        let mut bytes = Vec::with_capacity(len.min(64 << 10));
        match (&mut stream).take(len as u64).read_to_end(&mut bytes).await {
            Ok(n) if n == len => {}
            Ok(_) => return,
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%peer, error = %e, "engine stream ended");
                }
                return;
            }
        }
        let ev = LinkEvent::Frame {
            peer,
            bytes,
            budget: Budget(permit),
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dcloud_crdt::SecretKey;
    use futures::AsyncWriteExt;
    use libp2p::swarm::SwarmEvent;

    use super::*;

    /// Run a swarm until `done` says so (bounded), then keep it running in a task.
    async fn drive_until(
        mut swarm: libp2p::Swarm<net::Behaviour>,
        mut done: impl FnMut(&SwarmEvent<net::BehaviourEvent>) -> bool,
    ) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if done(&swarm.select_next_some().await) {
                    return;
                }
            }
        })
        .await
        .expect("swarm event within 10 s");
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_an_oversized_one_is_reported() {
        let (ka, kb) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
        let mut a = net::build_swarm(&ka, false, net::PING_INTERVAL_MS).unwrap();
        let mut b = net::build_swarm(&kb, false, net::PING_INTERVAL_MS).unwrap();
        let pid_b = *b.local_peer_id();
        let (mut links_a, _rx_a) = Links::start(a.behaviour().streams.new_control(), 1024).unwrap();
        let (_links_b, mut rx_b) = Links::start(b.behaviour().streams.new_control(), 1024).unwrap();
        let mut raw = a.behaviour().streams.new_control();
        b.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let mut addr_tx = Some(addr_tx);
        drive_until(b, move |ev| {
            if let SwarmEvent::NewListenAddr { address, .. } = ev {
                let _ = addr_tx.take().map(|t| t.send(address.clone()));
                return true;
            }
            false
        })
        .await;
        a.dial(addr_rx.await.unwrap()).unwrap();
        drive_until(a, |ev| {
            matches!(ev, SwarmEvent::ConnectionEstablished { .. })
        })
        .await;

        links_a.open(pid_b);
        for k in 0..100u8 {
            links_a.send(pid_b, vec![k; 1 + k as usize]).unwrap();
        }
        assert_eq!(
            links_a.send(pid_b, vec![0; 1025]),
            Err(SendError::TooLarge(1025))
        );
        for k in 0..100u8 {
            let ev = tokio::time::timeout(Duration::from_secs(10), rx_b.recv())
                .await
                .expect("a frame within 10 s")
                .expect("channel open");
            match ev {
                LinkEvent::Frame { bytes, .. } => assert_eq!(bytes, vec![k; 1 + k as usize]),
                other => panic!("expected frame {k}, got {other:?}"),
            }
        }

        // A frame announced over the bound: reported without its body.
        let mut s = raw.open_stream(pid_b, net::PROTOCOL).await.unwrap();
        s.write_all(&5000u32.to_be_bytes()).await.unwrap();
        s.flush().await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(10), rx_b.recv())
            .await
            .expect("a report within 10 s")
            .expect("channel open");
        assert!(
            matches!(ev, LinkEvent::Oversized { len: 5000, .. }),
            "{ev:?}"
        );
    }
}
