//! Reading a server-sent event stream (`GET /notifications`, `GET /ddata/{key}/subscribe`) in
//! tests: one event at a time, its name and its JSON data, each within a deadline.

use serde_json::Value;
use std::time::Duration;

/// How long the next event may take.
const EVENT_DEADLINE: Duration = Duration::from_secs(20);

pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    /// Subscribes to the stream at `url`.
    pub async fn open(http: &reqwest::Client, url: &str) -> EventStream {
        let response = http.get(url).send().await.expect("subscribe");
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{url}");
        EventStream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's name and JSON data (keep-alive comments are skipped).
    pub async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if let Some(name) = name {
                    return (name, serde_json::from_str(&data).expect("JSON data"));
                }
                continue;
            }
            let chunk = tokio::time::timeout(EVENT_DEADLINE, self.response.chunk())
                .await
                .expect("an event within the deadline")
                .expect("the stream reads")
                .expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
