//! A host paused in the middle of its work, as a long GC pause or a frozen VM would pause it:
//! while a [`Gate`] is closed, every call through the journal and the lease backend wrapped with
//! it waits at the gate, and goes through to the real backend when the gate opens again. So a
//! write decided before the pause reaches the store only after it, with whatever token it had.

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use weft::journal::{EventEnvelope, Journal, JournalError, SnapshotEnvelope, StreamHead};
use weft::lease::{Grant, HeldLease, Holder, Lease, LeaseError};

/// Whether the host runs, and which calls are waiting for it to.
pub struct Gate {
    state: watch::Sender<GateState>,
}

#[derive(Default)]
struct GateState {
    paused: bool,
    /// Names of the calls waiting at the gate.
    waiting: Vec<&'static str>,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            state: watch::channel(GateState::default()).0,
        })
    }

    /// `inner`, with every call waiting at this gate while it is closed.
    pub fn journal(self: &Arc<Self>, inner: &Arc<dyn Journal>) -> Arc<dyn Journal> {
        Arc::new(PausableJournal {
            inner: inner.clone(),
            gate: self.clone(),
        })
    }

    /// `inner`, with every call waiting at this gate while it is closed.
    pub fn lease(self: &Arc<Self>, inner: &Arc<dyn Lease>) -> Arc<dyn Lease> {
        Arc::new(PausableLease {
            inner: inner.clone(),
            gate: self.clone(),
        })
    }

    pub fn pause(&self) {
        self.state.send_modify(|state| state.paused = true);
    }

    pub fn resume(&self) {
        self.state.send_modify(|state| state.paused = false);
    }

    /// Waits until a call named `call` is waiting at the gate; panics after `max`.
    pub async fn wait_until_waiting(&self, call: &'static str, max: Duration) {
        let mut state = self.state.subscribe();
        let reached =
            tokio::time::timeout(max, state.wait_for(|state| state.waiting.contains(&call))).await;
        if reached.is_err() {
            let waiting = self.state.borrow().waiting.clone();
            panic!("no {call} reached the paused host's gate within {max:?}; waiting: {waiting:?}");
        }
    }

    async fn pass(&self, call: &'static str) {
        let mut state = self.state.subscribe();
        if !state.borrow().paused {
            return;
        }
        self.state.send_modify(|state| state.waiting.push(call));
        // The sender lives in `self`: it cannot be dropped while we wait.
        let _ = state.wait_for(|state| !state.paused).await;
        self.state.send_modify(|state| {
            if let Some(at) = state.waiting.iter().position(|waiting| *waiting == call) {
                state.waiting.remove(at);
            }
        });
    }
}

/// A journal whose calls wait at the gate.
pub struct PausableJournal {
    pub inner: Arc<dyn Journal>,
    pub gate: Arc<Gate>,
}

#[async_trait]
impl Journal for PausableJournal {
    async fn append(
        &self,
        persistence_id: &str,
        expected_seq_nr: u64,
        fencing_token: u64,
        events: Vec<EventEnvelope>,
    ) -> Result<(), JournalError> {
        self.gate.pass("append").await;
        self.inner
            .append(persistence_id, expected_seq_nr, fencing_token, events)
            .await
    }

    async fn read(
        &self,
        persistence_id: &str,
        from_seq_nr: u64,
        max: usize,
    ) -> Result<Vec<EventEnvelope>, JournalError> {
        self.gate.pass("read").await;
        self.inner.read(persistence_id, from_seq_nr, max).await
    }

    async fn highest_seq_nr(&self, persistence_id: &str) -> Result<u64, JournalError> {
        self.gate.pass("highest_seq_nr").await;
        self.inner.highest_seq_nr(persistence_id).await
    }

    async fn save_snapshot(&self, snapshot: SnapshotEnvelope) -> Result<(), JournalError> {
        self.gate.pass("save_snapshot").await;
        self.inner.save_snapshot(snapshot).await
    }

    async fn latest_snapshot(
        &self,
        persistence_id: &str,
    ) -> Result<Option<SnapshotEnvelope>, JournalError> {
        self.gate.pass("latest_snapshot").await;
        self.inner.latest_snapshot(persistence_id).await
    }

    async fn record_fence(
        &self,
        persistence_id: &str,
        fencing_token: u64,
    ) -> Result<(), JournalError> {
        self.gate.pass("record_fence").await;
        self.inner.record_fence(persistence_id, fencing_token).await
    }

    async fn advance_fence(&self, persistence_id: &str) -> Result<u64, JournalError> {
        self.gate.pass("advance_fence").await;
        self.inner.advance_fence(persistence_id).await
    }

    async fn fence(&self, persistence_id: &str) -> Result<u64, JournalError> {
        self.gate.pass("fence").await;
        self.inner.fence(persistence_id).await
    }

    async fn persistence_ids(&self) -> Result<Vec<String>, JournalError> {
        self.gate.pass("persistence_ids").await;
        self.inner.persistence_ids().await
    }

    async fn stream_heads(
        &self,
        from: &str,
        until: &str,
        max: usize,
    ) -> Result<Vec<StreamHead>, JournalError> {
        self.gate.pass("stream_heads").await;
        self.inner.stream_heads(from, until, max).await
    }
}

/// A lease backend whose calls wait at the gate.
pub struct PausableLease {
    pub inner: Arc<dyn Lease>,
    pub gate: Arc<Gate>,
}

#[async_trait]
impl Lease for PausableLease {
    async fn acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Grant>, LeaseError> {
        self.gate.pass("acquire").await;
        self.inner.acquire(name, owner, ttl).await
    }

    async fn renew(
        &self,
        name: &str,
        owner: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> Result<Option<Grant>, LeaseError> {
        self.gate.pass("renew").await;
        self.inner.renew(name, owner, fencing_token, ttl).await
    }

    async fn release(
        &self,
        name: &str,
        owner: &str,
        fencing_token: u64,
    ) -> Result<bool, LeaseError> {
        self.gate.pass("release").await;
        self.inner.release(name, owner, fencing_token).await
    }

    async fn holder(&self, name: &str) -> Result<Option<Holder>, LeaseError> {
        self.gate.pass("holder").await;
        self.inner.holder(name).await
    }

    async fn held(&self, after: &str, max: usize) -> Result<Vec<HeldLease>, LeaseError> {
        self.gate.pass("held").await;
        self.inner.held(after, max).await
    }
}
