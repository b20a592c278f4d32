//! QUIC transport: quinn endpoints with TLS 1.3 (rustls, ring), self-signed
//! certificates carrying the peer's Ed25519 identity key, and peers pinned
//! by [`NodeId`] instead of any web PKI.
//!
//! Both sides always present a certificate: servers learn who called from
//! [`peer_id`], clients check that the server's key hashes to the id they
//! dialed. Stream counts, flow-control windows and idle timeouts are set
//! explicitly in [`TransportConfig`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{Identity, NodeId, PublicKey};

/// ALPN protocol id of Loam's RPC protocol, version 1.
pub const ALPN: &[u8] = b"loam/1";
const SERVER_NAME: &str = "loam";

/// Largest QUIC packet that path MTU discovery looks for: ten of them (one
/// GSO batch) fit in a 64 KiB UDP datagram.
const MAX_UDP_PAYLOAD: u16 = 6500;

/// QUIC packet size between two endpoints on one host. The loopback
/// interface's MTU is 64 KiB; with one packet per datagram (no GSO batch)
/// a packet may use nearly all of it, which divides the per-packet work of
/// a transfer by ten.
const LOOPBACK_UDP_PAYLOAD: u16 = 65_000;

/// Receive windows for a loopback peer (per stream; the connection's is
/// twice this). A download reads from four to six nodes into one socket
/// buffer (4 MiB): with the usual 8 MiB windows they overrun it, and each
/// datagram dropped halves a sender's congestion window. At loopback round
/// trips of ~100 µs, 1 MiB in flight still carries several GB/s.
const LOOPBACK_STREAM_WINDOW: u32 = 1 << 20;

/// Largest UDP datagram an endpoint accepts (and advertises), so loopback
/// peers can use [`LOOPBACK_UDP_PAYLOAD`].
const MAX_RECEIVE_PAYLOAD: u16 = LOOPBACK_UDP_PAYLOAD + 20;

/// Explicit QUIC limits (quinn's connection receive window is unlimited by
/// default; ours is not).
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Concurrent bidirectional streams a peer may open. Default 256.
    pub max_concurrent_streams: u32,
    /// Per-stream receive window. Default 8 MiB (1 MiB at most for a
    /// loopback peer).
    pub stream_receive_window: u32,
    /// Per-connection receive window. Default 32 MiB (2 MiB at most for a
    /// loopback peer).
    pub receive_window: u32,
    /// Per-connection send window. Default 32 MiB.
    pub send_window: u64,
    /// Connection closed after this long without traffic. Default 30 s.
    pub max_idle_timeout: Duration,
    /// Keep-alive ping interval. Default 10 s.
    pub keep_alive_interval: Duration,
    /// UDP socket send and receive buffers. Default 4 MiB.
    pub socket_buffer: usize,
    /// Largest UDP payload that path MTU discovery searches for. Default
    /// and maximum 6500 bytes: paths with a 1500-byte MTU settle at ~1452
    /// after a few lost probes, while jumbo-frame links use packets four
    /// times larger, which cuts the per-packet CPU cost of a transfer.
    /// Larger values are capped: quinn hands the kernel up to ten packets
    /// per send (UDP GSO), and such a batch must fit in one 64 KiB datagram.
    /// Connections to a loopback address use 65,000-byte packets from the
    /// start instead, one per datagram.
    pub max_udp_payload: u16,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            stream_receive_window: 8 << 20,
            receive_window: 32 << 20,
            send_window: 32 << 20,
            max_idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(10),
            socket_buffer: 4 << 20,
            max_udp_payload: MAX_UDP_PAYLOAD,
        }
    }
}

impl TransportConfig {
    /// quinn's settings for a connection with a peer on this host
    /// (`loopback`) or elsewhere.
    fn quinn(&self, loopback: bool) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        let (mut stream_window, mut window) = (self.stream_receive_window, self.receive_window);
        if loopback {
            // The path MTU is known, so there is no discovery (its probes
            // are padding that the peer parses a byte at a time). If losses
            // look like a black hole, the MTU falls back to the largest size
            // discovery would look for elsewhere. The congestion window
            // opens at ten packets, as it does for ordinary ones; quinn's
            // default (14,720 bytes) would not let one of these out.
            let mut cubic = quinn::congestion::CubicConfig::default();
            cubic.initial_window(10 * u64::from(LOOPBACK_UDP_PAYLOAD));
            t.initial_mtu(LOOPBACK_UDP_PAYLOAD)
                .min_mtu(MAX_UDP_PAYLOAD)
                .mtu_discovery_config(None)
                .enable_segmentation_offload(false)
                .congestion_controller_factory(Arc::new(cubic));
            stream_window = stream_window.min(LOOPBACK_STREAM_WINDOW);
            window = window.min(2 * LOOPBACK_STREAM_WINDOW);
        } else {
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(self.max_udp_payload.min(MAX_UDP_PAYLOAD));
            t.mtu_discovery_config(Some(mtu));
        }
        t.max_concurrent_bidi_streams(self.max_concurrent_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            .stream_receive_window(stream_window.into())
            .receive_window(window.into())
            .send_window(self.send_window)
            .keep_alive_interval(Some(self.keep_alive_interval))
            .max_idle_timeout(Some(
                self.max_idle_timeout
                    .try_into()
                    .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000))),
            ));
        Arc::new(t)
    }
}

/// rustls with *ring*, its TLS 1.3 cipher suites preferring AES-128-GCM.
/// Every byte a transfer moves is sealed and opened by the connection's
/// cipher, on top of the end-to-end AES-256-GCM of the content, and
/// AES-128-GCM does the same work in 10 AES rounds a block instead of 14
/// (see docs/performance.md). It is TLS 1.3's mandatory suite and the
/// first choice of most QUIC stacks; AES-256-GCM and ChaCha20-Poly1305
/// remain on offer.
fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// Whether `addr` is on this host's loopback interface (IPv4-mapped
/// addresses included).
fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build TLS configuration: {0}")]
    Tls(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("connection to {addr} failed: {source}")]
    Connection {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
    #[error("peer presented no usable Ed25519 certificate")]
    NoPeerIdentity,
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        address: String,
        source: std::io::Error,
    },
}

/// A QUIC endpoint speaking Loam's protocol with one identity.
#[derive(Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    identity: Identity,
    cert: CertificateDer<'static>,
    config: TransportConfig,
    /// The server settings for loopback peers (the endpoint's own are for
    /// everyone else).
    loopback_server: Arc<quinn::ServerConfig>,
    pool: Arc<Mutex<HashMap<NodeId, quinn::Connection>>>,
}

impl Endpoint {
    /// Binds a client-and-server endpoint on `addr` (port 0 picks a free one).
    pub fn bind(
        identity: Identity,
        addr: SocketAddr,
        config: TransportConfig,
    ) -> Result<Self, TransportError> {
        let cert = self_signed_cert(&identity)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key().pkcs8_der()));
        let provider = tls_provider();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_client_cert_verifier(Arc::new(AnyEd25519Client {
                provider: provider.clone(),
            }))
            .with_single_cert(vec![cert.clone()], key)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.max_early_data_size = 0;
        let quic_tls =
            QuicServerConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
        let mut loopback_server = server.clone();
        loopback_server.transport_config(config.quinn(true));
        server.transport_config(config.quinn(false));

        let socket = udp_socket(addr, config.socket_buffer)
            .map_err(|source| TransportError::Bind { addr, source })?;
        // The stateless-reset key and the key that marks this endpoint's
        // connection IDs come from the identity, so a process restarted on
        // the same address (after a crash, an upgrade) recognises its
        // predecessor's connection IDs and ends those connections at once:
        // a peer that sends on one gets a reset it can verify and
        // reconnects, instead of waiting out the idle timeout.
        let seed = identity.key().seed();
        let reset_key = blake3::derive_key("loam/v1 QUIC stateless reset", &seed);
        let cid_key = blake3::derive_key("loam/v1 QUIC connection IDs", &seed);
        let cid_key = u64::from_le_bytes(cid_key[..8].try_into().expect("8 bytes"));
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &reset_key,
        )));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        endpoint_config
            .max_udp_payload_size(MAX_RECEIVE_PAYLOAD)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let inner = quinn::Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| TransportError::Bind { addr, source })?;
        Ok(Self {
            inner,
            identity,
            cert,
            config,
            loopback_server: Arc::new(loopback_server),
            pool: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Waits for the next incoming connection; `None` once closed. Await
    /// the [`Incoming`] to run its handshake.
    pub async fn accept(&self) -> Option<Incoming> {
        let inner = self.inner.accept().await?;
        Some(Incoming {
            inner,
            loopback_server: self.loopback_server.clone(),
        })
    }

    /// Connects to `addr`, accepting only a peer whose key hashes to `id`.
    pub async fn connect(
        &self,
        id: NodeId,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, TransportError> {
        self.connect_pinned(Some(id), addr).await
    }

    /// Connects to the peer `url` names, at every address it lists at once:
    /// the first to complete a handshake is kept, so a peer served by
    /// several processes (a satellite on a shared database) stays
    /// reachable while one of them is down, at no more than one
    /// handshake's time. Fails with the last address's error when none
    /// answers.
    pub async fn connect_url(
        &self,
        url: &crate::NodeUrl,
    ) -> Result<quinn::Connection, TransportError> {
        let addrs = url
            .socket_addrs()
            .map_err(|source| TransportError::Resolve {
                address: url.address.clone(),
                source,
            })?;
        if let [addr] = addrs.as_slice() {
            return self.connect(url.id, *addr).await;
        }
        let tries = addrs
            .into_iter()
            .map(|addr| Box::pin(self.connect(url.id, addr)));
        futures::future::select_ok(tries).await.map(|(c, _)| c)
    }

    /// Connects to `addr` whatever its key, to learn who answers there
    /// ([`peer_id`]): how setup tells a wrong satellite id from an
    /// unreachable address. Nothing sent over it is trusted.
    pub async fn probe(&self, addr: SocketAddr) -> Result<quinn::Connection, TransportError> {
        self.connect_pinned(None, addr).await
    }

    async fn connect_pinned(
        &self,
        id: Option<NodeId>,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, TransportError> {
        let provider = tls_provider();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.identity.key().pkcs8_der()));
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer {
                expected: id,
                provider,
            }))
            .with_client_auth_cert(vec![self.cert.clone()], key)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic_tls =
            QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic_tls));
        client.transport_config(self.config.quinn(is_loopback(addr)));
        let connecting = self
            .inner
            .connect_with(client, addr, SERVER_NAME)
            .map_err(|source| TransportError::Connect { addr, source })?;
        connecting
            .await
            .map_err(|source| TransportError::Connection { addr, source })
    }

    /// Like [`Endpoint::connect`], reusing an open connection to `id`.
    pub async fn dial(
        &self,
        id: NodeId,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, TransportError> {
        if let Some(conn) = self.pool.lock().expect("pool lock").get(&id)
            && conn.close_reason().is_none()
            && conn.remote_address() == addr
        {
            return Ok(conn.clone());
        }
        let conn = self.connect(id, addr).await?;
        self.pool
            .lock()
            .expect("pool lock")
            .insert(id, conn.clone());
        Ok(conn)
    }

    /// Like [`Endpoint::connect_url`], reusing an open connection to the
    /// peer at any of its addresses.
    pub async fn dial_url(
        &self,
        url: &crate::NodeUrl,
    ) -> Result<quinn::Connection, TransportError> {
        if let Some(conn) = self.pool.lock().expect("pool lock").get(&url.id)
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        let conn = self.connect_url(url).await?;
        self.pool
            .lock()
            .expect("pool lock")
            .insert(url.id, conn.clone());
        Ok(conn)
    }

    /// Drops a pooled connection (after an error on it).
    pub fn forget(&self, id: &NodeId) {
        self.pool.lock().expect("pool lock").remove(id);
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.inner.close(quinn::VarInt::from_u32(0), b"shutdown");
    }

    /// Waits until every connection is closed.
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
    }

    /// Closes every connection and stops accepting, then waits (at most
    /// `limit`) until each pooled connection, and each of `others` (ones
    /// made with [`Endpoint::connect`] and kept by the caller), has sent
    /// its close frame, so its peer frees the connection at once instead of
    /// at its idle timeout. For a process about to exit: the draining
    /// period that follows the close frame (three probe timeouts, which
    /// [`Endpoint::wait_idle`] waits out) protects nothing it needs.
    pub async fn close_and_flush(
        &self,
        others: impl IntoIterator<Item = quinn::Connection>,
        limit: Duration,
    ) {
        let mut conns: Vec<quinn::Connection> = self
            .pool
            .lock()
            .expect("pool lock")
            .values()
            .cloned()
            .collect();
        conns.extend(others);
        // Once closed, a connection sends nothing but its close frame: the
        // next datagram it sends is that frame. Connections the peer closed
        // or that timed out earlier send nothing.
        let closing: Vec<(quinn::Connection, u64)> = conns
            .into_iter()
            .filter(|c| c.close_reason().is_none())
            .map(|c| {
                let sent = c.stats().udp_tx.datagrams;
                c.close(quinn::VarInt::from_u32(0), b"shutdown");
                (c, sent)
            })
            .collect();
        self.close();
        let deadline = std::time::Instant::now() + limit;
        // The connections' drivers send the frames on the runtime's threads
        // within microseconds; a timer would wait a whole tick.
        while closing
            .iter()
            .any(|(c, sent)| c.stats().udp_tx.datagrams == *sent)
            && std::time::Instant::now() < deadline
        {
            tokio::task::yield_now().await;
        }
    }
}

/// A connection attempt that has not been accepted yet. Awaiting it runs
/// the handshake, with the settings for where the peer is.
pub struct Incoming {
    inner: quinn::Incoming,
    loopback_server: Arc<quinn::ServerConfig>,
}

impl Incoming {
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }
}

impl std::future::IntoFuture for Incoming {
    type Output = Result<quinn::Connection, quinn::ConnectionError>;
    type IntoFuture =
        std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send + 'static>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            if is_loopback(self.inner.remote_address()) {
                self.inner.accept_with(self.loopback_server)?.await
            } else {
                self.inner.await
            }
        })
    }
}

/// The id of the peer on an established connection.
pub fn peer_id(conn: &quinn::Connection) -> Result<(NodeId, PublicKey), TransportError> {
    let identity = conn.peer_identity().ok_or(TransportError::NoPeerIdentity)?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TransportError::NoPeerIdentity)?;
    let cert = certs.first().ok_or(TransportError::NoPeerIdentity)?;
    let key = cert_public_key(cert).ok_or(TransportError::NoPeerIdentity)?;
    Ok((key.node_id(), key))
}

fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn self_signed_cert(identity: &Identity) -> Result<CertificateDer<'static>, TransportError> {
    let der = identity.key().pkcs8_der();
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der),
        &rcgen::PKCS_ED25519,
    )
    .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, identity.id().to_string());
    let cert = params
        .self_signed(&key)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    Ok(cert.der().clone())
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The Ed25519 key in a certificate's SubjectPublicKeyInfo, if that is what it holds.
fn cert_public_key(cert: &CertificateDer<'_>) -> Option<PublicKey> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let spki = spki.as_ref();
    if spki.len() != ED25519_SPKI_PREFIX.len() + 32 || !spki.starts_with(&ED25519_SPKI_PREFIX) {
        return None;
    }
    PublicKey::try_from(&spki[ED25519_SPKI_PREFIX.len()..]).ok()
}

fn verify_handshake(
    provider: &rustls::crypto::CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// Client side: accept exactly the server whose key hashes to `expected`
/// (any Ed25519 key when `None`).
#[derive(Debug)]
struct PinnedServer {
    expected: Option<NodeId>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = cert_public_key(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        if self.expected.is_some_and(|id| key.node_id() != id) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server side: every client must prove possession of an Ed25519 key; the
/// application decides what that identity may do.
#[derive(Debug)]
struct AnyEd25519Client {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for AnyEd25519Client {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        cert_public_key(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_prefer_aes_128_gcm() {
        let suites: Vec<_> = tls_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            suites,
            [
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        );
    }

    fn endpoint() -> Endpoint {
        let id = Identity::generate(0, |_| {});
        Endpoint::bind(
            id,
            "127.0.0.1:0".parse().expect("addr"),
            TransportConfig::default(),
        )
        .expect("bind")
    }

    /// A server and a client endpoint, the server's address and id.
    fn pair() -> (Endpoint, Endpoint, SocketAddr, NodeId) {
        let (server, client) = (endpoint(), endpoint());
        let addr = server.local_addr().expect("addr");
        let server_id = server.identity().id();
        (server, client, addr, server_id)
    }

    /// The next connection `server` accepts, handshake done.
    async fn accept_one(server: &Endpoint) -> quinn::Connection {
        server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake")
    }

    #[tokio::test]
    async fn connects_to_pinned_id_and_learns_client_id() {
        let (server, client, addr, server_id) = pair();
        let accept = tokio::spawn(async move {
            let conn = accept_one(&server).await;
            peer_id(&conn).expect("client id").0
        });
        let conn = client.connect(server_id, addr).await.expect("connect");
        assert_eq!(peer_id(&conn).expect("server id").0, server_id);
        assert_eq!(accept.await.expect("join"), client.identity().id());
    }

    /// Loopback connections send full 65,000-byte packets both ways from
    /// the start, without path MTU probes, and move data intact.
    #[tokio::test]
    async fn loopback_peers_use_large_packets_without_probes() {
        let (server, client, addr, server_id) = pair();
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let echo = tokio::spawn(async move {
            let conn = accept_one(&server).await;
            let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
            let got = recv.read_to_end(8 << 20).await.expect("read");
            send.write_all(&got).await.expect("echo");
            send.finish().expect("finish");
            let _ = send.stopped().await;
            conn.stats().path
        });
        let conn = client.connect(server_id, addr).await.expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("open");
        send.write_all(&data).await.expect("write");
        send.finish().expect("finish");
        let back = recv.read_to_end(8 << 20).await.expect("read back");
        assert!(back == data, "data changed on the way");
        let server_path = echo.await.expect("join");
        for path in [conn.stats().path, server_path] {
            assert_eq!(path.current_mtu, LOOPBACK_UDP_PAYLOAD);
            assert_eq!(path.sent_plpmtud_probes, 0);
        }
    }

    /// Closes `client` with one connection to `server` open (pooled, or
    /// made outside the pool and handed to the close), checks that the
    /// connection sent something more once the call returned, and says how
    /// the server saw the connection end, after the client is gone.
    async fn close_one(pooled: bool) -> quinn::ConnectionError {
        let (server, client, addr, server_id) = pair();
        let accepted = tokio::spawn(async move {
            let conn = accept_one(&server).await;
            let reason = conn.closed().await;
            (server, reason)
        });
        let conn = if pooled {
            client.dial(server_id, addr).await.expect("dial")
        } else {
            client.connect(server_id, addr).await.expect("connect")
        };
        let before = conn.stats().udp_tx.datagrams;
        let given = (!pooled).then(|| conn.clone());
        client.close_and_flush(given, Duration::from_secs(5)).await;
        assert!(conn.stats().udp_tx.datagrams > before);
        drop(conn);
        drop(client);
        accepted.await.expect("join").1
    }

    /// A client that closes and flushes has sent its close frames when the
    /// call returns, for pooled connections and ones it is given alike:
    /// the server learns of the close (rather than timing out) though the
    /// client endpoint is gone by then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_and_flush_sends_every_close_frame() {
        for pooled in [true, false] {
            let reason = close_one(pooled).await;
            assert!(
                matches!(reason, quinn::ConnectionError::ApplicationClosed(_)),
                "pooled {pooled}: the server saw {reason:?}"
            );
        }
    }

    #[tokio::test]
    async fn refuses_a_server_with_another_id() {
        let server = endpoint();
        let client = endpoint();
        let addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Some(incoming) = server.accept().await {
                let _ = incoming.await;
            }
        });
        let wrong = Identity::generate(0, |_| {}).id();
        assert!(client.connect(wrong, addr).await.is_err());
    }
}
