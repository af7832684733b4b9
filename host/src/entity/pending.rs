//! Answers held back until a turn's events are durable, for both entity actors (`actor`,
//! `replicated`): a command's reply, or a rejection judged against state that includes events
//! of its turn not yet appended.

use tokio::sync::oneshot;

use super::EntityError;
use super::system::CommandReply;
use crate::journal::EventEnvelope;

/// A command's answer, sent once the turn's append succeeded; if it fails, every pending answer
/// fails with the append's error (a rejection included: the state it judged was never saved).
pub(super) struct Pending {
    pub reply: oneshot::Sender<Result<CommandReply, EntityError>>,
    pub outcome: Result<CommandReply, EntityError>,
}

/// Queues a command's answer behind the turn's events: its events join the turn's; a rejection
/// judged with no unsaved events before it stands whatever follows and is sent at once, one
/// judged after some waits for them.
pub(super) fn answer_after_append(
    outcome: Result<(Vec<EventEnvelope>, CommandReply), EntityError>,
    reply: oneshot::Sender<Result<CommandReply, EntityError>>,
    events: &mut Vec<EventEnvelope>,
    pending: &mut Vec<Pending>,
) {
    match outcome {
        Ok((new_events, outcome)) => {
            events.extend(new_events);
            pending.push(Pending {
                reply,
                outcome: Ok(outcome),
            });
        }
        Err(error) if events.is_empty() => {
            let _ = reply.send(Err(error));
        }
        Err(error) => pending.push(Pending {
            reply,
            outcome: Err(error),
        }),
    }
}
