//! A TCP proxy in front of the API server that can be told to stall: while
//! stalled, no byte passes in either direction on any connection, old or new,
//! so every request in flight or sent meanwhile hangs, as behind a network
//! partition that drops packets without resetting connections. TLS passes
//! through untouched (the API server's certificate names 127.0.0.1).

use std::net::SocketAddr;

use kube::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::{ControlPlane, Error};

pub struct StallingProxy {
    addr: SocketAddr,
    stalled: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl StallingProxy {
    /// A proxy on a free loopback port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Setup(format!("cannot bind the proxy: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Setup(e.to_string()))?;
        let (stalled, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it (on drop) ends every
            // connection too.
            let mut connections = JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let watching = watching.clone();
                connections.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, watching.clone()),
                        pump(out_read, in_write, watching),
                    );
                });
            }
        });
        Ok(StallingProxy {
            addr,
            stalled,
            task,
        })
    }

    /// A proxy in front of `plane`'s API server.
    pub async fn in_front_of(plane: &ControlPlane) -> Result<Self, Error> {
        let url = plane.api_server_url();
        let port = url
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .ok_or_else(|| Error::Setup(format!("no port in the API server's URL {url}")))?;
        Self::start(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on nothing passes until [`StallingProxy::resume`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// An admin client of `plane` whose every request goes through this proxy.
    pub async fn client(&self, plane: &ControlPlane) -> Result<Client, Error> {
        let mut config = plane.config().await?;
        config.cluster_url = format!("https://127.0.0.1:{}", self.addr.port())
            .parse()
            .map_err(|e| Error::Setup(format!("the proxy's URL: {e}")))?;
        Client::try_from(config).map_err(Error::Kube)
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding whatever it read while stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if stalled.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(read) => read,
        };
        // Bytes read just before a stall are held too: the request they
        // belong to must not complete.
        if stalled.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
