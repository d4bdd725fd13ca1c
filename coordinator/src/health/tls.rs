//! TLS for the agents' channel, terminated here rather than by tonic so that
//! handshakes are admitted a bounded number at a time.
//!
//! When the coordinator starts, every agent of the cluster reconnects within
//! seconds. Each handshake in flight holds tens of kilobytes of transient
//! state; thousands at once spike the memory, and the long-lived connection
//! state allocated in between keeps that memory fragmented for good. A few
//! dozen at a time finish just as fast on two cores (handshakes are CPU
//! bound) and leave a compact heap. Connections waiting their turn wait in
//! the kernel's accept queue. A timeout keeps a client that never completes
//! its handshake from holding a slot.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{debug, warn};

/// Handshakes in progress at once.
pub const HANDSHAKE_CONCURRENCY: usize = 64;
/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// PEM certificate chain and private key of the coordinator's server cert.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServerTls {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate file holds no PEM certificate")]
    NoCertificate,
    #[error("the certificate file is not valid PEM: {0}")]
    Certificate(String),
    #[error("the key file holds no PEM private key: {0}")]
    Key(String),
    #[error("the certificate and key are not usable together: {0}")]
    Config(#[from] rustls::Error),
}

impl ServerTls {
    /// A TLS acceptor offering HTTP/2 by ALPN, as gRPC clients expect.
    /// Fails, saying why, on a certificate or key that cannot serve.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The connections accepted on `listener`, TLS established, at most
/// [`HANDSHAKE_CONCURRENCY`] handshakes at a time. A failed or timed-out
/// handshake is logged and dropped; the stream itself never ends or fails.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send + 'static {
    TcpListenerStream::new(listener)
        .filter_map(|accepted| async move {
            // Out of file descriptors, say: this connection is lost, the
            // next accept may succeed.
            accepted
                .inspect_err(|error| warn!(%error, "accepting an agent connection failed"))
                .ok()
        })
        .map(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let peer = tcp.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => Some(stream),
                    Ok(Err(error)) => {
                        debug!(?peer, %error, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        debug!(?peer, "TLS handshake timed out");
                        None
                    }
                }
            }
        })
        .buffer_unordered(HANDSHAKE_CONCURRENCY)
        .filter_map(|stream| async move { stream.map(Ok) })
}
