//! Attacks past the TLS handshake, by a client holding no token: (e) idle
//! HTTP/2 connections, (f) streams whose one message never completes, with
//! junk bearers, (g) one address opening connections as fast as it can.
//! Each attacker address is on loopback (127.0.0.0/8 all reaches the
//! coordinator), so the per-address cap applies as it would to a host.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::{SERVER_NAME, stopped};

/// (e) Idle connections held at once, spread over [`ATTACKER_ADDRESSES`].
pub const IDLE_CONNECTIONS: usize = 2000;
/// (f) Connections, each with two unfinished streams.
pub const UNFINISHED_CONNECTIONS: usize = 3000;
/// Addresses the attacker of (e) and (f) spreads over: 127.0.1.1 and on.
pub const ATTACKER_ADDRESSES: usize = 250;
/// (g) The one address that floods.
pub const FLOOD_ADDRESS: [u8; 4] = [127, 0, 0, 2];

/// A TLS client trusting the bench's CA, offering HTTP/2.
pub fn connector(ca_file: &std::path::Path) -> Result<TlsConnector, super::BoxError> {
    let mut roots = RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The `index`th attacker address.
fn attacker_address(index: usize) -> IpAddr {
    let index = index % ATTACKER_ADDRESSES;
    let low = u8::try_from(index % 250 + 1).unwrap_or(1);
    IpAddr::from([127, 0, 1, low])
}

async fn tls_from(
    local: IpAddr,
    grpc: SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    let tcp = socket.connect(grpc).await?;
    let name = ServerName::try_from(SERVER_NAME).map_err(std::io::Error::other)?;
    connector.connect(name, tcp).await
}

/// (e) [`IDLE_CONNECTIONS`] TLS connections that send the HTTP/2 preface
/// and an empty SETTINGS frame, then nothing; each one the coordinator
/// closes is opened again. Reports how long they lasted.
pub async fn idle_connections(
    grpc: SocketAddr,
    connector: TlsConnector,
    mut stop: watch::Receiver<bool>,
) -> String {
    let (closed, close) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..IDLE_CONNECTIONS {
        let (connector, closed, opened) = (connector.clone(), closed.clone(), Arc::clone(&opened));
        tasks.spawn(async move {
            loop {
                let Ok(mut tls) = tls_from(attacker_address(index), grpc, &connector).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let started = Instant::now();
                let _ = tls
                    .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                    .await;
                let mut buffer = [0u8; 1024];
                while matches!(
                    tokio::io::AsyncReadExt::read(&mut tls, &mut buffer).await,
                    Ok(n) if n > 0
                ) {}
                let _ = closed.send(started.elapsed());
            }
        });
    }
    drop(closed);
    stopped(&mut stop).await;
    tasks.abort_all();
    let mut lifetimes = Vec::new();
    let mut close = close;
    while let Ok(lasted) = close.try_recv() {
        lifetimes.push(lasted);
    }
    lifetimes.sort();
    let median = lifetimes.get(lifetimes.len() / 2).copied();
    format!(
        "{IDLE_CONNECTIONS} held at once over {ATTACKER_ADDRESSES} addresses, {} opened, {} closed by the coordinator (median lifetime {})",
        opened.load(std::sync::atomic::Ordering::Relaxed),
        lifetimes.len(),
        median.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    )
}

/// (f) [`UNFINISHED_CONNECTIONS`] connections, each with two CheckIn
/// streams with a junk bearer whose 64 KiB message is sent but for its last
/// byte; each answered stream is opened again at once, each closed
/// connection too. Reports the answers by grpc-status.
pub async fn unfinished_streams(
    grpc: SocketAddr,
    connector: TlsConnector,
    mut stop: watch::Receiver<bool>,
) -> String {
    let answers = Arc::new(std::sync::Mutex::new(super::Tally::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..UNFINISHED_CONNECTIONS {
        let (connector, answers) = (connector.clone(), Arc::clone(&answers));
        tasks.spawn(async move {
            loop {
                let Ok(tls) = tls_from(attacker_address(index), grpc, &connector).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let Ok((sender, connection)) = h2::client::handshake(tls).await else {
                    continue;
                };
                let connection = tokio::spawn(connection);
                let streams = (0..2).map(|_| unfinished_calls(sender.clone(), &answers));
                futures::future::join_all(streams).await;
                connection.abort();
            }
        });
    }
    stopped(&mut stop).await;
    tasks.abort_all();
    let tally = answers.lock().map(|t| t.to_string()).unwrap_or_default();
    format!(
        "{UNFINISHED_CONNECTIONS} connections × 2 streams over {ATTACKER_ADDRESSES} addresses, each message missing its last byte; answers: {tally}"
    )
}

/// Unfinished junk CheckIns on one connection, one after another, until the
/// connection fails.
async fn unfinished_calls(
    sender: h2::client::SendRequest<Bytes>,
    answers: &std::sync::Mutex<super::Tally>,
) {
    let mut message = vec![0u8, 0, 1, 0, 0];
    message.extend(std::iter::repeat_n(0x0a, 64 * 1024 - 1));
    let message = Bytes::from(message);
    loop {
        let Ok(mut ready) = sender.clone().ready().await else {
            return;
        };
        let request = http::Request::post(format!(
            "https://{SERVER_NAME}/kata.health.v1.NodeHealth/CheckIn"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", "Bearer junk.junk.junk")
        .body(());
        let Ok(request) = request else { return };
        let Ok((response, mut body)) = ready.send_request(request, false) else {
            return;
        };
        let _ = body.send_data(message.clone(), false);
        let answer = match response.await {
            Ok(response) => response
                .headers()
                .get("grpc-status")
                .and_then(|s| s.to_str().ok())
                .map_or_else(|| "no status".to_owned(), |s| format!("grpc-status {s}")),
            Err(error) => format!("stream failed: {error}"),
        };
        let failed = answer.starts_with("stream failed");
        if let Ok(mut tally) = answers.lock() {
            tally.count(answer);
        }
        if failed {
            return;
        }
    }
}

/// (g) From [`FLOOD_ADDRESS`], TLS connections opened one after another as
/// fast as they complete, all held. Reports how many the coordinator took
/// before the first it closed, and the total.
pub async fn connection_flood(
    grpc: SocketAddr,
    connector: TlsConnector,
    stop: watch::Receiver<bool>,
) -> String {
    let mut held = Vec::new();
    let (mut refused, mut first_refused_after) = (0u64, None);
    let started = Instant::now();
    while !*stop.borrow() {
        match tls_from(IpAddr::from(FLOOD_ADDRESS), grpc, &connector).await {
            Ok(tls) => held.push(tls),
            Err(_) => {
                refused += 1;
                first_refused_after.get_or_insert(held.len());
            }
        }
    }
    format!(
        "{} held and {refused} refused in {:.0} s from {}; the first refused after {}",
        held.len(),
        started.elapsed().as_secs_f64(),
        IpAddr::from(FLOOD_ADDRESS),
        first_refused_after.map_or("none".into(), |n| format!("{n} held"))
    )
}
