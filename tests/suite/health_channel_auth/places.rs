//! The agents' port when strangers hold every place: with the real API
//! server reviewing the agents' tokens, an agent's new connection takes the
//! place of the oldest connection that has not authenticated, while a
//! connection an agent authenticated on never gives way, and a newcomer
//! finds no place once agents hold them all.

use super::*;
use kata_coordinator::health::HealthOptions;
use kata_coordinator::health::connection::ConnectionBounds;
use kata_coordinator::health::tls::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::health_channel_hardening::connector;

/// A coordinator with `places` connection places, whose idle connections
/// are not closed within a test: only giving way frees a place.
async fn fixture_with_places(places: usize) -> Fixture {
    Fixture::start_with(HealthOptions {
        heartbeat_interval: Duration::from_secs(15),
        extension_name: kata_coordinator::mco::names::EXTENSION.into(),
        limits: Limits {
            max_connections: places,
            bounds: ConnectionBounds {
                idle_timeout: Duration::from_secs(600),
                ..ConnectionBounds::default()
            },
            ..Limits::default()
        },
        ..HealthOptions::default()
    })
    .await
}

/// A stranger's connection from 127.0.2.`last`: TLS and HTTP/2's preface,
/// then nothing; Err when the server refuses it.
async fn stranger(
    fixture: &Fixture,
    last: u8,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 2, last], 0)))?;
    let tcp = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], fixture.port)))
        .await?;
    let mut tls = connector(&fixture.ca_pem)
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await?;
    Ok(tls)
}

/// Whether the server closed `tls` (within `wait`).
async fn closed_within(tls: &mut TlsStream<tokio::net::TcpStream>, wait: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(wait, async {
        while matches!(tls.read(&mut buffer).await, Ok(n) if n > 0) {}
    })
    .await
    .is_ok()
}

#[kata_test]
async fn strangers_holding_every_place_cannot_keep_an_agent_out() {
    const PLACES: usize = 6;
    let fixture = fixture_with_places(PLACES).await;
    let mut strangers = Vec::new();
    for last in 1..=u8::try_from(PLACES).unwrap() {
        strangers.push(stranger(&fixture, last).await.unwrap());
    }
    let token = fixture
        .pod_bound_token(AGENT_SA, "agent-a", NODE_A, AUDIENCE)
        .await;
    // Each check-in is a connection of its own, as the agent makes it. The
    // first takes the place of the oldest stranger; a later one finds the
    // place of the one before it free if that connection has closed by
    // then, else it too ends the oldest stranger left.
    for sequence in 1..=3 {
        check_in_as(&fixture, &token, NODE_A, sequence)
            .await
            .unwrap_or_else(|status| panic!("check-in {sequence} with every place held: {status}"));
    }
    assert_eq!(
        fixture.registry.get(NODE_A).unwrap().last_report,
        Some(report(3))
    );
    let mut closed = Vec::new();
    for tls in &mut strangers {
        closed.push(closed_within(tls, Duration::from_millis(500)).await);
    }
    let gave_way = closed.iter().take_while(|closed| **closed).count();
    assert!(
        (1..=3).contains(&gave_way) && closed[gave_way..].iter().all(|closed| !closed),
        "the oldest strangers, and only they, gave way, one to three of them: {closed:?}"
    );
    println!("{gave_way} of {PLACES} strangers gave their places to the agent's 3 check-ins");
}

#[kata_test]
async fn a_connection_an_agent_authenticated_on_keeps_its_place() {
    let fixture = fixture_with_places(2).await;
    let token_a = fixture
        .pod_bound_token(AGENT_SA, "agent-a", NODE_A, AUDIENCE)
        .await;
    let token_b = fixture
        .pod_bound_token(AGENT_SA, "agent-b", NODE_B, AUDIENCE)
        .await;
    let mut first = open(&fixture, Some(&token_a), hello(NODE_A)).await.unwrap();
    let mut stranger_held = stranger(&fixture, 1).await.unwrap();
    // B's stream takes the stranger's place, not A's.
    let mut second = open(&fixture, Some(&token_b), hello(NODE_B)).await.unwrap();
    assert!(closed_within(&mut stranger_held, Duration::from_secs(5)).await);
    // Both places are agents': a newcomer finds none.
    let refused = match stranger(&fixture, 2).await {
        Err(_) => true,
        Ok(mut tls) => closed_within(&mut tls, Duration::from_secs(5)).await,
    };
    assert!(refused, "no place is given while agents hold them all");
    // And both agents' streams still carry reports.
    for (stream, node, sequence) in [(&mut first, NODE_A, 1), (&mut second, NODE_B, 2)] {
        stream
            .outbound
            .send(report_message(sequence))
            .await
            .unwrap();
        fixture
            .wait_for(|registry| {
                registry
                    .get(node)
                    .and_then(|health| health.last_report)
                    .filter(|last| last.sequence == sequence)
            })
            .await;
    }
}
