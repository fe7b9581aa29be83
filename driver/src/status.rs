//! What a session task shows a status reader (the client's admin port, `braid status`): a
//! snapshot of the session and its paths, taken only when a reader asks, so the cell path
//! takes no lock and does no work for it.

use std::sync::Arc;
use std::time::Duration;

use braid_proto::session::SessionSnapshot;
use tokio::sync::{watch, Notify};

/// The session as its task last saw it.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub snapshot: SessionSnapshot,
    /// Each path's link name (an upstream's id at the client), in the snapshot's order.
    pub path_names: Vec<String>,
    /// Streams with an owner now.
    pub streams_open: usize,
}

/// The session task's end: publishes a view when asked.
#[derive(Clone)]
pub struct StatusPublisher {
    tx: Arc<watch::Sender<Option<Arc<SessionView>>>>,
    asked: Arc<Notify>,
}

/// A reader's end: asks for a fresh view.
#[derive(Clone)]
pub struct StatusReader {
    rx: watch::Receiver<Option<Arc<SessionView>>>,
    asked: Arc<Notify>,
}

/// A publisher and its reader, with no view yet.
pub fn status_channel() -> (StatusPublisher, StatusReader) {
    let (tx, rx) = watch::channel(None);
    let asked = Arc::new(Notify::new());
    (
        StatusPublisher {
            tx: Arc::new(tx),
            asked: asked.clone(),
        },
        StatusReader { rx, asked },
    )
}

impl StatusPublisher {
    pub fn publish(&self, view: SessionView) {
        self.tx.send_replace(Some(Arc::new(view)));
    }

    /// No session is open (the next one is being handshaken).
    pub fn clear(&self) {
        self.tx.send_replace(None);
    }

    /// Notified when a reader asks for a fresh view.
    pub(crate) fn asked(&self) -> &Notify {
        &self.asked
    }
}

impl StatusReader {
    /// Asks the session task for a fresh view and waits for it at most `wait` (the task may
    /// be busy); then the newest one published, or `None` while no session is open.
    pub async fn fresh(&mut self, wait: Duration) -> Option<Arc<SessionView>> {
        // A session task publishes as it starts: none published means none runs.
        self.rx.borrow_and_update().as_ref()?;
        self.asked.notify_one();
        let _ = tokio::time::timeout(wait, self.rx.changed()).await;
        self.rx.borrow_and_update().clone()
    }
}
