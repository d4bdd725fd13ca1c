//! The health channel's accept loop against peers that never authenticate,
//! over real sockets and real TLS: silent connections cannot keep agents
//! out, a peer that sends no ClientHello is dropped, at the connection cap
//! the oldest connection gives way to a new one, and a certificate swapped under the running server is served
//! from the next handshake.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kata_coordinator::health::tls::{Limits, ServerTls, incoming_with};
use kata_tests::pki::{CertifiedKey, TestCa};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

pub(crate) const SERVER_NAME: &str = "kata-coordinator.test";
/// Generous: every wait here ends much sooner unless the code is wrong.
const PATIENCE: Duration = Duration::from_secs(30);

/// A TLS client trusting `ca_pem`, offering HTTP/2.
pub(crate) fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Serves `incoming_with` on a fresh port, holding each connection it
/// yields until the peer closes it (as the HTTP/2 server does); returns the
/// port.
async fn serve(acceptor: tokio_rustls::TlsAcceptor, limits: Limits) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut connections = Box::pin(incoming_with(
            listener,
            acceptor,
            limits,
            Default::default(),
        ));
        while let Some(connection) = connections.next().await {
            let mut connection = connection.unwrap();
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                while matches!(connection.read(&mut buffer).await, Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// The first certificate the server presents on a fresh connection.
async fn served_cert(port: u16, connector: &TlsConnector) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    Ok(session.peer_certificates().unwrap()[0].to_vec())
}

fn der(cert: &CertifiedKey) -> Vec<u8> {
    CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[kata_test]
async fn silent_peers_cannot_keep_an_agent_from_its_handshake() {
    let ca = TestCa::new("hardening-ca").unwrap();
    let cert = ca.server_cert(&[SERVER_NAME]).unwrap();
    let acceptor = ServerTls {
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
    }
    .acceptor()
    .unwrap();
    // Four handshake slots and a minute to say ClientHello: under the old
    // accept loop, 100 silent peers would hold every slot for that minute.
    let limits = Limits {
        handshake_concurrency: 4,
        client_hello_timeout: Duration::from_secs(60),
        // The silent peers stand for many addresses: all are 127.0.0.1 here.
        max_connections_per_peer: 1000,
        ..Limits::default()
    };
    let port = serve(acceptor, limits).await;
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let started = std::time::Instant::now();
    let served = tokio::time::timeout(PATIENCE, served_cert(port, &connector(&ca.cert_pem())))
        .await
        .expect("the agent's handshake finished while 100 silent peers were connected")
        .unwrap();
    assert_eq!(served, der(&cert));
    println!(
        "handshake beside 100 silent peers: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    drop(silent);
}

/// A fresh CA, and an acceptor serving a certificate it signed for
/// [`SERVER_NAME`].
pub(crate) fn ca_and_acceptor(ca_name: &str) -> (TestCa, tokio_rustls::TlsAcceptor) {
    let ca = TestCa::new(ca_name).unwrap();
    let cert = ca.server_cert(&[SERVER_NAME]).unwrap();
    let acceptor = ServerTls {
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
    }
    .acceptor()
    .unwrap();
    (ca, acceptor)
}

#[kata_test]
async fn a_peer_without_a_client_hello_is_dropped_and_at_the_cap_the_oldest_stranger_gives_way() {
    let (ca, acceptor) = ca_and_acceptor("hardening-ca");
    let limits = Limits {
        max_connections: 2,
        client_hello_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let port = serve(acceptor, limits).await;

    // Silent: closed by the server once its ClientHello deadline passes.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut byte))
        .await
        .expect("the server closed the silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(silent);

    // Two connections fill the cap. Neither has authenticated, so a third
    // takes the place of the oldest, which the server closes.
    let connector = connector(&ca.cert_pem());
    let connect = || async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        connector
            .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
            .await
    };
    // The silent connection's place comes back when its task ends.
    let mut first = loop {
        if let Ok(tls) = connect().await {
            break tls;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut second = connect().await.expect("the second fits the cap");
    let third = connect().await.expect("the third takes the oldest's place");
    let read = tokio::time::timeout(PATIENCE, first.read(&mut byte))
        .await
        .expect("the server closed the oldest connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The second is still open: the server has sent it nothing and not
    // closed it.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte))
            .await
            .is_err(),
        "only the oldest gives way"
    );
    drop((second, third));
}

#[kata_test]
async fn a_certificate_swapped_under_the_server_is_served_from_the_next_handshake() {
    let ca = TestCa::new("hardening-ca").unwrap();
    let old = ca.server_cert(&[SERVER_NAME]).unwrap();
    let new = ca.server_cert(&[SERVER_NAME]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = old.write(dir.path(), "tls").unwrap();
    let acceptor = ServerTls::reloading(&cert_file, &key_file).unwrap();
    let port = serve(acceptor, Limits::default()).await;
    let connector = connector(&ca.cert_pem());
    assert_eq!(served_cert(port, &connector).await.unwrap(), der(&old));

    // As a Secret volume does: the new pair appears under new inodes.
    let staged = tempfile::tempdir_in(dir.path()).unwrap();
    let (staged_cert, staged_key) = new.write(staged.path(), "tls").unwrap();
    std::fs::rename(&staged_key, &key_file).unwrap();
    std::fs::rename(&staged_cert, &cert_file).unwrap();
    let swapped = tokio::time::timeout(PATIENCE, async {
        loop {
            if served_cert(port, &connector).await.unwrap() == der(&new) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(swapped.is_ok(), "the new certificate is served");

    // A pair that does not load (garbage) leaves the good one in service.
    std::fs::write(&cert_file, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(served_cert(port, &connector).await.unwrap(), der(&new));
}
