//! A TCP proxy between the worker and the test kit's S3 server that acts on what the worker
//! sends, for the moments a test must hit exactly: the answer to a DeleteObjects that storage
//! has carried out but the worker never receives (so the worker can be killed right after the
//! delete and before its report), or storage going away at the very request ffprobe makes to
//! verify an output.
//!
//! It reads the bytes going to the server and looks for a needle (`?delete`, `X-Amz-Signature=`)
//! in them; everything else passes through untouched, so signatures and presigned URLs, which
//! name the proxy's address, are accepted by the server as its own. HTTP/1.1 without pipelining:
//! once a request is seen, the next bytes from the server on that connection are its answer.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the tap does when it sees its needle.
#[derive(Debug, Clone)]
pub enum Rule {
    /// Pass the `nth` request (from 1) holding `needle` on to the server, and keep its answer
    /// from the client: the connection stays open and silent. [`Tap::triggered`] then returns.
    HoldAnswer { needle: &'static str, nth: usize },
    /// Close the connection of the first request holding `needle` without passing it on, and
    /// from then on every connection (storage gone) until [`Tap::restore`].
    CutAt { needle: &'static str },
}

/// A running tap. Dropping it stops accepting; connections end with their clients.
pub struct Tap {
    endpoint: String,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: SocketAddr,
    rule: Mutex<Rule>,
    seen: AtomicUsize,
    down: AtomicBool,
    triggered: Notify,
    fired: AtomicBool,
}

impl Tap {
    /// A tap on a free loopback port in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, rule: Rule) -> anyhow::Result<Tap> {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse()?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            upstream,
            rule: Mutex::new(rule),
            seen: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            triggered: Notify::new(),
            fired: AtomicBool::new(false),
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if shared.down.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    tokio::spawn(connection(client, shared.clone()));
                }
            }
        });
        Ok(Tap {
            endpoint,
            shared,
            accept,
        })
    }

    /// `http://127.0.0.1:PORT`, for the worker's MIXDOWN_S3_ENDPOINT.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Returns once the rule acted (the held answer arrived, or the cut happened).
    pub async fn triggered(&self) {
        loop {
            let notified = self.shared.triggered.notified();
            if self.shared.fired.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Whether the rule acted.
    pub fn fired(&self) -> bool {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Storage is back: connections pass again (after a [`Rule::CutAt`]).
    pub fn restore(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Shared {
    fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        self.triggered.notify_waiters();
    }
}

/// Whether `needle` is in `window` and ends after its first `carried` bytes (the end of the read
/// before, kept so that a needle split across two reads is found, and counted once).
fn contains(window: &[u8], carried: usize, needle: &[u8]) -> bool {
    window
        .windows(needle.len())
        .enumerate()
        .any(|(at, w)| w == needle && at + needle.len() > carried)
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let hold = AtomicBool::new(false);

    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        // The end of the previous read, so that a needle split across two reads is found.
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if shared.down.load(Ordering::SeqCst) {
                return;
            }
            let mut window = std::mem::take(&mut carry);
            let carried = window.len();
            window.extend_from_slice(&buf[..n]);
            let rule = shared.rule.lock().expect("rule").clone();
            match rule {
                Rule::HoldAnswer { needle, nth }
                    if contains(&window, carried, needle.as_bytes())
                        && shared.seen.fetch_add(1, Ordering::SeqCst) + 1 == nth =>
                {
                    hold.store(true, Ordering::SeqCst);
                }
                Rule::CutAt { needle } if contains(&window, carried, needle.as_bytes()) => {
                    shared.down.store(true, Ordering::SeqCst);
                    shared.fire();
                    return;
                }
                _ => {}
            }
            carry = window[window.len().saturating_sub(64)..].to_vec();
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if hold.load(Ordering::SeqCst) {
                // Storage did it; the client never hears. Silent until the client goes.
                shared.fire();
                std::future::pending::<()>().await;
            }
            if shared.down.load(Ordering::SeqCst) {
                return;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
