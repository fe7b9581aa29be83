//! A queue that drops rather than grows: bounded by count and by bytes, for datagrams on
//! their way to a slow reader (a UDP association's replies, an app's datagrams toward the
//! overlay). A full queue refuses at once and the caller counts the drop, as a router
//! drops packets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// The sending side.
pub struct DropQueue {
    tx: mpsc::Sender<Vec<u8>>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The receiving side; what it takes leaves the byte count.
pub struct DropQueueReceiver {
    rx: mpsc::Receiver<Vec<u8>>,
    bytes: Arc<AtomicUsize>,
}

/// A queue of at most `count` items and `max_bytes` bytes.
pub fn drop_queue(count: usize, max_bytes: usize) -> (DropQueue, DropQueueReceiver) {
    let (tx, rx) = mpsc::channel(count.max(1));
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        DropQueue {
            tx,
            bytes: bytes.clone(),
            max_bytes,
        },
        DropQueueReceiver { rx, bytes },
    )
}

impl DropQueue {
    /// Queues `item`, or drops it (false) when either bound would be passed or the
    /// receiver is gone.
    pub fn offer(&self, item: Vec<u8>) -> bool {
        let n = item.len();
        if self.bytes.fetch_add(n, Ordering::SeqCst) + n > self.max_bytes {
            self.bytes.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        if self.tx.try_send(item).is_err() {
            self.bytes.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        true
    }
}

impl DropQueueReceiver {
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let item = self.rx.recv().await?;
        self.bytes.fetch_sub(item.len(), Ordering::SeqCst);
        Some(item)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_by_count_and_bytes_and_frees_on_receive() {
        let (q, mut rx) = drop_queue(3, 100);
        assert!(q.offer(vec![0; 60]));
        assert!(!q.offer(vec![0; 41]), "over the bytes");
        assert!(q.offer(vec![0; 40]));
        assert!(!q.offer(vec![0; 1]), "100 bytes held");
        assert_eq!(rx.recv().await.unwrap().len(), 60);
        assert!(q.offer(vec![]));
        assert!(q.offer(vec![]), "three items");
        assert!(!q.offer(vec![]), "over the count");
        drop(rx);
        let (q, rx) = drop_queue(1, 10);
        drop(rx);
        assert!(!q.offer(vec![1]), "no receiver");
    }
}
