//! A network link of limited bandwidth in front of a loopback server: what a Pod's connection to
//! remote storage is, and loopback is not.
//!
//! [`Link`] is a TCP proxy. Bytes toward the server (uploads) and bytes from it (downloads) each
//! pass through a pipe of `bytes_per_second`, shared by every connection, and the two directions
//! do not slow each other down (a full-duplex link). So a client that downloads and uploads at
//! once gets twice what one that does them in turn gets, as over a real network, whereas on
//! loopback both directions cost the same CPU time. Connections are otherwise passed through
//! untouched: the `Host` header, and so SigV4 signatures and presigned URLs, refer to the link's
//! address, which the server accepts as its own.
//!
//! Like [`crate::s3::S3Server`], it runs on a thread and runtime of its own (`background`);
//! dropping it stops it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::background::Background;

/// Bytes passed on at a time, so that the pipe is shared fairly between connections.
const SLICE: usize = 64 * 1024;
/// Idle time a pipe may make up for: a connection that comes back late from its wait (timers
/// tick in milliseconds) may send that much at once, so one connection alone gets the whole
/// bandwidth, as on a real link, rather than losing the timer's lateness on every slice.
const CATCH_UP: Duration = Duration::from_millis(20);

/// A running link. See the [module documentation](self).
pub struct Link {
    endpoint: String,
    _proxy: Background,
}

impl Link {
    /// Starts a link on a free loopback port to `upstream` (an `http://host:port` endpoint or a
    /// `host:port` address), `bytes_per_second` each way.
    pub fn start(upstream: &str, bytes_per_second: u64) -> anyhow::Result<Link> {
        anyhow::ensure!(bytes_per_second > 0, "a link needs a bandwidth above 0");
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("{upstream:?} is not an http://address:port endpoint"))?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let proxy = Background::start(
            "mixdown-link",
            Duration::from_secs(1),
            move |shutdown| async move {
                let listener = TcpListener::from_std(listener).expect("link listener");
                let up = Pipe::new(bytes_per_second);
                let down = Pipe::new(bytes_per_second);
                tokio::select! {
                    _ = shutdown => {}
                    _ = accept(listener, upstream, up, down) => {}
                }
            },
        )?;
        Ok(Link {
            endpoint: format!("http://{addr}"),
            _proxy: proxy,
        })
    }

    /// The link's end clients connect to, e.g. `http://127.0.0.1:40113`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, up: Pipe, down: Pipe) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let (up, down) = (up.clone(), down.clone());
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return; // The client sees its connection closed, as with an unreachable host.
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                carry(client_read, server_write, &up),
                carry(server_read, client_write, &down),
            );
        });
    }
}

/// Copies `from` to `to` through `pipe` until `from` ends, then passes the end on.
async fn carry(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, pipe: &Pipe) {
    let mut buffer = vec![0; SLICE];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pipe.pass(n).await;
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// One direction of the link: bytes leave it at `bytes_per_second`, in the order they came.
#[derive(Clone)]
struct Pipe {
    bytes_per_second: u64,
    /// When the pipe has passed on everything handed to it so far.
    free_at: Arc<Mutex<Instant>>,
}

impl Pipe {
    fn new(bytes_per_second: u64) -> Pipe {
        Pipe {
            bytes_per_second,
            free_at: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Waits until `bytes` have gone through, after what was handed over before them.
    async fn pass(&self, bytes: usize) {
        let time = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        let done = {
            let mut free_at = self.free_at.lock().expect("link pipe lock");
            let now = Instant::now();
            let start = (*free_at).max(now.checked_sub(CATCH_UP).unwrap_or(now));
            *free_at = start + time;
            *free_at
        };
        tokio::time::sleep_until(done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 MB each way at 8 MB/s: about 0.5 s in either direction alone, and about 0.5 s for both at
    /// once (full duplex), not 1 s.
    #[tokio::test(flavor = "multi_thread")]
    async fn each_direction_has_the_bandwidth_and_they_do_not_share_it() {
        let echo = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let echo_addr = echo.local_addr().unwrap();
        // A server told "send S bytes, receive R bytes": does both at once, then sends one byte to
        // say it has received everything.
        std::thread::spawn(move || {
            for stream in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut stream = stream;
                    let mut length = [0u8; 8];
                    stream.read_exact(&mut length).unwrap();
                    let (send, receive) = (
                        u32::from_be_bytes(length[..4].try_into().unwrap()) as usize,
                        u32::from_be_bytes(length[4..].try_into().unwrap()) as usize,
                    );
                    let writer = {
                        let mut stream = stream.try_clone().unwrap();
                        std::thread::spawn(move || stream.write_all(&vec![7; send]).unwrap())
                    };
                    let mut sink = vec![0; receive];
                    stream.read_exact(&mut sink).unwrap();
                    writer.join().unwrap();
                    stream.write_all(&[9]).unwrap();
                });
            }
        });
        let link = Link::start(&format!("http://{echo_addr}"), 8_000_000).unwrap();
        let target = link.endpoint().trim_start_matches("http://").to_owned();

        let exchange = |up: usize, down: usize| {
            let target = target.clone();
            async move {
                let started = std::time::Instant::now();
                let stream = TcpStream::connect(&target).await.unwrap();
                let (mut read, mut write) = stream.into_split();
                let mut header = (down as u32).to_be_bytes().to_vec();
                header.extend((up as u32).to_be_bytes());
                write.write_all(&header).await.unwrap();
                let sending = tokio::spawn(async move {
                    write.write_all(&vec![1; up]).await.unwrap();
                    write
                });
                let mut received = vec![0; down + 1];
                read.read_exact(&mut received).await.unwrap();
                assert_eq!(received.pop(), Some(9), "the server's acknowledgement");
                let _write = sending.await.unwrap();
                assert!(received.iter().all(|&b| b == 7));
                started.elapsed().as_secs_f64()
            }
        };
        let upload = exchange(4_000_000, 0).await;
        let download = exchange(0, 4_000_000).await;
        let both = exchange(4_000_000, 4_000_000).await;
        assert!(
            (0.45..0.9).contains(&upload),
            "4 MB up at 8 MB/s took {upload:.2} s"
        );
        assert!(
            (0.45..0.9).contains(&download),
            "4 MB down at 8 MB/s took {download:.2} s"
        );
        assert!(
            (0.45..0.9).contains(&both),
            "4 MB each way at once took {both:.2} s: the directions must not share the bandwidth"
        );
    }
}
