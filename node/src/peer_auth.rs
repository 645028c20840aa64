//! Who may speak as a peer: the cluster secret and the handshake that proves it (DESIGN 10).
//!
//! A peer message can rewrite replicated state directly (append, truncate, raise an epoch), so
//! a connection is read as a peer connection only once the other side has proved it holds the
//! cluster secret. The proof is a mutual challenge-response over HMAC-SHA-256:
//!
//! ```text
//! connector -> acceptor   hello     {version, from, to, nonce_c}
//! acceptor  -> connector  challenge {nonce_s, mac_s = HMAC(secret, SERVER_LABEL | from | to | nonce_c | nonce_s)}
//! connector -> acceptor   proof     {mac_c = HMAC(secret, CLIENT_LABEL | from | to | nonce_c | nonce_s)}
//! ```
//!
//! Both nonces are fresh random values, so a recorded exchange replayed later proves nothing:
//! the acceptor's new nonce changes what the connector must answer. The connector checks the
//! acceptor's proof before it sends anything replicated, so a node that does not hold the
//! secret cannot pose as a peer to receive appends either. The labels differ by direction, so
//! one side's proof can never be reflected back as the other's. MACs are compared in constant
//! time (`hmac`'s `verify_slice`).
//!
//! Without a configured secret the same messages are exchanged with empty proofs, and the
//! acceptor admits the connection only when both its listener and the connection's source are
//! loopback addresses: a development cluster on one machine. A node that has a secret never
//! accepts an empty proof, and never accepts an acceptor's empty proof either.
//!
//! The whole handshake runs under [`HANDSHAKE_TIMEOUT`], so a silent connection cannot hold a
//! connection slot, and a failed handshake closes the connection having changed nothing. Its
//! warning is rate limited ([`RefusalLog`]) so a flood of forged hellos cannot flood the log.

use crate::logging::WarningRateLimit;
use bytes::Bytes;
use cairn_protocol::frame::{FrameCodec, FrameError};
use cairn_protocol::peer::{
    decode_peer_challenge, decode_peer_proof, encode_peer_challenge, encode_peer_hello,
    encode_peer_proof, PeerChallenge, PeerChallengeBody, PeerHello, PeerHelloBody, PeerProof,
    PeerProofBody, PEER_MAC_BYTES, PEER_NONCE_BYTES, PEER_PROTOCOL_VERSION,
};
use cairn_protocol::NodeId;
use futures::{Sink, SinkExt, Stream, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

/// Shortest secret accepted: 16 bytes (128 bits) is as much as a guess can be made to cost.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;

/// Longest secret file read; a secret is a short token, anything longer is a wrong path.
pub const CLUSTER_SECRET_BYTES_MAX: usize = 4096;

/// How long the whole handshake may take, on either side. A peer on a working network
/// answers in a round trip; a few seconds covers a node that is briefly busy or paused.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the acceptor proves with, and what the connector proves with: never the same bytes.
const SERVER_LABEL: &[u8] = b"cairn-peer-v2 server";
const CLIENT_LABEL: &[u8] = b"cairn-peer-v2 client";

type HmacSha256 = Hmac<Sha256>;

/// The shared secret of a cluster's peers. Its `Debug` never shows the bytes, so it can sit in
/// a config that is logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Arc<[u8]>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret(<{} bytes, redacted>)", self.0.len())
    }
}

/// Why a secret was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read cluster secret file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the cluster secret ({origin}) has {bytes} bytes; at least {CLUSTER_SECRET_BYTES_MIN} \
         are needed (e.g. `head -c 32 /dev/urandom | base64 > FILE`)"
    )]
    TooShort { origin: String, bytes: usize },
    #[error("the cluster secret file {path} is larger than {CLUSTER_SECRET_BYTES_MAX} bytes")]
    TooLong { path: std::path::PathBuf },
}

impl ClusterSecret {
    /// The secret as given; surrounding whitespace (a file's final newline) is not part of it.
    pub fn from_value(origin: &str, value: &[u8]) -> Result<ClusterSecret, SecretError> {
        let trimmed = value.trim_ascii();
        if trimmed.len() < CLUSTER_SECRET_BYTES_MIN {
            return Err(SecretError::TooShort {
                origin: origin.to_string(),
                bytes: trimmed.len(),
            });
        }
        Ok(ClusterSecret(Arc::from(trimmed)))
    }

    pub fn from_file(path: &Path) -> Result<ClusterSecret, SecretError> {
        let metadata = std::fs::metadata(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if metadata.len() > CLUSTER_SECRET_BYTES_MAX as u64 {
            return Err(SecretError::TooLong {
                path: path.to_path_buf(),
            });
        }
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ClusterSecret::from_value(&format!("file {}", path.display()), &bytes)
    }

    fn mac(&self, label: &[u8], from: NodeId, to: NodeId, nonces: (&[u8], &[u8])) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(label);
        mac.update(&from.0.to_be_bytes());
        mac.update(&to.0.to_be_bytes());
        // Both nonces have a fixed length (checked before any MAC is computed), so the
        // concatenation is unambiguous.
        mac.update(nonces.0);
        mac.update(nonces.1);
        mac
    }
}

/// Why a connection was not admitted as a peer. Each closes the connection and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer protocol version {got} is not {PEER_PROTOCOL_VERSION}")]
    Version { got: u16 },
    #[error("hello addressed to node {to}, but this is node {own}")]
    WrongNode { to: NodeId, own: NodeId },
    #[error("hello claims to come from this node's own id {own}")]
    ClaimsOwnId { own: NodeId },
    #[error("nonce of {bytes} bytes, expected {PEER_NONCE_BYTES}")]
    BadNonce { bytes: usize },
    #[error("no cluster secret configured, and {remote} -> {local} is not loopback to loopback")]
    NotLoopback {
        local: SocketAddr,
        remote: SocketAddr,
    },
    #[error("the other side's proof is wrong (it does not hold this cluster's secret)")]
    BadProof,
    #[error("the other side sent no proof, and this node requires one")]
    MissingProof,
    #[error("unexpected frame during the handshake")]
    UnexpectedFrame,
    #[error("handshake not finished within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    #[error("connection closed during the handshake")]
    Closed,
    #[error("connection failed during the handshake: {0}")]
    Io(String),
}

/// Reads one frame; `Err` for a closed or broken connection.
async fn next_frame<S>(stream: &mut S) -> Result<bytes::BytesMut, HandshakeError>
where
    S: Stream<Item = Result<bytes::BytesMut, FrameError>> + Unpin,
{
    match stream.next().await {
        None => Err(HandshakeError::Closed),
        Some(Ok(bytes)) => Ok(bytes),
        Some(Err(error)) => Err(HandshakeError::Io(error.to_string())),
    }
}

/// The checks on a hello that need no I/O: version, addressee, claimed sender, nonce, and
/// without a secret the loopback rule. `Ok` is the node the hello claims to come from.
pub fn check_hello(
    hello: &PeerHello,
    own: NodeId,
    secret: Option<&ClusterSecret>,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<NodeId, HandshakeError> {
    let body = &hello.peer_hello;
    if body.version != PEER_PROTOCOL_VERSION {
        return Err(HandshakeError::Version { got: body.version });
    }
    if body.to != own {
        return Err(HandshakeError::WrongNode { to: body.to, own });
    }
    if body.from == own {
        return Err(HandshakeError::ClaimsOwnId { own });
    }
    if body.nonce.len() != PEER_NONCE_BYTES {
        return Err(HandshakeError::BadNonce {
            bytes: body.nonce.len(),
        });
    }
    if secret.is_none() && !(local.ip().is_loopback() && remote.ip().is_loopback()) {
        return Err(HandshakeError::NotLoopback { local, remote });
    }
    Ok(body.from)
}

/// The acceptor's side, after it read `hello` as the connection's first frame: checks it,
/// answers with a challenge, and checks the connector's proof. `Ok` is the proved peer.
pub async fn accept<R, W>(
    reader: &mut R,
    writer: &mut W,
    hello: &PeerHello,
    own: NodeId,
    secret: Option<&ClusterSecret>,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<NodeId, HandshakeError>
where
    R: Stream<Item = Result<bytes::BytesMut, FrameError>> + Unpin,
    W: Sink<Bytes, Error = FrameError> + Unpin,
{
    let from = check_hello(hello, own, secret, local, remote)?;
    let nonce_c = &hello.peer_hello.nonce[..];
    let nonce_s = random_bytes::<PEER_NONCE_BYTES>();
    let mac_s = match secret {
        Some(secret) => Bytes::copy_from_slice(
            &secret
                .mac(SERVER_LABEL, from, own, (nonce_c, &nonce_s))
                .finalize()
                .into_bytes(),
        ),
        None => Bytes::new(),
    };
    let challenge = encode_peer_challenge(&PeerChallenge {
        peer_challenge: PeerChallengeBody {
            nonce: Bytes::copy_from_slice(&nonce_s),
            mac: mac_s,
        },
    });
    writer
        .send(challenge)
        .await
        .map_err(|error| HandshakeError::Io(error.to_string()))?;
    let frame = next_frame(reader).await?;
    let proof = decode_peer_proof(&frame).ok_or(HandshakeError::UnexpectedFrame)?;
    let mac_c = proof.peer_proof.mac;
    // Without a secret there is nothing to check against (the loopback rule admitted the
    // connection); a connector that has one already refused our empty proof.
    if let Some(secret) = secret {
        if mac_c.is_empty() {
            return Err(HandshakeError::MissingProof);
        }
        secret
            .mac(CLIENT_LABEL, from, own, (nonce_c, &nonce_s))
            .verify_slice(&mac_c)
            .map_err(|_| HandshakeError::BadProof)?;
    }
    Ok(from)
}

/// The connector's side: sends the hello, checks the acceptor's proof, sends its own.
pub async fn connect<S>(
    framed: &mut Framed<S, FrameCodec>,
    own: NodeId,
    to: NodeId,
    secret: Option<&ClusterSecret>,
) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let nonce_c = random_bytes::<PEER_NONCE_BYTES>();
    let hello = encode_peer_hello(&PeerHello {
        peer_hello: PeerHelloBody {
            version: PEER_PROTOCOL_VERSION,
            from: own,
            to,
            nonce: Bytes::copy_from_slice(&nonce_c),
        },
    });
    framed
        .send(hello)
        .await
        .map_err(|error| HandshakeError::Io(error.to_string()))?;
    let frame = next_frame(framed).await?;
    let challenge = decode_peer_challenge(&frame).ok_or(HandshakeError::UnexpectedFrame)?;
    let nonce_s = challenge.peer_challenge.nonce;
    if nonce_s.len() != PEER_NONCE_BYTES {
        return Err(HandshakeError::BadNonce {
            bytes: nonce_s.len(),
        });
    }
    let mac_c = match secret {
        Some(secret) => {
            let mac_s = challenge.peer_challenge.mac;
            if mac_s.is_empty() {
                return Err(HandshakeError::MissingProof);
            }
            if mac_s.len() != PEER_MAC_BYTES {
                return Err(HandshakeError::BadProof);
            }
            secret
                .mac(SERVER_LABEL, own, to, (&nonce_c, &nonce_s))
                .verify_slice(&mac_s)
                .map_err(|_| HandshakeError::BadProof)?;
            Bytes::copy_from_slice(
                &secret
                    .mac(CLIENT_LABEL, own, to, (&nonce_c, &nonce_s))
                    .finalize()
                    .into_bytes(),
            )
        }
        None => Bytes::new(),
    };
    framed
        .send(encode_peer_proof(&PeerProof {
            peer_proof: PeerProofBody { mac: mac_c },
        }))
        .await
        .map_err(|error| HandshakeError::Io(error.to_string()))?;
    Ok(())
}

/// `N` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Without a working random source no nonce can be trusted; the node cannot work safely.
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

/// The start-up line about peer authentication, for an operator reading the log.
pub fn startup_notice(secret: Option<&ClusterSecret>, listen: SocketAddr) -> Option<String> {
    match secret {
        Some(_) => None,
        None if listen.ip().is_loopback() => Some(
            "no cluster secret configured: peer traffic accepted only from loopback, \
             unauthenticated; set --cluster-secret-file"
                .to_string(),
        ),
        None => Some(format!(
            "no cluster secret configured and listening on {listen}, which is not loopback: \
             all peer traffic will be refused; set --cluster-secret-file"
        )),
    }
}

/// Shortest time between two handshake-refusal warnings; those in between are only counted.
pub const REFUSAL_WARN_INTERVAL: Duration = crate::logging::REPEATED_WARNING_INTERVAL;

/// Logs refused handshakes at WARN at most once per [`REFUSAL_WARN_INTERVAL`], with the count
/// of those not logged since, so a flood of forged hellos costs a log line every few seconds.
#[derive(Debug)]
pub struct RefusalLog {
    limit: WarningRateLimit,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            limit: WarningRateLimit::new(REFUSAL_WARN_INTERVAL),
        }
    }
}

impl RefusalLog {
    /// Records a refusal; logs it unless one was logged within the interval.
    pub fn refused(&self, remote: SocketAddr, error: &HandshakeError) {
        match self.limit.admit(Instant::now()) {
            Some(suppressed) => {
                tracing::warn!(%remote, %error, suppressed, "peer handshake refused");
            }
            None => tracing::debug!(%remote, %error, "peer handshake refused"),
        }
    }

    /// Refusals not logged at WARN since the start (for a metrics endpoint).
    pub fn suppressed_total(&self) -> u64 {
        self.limit.suppressed_total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;
    use tokio_util::codec::FramedRead;
    use tokio_util::codec::FramedWrite;

    fn secret(text: &str) -> ClusterSecret {
        ClusterSecret::from_value("test", text.as_bytes()).unwrap()
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn hello(from: u32, to: u32, nonce: &[u8]) -> PeerHello {
        PeerHello {
            peer_hello: PeerHelloBody {
                version: PEER_PROTOCOL_VERSION,
                from: NodeId(from),
                to: NodeId(to),
                nonce: Bytes::copy_from_slice(nonce),
            },
        }
    }

    /// Runs both sides over an in-memory pipe; returns (connector's result, acceptor's result).
    async fn handshake(
        connector_secret: Option<ClusterSecret>,
        acceptor_secret: Option<ClusterSecret>,
        remote: SocketAddr,
    ) -> (Result<(), HandshakeError>, Result<NodeId, HandshakeError>) {
        let (near, far) = tokio::io::duplex(4096);
        let connector = async move {
            let mut framed = Framed::new(near, FrameCodec::new(4096));
            connect(&mut framed, NodeId(2), NodeId(1), connector_secret.as_ref()).await
        };
        let acceptor = async move {
            let (read, write) = tokio::io::split(far);
            let mut reader = FramedRead::new(read, FrameCodec::new(4096));
            let mut writer: FramedWrite<tokio::io::WriteHalf<DuplexStream>, FrameCodec> =
                FramedWrite::new(write, FrameCodec::new(4096));
            let first = next_frame(&mut reader).await?;
            let hello = cairn_protocol::peer::decode_peer_hello(&first)
                .ok_or(HandshakeError::UnexpectedFrame)?;
            accept(
                &mut reader,
                &mut writer,
                &hello,
                NodeId(1),
                acceptor_secret.as_ref(),
                loopback(7171),
                remote,
            )
            .await
        };
        let (connected, accepted) = tokio::join!(
            tokio::time::timeout(HANDSHAKE_TIMEOUT, connector),
            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor)
        );
        (
            connected.unwrap_or(Err(HandshakeError::Timeout)),
            accepted.unwrap_or(Err(HandshakeError::Timeout)),
        )
    }

    #[tokio::test]
    async fn the_same_secret_on_both_sides_is_accepted() {
        let shared = secret("sixteen-bytes-at-least");
        let (connected, accepted) =
            handshake(Some(shared.clone()), Some(shared), loopback(5000)).await;
        assert_eq!(connected, Ok(()));
        assert_eq!(accepted, Ok(NodeId(2)));
    }

    #[tokio::test]
    async fn a_different_secret_is_refused_by_both_sides() {
        let (connected, accepted) = handshake(
            Some(secret("the-connector-secret")),
            Some(secret("the-acceptor-secret!")),
            loopback(5000),
        )
        .await;
        // The connector refuses first: the acceptor's proof is wrong, so it sends none.
        assert_eq!(connected, Err(HandshakeError::BadProof));
        assert!(accepted.is_err(), "{accepted:?}");
    }

    #[tokio::test]
    async fn a_connector_without_the_secret_is_refused() {
        let (_, accepted) =
            handshake(None, Some(secret("sixteen-bytes-at-least")), loopback(5000)).await;
        assert_eq!(accepted, Err(HandshakeError::MissingProof));
    }

    #[tokio::test]
    async fn a_connector_with_a_secret_refuses_an_acceptor_without_one() {
        let (connected, _) =
            handshake(Some(secret("sixteen-bytes-at-least")), None, loopback(5000)).await;
        assert_eq!(connected, Err(HandshakeError::MissingProof));
    }

    #[tokio::test]
    async fn without_a_secret_only_loopback_is_admitted() {
        let (connected, accepted) = handshake(None, None, loopback(5000)).await;
        assert_eq!(connected, Ok(()));
        assert_eq!(accepted, Ok(NodeId(2)));
        let remote = SocketAddr::from(([10, 1, 2, 3], 5000));
        let (_, accepted) = handshake(None, None, remote).await;
        assert!(matches!(accepted, Err(HandshakeError::NotLoopback { .. })));
    }

    #[test]
    fn hellos_are_checked_before_any_answer() {
        let nonce = [7u8; PEER_NONCE_BYTES];
        let shared = secret("sixteen-bytes-at-least");
        let check = |hello: &PeerHello| {
            check_hello(hello, NodeId(1), Some(&shared), loopback(1), loopback(2))
        };
        assert_eq!(check(&hello(2, 1, &nonce)), Ok(NodeId(2)));
        assert_eq!(
            check(&hello(1, 1, &nonce)),
            Err(HandshakeError::ClaimsOwnId { own: NodeId(1) })
        );
        assert_eq!(
            check(&hello(2, 3, &nonce)),
            Err(HandshakeError::WrongNode {
                to: NodeId(3),
                own: NodeId(1)
            })
        );
        assert_eq!(
            check(&hello(2, 1, &nonce[..5])),
            Err(HandshakeError::BadNonce { bytes: 5 })
        );
        let mut old = hello(2, 1, &nonce);
        old.peer_hello.version = 1;
        assert_eq!(check(&old), Err(HandshakeError::Version { got: 1 }));
    }

    #[test]
    fn proofs_depend_on_direction_nodes_and_both_nonces() {
        let shared = secret("sixteen-bytes-at-least");
        let nonces = ([1u8; 32], [2u8; 32]);
        let tag = |label, from, to, a: &[u8], b: &[u8]| {
            shared
                .mac(label, NodeId(from), NodeId(to), (a, b))
                .finalize()
                .into_bytes()
                .to_vec()
        };
        let base = tag(SERVER_LABEL, 2, 1, &nonces.0, &nonces.1);
        assert_eq!(base.len(), PEER_MAC_BYTES);
        assert_ne!(base, tag(CLIENT_LABEL, 2, 1, &nonces.0, &nonces.1));
        assert_ne!(base, tag(SERVER_LABEL, 3, 1, &nonces.0, &nonces.1));
        assert_ne!(base, tag(SERVER_LABEL, 2, 4, &nonces.0, &nonces.1));
        assert_ne!(base, tag(SERVER_LABEL, 2, 1, &nonces.1, &nonces.1));
        assert_ne!(base, tag(SERVER_LABEL, 2, 1, &nonces.0, &nonces.0));
    }

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_bytes() {
        assert!(matches!(
            ClusterSecret::from_value("env", b"short\n"),
            Err(SecretError::TooShort { bytes: 5, .. })
        ));
        let secret = secret("a-secret-of-enough-bytes\n");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("a-secret"), "{shown}");
        assert_eq!(secret, self::secret("a-secret-of-enough-bytes"));
    }

    #[test]
    fn a_generated_secret_file_is_owner_only_is_accepted_and_is_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster-secret");
        cairn_protocol::peer::ensure_cluster_secret_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = ClusterSecret::from_file(&path).unwrap();
        cairn_protocol::peer::ensure_cluster_secret_file(&path).unwrap();
        assert_eq!(ClusterSecret::from_file(&path).unwrap(), first);
        let other = dir.path().join("other");
        cairn_protocol::peer::ensure_cluster_secret_file(&other).unwrap();
        assert_ne!(ClusterSecret::from_file(&other).unwrap(), first);
    }

    #[test]
    fn refusal_warnings_are_rate_limited() {
        let log = RefusalLog::default();
        let start = Instant::now();
        assert_eq!(log.limit.admit(start), Some(0));
        assert_eq!(log.limit.admit(start + Duration::from_millis(10)), None);
        assert_eq!(
            log.limit
                .admit(start + REFUSAL_WARN_INTERVAL + Duration::from_millis(10)),
            Some(1)
        );
        assert_eq!(log.suppressed_total(), 1);
    }
}
