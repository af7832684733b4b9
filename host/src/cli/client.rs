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
    let mut endpoint =
        reqwest::Url::parse(url).with_context(|| format!("invalid node URL {url:?}"))?;
    endpoint
        .path_segments_mut()
        .map_err(|()| anyhow::anyhow!("the node URL {url:?} cannot take a path"))?
        .pop_if_empty()
        .push("leases")
        .push(name)
        .extend(action);
    match action {
        None => {
            let response = reqwest::get(endpoint).await.map_err(unreachable(url))?;
            print_response(response).await
        }
        Some(_) => post(url, endpoint, &without_nulls(body)).await,
    }
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
