//! The client side of the CLI: HTTP calls to a running node, printing JSON.

use anyhow::{Context as _, bail};
use std::path::Path;

pub const DEFAULT_URL: &str = "http://127.0.0.1:7070";

fn endpoint(url: &str, path: &str) -> String {
    format!("{}{path}", url.trim_end_matches('/'))
}

/// Prints the JSON body of a successful response; turns an error body into an error.
async fn print_response(response: reqwest::Response) -> anyhow::Result<()> {
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .context("the node answered with something that is not JSON")?;
    if status.is_success() {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    // A refused upgrade answers with its report beside the error.
    if let Some(report) = body.get("report") {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    let error = &body["error"];
    bail!(
        "{} ({}): {}",
        error["code"].as_str().unwrap_or("error"),
        status,
        error["message"].as_str().unwrap_or("no message")
    )
}

fn unreachable(url: &str) -> impl FnOnce(reqwest::Error) -> anyhow::Error + '_ {
    move |error| {
        anyhow::anyhow!("cannot reach the weft node at {url} ({error}); is `weft serve` running?")
    }
}

pub async fn get(url: &str, path: &str) -> anyhow::Result<()> {
    let response = reqwest::get(endpoint(url, path))
        .await
        .map_err(unreachable(url))?;
    print_response(response).await
}

pub async fn send(
    url: &str,
    entity_type: &str,
    entity_id: &str,
    command: &str,
) -> anyhow::Result<()> {
    let json: serde_json::Value =
        serde_json::from_str(command).context("the command is not valid JSON")?;
    post(
        url,
        endpoint(url, &format!("/entities/{entity_type}/{entity_id}")),
        &json,
    )
    .await
}

/// `GET /leases/{name}` when `action` is `None`, else `POST /leases/{name}/{action}` with `body`
/// (`null` fields left out, so that the node's defaults apply). The name is percent-encoded: it may
/// contain `/` and spaces.
pub async fn lease(
    url: &str,
    name: &str,
    action: Option<&str>,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let mut segments = vec!["leases", name];
    segments.extend(action);
    let endpoint = segments_url(url, &segments)?;
    match action {
        None => {
            let response = reqwest::get(endpoint).await.map_err(unreachable(url))?;
            print_response(response).await
        }
        Some(_) => post(url, endpoint, &without_nulls(body)).await,
    }
}

/// `url` with each of `segments` appended as one percent-encoded path segment (names may contain
/// `/` and spaces).
fn segments_url(url: &str, segments: &[&str]) -> anyhow::Result<reqwest::Url> {
    let mut endpoint =
        reqwest::Url::parse(url).with_context(|| format!("invalid node URL {url:?}"))?;
    endpoint
        .path_segments_mut()
        .map_err(|()| anyhow::anyhow!("the node URL {url:?} cannot take a path"))?
        .pop_if_empty()
        .extend(segments);
    Ok(endpoint)
}

/// `GET /ddata/{key}?consistency=…`.
pub async fn ddata_get(url: &str, key: &str, consistency: &str) -> anyhow::Result<()> {
    let mut endpoint = segments_url(url, &["ddata", key])?;
    endpoint
        .query_pairs_mut()
        .append_pair("consistency", consistency);
    let response = reqwest::get(endpoint).await.map_err(unreachable(url))?;
    print_response(response).await
}

/// `POST /ddata/{key}` with the op (JSON) and, when given, the consistency level.
pub async fn ddata_update(
    url: &str,
    key: &str,
    op: &str,
    consistency: Option<&str>,
) -> anyhow::Result<()> {
    let mut body: serde_json::Value =
        serde_json::from_str(op).context("the op is not valid JSON")?;
    if let (Some(fields), Some(consistency)) = (body.as_object_mut(), consistency) {
        fields.insert("consistency".into(), consistency.into());
    }
    post(url, segments_url(url, &["ddata", key])?, &body).await
}

/// `DELETE /ddata/{key}?consistency=…`.
pub async fn ddata_delete(url: &str, key: &str, consistency: &str) -> anyhow::Result<()> {
    let mut endpoint = segments_url(url, &["ddata", key])?;
    endpoint
        .query_pairs_mut()
        .append_pair("consistency", consistency);
    let response = reqwest::Client::new()
        .delete(endpoint)
        .send()
        .await
        .map_err(unreachable(url))?;
    print_response(response).await
}

/// Follows `GET /ddata/{key}/subscribe`, printing each value as one JSON line, until the node
/// ends the stream (or Ctrl-C).
pub async fn ddata_subscribe(url: &str, key: &str) -> anyhow::Result<()> {
    let response = reqwest::get(segments_url(url, &["ddata", key, "subscribe"])?)
        .await
        .map_err(unreachable(url))?;
    if !response.status().is_success() {
        return print_response(response).await;
    }
    let mut response = response;
    let mut pending = String::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable(url))? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                println!("{}", data.trim_start());
            }
        }
    }
    Ok(())
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

async fn post(
    url: &str,
    endpoint: impl reqwest::IntoUrl,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .post(endpoint)
        .json(body)
        .send()
        .await
        .map_err(unreachable(url))?;
    print_response(response).await
}

pub async fn load_plugin(url: &str, file: &Path, name: Option<&str>) -> anyhow::Result<()> {
    let name = match name {
        Some(name) => name.to_owned(),
        None => file
            .file_stem()
            .and_then(|stem| stem.to_str())
            .context("cannot derive a plugin name from the file name; pass --name")?
            .to_owned(),
    };
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    eprintln!(
        "uploading {} ({} KiB) as plugin `{name}` …",
        file.display(),
        bytes.len() / 1024
    );
    let response = reqwest::Client::new()
        .put(endpoint(url, &format!("/plugins/{name}")))
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .body(bytes)
        .send()
        .await
        .map_err(unreachable(url))?;
    print_response(response).await
}

/// `weft plugin upgrade`: prints the report, also of a refusal (which is an error).
pub async fn upgrade_plugin(
    url: &str,
    name: &str,
    file: &Path,
    sample: Option<usize>,
    force: bool,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut path = format!("/plugins/{name}/upgrade?force={force}");
    if let Some(sample) = sample {
        path.push_str(&format!("&sample={sample}"));
    }
    eprintln!(
        "checking {} against the journal of `{name}` …",
        file.display()
    );
    let request = reqwest::Client::new()
        .post(endpoint(url, &path))
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .body(bytes);
    send_and_print(url, request).await
}

/// A POST with no body, printing the answer.
pub async fn post_empty(url: &str, path: &str) -> anyhow::Result<()> {
    send_and_print(url, reqwest::Client::new().post(endpoint(url, path))).await
}

/// Sends a request to the node at `url` and prints the answer.
async fn send_and_print(url: &str, request: reqwest::RequestBuilder) -> anyhow::Result<()> {
    let response = request.send().await.map_err(unreachable(url))?;
    print_response(response).await
}
