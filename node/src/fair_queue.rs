//! The upstream's queue toward one central, shared fairly by its clients: each client
//! has its own bounded queue, and the link to the central takes one cell from each
//! client in turn (round-robin; every cell has the same size, so this is deficit round
//! robin with a one-cell quantum). A client that floods fills only its own queue and then
//! waits (its QUIC streams stop being read); another client's cells go out at least at
//! an equal share of the link.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// One client's place in a [`FairQueue`] (one per client connection).
#[derive(Debug, Default)]
pub struct ClientSlot {
    id: u64,
    /// Wakes the client's readers when its queue has room again.
    room: Notify,
}

impl ClientSlot {
    pub fn new(id: u64) -> Arc<Self> {
        Arc::new(ClientSlot {
            id,
            room: Notify::new(),
        })
    }
}

#[derive(Default)]
struct State {
    queues: HashMap<u64, (Arc<ClientSlot>, VecDeque<Vec<u8>>)>,
    /// Clients with queued cells, in service order.
    turn: VecDeque<u64>,
    len: usize,
}

pub struct FairQueue {
    per_client: usize,
    total: usize,
    state: Mutex<State>,
    /// Wakes the link when a cell arrives.
    ready: Notify,
    /// Wakes clients held back because the whole queue was full.
    room_any: Notify,
}

impl FairQueue {
    /// Holds at most `per_client` cells of one client and `total` cells in all.
    pub fn new(per_client: usize, total: usize) -> Self {
        FairQueue {
            per_client: per_client.max(1),
            total: total.max(1),
            state: Mutex::default(),
            ready: Notify::new(),
            room_any: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cells queued now, over all clients.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `cell` for `client`, waiting while its queue (or the whole queue) is full.
    pub async fn push(&self, client: &Arc<ClientSlot>, cell: Vec<u8>) {
        let mut cell = Some(cell);
        loop {
            let own = client.room.notified();
            let any = self.room_any.notified();
            tokio::pin!(own, any);
            own.as_mut().enable();
            any.as_mut().enable();
            match self.try_push(client, &mut cell) {
                Ok(()) => return,
                Err(Full::Client) => own.await,
                Err(Full::All) => any.await,
            }
        }
    }

    fn try_push(&self, client: &Arc<ClientSlot>, cell: &mut Option<Vec<u8>>) -> Result<(), Full> {
        let mut st = self.lock();
        let queued = st.queues.get(&client.id).map_or(0, |(_, q)| q.len());
        if queued >= self.per_client {
            return Err(Full::Client);
        }
        if st.len >= self.total {
            return Err(Full::All);
        }
        let Some(cell) = cell.take() else {
            return Ok(());
        };
        let (_, q) = st
            .queues
            .entry(client.id)
            .or_insert_with(|| (client.clone(), VecDeque::new()));
        q.push_back(cell);
        if q.len() == 1 {
            st.turn.push_back(client.id);
        }
        st.len += 1;
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    /// The next cell, taking clients in turn; waits for one.
    pub async fn pop(&self) -> Vec<u8> {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(cell) = self.try_pop() {
                return cell;
            }
            ready.await;
        }
    }

    /// The next cell in turn, if any.
    pub fn try_pop(&self) -> Option<Vec<u8>> {
        let mut st = self.lock();
        while let Some(id) = st.turn.pop_front() {
            let Some((slot, q)) = st.queues.get_mut(&id) else {
                continue;
            };
            let Some(cell) = q.pop_front() else {
                st.queues.remove(&id);
                continue;
            };
            let slot = slot.clone();
            if q.is_empty() {
                st.queues.remove(&id);
            } else {
                st.turn.push_back(id);
            }
            let was_full = st.len >= self.total;
            st.len -= 1;
            drop(st);
            slot.room.notify_waiters();
            if was_full {
                self.room_any.notify_waiters();
            }
            return Some(cell);
        }
        None
    }
}

enum Full {
    Client,
    All,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn clients_take_turns_and_each_is_bounded() {
        let q = Arc::new(FairQueue::new(4, 100));
        let (flood, honest) = (ClientSlot::new(1), ClientSlot::new(2));
        for i in 0..4u8 {
            q.push(&flood, vec![1, i]).await;
        }
        // The flooder's fifth cell waits for room in its own queue.
        let blocked = {
            let (q, flood) = (q.clone(), flood.clone());
            tokio::spawn(async move { q.push(&flood, vec![1, 4]).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(q.len(), 4);
        q.push(&honest, vec![2, 0]).await;
        q.push(&honest, vec![2, 1]).await;
        let order: Vec<Vec<u8>> = (0..4).map(|_| q.try_pop().unwrap()).collect();
        assert_eq!(order, [vec![1, 0], vec![2, 0], vec![1, 1], vec![2, 1]]);
        blocked.await.unwrap();
        assert_eq!(q.len(), 3);
    }

    #[tokio::test]
    async fn a_full_queue_holds_every_client_back_until_a_cell_leaves() {
        let q = Arc::new(FairQueue::new(4, 2));
        let (a, b) = (ClientSlot::new(1), ClientSlot::new(2));
        q.push(&a, vec![1]).await;
        q.push(&a, vec![1]).await;
        let blocked = {
            let (q, b) = (q.clone(), b.clone());
            tokio::spawn(async move { q.push(&b, vec![2]).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!blocked.is_finished());
        assert_eq!(q.pop().await, vec![1]);
        blocked.await.unwrap();
        assert_eq!(q.len(), 2);
    }
}
