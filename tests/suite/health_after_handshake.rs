//! The health server past the TLS handshake, as `health::serve` runs it,
//! against peers that never authenticate, over real sockets, real TLS and
//! a real HTTP/2 client: a connection that carries no call is closed after
//! the idle timeout, one address cannot hold more than its share of
//! connections while another still connects, and a call with a junk bearer
//! is refused UNAUTHENTICATED from its headers while its body never
//! completes, each refusal counted, and its connection closed after.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kata_coordinator::health::connection::ConnectionBounds;
use kata_coordinator::health::tls::Limits;
use kata_coordinator::health::{AgentAuthenticator, HealthOptions, HealthRegistry, HealthService};
use kata_coordinator::metrics::{
    Metrics, REFUSED_IDLE, REFUSED_PEER_LIMIT, REFUSED_UNAUTHENTICATED, ReasonLabel,
};
use kata_tests::pki::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

use super::health_channel_hardening::{SERVER_NAME, ca_and_acceptor, connector};

/// Generous: every wait here ends much sooner unless the code is wrong.
const PATIENCE: Duration = Duration::from_secs(30);

struct Server {
    addr: SocketAddr,
    ca: TestCa,
    metrics: Metrics,
}

/// `health::serve` on a fresh loopback port with `limits`. Its
/// authenticator's API server does not exist: only bearers refused
/// before any request reach it here.
async fn serve(limits: Limits) -> Server {
    let (ca, acceptor) = ca_and_acceptor("after-handshake-ca");
    let nowhere = kube::Config::new("https://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(nowhere).unwrap();
    let metrics = Metrics::default();
    let authenticator = AgentAuthenticator::new(client, "kata-agents", "kata", "node-agent")
        .with_metrics(metrics.clone());
    let options = HealthOptions {
        limits,
        ..HealthOptions::default()
    };
    let service =
        HealthService::new(authenticator, HealthRegistry::new(), options).with_metrics(&metrics);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(kata_coordinator::health::serve(
        listener,
        acceptor,
        service,
        std::future::pending(),
    ));
    Server { addr, ca, metrics }
}

impl Server {
    /// A TLS connection from `local` (an address on loopback).
    async fn connect_from(
        &self,
        local: [u8; 4],
    ) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((local, 0)))?;
        let tcp = socket.connect(self.addr).await?;
        connector(&self.ca.cert_pem())
            .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
            .await
    }

    fn refused(&self, reason: &str) -> u64 {
        self.metrics
            .health_refused
            .get(&ReasonLabel {
                reason: reason.into(),
            })
            .map_or(0, |counter| counter.get())
    }
}

/// Reads until the server closes the connection; how long that took.
async fn closed_after(tls: &mut TlsStream<tokio::net::TcpStream>) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        while matches!(tls.read(&mut buffer).await, Ok(n) if n > 0) {}
    })
    .await
    .expect("the server closed the connection");
    started.elapsed()
}

#[kata_test]
async fn a_connection_without_a_call_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(500);
    let server = serve(Limits {
        bounds: ConnectionBounds {
            idle_timeout: idle,
            ..ConnectionBounds::default()
        },
        ..Limits::default()
    })
    .await;
    let mut tls = server.connect_from([127, 0, 0, 1]).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame: a client that then
    // says nothing more, and opens no stream.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let lasted = closed_after(&mut tls).await;
    assert!(
        lasted >= idle - Duration::from_millis(100),
        "closed before the idle timeout: {lasted:?}"
    );
    assert_eq!(server.refused(REFUSED_IDLE), 1);
    println!("idle connection closed after {lasted:?} (timeout {idle:?})");
}

#[kata_test]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let server = serve(Limits {
        max_connections_per_peer: 3,
        ..Limits::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(server.connect_from([127, 0, 0, 1]).await.unwrap());
    }
    // The fourth from 127.0.0.1 is closed at accept: its handshake fails.
    assert!(server.connect_from([127, 0, 0, 1]).await.is_err());
    assert_eq!(server.refused(REFUSED_PEER_LIMIT), 1);
    // Another address is not held to 127.0.0.1's share.
    let other = server.connect_from([127, 0, 0, 2]).await;
    assert!(other.is_ok(), "127.0.0.2 connects: {:?}", other.err());
    // A connection of 127.0.0.1's that closes gives its place back.
    drop(held.pop());
    let again = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(tls) = server.connect_from([127, 0, 0, 1]).await {
                break tls;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(again.is_ok(), "a closed connection gives its place back");
}

/// Starts a call to `method` with `bearer`, whose one message announces
/// 4 KiB and sends all but its last byte, the stream left open; returns the
/// call's grpc-status (the response headers' or trailers') and how long the
/// answer took.
async fn call_with_an_unfinished_body(
    sender: &h2::client::SendRequest<Bytes>,
    method: &str,
    bearer: &str,
) -> (Option<String>, Duration, h2::SendStream<Bytes>) {
    let request = http::Request::post(format!(
        "https://{SERVER_NAME}/kata.health.v1.NodeHealth/{method}"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("authorization", format!("Bearer {bearer}"))
    .body(())
    .unwrap();
    let started = Instant::now();
    let mut sender = sender.clone().ready().await.unwrap();
    let (response, mut body) = sender.send_request(request, false).unwrap();
    let mut message = vec![0u8, 0, 0, 0x10, 0];
    message.extend(std::iter::repeat_n(0x0a, 4095));
    body.send_data(Bytes::from(message), false).unwrap();
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("the call was answered while its body never completed")
        .unwrap();
    let took = started.elapsed();
    let status = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let mut grpc_status = status(response.headers());
    if grpc_status.is_none() {
        let mut response_body = response.into_body();
        let trailers = tokio::time::timeout(PATIENCE, response_body.trailers())
            .await
            .expect("trailers in time")
            .unwrap();
        grpc_status = trailers.as_ref().and_then(status);
    }
    (grpc_status, took, body)
}

#[kata_test]
async fn a_junk_bearer_is_refused_before_its_body_is_read_and_its_connection_closed() {
    let server = serve(Limits::default()).await;
    for method in ["CheckIn", "Report"] {
        let tls = server.connect_from([127, 0, 0, 1]).await.unwrap();
        let (sender, connection) = h2::client::handshake(tls).await.unwrap();
        let connection = tokio::spawn(connection);
        let (status, took, body) =
            call_with_an_unfinished_body(&sender, method, "junk.not.token").await;
        // 16: UNAUTHENTICATED.
        assert_eq!(status.as_deref(), Some("16"), "{method}");
        assert!(
            took < Duration::from_secs(5),
            "{method} answered in {took:?}"
        );
        println!("{method} with a junk bearer and an unfinished body refused in {took:?}");
        // The peer has nothing more to do here: the server closes the
        // connection, though the client holds its stream open.
        let started = Instant::now();
        tokio::time::timeout(PATIENCE, connection)
            .await
            .expect("the server closed the connection of a refused bearer")
            .unwrap()
            .ok();
        println!(
            "... and its connection closed {:?} later",
            started.elapsed()
        );
        drop(body);
    }
    assert_eq!(server.refused(REFUSED_UNAUTHENTICATED), 2);
}
