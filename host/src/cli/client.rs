//! The client side of the CLI: HTTP calls to a running node. Paths are built segment by segment,
//! each percent-encoded, so an entity id, a lease name or a key may hold `?`, `#`, `/` or spaces;
//! answers come back as JSON values for [`super::output`] to print, and error answers as errors
//! naming the API's code. A token (`--token` or `WEFT_TOKEN`) goes with every request as
//! `Authorization: Bearer <token>`.

use anyhow::{Context as _, bail};
use std::path::Path;

pub const DEFAULT_URL: &str = "http://127.0.0.1:7070";

/// How often `weft events --follow` asks for new events once it has read them all.
const FOLLOW_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// A running node, reached at the URL the command line names.
pub struct NodeClient {
    base: reqwest::Url,
    http: reqwest::Client,
}

impl NodeClient {
    /// Checks the URL before anything is sent, so a mistyped one is named as such rather than
    /// reported as an unreachable node. `token` is sent with every request.
    pub fn new(url: &str, token: Option<&str>) -> anyhow::Result<NodeClient> {
        if !url.contains("://") {
            bail!("the node URL {url:?} has no scheme: did you mean http://{url}?");
        }
        let base = reqwest::Url::parse(url).with_context(|| format!("invalid node URL {url:?}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("the node URL {url:?} must start with http:// or https://");
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            bail!("the node URL {url:?} names no host");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    anyhow::anyhow!("the token holds characters an HTTP header cannot carry")
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(NodeClient { base, http })
    }

    /// The URL of `segments` (each one percent-encoded) under the node's URL.
    fn endpoint(&self, segments: &[&str], query: &[(&str, &str)]) -> reqwest::Url {
        let mut endpoint = self.base.clone();
        if let Ok(mut path) = endpoint.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            endpoint.query_pairs_mut().extend_pairs(query);
        }
        endpoint
    }

    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> anyhow::Result<serde_json::Value> {
        let request = self.http.get(self.endpoint(segments, query));
        self.answer(request).await
    }

    /// POSTs `body` as JSON, with its `null` fields left out so that the node's defaults apply.
    pub async fn post(
        &self,
        segments: &[&str],
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let request = self
            .http
            .post(self.endpoint(segments, &[]))
            .json(&without_nulls(body));
        self.answer(request).await
    }

    /// POSTs a command to an entity, with its idempotency key if it has one.
    pub async fn send_command(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut request = self
            .http
            .post(self.endpoint(&["entities", entity_type, entity_id], &[]))
            .json(&without_nulls(command));
        if let Some(key) = idempotency_key {
            request = request.header(crate::api::IDEMPOTENCY_KEY_HEADER, key);
        }
        self.answer(request).await
    }

    pub async fn delete(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> anyhow::Result<serde_json::Value> {
        let request = self.http.delete(self.endpoint(segments, query));
        self.answer(request).await
    }

    /// Uploads a `.wasm` file as plugin `name` (default: the file name without `.wasm`).
    pub async fn load_plugin(
        &self,
        file: &Path,
        name: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        let name = match name {
            Some(name) => name.to_owned(),
            None => file
                .file_stem()
                .and_then(|stem| stem.to_str())
                .context("cannot derive a plugin name from the file name; pass --name")?
                .to_owned(),
        };
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        eprintln!(
            "uploading {} ({} KiB) as plugin `{name}` …",
            file.display(),
            bytes.len() / 1024
        );
        let request = self
            .http
            .put(self.endpoint(&["plugins", &name], &[]))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(bytes);
        self.answer(request).await
    }

    /// `weft plugin upgrade`: sends the new build to be checked against the journal and, if it
    /// passes (or `force`), activated. The answer is the check's report.
    pub async fn upgrade_plugin(
        &self,
        name: &str,
        file: &Path,
        sample: Option<usize>,
        force: bool,
    ) -> anyhow::Result<serde_json::Value> {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        eprintln!(
            "checking {} against the journal of `{name}` …",
            file.display()
        );
        let force = force.to_string();
        let sample = sample.map(|sample| sample.to_string());
        let mut query = vec![("force", force.as_str())];
        query.extend(sample.as_deref().map(|sample| ("sample", sample)));
        let request = self
            .http
            .post(self.endpoint(&["plugins", name, "upgrade"], &query))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(bytes);
        self.answer(request).await
    }

    /// Follows an entity's events from `from` on: every event already written, then each new one
    /// as it is written (asked for every [`FOLLOW_POLL_INTERVAL`]), until Ctrl-C or `print` fails.
    pub async fn follow_events(
        &self,
        entity: [&str; 2],
        mut from: u64,
        replica: Option<&str>,
        mut print: impl FnMut(&serde_json::Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let [entity_type, entity_id] = entity;
        loop {
            let from_text = from.to_string();
            let mut query = vec![("from", from_text.as_str())];
            query.extend(replica.map(|replica| ("replica", replica)));
            let page = self
                .get(&["entities", entity_type, entity_id, "events"], &query)
                .await?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            for event in &events {
                print(event)?;
                from = event["seq_nr"].as_u64().map_or(from, |seq_nr| seq_nr + 1);
            }
            if events.is_empty() {
                tokio::time::sleep(FOLLOW_POLL_INTERVAL).await;
            }
        }
    }

    /// Follows a server-sent-events stream, handing over each event's data (one JSON value), until
    /// the node ends the stream (or Ctrl-C).
    pub async fn follow_stream(
        &self,
        segments: &[&str],
        mut print: impl FnMut(&serde_json::Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let request = self.http.get(self.endpoint(segments, &[]));
        let mut response = request.send().await.map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return error_answer(response).await;
        }
        let mut pending = String::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(e))? {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    let value = serde_json::from_str(data.trim_start())
                        .unwrap_or_else(|_| serde_json::Value::String(data.trim().to_owned()));
                    print(&value)?;
                }
            }
        }
        Ok(())
    }

    /// Sends the request; the JSON body of a successful answer, or an error naming the API's
    /// error code and message.
    async fn answer(&self, request: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return error_answer(response).await;
        }
        let status = response.status();
        response.json().await.with_context(|| {
            format!(
                "{} answered {status} with something that is not JSON: is it a weft node?",
                self.base
            )
        })
    }

    fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        let cause = std::error::Error::source(&error)
            .and_then(std::error::Error::source)
            .map_or_else(|| error.to_string(), ToString::to_string);
        anyhow::anyhow!(
            "cannot reach the weft node at {} ({cause}); is `weft serve` running there?",
            self.base
        )
    }
}

/// A node's error answer: shown as the API's code, the status and the message; the whole body
/// is kept for commands whose refusals carry more (an upgrade's report).
#[derive(Debug, thiserror::Error)]
#[error("{code} ({status}): {message}")]
pub struct Refusal {
    pub status: reqwest::StatusCode,
    pub code: String,
    pub message: String,
    pub body: serde_json::Value,
}

async fn error_answer<T>(response: reqwest::Response) -> anyhow::Result<T> {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let text =
        |field: &str, default: &str| body["error"][field].as_str().unwrap_or(default).to_owned();
    let mut message = text("message", "no message");
    if status == reqwest::StatusCode::UNAUTHORIZED {
        message.push_str(" (pass --token or set WEFT_TOKEN)");
    }
    Err(Refusal {
        status,
        code: text("code", "error"),
        message,
        body,
    }
    .into())
}

fn without_nulls(body: &serde_json::Value) -> serde_json::Value {
    match body {
        serde_json::Value::Object(fields) => fields
            .iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_encoded_segment_each() {
        let node = NodeClient::new("http://127.0.0.1:7070/", None).unwrap();
        let url = node.endpoint(&["entities", "counter", "a?b#c/d e"], &[("from", "1")]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7070/entities/counter/a%3Fb%23c%2Fd%20e?from=1"
        );
    }

    #[test]
    fn a_url_without_scheme_is_named_as_such() {
        let error = NodeClient::new("localhost:7070", None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("did you mean http://localhost:7070"),
            "{error}"
        );
        let error = NodeClient::new("ftp://localhost", None)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("http:// or https://"), "{error}");
    }
}
