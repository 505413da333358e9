//! A TCP proxy that can freeze or cut the traffic through it: the network faults a component meets
//! in a cluster (a partition that leaves connections open but silent, a peer that went away), on
//! demand, in front of a loopback server.
//!
//! - [`Gate::freeze`]: every connection stays open, and no byte passes either way until
//!   [`Gate::open`]; new connections are accepted and held the same way. What a client sees when a
//!   node's network stalls: requests that neither succeed nor fail.
//! - [`Gate::cut`]: every connection is closed, and new ones are closed as soon as they are
//!   accepted, until [`Gate::open`]. What a client sees when the server is unreachable.
//!
//! Bytes are otherwise passed through untouched (TLS included: the client verifies the server's
//! certificate for the address it dialled, 127.0.0.1, whatever the port). Like
//! [`crate::link::Link`], the proxy runs on a thread and runtime of its own; dropping the gate
//! stops it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::background::Background;

/// What the gate does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Bytes pass.
    Open,
    /// Connections stay open; bytes wait.
    Frozen,
    /// Connections are closed.
    Cut,
}

/// A running gate. See the [module documentation](self).
pub struct Gate {
    addr: SocketAddr,
    state: watch::Sender<State>,
    _proxy: Background,
}

impl Gate {
    /// Starts an open gate on a free loopback port in front of `upstream`: a `host:port` address,
    /// or a URL such as `https://127.0.0.1:6443` or `http://127.0.0.1:9000/`.
    pub fn start(upstream: &str) -> anyhow::Result<Gate> {
        let address = upstream
            .split_once("://")
            .map_or(upstream, |(_, rest)| rest)
            .trim_end_matches('/');
        let upstream: SocketAddr = address
            .parse()
            .with_context(|| format!("{upstream:?} is not an address:port or a URL of one"))?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (state, watching) = watch::channel(State::Open);
        let proxy = Background::start(
            "mixdown-gate",
            Duration::from_millis(200),
            move |shutdown| async move {
                let listener = TcpListener::from_std(listener).expect("gate listener");
                tokio::select! {
                    _ = shutdown => {}
                    _ = accept(listener, upstream, watching) => {}
                }
            },
        )?;
        Ok(Gate {
            addr,
            state,
            _proxy: proxy,
        })
    }

    /// The gate's address, e.g. `127.0.0.1:40113`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `upstream`'s URL with the gate's address in place of the host and port:
    /// `https://127.0.0.1:6443/` becomes `https://127.0.0.1:40113/`.
    pub fn url_for(&self, upstream: &str) -> String {
        match upstream.split_once("://") {
            Some((scheme, rest)) => {
                let path = rest.find('/').map_or("", |at| &rest[at..]);
                format!("{scheme}://{}{path}", self.addr)
            }
            None => self.addr.to_string(),
        }
    }

    /// Holds every byte, on every connection, until [`Gate::open`].
    pub fn freeze(&self) {
        self.state.send_replace(State::Frozen);
    }

    /// Closes every connection, and every new one, until [`Gate::open`].
    pub fn cut(&self) {
        self.state.send_replace(State::Cut);
    }

    /// Lets traffic pass again; bytes held by a freeze go on in order.
    pub fn open(&self) {
        self.state.send_replace(State::Open);
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, state: watch::Receiver<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let mut state = state.clone();
        tokio::spawn(async move {
            // A frozen gate holds a new connection before it reaches the server, too.
            if !pass(&mut state).await {
                return;
            }
            let Ok(server) = TcpStream::connect(upstream).await else {
                return; // The client sees its connection closed, as with an unreachable host.
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                carry(client_read, server_write, state.clone()),
                carry(server_read, client_write, state),
            );
        });
    }
}

/// Waits while the gate is frozen. `false` when it is cut: the connection must close.
async fn pass(state: &mut watch::Receiver<State>) -> bool {
    match state.wait_for(|s| *s != State::Frozen).await {
        Ok(s) => *s == State::Open,
        Err(_) => false,
    }
}

/// Copies `from` to `to` as the gate allows until `from` ends or the gate is cut, then passes the
/// end on.
async fn carry(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut state: watch::Receiver<State>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // A cut closes idle connections too, not only those that send something.
            _ = state.wait_for(|s| *s == State::Cut) => break,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !pass(&mut state).await || to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut answer = vec![0; 4];
        match tokio::time::timeout(within, stream.read_exact(&mut answer)).await {
            Ok(Ok(_)) => Some(answer),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_frozen_gate_holds_bytes_until_it_opens_and_a_cut_one_closes_connections() {
        let gate = Gate::start(&echo_server().await.to_string()).unwrap();
        let mut stream = TcpStream::connect(gate.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut stream, Duration::from_secs(5)).await,
            Some(b"ping".to_vec())
        );

        gate.freeze();
        assert_eq!(gate.state(), State::Frozen);
        assert_eq!(
            round_trip(&mut stream, Duration::from_millis(300)).await,
            None,
            "nothing passes a frozen gate"
        );
        gate.open();
        let mut held = vec![0; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut held))
            .await
            .expect("the held bytes arrive once the gate opens")
            .unwrap();
        assert_eq!(held, b"ping");

        gate.cut();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("a cut closes the connection");
        assert!(closed.is_ok() && rest.is_empty(), "{closed:?} {rest:?}");
        let mut again = TcpStream::connect(gate.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut again, Duration::from_millis(500)).await,
            None,
            "a cut gate closes new connections"
        );

        gate.open();
        let mut after = TcpStream::connect(gate.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut after, Duration::from_secs(5)).await,
            Some(b"ping".to_vec())
        );
        assert_eq!(
            gate.url_for("https://127.0.0.1:6443/"),
            format!("https://{}/", gate.addr())
        );
    }
}
