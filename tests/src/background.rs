//! A server that runs on a thread and Tokio runtime of its own, so it keeps serving while the test
//! that started it blocks (on a subprocess, say) and may outlive the test's runtime. Dropping the
//! [`Background`] stops it and waits for the thread.

use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

pub(crate) struct Background {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `serve(shutdown)` on a new thread named `name`. The future should end soon after
    /// `shutdown` resolves; tasks it spawned then get `linger` to finish before they are dropped.
    pub(crate) fn start<F, Fut>(name: &str, linger: Duration, serve: F) -> std::io::Result<Self>
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(serve(shutdown_rx));
                runtime.shutdown_timeout(linger);
            })?;
        Ok(Background {
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
