//! The lease side of a single-writer entity on this host: which fencing token it writes with, if
//! any, and the lease manager contending for the entity's lease.
//!
//! A single-writer entity starts as an observer while its manager acquires the lease named after
//! its persistence id. The actor turns a grant into writing only after it recorded the token in
//! the journal and caught up with the stream ([`Tenure::confirm`]); from then on every append
//! carries the token. A loss — the manager's deadline passed, the backend gave the lease to
//! another owner, or the journal refused a write because a newer holder fenced it — ends the
//! tenure exactly once ([`Tenure::end`]), and a new manager starts contending again, so a host
//! that lost its lease becomes the writer again when the lease is free.

use std::sync::Arc;
use std::time::Duration;

use super::error::EntityError;
use super::notifications::{Notification, Notifications};
use crate::lease::{Holder, Lease, LeaseManager, LeaseStatus, LeaseTiming, LeaseWatch};
use crate::plugin::LeaseLost;

/// Why a tenure ended, as the plugin hook and the notification say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// No renewal succeeded before the local deadline; nobody else holds the lease (yet).
    Expired,
    /// The backend gave the lease to another owner.
    TakenOver,
    /// The journal refused a write: a newer holder recorded a higher fencing token.
    Fenced,
}

impl LossReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::Expired => "expired",
            LossReason::TakenOver => "taken-over",
            LossReason::Fenced => "fenced",
        }
    }
}

/// What changed about this host's claim on the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenureChange {
    /// The manager acquired the lease with this token; not writing until confirmed.
    Granted(u64),
    /// The lease the entity was writing with is gone.
    Lost(u64),
}

pub struct Tenure {
    lease: Arc<dyn Lease>,
    name: String,
    owner: String,
    timing: LeaseTiming,
    manager: LeaseManager,
    watch: LeaseWatch,
    /// The token appends carry; `None` while observing.
    writing: Option<u64>,
}

impl Tenure {
    /// Starts contending for the lease of `persistence_id` as `owner`.
    pub fn start(
        lease: Arc<dyn Lease>,
        persistence_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Tenure, EntityError> {
        let name = lease_name(persistence_id);
        let timing = LeaseTiming::for_ttl(ttl);
        let manager = start_manager(&lease, &name, owner, timing)?;
        Ok(Tenure {
            watch: manager.watch(),
            lease,
            name,
            owner: owner.to_owned(),
            timing,
            manager,
            writing: None,
        })
    }

    /// The token to write with, while this host is the writer.
    pub fn fencing_token(&self) -> Option<u64> {
        self.writing
    }

    /// The token this host writes with, if its lease's local deadline has not passed at `now`.
    /// `Some` from [`Tenure::fencing_token`] but `None` here: the lease ran out while the process
    /// was paused, and the task keeping it has not noticed yet.
    pub fn writing_at(&self, now: std::time::Instant) -> Option<u64> {
        self.writing
            .filter(|token| self.watch.held_at(now) == Some(*token))
    }

    /// The next change worth acting on. Pending while nothing changes.
    pub async fn next_change(&mut self) -> TenureChange {
        loop {
            let Some(status) = self.watch.changed().await else {
                // The manager ended (released or lost, reported already): nothing more comes
                // from it until the tenure restarts it.
                return std::future::pending().await;
            };
            match (status, self.writing) {
                (LeaseStatus::Held { fencing_token }, None) => {
                    return TenureChange::Granted(fencing_token);
                }
                (LeaseStatus::Lost, Some(fencing_token)) => {
                    return TenureChange::Lost(fencing_token);
                }
                // Renewals, or a loss of a grant that was never confirmed (the caller is
                // handling it through `end`).
                _ => continue,
            }
        }
    }

    /// Waits up to `max` for the manager to hold the lease; its token, if it did.
    pub async fn wait_for_grant(&self, max: Duration) -> Option<u64> {
        let mut watch = self.watch.clone();
        let held = tokio::time::timeout(
            max,
            watch.wait_for(|status| status.fencing_token().is_some() || status.is_final()),
        )
        .await;
        held.ok().and_then(LeaseStatus::fencing_token)
    }

    /// Writes with `fencing_token` from now on: the journal has it recorded.
    pub fn confirm(&mut self, fencing_token: u64) {
        self.writing = Some(fencing_token);
    }

    /// Ends the tenure writing with `fencing_token` and starts contending again. Returns why it
    /// ended and who holds the lease now, once per tenure: `None` if that tenure ended already.
    pub async fn end(
        &mut self,
        fencing_token: u64,
        fenced: bool,
    ) -> Result<Option<(LossReason, Option<String>)>, EntityError> {
        if self.writing != Some(fencing_token) {
            return Ok(None);
        }
        self.writing = None;
        let new_writer = self
            .writer()
            .await
            .map(|holder| holder.owner)
            .filter(|owner| *owner != self.owner);
        let reason = match (fenced, &new_writer) {
            (true, _) => LossReason::Fenced,
            (false, Some(_)) => LossReason::TakenOver,
            (false, None) => LossReason::Expired,
        };
        self.restart().await?;
        Ok(Some((reason, new_writer)))
    }

    /// Starts contending afresh, after the current manager ended.
    async fn restart(&mut self) -> Result<(), EntityError> {
        let fresh = start_manager(&self.lease, &self.name, &self.owner, self.timing)?;
        self.watch = fresh.watch();
        std::mem::replace(&mut self.manager, fresh).release().await;
        Ok(())
    }

    /// Who holds the lease now, as the backend sees it (`None` if nobody, or unknown).
    pub async fn writer(&self) -> Option<Holder> {
        match self.lease.holder(&self.name).await {
            Ok(holder) => holder,
            Err(error) => {
                tracing::warn!(lease = %self.name, "cannot read the lease holder: {error}");
                None
            }
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How long a command waits for a free lease to be granted before it is refused: the
    /// manager retries acquiring this often.
    pub fn grant_wait(&self) -> Duration {
        self.timing.renew_interval + self.timing.retry_interval
    }

    /// Gives the lease up (passivation, the node's stop), so another host need not wait for it
    /// to expire. Whether this host held it.
    pub async fn release(self) -> bool {
        let held = self.manager.status().fencing_token().is_some();
        self.manager.release().await;
        held
    }
}

/// The entity a tenure belongs to, and what its actor shares with the host's other actors
/// around a tenure: claiming the lease, announcing a take-over, reporting a loss. Plain entities
/// and replicated ones use the same steps; what differs (which streams to fence, how to catch
/// up, the plugin's hook) the actor does around them.
pub struct Seat<'a> {
    pub entity_type: &'a str,
    pub entity_id: &'a str,
    pub persistence_id: &'a str,
    pub notifications: &'a Notifications,
    /// Part of a cluster: a lease another node holds is waited for (it is handing the entity
    /// off, or crashed) instead of refused at once.
    pub clustered: bool,
}

impl Seat<'_> {
    /// The fencing token to take over with, for a batch of commands: refused when another owner
    /// holds the lease (outside a cluster); otherwise waits, bounded, for this host's manager
    /// to acquire it.
    pub async fn claim(&self, tenure: &Tenure) -> Result<u64, EntityError> {
        let mut wait = tenure.grant_wait();
        if let Some(holder) = tenure.writer().await
            && holder.owner != tenure.owner()
        {
            if !self.clustered {
                return Err(EntityError::NotWriter {
                    persistence_id: self.persistence_id.to_owned(),
                    writer: Some(holder.owner),
                    fencing_token: Some(holder.fencing_token),
                });
            }
            wait += holder.expires_in;
        }
        tenure
            .wait_for_grant(wait)
            .await
            .ok_or_else(|| EntityError::NotWriter {
                persistence_id: self.persistence_id.to_owned(),
                writer: None,
                fencing_token: None,
            })
    }

    /// Writes with `fencing_token` from now on — the caller recorded it in the journal and
    /// caught up — and says so.
    pub fn took_over(&self, tenure: &mut Tenure, fencing_token: u64) {
        tenure.confirm(fencing_token);
        tracing::info!(entity = %self.persistence_id, fencing_token, "single-writer entity: this node writes it now");
        self.notifications.publish(Notification::LeaseAcquired {
            entity_type: self.entity_type.to_owned(),
            entity_id: self.entity_id.to_owned(),
            fencing_token,
            writer: tenure.owner().to_owned(),
        });
    }

    /// Switches to observer after the tenure writing with `fencing_token` ended, once per loss:
    /// an error-level log line, the plugin's hook (`notice`, given what was lost), a
    /// notification.
    pub async fn lose(
        &self,
        tenure: &mut Tenure,
        fencing_token: u64,
        fenced: bool,
        notice: impl FnOnce(&LeaseLost) -> Result<Option<Vec<u8>>, EntityError>,
    ) -> Result<(), EntityError> {
        let Some((reason, new_writer)) = tenure.end(fencing_token, fenced).await? else {
            return Ok(());
        };
        tracing::error!(
            entity = %self.persistence_id, fencing_token, reason = reason.as_str(), new_writer = ?new_writer,
            "LEASE LOST: single-writer entity switched to observer"
        );
        let lost = LeaseLost {
            fencing_token,
            reason: reason.as_str().to_owned(),
        };
        let notice = notice(&lost).unwrap_or_else(|error| {
            tracing::warn!(entity = %self.persistence_id, "the plugin's on-lease-lost hook failed: {error}");
            None
        });
        self.notifications.publish(Notification::LeaseLost {
            entity_type: self.entity_type.to_owned(),
            entity_id: self.entity_id.to_owned(),
            fencing_token,
            reason: reason.as_str(),
            new_writer,
            notice,
        });
        Ok(())
    }
}

/// The lease a single-writer entity's writer holds: `entity:<persistence id>`.
pub fn lease_name(persistence_id: &str) -> String {
    format!("entity:{persistence_id}")
}

fn start_manager(
    lease: &Arc<dyn Lease>,
    name: &str,
    owner: &str,
    timing: LeaseTiming,
) -> Result<LeaseManager, EntityError> {
    LeaseManager::start(lease.clone(), name, owner, timing)
        .map_err(|error| EntityError::Lease(error.to_string()))
}
