//! The internal transport between nodes: length-prefixed MessagePack frames over TCP.
//!
//! One connection per peer carries two kinds of traffic: one-way messages (membership packets)
//! and requests with an id and a deadline, each answered by exactly one response (commands
//! forwarded to an entity's owner).
//!
//! A request's deadline travels as the budget the caller has left when the frame is written
//! (after any dialing or injected delay), less [`DEADLINE_TRANSIT_MARGIN_MS`]; the peer counts it
//! from the moment it reads the frame, on its own monotonic clock. No wall clock is compared
//! across nodes, so clock skew does not move deadlines; what the peer cannot see is the frame's
//! time in transit, which the margin covers: a frame that takes less than the margin to arrive
//! makes the peer give up (and its entity drop the request, unapplied) before the caller does. The node that dials sends; the node that accepts answers on
//! the same connection. Every frame is a 4-byte big-endian length, then a MessagePack [`Frame`];
//! a frame longer than [`FRAME_BYTES_MAX`] closes the connection.
//!
//! With [`ClusterTls`] every connection is mutual TLS: a peer without a certificate of the
//! cluster's CA, or whose certificate does not name the node its hello claims, is refused before
//! any of its frames is read, and the refusal is logged and counted ([`Transport::refusals`]).
//!
//! Two seams make failures cheap to handle and to test:
//! - a [`CircuitBreaker`] per peer: after [`BREAKER_FAILURES_MAX`] failures in a row, calls to that
//!   peer fail at once with [`TransportError::CircuitOpen`] for [`BREAKER_OPEN_MS`], then one call
//!   probes it;
//! - [`Faults`]: drop or delay frames, or partition named nodes from each other, on the sending
//!   side. A dropped request is never answered: the caller sees its deadline pass, as it would on a
//!   real network.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use super::tls::{ClusterTls, DialFailure, names_node};

/// Largest frame accepted: a forwarded command is at most the API's command limit (1 MiB) plus
/// its envelope; anything bigger is a bug or an attack.
pub const FRAME_BYTES_MAX: usize = 4 << 20;

/// Failures in a row that open a peer's circuit: one lost packet is noise, three are a dead peer.
pub const BREAKER_FAILURES_MAX: u32 = 3;

/// How long an open circuit fails calls at once before it lets one probe through: short enough
/// that a restarted peer is used again within a membership round or two.
pub const BREAKER_OPEN_MS: u64 = 1_000;

/// How much earlier than its caller a peer's deadline for a request falls: the longest time in
/// transit (write on one node to read on the other) for which a caller that gave up can be sure
/// the peer gave up too. Loopback and a LAN take well under a millisecond; 50 ms also covers a
/// congested link or a scheduler hiccup, at the cost of 50 ms of the budget.
pub const DEADLINE_TRANSIT_MARGIN_MS: u64 = 50;

/// Longest time spent dialing a peer.
const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// Requests waiting for their responses, per peer, at most: a peer that stopped answering cannot
/// grow this node's memory without bound.
const PENDING_REQUESTS_MAX: usize = 4_096;

/// A connection's bytes: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}
type Reader = ReadHalf<Box<dyn Stream>>;
type Writer = WriteHalf<Box<dyn Stream>>;

/// Connections refused since the transport started: peers that failed the TLS handshake or
/// claimed a name their certificate does not carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Connections from peers, refused here.
    pub inbound: u64,
    /// Connections this node dialed and refused: the peer's certificate did not check out.
    pub outbound: u64,
}

#[derive(Default)]
struct RefusalCounts {
    inbound: AtomicU64,
    outbound: AtomicU64,
}

/// What travels on a connection.
#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    /// The dialer's node name: the first frame of every connection.
    Hello { from: String },
    Message {
        topic: Topic,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    Request {
        id: u64,
        /// Milliseconds the caller still waited when it wrote the frame, less
        /// [`DEADLINE_TRANSIT_MARGIN_MS`]; the handler gives up that long after reading it.
        deadline_ms: u64,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    Response {
        id: u64,
        outcome: Result<serde_bytes::ByteBuf, String>,
    },
}

/// Why a transport call failed. The call may or may not have been handled by the peer unless the
/// variant says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached, or the connection broke.
    #[error("node {peer} is unreachable: {reason}")]
    Unreachable { peer: SocketAddr, reason: String },
    /// The peer failed too often lately; nothing was sent.
    #[error("node {peer} failed {BREAKER_FAILURES_MAX} times in a row; retry in {retry_in_ms} ms")]
    CircuitOpen { peer: SocketAddr, retry_in_ms: u64 },
    /// No response before the deadline.
    #[error("node {peer} did not answer within {after_ms} ms")]
    Timeout { peer: SocketAddr, after_ms: u64 },
    /// The peer's handler answered with an error.
    #[error("node {peer} refused the request: {reason}")]
    Refused { peer: SocketAddr, reason: String },
    /// Too many requests to this peer are waiting; nothing was sent.
    #[error("{PENDING_REQUESTS_MAX} requests to node {peer} are already waiting; retry later")]
    Overloaded { peer: SocketAddr },
}

/// Which service a one-way message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topic {
    /// Membership packets (SWIM).
    Membership,
    /// DistributedData replication.
    Ddata,
    /// Replicated entities' events and pulls.
    Replication,
    /// Announcements of plugin deployments.
    Deployments,
}

/// What a node does with what its peers send it.
#[async_trait]
pub trait Inbound: Send + Sync + 'static {
    /// Answers a request from the node named `from`, whose caller gives up at `deadline` (the
    /// future is dropped then).
    async fn request(
        &self,
        from: &str,
        payload: Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<u8>, String>;
    /// Takes a one-way message on `topic` from the node named `from`.
    async fn message(&self, from: &str, topic: Topic, payload: Vec<u8>);
}

/// Closed → (failures) → open → (time) → half-open → (success) closed / (failure) open. Sans-IO:
/// the caller passes the time.
#[derive(Debug, Clone, Default)]
pub struct CircuitBreaker {
    failures_in_a_row: u32,
    open_until: Option<Instant>,
}

impl CircuitBreaker {
    /// `Err(time left)` while open; `Ok` lets a call through (the one probe, once the open time
    /// passed).
    pub fn allow(&mut self, now: Instant) -> Result<(), Duration> {
        match self.open_until {
            Some(until) if now < until => Err(until - now),
            Some(_) => {
                // Half-open: this call is the probe; the next failure opens it again at once.
                self.open_until = None;
                self.failures_in_a_row = BREAKER_FAILURES_MAX - 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub fn succeeded(&mut self) {
        self.failures_in_a_row = 0;
        self.open_until = None;
    }

    pub fn failed(&mut self, now: Instant) {
        self.failures_in_a_row += 1;
        if self.failures_in_a_row >= BREAKER_FAILURES_MAX {
            self.open_until = Some(now + Duration::from_millis(BREAKER_OPEN_MS));
        }
    }
}

/// Faults to inject on the sending side, for tests. Cheap to clone; shared by every connection of
/// a transport.
#[derive(Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<FaultRules>>,
}

#[derive(Default)]
struct FaultRules {
    /// Node names this node cannot reach (nor be answered by).
    partitioned: BTreeSet<String>,
    /// Every frame waits this long before it is written.
    delay: Duration,
    /// Drop every n-th frame (0: none), counted in `sent`: deterministic, unlike a coin.
    drop_every: u64,
    sent: u64,
}

impl Faults {
    /// Cuts this node off from `peers` (both directions, as this node sends and answers).
    pub fn partition(&self, peers: &[&str]) {
        let mut rules = self.rules();
        rules
            .partitioned
            .extend(peers.iter().map(|peer| peer.to_string()));
    }

    pub fn heal(&self) {
        let mut rules = self.rules();
        rules.partitioned.clear();
        rules.drop_every = 0;
        rules.delay = Duration::ZERO;
    }

    pub fn delay(&self, delay: Duration) {
        self.rules().delay = delay;
    }

    pub fn drop_every(&self, n: u64) {
        self.rules().drop_every = n;
    }

    /// Whether a frame to `peer` goes out, and after how long.
    fn admit(&self, peer: &str) -> Option<Duration> {
        let mut rules = self.rules();
        if rules.partitioned.contains(peer) {
            return None;
        }
        rules.sent += 1;
        if rules.drop_every > 0 && rules.sent.is_multiple_of(rules.drop_every) {
            return None;
        }
        Some(rules.delay)
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, FaultRules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This node's end of the transport. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    local_addr: SocketAddr,
    faults: Faults,
    /// `None`: plaintext.
    tls: Option<ClusterTls>,
    refusals: Arc<RefusalCounts>,
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    next_request_id: AtomicU64,
    shutdown: watch::Sender<bool>,
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>>;

/// The sending half of an outbound connection.
struct Connection {
    writer: Writer,
    /// Set by the connection's reader when the peer closed it (or it broke): the next frame
    /// dials afresh instead of writing into a dead socket and waiting for its deadline.
    closed: Arc<AtomicBool>,
}

/// The outbound connection to one peer and its breaker.
struct Peer {
    addr: SocketAddr,
    /// The peer's node name, learned from the callers; faults are keyed by it. A caller that
    /// knows only the address (a seed, before membership names it) names it by the address, and
    /// the first caller that knows the node's name replaces that.
    name: Mutex<String>,
    writer: tokio::sync::Mutex<Option<Connection>>,
    pending: Arc<Pending>,
    breaker: Mutex<CircuitBreaker>,
}

impl Transport {
    /// Listens on `listen` as node `name`, handing what peers send to `inbound`; with `tls`,
    /// every connection, both ways, is mutual TLS.
    pub async fn bind(
        name: &str,
        listen: SocketAddr,
        inbound: Arc<dyn Inbound>,
        faults: Faults,
        tls: Option<ClusterTls>,
    ) -> std::io::Result<Transport> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            local_addr,
            faults,
            tls,
            refusals: Arc::default(),
            peers: Mutex::new(HashMap::new()),
            next_request_id: AtomicU64::new(1),
            shutdown,
        });
        let acceptor = Acceptor {
            inbound,
            faults: inner.faults.clone(),
            tls: inner.tls.clone(),
            refusals: inner.refusals.clone(),
            stop,
        };
        tokio::spawn(acceptor.run(listener));
        Ok(Transport { inner })
    }

    /// Connections refused so far (see [`Refusals`]).
    pub fn refusals(&self) -> Refusals {
        Refusals {
            inbound: self.inner.refusals.inbound.load(Ordering::Relaxed),
            outbound: self.inner.refusals.outbound.load(Ordering::Relaxed),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Sends `payload` to node `peer_name` at `peer` and waits up to `timeout` for its answer.
    pub async fn request(
        &self,
        peer_name: &str,
        peer: SocketAddr,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let peer = self.peer(peer_name, peer);
        peer.allow()?;
        let id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (respond, response) = oneshot::channel();
        {
            let mut pending = peer.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() >= PENDING_REQUESTS_MAX {
                return Err(TransportError::Overloaded { peer: peer.addr });
            }
            pending.insert(id, respond);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        // The budget left is measured when the frame is written, not when the call began.
        let frame = move || Frame::Request {
            id,
            deadline_ms: deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX)
                .saturating_sub(DEADLINE_TRANSIT_MARGIN_MS),
            payload,
        };
        let outcome = match tokio::time::timeout_at(deadline, async {
            self.send_frame(&peer, frame).await?;
            response.await.map_err(|_| TransportError::Unreachable {
                peer: peer.addr,
                reason: "the connection closed before the answer".into(),
            })
        })
        .await
        {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(reason))) => Err(TransportError::Refused {
                peer: peer.addr,
                reason,
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(TransportError::Timeout {
                peer: peer.addr,
                after_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
            }),
        };
        peer.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        peer.record(&outcome);
        outcome
    }

    /// Sends a one-way message on `topic`; `Ok` means it was written, not that it arrived.
    pub async fn send(
        &self,
        peer_name: &str,
        peer: SocketAddr,
        topic: Topic,
        payload: Vec<u8>,
    ) -> Result<(), TransportError> {
        let peer = self.peer(peer_name, peer);
        peer.allow()?;
        let outcome = self
            .send_frame(&peer, || Frame::Message { topic, payload })
            .await;
        peer.record(&outcome);
        outcome
    }

    /// Stops accepting connections and closes the outbound ones.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn peer(&self, name: &str, addr: SocketAddr) -> Arc<Peer> {
        let mut peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = peers.get(&addr)
            && name.parse::<SocketAddr>().is_err()
        {
            let mut known = peer.name.lock().unwrap_or_else(|p| p.into_inner());
            if *known != name {
                *known = name.to_owned();
            }
        }
        peers
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Peer {
                    addr,
                    name: Mutex::new(name.to_owned()),
                    writer: tokio::sync::Mutex::new(None),
                    pending: Arc::new(Mutex::new(HashMap::new())),
                    breaker: Mutex::new(CircuitBreaker::default()),
                })
            })
            .clone()
    }

    /// Writes the frame `frame` makes on the peer's connection, dialing it first if needed; the
    /// frame is made just before it is written.
    async fn send_frame(
        &self,
        peer: &Peer,
        frame: impl FnOnce() -> Frame,
    ) -> Result<(), TransportError> {
        let name = peer.name.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(delay) = self.inner.faults.admit(&name) else {
            return Ok(()); // dropped on the "network": the caller finds out as it would there
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let unreachable = |reason: String| TransportError::Unreachable {
            peer: peer.addr,
            reason,
        };
        let mut writer = peer.writer.lock().await;
        if writer
            .as_ref()
            .is_none_or(|connection| connection.closed.load(Ordering::Acquire))
        {
            *writer = Some(self.dial(peer).await.map_err(unreachable)?);
        }
        let bytes = encode(&frame()).map_err(unreachable)?;
        let written = match writer.as_mut() {
            Some(connection) => connection.writer.write_all(&bytes).await,
            None => return Err(unreachable("not connected".into())),
        };
        if let Err(error) = written {
            // The next frame dials afresh.
            *writer = None;
            return Err(unreachable(error.to_string()));
        }
        Ok(())
    }

    async fn dial(&self, peer: &Peer) -> Result<Connection, String> {
        let stream = tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            TcpStream::connect(peer.addr),
        )
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT_MS} ms"))?
        .map_err(|error| error.to_string())?;
        stream
            .set_nodelay(true)
            .map_err(|error| error.to_string())?;
        let stream: Box<dyn Stream> = match &self.inner.tls {
            None => Box::new(stream),
            Some(tls) => {
                let name = peer.name.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match tls.connect(stream, &name, peer.addr).await {
                    Ok(stream) => Box::new(stream),
                    Err(DialFailure::Refused(reason)) => {
                        self.inner.refusals.outbound.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            peer = %name, addr = %peer.addr,
                            "cluster transport: refused the node dialed: {reason}"
                        );
                        return Err(reason);
                    }
                    Err(failure) => return Err(failure.reason().to_owned()),
                }
            }
        };
        let (reader, mut writer) = tokio::io::split(stream);
        let hello = encode(&Frame::Hello {
            from: self.inner.name.clone(),
        })?;
        writer
            .write_all(&hello)
            .await
            .map_err(|error| error.to_string())?;
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_responses(reader, peer.pending.clone(), closed.clone()));
        Ok(Connection { writer, closed })
    }
}

impl Peer {
    fn allow(&self) -> Result<(), TransportError> {
        let mut breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        breaker
            .allow(Instant::now())
            .map_err(|left| TransportError::CircuitOpen {
                peer: self.addr,
                retry_in_ms: left.as_millis().try_into().unwrap_or(u64::MAX),
            })
    }

    /// Counts a call's outcome on the breaker. A refusal is an answer: the peer is alive.
    fn record<T>(&self, outcome: &Result<T, TransportError>) {
        let mut breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(_) | Err(TransportError::Refused { .. }) => breaker.succeeded(),
            Err(TransportError::Unreachable { .. } | TransportError::Timeout { .. }) => {
                breaker.failed(Instant::now())
            }
            Err(TransportError::CircuitOpen { .. } | TransportError::Overloaded { .. }) => {}
        }
    }
}

fn encode(frame: &Frame) -> Result<Vec<u8>, String> {
    let body = rmp_serde::to_vec_named(frame).map_err(|error| error.to_string())?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(format!(
            "a frame of {} bytes is over the limit of {FRAME_BYTES_MAX}",
            body.len()
        ));
    }
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// The next frame, `Ok(None)` at a clean end of the stream.
async fn read_frame(reader: &mut Reader) -> Result<Option<Frame>, String> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.to_string()),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(format!(
            "a frame of {length} bytes is over the limit of {FRAME_BYTES_MAX}"
        ));
    }
    let mut body = vec![0u8; length];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|error| error.to_string())?;
    rmp_serde::from_slice(&body)
        .map(Some)
        .map_err(|error| format!("not a frame: {error}"))
}

/// Routes the responses of an outbound connection to their waiting requests, until it closes.
async fn read_responses(mut reader: Reader, pending: Arc<Pending>, closed: Arc<AtomicBool>) {
    while let Ok(Some(frame)) = read_frame(&mut reader).await {
        if let Frame::Response { id, outcome } = frame {
            let waiting = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if let Some(respond) = waiting {
                // The caller may have given up at its deadline.
                let _ = respond.send(outcome.map(serde_bytes::ByteBuf::into_vec));
            }
        }
    }
    // The next frame dials again; requests waiting on this connection fail now rather than at
    // their deadlines.
    closed.store(true, Ordering::Release);
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// What the accepting side of a transport needs for each connection.
struct Acceptor {
    inbound: Arc<dyn Inbound>,
    faults: Faults,
    tls: Option<ClusterTls>,
    refusals: Arc<RefusalCounts>,
    stop: watch::Receiver<bool>,
}

impl Acceptor {
    async fn run(self, listener: TcpListener) {
        let mut stop = self.stop.clone();
        let acceptor = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(acceptor.clone().serve(stream, remote));
                }
                Err(error) => tracing::warn!("cluster transport: accept failed: {error}"),
            }
        }
    }

    /// Counts and logs a connection refused before any of its frames was read.
    fn refuse(&self, remote: SocketAddr, reason: &str) {
        self.refusals.inbound.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%remote, "cluster transport: refused a connection: {reason}");
    }

    /// Serves one inbound connection: the TLS handshake if configured, a hello (from the node
    /// the certificate names), then messages and requests until it closes.
    async fn serve(self: Arc<Self>, stream: TcpStream, remote: SocketAddr) {
        let (stream, certificate): (Box<dyn Stream>, _) = match &self.tls {
            None => (Box::new(stream), None),
            Some(tls) => match tls.accept(stream).await {
                Ok((stream, certificate)) => (Box::new(stream), Some(certificate)),
                Err(reason) => return self.refuse(remote, &reason),
            },
        };
        let (mut reader, writer) = tokio::io::split(stream);
        let from = match read_frame(&mut reader).await {
            Ok(Some(Frame::Hello { from })) => from,
            other => {
                tracing::debug!("cluster transport: a connection without a hello: {other:?}");
                return;
            }
        };
        if let Some(certificate) = certificate
            && let Err(reason) = names_node(&certificate, &from)
        {
            return self.refuse(remote, &format!("its hello says {from:?}, but {reason}"));
        }
        serve_frames(
            reader,
            writer,
            from,
            self.inbound.clone(),
            self.faults.clone(),
            self.stop.clone(),
        )
        .await;
    }
}

/// Hands the frames of an inbound connection from the node `from` to `inbound`, and writes the
/// answers to its requests, until it closes.
async fn serve_frames(
    mut reader: Reader,
    writer: Writer,
    from: String,
    inbound: Arc<dyn Inbound>,
    faults: Faults,
    mut stop: watch::Receiver<bool>,
) {
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut reader) => frame,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(peer = %from, "cluster transport: closing the connection: {error}");
                return;
            }
        };
        // Partitioned peers are not heard either.
        if faults.rules().partitioned.contains(&from) {
            continue;
        }
        match frame {
            Frame::Message { topic, payload } => inbound.message(&from, topic, payload).await,
            Frame::Request {
                id,
                deadline_ms,
                payload,
            } => {
                let (inbound, writer, faults, from) = (
                    inbound.clone(),
                    writer.clone(),
                    faults.clone(),
                    from.clone(),
                );
                let deadline = tokio::time::Instant::now() + Duration::from_millis(deadline_ms);
                tokio::spawn(async move {
                    let Ok(outcome) = tokio::time::timeout_at(
                        deadline,
                        inbound.request(&from, payload, deadline),
                    )
                    .await
                    else {
                        return; // the caller has given up already
                    };
                    let Some(delay) = faults.admit(&from) else {
                        return;
                    };
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let response = Frame::Response {
                        id,
                        outcome: outcome.map(serde_bytes::ByteBuf::from),
                    };
                    match encode(&response) {
                        Ok(bytes) => {
                            if let Err(error) = writer.lock().await.write_all(&bytes).await {
                                tracing::debug!(peer = %from, "cluster transport: answer lost: {error}");
                            }
                        }
                        Err(error) => tracing::warn!(peer = %from, "cluster transport: {error}"),
                    }
                });
            }
            Frame::Hello { .. } | Frame::Response { .. } => {
                tracing::warn!(peer = %from, "cluster transport: unexpected frame; closing");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::certs::DevelopmentCa;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// A peer's frame body of any bytes, nested arrays included, decodes or is refused: no
        /// panic, no overflow (frame bodies are at most FRAME_BYTES_MAX and decode into types
        /// of bounded depth).
        #[test]
        fn peer_frames_of_any_bytes_are_refused_safely(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            nesting in 0..5_000usize,
        ) {
            let _ = rmp_serde::from_slice::<Frame>(&bytes);
            let mut nested = vec![0x91u8; nesting];
            nested.extend(&bytes);
            let _ = rmp_serde::from_slice::<Frame>(&nested);
        }
    }

    /// Echoes requests (or refuses `"no"`, or never answers `"hang"`) and counts messages.
    #[derive(Default)]
    struct Echo {
        messages: Mutex<Vec<(String, Vec<u8>)>>,
        /// The deadline of every request, as the handler was given it.
        deadlines: Mutex<Vec<tokio::time::Instant>>,
        received: tokio::sync::Notify,
    }

    #[async_trait]
    impl Inbound for Echo {
        async fn request(
            &self,
            from: &str,
            payload: Vec<u8>,
            deadline: tokio::time::Instant,
        ) -> Result<Vec<u8>, String> {
            self.deadlines.lock().unwrap().push(deadline);
            match payload.as_slice() {
                b"no" => Err(format!("{from} asked for a refusal")),
                b"hang" => std::future::pending().await,
                _ => Ok([b"echo:".as_slice(), &payload].concat()),
            }
        }

        async fn message(&self, from: &str, _topic: Topic, payload: Vec<u8>) {
            self.messages
                .lock()
                .unwrap()
                .push((from.to_owned(), payload));
            self.received.notify_one();
        }
    }

    async fn node(name: &str) -> (Transport, Arc<Echo>) {
        node_with(name, None).await
    }

    async fn node_with(name: &str, tls: Option<ClusterTls>) -> (Transport, Arc<Echo>) {
        let echo = Arc::new(Echo::default());
        let transport = Transport::bind(
            name,
            "127.0.0.1:0".parse().unwrap(),
            echo.clone(),
            Faults::default(),
            tls,
        )
        .await
        .unwrap();
        (transport, echo)
    }

    /// A node speaking mutual TLS with the certificate `ca` issued for `certified_as`.
    async fn tls_node(
        name: &str,
        ca: &DevelopmentCa,
        certified_as: &str,
        trusts: &DevelopmentCa,
    ) -> (Transport, Arc<Echo>) {
        let issued = ca.issue(certified_as).unwrap();
        let tls = ClusterTls::from_pem(
            trusts.cert_pem().as_bytes(),
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
        .unwrap();
        node_with(name, Some(tls)).await
    }

    #[tokio::test]
    async fn nodes_of_one_ca_talk_over_mutual_tls() {
        let ca = DevelopmentCa::generate().unwrap();
        let (a, _) = tls_node("a", &ca, "a", &ca).await;
        let (b, echo) = tls_node("b", &ca, "b", &ca).await;
        let answer = a
            .request("b", b.local_addr(), b"hi".to_vec(), PATIENCE)
            .await;
        assert_eq!(answer.unwrap(), b"echo:hi");
        a.send("b", b.local_addr(), Topic::Ddata, b"m".to_vec())
            .await
            .unwrap();
        tokio::time::timeout(PATIENCE, echo.received.notified())
            .await
            .unwrap();
        assert_eq!(b.refusals(), Refusals::default());
        assert_eq!(a.refusals(), Refusals::default());
    }

    /// Sends a request from `rogue` to `target` and checks that the connection was refused and
    /// counted there, and that nothing reached `target`'s handler.
    async fn assert_refused(rogue: &Transport, target: &Transport, echo: &Echo) {
        let before = target.refusals().inbound;
        let answer = rogue
            .request("b", target.local_addr(), b"hi".to_vec(), PATIENCE)
            .await;
        assert!(answer.is_err(), "a rogue's request was answered");
        let started = Instant::now();
        while target.refusals().inbound == before {
            assert!(started.elapsed() < PATIENCE, "{:?}", target.refusals());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(echo.deadlines.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn peers_without_a_certificate_of_the_ca_are_refused_and_counted() {
        let ca = DevelopmentCa::generate().unwrap();
        let other_ca = DevelopmentCa::generate().unwrap();
        let (b, echo) = tls_node("b", &ca, "b", &ca).await;
        let (plaintext, _) = node("a").await;
        assert_refused(&plaintext, &b, &echo).await;
        // A certificate from another CA, presented by a node that trusts b's.
        let (foreign, _) = tls_node("a", &other_ca, "a", &ca).await;
        assert_refused(&foreign, &b, &echo).await;
        assert_eq!(foreign.refusals(), Refusals::default());
        // A node of the other CA refuses b in turn, when it dials it.
        let (sceptic, _) = tls_node("a", &other_ca, "a", &other_ca).await;
        let _ = sceptic
            .request("b", b.local_addr(), b"hi".to_vec(), PATIENCE)
            .await;
        assert_eq!(sceptic.refusals().outbound, 1);
        // A peer that hangs up mid-handshake is unreachable, not refused.
        let hang_up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hang_up_addr = hang_up.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = hang_up.accept().await {
                drop(stream);
            }
        });
        let (dialer, _) = tls_node("a", &ca, "a", &ca).await;
        let answer = dialer
            .request("b", hang_up_addr, b"hi".to_vec(), PATIENCE)
            .await;
        assert!(
            matches!(answer, Err(TransportError::Unreachable { .. })),
            "{answer:?}"
        );
        assert_eq!(dialer.refusals(), Refusals::default());
        // One of the cluster's certificates, claiming to be another node.
        let (impostor, _) = tls_node("b", &ca, "c", &ca).await;
        assert_refused(&impostor, &b, &echo).await;
    }

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A request to `to` that gives up after 50 ms: for the cases where no answer must come.
    async fn briefly(from: &Transport, to: &Transport) -> Result<Vec<u8>, TransportError> {
        from.request(
            "b",
            to.local_addr(),
            b"x".to_vec(),
            Duration::from_millis(50),
        )
        .await
    }

    #[tokio::test]
    async fn requests_are_answered_and_messages_delivered() {
        let (a, _) = node("a").await;
        let (b, b_inbound) = node("b").await;
        let answer = a
            .request("b", b.local_addr(), b"hi".to_vec(), PATIENCE)
            .await;
        assert_eq!(answer, Ok(b"echo:hi".to_vec()));
        let refused = a
            .request("b", b.local_addr(), b"no".to_vec(), PATIENCE)
            .await;
        assert!(
            matches!(&refused, Err(TransportError::Refused { reason, .. }) if reason == "a asked for a refusal"),
            "{refused:?}"
        );
        a.send("b", b.local_addr(), Topic::Membership, b"ping".to_vec())
            .await
            .unwrap();
        tokio::time::timeout(PATIENCE, b_inbound.received.notified())
            .await
            .unwrap();
        assert_eq!(
            b_inbound.messages.lock().unwrap().as_slice(),
            &[("a".to_owned(), b"ping".to_vec())]
        );
    }

    /// A request held up on the sending side (here by an injected delay) arrives with what is
    /// left of its budget, not with the whole of it: the peer gives up no later than the caller
    /// (the transit margin covers the frame's time on the wire; with the whole budget, the peer
    /// would give up the delay's 300 ms after the caller).
    #[tokio::test]
    async fn a_request_carries_the_budget_left_when_it_is_written() {
        let (a, _) = node("a").await;
        let (b, b_inbound) = node("b").await;
        a.faults().delay(Duration::from_millis(300));
        let budget = Duration::from_secs(2);
        let called = tokio::time::Instant::now();
        let answer = a.request("b", b.local_addr(), b"x".to_vec(), budget).await;
        assert_eq!(answer, Ok(b"echo:x".to_vec()));
        let deadline = b_inbound.deadlines.lock().unwrap()[0];
        let caller_gives_up = called + budget;
        assert!(
            deadline <= caller_gives_up,
            "the peer's deadline is {:?} after the caller's",
            deadline.saturating_duration_since(caller_gives_up)
        );
    }

    #[tokio::test]
    async fn a_request_without_an_answer_times_out() {
        let (a, _) = node("a").await;
        let (b, _) = node("b").await;
        let outcome = a
            .request(
                "b",
                b.local_addr(),
                b"hang".to_vec(),
                Duration::from_millis(50),
            )
            .await;
        assert!(
            matches!(outcome, Err(TransportError::Timeout { after_ms: 50, .. })),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_partition_drops_requests_until_healed() {
        let (a, _) = node("a").await;
        let (b, _) = node("b").await;
        a.faults().partition(&["b"]);
        let cut = briefly(&a, &b).await;
        assert!(
            matches!(cut, Err(TransportError::Timeout { .. })),
            "{cut:?}"
        );
        a.faults().heal();
        let healed = a
            .request("b", b.local_addr(), b"x".to_vec(), PATIENCE)
            .await;
        assert_eq!(healed, Ok(b"echo:x".to_vec()));
        // The other side's partition holds back its answers.
        b.faults().partition(&["a"]);
        let unanswered = briefly(&a, &b).await;
        assert!(
            matches!(unanswered, Err(TransportError::Timeout { .. })),
            "{unanswered:?}"
        );
    }

    /// A peer first dialed by its address (a seed, before membership names it) is cut off by a
    /// partition of its node name once a caller names it.
    #[tokio::test]
    async fn a_peer_first_known_by_its_address_is_partitioned_by_its_name() {
        let (a, _) = node("a").await;
        let (b, _) = node("b").await;
        let by_address = b.local_addr().to_string();
        let first = a
            .request(&by_address, b.local_addr(), b"x".to_vec(), PATIENCE)
            .await;
        assert_eq!(first, Ok(b"echo:x".to_vec()));
        a.faults().partition(&["b"]);
        let cut = briefly(&a, &b).await;
        assert!(
            matches!(cut, Err(TransportError::Timeout { .. })),
            "{cut:?}"
        );
        // Still cut when a later caller knows only the address again.
        let by_address_again = a
            .request(
                &by_address,
                b.local_addr(),
                b"x".to_vec(),
                Duration::from_millis(50),
            )
            .await;
        assert!(
            matches!(by_address_again, Err(TransportError::Timeout { .. })),
            "{by_address_again:?}"
        );
    }

    #[tokio::test]
    async fn dropped_frames_go_unanswered_and_delayed_ones_arrive() {
        let (a, _) = node("a").await;
        let (b, _) = node("b").await;
        a.faults().drop_every(2);
        let short = Duration::from_millis(50);
        let outcomes: Vec<bool> = futures::future::join_all(
            (0..4).map(|_| a.request("b", b.local_addr(), b"x".to_vec(), short)),
        )
        .await
        .iter()
        .map(Result::is_ok)
        .collect();
        assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 2, "{outcomes:?}");
        a.faults().heal();
        a.faults().delay(Duration::from_millis(20));
        let delayed = a
            .request("b", b.local_addr(), b"late".to_vec(), PATIENCE)
            .await;
        assert_eq!(delayed, Ok(b"echo:late".to_vec()));
    }

    #[tokio::test]
    async fn a_dead_peer_opens_its_circuit() {
        let (a, _) = node("a").await;
        // A port nobody listens on: bind one, then free it.
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        for _ in 0..BREAKER_FAILURES_MAX {
            let outcome = a.request("dead", dead, b"x".to_vec(), PATIENCE).await;
            assert!(
                matches!(outcome, Err(TransportError::Unreachable { .. })),
                "{outcome:?}"
            );
        }
        let fast = a.request("dead", dead, b"x".to_vec(), PATIENCE).await;
        assert!(
            matches!(fast, Err(TransportError::CircuitOpen { .. })),
            "{fast:?}"
        );
    }

    #[tokio::test]
    async fn a_peer_that_closed_the_connection_is_dialed_again() {
        let (a, _) = node("a").await;
        let (b, _) = node("b").await;
        let addr = b.local_addr();
        assert!(a.request("b", addr, b"1".to_vec(), PATIENCE).await.is_ok());
        // b stops and a new b starts on the same address: its old connection is closed.
        b.shutdown();
        drop(b);
        let echo = Arc::new(Echo::default());
        let started = Instant::now();
        let b = loop {
            match Transport::bind("b", addr, echo.clone(), Faults::default(), None).await {
                Ok(b) => break b,
                Err(error) => {
                    assert!(started.elapsed() < PATIENCE, "rebind {addr}: {error}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let mut answer = a.request("b", addr, b"2".to_vec(), PATIENCE).await;
        while answer.is_err() && started.elapsed() < PATIENCE {
            answer = a.request("b", addr, b"2".to_vec(), PATIENCE).await;
        }
        assert_eq!(answer, Ok(b"echo:2".to_vec()));
        drop(b);
    }

    #[test]
    fn the_breaker_opens_probes_and_closes() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::default();
        for _ in 0..BREAKER_FAILURES_MAX {
            assert!(breaker.allow(start).is_ok());
            breaker.failed(start);
        }
        assert!(breaker.allow(start).is_err());
        let later = start + Duration::from_millis(BREAKER_OPEN_MS);
        assert!(
            breaker.allow(later).is_ok(),
            "one probe after the open time"
        );
        breaker.failed(later);
        assert!(
            breaker.allow(later).is_err(),
            "a failed probe opens it again"
        );
        let much_later = later + Duration::from_millis(BREAKER_OPEN_MS);
        assert!(breaker.allow(much_later).is_ok());
        breaker.succeeded();
        breaker.failed(much_later);
        assert!(
            breaker.allow(much_later).is_ok(),
            "closed again after a success"
        );
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_the_connection() {
        let (b, _) = node("b").await;
        let mut stream = TcpStream::connect(b.local_addr()).await.unwrap();
        stream
            .write_all(&(FRAME_BYTES_MAX as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let mut buffer = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the node hangs up: {read:?}"
        );
    }
}
