//! `GET /notifications`: the host's [`Notification`]s as server-sent events, live from the moment
//! of the request. Each event's name is the notification's kind (`lease-acquired`,
//! `lease-lost`), its data the notification as JSON, with a `lease-lost` plugin notice decoded
//! from MessagePack. A subscriber that fell behind gets a `lagged` event saying how many it missed.
//! The stream ends when the node shuts down.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::payload::msgpack_to_json;
use crate::entity::Notification;

pub async fn stream(
    State(app): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = app.entities.notifications().subscribe();
    let events = futures::stream::unfold(
        (receiver, app.shutdown),
        |(mut receiver, shutdown)| async move {
            let received = tokio::select! {
                received = receiver.recv() => received,
                () = shutdown.cancelled() => return None,
            };
            let event = match received {
                Ok(notification) => to_event(&notification),
                Err(RecvError::Lagged(missed)) => Event::default()
                    .event("lagged")
                    .data(json!({ "missed": missed }).to_string()),
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(event), (receiver, shutdown)))
        },
    );
    Sse::new(events).keep_alive(KeepAlive::default())
}

fn to_event(notification: &Notification) -> Event {
    let mut data = serde_json::to_value(notification)
        .unwrap_or_else(|error| json!({ "kind": "unencodable", "error": error.to_string() }));
    if let Notification::LeaseLost { notice, .. } = notification {
        data["notice"] = notice
            .as_deref()
            .map_or(serde_json::Value::Null, msgpack_to_json);
    }
    let kind = data["kind"].as_str().unwrap_or("notification").to_owned();
    Event::default().event(kind).data(data.to_string())
}
